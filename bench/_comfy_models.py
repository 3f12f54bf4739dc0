"""Random-weight diffusion models in ComfyUI's own layouts, at real size or tiny, for the memory benchmarks.

Shared by ``real_size_memory.py`` (CPU; writes safetensors files that the stock UNETLoader loads) and
``gpu_check.py`` (CUDA; random state dicts made on the GPU and handed to ComfyUI's loader function).

Nothing is downloaded: every architecture is ComfyUI's own class built from a full ``unet_config``
(the ones ``comfy.model_detection`` detects for the released checkpoints), first on the ``meta``
device to read the parameter names and shapes, then filled with seeded random values (norm weights
one, biases zero, other tensors ``randn / sqrt(fan_in)`` so activations stay finite). Files are
written tensor by tensor in the safetensors format, so writing SDXL (5.1 GB in bf16) needs one
tensor's memory, not the model's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]

#: real-size configs, as ComfyUI 0.3.75's model_detection reads them from the released checkpoints.
SD15_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
SDXL_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
SD35_MEDIUM_CONFIG = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 24, "input_size": None, "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 1536}},
    "num_patches": 384 * 384, "pos_embed_max_size": 384, "qk_norm": "rms", "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": list(range(13)),
}
FLUX1_CONFIG = {
    "image_model": "flux", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000,
    "out_channels": 16, "qkv_bias": True, "in_channels": 16, "hidden_size": 3072, "context_in_dim": 4096,
    "patch_size": 2, "vec_in_dim": 768, "depth": 19, "depth_single_blocks": 38, "guidance_embed": True,
}

#: tiny variants ComfyUI still detects as the same family (for --dry-run and fast checks).
TINY_SD15_CONFIG = {**SD15_CONFIG, "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1],
                    "transformer_depth_output": [1, 1], "transformer_depth_middle": 0}
#: detected as Segmind_Vega, an SDXL subclass (same conditioning: pooled output, size embeddings).
TINY_SDXL_CONFIG = {**SDXL_CONFIG, "channel_mult": [1, 1, 1], "transformer_depth": [0, 0, 1, 1, 2, 2],
                    "transformer_depth_middle": 1, "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2]}
TINY_SD35_CONFIG = {**SD35_MEDIUM_CONFIG, "depth": 2, "num_patches": 32 * 32, "pos_embed_max_size": 32,
                    "x_block_self_attn_layers": [0],
                    "context_embedder_config": {"target": "torch.nn.Linear",
                                                "params": {"in_features": 4096, "out_features": 128}}}
#: Flux's width is fixed by its heads (24 x 128); one double and one single block (~0.5 B parameters).
TINY_FLUX_CONFIG = {**FLUX1_CONFIG, "depth": 1, "depth_single_blocks": 1}


@dataclass(frozen=True)
class Architecture:
    """One diffusion-model family: ComfyUI config class, unet_config, conditioning shapes and sampling defaults."""

    name: str
    config_class: str  # attribute of comfy.supported_models
    unet_config: dict[str, Any]
    detected: tuple[str, ...]  # class names ComfyUI's detection may give
    context: tuple[int, int]  # (tokens, width) of the CONDITIONING tensor
    pooled: int | None = None  # width of pooled_output, if the model takes one
    latent_channels: int = 4
    cfg: float = 4.5
    extra: dict[str, Any] = field(default_factory=dict)  # more CONDITIONING options (Flux guidance)


ARCHITECTURES = {
    "sd15": Architecture("sd15", "SD15", SD15_CONFIG, ("SD15",), (77, 768)),
    "sdxl": Architecture("sdxl", "SDXL", SDXL_CONFIG, ("SDXL",), (77, 2048), pooled=1280),
    "sd35m": Architecture("sd35m", "SD3", SD35_MEDIUM_CONFIG, ("SD3",), (154, 4096), pooled=2048, latent_channels=16),
    "flux1": Architecture("flux1", "Flux", FLUX1_CONFIG, ("Flux",), (512, 4096), pooled=768, latent_channels=16,
                          cfg=1.0, extra={"guidance": 3.5}),
}
TINY_ARCHITECTURES = {
    "sd15": Architecture("sd15", "SD15", TINY_SD15_CONFIG, ("SD15",), (77, 768)),
    "sdxl": Architecture("sdxl", "Segmind_Vega", TINY_SDXL_CONFIG, ("Segmind_Vega", "SDXL"), (77, 2048), pooled=1280),
    "sd35m": Architecture("sd35m", "SD3", TINY_SD35_CONFIG, ("SD3",), (154, 4096), pooled=2048, latent_channels=16),
    "flux1": Architecture("flux1", "Flux", TINY_FLUX_CONFIG, ("Flux",), (16, 4096), pooled=768, latent_channels=16,
                          cfg=1.0, extra={"guidance": 3.5}),  # 16 text tokens: a CPU smoke, not a T5 length
}

_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                       torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64"}


def import_comfy() -> None:
    """ComfyUI importable in this process (testkit/comfy_harness.py; CPU unless ``cuda`` is asked)."""
    from testkit.comfy_harness import import_comfy as harness_import

    harness_import()


def meta_state_shapes(architecture: Architecture) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{key: (shape, dtype)} of the diffusion model's state dict, built on the meta device (no memory)."""
    import comfy.supported_models

    config = getattr(comfy.supported_models, architecture.config_class)(dict(architecture.unet_config))
    config.set_inference_dtype(torch.float32, None)
    with torch.device("meta"):
        model = config.get_model({}, device="meta")
    return {key: (tuple(value.shape), value.dtype) for key, value in model.diffusion_model.state_dict().items()}


def parameter_count(architecture: Architecture) -> int:
    return sum(math.prod(shape) for shape, _ in meta_state_shapes(architecture).values())


def random_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Norm weights/scales one, biases zero, the rest ``randn / sqrt(fan_in)`` (0.02 for embeddings)."""
    if len(shape) <= 1 and key.endswith((".weight", ".scale")):
        return torch.ones(shape, dtype=dtype, device=device)
    if key.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype, device=device)
    scale = 1.0 / math.sqrt(math.prod(shape[1:])) if len(shape) >= 2 and key.endswith(".weight") else 0.02
    values = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return (values * scale).to(dtype)


def random_state_dict(architecture: Architecture, dtype: torch.dtype, seed: int = 0,
                      device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The whole random state dict in memory (``device``: make it on the GPU to spare host RAM and time)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return {key: random_tensor(key, shape, dtype if stored.is_floating_point else stored, generator, device)
            for key, (shape, stored) in meta_state_shapes(architecture).items()}


def write_streamed_safetensors(path: Path, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
                               make: Any) -> int:
    """Write a safetensors file tensor by tensor: ``make(key, shape, dtype)`` gives each tensor. Returns bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, (shape, dtype) in shapes.items():
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    with open(temporary, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for key, (shape, dtype) in shapes.items():
            tensor = make(key, shape, dtype).contiguous()
            handle.write(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    temporary.replace(path)
    return offset


def write_diffusion_model(path: Path, architecture: Architecture, dtype: torch.dtype = torch.bfloat16,
                          seed: int = 0) -> int:
    """A random diffusion-model file (UNETLoader layout: bare diffusion-model keys). Returns its bytes."""
    shapes = meta_state_shapes(architecture)
    generator = torch.Generator().manual_seed(seed)
    stored = {key: (shape, dtype if meta_dtype.is_floating_point else meta_dtype)
              for key, (shape, meta_dtype) in shapes.items()}
    return write_streamed_safetensors(path, stored, lambda key, shape, kind: random_tensor(key, shape, kind, generator))


def vae_state_dict(latent_channels: int, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """ComfyUI's SD VAE (4 latent channels, ~84 M) or the SD3/Flux VAE (16), random (tiny_checkpoints layout)."""
    from testkit.tiny_checkpoints import _vae_state

    return {key: value.to(dtype) if value.is_floating_point() else value
            for key, value in _vae_state(latent_channels, seed).items()}


def conditioning(architecture: Architecture, seed: int = 0, device: str | torch.device = "cpu") -> tuple[list, list]:
    """(positive, negative) CONDITIONING lists as a text encoder would give them for this family."""
    generator = torch.Generator().manual_seed(seed)
    tokens, width = architecture.context
    positive_options: dict[str, Any] = dict(architecture.extra)
    negative_options: dict[str, Any] = dict(architecture.extra)
    if architecture.pooled is not None:
        positive_options["pooled_output"] = torch.randn(1, architecture.pooled, generator=generator).to(device)
        negative_options["pooled_output"] = torch.zeros(1, architecture.pooled, device=device)
    positive = [[torch.randn(1, tokens, width, generator=generator).to(device), positive_options]]
    negative = [[torch.zeros(1, tokens, width, device=device), negative_options]]
    return positive, negative


def detected_class(model: Any) -> str:
    """Name of the ComfyUI model config class a loaded MODEL was detected as."""
    return type(model.model.model_config).__name__
