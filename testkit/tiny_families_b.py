"""Tiny diffusion models for Flux.2, HiDream, Qwen-Image, Lumina 2 and Z-Image (issue 13).

See :mod:`tiny_families` for the interface. ComfyUI 0.3.75's ``model_detection.detect_unet_config`` reads
few sizes of these families back from the tensors and pins the rest, so the smallest file the stock
UNETLoader maps to each class (``extra["full_size"]``, checked on the meta device to detect without the shim)
is large:

* **Flux.2** (``Flux2``): ``num_heads`` 48 and ``axes_dim`` [32]*4 are pinned, so the width is the released
  6144: one double block is 1.7 G parameters (3.4 GB fp16, 18 s per 2-step 64 px sample here).
* **HiDream** (``HiDream``): every size is pinned: 17.1 G parameters whatever the file holds.
* **Qwen-Image** (``QwenImage``): width 3072 and text width 3584 pinned; one block is 761 MB fp16.
* **Lumina 2** (``Lumina2``): only widths 2304 or 4096 pass; 2 + 2 refiner blocks pinned; 844 MB fp16.
* **Z-Image** (``ZImage``): width 3840 is what selects the class; one main block is 1.8 GB fp16.

The test files are narrow (2 heads x 64 = 128 wide, Z-Image 256: its modulation is ``min(dim, 256)``
wide) with one block of each kind, and load through :func:`tiny_families.install_detection_shim`, which
applies the sizes stored in their metadata after ComfyUI's own detection (Z-Image: width 3840 presented to
the class matching only). Text widths where the released model pins them shrink to 64.

VAEs: Flux.2's is ComfyUI's SD-sized KL VAE with the 2x2 batch-norm patchifier (``bn.running_mean``;
its size is not read from the tensors, ~84 M parameters); Qwen-Image's is the Wan 2.1 VAE, whose width
ComfyUI reads from ``decoder.head.0.gamma``, so it is built 8 wide; Lumina 2, Z-Image and HiDream
share ``taef1`` (a 16-channel TAESD in ``models/vae_approx``).

Weights: seeded ``0.02 * randn``; norm weights one (:func:`tiny_families.save_tiny_unet`); the VAEs'
norm biases zero and batch-norm statistics mean 0 / var 1. Stored float16.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from testkit.comfy_harness import import_comfy
from testkit.tiny_families import TinyFamily, save_tiny_unet, text_tensor
from testkit.tiny_families_a import _save_taesd

DTYPE = torch.float16
TOKENS = 12  # text tokens of the tiny conditioning

FLUX2_CONTEXT = 96  # txt_in width: ComfyUI's Flux.2 text encoder stacks 3 hidden layers (3 x 5120 -> 3 x 32)
LUMINA_CAPTION = 64  # cap_embedder width (Gemma-2-2B gives 2304)
ZIMAGE_CAPTION = 64  # cap_embedder width (Qwen3-4B gives 2560)
HIDREAM_T5, HIDREAM_LLAMA = 4096, 4096  # released caption widths (T5-XXL, Llama-3.1-8B)

FLUX2_UNET = "tiny_flux2_unet.safetensors"
HIDREAM_UNET = "tiny_hidream_unet.safetensors"
QWEN_UNET = "tiny_qwen_image_unet.safetensors"
LUMINA2_UNET = "tiny_lumina2_unet.safetensors"
ZIMAGE_UNET = "tiny_z_image_unet.safetensors"
FLUX2_VAE = "tiny_flux2_vae.safetensors"
WAN21_VAE = "tiny_wan21_vae.safetensors"
TAEF1 = "taef1"
WAN21_VAE_DIM = 8

#: unet_config dicts exactly as ComfyUI's detect_unet_config returns them for the tiny files.
FLUX2_CONFIG = {
    "image_model": "flux2", "axes_dim": [32, 32, 32, 32], "num_heads": 48, "mlp_ratio": 3.0, "theta": 2000,
    "out_channels": 128, "global_modulation": True, "vec_in_dim": None, "mlp_silu_act": True, "qkv_bias": False,
    "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0, "in_channels": 128,
    "hidden_size": 6144, "context_in_dim": FLUX2_CONTEXT, "patch_size": 1, "depth": 1, "depth_single_blocks": 0,
    "guidance_embed": True,
}
QWEN_CONFIG = {"image_model": "qwen_image", "in_channels": 64, "num_layers": 1}
LUMINA2_CONFIG = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 2304, "cap_feat_dim": LUMINA_CAPTION,
    "n_layers": 1, "qk_norm": True, "n_heads": 24, "n_kv_heads": 8, "axes_dims": [32, 32, 32],
    "axes_lens": [300, 512, 512], "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0,
}
ZIMAGE_CONFIG = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": ZIMAGE_CAPTION,
    "n_layers": 1, "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0,
    "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32,
}


#: released HiDream sizes, as ComfyUI's detection fixes them (17.1 G parameters): built on the meta device only
HIDREAM_CONFIG = {
    "image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
    "caption_channels": [HIDREAM_T5, HIDREAM_LLAMA], "max_resolution": [128, 128], "in_channels": 16,
    "llama_layers": list(range(32)) + [31] * 16, "num_attention_heads": 20, "num_routed_experts": 4,
    "num_activated_experts": 2, "num_layers": 16, "num_single_layers": 32, "out_channels": 16, "patch_size": 2,
    "text_emb_dim": 2048,
}

#: the narrow test files (tiny_families.install_detection_shim): 2 heads x 64 = width 128, one block of each kind
NARROW_TEXT = 64  # text-encoder widths where the released model pins them (Qwen-Image 3584, HiDream 4096)
FLUX2_NARROW = {**FLUX2_CONFIG, "num_heads": 2, "axes_dim": [16, 16, 16, 16], "hidden_size": 128,
                "depth_single_blocks": 1}
QWEN_NARROW = {**QWEN_CONFIG, "num_attention_heads": 2, "attention_head_dim": 64, "joint_attention_dim": NARROW_TEXT,
               "axes_dims_rope": [16, 24, 24]}
_NEXTDIT_NARROW = {"dim": 128, "n_heads": 2, "n_kv_heads": 2, "axes_dims": [16, 24, 24], "n_refiner_layers": 1}
LUMINA2_NARROW = {**LUMINA2_CONFIG, **_NEXTDIT_NARROW}
# Z-Image's modulation is min(dim, 256) wide against a dim-wide timestep embedding: it needs dim >= 256
ZIMAGE_NARROW = {**ZIMAGE_CONFIG, **_NEXTDIT_NARROW, "dim": 256, "n_heads": 4, "n_kv_heads": 4}
HIDREAM_LLAMA_NARROW = 2  # Llama hidden-state layers fed to the 2 blocks
HIDREAM_NARROW = {
    **HIDREAM_CONFIG, "attention_head_dim": 64, "num_attention_heads": 2, "axes_dims_rope": [32, 16, 16],
    "caption_channels": [NARROW_TEXT, NARROW_TEXT], "text_emb_dim": NARROW_TEXT, "num_routed_experts": 2,
    "num_layers": 1, "num_single_layers": 1, "llama_layers": [0, 1],
}


# --- weights ------------------------------------------------------------------------------------

def _fill_(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Fill ``module``'s parameters/buffers in place (see module doc); its state dict, contiguous."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, sub in module.named_modules():
            is_norm = "norm" in type(sub).__name__.lower()
            for pname, tensor in list(sub.named_parameters(recurse=False)) + list(sub.named_buffers(recurse=False)):
                if tensor is None or not tensor.is_floating_point():
                    continue
                if pname == "running_var":
                    tensor.fill_(1.0)
                elif pname == "running_mean":
                    tensor.zero_()
                elif is_norm and pname in ("weight", "scale", "gamma"):
                    tensor.fill_(1.0)
                elif is_norm and pname in ("bias", "beta"):
                    tensor.zero_()
                else:
                    # chunked so the fp32 temporary stays small for the 6144-wide Flux.2 matrices
                    flat = tensor.view(-1)
                    for start in range(0, flat.numel(), 1 << 24):
                        stop = min(start + (1 << 24), flat.numel())
                        flat[start:stop] = 0.02 * torch.randn(stop - start, generator=generator)
    return {k: v.contiguous() for k, v in module.state_dict().items()}


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    safetensors.torch.save_file({k: v.to(DTYPE) if v.is_floating_point() else v for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def _write_unet(models_dir: Path, file: str, config_name: str, unet_config: dict, seed: int,
                match: dict | None = None) -> None:
    import_comfy()
    save_tiny_unet(Path(models_dir) / "diffusion_models" / file, config_name, unet_config, seed, match)


def _write_flux2_vae(models_dir: Path, seed: int) -> None:
    """ComfyUI's Flux.2 VAE: AutoencoderKL (SD sizes, z 32) + 2x2 patchify batch norm -> 128 ch at 16x."""
    path = Path(models_dir) / "vae" / FLUX2_VAE
    if path.exists():
        return
    import_comfy()
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 32, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
                "batch_norm_latent": True}
    _save(_fill_(AutoencoderKL(ddconfig=ddconfig, embed_dim=32), seed), path)


def _write_wan21_vae(models_dir: Path, seed: int) -> None:
    """Wan 2.1 VAE (16 ch, 8x, 5-D); ComfyUI reads its width from ``decoder.head.0.gamma``."""
    path = Path(models_dir) / "vae" / WAN21_VAE
    if path.exists():
        return
    import_comfy()
    import comfy.ldm.wan.vae

    vae = comfy.ldm.wan.vae.WanVAE(dim=WAN21_VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                   attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    _save(_fill_(vae, seed), path)


def _write_taef1(models_dir: Path, seed: int) -> None:
    """``vae_approx/taef1_{encoder,decoder}.safetensors``: the 16-channel TAESD Flux.1 and Chroma use too (one writer)."""
    import_comfy()
    _save_taesd(Path(models_dir), TAEF1, 16, seed + 5)


def _writer(unet_file: str, config_class: str, config: dict, vae: Callable[[Path, int], None],
            match: dict | None = None) -> Callable[[Path, int], None]:
    """``write(models_dir, seed)``: the narrow diffusion model (through the detection shim) and its VAE."""
    def write(models_dir: Path, seed: int) -> None:
        _write_unet(models_dir, unet_file, config_class, config, seed, match)
        vae(models_dir, seed)

    return write


_write_flux2 = _writer(FLUX2_UNET, "Flux2", FLUX2_NARROW, lambda models, seed: _write_flux2_vae(models, seed + 100))
_write_hidream = _writer(HIDREAM_UNET, "HiDream", HIDREAM_NARROW, _write_taef1)
_write_qwen = _writer(QWEN_UNET, "QwenImage", QWEN_NARROW, lambda models, seed: _write_wan21_vae(models, seed + 100))
_write_lumina2 = _writer(LUMINA2_UNET, "Lumina2", LUMINA2_NARROW, _write_taef1)
_write_zimage = _writer(ZIMAGE_UNET, "ZImage", ZIMAGE_NARROW, _write_taef1, match={"dim": ZIMAGE_CONFIG["dim"]})


# --- conditioning -------------------------------------------------------------------------------

def _mask() -> torch.Tensor:
    return torch.ones((1, TOKENS), dtype=torch.long)


def _flux2_conditioning(text: str) -> list:
    """Mistral-3 (3 stacked layers, here 3 x 32), no pooled output, all-ones mask (left padding)."""
    return [[text_tensor(text, (1, TOKENS, FLUX2_CONTEXT), "flux2"),
             {"pooled_output": None, "attention_mask": _mask()}]]


def _hidream_conditioning(text: str) -> list:
    """T5 [1,T,64], CLIP-L+G pooled [1,64], Llama-3.1 hidden states of 2 layers [1,2,T,64] (released: 4096, 2048,
    32 layers of 4096; the narrow model's caption projections take 64)."""
    return [[text_tensor(text, (1, TOKENS, NARROW_TEXT), "hidream-t5"),
             {"pooled_output": text_tensor(text, (1, NARROW_TEXT), "hidream-pooled"),
              "conditioning_llama3": text_tensor(text, (1, HIDREAM_LLAMA_NARROW, TOKENS, NARROW_TEXT), "hidream-llama")}]]


def _qwen_conditioning(text: str) -> list:
    """Qwen2.5-VL-7B hidden states [1,T,3584]; ComfyUI drops the all-ones mask, no pooled output."""
    return [[text_tensor(text, (1, TOKENS, NARROW_TEXT), "qwen-image"), {"pooled_output": None}]]


def _caption_conditioning(salt: str, width: int, text: str) -> list:
    """Lumina 2 / Z-Image: caption hidden states [1, T, width] (Gemma-2 / Qwen3), an all-ones mask, no pooled output."""
    return [[text_tensor(text, (1, TOKENS, width), salt), {"pooled_output": None, "attention_mask": _mask()}]]


_lumina2_conditioning = partial(_caption_conditioning, "lumina2", LUMINA_CAPTION)
_zimage_conditioning = partial(_caption_conditioning, "z-image", ZIMAGE_CAPTION)


_SHIM = ("The test file is 128 wide (2 heads x 64; Z-Image 256) with one block of each kind, through the test-only "
         "detection shim; the released layout is checked to detect as {} without it.")

FAMILIES_B: dict[str, TinyFamily] = {
    "flux2": TinyFamily(
        name="flux2", model_class="Flux2", unet_file=FLUX2_UNET, vae_name=FLUX2_VAE, write=_write_flux2,
        conditioning=_flux2_conditioning, size=64, guidance_distilled=True,
        note="ComfyUI's detection pins 48 heads x 128 (width 6144): the smallest detected file is 3.4 GB fp16, 18 s "
             "per 2-step 64 px sample. " + _SHIM.format("Flux2") + " Text width 96 (3 x 32); the VAE is full SD "
             "size (ComfyUI does not read its width).",
        extra={"full_size": ("Flux2", {**FLUX2_CONFIG, "depth_single_blocks": 0})},
    ),
    "hidream": TinyFamily(
        name="hidream", model_class="HiDream", unet_file=HIDREAM_UNET, vae_name=TAEF1, write=_write_hidream,
        conditioning=_hidream_conditioning, size=64,
        note="ComfyUI's detection pins every HiDream size (17.1 G parameters, 34 GB fp16, whatever the file "
             "holds). " + _SHIM.format("HiDream") + " Two routed experts; text widths 64.",
        extra={"full_size": ("HiDream", HIDREAM_CONFIG)},
    ),
    "qwen-image": TinyFamily(
        name="qwen-image", model_class="QwenImage", unet_file=QWEN_UNET, vae_name=WAN21_VAE, write=_write_qwen,
        conditioning=_qwen_conditioning, size=64,
        note="ComfyUI's detection pins width 3072 and text width 3584 (one block: 761 MB fp16). "
             + _SHIM.format("QwenImage") + " Text width 64; Wan 2.1 VAE 8 wide (ComfyUI reads its width).",
        extra={"full_size": ("QwenImage", QWEN_CONFIG)},
    ),
    "lumina2": TinyFamily(
        name="lumina2", model_class="Lumina2", unet_file=LUMINA2_UNET, vae_name=TAEF1, write=_write_lumina2,
        conditioning=_lumina2_conditioning, size=64,
        note="ComfyUI's detection accepts only widths 2304 or 4096 and pins 2+2 refiner blocks (one main block: 844 "
             "MB fp16). " + _SHIM.format("Lumina2") + " One refiner of each kind; caption width 64.",
        extra={"full_size": ("Lumina2", LUMINA2_CONFIG)},
    ),
    "z-image": TinyFamily(
        name="z-image", model_class="ZImage", unet_file=ZIMAGE_UNET, vae_name=TAEF1, write=_write_zimage,
        conditioning=_zimage_conditioning, size=64,
        note="ComfyUI tells Z-Image from Lumina2 by its width 3840 alone (one main block: 1.8 GB fp16, 4.5 s per "
             "2-step 64 px sample). " + _SHIM.format("ZImage") + " The shim presents width 3840 to ComfyUI's "
             "class matching only. Caption width 64.",
        extra={"full_size": ("ZImage", ZIMAGE_CONFIG)},
    ),
}
