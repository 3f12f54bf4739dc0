"""What to train (:class:`RunSpec`), the config file of a run (:class:`RunConfig`) and what a run records.

A config file (YAML/JSON, ``python -m progrpo train``) holds one flat mapping: the :class:`RunSpec` fields
(``model``, ``rewards``, ``device``, ``dtype``) next to the :class:`~progrpo.train.config.TrainConfig`
fields. A caller that builds its own denoiser and reward (the ComfyUI nodes) gives a ``TrainConfig`` and a
:class:`RunIdentity` saying what they are; :func:`run_record` turns either into the one flat dict a run
writes as its ``config.yaml`` and checkpoints' ``config.json``, compares on resume and names runs by.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..denoisers.loading import validate_model_spec
from ..errors import ProGRPOConfigError
from .config import TrainConfig

#: ``model`` dtypes by name.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _default_rewards() -> dict[str, dict[str, Any]]:
    return {"jpeg_compressibility": {"weight": 1.0}}


@dataclass(frozen=True)
class RunIdentity:
    """What a run trains, as recorded in its checkpoints and LoRA metadata and compared on resume.

    ``model``: the model spec (``tiny:sd``, a folder) or a fingerprint (``comfyui:<family>:...``);
    ``rewards``: ``{name: {"weight": w, **options}}``; ``device`` / ``dtype``: as the run records them
    (the nodes record the defaults: their model's device and dtype are ComfyUI's).
    """

    model: str
    rewards: dict[str, dict[str, Any]]
    device: str = "cpu"
    dtype: str = "float32"


@dataclass
class RunSpec:
    """What to train: the model, the rewards, and where and in which dtype the model runs.

    Attributes:
        model: ``tiny:<sd|sd3|flux>`` (random tiny model, smoke runs), ``embedded:<digits_flow|
            digits_ddim>`` (the shipped digits models) or a LOCAL diffusers pipeline folder
            (:func:`progrpo.denoisers.loading.load_denoiser`).
        rewards: spec for :func:`progrpo.rewards.build_rewards`, ``{name: {"weight": w, **options}}``.
        device: torch device of the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        dtype: model weights' dtype, a name in :data:`DTYPES`; LoRA weights always train in float32.
    """

    model: str = "tiny:sd"
    rewards: dict[str, dict[str, Any]] = field(default_factory=_default_rewards)
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        try:
            validate_model_spec(self.model)
        except ProGRPOConfigError as error:
            raise ProGRPOConfigError(str(error), field="model") from None
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise ProGRPOConfigError(f"dtype={self.dtype!r} is unknown; use one of {sorted(DTYPES)}.", field="dtype")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ProGRPOConfigError(f"device={self.device!r} is not a torch device; use 'cpu' or 'cuda'.",
                                     field="device") from None
        self._check_rewards()

    def _check_rewards(self) -> None:
        if not isinstance(self.rewards, Mapping) or not self.rewards:
            raise ProGRPOConfigError(
                f"rewards={self.rewards!r} must be a non-empty dict like {{'brightness': {{'weight': 1.0}}}}.",
                field="rewards",
            )
        for name, spec in self.rewards.items():
            if spec is not None and not isinstance(spec, Mapping):
                raise ProGRPOConfigError(
                    f"rewards.{name}={spec!r:.60} must be a dict of options like {{'weight': 1.0}} (or null).",
                    field=f"rewards.{name}",
                )
        self.rewards = {str(key): dict(value or {}) for key, value in self.rewards.items()}

    def identity(self) -> RunIdentity:
        """The identity a run of this spec records."""
        return RunIdentity(self.model, self.rewards, self.device, self.dtype)


def _record_order() -> list[str]:
    """The flat keys in the order config files and checkpoints have always had (model first, rewards after grpo)."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    after_grpo = names.index("grpo") + 1
    return ["model", *names[:after_grpo], "rewards", *names[after_grpo:], "device", "dtype"]


@dataclass
class RunConfig(TrainConfig, RunSpec):
    """A config file's content: the :class:`RunSpec` fields and the :class:`TrainConfig` fields, flat.

    ``from_dict`` rejects unknown keys by their dotted name; ``to_dict`` keeps the historical key order.
    """

    def __post_init__(self) -> None:
        RunSpec.__post_init__(self)
        TrainConfig.__post_init__(self)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        return {name: data[name] for name in _record_order()}

    def spec(self) -> RunSpec:
        """What to train."""
        return RunSpec(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RunSpec)})

    def training(self) -> TrainConfig:
        """How to train."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})

    @classmethod
    def combine(cls, config: TrainConfig, identity: RunIdentity) -> RunConfig:
        """The run config of training settings ``config`` on ``identity``'s model and rewards."""
        settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
        return cls(**settings, model=identity.model, rewards=identity.rewards, device=identity.device,
                   dtype=identity.dtype)


def run_record(config: TrainConfig, identity: RunIdentity) -> dict[str, Any]:
    """The flat dict a run writes as ``config.yaml`` and in its checkpoints, compares on resume and is named by."""
    return RunConfig.combine(config, identity).to_dict()


# --- files -----------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read a :class:`RunConfig` from a ``.yaml``/``.yml`` or ``.json`` file."""
    file = Path(path)
    if not file.is_file():
        raise ProGRPOConfigError(f"config file {str(file)!r} does not exist; check the path.")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ProGRPOConfigError(f"config file {str(file)!r} is not UTF-8 text ({error.reason}); save it as UTF-8.") from None
    import yaml

    is_json = file.suffix.lower() == ".json"
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ProGRPOConfigError(
            f"config file {str(file)!r} is not valid {'JSON' if is_json else 'YAML'}: {error}."
        ) from None
    if data is None:
        data = {}
    return RunConfig.from_dict(data)


def save_config(config: RunConfig | Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``config.to_dict()`` (or a :func:`run_record`) as YAML (``.yaml``/``.yml``) or JSON (``.json``), atomically."""
    from ..atomic import atomic_write_text

    file = Path(path)
    data = dict(config) if isinstance(config, Mapping) else config.to_dict()
    if file.suffix.lower() == ".json":
        text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    elif file.suffix.lower() in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise ProGRPOConfigError(f"config path {str(file)!r} must end with .yaml, .yml or .json.")
    atomic_write_text(file, text)
    return file