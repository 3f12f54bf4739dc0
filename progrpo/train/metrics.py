"""The metrics log of a run: one JSON record per iteration in ``metrics.jsonl``, and how a record is made.

Only rank 0 writes. A resumed run keeps the records of the iterations its checkpoint completed and
rewrites the file atomically (a crash may have left records of later iterations, or a torn last line).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..diagnostics import clustering_fraction, preview_final_correlation
from ..log import logger
from ..rollout import Rollout

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``path`` (none when it does not exist), skipping a line torn by a crash."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash mid-append; its iteration is re-run
            logger.warning("ignoring an incomplete line of %s (the run was killed while writing it)", path)
    return records


class MetricsLog:
    """``<output_dir>/metrics.jsonl`` and the records of the completed iterations (``history``).

    ``writes``: False on the ranks other than 0 (they keep the history, write nothing).
    """

    def __init__(self, output_dir: Path, writes: bool = True) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.writes = writes
        self.history: list[dict[str, Any]] = []

    def read_completed(self, iterations_done: int) -> None:
        """Load the records of iterations below ``iterations_done`` (a crash may have left later ones)."""
        self.history = [r for r in read_metrics(self.path) if r["iteration"] < iterations_done]

    def rewrite(self) -> None:
        """Rewrite the file as ``history``; atomic: a kill mid-rewrite must not lose checkpointed records."""
        if self.writes:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))

    def append(self, record: dict[str, Any]) -> None:
        """Add one iteration's record to ``history`` and the file."""
        self.history.append(record)
        if self.writes:
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(record) + "\n")


def group_std(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Population std of ``rewards`` [N] within each group id of ``groups`` [N] -> [G]."""
    return torch.stack([rewards[groups == g].std(unbiased=False) for g in torch.unique(groups)])


def iteration_record(k: int, rollout: Rollout, rewards: torch.Tensor, groups: torch.Tensor, advantages: torch.Tensor,
                     update: dict[str, float], lr: float, seconds: float, processes: int) -> dict[str, Any]:
    """One metrics line. ``rewards``/``groups``/``advantages`` [N] are the global batch's; the
    preview, pruning and ledger fields are this process's shard (all of it on one process)."""
    stds = group_std(rewards, groups)
    return {
        "iteration": k,
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std(unbiased=False)),
        "reward_group_std": float(stds.mean()),
        "zero_std_groups": float((stds < 1e-6).float().mean()),
        "zero_variance_groups": int((stds < 1e-6).sum()),
        "survivors": int(rewards.shape[0]),
        "prompts": int(torch.unique(groups).numel()),
        "processes": processes,
        "lr": lr,
        **update,
        "rows": int(update["rows"]),
        "preview_reward_mean": [float(v.nanmean()) for v in rollout.preview_rewards],
        "group_std_before": rollout.group_std_before.tolist(),
        "group_std_after": rollout.group_std_after.tolist(),
        # paper Observation 1: trained trajectories whose advantage is ~0 teach nothing
        "clustering_fraction": clustering_fraction(advantages),
        "preview_final_spearman": {  # None where no group had 3+ survivors to rank
            str(step): (None if math.isnan(value) else value) for step, value in preview_final_correlation(rollout).items()
        },
        "ledger": rollout.ledger.as_dict(),
        "wall_time": seconds,
    }
