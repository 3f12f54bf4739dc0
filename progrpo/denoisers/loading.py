"""One way to name a model everywhere (CLI, configs, nodes, benchmarks).

* ``tiny:sd``, ``tiny:sd3``, ``tiny:flux``: the random offline pipelines of
  :mod:`progrpo.tiny_models` (smoke runs, tests; base weights seeded 0, so one config always
  trains the same base model);
* ``embedded:digits_flow``, ``embedded:digits_ddim``: the digits generators shipped in
  :mod:`progrpo.embedded`;
* anything else: a LOCAL diffusers pipeline folder (``save_pretrained`` layout with
  ``model_index.json``). Nothing is fetched from a hub.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import ProGRPOConfigError
from ..tiny_models import TINY_PIPELINES
from .diffusers_backend import denoiser_from_pipeline, load_diffusers_denoiser

TINY_PREFIX = "tiny:"
EMBEDDED_PREFIX = "embedded:"


def _load_tiny(name: str, torch_dtype: torch.dtype | None, device: str | torch.device | None, **options: Any) -> Any:
    pipe = TINY_PIPELINES[name](seed=0)
    placement = {key: value for key, value in (("device", device), ("dtype", torch_dtype)) if value is not None}
    if placement:
        pipe = pipe.to(**placement)
    return denoiser_from_pipeline(pipe, **options)


def _load_embedded(name: str, torch_dtype: torch.dtype | None, device: str | torch.device | None, **options: Any) -> Any:
    from ..embedded import embedded_generator_path

    return load_diffusers_denoiser(embedded_generator_path(name), torch_dtype=torch_dtype, device=device, **options)


def _embedded_names() -> list[str]:
    from ..embedded import EMBEDDED_GENERATORS

    return list(EMBEDDED_GENERATORS)


#: spec prefix -> (known names, loader(name, torch_dtype, device, **adapter options)).
MODEL_SOURCES: dict[str, tuple[Callable[[], list[str]], Callable[..., Any]]] = {
    TINY_PREFIX: (lambda: sorted(TINY_PIPELINES), _load_tiny),
    EMBEDDED_PREFIX: (_embedded_names, _load_embedded),
}


def validate_model_spec(spec: object) -> str:
    """Check ``spec`` names a model (prefixed names are checked now; folders when loading)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ProGRPOConfigError(
            f"model={spec!r} must be 'tiny:<sd|sd3|flux>', 'embedded:<digits_flow|digits_ddim>' or a local "
            "diffusers pipeline folder."
        )
    for prefix, (names, _) in MODEL_SOURCES.items():
        if spec.startswith(prefix) and spec[len(prefix):] not in names():
            raise ProGRPOConfigError(
                f"model={spec!r} names no {prefix[:-1]} model; use one of {[prefix + n for n in names()]} "
                "or a local pipeline folder."
            )
    return spec


def load_denoiser(spec: str, *, torch_dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                  **options: Any) -> Any:
    """Denoiser for ``spec`` (see the module docstring); ``options`` go to the adapter."""
    validate_model_spec(spec)
    for prefix, (_, loader) in MODEL_SOURCES.items():
        if spec.startswith(prefix):
            return loader(spec[len(prefix):], torch_dtype, device, **options)
    return load_diffusers_denoiser(spec, torch_dtype=torch_dtype, device=device, **options)
