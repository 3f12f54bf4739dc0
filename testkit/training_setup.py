"""Shared set-up of the training fault tests: a tiny run on the embedded digits flow model.

The digits model loads in ~0.1 s once diffusers is imported and an iteration takes ~0.3 s on one
thread, so each fault test is a few real iterations. The config uses every piece of state a
resume must restore (LoRA dropout, timestep_fraction < 1, lr warm-up, EMA, KL, pruning).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from progrpo.lora import LoraSettings, lora_state_dict
from progrpo.rewards.base import BaseReward
from progrpo.rollout import RolloutConfig
from progrpo.train import GRPOConfig, OptimConfig, RunConfig, Trainer

#: reward calls per iteration of :func:`digits_config`: one preview (prune at step 2) + the final images.
CALLS_PER_ITERATION = 2


def digits_config(output_dir: Path, **overrides: Any) -> RunConfig:
    values: dict[str, Any] = {
        "model": "embedded:digits_flow",
        "prompts": ["a handwritten digit 0", "a handwritten digit 1", "a handwritten digit 7"],
        "prompts_per_iteration": 2,
        "iterations": 6,
        "rollout": RolloutConfig(group_size=4, num_steps=4, dynamics="flow_sde", noise_level=0.7, height=16, width=16,
                                 prune_schedule="2:2", keep_images=False),
        "lora": LoraSettings(rank=2, alpha=2.0, dropout=0.1),
        "optim": OptimConfig(lr=5e-3, warmup_steps=2),
        "grpo": GRPOConfig(clip_range=0.2, kl_beta=0.01, timestep_fraction=0.5, micro_batch_rows=3, ema_decay=0.9),
        "rewards": {"digit_alignment": {"weight": 1.0}},
        "output_dir": str(output_dir),
        "checkpoint_every": 1,
        "seed": 5,
    }
    values.update(overrides)
    return RunConfig(**values)


class ScriptedReward(BaseReward):
    """Mean brightness, except on chosen 1-based call numbers: NaN scores, or a RuntimeError."""

    name = "scripted"

    def __init__(self, nan_calls: list[int] | None = None, raise_calls: list[int] | None = None) -> None:
        self.nan_calls = set(nan_calls or ())
        self.raise_calls = set(raise_calls or ())
        self.calls = 0
        self.raised: list[Exception] = []

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.calls += 1
        if self.calls in self.raise_calls:
            error = RuntimeError(f"reward server unreachable (call {self.calls})")
            self.raised.append(error)
            raise error
        scores = images.mean(dim=(1, 2, 3))
        if self.calls in self.nan_calls:
            scores = scores.clone()
            scores[0] = float("nan")
        return scores


def scripted_rewards(**options: Any) -> dict[str, dict[str, Any]]:
    """A ``RunConfig.rewards`` spec: digit alignment plus the scripted reward under the name ``flaky``."""
    return {"digit_alignment": {"weight": 1.0}, "flaky": {"reward": "test_scripted", "weight": 0.5, **options}}


def register_scripted(monkeypatch) -> None:
    """Register :class:`ScriptedReward` as ``test_scripted`` for one test (the registry is restored after)."""
    from progrpo.rewards.base import REWARDS

    monkeypatch.setitem(REWARDS, "test_scripted", ScriptedReward)


def lora_of(folder: Path, verifier: Trainer) -> dict[str, torch.Tensor]:
    """The LoRA weights of checkpoint ``folder`` (loaded through the real resume path)."""
    verifier.resume(folder)
    return {key: value.clone() for key, value in lora_state_dict(verifier.network).items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for key, value in a.items():
        assert torch.equal(value, b[key]), f"{what}: {key} differs"


def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path (to prove a folder was not touched)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_entries(*folders: Path) -> list[str]:
    """Names of leftover temp files/folders (atomic writers' ``.x.tmp`` / ``.x.tmp-*`` / ``.x.old-*``)."""
    return [p.name for folder in folders if folder.is_dir() for p in folder.iterdir() if p.name.startswith(".")]
