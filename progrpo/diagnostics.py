"""Diagnostics the paper argues from but does not report: reward clustering, preview fidelity.

* reward clustering (paper Observation 1): the fraction of trajectories whose advantage is
  within ``delta`` of 0 -- they cost a full trajectory and teach almost nothing;
* preview-vs-final rank correlation per checkpoint: how well the one-step clean-sample preview
  predicts the final reward (Spearman, within each prompt's group, averaged over prompts);
* within-group reward std before/after each selection (recorded by the rollout itself).
"""

from __future__ import annotations

import torch

from .rollout import Rollout


def clustering_fraction(advantages: torch.Tensor, delta: float = 0.25) -> float:
    """Fraction of entries with ``|A| <= delta`` (advantages [N]); 0 for an empty tensor."""
    if advantages.numel() == 0:
        return 0.0
    return float((advantages.abs() <= delta).float().mean())


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of ``values`` [n], ties sharing their average rank (float64)."""
    order = values.argsort(stable=True)
    ranks = torch.empty(len(values), dtype=torch.float64)
    ranks[order] = torch.arange(len(values), dtype=torch.float64)
    for value in torch.unique(values):
        tied = values == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two [n] tensors (NaN if either is constant or n < 2)."""
    if x.numel() < 2:
        return float("nan")
    rank_x, rank_y = average_ranks(x) - (x.numel() - 1) / 2, average_ranks(y) - (y.numel() - 1) / 2
    denominator = (rank_x.square().sum() * rank_y.square().sum()).sqrt()
    return float((rank_x * rank_y).sum() / denominator) if denominator > 0 else float("nan")


def preview_final_correlation(rollout: Rollout, min_group: int = 3) -> dict[int, float]:
    """Checkpoint step -> mean within-group Spearman(preview reward, final reward) of survivors.

    Groups with fewer than ``min_group`` survivors are skipped (two points always correlate +-1);
    NaN when no group qualifies. With selection ``none`` every trajectory survives, which is the
    clean way to measure preview fidelity.
    """
    result: dict[int, float] = {}
    for slot, step in enumerate(rollout.checkpoint_steps):
        previews = rollout.preview_rewards[slot, rollout.trajectory_index]
        values = []
        for prompt in range(rollout.num_prompts):
            rows = rollout.prompt_index == prompt
            if int(rows.sum()) >= min_group:
                value = spearman(previews[rows], rollout.final_rewards[rows])
                if value == value:  # not NaN
                    values.append(value)
        result[step] = sum(values) / len(values) if values else float("nan")
    return result
