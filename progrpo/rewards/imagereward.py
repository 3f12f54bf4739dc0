"""ImageReward (Xu et al. 2023) in plain transformers: BLIP ViT + BERT with cross-attention + MLP.

The released ``ImageReward.pt`` is BLIP's ViT-L/16 image encoder, a BERT-base text encoder whose
every layer cross-attends to the image tokens, and the improved-aesthetic-predictor MLP on the
text encoder's [CLS] state; the score is ``(mlp(cls) - mean) / std`` with the training set's
``mean = 0.16717362830052426`` and ``std = 1.0333394966054072`` (ImageReward/ImageReward.py,
``ImageReward.score``). transformers' ``BlipVisionModel`` and ``BlipTextModel`` are ports of the
same BLIP code (``models/BLIP/vit.py`` and ``med.py``), so the converted weights load into them
(``convert-reward imagereward`` renames the keys). Prompts are padded to 35 tokens as the
reference does; images are resized, centre-cropped and normalised with OpenAI CLIP mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ProGRPOConfigError
from ..log import logger
from .base import BaseReward, register_reward
from .clip_family import _MODEL_CACHE, AestheticHead, ImagePreprocess, read_image_preprocess
from .reward_folder import check_folder_kind
from .runtime import check_batch_size, resolve_device, resolve_dtype

#: ImageReward's normalisation of the MLP output (ImageReward.py, ``self.mean`` / ``self.std``).
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
#: the reference tokenises with ``padding="max_length", max_length=35``.
IMAGEREWARD_MAX_LENGTH = 35
WEIGHTS = "model.safetensors"
FOLDER_EXPECTED = "expected a folder written by `python -m progrpo convert-reward imagereward ImageReward.pt DST`"


class ImageRewardModel(torch.nn.Module):
    """``vision_model`` (BlipVisionModel), ``text_model`` (BlipTextModel, no pooler) and ``head``
    (the LAION-style MLP on the text width); keys of the converted safetensors file."""

    def __init__(self, vision_config: dict[str, Any], text_config: dict[str, Any]) -> None:
        super().__init__()
        from transformers import BlipTextConfig, BlipVisionConfig
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.vision_model = BlipVisionModel(BlipVisionConfig(**vision_config))
        self.text_model = BlipTextModel(BlipTextConfig(**text_config), add_pooling_layer=False)
        self.head = AestheticHead(int(text_config["hidden_size"]))

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """pixels [B,3,S,S] normalised, input_ids/attention_mask [B,L] -> raw MLP output float32 [B]."""
        image_tokens = self.vision_model(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=image_tokens.device)
        text = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_tokens,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        return self.head(text[:, 0, :].float())


@dataclass
class LoadedImageReward:
    """A converted ImageReward folder loaded on a device: model, tokenizer, preprocessing, normalisation."""

    model: ImageRewardModel
    tokenizer: Any
    preprocess: ImagePreprocess
    mean: float
    std: float
    max_length: int
    device: torch.device
    dtype: torch.dtype


def _check_folder(path: Any) -> tuple[Path, dict[str, Any]]:
    """The converted folder and its description; errors name the path and the conversion command."""
    if path is None or str(path).strip() == "":
        raise ProGRPOConfigError(f"reward 'imagereward': option `path` is required; {FOLDER_EXPECTED}.")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ProGRPOConfigError(f"reward 'imagereward': '{folder}' is not a folder; {FOLDER_EXPECTED}.")
    config = check_folder_kind(folder, "imagereward")
    if config is None or not (folder / WEIGHTS).is_file():
        raise ProGRPOConfigError(
            f"reward 'imagereward': folder '{folder}' has no progrpo_reward.json or no {WEIGHTS}; {FOLDER_EXPECTED}."
        )
    return folder.resolve(), config


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise ProGRPOConfigError(
            f"reward 'imagereward': no usable BERT tokenizer in '{folder}' ({error}); {FOLDER_EXPECTED}."
        ) from error


def load_imagereward(path: Any, device: str = "cpu", precision: str = "fp32") -> LoadedImageReward:
    """Load (or fetch from the cache) the converted ImageReward folder ``path`` on ``device`` in ``precision``."""
    from safetensors.torch import load_file

    folder, config = _check_folder(path)
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    weights = folder / WEIGHTS
    key = ("ImageReward", f"{folder}@{weights.stat().st_mtime_ns}", str(torch_device), str(dtype))
    cached = _MODEL_CACHE.get(key)
    if cached is not None:
        return cached
    model = ImageRewardModel(config["vision_config"], config["text_config"])
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, OSError) as error:
        raise ProGRPOConfigError(f"reward 'imagereward': '{weights}' does not fit its config ({error}); "
                                 f"{FOLDER_EXPECTED}.") from error
    model = model.to(torch_device, dtype).eval().requires_grad_(False)
    model.head.float()  # the 0.9 M-parameter MLP stays in float32, as the reference's ``.float()`` features
    image_size = int(config["vision_config"]["image_size"])
    loaded = LoadedImageReward(model, _load_tokenizer(folder), read_image_preprocess(folder, image_size),
                               float(config["mean"]), float(config["std"]), int(config["max_length"]),
                               torch_device, dtype)
    _MODEL_CACHE[key] = loaded
    logger.info("loaded ImageReward from %s on %s (%s)", folder, torch_device, dtype)
    return loaded


class ImageRewardReward(BaseReward):
    """ImageReward score ``(mlp(cls) - mean) / std`` of each (image, prompt) pair."""

    name = "imagereward"
    differentiable = True

    def __init__(self, loaded: LoadedImageReward, batch_size: int | None = None) -> None:
        self.loaded = loaded
        self.batch_size = check_batch_size(batch_size)

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        loaded = self.loaded
        tokens = loaded.tokenizer(prompts, padding="max_length", truncation=True, max_length=loaded.max_length,
                                  return_tensors="pt")
        pixels = loaded.preprocess(images.to(loaded.device, torch.float32)).to(loaded.dtype)
        raw = loaded.model(pixels, tokens["input_ids"].to(loaded.device), tokens["attention_mask"].to(loaded.device))
        return (raw.float() - loaded.mean) / loaded.std


@register_reward("imagereward")
def imagereward(
    path: str, device: str = "cpu", precision: str = "fp32", batch_size: int | None = None
) -> ImageRewardReward:
    """ImageReward (roughly -2..2, 0 = the training set's average) from a folder written by
    ``python -m progrpo convert-reward imagereward``."""
    return ImageRewardReward(load_imagereward(path, device, precision), batch_size)
