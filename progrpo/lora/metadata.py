"""LoRA file metadata: safetensors stores ``str -> str``, so every value is encoded here, one way.

Two writers use it, each keeping the keys and values its files have always had:

* :func:`~progrpo.lora.export.export_comfyui_lora` (peft networks): run information as given, non-strings
  as sorted-key JSON, a value JSON cannot encode refused;
* :func:`run_metadata` (LoRAs trained on a ComfyUI MODEL, the nodes' files): ``progrpo`` / ``rank`` /
  ``alpha`` then ``progrpo_<name>`` per run entry, non-strings as JSON with ``str()`` for the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ProGRPOConfigError


def encode_metadata(
    values: Mapping[str, Any],
    prefix: str = "",
    *,
    sort_keys: bool = True,
    fallback: Callable[[Any], Any] | None = None,
) -> dict[str, str]:
    """``{prefix + key: text}``: strings pass through, anything else is JSON (``sort_keys``, ``default=fallback``).

    Without ``fallback`` a value JSON cannot encode raises :class:`ProGRPOConfigError` naming the key.
    """
    encoded = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ProGRPOConfigError(f"LoRA metadata key {key!r} is not a string; use string keys.")
        if isinstance(value, str):
            encoded[prefix + key] = value
            continue
        try:
            encoded[prefix + key] = json.dumps(value, sort_keys=sort_keys, default=fallback)
        except (TypeError, ValueError) as error:
            raise ProGRPOConfigError(
                f"LoRA metadata[{key!r}] = {value!r} is not JSON-serialisable ({error}); "
                f"pass numbers, strings, lists or dicts."
            ) from error
    return encoded


def run_metadata(rank: int, alpha: float, run: Mapping[str, Any]) -> dict[str, str]:
    """Metadata of a LoRA trained on a ComfyUI MODEL: ``progrpo``, ``rank``, ``alpha``, then ``progrpo_<name>``."""
    header = {"progrpo": "1", "rank": str(rank), "alpha": str(alpha)}
    return {**header, **encode_metadata(run, "progrpo_", sort_keys=False, fallback=str)}
