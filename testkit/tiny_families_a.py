"""Tiny random diffusion models of the SD1.5, SDXL, SD3.5-Medium, Flux.1-dev, Flux.1-schnell and Chroma families.

Part of :mod:`tiny_families` (issue 13). Every file is built with ComfyUI's own model classes from the
``unet_config`` that ``comfy.model_detection.detect_unet_config`` reads back from its tensors, so the
stock UNETLoader detects the family's ``comfy.supported_models`` class. What detection pins:

* SD1.5: ``model_channels`` 320 and ``context_dim`` 768; the file is the one :mod:`tiny_stock_models`
  writes (one level, one res block, ~45 MB fp16), so the two helpers write the same bytes.
* SDXL: ``model_channels`` 320, ``context_dim`` 2048, ``adm_in_channels`` 2816 and the *input*
  ``transformer_depth`` [0, 0, 2, 2, 10, 10] (24 transformer blocks of width 320, ~76 M parameters);
  channel multiples, the output depths and the middle block are free, so the tiny file has one level
  (``channel_mult`` [1], six res blocks), no middle block and two output transformer blocks.
* SD3.5-Medium (MMDiT-X): width ``64 * depth``; two joint blocks of width 128 (2 heads), RMS q/k norm,
  the second self-attention ``x_block.attn2`` in both blocks and a 32 x 32 patch ``pos_embed`` (up to 512 px).
* Flux.1 and Chroma: detection fixes 24 heads and rotary axes [16, 56, 56] (head width 128), hence the
  hidden width 3072, and the MLP ratio 4; Chroma also fixes its modulation approximator (5 layers of
  5120). Only depth and the text/pooled input widths are free, so the smallest detected file is one
  double-stream block at full width (788 MB - 1 GB, see ``note``). The test files are 128 wide with one
  double and one single block and load through :func:`tiny_families.install_detection_shim`;
  ``extra["full_size"]`` is the full-width layout, checked to detect without the shim.

The VAEs are random TAESD-style approximations (``models/vae_approx``), loaded by the stock VAELoader by
name: ``taesd`` (SD1.5, the :mod:`tiny_stock_models` file), ``taesdxl``, ``taesd3`` and ``taef1``
(Flux.1 and Chroma share it).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from testkit.comfy_harness import import_comfy
from testkit.tiny_families import TinyFamily, save_tiny_unet, text_tensor
from testkit.tiny_stock_models import SD15_UNET_CONFIG, _randomised
from testkit.tiny_stock_models import UNET_FILE as SD15_UNET_FILE

DTYPE = torch.float16
TOKENS = 12  # tokens of the synthetic conditioning

#: ``unet_config`` of each tiny file, as ``detect_unet_config`` reads it back from the tensors.
SD15_CONFIG = SD15_UNET_CONFIG  # the file tiny_stock_models writes
SDXL_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "num_res_blocks": [6], "channel_mult": [1],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [1, 0, 0, 0, 0, 0, 1],
    "transformer_depth_middle": -2, "use_linear_in_transformer": True, "context_dim": 2048,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}
SD35M_DEPTH = 2  # hidden 64 * depth = 128, depth heads
SD35M_CONTEXT = 4096  # T5-XXL width (ComfyUI's SD3 text encoder pads CLIP to it)
SD35M_POOLED = 768 + 1280  # CLIP-L + CLIP-G pooled
SD35M_CONFIG = {
    "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": SD35M_DEPTH, "input_size": None,
    "adm_in_channels": SD35M_POOLED,
    "context_embedder_config": {"target": "torch.nn.Linear",
                                "params": {"in_features": SD35M_CONTEXT, "out_features": 64 * SD35M_DEPTH}},
    "num_patches": 32 * 32, "pos_embed_max_size": 32, "qk_norm": "rms", "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [0, 1],
}
FLUX_CONTEXT = 4096  # T5-XXL
FLUX_POOLED = 768  # CLIP-L pooled
_FLUX_FIXED = {  # what detect_unet_config fixes for "flux"
    "image_model": "flux", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000,
    "out_channels": 16, "qkv_bias": True, "in_channels": 16, "hidden_size": 3072, "patch_size": 2,
}
FLUX_DEV_CONFIG = {**_FLUX_FIXED, "context_in_dim": FLUX_CONTEXT, "vec_in_dim": FLUX_POOLED, "depth": 1,
                   "depth_single_blocks": 0, "guidance_embed": True}
FLUX_SCHNELL_CONFIG = {**FLUX_DEV_CONFIG, "guidance_embed": False}
CHROMA_CONFIG = {
    **_FLUX_FIXED, "image_model": "chroma", "context_in_dim": FLUX_CONTEXT, "depth": 1, "depth_single_blocks": 0,
    "in_channels": 64, "out_channels": 64, "in_dim": 64, "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5,
}

_ONES_SUFFIXES = (".scale", "ln_q.weight", "ln_k.weight")  # RMS norms _randomised does not know


def _state(config_class: str, unet_config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights of ComfyUI's model for ``unet_config`` (built on the meta device: no memory)."""
    import comfy.supported_models

    config = getattr(comfy.supported_models, config_class)(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device=torch.device("meta"))
    state = _randomised(model.diffusion_model.state_dict(), seed, DTYPE)
    for name in state:
        if name.endswith(_ONES_SUFFIXES):
            state[name] = torch.ones(state[name].shape, dtype=DTYPE)
    return state


def _save_unet(path: Path, config_class: str, unet_config: dict, seed: int) -> None:
    import safetensors.torch

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _state(config_class, unet_config, seed)
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file({f"model.diffusion_model.{k}": v for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def _save_taesd(models_dir: Path, name: str, latent_channels: int, seed: int, dtype: torch.dtype = DTYPE) -> None:
    """Random TAESD encoder/decoder files ``vae_approx/<name>_{encoder,decoder}.safetensors``."""
    import comfy.taesd.taesd
    import safetensors.torch

    for part in ("encoder", "decoder"):
        path = models_dir / "vae_approx" / f"{name}_{part}.safetensors"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        taesd = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
        module = taesd.taesd_encoder if part == "encoder" else taesd.taesd_decoder
        tmp = path.with_suffix(".tmp")
        safetensors.torch.save_file(_randomised(module.state_dict(), seed, dtype), str(tmp))
        tmp.replace(path)


def _writer(unet_file: str, config_class: str, unet_config: dict, vae: tuple[str, int, int]):
    def write(models_dir: Path, seed: int) -> None:
        import_comfy()
        models_dir = Path(models_dir)
        _save_unet(models_dir / "diffusion_models" / unet_file, config_class, unet_config, seed)
        name, channels, offset = vae
        # taesd: the tiny_stock_models recipe (seed + 2, float32) so both helpers write the same file
        _save_taesd(models_dir, name, channels, seed + offset, torch.float32 if name == "taesd" else DTYPE)

    return write


def _conditioning(salt: str, context: int, pooled: int | None, text: str) -> list:
    """``[[cond [1, TOKENS, context], {"pooled_output": [1, pooled] or None}]]`` seeded by the text."""
    cond = text_tensor(text, (1, TOKENS, context), f"{salt}/cond")
    extra = {"pooled_output": None if pooled is None else text_tensor(text, (1, pooled), f"{salt}/pooled")}
    return [[cond, extra]]


_FLUX_NOTE = ("ComfyUI's detection hard-codes Flux.1's width (24 heads x 128 = 3072) and MLP ratio 4: the smallest "
              "file it detects is one double-stream block and no single-stream block, {} MB fp16, ~1 s per 2-step "
              "64 px sample on one CPU thread. The test file is 128 wide (2 heads, one double and one single "
              "block, 3 MB) and carries those sizes in its metadata for a test-only detection shim; the class "
              "(image_model, guidance_embed) is still ComfyUI's detection, and the full-width layout is checked "
              "to detect as {} without the shim.")


def _shim_writer(key: str):
    def write(models_dir: Path, seed: int) -> None:
        write_shimmed(key, models_dir, seed)
        _save_taesd(Path(models_dir), "taef1", 16, seed + 5)

    return write

FAMILIES_A: dict[str, TinyFamily] = {
    "sd15": TinyFamily(
        name="sd15", model_class="SD15", unet_file=SD15_UNET_FILE, vae_name="taesd",
        write=_writer(SD15_UNET_FILE, "SD15", SD15_CONFIG, ("taesd", 4, 2)),
        conditioning=partial(_conditioning, "sd15", 768, 768),
        note="one UNet level with one res block (detection pins width 320 and context 768).",
    ),
    "sdxl": TinyFamily(
        name="sdxl", model_class="SDXL", unet_file="tiny_sdxl_unet.safetensors", vae_name="taesdxl",
        write=_writer("tiny_sdxl_unet.safetensors", "SDXL", SDXL_CONFIG, ("taesdxl", 4, 3)),
        conditioning=partial(_conditioning, "sdxl", 2048, 1280),
        note=("detection pins width 320, context 2048, adm 2816 and the 24 input transformer blocks "
              "[0, 0, 2, 2, 10, 10]; the tiny UNet has one level, no middle block and two output "
              "transformer blocks (256 MB fp16, ~0.9 s per 2-step 64 px sample on one CPU thread)."),
    ),
    "sd35-medium": TinyFamily(
        name="sd35-medium", model_class="SD3", unet_file="tiny_sd35m_mmditx.safetensors", vae_name="taesd3",
        write=_writer("tiny_sd35m_mmditx.safetensors", "SD3", SD35M_CONFIG, ("taesd3", 16, 4)),
        conditioning=partial(_conditioning, "sd35-medium", SD35M_CONTEXT, SD35M_POOLED),
        note="MMDiT-X of two joint blocks, width 128, x_block.attn2 in both, pos_embed 32 x 32 patches (up to 512 px).",
    ),
    "flux1-dev": TinyFamily(
        name="flux1-dev", model_class="Flux", unet_file="tiny_flux1_dev_shim.safetensors", vae_name="taef1",
        write=_shim_writer("flux1-dev"),
        conditioning=partial(_conditioning, "flux1", FLUX_CONTEXT, FLUX_POOLED),
        guidance_distilled=True,
        note=_FLUX_NOTE.format(808, "Flux"),
        extra={"full_size": ("Flux", FLUX_DEV_CONFIG)},
    ),
    "flux1-schnell": TinyFamily(
        name="flux1-schnell", model_class="FluxSchnell", unet_file="tiny_flux1_schnell_shim.safetensors",
        vae_name="taef1",
        write=_shim_writer("flux1-schnell"),
        conditioning=partial(_conditioning, "flux1", FLUX_CONTEXT, FLUX_POOLED),
        note=_FLUX_NOTE.format(788, "FluxSchnell"),
        extra={"full_size": ("FluxSchnell", FLUX_SCHNELL_CONFIG)},
    ),
    "chroma": TinyFamily(
        name="chroma", model_class="Chroma", unet_file="tiny_chroma_shim.safetensors", vae_name="taef1",
        write=_shim_writer("chroma"),
        conditioning=partial(_conditioning, "chroma", FLUX_CONTEXT, None),
        note=("ComfyUI's detection hard-codes Chroma's width 3072 (24 heads x 128), MLP ratio 4 and its "
              "modulation approximator (5 layers of 5120): the smallest file it detects is 1036 MB fp16 and "
              "takes ~12 s per 2-step 64 px sample on one CPU thread (the approximator runs on 344 rows). The "
              "test file is 128 wide with a 1-layer approximator (2 MB) through the test-only detection shim; "
              "the full-width layout is checked to detect as Chroma without it."),
        extra={"full_size": ("Chroma", CHROMA_CONFIG)},
    ),
}


# --- narrow Flux.1 / Chroma for the test-only detection shim (tiny_families.install_detection_shim) -----
#
# Measured (one CPU thread, 64 px, 2 steps): flux1-dev 3.3 MB, flux1-schnell 3.2 MB, chroma 2.3 MB, ~0.02 s each.

_NARROW = {"num_heads": 2, "axes_dim": [16, 24, 24], "hidden_size": 128, "depth": 1, "depth_single_blocks": 1}
NARROW_CONFIGS: dict[str, tuple[str, dict]] = {
    "flux1-dev": ("Flux", {**FLUX_DEV_CONFIG, **_NARROW}),
    "flux1-schnell": ("FluxSchnell", {**FLUX_SCHNELL_CONFIG, **_NARROW}),
    "chroma": ("Chroma", {**CHROMA_CONFIG, **_NARROW, "hidden_dim": 64, "n_layers": 1, "out_dim": 128}),
}


def write_shimmed(key: str, models_dir: Path, seed: int) -> str:
    """Write ``diffusion_models/tiny_<key>_shim.safetensors`` (width 128, one double + one single block)."""
    import_comfy()
    name = f"tiny_{key.replace('-', '_')}_shim.safetensors"
    config_class, config = NARROW_CONFIGS[key]
    save_tiny_unet(Path(models_dir) / "diffusion_models" / name, config_class, config, seed)
    return name
