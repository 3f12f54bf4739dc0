"""Sharded rollouts and the single-process distributed context (pure, in one process).

A rank samples a block of the iteration's prompts (:class:`progrpo.rollout.RowShard`); its
trajectories must be exactly the rows the whole batch gets in one process, random selections
included, or multi-process training would not equal single-process training.
"""

from __future__ import annotations

import pytest
import torch

from progrpo.errors import ProGRPOConfigError
from progrpo.rewards import build_reward
from progrpo.rollout import RolloutConfig, RowShard, expand_and_prune_rollout
from progrpo.train.distributed import DistributedContext
from testkit.gaussian_denoiser import GaussianDenoiser

PROMPTS = ["a red cat", "a blue car", "a thick seven", "a dog"]


@pytest.mark.parametrize("selection", ["ovf", "random"])
def test_two_shards_reproduce_the_rows_of_the_whole_batch(selection: str):
    denoiser = GaussianDenoiser(torch.tensor([0.3, -0.2, 0.1]), torch.diag(torch.tensor([0.5, 1.0, 2.0])))
    reward = build_reward("brightness")
    config = RolloutConfig(group_size=6, num_steps=6, prune_schedule="2:4, 4:3", final_keep=2, selection=selection,
                           dynamics="flow_sde", seed=11)
    whole = expand_and_prune_rollout(denoiser, denoiser.encode_prompts(PROMPTS), reward, config)
    for offset in (0, 2):
        part = expand_and_prune_rollout(denoiser, denoiser.encode_prompts(PROMPTS[offset:offset + 2]), reward, config,
                                        shard=RowShard(prompt_offset=offset, total_prompts=4))
        rows = slice(offset * 2, offset * 2 + 4)  # 2 final survivors per prompt
        assert torch.equal(part.trajectory_index + offset * 6, whole.trajectory_index[rows])
        torch.testing.assert_close(part.latents, whole.latents[rows], rtol=0, atol=1e-6)
        torch.testing.assert_close(part.log_probs, whole.log_probs[rows], rtol=0, atol=1e-6)
        torch.testing.assert_close(part.final_rewards, whole.final_rewards[rows], rtol=0, atol=1e-6)


def test_a_shard_that_does_not_fit_the_batch_is_refused():
    with pytest.raises(ProGRPOConfigError, match="prompt_offset"):
        RowShard(prompt_offset=4, total_prompts=4)
    denoiser = GaussianDenoiser(torch.zeros(3), torch.eye(3))
    with pytest.raises(ProGRPOConfigError, match="total_prompts"):
        expand_and_prune_rollout(denoiser, denoiser.encode_prompts(PROMPTS[:2]), build_reward("brightness"),
                                 RolloutConfig(group_size=2, num_steps=2), shard=RowShard(3, 4))


def test_single_process_context_is_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = DistributedContext.from_environment("cpu")
    assert not context.enabled and context.is_main
    values = torch.arange(5.0)
    assert context.all_gather(values) is values
    assert context.shard_rows(3).tolist() == [0, 1, 2]
    assert context.row_shard(3) == RowShard(0, 3)
    assert context.sum_values([1.5, 2]) == [1.5, 2.0]


def test_prompts_per_iteration_must_split_into_whole_groups():
    context = DistributedContext(rank=1, world_size=3)
    assert context.shard_rows(6).tolist() == [2, 3]
    with pytest.raises(ProGRPOConfigError, match="prompts_per_iteration=4 is not divisible by the 3 processes"):
        context.check_divides(4)


def test_each_rank_trains_on_its_own_gpu():
    assert DistributedContext(rank=1, world_size=2, local_rank=1).device("cuda:0") == "cuda:1"
    assert DistributedContext(rank=1, world_size=2, local_rank=1).device("cpu") == "cpu"
    assert DistributedContext().device("cuda:0") == "cuda:0"
