"""Error types. Every message names the offending input and says how to fix it."""

from __future__ import annotations

import torch


class ProGRPOError(Exception):
    """Base of the errors progrpo raises on purpose (the message names the input or file and the fix)."""


class ProGRPOConfigError(ProGRPOError, ValueError):
    """A configuration or input value is invalid (the message names the input and the fix).

    ``field`` is the dotted name of the config field at fault (``"rollout.group_size"``,
    ``"grpo.clip_range"``, ``"iterations"``; None when no single field is), so a front end maps
    it to its own input name instead of reading the message.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple:  # keep ``field`` across processes (pickle passes only ``args``)
        return _config_error, (type(self), str(self), self.field)


def _config_error(kind: type[ProGRPOConfigError], message: str, field: str | None) -> ProGRPOConfigError:
    return kind(message, field=field)


class ProGRPOTrainingError(ProGRPOError, RuntimeError):
    """A training run stopped on a fault; the message says what failed, where the last good
    checkpoint is and what to do. The original exception, if any, is chained (``__cause__``)."""


class ProGRPOCheckpointError(ProGRPOTrainingError):
    """A checkpoint could not be written (full disk, read-only folder); the previous one is intact."""


class ProGRPORewardError(ProGRPOTrainingError):
    """A reward raised during training; ``reward_name`` is its key in ``TrainConfig.rewards``."""

    def __init__(self, message: str, reward_name: str) -> None:
        super().__init__(message)
        self.reward_name = reward_name


class ProGRPONonFiniteError(ProGRPOTrainingError):
    """Too many consecutive iterations had NaN/inf values (``quantity``, last at ``iteration``)."""

    def __init__(self, message: str, quantity: str, iteration: int) -> None:
        super().__init__(message)
        self.quantity = quantity
        self.iteration = iteration


class ProGRPOOutOfMemoryError(ProGRPOTrainingError, torch.OutOfMemoryError):
    """The device ran out of memory during training; the message names the knobs that lower the peak.

    Also a ``torch.OutOfMemoryError``, so a host that cleans up after out-of-memory errors (ComfyUI
    unloads its models) still does.
    """
