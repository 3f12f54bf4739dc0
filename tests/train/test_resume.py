"""Trainer outputs, checkpoints and bit-for-bit resume on the tiny SD model (CPU).

The config deliberately uses every piece of state a resume must restore: LoRA dropout (the
global torch RNG), timestep_fraction < 1 (the step-choice generator), lr warm-up (the scheduler),
EMA, a KL term and Pro-GRPO pruning.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from progrpo.errors import ProGRPOConfigError
from progrpo.lora import LoraSettings, lora_state_dict, read_lora_metadata
from progrpo.rewards import build_rewards
from progrpo.rollout import RolloutConfig
from progrpo.train import GRPOConfig, OptimConfig, RunConfig, Trainer, load_config, train
from progrpo.train.checkpoint import resolve_checkpoint


def _config(output_dir: Path, **overrides) -> RunConfig:
    values = {
        "model": "tiny:sd",
        "prompts": ["a red cat", "a dog", "a blue car"],
        "prompts_per_iteration": 2,
        "iterations": 4,
        "rollout": RolloutConfig(group_size=4, num_steps=3, dynamics="ddim", height=16, width=16,
                                 prune_schedule="1:3, 2:2", keep_images=False),
        "lora": LoraSettings(rank=2, alpha=2.0, dropout=0.1),
        "optim": OptimConfig(lr=1e-2, warmup_steps=2),
        "grpo": GRPOConfig(clip_range=0.2, kl_beta=0.01, timestep_fraction=0.5, micro_batch_rows=3, ema_decay=0.9),
        "rewards": {"brightness": {"weight": 1.0}},
        "output_dir": str(output_dir),
        "checkpoint_every": 2,
        "seed": 5,
    }
    values.update(overrides)
    return RunConfig(**values)


def _state(trainer: Trainer) -> dict[str, object]:
    return {
        "lora": lora_state_dict(trainer.network),
        "optimizer": trainer.optimizer.state_dict(),
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        "scheduler": trainer.lr_scheduler.state_dict(),
        "iteration": trainer.iteration,
        "history": [{k: v for k, v in r.items() if k != "wall_time"} for r in trainer.history],
    }


def _assert_identical(a: dict[str, object], b: dict[str, object]) -> None:
    assert a["iteration"] == b["iteration"]
    assert a["lora"].keys() == b["lora"].keys()
    for key in a["lora"]:
        assert torch.equal(a["lora"][key], b["lora"][key]), f"LoRA weight {key} differs"
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for name, value in state_a[index].items():
            assert torch.equal(value, state_b[index][name]), f"optimizer state {index}.{name} differs"
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["scheduler"] == b["scheduler"]
    for x, y in zip(a["ema"]["shadow"], b["ema"]["shadow"]):
        assert torch.equal(x, y)
    assert a["ema"]["updates"] == b["ema"]["updates"]
    assert a["history"] == b["history"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, object]]:
    """4 uninterrupted iterations (checkpoints at 2 and 4)."""
    folder = tmp_path_factory.mktemp("reference")
    trainer = Trainer.from_run(_config(folder))
    result = trainer.run()
    assert result.iterations_done == 4 and not result.stopped
    return folder, _state(trainer)


def test_outputs_of_a_run(reference):
    folder, _ = reference
    assert (folder / "checkpoints" / "latest").read_text().strip() == "iter_4"
    assert (folder / "checkpoints" / "iter_2" / "lora" / "adapter_model.safetensors").is_file()
    assert not [p.name for p in (folder / "checkpoints").iterdir() if p.name.startswith(".")], "temp folder left"
    assert load_config(folder / "config.yaml") == _config(folder)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]
    for record in records:
        assert record["survivors"] == 2 * 2  # 2 prompts, pruned 4 -> 3 -> 2
        assert record["ledger"]["backward_rows"] == record["rows"] == 4 * 1  # half of 3 stochastic steps -> 1
        assert record["ledger"]["preview_decodes"] == 2 * 4 + 2 * 3
        for name in ("reward_mean", "reward_std", "loss", "policy_loss", "kl", "approx_kl", "clip_fraction",
                     "grad_norm", "ratio_mean", "lr", "wall_time"):
            assert isinstance(record[name], float), name
    assert records[0]["lr"] == pytest.approx(0.5e-2) and records[1]["lr"] == pytest.approx(1e-2)  # warm-up
    assert (folder / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metadata = read_lora_metadata(folder / "lora.safetensors")
    assert metadata["base_model"] == "tiny:sd"
    assert json.loads(metadata["steps"]) == 4 * 2  # optimiser steps: 2 minibatches (updates_per_rollout) per iteration
    assert json.loads(metadata["group_size"]) == 4 and json.loads(metadata["final_group_size"]) == 2
    assert metadata["prune_schedule"] == "1:3, 2:2"
    assert json.loads(metadata["rewards"]) == {"brightness": 1.0}
    assert metadata["key_format"] == "kohya"
    # The export holds the EMA weights (ema_decay is set), not the raw ones.
    exported = load_file(str(folder / "lora.safetensors"))
    ups = [k for k in exported if k.endswith(".lora_up.weight")]
    assert ups and any(exported[k].abs().sum() > 0 for k in ups)


def test_resume_is_bit_identical(reference, tmp_path: Path):
    _, expected = reference
    first = Trainer.from_run(_config(tmp_path, iterations=2)).run()
    assert first.iterations_done == 2
    resumed = Trainer.from_run(_config(tmp_path, iterations=4))
    resumed.run(resume_from="latest")
    _assert_identical(_state(resumed), expected)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


def test_resume_refuses_a_changed_training_field(reference, tmp_path: Path):
    folder, _ = reference
    changed = _config(tmp_path, optim=OptimConfig(lr=3e-2, warmup_steps=2))
    with pytest.raises(ProGRPOConfigError) as error:
        train(changed, resume_from=folder / "checkpoints" / "iter_2")
    message = str(error.value)
    assert "optim.lr" in message and "0.01" in message and "0.03" in message
    # fields that do not change the computation may differ
    free = _config(tmp_path, iterations=2, checkpoint_every=7)
    trainer = Trainer.from_run(free)
    trainer.resume(folder / "checkpoints" / "iter_2")
    assert trainer.iteration == 2


def test_should_stop_checkpoints_and_resumes(reference, tmp_path: Path):
    _, expected = reference
    calls = []

    def stop_after_one() -> bool:
        calls.append(1)
        return len(calls) > 1

    progress: list[tuple[int, int]] = []
    result = train(_config(tmp_path, checkpoint_every=0), should_stop=stop_after_one,
                   progress=lambda done, total: progress.append((done, total)))
    assert result.stopped and result.iterations_done == 1
    assert progress == [(1, 4)]
    assert resolve_checkpoint(tmp_path, "latest").name == "iter_1"
    assert result.lora_path is not None and result.lora_path.is_file()
    resumed = Trainer.from_run(_config(tmp_path))
    resumed.run(resume_from="latest")
    _assert_identical(_state(resumed), expected)


class _InterruptingReward:
    """Brightness, but Ctrl-C on the ``at``-th score call (mid-rollout)."""

    def __init__(self, at: int) -> None:
        self.inner = build_rewards({"brightness": {"weight": 1.0}})
        self.calls = 0
        self.at = at

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner.score(images, prompts)


def test_keyboard_interrupt_mid_iteration_keeps_the_last_complete_state(reference, tmp_path: Path):
    _, expected = reference
    # 3 score calls per iteration (2 checkpoints + final): call 8 is iteration 3's second preview.
    trainer = Trainer.from_run(_config(tmp_path, checkpoint_every=0), reward=_InterruptingReward(at=8))
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert resolve_checkpoint(tmp_path, "latest").name == "iter_2"
    resumed = Trainer.from_run(_config(tmp_path))
    resumed.run(resume_from="latest")
    _assert_identical(_state(resumed), expected)


def test_resume_from_missing_checkpoint_is_explained(tmp_path: Path):
    with pytest.raises(ProGRPOConfigError, match="no checkpoint was written"):
        Trainer.from_run(_config(tmp_path)).resume("latest")
    with pytest.raises(ProGRPOConfigError, match="not a checkpoint folder"):
        Trainer.from_run(_config(tmp_path)).resume(tmp_path)


def test_trainer_leaves_the_callers_rng_alone(tmp_path: Path):
    trainer = Trainer.from_run(_config(tmp_path, iterations=1, checkpoint_every=0))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    trainer.run_iteration()
    assert torch.equal(torch.rand(3), expected)
    assert dataclasses.is_dataclass(trainer.config)


def test_a_checkpoint_from_before_the_baseline_regime_names_the_fields_to_set():
    from progrpo.train.checkpoint import LEGACY_VALUES, config_differences

    current = {"grpo": {"clip_range": 1e-4, "updates_per_rollout": 2, "kl_form": "flow_grpo", "loss_scale": 1.0},
               "rollout": {"group_size": 4, "preview": "current"}}
    saved = {"grpo": {"clip_range": 1e-4}, "rollout": {"group_size": 4}}  # written before those fields existed
    differences = {name: (old, new) for name, old, new in config_differences(saved, current)}
    assert differences == {"grpo.updates_per_rollout": (1, 2), "grpo.kl_form": ("exact", "flow_grpo"),
                           "rollout.preview": ("stale", "current")}
    legacy = {"grpo": {**current["grpo"], "updates_per_rollout": 1, "kl_form": "exact"},
              "rollout": {**current["rollout"], "preview": LEGACY_VALUES["rollout.preview"]}}
    assert config_differences(saved, legacy) == []


def test_keep_last_holds_the_newest_checkpoints_and_resumes(tmp_path: Path):
    trainer = Trainer.from_run(_config(tmp_path, iterations=4, checkpoint_every=1, keep_last=2))
    trainer.run()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["iter_3", "iter_4"]
    assert (root / "latest").read_text().strip() == "iter_4"
    resumed = Trainer.from_run(_config(tmp_path, iterations=5, checkpoint_every=1, keep_last=2))
    resumed.run(resume_from="latest")
    assert resumed.iteration == 5
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["iter_4", "iter_5"]


def test_a_kill_while_pruning_leaves_the_newest_checkpoint_whole(tmp_path: Path, monkeypatch):
    """Pruning renames an old folder to a temp before deleting it: killed in between, the newest checkpoint
    (what ``latest`` names) is complete and resumable, and the next run removes the temp."""
    from progrpo.train import checkpoint

    Trainer.from_run(_config(tmp_path, iterations=2, checkpoint_every=1)).run()
    root = tmp_path / "checkpoints"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.prune_checkpoints(tmp_path, keep_last=1)
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["iter_2"]
    resumed = Trainer.from_run(_config(tmp_path, iterations=3, checkpoint_every=1, keep_last=1))
    resumed.run(resume_from="latest")
    assert resumed.iteration == 3
    assert sorted(p.name for p in root.iterdir()) == ["iter_3", "latest"]  # the temp is gone


class _Tied:
    """Every image scores 1: every group ties (a saturated reward)."""

    name = "saturated"

    def score(self, images, prompts):
        return torch.ones(images.shape[0])


def test_groups_that_tie_are_counted_and_a_run_of_them_is_warned_about(tmp_path: Path, caplog):
    trainer = Trainer.from_run(_config(tmp_path, iterations=3, checkpoint_every=0), reward=_Tied())
    with caplog.at_level("WARNING", logger="progrpo"):
        result = trainer.run()
    assert [r["zero_variance_groups"] for r in result.history] == [r["prompts"] for r in result.history]
    warnings = [m for m in caplog.messages if "tied" in m]
    assert len(warnings) == 1 and "reward brightness" in warnings[0] and "100%" in warnings[0], warnings


def test_curves_leave_out_quantities_that_never_move(tmp_path: Path):
    from progrpo.train.curves import _series, plot_training_curves

    history = [{"iteration": k, "reward_mean": 0.5 + 0.01 * k, "reward_group_std": 0.1, "kl": 0.0,
                "clip_fraction": 0.0, "grad_norm": 1.0 + k} for k in range(5)]
    assert _series(history, ("kl", "approx_kl")) is None  # identically 0: no panel
    assert _series(history, ("grad_norm",)) == ("grad_norm", [1.0, 2.0, 3.0, 4.0, 5.0])
    path = plot_training_curves(history, tmp_path / "curve.png")
    from PIL import Image

    with Image.open(path) as image:  # reward + within-group std + grad norm: 3 panels of 330 px
        assert image.size == (990, 320)


def test_held_out_evaluation_is_recorded_and_leaves_training_unchanged(tmp_path: Path):
    """eval_every records eval_reward on held-out prompts; it runs under a forked RNG, so the weights the run
    trains are bit-identical to a run without it."""
    plain = Trainer.from_run(_config(tmp_path / "plain", iterations=4, checkpoint_every=0))
    plain.run()
    evaluated = Trainer.from_run(_config(tmp_path / "evaluated", iterations=4, checkpoint_every=0, eval_every=2,
                                eval_prompts=["a green frog", "a red cat"], eval_samples=2))
    result = evaluated.run()
    assert [("eval_reward" in r) for r in result.history] == [False, True, False, True]
    assert all(0.0 <= r["eval_reward"] <= 1.0 for r in result.history if "eval_reward" in r)
    for mine, theirs in zip(evaluated.params, plain.params, strict=True):
        assert torch.equal(mine, theirs)
