"""RunConfig: dict/YAML/JSON round trips, unknown keys and bad values rejected by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from progrpo.errors import ProGRPOConfigError
from progrpo.lora import LoraSettings
from progrpo.pruning import PruneSchedule
from progrpo.rollout import RolloutConfig
from progrpo.train import (
    RESUME_FREE_FIELDS,
    GRPOConfig,
    OptimConfig,
    RunConfig,
    config_differences,
    load_config,
    read_prompts,
    save_config,
)


def _config(**overrides) -> RunConfig:
    values = {
        "model": "tiny:sd",
        "prompts": ["a red cat", "a dog"],
        "prompts_per_iteration": 2,
        "iterations": 7,
        "rollout": RolloutConfig(group_size=8, num_steps=6, dynamics="ddim", prune_schedule="2:4, 4:2",
                                 sde_window=(0, 4), height=16, width=16, noise_level=0.9),
        "lora": LoraSettings(rank=8, alpha=16.0, target_modules=("to_q", "to_v")),
        "optim": OptimConfig(lr=3e-4, betas=(0.8, 0.99), grad_clip=None, scheduler="inverse_sqrt", warmup_steps=3),
        "grpo": GRPOConfig(clip_range=0.2, std_mode="global", kl_beta=0.01, timestep_fraction=0.5,
                           micro_batch_rows=3, ema_decay=0.9),
        "rewards": {"brightness": {"weight": 2.0}, "jpeg_compressibility": {"weight": -0.5}},
        "output_dir": "out/run",
        "checkpoint_every": 3,
        "seed": 11,
        "negative_prompt": None,
    }
    values.update(overrides)
    return RunConfig(**values)


def test_dict_round_trip_is_equal_and_plain():
    config = _config()
    data = config.to_dict()
    assert data["rollout"]["prune_schedule"] == "2:4, 4:2"
    assert data["rollout"]["sde_window"] == [0, 4]
    assert data["optim"]["betas"] == [0.8, 0.99]
    assert data["lora"]["target_modules"] == ["to_q", "to_v"]
    json.dumps(data)  # plain types only
    rebuilt = RunConfig.from_dict(data)
    assert rebuilt == config
    assert isinstance(rebuilt.rollout.prune_schedule, PruneSchedule)
    assert rebuilt.rollout.prune_schedule.checkpoints == ((2, 4), (4, 2))
    assert rebuilt.optim.betas == (0.8, 0.99)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_round_trip(tmp_path: Path, suffix: str):
    config = _config()
    path = save_config(config, tmp_path / f"config{suffix}")
    assert load_config(path) == config
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_defaults_round_trip_and_partial_yaml(tmp_path: Path):
    default = RunConfig(prompts=["a cat"])
    assert RunConfig.from_dict(default.to_dict()) == default
    path = tmp_path / "small.yaml"
    path.write_text("prompts: [a cat]\ngrpo:\n  kl_beta: 0.04\nrollout:\n  prune_schedule: '5:4'\n")
    loaded = load_config(path)
    assert loaded.grpo.kl_beta == 0.04 and loaded.grpo.clip_range == 1e-4
    assert loaded.rollout.prune_schedule == PruneSchedule(((5, 4),))


@pytest.mark.parametrize(
    "data, name",
    [
        ({"prompts": ["a"], "learning_rate": 1e-3}, "learning_rate"),
        ({"prompts": ["a"], "grpo": {"clip_rnage": 0.1}}, "grpo.clip_rnage"),
        ({"prompts": ["a"], "rollout": {"groupsize": 4}}, "rollout.groupsize"),
        ({"prompts": ["a"], "optim": {"lr": 1e-3, "momentum": 0.9}}, "optim.momentum"),
        ({"prompts": ["a"], "lora": {"rnak": 4}}, "lora.rnak"),
    ],
)
def test_unknown_key_is_rejected_by_name(data, name):
    with pytest.raises(ProGRPOConfigError, match=f"unknown config key '{name}'"):
        RunConfig.from_dict(data)


def test_unknown_key_in_yaml_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("prompts: [a cat]\nitterations: 5\n")
    with pytest.raises(ProGRPOConfigError, match="itterations"):
        load_config(path)


@pytest.mark.parametrize(
    "data, fragments",
    [
        ({"optim": {"lr": -1.0}}, ["optim.lr", "> 0"]),
        ({"optim": {"betas": [0.9]}}, ["optim.betas"]),
        ({"optim": {"scheduler": "cosine_restarts"}}, ["optim.scheduler", "constant"]),
        ({"grpo": {"clip_range": 0}}, ["grpo.clip_range"]),
        ({"grpo": {"timestep_fraction": 0.0}}, ["grpo.timestep_fraction", "(0, 1]"]),
        ({"grpo": {"micro_batch_rows": 0}}, ["grpo.micro_batch_rows"]),
        ({"grpo": {"std_mode": "batch"}}, ["grpo.std_mode", "group"]),
        ({"grpo": {"ema_decay": 1.5}}, ["grpo.ema_decay"]),
        ({"grpo": {"kl_form": "reverse"}}, ["grpo.kl_form", "flow_grpo"]),
        ({"grpo": {"timestep_rule": "last"}}, ["grpo.timestep_rule", "first"]),
        ({"grpo": {"updates_per_rollout": 0}}, ["grpo.updates_per_rollout", ">= 1"]),
        ({"grpo": {"inner_epochs": 1.5}}, ["grpo.inner_epochs"]),
        ({"grpo": {"ema_update_interval": 0}}, ["grpo.ema_update_interval"]),
        ({"grpo": {"adv_epsilon": -1}}, ["grpo.adv_epsilon", "1e-4"]),
        ({"grpo": {"train_last_step": "yes"}}, ["grpo.train_last_step"]),
        ({"rollout": {"preview": "x0"}}, ["rollout", "preview", "current"]),
        ({"rollout": {"shared_initial_noise": 1}}, ["rollout", "shared_initial_noise"]),
        ({"rollout": {"group_size": 1}}, ["rollout", "group_size"]),
        ({"rollout": {"group_size": 4, "prune_schedule": "2:8"}}, ["rollout", "prune_schedule", "group_size"]),
        ({"lora": {"rank": 0}}, ["lora", "rank"]),
        ({"iterations": 0}, ["iterations"]),
        ({"checkpoint_every": -1}, ["checkpoint_every"]),
        ({"max_bad_iterations": 0}, ["max_bad_iterations", ">= 1"]),
        ({"max_bad_iterations": 2.5}, ["max_bad_iterations", "integer"]),
        ({"model": "tiny:nope"}, ["model", "tiny:sd"]),
        ({"dtype": "float8"}, ["dtype", "float32"]),
        ({"rewards": {}}, ["rewards"]),
        ({"prompts": "a cat"}, ["prompts", "list"]),
    ],
)
def test_bad_values_name_the_field(data, fragments):
    full = {"prompts": ["a cat"], **data}
    with pytest.raises(ProGRPOConfigError) as error:
        RunConfig.from_dict(full)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_exactly_one_prompt_source(tmp_path: Path):
    with pytest.raises(ProGRPOConfigError, match="exactly one of prompts"):
        RunConfig()
    file = tmp_path / "p.txt"
    file.write_text("a cat\n")
    with pytest.raises(ProGRPOConfigError, match="exactly one of prompts"):
        RunConfig(prompts=["a dog"], prompts_file=str(file))


def test_prompts_files(tmp_path: Path):
    (tmp_path / "p.txt").write_text("a red cat\n\n  a dog  \n")
    (tmp_path / "p.json").write_text('["one", "two"]')
    (tmp_path / "p.jsonl").write_text('{"prompt": "x", "tag": 1}\n{"prompt": "y"}\n')
    assert read_prompts(tmp_path / "p.txt") == ["a red cat", "a dog"]
    assert read_prompts(tmp_path / "p.json") == ["one", "two"]
    assert read_prompts(tmp_path / "p.jsonl") == ["x", "y"]
    config = RunConfig(prompts_file=str(tmp_path / "p.txt"))
    resolved = config.resolved()
    assert resolved.prompts == ["a red cat", "a dog"] and resolved.prompts_file is None
    with pytest.raises(ProGRPOConfigError, match="suffix"):
        read_prompts(tmp_path / "p.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(ProGRPOConfigError, match="bad.jsonl"):
        read_prompts(tmp_path / "bad.jsonl")


def test_config_differences_ignore_only_free_fields():
    base = _config()
    assert config_differences(base.to_dict(), base.to_dict()) == []
    free = _config(iterations=99, output_dir="elsewhere", checkpoint_every=1, max_bad_iterations=7)
    assert config_differences(base.to_dict(), free.to_dict()) == []
    changed = _config(optim=OptimConfig(lr=1e-3, betas=(0.8, 0.99), grad_clip=None, scheduler="inverse_sqrt",
                                        warmup_steps=3), seed=12)
    names = [name for name, _, _ in config_differences(base.to_dict(), changed.to_dict())]
    assert names == ["optim.lr", "seed"]
    assert {"iterations", "output_dir", "checkpoint_every", "max_bad_iterations"} <= RESUME_FREE_FIELDS


def test_lr_schedules():
    constant = OptimConfig(warmup_steps=4).lr_lambda()
    assert [constant(k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert OptimConfig().lr_lambda()(0) == 1.0
    decay = OptimConfig(scheduler="inverse_sqrt", warmup_steps=4).lr_lambda()
    assert decay(3) == 1.0 and decay(15) == pytest.approx(0.5)


def test_yaml_written_by_save_config_is_readable_plain_yaml(tmp_path: Path):
    path = save_config(_config(), tmp_path / "c.yml")
    data = yaml.safe_load(path.read_text())
    assert data["rollout"]["prune_schedule"] == "2:4, 4:2"
    assert data["rewards"]["brightness"]["weight"] == 2.0


def test_a_config_saved_before_the_update_regime_fields_still_loads(tmp_path: Path):
    """A YAML written before issue 14 (no updates_per_rollout, kl_form, preview...) loads with the new defaults."""
    path = tmp_path / "old.yaml"
    path.write_text(
        "model: tiny:sd\nprompts: [a cat]\niterations: 3\n"
        "rollout: {group_size: 4, num_steps: 4, prune_schedule: '2:2'}\n"
        "grpo: {clip_range: 0.0001, adv_clip: 5.0, std_mode: group, kl_beta: 0.0, timestep_fraction: 1.0, "
        "micro_batch_rows: 8, ema_decay: null}\n"
    )
    config = load_config(path)
    assert config.grpo.updates_per_rollout == 2 and config.grpo.inner_epochs == 1
    assert config.grpo.kl_form == "flow_grpo" and config.grpo.timestep_rule == "first"
    assert config.grpo.adv_epsilon == 1e-4 and config.grpo.ema_update_interval == 8
    assert config.rollout.preview == "current" and config.rollout.shared_initial_noise is False


def test_run_config_splits_into_spec_and_training_settings_and_records_flat():
    """A config file's RunConfig is a RunSpec (what) plus a TrainConfig (how); the record a run writes is the
    flat config in the historical key order (model first, rewards after grpo, device and dtype last)."""
    from progrpo.train import RunSpec, TrainConfig, run_record

    config = _config()
    spec, training = config.spec(), config.training()
    assert type(spec) is RunSpec and type(training) is TrainConfig
    assert not hasattr(training, "model") and spec.rewards == config.rewards
    record = run_record(training, spec.identity())
    assert record == config.to_dict()
    keys = list(record)
    assert keys[0] == "model" and keys[-2:] == ["device", "dtype"] and keys.index("rewards") == keys.index("grpo") + 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"grpo": {"clip_range": -1}}, "grpo.clip_range"),
        ({"optim": {"lr": 0}}, "optim.lr"),
        ({"iterations": 0}, "iterations"),
        ({"model": "tiny:nope"}, "model"),
        ({"rewards": {"brightness": 3}}, "rewards.brightness"),
        ({"grpo": {"clip_rnage": 1}}, "grpo.clip_rnage"),
    ],
)
def test_config_errors_carry_the_dotted_field(data, field):
    with pytest.raises(ProGRPOConfigError) as error:
        RunConfig.from_dict({"prompts": ["a cat"], **data})
    assert error.value.field == field
