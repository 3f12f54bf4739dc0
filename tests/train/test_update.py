"""One GRPO update on the tiny SD model: gradients, frozen base, on-policy ratio, KL, accumulation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from progrpo.advantages import group_advantages
from progrpo.denoisers.diffusers_backend import denoiser_from_pipeline
from progrpo.errors import ProGRPOConfigError
from progrpo.lora import LoraSettings
from progrpo.lora.adapter import PeftLoraAdapter
from progrpo.rewards import build_rewards
from progrpo.rollout import RolloutConfig, expand_and_prune_rollout
from progrpo.tiny_models import tiny_sd_pipeline
from progrpo.train import (
    UPDATE_METRICS,
    GRPOConfig,
    accumulate_policy_gradient,
    approx_kl,
    clip_fraction,
    clipped_surrogate,
    grpo_update,
    recompute_log_probs,
    select_training_pairs,
)

ROLLOUT = RolloutConfig(group_size=4, num_steps=3, dynamics="ddim", height=16, width=16, seed=3,
                        prune_schedule="1:3, 2:2", keep_images=False, sde_window=(0, 2))


@pytest.fixture()
def setup():
    """Fresh tiny SD denoiser with a LoRA, a pruned rollout over 2 prompts (4 survivors), advantages, the adapter."""
    denoiser = denoiser_from_pipeline(tiny_sd_pipeline())
    adapter = PeftLoraAdapter(denoiser.network, LoraSettings(rank=2, alpha=2.0))
    params = adapter.parameters()
    reward = build_rewards({"brightness": {"weight": 1.0}})
    conditioning = denoiser.encode_prompts(["a red cat", "a dog"], "")
    rollout = expand_and_prune_rollout(denoiser, conditioning, reward, ROLLOUT)
    advantages = group_advantages(rollout.final_rewards, rollout.prompt_index)
    return denoiser, params, reward, conditioning, rollout, advantages, adapter


def _grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in params]


def _lora_names(denoiser) -> list[str]:
    return [name for name, p in denoiser.network.named_parameters() if p.requires_grad]


# --- loss functions ----------------------------------------------------------------------------


def test_clipped_surrogate_matches_ppo_cases():
    eps = 0.1
    old = torch.zeros(6)
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.05, 1.0])
    new = ratio.log()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, -3.0])
    loss = clipped_surrogate(new, old, adv, eps)
    # -min(r A, clip(r) A): positive A above the range is capped, negative A below it is capped.
    expected = torch.tensor([-1.1, 1.5, -0.5, 0.9, -2.1, 3.0])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert loss.dtype == torch.float32
    assert clip_fraction(new, old, eps).tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert torch.allclose(approx_kl(new, old), 0.5 * new.square())
    with pytest.raises(ProGRPOConfigError, match="1-D"):
        clipped_surrogate(new, old, adv[:3], eps)


def test_clipped_surrogate_gradient_is_zero_outside_the_trust_region():
    new = torch.tensor([0.5, -0.5, 0.01], requires_grad=True)
    loss = clipped_surrogate(new, torch.zeros(3), torch.tensor([1.0, -1.0, 1.0]), 0.1).sum()
    loss.backward()
    assert new.grad[0] == 0 and new.grad[1] == 0  # clipped: no push further out
    assert new.grad[2] < 0  # inside: raise log-prob of a positive-advantage row


# --- training pairs ------------------------------------------------------------------------------


def test_training_pairs_cover_stochastic_steps_and_fraction(setup):
    *_, rollout, _, _ = setup
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    pairs = select_training_pairs(rollout, 1.0, generator)
    assert torch.equal(generator.get_state(), state), "fraction 1 must not consume the generator"
    assert len(pairs) == rollout.num_survivors * rollout.trainable_steps.numel()
    half = select_training_pairs(rollout, 0.5, torch.Generator().manual_seed(1))
    per_row = max(1, int(rollout.trainable_steps.numel() * 0.5))
    assert len(half) == rollout.num_survivors * per_row
    assert set(half.steps.tolist()) <= set(rollout.trainable_steps.tolist())
    again = select_training_pairs(rollout, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(half.steps, again.steps)


def test_deterministic_rollout_is_refused(setup):
    denoiser, _, reward, conditioning, _, _, _ = setup
    ode = expand_and_prune_rollout(denoiser, conditioning, reward, dataclasses.replace(ROLLOUT, noise_level=0.0))
    with pytest.raises(ProGRPOConfigError, match="no stochastic step"):
        select_training_pairs(ode, 1.0, torch.Generator())


# --- the update ----------------------------------------------------------------------------------


def test_gradients_reach_every_lora_parameter(setup):
    """First update: every lora_B gets a finite non-zero gradient; lora_A's is exactly 0 because B
    starts at 0 (peft's init), so the second update checks that every lora_A gets one too."""
    denoiser, params, _, _, rollout, advantages, adapter = setup
    names = _lora_names(denoiser)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    config = GRPOConfig(clip_range=0.2, micro_batch_rows=4)
    pairs = select_training_pairs(rollout, 1.0, torch.Generator())
    accumulate_policy_gradient(denoiser, rollout, advantages, pairs, config, adapter=adapter)
    for name, grad in zip(names, _grads(params)):
        assert torch.isfinite(grad).all(), name
        if ".lora_B." in name:
            assert grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert grad.abs().sum() == 0, f"{name}: lora_A should have zero gradient while B == 0"
    metrics = grpo_update(denoiser, rollout, advantages, optimizer, config, params, torch.Generator(), adapter=adapter)
    assert set(metrics) == set(UPDATE_METRICS)
    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in metrics.values())
    optimizer.zero_grad()
    accumulate_policy_gradient(denoiser, rollout, advantages, pairs, config, adapter=adapter)
    for name, grad in zip(names, _grads(params)):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, f"{name} got no gradient after one step"


def test_base_weights_unchanged_and_lora_changed(setup):
    denoiser, params, _, _, rollout, advantages, adapter = setup
    lora = {id(p) for p in params}
    base = {n: p.detach().clone() for n, p in denoiser.network.named_parameters() if id(p) not in lora}
    text = {n: p.detach().clone() for n, p in denoiser.pipeline.text_encoder.named_parameters()}
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    grpo_update(denoiser, rollout, advantages, optimizer, GRPOConfig(clip_range=0.2), params, torch.Generator(),
                adapter=adapter)
    for name, value in denoiser.network.named_parameters():
        if id(value) not in lora:
            assert torch.equal(value, base[name]), f"base weight {name} changed"
    for name, value in denoiser.pipeline.text_encoder.named_parameters():
        assert torch.equal(value, text[name])
    assert any(not torch.equal(p, b) for p, b in zip(params, before)), "no LoRA weight moved"
    assert all(p.grad is None for p in params), "grads are cleared after the step"


def test_on_policy_ratio_is_one_and_loss_is_minus_mean_advantage(setup):
    denoiser, _, _, _, rollout, _, adapter = setup
    pairs = select_training_pairs(rollout, 1.0, torch.Generator())
    recomputed = recompute_log_probs(denoiser, rollout, pairs, micro_batch_rows=3)
    stored = rollout.log_probs[pairs.rows, pairs.steps]
    assert (recomputed - stored).abs().max() <= 1e-6
    # Arbitrary (not group-centred) advantages, so -mean(A) is not trivially 0.
    advantages = torch.tensor([0.7, -1.3, 2.0, 0.4])
    assert advantages.shape == (rollout.num_survivors,)
    metrics = accumulate_policy_gradient(denoiser, rollout, advantages, pairs, GRPOConfig(clip_range=1e-4),
                                         adapter=adapter)
    assert abs(metrics["ratio_mean"] - 1.0) <= 1e-6
    assert metrics["clip_fraction"] == 0.0
    assert metrics["approx_kl"] <= 1e-12
    # every survivor has the same number of pairs, so the pair mean of -A*1 is -mean(A)
    assert metrics["policy_loss"] == pytest.approx(-float(advantages.mean()), abs=1e-6)
    assert metrics["rows"] == len(pairs)


def test_kl_is_zero_before_the_first_update_and_positive_after(setup):
    denoiser, params, _, _, rollout, advantages, adapter = setup
    config = GRPOConfig(clip_range=0.2, kl_beta=0.5, micro_batch_rows=5, updates_per_rollout=1)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    first = grpo_update(denoiser, rollout, advantages, optimizer, config, params, torch.Generator(), adapter=adapter)
    assert first["kl"] == 0.0
    assert first["loss"] == pytest.approx(first["policy_loss"])
    second = grpo_update(denoiser, rollout, advantages, optimizer, config, params, torch.Generator(), adapter=adapter)
    assert second["kl"] > 0.0
    assert second["loss"] == pytest.approx(second["policy_loss"] + 0.5 * second["kl"], rel=1e-5)
    # the reference toggle must leave the LoRA trainable
    assert all(p.requires_grad for p in params)


def test_micro_batches_accumulate_to_the_full_batch_gradient(setup):
    denoiser, params, _, _, rollout, advantages, adapter = setup
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    # One step first so lora_B != 0 and every parameter has a non-trivial gradient.
    grpo_update(denoiser, rollout, advantages, optimizer, GRPOConfig(clip_range=0.2), params, torch.Generator(),
                adapter=adapter)
    pairs = select_training_pairs(rollout, 1.0, torch.Generator())
    results = {}
    for rows in (2, len(pairs)):
        optimizer.zero_grad(set_to_none=True)
        metrics = accumulate_policy_gradient(
            denoiser, rollout, advantages, pairs, GRPOConfig(clip_range=0.2, kl_beta=0.1, micro_batch_rows=rows),
            adapter=adapter,
        )
        results[rows] = (_grads(params), metrics)
    (small, small_metrics), (full, full_metrics) = results[2], results[len(pairs)]
    assert max(float(a.abs().max()) for a in full) > 1e-4, "gradients too small for a meaningful comparison"
    for a, b in zip(small, full):
        assert (a - b).abs().max() <= 1e-6
    for name in ("loss", "policy_loss", "kl", "ratio_mean"):
        assert small_metrics[name] == pytest.approx(full_metrics[name], abs=1e-6)


def test_backward_rows_are_counted(setup):
    denoiser, params, _, _, rollout, advantages, adapter = setup
    before = rollout.ledger.backward_rows
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    metrics = grpo_update(denoiser, rollout, advantages, optimizer, GRPOConfig(micro_batch_rows=3), params,
                          torch.Generator(), adapter=adapter)
    # 2 stochastic steps (sde_window=(0, 2)) per survivor; the ODE step 2 is never trained
    assert rollout.ledger.backward_rows - before == metrics["rows"] == rollout.num_survivors * 2


def test_wrong_advantage_shape_is_refused(setup):
    denoiser, _, _, _, rollout, _, adapter = setup
    pairs = select_training_pairs(rollout, 1.0, torch.Generator())
    with pytest.raises(ProGRPOConfigError, match="one advantage per survivor"):
        accumulate_policy_gradient(denoiser, rollout, torch.zeros(7), pairs, GRPOConfig(), adapter=adapter)


def test_non_finite_gradient_skips_the_step(setup):
    denoiser, params, _, _, rollout, _, adapter = setup
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    advantages = torch.tensor([float("nan"), 1.0, -1.0, 0.0])
    metrics = grpo_update(denoiser, rollout, advantages, optimizer, GRPOConfig(adv_clip=None), params,
                          torch.Generator(), adapter=adapter)
    assert metrics["step_skipped"] == 1.0
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert not optimizer.state, "Adam moments must not be touched by a skipped step"


def test_evaluate_ignores_static_filtering_and_pruning(tmp_path):
    """Evaluation scores the policy on every trajectory: no prune schedule, no static final_keep."""
    from progrpo.train.run_config import RunConfig
    from progrpo.train.trainer import Trainer

    config = RunConfig(model="tiny:flux", prompts=["a red cat"], iterations=1, output_dir=str(tmp_path),
                         rollout=RolloutConfig(group_size=4, num_steps=2, height=16, width=16, final_keep=2,
                                               prune_schedule="1:3"),
                         rewards={"brightness": {}})
    trainer = Trainer.from_run(config)
    assert trainer.evaluate(samples_per_prompt=3).shape == (3,)


# --- the baselines' update regime (issue 14) --------------------------------------------------------


def test_second_minibatch_is_off_policy_and_the_clip_binds(setup):
    """Two disjoint minibatches: the first is on-policy (ratio 1), the second sees the weights after
    step one, so its ratios leave 1; re-derived by hand (same partition, one manual step, log-probs
    recomputed), the clip fraction and mean |ratio - 1| of the second step are what grpo_update reports."""
    from progrpo.train.update import _local_pairs, minibatch_partition

    denoiser, params, _, _, rollout, advantages, adapter = setup
    config = GRPOConfig(clip_range=1e-4, updates_per_rollout=2, micro_batch_rows=64)
    start = [p.detach().clone() for p in params]
    metrics = grpo_update(denoiser, rollout, advantages, torch.optim.AdamW(params, lr=1e-2), config, params,
                          torch.Generator().manual_seed(4), adapter=adapter)
    assert metrics["optimizer_steps"] == 2.0
    # by hand, from the same weights
    with torch.no_grad():
        for param, value in zip(params, start):
            param.copy_(value)
    generator = torch.Generator().manual_seed(4)
    pairs = select_training_pairs(rollout, 1.0, generator)
    first_ids, second_ids = minibatch_partition(len(pairs), 2, generator)
    assert set(first_ids.tolist()).isdisjoint(second_ids.tolist())
    assert sorted(first_ids.tolist() + second_ids.tolist()) == list(range(len(pairs)))
    first, second = (_local_pairs(pairs, ids, 0, len(pairs) // rollout.num_survivors) for ids in (first_ids, second_ids))
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    on_policy = accumulate_policy_gradient(denoiser, rollout, advantages, first, config, adapter=adapter)
    assert abs(on_policy["ratio_mean"] - 1.0) <= 1e-6 and on_policy["clip_fraction"] == 0.0
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    new = recompute_log_probs(denoiser, rollout, second, micro_batch_rows=64)
    ratio = torch.exp(new - rollout.log_probs[second.rows, second.steps])
    expected_clip = float(((ratio - 1).abs() > 1e-4).float().mean())
    assert expected_clip > 0.5, "a step at lr 1e-2 must move the ratio past a 1e-4 clip"
    assert metrics["clip_fraction_off_policy"] == pytest.approx(expected_clip, abs=1e-6)
    assert metrics["ratio_deviation_off_policy"] == pytest.approx(float((ratio - 1).abs().mean()), rel=1e-3)
    # one minibatch: everything on-policy, nothing off-policy
    with torch.no_grad():
        for param, value in zip(params, start):
            param.copy_(value)
    single = grpo_update(denoiser, rollout, advantages, torch.optim.AdamW(params, lr=1e-2),
                         dataclasses.replace(config, updates_per_rollout=1), params, torch.Generator(), adapter=adapter)
    assert single["optimizer_steps"] == 1.0 and single["clip_fraction"] == 0.0
    assert single["clip_fraction_off_policy"] == 0.0


def test_inner_epochs_repeat_the_minibatches(setup):
    denoiser, params, _, _, rollout, advantages, adapter = setup
    before = rollout.ledger.backward_rows
    metrics = grpo_update(denoiser, rollout, advantages, torch.optim.AdamW(params, lr=1e-3),
                          GRPOConfig(updates_per_rollout=2, inner_epochs=3), params, torch.Generator(), adapter=adapter)
    pairs = rollout.num_survivors * 2  # sde_window (0, 2): two stochastic steps per survivor
    assert metrics["optimizer_steps"] == 6.0
    assert metrics["rows"] == rollout.ledger.backward_rows - before == 3 * pairs


def test_minibatch_partition_is_independent_of_the_number_of_processes():
    """Global pair ids split once; each rank keeps the ids of its survivors: the union over ranks is the split."""
    from progrpo.train.update import TrainingPairs, _local_pairs, minibatch_partition

    parts = minibatch_partition(12, 2, torch.Generator().manual_seed(0))
    assert [len(part) for part in parts] == [6, 6]
    assert minibatch_partition(12, 1, torch.Generator()) [0].tolist() == list(range(12))
    assert len(minibatch_partition(3, 5, torch.Generator())) == 3  # never an empty minibatch
    # 6 survivors x 2 steps; ranks hold survivors 0-2 and 3-5
    whole = TrainingPairs(rows=torch.arange(6).repeat_interleave(2), steps=torch.tensor([0, 1] * 6))
    rank = TrainingPairs(rows=torch.arange(3).repeat_interleave(2), steps=torch.tensor([0, 1] * 3))
    for part in parts:
        single = _local_pairs(whole, part, 0, 2)
        split = [_local_pairs(rank, part, offset, 2) for offset in (0, 3)]
        rebuilt = sorted([(int(r) + 0, int(s)) for r, s in zip(split[0].rows, split[0].steps)]
                         + [(int(r) + 3, int(s)) for r, s in zip(split[1].rows, split[1].steps)])
        assert rebuilt == sorted(zip(single.rows.tolist(), single.steps.tolist()))


def test_timestep_rule_first_drops_the_last_flow_step():
    """Flow schedule, 5 steps, all stochastic: candidates 0..3 (step 4, sigma -> 0, is dropped);
    ``first`` trains int(4 * fraction) of them from the start, ``random`` its own subset per survivor."""
    from testkit.gaussian_denoiser import GaussianDenoiser

    denoiser = GaussianDenoiser(torch.zeros(3), torch.eye(3))
    config = RolloutConfig(group_size=3, num_steps=5, dynamics="flow_sde", keep_images=False)
    rollout = expand_and_prune_rollout(denoiser, denoiser.encode_prompts(["a", "b"]), build_rewards({"brightness": {}}),
                                       config)
    assert rollout.trainable_steps.tolist() == [0, 1, 2, 3, 4]
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    first = select_training_pairs(rollout, 1.0, generator)
    assert first.steps.reshape(6, -1).tolist() == [[0, 1, 2, 3]] * 6
    assert select_training_pairs(rollout, 0.5, generator).steps.reshape(6, -1).tolist() == [[0, 1]] * 6
    assert select_training_pairs(rollout, 0.99, generator).steps.reshape(6, -1).tolist() == [[0, 1, 2]] * 6
    assert torch.equal(generator.get_state(), state), "the first rule draws nothing"
    every = select_training_pairs(rollout, 1.0, generator, train_last_step=True)
    assert every.steps.reshape(6, -1).tolist() == [[0, 1, 2, 3, 4]] * 6
    drawn = select_training_pairs(rollout, 0.5, torch.Generator().manual_seed(3), rule="random").steps.reshape(6, -1)
    assert all(set(row) <= {0, 1, 2, 3} and len(set(row)) == 2 for row in drawn.tolist())
    assert len({tuple(row) for row in drawn.tolist()}) > 1, "DDPO's rule draws per survivor"


def test_vp_schedules_keep_their_last_step(setup):
    *_, rollout, _, _ = setup  # ddim, sde_window (0, 2) of 3 steps
    assert select_training_pairs(rollout, 1.0, torch.Generator()).steps.tolist() == [0, 1] * rollout.num_survivors


def test_kl_forms_against_hand_values():
    from progrpo.train.loss import KL_FORMS

    mean = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    reference = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    std = torch.tensor([0.5, 0.0])  # the second row is deterministic
    dt = torch.tensor([0.1, 0.1])
    # exact: mean over dims of d^2 / (2 std^2) = (1 + 4) / 2 / (2 * 0.25) = 5
    torch.testing.assert_close(KL_FORMS["exact"](mean, reference, std, dt), torch.tensor([5.0, 0.0]))
    # Flow-GRPO: std_dev_t = std / sqrt(dt), so d^2 / (2 std^2 / dt) = 5 * 0.1
    torch.testing.assert_close(KL_FORMS["flow_grpo"](mean, reference, std, dt), torch.tensor([0.5, 0.0]))


def test_kl_form_scales_the_update_kl_by_dt():
    """On a flow SDE, the update's KL in Flow-GRPO's form is the exact one times each pair's |dt|."""
    from progrpo.train.update import _kl_dt

    schedule_coeffs = type("C", (), {"sigma": torch.tensor([1.0, 0.6]), "sigma_next": torch.tensor([0.6, 0.0])})()
    torch.testing.assert_close(_kl_dt("flow_sde", schedule_coeffs), torch.tensor([0.4, 0.6]))
    torch.testing.assert_close(_kl_dt("ddim", schedule_coeffs), torch.tensor([1.0, 1.0]))


def test_ema_updates_every_interval_steps():
    from progrpo.train.update import LoraEMA

    param = torch.nn.Parameter(torch.zeros(2))
    ema = LoraEMA([param], decay=0.5, update_interval=3)
    with torch.no_grad():
        param.fill_(1.0)
    ema.update()
    ema.update()
    assert torch.equal(ema.shadow[0], torch.zeros(2)) and ema.updates == 0  # steps 1, 2: nothing folded in
    ema.update()  # step 3: decay min(0.5, 1/10) = 0.1 -> 0.1 * 0 + 0.9 * 1
    torch.testing.assert_close(ema.shadow[0], torch.full((2,), 0.9))
    with torch.no_grad():
        param.fill_(2.0)
    for _ in range(3):  # step 6: decay min(0.5, 2/11)
        ema.update()
    decay = 2 / 11
    torch.testing.assert_close(ema.shadow[0], torch.full((2,), decay * 0.9 + (1 - decay) * 2.0))
    restored = LoraEMA([param], decay=0.5, update_interval=3)
    restored.load_state_dict(ema.state_dict())
    assert restored.calls == 6 and restored.updates == 2


def test_non_finite_second_step_undoes_the_whole_update(setup):
    """A NaN gradient in the second minibatch restores the weights, Adam, lr schedule and EMA of before the update."""
    from progrpo.train.update import LoraEMA

    denoiser, params, _, _, rollout, _, adapter = setup
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    ema = LoraEMA(params, 0.9, 1)
    # survivor 0's advantage is NaN; with generator seed 1 its pairs (ids 0, 1 of 8) are both in the
    # SECOND minibatch ([2, 4, 5, 6] then [0, 1, 3, 7]), so the first step is taken and must be undone
    from progrpo.train.update import minibatch_partition

    assert set(minibatch_partition(8, 2, torch.Generator().manual_seed(1))[1].tolist()) >= {0, 1}
    advantages = torch.tensor([float("nan"), 1.0, -1.0, 0.0])
    stepped = []
    optimizer.register_step_post_hook(lambda *_: stepped.append(1))
    metrics = grpo_update(denoiser, rollout, advantages, optimizer, GRPOConfig(adv_clip=None, updates_per_rollout=2),
                          params, torch.Generator().manual_seed(1), lr_scheduler=scheduler, ema=ema, adapter=adapter)
    assert stepped == [1], "the first (finite) minibatch stepped"
    assert metrics["step_skipped"] == 1.0 and metrics["optimizer_steps"] == 0.0
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert not optimizer.state and scheduler.last_epoch == 0 and ema.calls == 0


def test_a_rank_without_pairs_in_a_minibatch_reports_the_same_metric_keys(setup):
    """Ranks all-reduce the metric values as one list: an empty minibatch must give the same keys."""
    from progrpo.train.distributed import SINGLE_PROCESS
    from progrpo.train.update import TrainingPairs, _one_step

    denoiser, params, _, _, rollout, advantages, adapter = setup
    pairs = select_training_pairs(rollout, 1.0, torch.Generator())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    full = _one_step(denoiser, rollout, advantages, optimizer, GRPOConfig(), params, pairs, 1.0, None, adapter,
                     SINGLE_PROCESS)
    empty = _one_step(denoiser, rollout, advantages, optimizer, GRPOConfig(), params,
                      TrainingPairs(rows=pairs.rows[:0], steps=pairs.steps[:0]), 1.0, None, adapter, SINGLE_PROCESS)
    assert list(full) == list(empty) and empty["rows"] == 0.0


def test_evaluate_uses_the_ema_weights_and_restores_the_trained_ones(tmp_path):
    """With EMA on, evaluation scores the EMA weights (Flow-GRPO evaluates its EMA): set the shadow to
    visibly different weights; evaluate() equals an evaluation with those weights loaded by hand."""
    from progrpo.train.run_config import RunConfig
    from progrpo.train.trainer import Trainer

    config = RunConfig(model="tiny:flux", prompts=["a red cat"], iterations=1, output_dir=str(tmp_path),
                         rollout=RolloutConfig(group_size=2, num_steps=2, height=16, width=16),
                         grpo=GRPOConfig(ema_decay=0.9), rewards={"brightness": {}})
    trainer = Trainer.from_run(config)
    trained = [p.detach().clone() for p in trainer.params]
    trainer.ema.shadow = [torch.full_like(s, 0.05) for s in trainer.ema.shadow]
    with_ema = trainer.evaluate(samples_per_prompt=2)
    assert all(torch.equal(p, t) for p, t in zip(trainer.params, trained)), "trained weights restored"
    without = trainer.evaluate(samples_per_prompt=2, rollout={})  # still EMA: same call
    assert torch.equal(with_ema, without)
    ema, trainer.ema = trainer.ema, None
    raw = trainer.evaluate(samples_per_prompt=2)
    with torch.no_grad():
        for param in trainer.params:
            param.fill_(0.05)
    by_hand = trainer.evaluate(samples_per_prompt=2)
    torch.testing.assert_close(with_ema, by_hand)
    assert not torch.equal(raw, by_hand), "the EMA weights must change the evaluation for the test to mean anything"
    del ema
