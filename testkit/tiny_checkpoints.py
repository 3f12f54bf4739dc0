"""Tiny single-file checkpoints that ComfyUI's *stock* ``CheckpointLoaderSimple`` loads (MODEL, CLIP and VAE).

* ``checkpoints/tiny_sd15_checkpoint.safetensors``: detected as SD1.x. The UNet and the CLIP-L text
  encoder are the ones :mod:`tiny_stock_models` writes for UNETLoader / CLIPLoader (so the two routes
  share weights), under the LDM checkpoint prefixes ``model.diffusion_model.`` and
  ``cond_stage_model.transformer.``; the VAE (``first_stage_model.``) is a random SD AutoencoderKL.
* ``checkpoints/tiny_sd3_checkpoint.safetensors``: detected as SD3. A two-block MMDiT (hidden width
  ``64 * depth`` = 128, 2 heads, no ``pos_embed``; ComfyUI's detection reads the sizes back from the
  tensors), the same CLIP-L as the only text encoder (``text_encoders.clip_l.transformer.``) and a
  random 16-channel SD3 VAE. With clip_l alone ComfyUI's SD3 text encoder zero-pads the hidden states
  to 4096 and the pooled output to 768 + 1280 = 2048, so the MMDiT's ``context_embedder`` takes 4096
  features and its ``y_embedder`` 2048.

What ComfyUI fixes: CLIP-L is always 12 layers x 768 (about 123 M parameters) and a KL VAE in a
checkpoint is always built with the SD sizes (ch 128, ch_mult 1,2,4,4, about 84 M parameters), so
those two are full size; everything is stored in float16 (~0.45 GB per file). The MMDiT is 128 wide
because ComfyUI's MMDiT ties the width to the depth (``detect_unet_config``: depth = width // 64).

Weights are seeded ``0.02 * randn`` (norm weights one), see :func:`tiny_stock_models._randomised`, so the
outputs are finite and every file is the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from testkit.comfy_harness import import_comfy
from testkit.tiny_stock_models import CLIP_FILE, UNET_FILE, _randomised, write_tiny_stock_models

SD15_CHECKPOINT = "tiny_sd15_checkpoint.safetensors"
SD3_CHECKPOINT = "tiny_sd3_checkpoint.safetensors"
DTYPE = torch.float16

#: ComfyUI's SD1.x/SD3 VAE sizes (comfy.sd.VAE builds these for any ``decoder.conv_in.weight``).
_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                 "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
#: hidden states / pooled output widths of ComfyUI's SD3 text encoder with clip_l only (zero padded).
SD3_CONTEXT_WIDTH = 4096
SD3_POOLED_WIDTH = 768 + 1280
SD3_DEPTH = 2  # hidden width 64 * depth, depth heads (ComfyUI's MMDiT)


def _vae_state(latent_channels: int, seed: int) -> dict[str, torch.Tensor]:
    """Random SD VAE weights: AutoencoderKL with quant convs (SD1.x, 4 channels) or without (SD3, 16)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL, AutoencodingEngine

    ddconfig = {**_VAE_DDCONFIG, "z_channels": latent_channels}
    if latent_channels == 4:
        vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=latent_channels)
    else:
        vae = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig},
        )
    return _randomised(vae.state_dict(), seed, DTYPE)


def _mmdit_state(seed: int) -> dict[str, torch.Tensor]:
    import comfy.supported_models

    hidden = 64 * SD3_DEPTH
    config = comfy.supported_models.SD3({
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": SD3_DEPTH, "input_size": None,
        "adm_in_channels": SD3_POOLED_WIDTH, "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": SD3_CONTEXT_WIDTH, "out_features": hidden}},
    })
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    return _randomised(model.diffusion_model.state_dict(), seed, DTYPE)


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + name: value.to(DTYPE) if value.is_floating_point() else value for name, value in state.items()}


def write_tiny_checkpoints(models_dir: Path, seed: int = 0) -> dict[str, str]:
    """Write both checkpoints into ``models_dir / "checkpoints"`` (existing ones are kept).

    The UNet and CLIP-L come from :func:`tiny_stock_models.write_tiny_stock_models`, which writes them
    into ``models_dir`` (diffusion_models/, text_encoders/) unless they are there already.
    Returns ``{"sd15": file name, "sd3": file name}`` (names as CheckpointLoaderSimple lists them).
    """
    import_comfy()
    import safetensors.torch

    folder = models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    sd15, sd3 = folder / SD15_CHECKPOINT, folder / SD3_CHECKPOINT
    if not (sd15.exists() and sd3.exists()):
        write_tiny_stock_models(models_dir, seed=seed)
        clip = safetensors.torch.load_file(str(models_dir / "text_encoders" / CLIP_FILE))
        if not sd15.exists():
            unet = safetensors.torch.load_file(str(models_dir / "diffusion_models" / UNET_FILE))  # keys prefixed
            state = {**_prefixed("", unet), **_prefixed("cond_stage_model.transformer.", clip),
                     **_prefixed("first_stage_model.", _vae_state(4, seed + 10))}
            safetensors.torch.save_file(state, str(sd15))
        if not sd3.exists():
            state = {**_prefixed("model.diffusion_model.", _mmdit_state(seed + 11)),
                     **_prefixed("text_encoders.clip_l.transformer.", clip),
                     **_prefixed("first_stage_model.", _vae_state(16, seed + 12))}
            safetensors.torch.save_file(state, str(sd3))
    return {"sd15": SD15_CHECKPOINT, "sd3": SD3_CHECKPOINT}
