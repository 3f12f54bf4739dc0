"""Group-relative advantages, hand-computed."""

from __future__ import annotations

import pytest
import torch

from progrpo.advantages import group_advantages
from progrpo.errors import ProGRPOConfigError


def test_group_std_hand_computed():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, 12.0, 14.0])
    groups = torch.tensor([0, 0, 1, 1, 1, 1])
    # group 0: mean 2, std 1 -> [-1, 1]; group 1: mean 11.5, population std sqrt(2.75)
    std1 = 2.75 ** 0.5
    expected = torch.tensor([-1.0, 1.0, -1.5 / std1, -1.5 / std1, 0.5 / std1, 2.5 / std1])
    torch.testing.assert_close(group_advantages(rewards, groups, clip=None), expected)


def test_global_std_uses_all_rewards():
    rewards = torch.tensor([1.0, 3.0, 5.0, 7.0])
    groups = torch.tensor([0, 0, 1, 1])
    std = torch.tensor([1.0, 3.0, 5.0, 7.0]).std(unbiased=False)
    expected = torch.tensor([-1.0, 1.0, -1.0, 1.0]) / std
    torch.testing.assert_close(group_advantages(rewards, groups, std_mode="global", clip=None), expected)


def test_zero_variance_group_gives_zeros_not_nan():
    rewards = torch.tensor([2.0, 2.0, 2.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 0, 1, 1])
    advantages = group_advantages(rewards, groups)
    assert torch.isfinite(advantages).all()
    assert advantages[:3].tolist() == [0.0, 0.0, 0.0]
    assert advantages[3:].tolist() == [-1.0, 1.0]
    assert group_advantages(torch.ones(4), torch.zeros(4, dtype=torch.long), std_mode="global").eq(0).all()


def test_clip():
    rewards = torch.tensor([0.0] * 99 + [1.0])
    advantages = group_advantages(rewards, torch.zeros(100, dtype=torch.long), clip=5.0)
    assert advantages.max() == 5.0 and advantages.dtype == torch.float32


def test_bad_inputs():
    with pytest.raises(ProGRPOConfigError, match="std_mode"):
        group_advantages(torch.ones(2), torch.zeros(2, dtype=torch.long), std_mode="batch")
    with pytest.raises(ProGRPOConfigError, match=r"must both be \[N\]"):
        group_advantages(torch.ones(2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ProGRPOConfigError, match="NaN or inf"):
        group_advantages(torch.tensor([1.0, float("nan")]), torch.zeros(2, dtype=torch.long))


def test_advantage_epsilon_damps_tiny_differences():
    """Flow-GRPO's (R - mean) / (std + 1e-4): rewards 0 and 1e-4 have std 5e-5, so A = +-5e-5 / 1.5e-4 = +-1/3
    instead of +-1; a real spread (std 0.5) is changed by only 2e-4 relative."""
    groups = torch.zeros(2, dtype=torch.long)
    tiny = torch.tensor([0.0, 1e-4])
    torch.testing.assert_close(group_advantages(tiny, groups, clip=None), torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(group_advantages(tiny, groups, clip=None, epsilon=1e-4),
                               torch.tensor([-1.0 / 3.0, 1.0 / 3.0]))
    wide = group_advantages(torch.tensor([0.0, 1.0]), groups, clip=None, epsilon=1e-4)
    torch.testing.assert_close(wide, torch.tensor([-0.5 / 0.5001, 0.5 / 0.5001]))
