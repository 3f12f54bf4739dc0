"""Diffusers backend: pick the adapter for a pipeline's network, or load a local pipeline folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ProGRPOConfigError
from ..log import logger
from ._diffusers_base import DiffusersDenoiser
from .diffusers_flux import FluxDenoiser
from .diffusers_sd3 import SD3Denoiser
from .diffusers_unet import UNetDenoiser

#: class name of the pipeline's network -> adapter class.
DENOISER_TYPES: dict[str, type[DiffusersDenoiser]] = {
    "UNet2DConditionModel": UNetDenoiser,
    "SD3Transformer2DModel": SD3Denoiser,
    "FluxTransformer2DModel": FluxDenoiser,
}


def pipeline_network(pipe: Any) -> torch.nn.Module:
    """The pipeline's denoising network: ``pipe.unet`` or ``pipe.transformer``."""
    for name in ("unet", "transformer"):
        network = getattr(pipe, name, None)
        if network is not None:
            return network
    raise ProGRPOConfigError(
        f"pipeline {type(pipe).__name__} has neither a unet nor a transformer; load a text-to-image pipeline."
    )


def denoiser_from_pipeline(pipe: Any, **options: Any) -> DiffusersDenoiser:
    """Adapter for a loaded diffusers pipeline, chosen by its network class (``options`` go to the adapter)."""
    network_class = type(pipeline_network(pipe)).__name__
    adapter = DENOISER_TYPES.get(network_class)
    if adapter is None:
        raise ProGRPOConfigError(
            f"pipeline {type(pipe).__name__} has a {network_class}, which has no denoiser adapter; "
            f"use a pipeline whose network is one of {sorted(DENOISER_TYPES)}."
        )
    return adapter.from_pipeline(pipe, **options)


def _absent_components(model_index: dict[str, Any]) -> dict[str, None]:
    """Components saved as ``[null, null]`` in model_index.json (e.g. SD3 without T5) -> None."""
    return {
        name: None
        for name, value in model_index.items()
        if not name.startswith("_") and isinstance(value, list) and value and value[0] is None
    }


def load_diffusers_denoiser(
    path: str | Path,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> DiffusersDenoiser:
    """Load a LOCAL pipeline folder (written by ``save_pretrained``) and wrap it in its adapter.

    Nothing is downloaded (``local_files_only=True``). ``options`` go to the adapter
    (e.g. ``max_sequence_length``, Flux ``guidance``).
    """
    from diffusers import DiffusionPipeline

    folder = Path(path)
    if not folder.is_dir():
        raise ProGRPOConfigError(
            f"diffusers pipeline folder {str(folder)!r} does not exist; pass a local folder written by "
            "save_pretrained (it holds model_index.json)."
        )
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ProGRPOConfigError(
            f"folder {str(folder)!r} has no model_index.json, so it is not a diffusers pipeline; pass the "
            "folder written by save_pretrained (with model_index.json and one subfolder per component)."
        )
    absent = _absent_components(json.loads(index_file.read_text()))
    load_kwargs: dict[str, Any] = dict(absent)
    if torch_dtype is not None:
        load_kwargs["torch_dtype"] = torch_dtype
    # safetensors only: a pipeline folder is a user file, and pickled .bin weights can run code.
    pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True, use_safetensors=True, **load_kwargs)
    if device is not None:
        pipe = pipe.to(device)
    denoiser = denoiser_from_pipeline(pipe, **options)
    logger.info("loaded %s from %s as %s", type(pipe).__name__, folder, type(denoiser).__name__)
    return denoiser
