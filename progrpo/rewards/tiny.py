"""Tiny random CLIP reward models saved to disk, for tests and offline smoke runs.

The reward loaders then run their real code path (``CLIPModel.from_pretrained`` on a folder,
tokenizer and processor config read from it) on a ~200 KB model instead of a multi-GB download
(the tests run with no network and no weights). The tokenizer is the word-level one of
:func:`progrpo.tiny_models.tiny_tokenizer`; the aesthetic head has the real LAION key names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..tiny_models import tiny_tokenizer
from .clip_family import AestheticHead

#: token limit of the tiny tokenizer and the text tower's position embeddings.
TINY_MAX_LENGTH = 16


def tiny_clip_model(seed: int = 0, projection_dim: int = 16, image_size: int = 32, patch_size: int = 8) -> Any:
    """Random ``CLIPModel``: 2-layer towers of width 32, vocabulary of the tiny tokenizer.

    ``projection_dim`` differs from the width (32) on purpose: the aesthetic head must read
    its input width from ``config.projection_dim``.
    """
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text_config = {
        "vocab_size": len(tiny_tokenizer(TINY_MAX_LENGTH)),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": TINY_MAX_LENGTH,
        # eos_token_id != 2: transformers pools at the first [EOS] rather than the legacy argmax
        # over token ids (which assumes EOS has the largest id, false for this vocabulary).
        "bos_token_id": 2,
        "eos_token_id": 3,
        "pad_token_id": 0,
    }
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)
    return CLIPModel(config).eval()


def save_tiny_clip(folder: str | Path, seed: int = 0, projection_dim: int = 16, image_size: int = 32) -> Path:
    """Save a random tiny CLIPModel plus ``CLIPProcessor`` (tokenizer + image processor) into
    ``folder`` (created) and return it; loadable by every CLIP-family reward."""
    from transformers import CLIPProcessor

    try:
        # transformers 5: the default CLIPImageProcessor wants torchvision and warns when it falls
        # back to this PIL class; both save the same "CLIPImageProcessor" config.
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor  # type: ignore[no-redef]

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_clip_model(seed, projection_dim, image_size).save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(TINY_MAX_LENGTH)).save_pretrained(folder)
    return folder


def save_tiny_aesthetic_head(file: str | Path, input_dim: int = 16, seed: int = 0) -> Path:
    """Save a random LAION-style aesthetic head (keys ``layers.{0,2,4,6,7}.{weight,bias}``) as
    ``.safetensors`` and return its path."""
    from safetensors.torch import save_file

    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = {name: tensor.contiguous() for name, tensor in AestheticHead(input_dim).state_dict().items()}
    save_file(state, str(file))
    return file
