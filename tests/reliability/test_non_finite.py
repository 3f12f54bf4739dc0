"""NaN/inf in rewards, model outputs, advantages or the loss: the iteration is skipped, the run goes on,
and max_bad_iterations skipped in a row stop it with a checkpoint and an error saying why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from progrpo.errors import ProGRPONonFiniteError
from progrpo.rewards import build_rewards
from progrpo.train import Trainer
from progrpo.train.trainer import load_model
from testkit.training_setup import (
    CALLS_PER_ITERATION,
    assert_same_tensors,
    digits_config,
    lora_of,
    records,
    register_scripted,
    scripted_rewards,
)

pytestmark = pytest.mark.slow  # real training runs of a few seconds each


#: optimiser steps per completed iteration (GRPOConfig.updates_per_rollout x inner_epochs of digits_config)
STEPS_PER_ITERATION = 2


def _checkpoint(folder: Path, k: int) -> Path:
    return folder / "checkpoints" / f"iter_{k}"


def _assert_skipped(folder: Path, skipped: int, quantity: str, iterations: int, verifier: Trainer) -> None:
    """Iteration ``skipped`` was skipped for ``quantity``: weights, optimiser and lr are those before it."""
    lines = records(folder)
    assert [r["iteration"] for r in lines] == list(range(iterations))
    assert [r["skipped"] for r in lines] == [quantity if k == skipped else None for k in range(iterations)]
    assert [r["skipped_iterations"] for r in lines] == [int(k >= skipped) for k in range(iterations)]
    assert "reward_mean" not in lines[skipped] and isinstance(lines[skipped]["skipped_detail"], str)
    before = lora_of(_checkpoint(folder, skipped), verifier)
    optimizer_before = verifier.optimizer.state_dict()
    lr_before = verifier.lr_scheduler.state_dict()
    after = lora_of(_checkpoint(folder, skipped + 1), verifier)
    assert_same_tensors(before, after, "LoRA across the skipped iteration")
    optimizer_after = verifier.optimizer.state_dict()
    for index, state in optimizer_before["state"].items():
        for name, value in state.items():
            assert torch.equal(value, optimizer_after["state"][index][name]), f"Adam {name} moved"
    assert verifier.lr_scheduler.state_dict() == lr_before
    assert verifier.optimizer_steps == skipped * STEPS_PER_ITERATION
    # the run went on: the next iteration trained
    moved = lora_of(_checkpoint(folder, skipped + 2), verifier)
    assert any(not torch.equal(after[key], moved[key]) for key in after), "training did not continue"
    state = json.loads((_checkpoint(folder, iterations) / "state.json").read_text())
    assert state["optimizer_steps"] == (iterations - 1) * STEPS_PER_ITERATION
    assert state["extra"]["skipped_iterations"] == 1
    assert (folder / "lora.safetensors").is_file() and (folder / "curve.png").is_file()


@pytest.mark.parametrize("call, stage", [(5, "preview"), (6, "final")])
def test_nan_reward_skips_the_iteration(tmp_path: Path, monkeypatch, call: int, stage: str):
    register_scripted(monkeypatch)
    assert (call - 1) // CALLS_PER_ITERATION == 2  # both calls belong to iteration 2
    config = digits_config(tmp_path / "run", iterations=5, rewards=scripted_rewards(nan_calls=[call]))
    result = Trainer.from_run(config).run()
    assert result.iterations_done == 5
    assert "reward 'flaky'" in records(tmp_path / "run")[2]["skipped_detail"]
    _assert_skipped(tmp_path / "run", 2, "rewards", 5, Trainer.from_run(digits_config(tmp_path / "verify", rewards=config.rewards)))


class PoisonedDenoiser:
    """The real denoiser, but its prediction turns NaN during iteration ``bad`` in the rollout
    (no-grad calls) or in the update (calls with grad); ``iteration`` is set by the progress callback."""

    def __init__(self, inner, bad: int, where: str) -> None:
        self.inner, self.bad, self.where, self.iteration = inner, bad, where, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, sample, timesteps, conditioning, guidance_scale):
        output = self.inner.predict(sample, timesteps, conditioning, guidance_scale)
        in_update = torch.is_grad_enabled()
        if self.iteration == self.bad and in_update == (self.where == "update"):
            return output * float("nan")  # keeps the graph: the backward pass sees NaN too
        return output


@pytest.mark.parametrize("where, quantity", [("rollout", "model output"), ("update", "loss")])
def test_nan_model_output_skips_the_iteration(tmp_path: Path, where: str, quantity: str):
    config = digits_config(tmp_path / "run", iterations=5)
    denoiser = PoisonedDenoiser(load_model(config), bad=2, where=where)
    result = Trainer.from_run(config, denoiser=denoiser).run(progress=lambda done, _: setattr(denoiser, "iteration", done))
    assert result.iterations_done == 5
    _assert_skipped(tmp_path / "run", 2, quantity, 5, Trainer.from_run(digits_config(tmp_path / "verify")))


def test_nan_advantages_skip_the_iteration(tmp_path: Path, monkeypatch):
    import progrpo.train.trainer as trainer_module

    real = trainer_module.group_advantages
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        advantages = real(*args, **kwargs)
        return advantages * float("nan") if len(calls) == 3 else advantages

    monkeypatch.setattr(trainer_module, "group_advantages", poisoned)
    Trainer.from_run(digits_config(tmp_path / "run", iterations=5)).run()
    _assert_skipped(tmp_path / "run", 2, "advantages", 5, Trainer.from_run(digits_config(tmp_path / "verify")))


def test_consecutive_bad_iterations_stop_with_a_checkpoint(tmp_path: Path, monkeypatch):
    register_scripted(monkeypatch)
    first_bad = 2 * CALLS_PER_ITERATION + 1  # every call from iteration 2 on
    rewards = scripted_rewards(nan_calls=list(range(first_bad, 100)))
    config = digits_config(tmp_path / "run", iterations=8, checkpoint_every=0, max_bad_iterations=3, rewards=rewards)
    with pytest.raises(ProGRPONonFiniteError) as caught:
        Trainer.from_run(config).run()
    error, folder = caught.value, tmp_path / "run" / "checkpoints" / "iter_5"
    assert (error.quantity, error.iteration) == ("rewards", 4)
    message = str(error)
    for fragment in ("3 iterations in a row (2 to 4", "max_bad_iterations=3", "reward 'flaky'", str(folder),
                     "What to try", "--resume latest"):
        assert fragment in message, fragment
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "iter_5"
    assert [r["skipped"] for r in records(tmp_path / "run")] == [None, None, "rewards", "rewards", "rewards"]
    state = json.loads((folder / "state.json").read_text())
    assert state["optimizer_steps"] == 2 * STEPS_PER_ITERATION and state["extra"]["bad_iterations"] == 3
    # the checkpoint holds the weights of the 2 good iterations: those of a clean 2-iteration run
    clean = Trainer.from_run(digits_config(tmp_path / "clean", iterations=2, rewards=rewards))
    clean.run()
    verifier = Trainer.from_run(digits_config(tmp_path / "verify", rewards=rewards))
    assert_same_tensors(lora_of(folder, verifier), lora_of(tmp_path / "clean" / "checkpoints" / "iter_2", verifier),
                        "LoRA at the stop")
    # Resuming is a deliberate retry: the streak restarts, and max_bad_iterations may change on resume.
    still_bad = build_rewards(scripted_rewards(nan_calls=list(range(1, 100))))
    resumed = Trainer.from_run(digits_config(tmp_path / "run", iterations=8, checkpoint_every=0, max_bad_iterations=2,
                                    rewards=rewards), reward=still_bad)
    with pytest.raises(ProGRPONonFiniteError) as again:
        resumed.run(resume_from="latest")
    assert again.value.iteration == 6 and "2 iterations in a row (5 to 6" in str(again.value)
