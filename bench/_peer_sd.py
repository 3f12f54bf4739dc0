"""The peer benchmarks' tiny Stable Diffusion pipeline, built offline and cached on disk.

Exactly the model TRL's standalone DDPO figures were measured on (bench/README.md, "Peer: TRL's
DDPO"): diffusers' own SD test-fixture dims -- UNet (32, 64) with 2 layers per block and
cross-attention dim 32 (1,427,012 params), AutoencoderKL (32, 64) -> 64x64 images, a 5-layer
CLIP text encoder of hidden size 32, a byte-level CLIP tokenizer (514 tokens, no merges) and
SD-1.x's DDIM scheduler. ``torch.manual_seed(0)`` before each component. Random weights; cost
does not depend on their values. Saved with ``save_pretrained`` under ``bench/.cache`` (git-ignored)
so TRL loads it through ``DefaultDDPOStableDiffusionPipeline(folder)`` with no download.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
PIPELINE_DIR = CACHE / "tiny_sd_peer"

logger = logging.getLogger("progrpo.bench")


def _byte_unicode() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP use for the bytes 0..255, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    table = dict(zip(printable, codes))
    return [chr(table[byte]) for byte in range(256)]


def _write_bytes_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json (256 byte symbols, the same with ``</w>``, 2 specials = 514) and a header-only merges.txt."""
    symbols = _byte_unicode()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    merges.write_text("#version: 0.2\n")
    return vocab, merges


def build_pipeline(folder: Path) -> None:
    """Build the peer pipeline (seed 0 before each component) and ``save_pretrained`` it to ``folder``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        vocab, merges = _write_bytes_tokenizer_files(Path(scratch))
        tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, block_out_channels=(32, 64), layers_per_block=2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, num_hidden_layers=5, num_attention_heads=4, intermediate_size=37, max_position_embeddings=77,
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, num_train_timesteps=1000,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    # transformers 5 writes only tokenizer.json; 4.x readers want the vocab/merges files too.
    _write_bytes_tokenizer_files(folder / "tokenizer")
    logger.info("built the peer pipeline in %s (UNet %d params)", folder, sum(p.numel() for p in unet.parameters()))


def ensure_pipeline(folder: Path = PIPELINE_DIR) -> Path:
    """The cached pipeline folder, built on first use."""
    if not (folder / "model_index.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        build_pipeline(folder)
    return folder


def load_pipeline(folder: Path | None = None):
    """``StableDiffusionPipeline.from_pretrained`` of the cached folder with a DDIM scheduler, eval mode."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(ensure_pipeline(folder or PIPELINE_DIR)), local_files_only=True,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe
