"""The ``train`` and ``export-lora`` sub-commands of ``python -m progrpo``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import ProGRPOConfigError
from ..log import logger
from .checkpoint import CHECKPOINTS_DIR, LATEST_FILE, read_checkpoint_config, resolve_checkpoint
from .run_config import RunConfig, load_config
from .trainer import Trainer


def run_train_command(config_path: str, output_dir: str | None = None, iterations: int | None = None,
                      resume: str | None = None, evaluate_samples: int = 16) -> int:
    """Train from a config file; print where the outputs went. Returns the exit code.

    ``evaluate_samples`` > 0 also scores the model before and after training on the same fixed
    seeds (``evaluation.json`` in the run folder).
    """
    config = load_config(config_path)
    overrides = {key: value for key, value in (("output_dir", output_dir), ("iterations", iterations)) if value is not None}
    if overrides:
        config = dataclasses.replace(config, **overrides)
    trainer = Trainer.from_run(config)
    try:
        return _train_and_report(trainer, resume, evaluate_samples)
    finally:
        trainer.distributed.shutdown()


def _train_and_report(trainer: Trainer, resume: str | None, evaluate_samples: int) -> int:
    # Same noise before and after (Trainer.evaluate's fixed seed), so the difference is the LoRA's.
    # Under torchrun only rank 0 evaluates (and writes): the other ranks would repeat its work.
    if not trainer.distributed.is_main:
        evaluate_samples = 0
    before = trainer.evaluate(samples_per_prompt=evaluate_samples) if evaluate_samples else None
    result = trainer.run(resume_from=resume)
    if not trainer.distributed.is_main:
        return 0
    if before is not None:
        after = trainer.evaluate(samples_per_prompt=evaluate_samples)
        evaluation = {"samples_per_prompt": evaluate_samples, "reward_before": float(before.mean()),
                      "reward_after": float(after.mean())}
        atomic_write_text(result.output_dir / "evaluation.json", json.dumps(evaluation, indent=2))
        logger.info("mean reward on fixed seeds (%d samples per prompt): before %.4f -> after %.4f",
                    evaluate_samples, evaluation["reward_before"], evaluation["reward_after"])
    history = [r for r in result.history if not r.get("skipped")]  # skipped iterations have no reward
    if history:
        first, last = history[0]["reward_mean"], history[-1]["reward_mean"]
        logger.info("reward mean: iteration 1 %.4f -> iteration %d %.4f", first, result.iterations_done, last)
    logger.info("run folder: %s", result.output_dir)
    for label, path in (("LoRA (ComfyUI format)", result.lora_path), ("metrics", result.output_dir / "metrics.jsonl"),
                        ("evaluation", result.output_dir / "evaluation.json"),
                        ("curve", result.curve_path), ("config", result.output_dir / "config.yaml"),
                        ("checkpoints", result.output_dir / CHECKPOINTS_DIR)):
        if path is not None and Path(path).exists():
            logger.info("  %-22s %s", label, path)
    return 0


def run_export_command(checkpoint: str, output: str) -> int:
    """Export the LoRA of a checkpoint folder (or a run folder's latest checkpoint) for ComfyUI."""
    source = Path(checkpoint)
    if (source / CHECKPOINTS_DIR / LATEST_FILE).is_file():
        folder = resolve_checkpoint(source, LATEST_FILE)
    elif source.is_dir():
        folder = resolve_checkpoint(source.parent.parent, source)
    else:
        raise ProGRPOConfigError(
            f"checkpoint {checkpoint!r} does not exist; pass a run folder (with checkpoints/latest) or a "
            "checkpoints/iter_<k> folder."
        )
    trainer = Trainer.from_run(RunConfig.from_dict(read_checkpoint_config(folder)))
    trainer.resume(folder)
    path = trainer.export_lora(output)
    logger.info("wrote %s (from %s)", path, folder)
    return 0
