"""``python -m progrpo convert-reward KIND SRC DST``: released reward files -> self-describing folders.

One converter per kind, in :data:`CONVERTERS` (pickscore, hpsv2, imagereward, aesthetic). A
converter reads the released files (pickles only through ``torch.load(weights_only=True)``, so
no code runs while reading), checks every tensor against the target architecture and writes
safetensors weights, the model config, the tokenizer / image-processor files and
``progrpo_reward.json`` into a temp folder beside ``DST``, renamed into place only when
complete: a failed conversion writes nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ...atomic import fsync_path, replace_folder
from ...errors import ProGRPOConfigError
from ...log import logger


@dataclass(frozen=True)
class ConvertRequest:
    """One conversion: released ``source`` -> ``destination`` folder (written by the converter into ``work``).

    ``processor``: folder with the tokenizer / image processor (PickScore and HPSv2 take the
    CLIP-ViT-H-14 one, ImageReward bert-base-uncased); ``backbone``: the aesthetic head's CLIP
    model; ``architecture``: a JSON file overriding the default architecture (head counts).
    """

    source: Path
    destination: Path
    processor: Path | None = None
    backbone: Path | None = None
    architecture: Path | None = None


Converter = Callable[[ConvertRequest, Path], dict[str, Any]]
F = TypeVar("F", bound=Converter)

#: kind -> converter writing the folder's files into a work folder and returning its description.
CONVERTERS: dict[str, Converter] = {}


def register_converter(kind: str) -> Callable[[F], F]:
    """Decorator adding a converter to :data:`CONVERTERS` under ``kind``."""

    def decorator(converter: F) -> F:
        CONVERTERS[kind] = converter
        return converter

    return decorator


def convert_reward(
    kind: str, source: str | Path, destination: str | Path, processor: str | Path | None = None,
    backbone: str | Path | None = None, architecture: str | Path | None = None, overwrite: bool = False,
) -> Path:
    """Convert the released reward files ``source`` of ``kind`` into folder ``destination``; return it.

    The folder appears complete or not at all; an existing ``destination`` is replaced only with
    ``overwrite``.
    """
    from . import clip_models, imagereward  # noqa: F401  (register the converters)

    if kind not in CONVERTERS:
        raise ProGRPOConfigError(f"convert-reward: unknown kind '{kind}'; use one of {', '.join(sorted(CONVERTERS))}.")
    request = ConvertRequest(Path(source).expanduser(), Path(destination).expanduser(), _optional_path(processor),
                             _optional_path(backbone), _optional_path(architecture))
    target = request.destination
    if target.exists() and not overwrite:
        raise ProGRPOConfigError(
            f"convert-reward: destination '{target}' already exists; remove it, choose another folder or pass --overwrite."
        )
    if not request.source.exists():
        raise ProGRPOConfigError(f"convert-reward {kind}: source '{request.source}' does not exist; give the released file.")
    created = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        description = CONVERTERS[kind](request, work)
        from ..reward_folder import REWARD_CONFIG

        write_json(work / REWARD_CONFIG, description)
        for file in work.iterdir():
            fsync_path(file)
        replace_folder(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for folder in created:  # innermost first: the folders this call made, if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    fsync_path(target.parent)
    logger.info("convert-reward %s: wrote %s", kind, target)
    return target


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value).expanduser()


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (inside a work folder: atomicity comes from the folder rename)."""
    import json

    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
