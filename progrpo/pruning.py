"""Prune schedules and the selection strategies that apply them (Pro-GRPO's funnel).

A schedule maps checkpoint steps to the number of trajectories kept per prompt, e.g. the
paper's flow setting ``{5: 24, 7: 12}`` over 10 steps with 48 trajectories per prompt
(48 -> 24 -> 12). Checkpoint ``c`` means "after c steps": the preview is the clean-sample
prediction of step ``c - 1``'s network call, so pruning costs no extra model evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .errors import ProGRPOConfigError
from .ovf import optimal_variance_subset

_FIELD = "rollout.prune_schedule"  # the TrainConfig field every schedule error is about


@dataclass(frozen=True)
class PruneSchedule:
    """Checkpoints ``((step, keep), ...)``, steps strictly increasing, keeps strictly shrinking.

    ``keep`` is per prompt and at least 2 (a group of one has no variance, hence no advantage).
    """

    checkpoints: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        pairs = tuple((int(step), int(keep)) for step, keep in self.checkpoints)
        object.__setattr__(self, "checkpoints", pairs)
        if not pairs:
            raise ProGRPOConfigError(
                "prune_schedule has no checkpoints; give at least one 'step:keep' pair, or no schedule.", field=_FIELD
            )
        steps = [step for step, _ in pairs]
        keeps = [keep for _, keep in pairs]
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ProGRPOConfigError(f"prune_schedule steps {steps} must be strictly increasing.", field=_FIELD)
        if any(b >= a for a, b in zip(keeps, keeps[1:])):
            raise ProGRPOConfigError(f"prune_schedule keep counts {keeps} must strictly shrink.", field=_FIELD)
        if min(keeps) < 2:
            raise ProGRPOConfigError(
                f"prune_schedule keeps {keeps}: every checkpoint must keep at least 2 trajectories per prompt.",
                field=_FIELD,
            )

    @classmethod
    def parse(cls, text: str) -> "PruneSchedule":
        """Parse ``"5:24, 7:12"`` (step:keep pairs)."""
        try:
            pairs = [tuple(int(part) for part in item.split(":")) for item in text.replace(" ", "").split(",") if item]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError
        except ValueError:
            raise ProGRPOConfigError(
                f"prune_schedule {text!r} is not a list of step:keep pairs; write e.g. '5:24, 7:12'.", field=_FIELD
            ) from None
        return cls(tuple(pairs))  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls, mapping: Mapping[int, int]) -> "PruneSchedule":
        return cls(tuple(sorted((int(step), int(keep)) for step, keep in mapping.items())))

    def __str__(self) -> str:
        return ", ".join(f"{step}:{keep}" for step, keep in self.checkpoints)

    def validate_for(self, group_size: int, num_steps: int) -> None:
        """Check the schedule fits a run with ``group_size`` per prompt and ``num_steps`` steps."""
        first_keep = self.checkpoints[0][1]
        if first_keep >= group_size:
            raise ProGRPOConfigError(
                f"prune_schedule keeps {first_keep} at step {self.checkpoints[0][0]} but the group has only "
                f"{group_size} trajectories; keep fewer than group_size or raise group_size.", field=_FIELD
            )
        for step, _ in self.checkpoints:
            if not 1 <= step <= num_steps - 1:
                raise ProGRPOConfigError(
                    f"prune_schedule step {step} is outside 1..{num_steps - 1} for a {num_steps}-step run; "
                    "prune after at least one step and before the last.", field=_FIELD
                )

    def keep_at(self, step: int) -> int | None:
        return dict(self.checkpoints).get(step)

    @property
    def final_keep(self) -> int:
        return self.checkpoints[-1][1]


# --- selection strategies: rewards [P, L] -> kept positions [P, k] ascending -----------------

Selector = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def _select_ovf(rewards: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    return optimal_variance_subset(rewards, keep)


def _select_random(rewards: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    scores = torch.rand(rewards.shape, generator=generator)
    return scores.argsort(dim=-1)[:, :keep].sort(dim=-1).values.to(rewards.device)


def _select_topk(rewards: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    return rewards.topk(keep, dim=-1).indices.sort(dim=-1).values


def _select_none(rewards: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    return torch.arange(rewards.shape[-1], device=rewards.device).expand(rewards.shape[0], -1).clone()


#: selection strategies by name. ``none`` keeps every trajectory (the GRPO baseline; previews
#: are still scored, for diagnostics), ``random`` and ``topk`` are the ablations.
SELECTIONS: dict[str, Selector] = {
    "ovf": _select_ovf,
    "random": _select_random,
    "topk": _select_topk,
    "none": _select_none,
}


def rows_of_positions(positions: torch.Tensor, group_width: int) -> torch.Tensor:
    """Batch rows [P * k] holding ``positions`` [P, k] of P groups of ``group_width`` consecutive rows (group-major)."""
    return (positions + torch.arange(positions.shape[0]).unsqueeze(1) * group_width).reshape(-1)


def select(strategy: str, rewards: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    """Positions [P, keep] (ascending) kept in each of the P groups of ``rewards`` [P, L]."""
    if strategy not in SELECTIONS:
        raise ProGRPOConfigError(f"selection {strategy!r} is unknown; use one of {sorted(SELECTIONS)}.",
                                 field="rollout.selection")
    if not bool(torch.isfinite(rewards).all()):
        raise ProGRPOConfigError(
            "preview rewards contain NaN or inf; check the reward function (it must return finite scores)."
        )
    return SELECTIONS[strategy](rewards, keep, generator)
