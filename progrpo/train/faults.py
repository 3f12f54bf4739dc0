"""Faults during training: NaN/inf skip an iteration, a failing reward is named, a bad streak stops the run.

An iteration whose rewards, decoded images (the model's output), rollout log-probs, advantages,
loss or gradient norm hold NaN/inf would write NaN into the LoRA and Adam's moments, so it is
skipped: no optimiser step, no lr or EMA step, its RNG draws are discarded, the iteration counter
moves on (the next iteration draws new noise) and its metrics line says ``"skipped": <quantity>``.
``TrainConfig.max_bad_iterations`` skipped in a row mean something is broken (a reward, fp16
overflow, a too-high lr): the trainer checkpoints and raises :class:`ProGRPONonFiniteError`.

Under torch.distributed every rank must decide the same way or the next collective hangs, so the
rollout never raises on a non-finite value: :class:`GuardedReward` notes it and scores 0, and
:func:`raise_if_any_rank_bad` sums the notes over the ranks. Later checks (gathered advantages,
all-reduced gradient norm) already see the same values on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ProGRPONonFiniteError, ProGRPOOutOfMemoryError, ProGRPORewardError
from ..log import logger
from ..rewards.base import WeightedSum
from .distributed import DistributedContext

#: what to try, per non-finite quantity (the stop error quotes it).
HINTS: dict[str, str] = {
    "rewards": "check the reward named above (a NaN for some images, e.g. a division by zero or an empty crop)",
    "model output": "the model overflowed: train in dtype float32 or bfloat16 instead of float16, or lower optim.lr",
    "advantages": "check the rewards' scale (values near the float32 limit)",
    "loss": "lower optim.lr, keep optim.grad_clip set, and train in float32 or bfloat16",
    "gradient norm": "lower optim.lr, keep optim.grad_clip set, and train in float32 or bfloat16",
}


class NonFiniteIteration(Exception):
    """The running iteration must be skipped: ``quantity`` (a key of :data:`HINTS`) was NaN/inf.

    Raised by :meth:`progrpo.train.Trainer.run_iteration`; :meth:`Trainer.run` records the skip.
    """

    def __init__(self, quantity: str, detail: str) -> None:
        super().__init__(f"{quantity} non-finite: {detail}")
        self.quantity = quantity
        self.detail = detail


def _all_finite(values: Any) -> bool:
    return bool(torch.isfinite(torch.as_tensor(values).detach().float()).all())


def check_finite(quantity: str, values: torch.Tensor, detail: str) -> None:
    """Raise :class:`NonFiniteIteration` when ``values`` holds a NaN or inf."""
    if not _all_finite(values):
        count = int((~torch.isfinite(values.detach().float())).sum())
        raise NonFiniteIteration(quantity, f"{count} of {values.numel()} {detail} are NaN/inf")


def check_update(update: Mapping[str, float]) -> None:
    """Raise when :func:`~progrpo.train.update.grpo_update` skipped its step (non-finite gradient norm)."""
    if update["step_skipped"]:
        quantity = "gradient norm" if math.isfinite(update["loss"]) else "loss"
        raise NonFiniteIteration(
            quantity, f"loss {update['loss']}, gradient norm {update['grad_norm']} (the training forward pass)"
        )


class GuardedReward:
    """The training reward for one rollout, with faults made explicit.

    * an exception inside a reward becomes :class:`ProGRPORewardError` naming it (its key in
      ``TrainConfig.rewards`` for a :class:`WeightedSum`), the original chained;
    * non-finite images (the model's output) or scores are noted in ``fault`` and scored 0, so the
      rollout finishes on every rank; :func:`raise_if_any_rank_bad` then skips the iteration.

    Finite scores are returned unchanged (same values as the wrapped reward, bit for bit).
    """

    def __init__(self, reward: Any) -> None:
        self.reward = reward
        self.name: str = getattr(reward, "name", type(reward).__name__)
        self.fault: NonFiniteIteration | None = None
        self.calls = 0

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> Any:
        self.calls += 1
        if not _all_finite(images):
            return self._note("model output", f"the decoded images of reward call {self.calls} of this iteration "
                              "(previews and final images are scored in turn)", images.shape[0])
        if isinstance(self.reward, WeightedSum):
            components = {key: self._call(key, reward.score, images, prompts)
                          for key, reward in self.reward.rewards.items()}
        else:
            score = self.reward.score if hasattr(self.reward, "score") else self.reward
            components = {self.name: self._call(self.name, score, images, prompts)}
        for key, scores in components.items():
            if not _all_finite(scores):
                return self._note("rewards", f"the scores of reward '{key}' at reward call {self.calls}",
                                  images.shape[0])
        if not isinstance(self.reward, WeightedSum):
            return components[self.name]
        combined = self.reward.combine(components)
        if not _all_finite(combined):
            return self._note("rewards", f"the weighted sum {self.name} at reward call {self.calls}", images.shape[0])
        return combined

    @staticmethod
    def _call(key: str, score: Any, images: torch.Tensor, prompts: Sequence[str]) -> Any:
        try:
            return score(images, prompts)
        except ProGRPORewardError:
            raise
        except Exception as error:  # KeyboardInterrupt and the like pass through untouched
            raise ProGRPORewardError(f"reward '{key}' raised {type(error).__name__}: {error}", reward_name=key) from error

    def _note(self, quantity: str, detail: str, rows: int) -> torch.Tensor:
        if self.fault is None:
            self.fault = NonFiniteIteration(quantity, f"{detail} hold NaN/inf")
            logger.warning("%s; this iteration will be skipped", self.fault)
        return torch.zeros(rows)


def raise_if_any_rank_bad(guard: GuardedReward, log_probs: torch.Tensor, distributed: DistributedContext) -> None:
    """After the rollout: raise :class:`NonFiniteIteration` on every rank when any rank saw a fault."""
    fault = guard.fault
    if fault is None and not _all_finite(log_probs):
        fault = NonFiniteIteration("model output", "the rollout's log-probs hold NaN/inf")
    bad_ranks = distributed.sum_values([0.0 if fault is None else 1.0])[0]
    if fault is not None:
        raise fault
    if bad_ranks > 0:
        raise NonFiniteIteration("model output", "another process's rollout held NaN/inf (see its log)")


# --- the streak of skipped iterations -------------------------------------------------------


@dataclass
class BadIterations:
    """Counts skipped iterations: ``consecutive`` (the current streak, from ``streak_start``) and ``total``."""

    limit: int
    consecutive: int = 0
    total: int = 0
    streak_start: int = 0
    last: NonFiniteIteration | None = None

    def passed(self) -> dict[str, Any]:
        """A completed iteration ends the streak; returns its metrics fields."""
        self.consecutive = 0
        return {"skipped": None, "skipped_iterations": self.total}

    def skipped(self, iteration: int, fault: NonFiniteIteration) -> dict[str, Any]:
        """Count skipped ``iteration``; returns its metrics fields."""
        if self.consecutive == 0:
            self.streak_start = iteration
        self.consecutive += 1
        self.total += 1
        self.last = fault
        return {"skipped": fault.quantity, "skipped_detail": fault.detail, "skipped_iterations": self.total}

    @property
    def exhausted(self) -> bool:
        return self.consecutive >= self.limit

    def state_dict(self) -> dict[str, int]:
        return {"bad_iterations": self.consecutive, "skipped_iterations": self.total, "bad_streak_start": self.streak_start}

    def load_state_dict(self, extra: Mapping[str, Any]) -> None:
        self.total = int(extra.get("skipped_iterations", 0))
        self.streak_start = int(extra.get("bad_streak_start", 0))
        # A checkpoint written by the stop itself holds a full streak: resuming it is the user's
        # deliberate retry, so the streak starts again (else the first bad iteration stops it).
        consecutive = int(extra.get("bad_iterations", 0))
        self.consecutive = consecutive if consecutive < self.limit else 0

    def stop_error(self, iteration: int, checkpoint: Path | None) -> ProGRPONonFiniteError:
        """The error ending the run after ``limit`` skipped iterations in a row (the last is ``iteration``)."""
        fault = self.last
        quantity = fault.quantity if fault is not None else "unknown"
        saved = (f"a checkpoint of this state is in {str(checkpoint)!r}" if checkpoint is not None
                 else "no checkpoint could be written by this process; the latest one stays valid")
        message = (
            f"training stopped: {self.consecutive} iterations in a row ({self.streak_start} to {iteration}, as "
            f"numbered in metrics.jsonl) were skipped because of NaN/inf values (max_bad_iterations="
            f"{self.limit}); the last at iteration {iteration}: {fault}. The LoRA weights are those of the last "
            f"good iteration and {saved}. What to try: {HINTS.get(quantity, 'check the rewards and the lr')}; "
            "then resume with --resume latest (resume_from='latest', which goes on with new noise) or raise "
            "max_bad_iterations (free to change on resume)."
        )
        return ProGRPONonFiniteError(message, quantity=quantity, iteration=iteration)


def skipped_record(iteration: int, fields: Mapping[str, Any], lr: float, seconds: float) -> dict[str, Any]:
    """The metrics line of a skipped iteration (no reward or loss values: they were not finite)."""
    return {"iteration": iteration, **fields, "lr": lr, "wall_time": seconds}


def reward_failure(error: ProGRPORewardError, iteration: int, checkpoint: Path | None) -> ProGRPORewardError:
    """The error ending the run when a reward raised during ``iteration`` (raise it ``from`` the original)."""
    saved = (f"a checkpoint of the {iteration} completed iterations is in {str(checkpoint)!r}" if checkpoint is not None
             else "no checkpoint could be written by this process; the latest one stays valid")
    return ProGRPORewardError(
        f"training stopped: {error} during iteration {iteration} (as numbered in metrics.jsonl); {saved}. Fix the "
        f"reward (its entry '{error.reward_name}' in config.rewards: options, model files, memory), then resume "
        "with --resume latest (resume_from='latest').",
        reward_name=error.reward_name,
    )


def out_of_memory(error: BaseException, iteration: int, checkpoint: Path | None, settings: Mapping[str, Any]) -> (
        ProGRPOOutOfMemoryError):
    """The error ending the run when the device ran out of memory in ``iteration`` (raise it ``from`` ``error``).

    ``settings``: the values of the memory knobs to quote (``micro_batch_rows``, ``max_batch_rows``,
    ``width``/``height``); every message names micro_batch_rows, gradient checkpointing and the
    resolution, the three knobs that set the training peak.
    """
    saved = (f"a checkpoint of the {iteration} completed iterations is in {str(checkpoint)!r}" if checkpoint is not None
             else "no checkpoint was written by this process; the latest one stays valid")
    quoted = ", ".join(f"{name}={value}" for name, value in settings.items())
    return ProGRPOOutOfMemoryError(
        f"out of memory during training iteration {iteration + 1} ({quoted}): {str(error).splitlines()[0][:200]}. "
        "To lower the peak: set micro_batch_rows to 1 (pairs per backward), turn gradient_checkpointing on, "
        "lower the resolution (width/height), lower max_batch_rows (rows per sampling call and decode), or use "
        f"training_dtype bf16. {saved}; resume with the same settings apart from these."
    )
