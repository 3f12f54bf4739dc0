"""Group-relative advantages: each trajectory's reward against the others of its prompt."""

from __future__ import annotations

import torch

from .errors import ProGRPOConfigError

#: how the centred rewards are scaled: per-prompt std (GRPO, DanceGRPO, Pro-GRPO's survivor
#: std) or one std over the whole batch (Flow-GRPO's ``global_std=True``).
STD_MODES = ("group", "global")


def group_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    *,
    std_mode: str = "group",
    clip: float | None = 5.0,
    eps: float = 1e-6,
    epsilon: float = 0.0,
) -> torch.Tensor:
    """Advantages ``(R - mean_group) / (std + epsilon)`` in float32.

    Args:
        rewards: [N] final rewards of the trained (surviving) trajectories.
        group_index: [N] LongTensor, the prompt each trajectory belongs to.
        std_mode: ``"group"`` (population std of the row's group) or ``"global"`` (of all N).
        clip: advantages are clamped to [-clip, clip] (5 in DDPO/Flow-GRPO); None disables.
        eps: a std below this counts as zero variance.
        epsilon: added to the std (Flow-GRPO's ``(r - mean) / (std + 1e-4)``): a group whose
            rewards differ only by classifier noise keeps small advantages instead of |A| ~ 1.

    Returns:
        [N] float32; a group (or batch) whose rewards are all equal gets zeros, never NaN.
    """
    if rewards.ndim != 1 or group_index.shape != rewards.shape:
        raise ProGRPOConfigError(
            f"rewards {tuple(rewards.shape)} and group_index {tuple(group_index.shape)} must both be [N]."
        )
    if std_mode not in STD_MODES:
        raise ProGRPOConfigError(f"std_mode {std_mode!r} is unknown; use one of {STD_MODES}.")
    if not bool(torch.isfinite(rewards).all()):
        raise ProGRPOConfigError("rewards contain NaN or inf; advantages need finite rewards.")
    values = rewards.to(torch.float64)
    groups, inverse = torch.unique(group_index, return_inverse=True)
    counts = torch.zeros(len(groups), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(values))
    means = torch.zeros(len(groups), dtype=torch.float64).index_add_(0, inverse, values) / counts
    centred = values - means[inverse]
    if std_mode == "group":
        variances = torch.zeros(len(groups), dtype=torch.float64).index_add_(0, inverse, centred.square()) / counts
        std = variances.sqrt()[inverse]
    else:
        # Flow-GRPO: the std of all raw rewards of the batch, whatever their prompt.
        std = (values - values.mean()).square().mean().sqrt().expand_as(centred)
    advantages = torch.where(std > eps, centred / (std.clamp(min=eps) + epsilon), torch.zeros_like(centred))
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    return advantages.to(torch.float32)
