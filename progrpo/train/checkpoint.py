"""Training checkpoints: written atomically, resumed bit-for-bit (on CPU).

Layout of ``<output_dir>/checkpoints/``::

    iter_<k>/                      k = completed iterations
        lora/                      peft adapter (save_peft_adapter): adapter_config.json + safetensors
        state.pt                   tensors and plain containers only (loaded with weights_only=True):
                                   optimizer and LR-scheduler state dicts, EMA shadows, torch RNG states
        state.json                 counters (iteration, optimizer_steps), python ``random`` state, version
        config.json                the run record (run_record: resolved training settings + identity)
    latest                         text file naming the newest ``iter_<k>`` (replaced atomically)

A checkpoint folder is assembled under a temporary name in ``checkpoints/``, every file and the
folder are fsynced, then it is renamed into place; only then is ``latest`` replaced. A crash at
any point leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text, folder_atomically, fsync_path
from ..errors import ProGRPOCheckpointError, ProGRPOConfigError
from ..log import logger
from ..lora import load_peft_adapter, save_peft_adapter

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
LORA_DIR = "lora"
STATE_TENSORS = "state.pt"
STATE_JSON = "state.json"
CONFIG_JSON = "config.json"
FORMAT_VERSION = 1

#: config fields that may change between a checkpoint and the run resuming it (they do not
#: change what the next iterations compute); every other field must be equal.
#: fields a resume may change: bookkeeping, and the memory knobs (chunking changes float rounding only),
#: so a run that ran out of memory resumes with a smaller micro-batch or rollout chunk.
RESUME_FREE_FIELDS = frozenset(
    {"iterations", "output_dir", "checkpoint_every", "keep_last", "eval_every", "eval_prompts", "eval_samples",
     "max_bad_iterations", "rollout.measure_flops",
     "rollout.keep_images", "rollout.max_batch_rows", "grpo.micro_batch_rows"}
)


# --- RNG states ------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states a run consumes: torch CPU (and CUDA when present), python ``random``."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only restored when CUDA is present)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])


def _python_state_to_json(state: tuple) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_json(data: list[Any]) -> tuple:
    version, internal, gauss = data
    return (int(version), tuple(int(v) for v in internal), gauss)


# --- checkpoint contents ---------------------------------------------------------------------


@dataclass
class TrainingState:
    """Everything besides the LoRA weights that a resumed run needs to continue bit-for-bit.

    ``iteration``: completed iterations; ``optimizer_steps``: optimiser steps taken;
    ``optimizer`` / ``lr_scheduler``: their ``state_dict()``; ``ema``: ``LoraEMA.state_dict()`` or None;
    ``rng``: :func:`capture_rng_state` at the iteration boundary.
    """

    iteration: int
    optimizer_steps: int
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    ema: dict[str, Any] | None
    rng: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration}"


def save_checkpoint(
    output_dir: str | os.PathLike[str],
    network: torch.nn.Module | Any,
    state: TrainingState,
    config: Mapping[str, Any],
) -> Path:
    """Write ``checkpoints/iter_<state.iteration>/`` atomically and point ``latest`` at it.

    A failed write (``OSError``: full disk, read-only folder) raises :class:`ProGRPOCheckpointError`
    naming the folder; the temp folder is removed and ``latest`` still names the previous checkpoint.

    Args:
        network: the LoRA-injected network (its adapter is saved with ``save_peft_adapter``), or a
            :class:`progrpo.lora.adapter.LoraAdapter` (saved with its ``save``).
        config: the run record (:func:`progrpo.train.run_config.run_record`) of the resolved config.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    try:
        return _write_checkpoint(root, network, state, config)
    except OSError as error:
        raise ProGRPOCheckpointError(_write_failure(root, checkpoint_name(state.iteration), error)) from error


def _write_failure(root: Path, name: str, error: OSError) -> str:
    """Message for a checkpoint write that failed: where, why, what is still valid, what to do."""
    latest = root / LATEST_FILE
    try:
        previous = latest.read_text(encoding="utf-8").strip() if latest.is_file() else None
    except OSError:
        previous = None
    kept = (f"the previous checkpoint {previous!r} (named in {LATEST_FILE}) is intact" if previous
            else "no earlier checkpoint exists")
    return (
        f"could not write checkpoint {name!r} in folder {str(root)!r}: {type(error).__name__}: {error}. Nothing "
        f"half-written was left and {kept}. Free disk space there or make the folder writable (or set "
        "output_dir to another disk), then resume with --resume latest (resume_from='latest')."
    )


def _write_checkpoint(root: Path, network: torch.nn.Module | Any, state: TrainingState,
                      config: Mapping[str, Any]) -> Path:
    from .. import __version__

    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(state.iteration)
    with folder_atomically(root / name) as temp:
        if isinstance(network, torch.nn.Module):
            save_peft_adapter(network, temp / LORA_DIR)
        else:
            network.save(temp / LORA_DIR)
        tensors = {
            "optimizer": state.optimizer,
            "lr_scheduler": state.lr_scheduler,
            "ema": state.ema,
            "torch_rng": state.rng["torch"],
            "cuda_rng": state.rng.get("cuda"),
        }
        torch.save(tensors, temp / STATE_TENSORS)
        record = {
            "format": FORMAT_VERSION,
            "progrpo_version": __version__,
            "iteration": state.iteration,
            "optimizer_steps": state.optimizer_steps,
            "python_random": _python_state_to_json(state.rng["python"]),
            "extra": state.extra,
        }
        (temp / STATE_JSON).write_text(json.dumps(record), encoding="utf-8")
        (temp / CONFIG_JSON).write_text(json.dumps(dict(config), indent=2), encoding="utf-8")
        for path in sorted(temp.rglob("*"), reverse=True):
            fsync_path(path)
        fsync_path(temp)
    fsync_path(root)
    atomic_write_text(root / LATEST_FILE, name + "\n")
    logger.info("checkpoint %s written", root / name)
    return root / name


def prune_checkpoints(output_dir: str | os.PathLike[str], keep_last: int) -> list[str]:
    """Delete all but the ``keep_last`` newest ``iter_<k>`` folders (never the one ``latest`` names); returns their names.

    Call it after a checkpoint is complete and ``latest`` names it: every deleted folder is older, so a kill at any
    moment leaves the newest checkpoint whole. Each folder is first renamed to a temp name (atomic), so a kill
    mid-delete leaves a temp that the next run removes, never a half-deleted ``iter_<k>``.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    if keep_last < 1 or not root.is_dir():
        return []
    latest_file = root / LATEST_FILE
    latest = latest_file.read_text(encoding="utf-8").strip() if latest_file.is_file() else None
    found = sorted((int(m.group(1)), entry.name) for entry in root.iterdir()
                   if entry.is_dir() and (m := re.fullmatch(r"iter_(\d+)", entry.name)))
    doomed = [name for _, name in found[:-keep_last] if name != latest]
    for name in doomed:
        temp = root / f".{name}.tmp-delete-{os.getpid()}"
        os.replace(root / name, temp)
        shutil.rmtree(temp, ignore_errors=True)
    if doomed:
        logger.info("removed old checkpoints %s (keep_last=%d)", doomed, keep_last)
    return doomed


def resolve_checkpoint(output_dir: str | os.PathLike[str], resume_from: str | os.PathLike[str]) -> Path:
    """The checkpoint folder for ``resume_from``: ``"latest"`` (in ``output_dir``) or a folder path."""
    if str(resume_from) == LATEST_FILE:
        pointer = Path(output_dir) / CHECKPOINTS_DIR / LATEST_FILE
        if not pointer.is_file():
            raise ProGRPOConfigError(
                f"resume_from='latest' but {str(pointer)!r} does not exist: no checkpoint was written to "
                f"output_dir {str(output_dir)!r}; pass a checkpoint folder or start without resume_from."
            )
        folder = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    else:
        folder = Path(resume_from)
    missing = [n for n in (LORA_DIR, STATE_TENSORS, STATE_JSON, CONFIG_JSON) if not (folder / n).exists()]
    if not folder.is_dir() or missing:
        raise ProGRPOConfigError(
            f"resume_from {str(folder)!r} is not a checkpoint folder (missing {missing or ['the folder']}); "
            f"pass 'latest' or a <output_dir>/{CHECKPOINTS_DIR}/iter_<k> folder."
        )
    return folder


def read_checkpoint_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The config dict a checkpoint was written with."""
    return json.loads((Path(folder) / CONFIG_JSON).read_text(encoding="utf-8"))


def load_checkpoint(folder: str | os.PathLike[str], network: torch.nn.Module | Any) -> TrainingState:
    """Load the LoRA weights of ``folder`` into ``network`` (which already has the adapter) and return the rest.

    ``network`` may also be a :class:`progrpo.lora.adapter.LoraAdapter` (loaded with its ``load``).

    The tensor file is read with ``torch.load(..., weights_only=True)``: no code in it can run.
    """
    folder = Path(folder)
    record = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    if record.get("format") != FORMAT_VERSION:
        raise ProGRPOConfigError(
            f"checkpoint {str(folder)!r} has format {record.get('format')!r}; this version reads format "
            f"{FORMAT_VERSION}. Resume with the progrpo version that wrote it."
        )
    tensors = torch.load(folder / STATE_TENSORS, map_location="cpu", weights_only=True)
    if isinstance(network, torch.nn.Module):
        load_peft_adapter(network, folder / LORA_DIR)
    else:
        network.load(folder / LORA_DIR)
    return TrainingState(
        iteration=int(record["iteration"]),
        optimizer_steps=int(record["optimizer_steps"]),
        optimizer=tensors["optimizer"],
        lr_scheduler=tensors["lr_scheduler"],
        ema=tensors["ema"],
        rng={
            "torch": tensors["torch_rng"],
            "cuda": tensors["cuda_rng"],
            "python": _python_state_from_json(record["python_random"]),
        },
        extra=dict(record.get("extra") or {}),
    )


# --- resume compatibility --------------------------------------------------------------------

_ABSENT = "<absent>"


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


#: what a checkpoint written before a field existed did, i.e. the field's value for that run: resuming it
#: with another value is refused naming the field (set it to this value to continue the old run as it was).
LEGACY_VALUES: dict[str, Any] = {
    "grpo.kl_form": "exact",
    "grpo.timestep_rule": "random",
    "grpo.train_last_step": True,
    "grpo.updates_per_rollout": 1,
    "grpo.inner_epochs": 1,
    "grpo.adv_epsilon": 0.0,
    "grpo.ema_update_interval": 1,
    "grpo.loss_scale": 1.0,
    "rollout.preview": "stale",
    "rollout.shared_initial_noise": False,
}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted field, saved value, current value)`` for every training-relevant field that differs.

    A field the saved config lacks (written by an earlier version) counts as its :data:`LEGACY_VALUES` value.
    """
    old, new = flatten_config(saved), flatten_config(current)
    old = {**{name: value for name, value in LEGACY_VALUES.items() if name in new}, **old}
    differences = []
    for name in sorted(set(old) | set(new)):
        if name in RESUME_FREE_FIELDS:
            continue
        a, b = old.get(name, _ABSENT), new.get(name, _ABSENT)
        if a != b:
            differences.append((name, a, b))
    return differences


def check_resume_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], folder: str | os.PathLike[str]) -> None:
    """Raise unless ``current`` equals ``saved`` in every field outside :data:`RESUME_FREE_FIELDS`."""
    differences = config_differences(saved, current)
    if differences:
        listed = "; ".join(f"{name}: checkpoint {a!r}, config {b!r}" for name, a, b in differences)
        raise ProGRPOConfigError(
            f"cannot resume from {str(folder)!r}: the config differs in training-relevant fields ({listed}). "
            f"Use the checkpoint's values to resume (only {sorted(RESUME_FREE_FIELDS)} may change), "
            "or start a new run in another output_dir."
        )
