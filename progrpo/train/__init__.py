"""LoRA GRPO / Pro-GRPO training: config, loss, update, trainer loop, checkpoints.

Typical use::

    from progrpo.train import RunConfig, load_config, train

    run = load_config("run.yaml")              # or RunConfig(model="tiny:sd", prompts=[...], ...)
    result = train(run)                        # writes output_dir/{config.yaml, metrics.jsonl,
                                               #   checkpoints/, lora.safetensors, curve.png}
    train(run, resume_from="latest")           # continue bit-for-bit from the newest checkpoint

A :class:`RunConfig` (what a config file holds) is a :class:`RunSpec` (what to train: model, rewards,
device, dtype) plus a :class:`TrainConfig` (how to train). A caller with its own model, reward and LoRA
adapter builds ``Trainer(train_config, identity=RunIdentity(...), denoiser=..., reward=..., adapter=...)``.
"""

from __future__ import annotations

from .checkpoint import (
    RESUME_FREE_FIELDS,
    TrainingState,
    check_resume_compatible,
    config_differences,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import LR_SCHEDULES, GRPOConfig, OptimConfig, TrainConfig
from .loss import approx_kl, clip_fraction, clipped_surrogate
from .metrics import MetricsLog, read_metrics
from .prompts import read_prompts
from .run_config import RunConfig, RunIdentity, RunSpec, load_config, run_record, save_config
from .trainer import Trainer, TrainResult, derive_seed, load_model, train
from .update import (
    UPDATE_METRICS,
    LoraEMA,
    TrainingPairs,
    accumulate_policy_gradient,
    grpo_update,
    recompute_log_probs,
    select_training_pairs,
)

__all__ = [
    "LR_SCHEDULES",
    "RESUME_FREE_FIELDS",
    "UPDATE_METRICS",
    "GRPOConfig",
    "LoraEMA",
    "MetricsLog",
    "OptimConfig",
    "RunConfig",
    "RunIdentity",
    "RunSpec",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingPairs",
    "TrainingState",
    "accumulate_policy_gradient",
    "approx_kl",
    "check_resume_compatible",
    "clip_fraction",
    "clipped_surrogate",
    "config_differences",
    "derive_seed",
    "grpo_update",
    "load_checkpoint",
    "load_config",
    "load_model",
    "read_metrics",
    "read_prompts",
    "recompute_log_probs",
    "resolve_checkpoint",
    "run_record",
    "save_checkpoint",
    "save_config",
    "select_training_pairs",
    "train",
]
