"""The clipped GRPO surrogate and its diagnostics: pure functions over per-(trajectory, step) rows.

The objective is PPO's clipped surrogate with group-relative advantages, as DDPO and Flow-GRPO
train it (``ddpo_pytorch/scripts/train.py``, ``flow_grpo/scripts/train_sd3.py``)::

    r = exp(logp_new - logp_old)
    loss = max(-A * r, -A * clip(r, 1 - eps, 1 + eps)) = -min(r * A, clip(r) * A)

Everything is float32, whatever the model's dtype (Flow-GRPO computes the ratio in fp32 too).
"""

from __future__ import annotations

import torch

from ..errors import ProGRPOConfigError


def _check_rows(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if any(len(shape) != 1 for shape in shapes.values()) or len(set(shapes.values())) != 1:
        raise ProGRPOConfigError(f"loss inputs must all be 1-D [N] tensors of one length; got shapes {shapes}.")


def log_ratio(log_prob_new: torch.Tensor, log_prob_old: torch.Tensor) -> torch.Tensor:
    """``logp_new - logp_old`` in float32: [N], [N] -> [N]."""
    return log_prob_new.float() - log_prob_old.float()


def clipped_surrogate(
    log_prob_new: torch.Tensor,
    log_prob_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
) -> torch.Tensor:
    """Per-row clipped surrogate loss ``-min(r*A, clip(r, 1-eps, 1+eps)*A)``.

    Args:
        log_prob_new: [N] log-probs under the current policy (carries the gradient).
        log_prob_old: [N] log-probs stored by the rollout (no gradient needed).
        advantages: [N] advantages (already clamped by the caller if desired).
        clip_range: epsilon > 0.

    Returns:
        [N] float32 losses; their mean is the GRPO policy loss.
    """
    _check_rows(log_prob_new=log_prob_new, log_prob_old=log_prob_old, advantages=advantages)
    if not clip_range > 0:
        raise ProGRPOConfigError(f"clip_range={clip_range} must be > 0; Flow-GRPO uses 1e-4.")
    ratio = torch.exp(log_ratio(log_prob_new, log_prob_old))
    advantages = advantages.float()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped)


def approx_kl(log_prob_new: torch.Tensor, log_prob_old: torch.Tensor) -> torch.Tensor:
    """Per-row ``0.5 * (logp_new - logp_old)^2`` (DDPO/Flow-GRPO's ``approx_kl`` diagnostic): [N] -> [N]."""
    _check_rows(log_prob_new=log_prob_new, log_prob_old=log_prob_old)
    return 0.5 * log_ratio(log_prob_new, log_prob_old).square()


def clip_fraction(log_prob_new: torch.Tensor, log_prob_old: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Per-row indicator (0./1. float32) of ``|r - 1| > clip_range``: [N] -> [N]; its mean is the clip fraction."""
    _check_rows(log_prob_new=log_prob_new, log_prob_old=log_prob_old)
    ratio = torch.exp(log_ratio(log_prob_new, log_prob_old))
    return ((ratio - 1.0).abs() > clip_range).float()


# --- KL to the reference policy --------------------------------------------------------------


def kl_exact(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Exact ``KL(N(mean, std^2) || N(reference_mean, std^2))`` per dimension, averaged -> [B].

    ``mean``, ``reference_mean`` [B, ...]; ``std`` [B] the step's std (for flow SDEs it holds
    ``sqrt|dt|``); ``dt`` [B] unused (kept so every form has one signature). Rows with std 0 give 0.
    """
    del dt
    stochastic = std > 0
    safe_std = torch.where(stochastic, std, torch.ones_like(std)).float()
    shape = (-1,) + (1,) * (mean.ndim - 1)
    squared = (mean.float() - reference_mean.float()).square() / (2.0 * safe_std.view(shape).square())
    kl = squared.flatten(1).mean(1)
    return torch.where(stochastic, kl, torch.zeros_like(kl))


def kl_flow_grpo(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Flow-GRPO's KL (``train_sd3.py``): ``mean((mu - mu_ref)^2) / (2 std_dev_t^2)`` -> [B].

    Flow-GRPO's ``std_dev_t`` is the SDE's diffusion coefficient WITHOUT ``sqrt|dt|``, so this is
    :func:`kl_exact` times ``|dt|`` (``dt`` [B]: the step's sigma change for SDE dynamics whose std
    holds ``sqrt|dt|``, else 1). Flow-GRPO's beta values (0.01-0.04) mean what they say only here.
    """
    return kl_exact(mean, reference_mean, std, dt) * dt.float().abs()


#: ``GRPOConfig.kl_form`` name -> per-row KL ``(mean, reference_mean, std [B], dt [B]) -> [B]``.
KL_FORMS = {"exact": kl_exact, "flow_grpo": kl_flow_grpo}
