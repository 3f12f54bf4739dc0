"""Tiny random model files that ComfyUI's *stock* loaders accept (UNETLoader, VAELoader, CLIPLoader).

* ``diffusion_models/tiny_sd15_unet.safetensors``: an SD1.5-detected UNet (detection needs
  model_channels 320 and context_dim 768; one level, one res block keeps it at ~45 MB fp16),
  for UNETLoader.
* ``text_encoders/tiny_clip_l.safetensors``: a random CLIP-L text encoder (CLIPLoader,
  type stable_diffusion). ComfyUI's CLIP-L architecture is fixed (12 layers, 768 wide), so this is
  the one big file (~250 MB fp16); it is written once per test session.
* ``vae_approx/taesd_{encoder,decoder}.safetensors``: random TAESD, for VAELoader("taesd").

Weights are built with ComfyUI's own classes (which skip init) and filled with seeded
``0.02 * randn``, so the files take seconds to write and the outputs are finite and reproducible.
"""

from __future__ import annotations

from pathlib import Path

import torch

from testkit.comfy_harness import import_comfy

UNET_FILE = "tiny_sd15_unet.safetensors"
CLIP_FILE = "tiny_clip_l.safetensors"
VAE_NAME = "taesd"
#: the tiny SD1.5 UNet (detection pins model_channels 320 and context_dim 768): one level, one res block
SD15_UNET_CONFIG = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [1],
    "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
    "transformer_depth_middle": 0, "context_dim": 768, "use_spatial_transformer": True,
    "use_linear_in_transformer": False, "adm_in_channels": None, "use_temporal_attention": False,
    "use_temporal_resblock": False, "legacy": False, "use_checkpoint": False, "num_heads": 8,
    "num_head_channels": -1,
}


def _randomised(state: dict[str, torch.Tensor], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in state.items():
        if not value.is_floating_point():
            out[name] = value.clone()
        elif name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "layer_norm1.weight",
                            "layer_norm2.weight", "final_layer_norm.weight")):
            out[name] = torch.ones(value.shape, dtype=dtype)
        else:
            out[name] = (0.02 * torch.randn(value.shape, generator=generator)).to(dtype)
    return out


def write_tiny_stock_models(models: Path, seed: int = 0) -> None:
    """Write the three model files under ``models`` (a ComfyUI models folder); skip existing ones."""
    import_comfy()
    import comfy.supported_models
    import comfy.taesd.taesd
    import safetensors.torch

    unet_path = models / "diffusion_models" / UNET_FILE
    if not unet_path.exists():
        unet_path.parent.mkdir(parents=True, exist_ok=True)
        config = comfy.supported_models.SD15(dict(SD15_UNET_CONFIG))
        config.set_inference_dtype(torch.float32, None)
        model = config.get_model({})
        state = _randomised(model.diffusion_model.state_dict(), seed, torch.float16)
        safetensors.torch.save_file({f"model.diffusion_model.{k}": v for k, v in state.items()}, str(unet_path))

    clip_path = models / "text_encoders" / CLIP_FILE
    if not clip_path.exists():
        import comfy.sd1_clip

        clip_path.parent.mkdir(parents=True, exist_ok=True)
        encoder = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float16)
        state = _randomised(encoder.transformer.state_dict(), seed + 1, torch.float16)
        safetensors.torch.save_file(state, str(clip_path))

    for part in ("encoder", "decoder"):
        path = models / "vae_approx" / f"{VAE_NAME}_{part}.safetensors"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            taesd = comfy.taesd.taesd.TAESD()
            module = taesd.taesd_encoder if part == "encoder" else taesd.taesd_decoder
            state = _randomised(module.state_dict(), seed + 2, torch.float32)
            safetensors.torch.save_file(state, str(path))
