"""Exact OVF against brute force over every k-subset."""

from __future__ import annotations

import itertools

import pytest
import torch

from progrpo.errors import ProGRPOConfigError
from progrpo.ovf import optimal_variance_subset


def brute_force_best_variance(rewards: torch.Tensor, k: int) -> float:
    values = rewards.double()
    return max(values[list(subset)].var(unbiased=False).item() for subset in itertools.combinations(range(len(values)), k))


def _cases():
    generator = torch.Generator().manual_seed(0)
    for group_size in range(2, 15):
        for kind in ("random", "tied", "duplicates"):
            if kind == "random":
                rewards = torch.randn(group_size, generator=generator)
            elif kind == "tied":
                rewards = torch.randint(0, 3, (group_size,), generator=generator).float()
            else:
                base = torch.randn(max(1, group_size // 3), generator=generator)
                rewards = base[torch.randint(0, len(base), (group_size,), generator=generator)]
            for k in sorted({2, max(2, group_size // 2), group_size - 1, group_size}):
                if 2 <= k <= group_size:
                    yield rewards, k


@pytest.mark.parametrize("rewards,k", list(_cases()))
def test_ovf_matches_brute_force(rewards, k):
    chosen = optimal_variance_subset(rewards, k)
    assert chosen.shape == (k,) and chosen.dtype == torch.long
    assert torch.equal(chosen, chosen.sort().values), "indices must be ascending"
    assert len(set(chosen.tolist())) == k
    got = rewards.double()[chosen].var(unbiased=False).item()
    assert got == pytest.approx(brute_force_best_variance(rewards, k), abs=1e-12, rel=1e-9)


def test_ovf_batched_equals_per_group():
    rewards = torch.randn(5, 11, generator=torch.Generator().manual_seed(1))
    batched = optimal_variance_subset(rewards, 4)
    assert batched.shape == (5, 4)
    for row, chosen in zip(rewards, batched):
        assert torch.equal(chosen, optimal_variance_subset(row, 4))


def test_ovf_keeps_extremes_of_a_clustered_group():
    # a cluster near 0 and two outliers on each side: the max-variance 4-subset is the outliers
    rewards = torch.tensor([0.0, 0.01, -0.01, 5.0, 0.02, -4.0, 4.5, -0.02, -3.9])
    assert optimal_variance_subset(rewards, 4).tolist() == [3, 5, 6, 8]


def test_ovf_k_equals_group_returns_all():
    assert optimal_variance_subset(torch.tensor([3.0, 1.0, 2.0]), 3).tolist() == [0, 1, 2]


def test_ovf_scales_to_large_groups():
    rewards = torch.randn(64, 4096, generator=torch.Generator().manual_seed(2))
    chosen = optimal_variance_subset(rewards, 512)
    assert chosen.shape == (64, 512)


@pytest.mark.parametrize(
    "rewards,k,message",
    [
        (torch.randn(5), 1, "k=1: keep at least 2"),
        (torch.randn(5), 6, "k=6 is larger than the group size G=5"),
        (torch.tensor([1.0, float("nan"), 2.0]), 2, "NaN or inf"),
        (torch.tensor([1.0, float("inf"), 2.0]), 2, "NaN or inf"),
        (torch.randn(2, 3, 4), 2, r"\[G\] or \[P, G\]"),
        (torch.randn(5), 2.5, "k must be an int"),
    ],
)
def test_ovf_rejects_bad_input(rewards, k, message):
    with pytest.raises(ProGRPOConfigError, match=message):
        optimal_variance_subset(rewards, k)
