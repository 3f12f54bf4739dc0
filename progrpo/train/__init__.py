"""LoRA GRPO / Pro-GRPO training: config, loss, update, trainer loop, checkpoints.

Typical use::

    from progrpo.train import TrainConfig, load_config, train

    config = load_config("run.yaml")           # or TrainConfig(model="tiny:sd", prompts=[...], ...)
    result = train(config)                     # writes output_dir/{config.yaml, metrics.jsonl,
                                               #   checkpoints/, lora.safetensors, curve.png}
    train(config, resume_from="latest")        # continue bit-for-bit from the newest checkpoint
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
from .config import LR_SCHEDULES, GRPOConfig, OptimConfig, TrainConfig, load_config, read_prompts, save_config
from .loss import approx_kl, clip_fraction, clipped_surrogate
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
    "OptimConfig",
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
    "read_prompts",
    "recompute_log_probs",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_config",
    "select_training_pairs",
    "train",
]
