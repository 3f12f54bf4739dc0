"""Prompts files: ``.txt`` (one prompt a line), ``.json`` (a list of strings), ``.jsonl`` (``"prompt"`` keys)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import ProGRPOConfigError


def _prompts_txt(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _prompts_json(text: str) -> list[str]:
    data = json.loads(text)
    return [str(item) for item in data] if isinstance(data, list) else []


def _prompts_jsonl(text: str) -> list[str]:
    # Flow-GRPO's GenEval metadata: one JSON object per line with a "prompt" key.
    return [str(json.loads(line)["prompt"]) for line in text.splitlines() if line.strip()]


#: prompts file suffix -> parser.
PROMPT_READERS: dict[str, Callable[[str], list[str]]] = {
    ".txt": _prompts_txt,
    ".json": _prompts_json,
    ".jsonl": _prompts_jsonl,
}


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """Prompts of a ``.txt`` / ``.json`` / ``.jsonl`` file (see :class:`~progrpo.train.config.TrainConfig`)."""
    file = Path(path)
    reader = PROMPT_READERS.get(file.suffix.lower())
    if reader is None:
        raise ProGRPOConfigError(
            f"prompts_file {str(file)!r} has suffix {file.suffix!r}; use one of {sorted(PROMPT_READERS)}.",
            field="prompts_file",
        )
    if not file.is_file():
        raise ProGRPOConfigError(f"prompts_file {str(file)!r} does not exist; check the path.", field="prompts_file")
    try:
        prompts = reader(file.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as error:
        raise ProGRPOConfigError(
            f"prompts_file {str(file)!r} could not be parsed as {file.suffix} ({error!r}); "
            "see TrainConfig.prompts_file for the formats.",
            field="prompts_file",
        ) from None
    if not prompts:
        raise ProGRPOConfigError(f"prompts_file {str(file)!r} holds no prompts; add at least one.", field="prompts_file")
    return prompts
