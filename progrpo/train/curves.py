"""Training curves from the metric records (``metrics.jsonl``), as one PNG: the CLI's and the nodes' curve.

Panels, each only when its quantity moves (a panel of a value that is identically ~0, e.g. the KL with no
KL term and one on-policy step, says nothing):

* **reward**: the survivors' mean per iteration and its trailing mean over 10 iterations (the
  survivors' spread is what OVF maximises, so a +-std band says nothing about progress), and the held-out
  evaluation reward when the records carry one (``eval_reward``);
* **within-group std**: the survivors' reward std inside each prompt group, averaged: the signal GRPO's
  advantages are made of (0 when every group ties);
* **KL** to the LoRA-disabled base (``kl``, or the ratio-based estimate ``approx_kl``), **clip fraction**
  and **grad norm** of the update.

The GRPO loss is left out: with group-normalised advantages its value is ~0 by construction whatever
the policy learns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..log import logger

#: (title, y label, metric keys tried in order)
PANELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("within-group std", "survivors' reward std in a group", ("reward_group_std",)),
    ("KL to the base", "KL", ("kl", "approx_kl")),
    ("clip fraction", "fraction of clipped ratios", ("clip_fraction_off_policy", "clip_fraction")),
    ("grad norm", "LoRA gradient norm", ("grad_norm",)),
)
TRAILING = 10
_FLAT = 1e-12


def trailing_mean(values: Sequence[float], window: int = TRAILING) -> list[float]:
    """Mean of the last ``window`` values at every position (fewer at the start)."""
    out = []
    for index in range(len(values)):
        part = values[max(0, index - window + 1): index + 1]
        out.append(sum(part) / len(part))
    return out


def _series(history: Sequence[dict[str, Any]], keys: Sequence[str]) -> tuple[str, list[float]] | None:
    """The first key of ``keys`` present in every record, with its values; None when none moves."""
    for key in keys:
        values = [record.get(key) for record in history]
        if all(isinstance(value, (int, float)) for value in values):
            if max(abs(float(value)) for value in values) > _FLAT:
                return key, [float(value) for value in values]
            return None
    return None


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Write the curves of the completed (not skipped) records to ``path``; None when matplotlib is missing or
    there is nothing to plot."""
    history = [record for record in history if not record.get("skipped")]
    if not history:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed; %s not written (pip install matplotlib)", path)
        return None
    steps = [record["iteration"] + 1 for record in history]
    panels = [(title, label, found) for title, label, keys in PANELS if (found := _series(history, keys))]
    figure = Figure(figsize=(3.3 * (1 + len(panels)), 3.2))
    FigureCanvasAgg(figure)  # Agg canvas on this figure only: no global backend switch
    axes = figure.subplots(1, 1 + len(panels), squeeze=False)[0]
    _reward_panel(axes[0], steps, history)
    for ax, (title, label, (key, values)) in zip(axes[1:], panels, strict=True):
        ax.plot(steps, values, color="tab:gray", alpha=0.6, linewidth=1)
        ax.set(xlabel="iteration", ylabel=label, title=f"{title} ({key})" if key not in title else title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


def _reward_panel(ax: Any, steps: list[int], history: Sequence[dict[str, Any]]) -> None:
    mean = [record["reward_mean"] for record in history]
    ax.plot(steps, mean, color="tab:blue", alpha=0.35, linewidth=1, label="per iteration")
    ax.plot(steps, trailing_mean(mean), color="tab:blue", linewidth=2, label=f"mean of last {min(TRAILING, len(mean))}")
    evaluated = [(step, record["eval_reward"]) for step, record in zip(steps, history, strict=True)
                 if isinstance(record.get("eval_reward"), (int, float))]
    if evaluated:
        ax.plot(*zip(*evaluated, strict=True), color="tab:green", marker="o", linewidth=1.5, label="held-out prompts")
    ax.legend(loc="lower right", fontsize="small")
    ax.set(xlabel="iteration", ylabel="mean reward (survivors)", title="reward")
