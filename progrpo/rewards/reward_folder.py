"""The self-describing reward folder written by ``python -m progrpo convert-reward``.

A converted folder holds ``progrpo_reward.json`` naming its ``kind`` (pickscore, hpsv2,
imagereward, aesthetic), the registered reward that scores it and the files it needs, next to
the model's config, safetensors weights and tokenizer / image-processor files. Loaders read it
to refuse a folder converted for another reward and to find files (the aesthetic head).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ProGRPOConfigError

#: file name of the description inside a converted reward folder.
REWARD_CONFIG = "progrpo_reward.json"
#: version of the folder layout; bumped when a loader could misread an older folder.
FORMAT_VERSION = 1
#: converted kind -> the registered reward that scores it.
KIND_REWARD = {"pickscore": "pickscore", "hpsv2": "hps", "imagereward": "imagereward", "aesthetic": "aesthetic"}
#: kinds whose folder is a transformers CLIPModel with a tokenizer, so clip_score can also read it.
CLIP_TEXT_KINDS = ("pickscore", "hpsv2")


def read_reward_config(folder: str | Path) -> dict[str, Any] | None:
    """The folder's ``progrpo_reward.json`` as a dict, or None for a folder that was not converted."""
    file = Path(folder) / REWARD_CONFIG
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ProGRPOConfigError(
            f"'{file}' is not readable JSON ({error}); convert the reward again with python -m progrpo convert-reward."
        ) from error
    if not isinstance(config, dict) or config.get("kind") not in KIND_REWARD:
        raise ProGRPOConfigError(
            f"'{file}' does not name a known kind ({', '.join(KIND_REWARD)}); convert the reward again with "
            "python -m progrpo convert-reward."
        )
    return config


def check_folder_kind(folder: str | Path, reward_name: str) -> dict[str, Any] | None:
    """Refuse a converted folder made for another reward; return its config (None if not converted)."""
    config = read_reward_config(folder)
    if config is None:
        return None
    kind = config["kind"]
    scorer = KIND_REWARD[kind]
    if reward_name != scorer and not (reward_name == "clip_score" and kind in CLIP_TEXT_KINDS):
        raise ProGRPOConfigError(
            f"reward '{reward_name}': folder '{folder}' was converted as '{kind}', which the '{scorer}' reward "
            f"scores; pick reward '{scorer}' for this folder or convert the right file for '{reward_name}'."
        )
    return config


def reward_config(kind: str, source: str | Path, **details: Any) -> dict[str, Any]:
    """The description written into a converted folder: kind, scoring reward, source file name, details."""
    return {"kind": kind, "reward": KIND_REWARD[kind], "format_version": FORMAT_VERSION,
            "source": Path(source).name, **details}
