"""One way to name a model everywhere (CLI, configs, benchmarks): ``tiny:``/``embedded:`` or a folder.

``tiny:sd``, ``tiny:sd3``, ``tiny:flux`` build the random offline pipelines of
:mod:`progrpo.tiny_models` (smoke runs, tests); ``embedded:digits_flow`` / ``embedded:digits_ddim``
are the digits generators shipped in :mod:`progrpo.embedded`; anything else is a LOCAL diffusers pipeline
folder (``save_pretrained`` layout with ``model_index.json``). Nothing is fetched from a hub.
"""

from __future__ import annotations

from typing import Any

from ..errors import ProGRPOConfigError
from ..tiny_models import TINY_PIPELINES
from .diffusers_backend import denoiser_from_pipeline, load_diffusers_denoiser

TINY_PREFIX = "tiny:"
EMBEDDED_PREFIX = "embedded:"


def load_denoiser(spec: str, seed: int = 0, **options: Any) -> Any:
    """Denoiser for ``spec`` (``tiny:<arch>`` or a local pipeline folder); options go to the adapter."""
    if spec.startswith(TINY_PREFIX):
        arch = spec[len(TINY_PREFIX):]
        if arch not in TINY_PIPELINES:
            raise ProGRPOConfigError(
                f"model {spec!r}: unknown tiny architecture {arch!r}; use one of "
                f"{', '.join(TINY_PREFIX + name for name in sorted(TINY_PIPELINES))} or a local pipeline folder."
            )
        return denoiser_from_pipeline(TINY_PIPELINES[arch](seed=seed), **options)
    if spec.startswith(EMBEDDED_PREFIX):
        from ..embedded import embedded_generator_path

        return load_diffusers_denoiser(embedded_generator_path(spec[len(EMBEDDED_PREFIX):]), **options)
    return load_diffusers_denoiser(spec, **options)
