"""Prune schedules and selection strategies."""

from __future__ import annotations

import pytest
import torch

from progrpo.errors import ProGRPOConfigError
from progrpo.pruning import PruneSchedule, rows_of_positions, select


def test_parse_and_format():
    schedule = PruneSchedule.parse("5:24, 7:12")
    assert schedule.checkpoints == ((5, 24), (7, 12))
    assert str(schedule) == "5:24, 7:12"
    assert PruneSchedule.from_mapping({7: 12, 5: 24}) == schedule
    schedule.validate_for(group_size=48, num_steps=10)


@pytest.mark.parametrize(
    "text,message",
    [
        ("5:24, 5:12", "strictly increasing"),
        ("5:12, 7:24", "strictly shrink"),
        ("5:24, 7:1", "at least 2"),
        ("five:24", "step:keep pairs"),
        ("5:24:3", "step:keep pairs"),
    ],
)
def test_bad_schedules(text, message):
    with pytest.raises(ProGRPOConfigError, match=message):
        PruneSchedule.parse(text)


def test_schedule_must_fit_the_run():
    with pytest.raises(ProGRPOConfigError, match="group has only 8 trajectories"):
        PruneSchedule.parse("3:8").validate_for(group_size=8, num_steps=10)
    with pytest.raises(ProGRPOConfigError, match="outside 1..9"):
        PruneSchedule.parse("10:4").validate_for(group_size=8, num_steps=10)
    with pytest.raises(ProGRPOConfigError, match="outside 1..9"):
        PruneSchedule.parse("0:4").validate_for(group_size=8, num_steps=10)


@pytest.mark.parametrize("make", [
    lambda: PruneSchedule(()),
    lambda: PruneSchedule.parse("5:24, 5:12"),
    lambda: PruneSchedule.parse("5:12, 7:24"),
    lambda: PruneSchedule.parse("5:24, 7:1"),
    lambda: PruneSchedule.parse("five:24"),
    lambda: PruneSchedule.parse("3:8").validate_for(group_size=8, num_steps=10),
    lambda: PruneSchedule.parse("10:4").validate_for(group_size=8, num_steps=10),
])
def test_schedule_errors_carry_the_train_config_field(make):
    with pytest.raises(ProGRPOConfigError) as caught:
        make()
    assert caught.value.field == "rollout.prune_schedule"


def test_rows_of_positions_are_group_major():
    positions = torch.tensor([[0, 2], [1, 3], [0, 1]])
    assert rows_of_positions(positions, 4).tolist() == [0, 2, 5, 7, 8, 9]


def test_strategies_keep_the_target_count_per_group():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    assert select("topk", rewards, 2, generator).tolist() == [[4, 5], [0, 1]]
    assert select("ovf", rewards, 2, generator).tolist() == [[0, 5], [0, 5]]
    random = select("random", rewards, 3, generator)
    assert random.shape == (2, 3) and all(len(set(row)) == 3 for row in random.tolist())
    assert select("none", rewards, 2, generator).shape == (2, 6)
    with pytest.raises(ProGRPOConfigError, match="selection 'best' is unknown"):
        select("best", rewards, 2, generator)
