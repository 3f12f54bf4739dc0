"""Compute ledger: what a rollout (and a training step) cost, counted, not estimated.

The paper's cost table (Table 4) counts FLOPs of sampling, decoding, reward and optimisation;
this ledger records the same categories on any model, plus plain counts that need no FLOP
counter: model evaluations per CFG branch, trajectory-steps, VAE decodes and reward calls.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Iterator

from torch.utils.flop_counter import FlopCounterMode

#: FLOP categories, as in the paper's table.
FLOP_CATEGORIES = ("sampling", "decode", "reward", "training")


@dataclass
class ComputeLedger:
    """Counters for one rollout or training iteration (merge several with ``+=``).

    ``trajectory_steps``: rows passed through the network (one per live trajectory per step);
    ``model_evaluations``: network rows times the CFG branches (2 with guidance, else 1): the
    trajectory-steps plus ``preview_evaluations``;
    ``preview_evaluations``: evaluations made only for a checkpoint preview at x_c (the rows the
    checkpoint then pruned; survivors reuse their call for step c), times the CFG branches;
    ``model_calls``: batched forward calls; ``preview_decodes`` / ``final_decodes``: images decoded;
    ``reward_calls``: images scored; ``backward_rows``: (trajectory, step) rows backpropagated;
    ``flops``: per category, filled only when ``measure_flops`` is on (FlopCounterMode is slow).
    """

    trajectory_steps: int = 0
    model_evaluations: int = 0
    preview_evaluations: int = 0
    model_calls: int = 0
    preview_decodes: int = 0
    final_decodes: int = 0
    reward_calls: int = 0
    backward_rows: int = 0
    measure_flops: bool = False
    flops: dict[str, int] = field(default_factory=lambda: {category: 0 for category in FLOP_CATEGORIES})

    @property
    def vae_decodes(self) -> int:
        return self.preview_decodes + self.final_decodes

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())

    @contextlib.contextmanager
    def count_flops(self, category: str) -> Iterator[None]:
        """Attribute the FLOPs of the enclosed torch ops to ``category`` (no-op when disabled)."""
        if not self.measure_flops:
            yield
            return
        counter = FlopCounterMode(display=False)
        with counter:
            yield
        self.flops[category] = self.flops.get(category, 0) + int(counter.get_total_flops())

    def __iadd__(self, other: "ComputeLedger") -> "ComputeLedger":
        for name in ("trajectory_steps", "model_evaluations", "preview_evaluations", "model_calls", "preview_decodes",
                     "final_decodes", "reward_calls", "backward_rows"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for category, value in other.flops.items():
            self.flops[category] = self.flops.get(category, 0) + value
        return self

    def as_dict(self) -> dict[str, object]:
        record = asdict(self)
        record.pop("measure_flops")
        record["vae_decodes"] = self.vae_decodes
        record["total_flops"] = self.total_flops
        return record
