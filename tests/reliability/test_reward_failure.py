"""A reward that raises mid-run: a clear error naming the reward, the original exception chained, and a
checkpoint of the last completed iteration from which the run resumes bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from progrpo.errors import ProGRPORewardError, ProGRPOTrainingError
from progrpo.rewards import build_rewards
from progrpo.train import Trainer
from testkit.training_setup import CALLS_PER_ITERATION, digits_config, records, register_scripted, scripted_rewards

pytestmark = pytest.mark.slow  # real training runs of a few seconds each


@pytest.mark.parametrize("call", [5, 6], ids=["preview", "final"])
def test_reward_exception_names_the_reward_and_checkpoints(tmp_path: Path, monkeypatch, call: int):
    register_scripted(monkeypatch)
    assert (call - 1) // CALLS_PER_ITERATION == 2  # fails inside iteration 2
    rewards = scripted_rewards(raise_calls=[call])
    # checkpoint_every=0: the only checkpoint is the one the failure writes
    config = digits_config(tmp_path / "run", iterations=4, checkpoint_every=0, rewards=rewards)
    trainer = Trainer.from_run(config)
    with pytest.raises(ProGRPORewardError) as caught:
        trainer.run()
    error, folder = caught.value, tmp_path / "run" / "checkpoints" / "iter_2"
    assert isinstance(error, ProGRPOTrainingError) and error.reward_name == "flaky"
    flaky = trainer.reward.rewards["flaky"]
    assert error.__cause__ is flaky.raised[0]  # the original exception, chained
    message = str(error)
    for fragment in ("reward 'flaky' raised RuntimeError", f"reward server unreachable (call {call})",
                     "during iteration 2", str(folder), "config.rewards", "--resume latest"):
        assert fragment in message, fragment
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "iter_2"
    assert len(records(tmp_path / "run")) == 2
    # Resume with the reward fixed: the final LoRA is the one of a run that never failed.
    healthy = scripted_rewards()
    Trainer.from_run(config, reward=build_rewards(healthy)).run(resume_from="latest")
    Trainer.from_run(digits_config(tmp_path / "clean", iterations=4, checkpoint_every=0, rewards=rewards),
            reward=build_rewards(healthy)).run()
    resumed, clean = load_file(str(tmp_path / "run" / "lora.safetensors")), load_file(str(tmp_path / "clean" / "lora.safetensors"))
    assert resumed.keys() == clean.keys()
    assert all(torch.equal(resumed[key], clean[key]) for key in clean)


def test_custom_reward_object_is_named_by_its_name(tmp_path: Path):
    class Broken:
        name = "my_remote_scorer"

        def score(self, images, prompts):
            raise ConnectionError("scorer went away")

    with pytest.raises(ProGRPORewardError) as caught:
        Trainer.from_run(digits_config(tmp_path / "run", iterations=2), reward=Broken()).run()
    assert caught.value.reward_name == "my_remote_scorer"
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert "during iteration 0" in str(caught.value) and "iter_0" in str(caught.value)
