"""What a Train Loop run trains, as its :class:`progrpo.train.RunIdentity`, so a resume with something else is refused.

A run's checkpoint stores its flat config record (:func:`progrpo.train.run_record`: the training settings plus
the identity); resuming compares every training field and refuses naming the ones that differ
(``progrpo.train.checkpoint.check_resume_compatible``, issue 16). The nodes get the model and reward as objects,
so their identity says what identifies them:

* ``model``: ``comfyui:<family>:<config class>:<hash>``, the hash over the names, shapes and first values of a
  few of the diffusion model's own weights (a few kB read, whatever the model's size; LoRAs applied upstream are
  patches, not weights, so they are not part of it);
* ``rewards``: ``{"comfyui": {"weight": 1, "reward": <description>}}``, the reward's name with its weights and
  model folders (``0.5*pickscore + 1*brightness``);
* the LoRA's rank, alpha and targets are config fields already.

A run name left empty is derived from all of these and every other training setting, so a new run never
silently continues another one, and queueing the same settings again continues the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from progrpo.train.checkpoint import RESUME_FREE_FIELDS, flatten_config, read_checkpoint_config, resolve_checkpoint
from progrpo.train.config import TrainConfig
from progrpo.train.run_config import RunIdentity, run_record

from .model_families import config_class_name, family_of

logger = logging.getLogger("progrpo")

#: what checkpoints written before the run identity stored (no check possible for them)
LEGACY_MODEL, LEGACY_REWARDS = "comfyui", {"comfyui_reward": {"weight": 1.0}}
_SAMPLED_WEIGHTS = 5  # first two, middle, last two of the sorted weight names
_VALUES_PER_WEIGHT = 256


@torch.no_grad()
def model_fingerprint(model: Any) -> str:
    """``comfyui:<family>:<config class>:<12 hex>`` for a MODEL (ModelPatcher); see the module doc."""
    state = model.model.diffusion_model.state_dict()
    names = sorted(name for name, value in state.items() if value.is_floating_point())
    middle = len(names) // 2
    picked = sorted(set(names[:2] + names[middle:middle + 1] + names[-2:]))[:_SAMPLED_WEIGHTS]
    digest = hashlib.sha256()
    for name in picked:
        value = state[name]
        digest.update(f"{name}:{tuple(value.shape)}".encode())
        digest.update(value.detach().flatten()[:_VALUES_PER_WEIGHT].float().cpu().numpy().tobytes())
    return f"comfyui:{family_of(model).name}:{config_class_name(model)}:{digest.hexdigest()[:12]}"


def reward_description(reward: Any) -> str:
    """The reward as its name, weights and model folders (``0.5*pickscore(pickscore_v1) + 1*brightness``)."""
    rewards, weights = getattr(reward, "rewards", None), getattr(reward, "weights", None)
    if isinstance(rewards, dict) and isinstance(weights, dict):
        return " + ".join(f"{weights[key]:g}*{reward_description(part)}" for key, part in rewards.items())
    name = str(getattr(reward, "name", type(reward).__name__))
    path = getattr(reward, "path", None) or getattr(reward, "folder", None)
    return f"{name}({Path(str(path)).name})" if path else name


def node_run_identity(model: Any, reward: Any, run_dir: Path | None) -> RunIdentity:
    """The identity of a run on ``model`` and ``reward``; a checkpoint from before the identity keeps the old
    placeholders (its model and reward cannot be checked: logged), so it still resumes."""
    if run_dir is not None and (run_dir / "checkpoints" / "latest").is_file():
        try:
            saved = read_checkpoint_config(resolve_checkpoint(run_dir, "latest"))
        except (OSError, ValueError):
            saved = {}
        if saved.get("model") == LEGACY_MODEL:
            logger.warning("run %s was checkpointed before runs recorded their model and reward; resuming it "
                           "without checking that they are the same", run_dir.name)
            return RunIdentity(LEGACY_MODEL, LEGACY_REWARDS)
    return RunIdentity(model_fingerprint(model), {"comfyui": {"weight": 1.0, "reward": reward_description(reward)}})


def default_run_name(config: TrainConfig, identity: RunIdentity) -> str:
    """``progrpo_<family>_<8 hex>`` from every training field of the run's record (the resume-free ones excluded)."""
    record = flatten_config(run_record(config, identity))
    fields = {name: value for name, value in record.items() if name not in RESUME_FREE_FIELDS}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:8]
    family = identity.model.split(":")[1] if identity.model.count(":") >= 3 else "model"
    slug = "".join(c if c.isalnum() else "_" for c in family).strip("_").lower() or "model"
    return f"progrpo_{slug}_{digest}"
