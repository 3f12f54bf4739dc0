"""Optimal Variance Filtering: the k-subset of a group's rewards with the largest variance.

For scalar rewards the maximiser is always "the ``a`` highest plus the ``k - a`` lowest" for some
``a`` in ``0..k`` (PODS, arXiv 2504.13818, Lemma 3.1: a subset with a "hole" in its value range
can swap an inner element for an outer one without lowering the variance). So the exact optimum
costs one sort plus a scan over ``a`` with prefix sums: O(G log G), not the C(G, k) search.
"""

from __future__ import annotations

import torch

from .errors import ProGRPOConfigError


def _validate(rewards: torch.Tensor, k: int) -> None:
    if rewards.ndim not in (1, 2) or rewards.shape[-1] == 0:
        raise ProGRPOConfigError(
            f"rewards must be a non-empty [G] or [P, G] tensor, got shape {tuple(rewards.shape)}."
        )
    group_size = rewards.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int):
        raise ProGRPOConfigError(f"k must be an int, got {type(k).__name__}.")
    if k < 2:
        raise ProGRPOConfigError(f"k={k}: keep at least 2 trajectories, a single one has no variance.")
    if k > group_size:
        raise ProGRPOConfigError(
            f"k={k} is larger than the group size G={group_size}; choose k <= G."
        )
    if not bool(torch.isfinite(rewards).all()):
        raise ProGRPOConfigError(
            "rewards contain NaN or inf; fix or drop the reward before filtering (OVF needs finite rewards)."
        )


def subset_variances(sorted_rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Population variance of "a highest + (k-a) lowest" for a = 0..k.

    ``sorted_rewards``: [P, G] ascending -> [P, k+1] (float64, so the scan is exact enough to
    agree with brute force on ties).
    """
    values = sorted_rewards.to(torch.float64)
    zero = values.new_zeros(values.shape[0], 1)
    low_sum = torch.cat([zero, values.cumsum(-1)], dim=-1)  # low_sum[j] = sum of j lowest
    low_sq = torch.cat([zero, values.square().cumsum(-1)], dim=-1)
    high_sum = torch.cat([zero, values.flip(-1).cumsum(-1)], dim=-1)  # high_sum[a] = sum of a highest
    high_sq = torch.cat([zero, values.flip(-1).square().cumsum(-1)], dim=-1)
    a = torch.arange(k + 1, device=values.device)
    total = low_sum[:, k - a] + high_sum[:, a]
    total_sq = low_sq[:, k - a] + high_sq[:, a]
    return (total_sq / k - (total / k).square()).clamp(min=0)


def optimal_variance_subset(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of a k-subset with maximal population variance, ascending.

    Args:
        rewards: [G] or [P, G] finite rewards (a batch of P groups).
        k: subset size, 2 <= k <= G.

    Returns:
        LongTensor [k] (or [P, k]) of indices into the last dim, sorted ascending.
        ``k == G`` returns every index.
    """
    _validate(rewards, k)
    batched = rewards.ndim == 2
    groups = rewards if batched else rewards.unsqueeze(0)
    group_size = groups.shape[-1]
    if k == group_size:
        chosen = torch.arange(group_size, device=groups.device).expand(groups.shape[0], -1).clone()
    else:
        order = groups.argsort(dim=-1, stable=True)
        best_a = subset_variances(groups.gather(-1, order), k).argmax(dim=-1)  # [P]
        # position j of the sorted order is kept iff j < k - a (lowest) or j >= G - a (highest).
        positions = torch.arange(group_size, device=groups.device).unsqueeze(0)
        keep = (positions < (k - best_a).unsqueeze(1)) | (positions >= (group_size - best_a).unsqueeze(1))
        chosen = order.masked_select(keep).reshape(groups.shape[0], k).sort(dim=-1).values
    return chosen if batched else chosen[0]
