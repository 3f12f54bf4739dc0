"""CLIP-family model rewards loaded from LOCAL transformers folders: CLIP score, PickScore,
a LAION-style aesthetic MLP over CLIP image embeddings and HPS-style CLIP scores.

* ``clip_score``: ``scale * max(cos(img, txt), 0)`` with ``scale = 100`` (the usual CLIPScore).
* ``pickscore``: ``logit_scale.exp() * cos`` (PickScore_v1 is a plain ``CLIPModel``; Flow-GRPO
  additionally divides by 26, which is a reward weight here).
* ``hps``: ``cos``, as HPSv2 scores, on the open_clip ViT-H-14 checkpoint converted to the
  transformers ``CLIPModel`` format by ``convert-reward hpsv2`` (the ``.pt`` itself is not loaded here).
* ``aesthetic``: the LAION improved-aesthetic-predictor MLP (as DDPO uses it) on L2-normalised
  CLIP image embeddings; the head is a ``.safetensors`` state dict (pickled ``.pth`` heads are refused:
  ``convert-reward aesthetic`` converts them) with keys ``layers.{0,2,4,6,7}.{weight,bias}``.

Each reward runs on ``device`` in ``precision`` (fp32/fp16/bf16/auto, :mod:`.runtime`), ``batch_size``
images per model call, and returns float32 scores.

Images are preprocessed with torch (antialiased resize of the short side, centre crop,
normalisation with the saved processor's ``image_mean/std``) rather than the PIL processor, so
gradients reach the pixels (the rewards are differentiable for gradient-based fine-tuning). Nothing is downloaded: a path must be
an existing folder and every ``from_pretrained`` runs with ``local_files_only=True``. Loaded
models are cached per (kind, path, device, dtype) so repeated builds (ComfyUI re-executing a loader
node, several rewards on one backbone) do not reload.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ProGRPOConfigError
from ..log import logger
from .base import BaseReward, register_reward
from .reward_folder import check_folder_kind
from .runtime import check_batch_size, resolve_device, resolve_dtype

#: OpenAI CLIP normalisation, the transformers CLIPImageProcessor default.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CLIP_FOLDER_EXPECTED = (
    "expected a transformers CLIPModel folder with config.json and model.safetensors "
    "(written by CLIPModel.save_pretrained)"
)
#: any one of these files holds the weights of a saved transformers model. Only safetensors: a
#: pickled pytorch_model.bin can run code when loaded, and reward folders come from users.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
)
PICKLED_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
#: the LAION aesthetic head's state-dict keys (Linear layers of its nn.Sequential).
AESTHETIC_HEAD_KEYS = tuple(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))

#: (kind, path, device[, dtype]) -> loaded object; see :func:`clear_model_cache`.
_MODEL_CACHE: dict[tuple[str, ...], Any] = {}


def clear_model_cache() -> None:
    """Forget every cached reward model (frees memory; the next build reloads from disk)."""
    _MODEL_CACHE.clear()


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class ImagePreprocess:
    """Differentiable twin of ``CLIPImageProcessor``: [B,3,H,W] in [0,1] -> normalised [B,3,h,w].

    ``shortest_edge`` resizes the short side keeping the aspect ratio (HF's rounding:
    ``long = int(size * long / short)``); ``resize_hw`` resizes to an exact (h, w) instead;
    ``crop_hw`` centre-crops with HF's integer offsets (zero padding if the image is smaller).
    """

    shortest_edge: int | None
    resize_hw: tuple[int, int] | None
    crop_hw: tuple[int, int] | None
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    mode: str = "bicubic"

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) after the resize step for an input of (height, width)."""
        if self.resize_hw is not None:
            return self.resize_hw
        if self.shortest_edge is None:
            return height, width
        short, long = min(height, width), max(height, width)
        new_long = int(self.shortest_edge * long / short)
        return (self.shortest_edge, new_long) if height <= width else (new_long, self.shortest_edge)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        size = self.output_size(images.shape[-2], images.shape[-1])
        if size != tuple(images.shape[-2:]):
            # The PIL processor works on uint8, so its resized values stay in [0,1]; bicubic
            # overshoots, hence the clamp.
            images = F.interpolate(images, size=size, mode=self.mode, align_corners=False, antialias=True).clamp(0, 1)
        if self.crop_hw is not None:
            images = _center_crop(images, self.crop_hw)
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std


def _center_crop(images: torch.Tensor, crop_hw: tuple[int, int]) -> torch.Tensor:
    """Centre crop by slicing (exact, differentiable), offsets ``(H - h) // 2`` like HF."""
    crop_h, crop_w = crop_hw
    height, width = images.shape[-2:]
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = images.shape[-2:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return images[..., top : top + crop_h, left : left + crop_w]


def _as_hw(value: Any, what: str, source: Path) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    raise ProGRPOConfigError(f"'{source}': unsupported {what} {value!r}; expected an int or {{'height', 'width'}}.")


def read_image_preprocess(folder: Path, image_size: int) -> ImagePreprocess:
    """Read the image processor settings saved in ``folder``.

    Looks for ``preprocessor_config.json`` (the hub checkpoints' file) and then
    ``processor_config.json`` (transformers 5 nests the image processor under
    ``"image_processor"`` there). Without either, falls back to a square ``image_size``
    (the vision tower's) with OpenAI CLIP mean/std and logs a warning.
    """
    settings: dict[str, Any] | None = None
    source = folder / "preprocessor_config.json"
    if source.is_file():
        settings = _read_json(source)
    elif (folder / "processor_config.json").is_file():
        source = folder / "processor_config.json"
        settings = _read_json(source).get("image_processor")
    if not settings:
        logger.warning(
            "no image processor config in '%s'; resizing to %d and using OpenAI CLIP mean/std", folder, image_size
        )
        return ImagePreprocess(shortest_edge=image_size, resize_hw=None, crop_hw=(image_size, image_size))
    shortest_edge, resize_hw = None, None
    if settings.get("do_resize", True):
        size = settings.get("size", image_size)
        if isinstance(size, dict) and size.get("shortest_edge"):
            shortest_edge = int(size["shortest_edge"])
        elif isinstance(size, int):
            # CLIPImageProcessor resizes the short side when given one int (default_to_square=False).
            shortest_edge = size
        else:
            resize_hw = _as_hw(size, "size", source)
    crop_hw = None
    if settings.get("do_center_crop", True):
        crop_hw = _as_hw(settings.get("crop_size", image_size), "crop_size", source)
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    if settings.get("do_normalize", True):
        mean = tuple(float(v) for v in settings.get("image_mean", OPENAI_CLIP_MEAN))
        std = tuple(float(v) for v in settings.get("image_std", OPENAI_CLIP_STD))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    # PIL resample ids: 2 = bilinear, 3 = bicubic (CLIP's default).
    mode = "bilinear" if settings.get("resample", 3) == 2 else "bicubic"
    return ImagePreprocess(shortest_edge, resize_hw, crop_hw, mean, std, mode)  # type: ignore[arg-type]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ProGRPOConfigError(f"'{path}' is not readable JSON ({error}); re-save the model folder.") from error


# --------------------------------------------------------------------------- loading


def check_clip_folder(path: Any, reward_name: str) -> Path:
    """Resolve ``path`` and check it is a saved transformers CLIPModel folder; return it."""
    if path is None or str(path).strip() == "":
        raise ProGRPOConfigError(f"reward '{reward_name}': option `path` is required; {CLIP_FOLDER_EXPECTED}.")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ProGRPOConfigError(f"reward '{reward_name}': path '{folder}' does not exist; {CLIP_FOLDER_EXPECTED}.")
    if not folder.is_dir():
        hint = (
            " (an open_clip .pt such as HPSv2 must be converted to CLIPModel format first)"
            if folder.suffix in {".pt", ".pth", ".bin"}
            else ""
        )
        raise ProGRPOConfigError(
            f"reward '{reward_name}': path '{folder}' is a file, not a folder{hint}; {CLIP_FOLDER_EXPECTED}."
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ProGRPOConfigError(
            f"reward '{reward_name}': folder '{folder}' has no config.json; {CLIP_FOLDER_EXPECTED}."
        )
    model_type = _read_json(config_file).get("model_type")
    if model_type != "clip":
        raise ProGRPOConfigError(
            f"reward '{reward_name}': '{config_file}' has model_type {model_type!r}, not 'clip'; {CLIP_FOLDER_EXPECTED}."
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        if any((folder / name).is_file() for name in PICKLED_WEIGHT_FILES):
            raise ProGRPOConfigError(
                f"reward '{reward_name}': folder '{folder}' holds only pickled weights (pytorch_model.bin), which "
                "are not loaded (they can run code); convert them once with CLIPModel.from_pretrained(folder)"
                ".save_pretrained(folder, safe_serialization=True)."
            )
        raise ProGRPOConfigError(
            f"reward '{reward_name}': folder '{folder}' has no weights (one of {', '.join(WEIGHT_FILES)}); "
            f"{CLIP_FOLDER_EXPECTED}."
        )
    return folder.resolve()


def _features(output: Any) -> torch.Tensor:
    """Projected embeddings from ``get_image_features`` / ``get_text_features``: transformers 5
    returns a ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds them, 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass
class ClipBackbone:
    """A frozen ``CLIPModel`` (on ``device`` in ``dtype``) with its tokenizer and differentiable
    preprocessing; embeddings come out in float32 whatever ``dtype`` the model runs in."""

    path: Path
    processor_path: Path
    model: Any
    preprocess: ImagePreprocess
    device: torch.device
    tokenizer: Any = field(default=None, repr=False)
    dtype: torch.dtype = torch.float32

    def load_tokenizer(self, reward_name: str) -> Any:
        """Load (once) the tokenizer saved in ``processor_path``."""
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            expected = (
                f"expected tokenizer.json (or vocab.json + merges.txt) in '{self.processor_path}', or pass "
                "`processor_path` naming the folder that holds them"
            )
            # transformers 5 does not fail on a folder without tokenizer files: it silently builds
            # an empty 2-token CLIPTokenizer that maps every word to one id. Check the files first.
            has_files = (self.processor_path / "tokenizer.json").is_file() or all(
                (self.processor_path / name).is_file() for name in ("vocab.json", "merges.txt")
            )
            if not has_files:
                raise ProGRPOConfigError(f"reward '{reward_name}': no usable tokenizer: {expected}.")
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(self.processor_path), local_files_only=True)
            except (OSError, ValueError, TypeError) as error:
                raise ProGRPOConfigError(
                    f"reward '{reward_name}': no usable tokenizer ({error}): {expected}."
                ) from error
            vocab_size = int(self.model.config.text_config.vocab_size)
            if len(tokenizer) > vocab_size:
                raise ProGRPOConfigError(
                    f"reward '{reward_name}': the tokenizer in '{self.processor_path}' has {len(tokenizer)} tokens but "
                    f"the CLIP text model in '{self.path}' only {vocab_size}; use the tokenizer saved with this model."
                )
            self.tokenizer = tokenizer
        return self.tokenizer

    @property
    def max_length(self) -> int:
        """Token limit: the tokenizer's, capped by the text tower's position embeddings
        (a tokenizer saved without ``model_max_length`` reports 1e30)."""
        positions = int(self.model.config.text_config.max_position_embeddings)
        return min(int(min(self.tokenizer.model_max_length, 1 << 30)), positions)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings: [B,3,H,W] in [0,1] -> [B,D]; differentiable in images."""
        pixels = self.preprocess(images.to(self.device, torch.float32)).to(self.dtype)
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    def text_embeddings(self, prompts: Sequence[str], reward_name: str) -> torch.Tensor:
        """L2-normalised text embeddings: B prompts -> [B,D] (each distinct prompt encoded once,
        since a GRPO group repeats its prompt)."""
        tokenizer = self.load_tokenizer(reward_name)
        unique = list(dict.fromkeys(prompts))
        tokens = tokenizer(unique, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            output = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
        embeddings = F.normalize(_features(output).float(), dim=-1)
        rows = torch.tensor([unique.index(prompt) for prompt in prompts], device=self.device)
        return embeddings[rows]


def _stamp(folder: Path) -> int:
    """Latest modification time (ns) of the folder's config and weight files."""
    files = [folder / name for name in ("config.json", *WEIGHT_FILES)]
    return max(file.stat().st_mtime_ns for file in files if file.is_file())


def _load_clip_model(folder: Path, reward_name: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The frozen CLIPModel saved in ``folder`` (checked) on ``device`` in ``dtype``, cached."""
    # The files' modification times are part of the key, so a model re-saved in place reloads.
    key = ("CLIPModel", f"{folder}@{_stamp(folder)}", str(device), str(dtype))
    model = _MODEL_CACHE.get(key)
    if model is None:
        from transformers import CLIPModel

        try:
            model = CLIPModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise ProGRPOConfigError(
                f"reward '{reward_name}': could not load '{folder}' ({error}); {CLIP_FOLDER_EXPECTED}."
            ) from error
        # Reward models are frozen: GRPO only needs values, DRaFT-style use needs pixel gradients only.
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        # PickScore multiplies by logit_scale.exp() (~100): bf16 would round it by up to 1%, so it stays fp32.
        model.logit_scale.data = model.logit_scale.data.float()
        _MODEL_CACHE[key] = model
        logger.info("loaded CLIPModel from %s for reward '%s'", folder, reward_name)
    return model


def load_clip(
    path: Any, reward_name: str, processor_path: Any = None, device: str = "cpu", need_text: bool = True,
    precision: str = "fp32",
) -> ClipBackbone:
    """Load (or fetch from the cache) the CLIPModel in ``path`` on ``device`` in ``precision``;
    tokenizer and image processor settings come from ``processor_path`` (default: ``path``)."""
    folder = check_clip_folder(path, reward_name)
    check_folder_kind(folder, reward_name)
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    processor_folder = folder if processor_path is None else Path(processor_path).expanduser().resolve()
    if not processor_folder.is_dir():
        raise ProGRPOConfigError(
            f"reward '{reward_name}': `processor_path` '{processor_folder}' is not a folder; expected the folder "
            "with the tokenizer and preprocessor_config.json / processor_config.json."
        )
    key = ("ClipBackbone", f"{folder}@{_stamp(folder)}|{processor_folder}", str(torch_device), str(dtype))
    backbone = _MODEL_CACHE.get(key)
    if backbone is None:
        model = _load_clip_model(folder, reward_name, torch_device, dtype)
        preprocess = read_image_preprocess(processor_folder, int(model.config.vision_config.image_size))
        backbone = ClipBackbone(folder, processor_folder, model, preprocess, torch_device, dtype=dtype)
        _MODEL_CACHE[key] = backbone
    if need_text:
        backbone.load_tokenizer(reward_name)
    return backbone


# --------------------------------------------------------------------------- rewards


class ClipSimilarityReward(BaseReward):
    """``scale * cos(img, txt)`` (optionally ``max(cos, 0)``); ``scale=None`` uses the model's
    ``logit_scale.exp()`` (PickScore)."""

    differentiable = True

    def __init__(
        self, name: str, backbone: ClipBackbone, scale: float | None, clamp_negative: bool, batch_size: int | None = None
    ) -> None:
        self.name, self.backbone, self.scale, self.clamp_negative = name, backbone, scale, clamp_negative
        self.batch_size = check_batch_size(batch_size)

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        cosine = (self.backbone.image_embeddings(images) * self.backbone.text_embeddings(prompts, self.name)).sum(-1)
        if self.clamp_negative:
            cosine = cosine.clamp_min(0)
        scale = self.backbone.model.logit_scale.float().exp() if self.scale is None else self.scale
        return scale * cosine


@register_reward("clip_score")
def clip_score(
    path: str, processor_path: str | None = None, scale: float = 100.0, clamp_negative: bool = True,
    device: str = "cpu", precision: str = "fp32", batch_size: int | None = None,
) -> ClipSimilarityReward:
    """CLIPScore: ``scale * max(cos(img, txt), 0)`` from a local CLIPModel folder."""
    backbone = load_clip(path, "clip_score", processor_path, device, precision=precision)
    return ClipSimilarityReward("clip_score", backbone, scale, clamp_negative, batch_size)


@register_reward("pickscore")
def pickscore(
    path: str, processor_path: str | None = None, device: str = "cpu", precision: str = "fp32",
    batch_size: int | None = None,
) -> ClipSimilarityReward:
    """PickScore: ``logit_scale.exp() * cos`` (PickScore's README, about 18-23 for real images) from a
    folder written by ``convert-reward pickscore`` (or a CLIPModel folder plus ``processor_path``)."""
    backbone = load_clip(path, "pickscore", processor_path, device, precision=precision)
    return ClipSimilarityReward("pickscore", backbone, None, False, batch_size)


@register_reward("hps")
def hps(
    path: str, processor_path: str | None = None, device: str = "cpu", precision: str = "fp32",
    batch_size: int | None = None,
) -> ClipSimilarityReward:
    """HPSv2/v2.1: ``cos(img, txt)`` of the open_clip checkpoint (HPSv2's img_score.py) converted by
    ``convert-reward hpsv2`` into a CLIPModel folder."""
    backbone = load_clip(path, "hps", processor_path, device, precision=precision)
    return ClipSimilarityReward("hps", backbone, 1.0, False, batch_size)


class AestheticHead(torch.nn.Module):
    """LAION improved-aesthetic-predictor MLP; ``layers`` indices match its state-dict keys."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_dim, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[B,D] L2-normalised CLIP image embeddings -> [B] scores."""
        return self.layers(embeddings).squeeze(-1)


def _read_state_dict(file: Path, reward_name: str) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    # Heads are user files: pickled .pt/.pth are refused, even with weights_only (a loader bug away from code).
    raise ProGRPOConfigError(
        f"reward '{reward_name}': head '{file}' is not a .safetensors file; only safetensors heads are loaded. "
        f"Convert the LAION .pth once with `python -m progrpo convert-reward aesthetic {file.name} DST --backbone "
        "CLIP_FOLDER` (or safetensors.torch.save_file(torch.load(path, weights_only=True), 'head.safetensors')); "
        f"expected keys {', '.join(AESTHETIC_HEAD_KEYS)}."
    )


def load_aesthetic_head(
    head: Any, input_dim: int, reward_name: str = "aesthetic", device: str = "cpu"
) -> AestheticHead:
    """Load (or fetch from the cache) the aesthetic MLP in file ``head`` for embeddings of width ``input_dim``."""
    if head is None or str(head).strip() == "":
        raise ProGRPOConfigError(
            f"reward '{reward_name}': option `head` is required: a .safetensors file with keys "
            f"{', '.join(AESTHETIC_HEAD_KEYS)}."
        )
    file = Path(head).expanduser()
    if not file.is_file():
        raise ProGRPOConfigError(
            f"reward '{reward_name}': head file '{file}' does not exist; expected a .safetensors file with keys "
            f"{', '.join(AESTHETIC_HEAD_KEYS)}."
        )
    file = file.resolve()
    key = ("AestheticHead", f"{file}@{file.stat().st_mtime_ns}", str(resolve_device(device)))
    cached = _MODEL_CACHE.get(key)
    if cached is not None:
        return cached
    state = _read_state_dict(file, reward_name)
    missing = [name for name in AESTHETIC_HEAD_KEYS if name not in state]
    unexpected = sorted(set(state) - set(AESTHETIC_HEAD_KEYS))
    if missing or unexpected:
        raise ProGRPOConfigError(
            f"reward '{reward_name}': head '{file}' has missing keys {missing} and unexpected keys {unexpected}; "
            f"expected exactly {', '.join(AESTHETIC_HEAD_KEYS)} (LAION aesthetic MLP)."
        )
    width = int(state["layers.0.weight"].shape[1])
    if width != input_dim:
        raise ProGRPOConfigError(
            f"reward '{reward_name}': head '{file}' expects {width}-dim embeddings but the CLIP model's "
            f"projection_dim is {input_dim}; use the head trained for this CLIP model."
        )
    module = AestheticHead(input_dim)
    try:
        module.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    except RuntimeError as error:
        raise ProGRPOConfigError(
            f"reward '{reward_name}': head '{file}' has wrong tensor shapes ({error}); expected the LAION aesthetic "
            "MLP Linear(D,1024)-Linear(1024,128)-Linear(128,64)-Linear(64,16)-Linear(16,1)."
        ) from error
    module = module.to(device).eval().requires_grad_(False)
    _MODEL_CACHE[key] = module
    return module


class AestheticReward(BaseReward):
    """LAION aesthetic score of the L2-normalised CLIP image embedding (prompts are ignored)."""

    name = "aesthetic"
    differentiable = True

    def __init__(self, backbone: ClipBackbone, head: AestheticHead, batch_size: int | None = None) -> None:
        self.backbone, self.head = backbone, head
        self.batch_size = check_batch_size(batch_size)

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.head(self.backbone.image_embeddings(images))


@register_reward("aesthetic")
def aesthetic(
    path: str, head: str | None = None, processor_path: str | None = None, device: str = "cpu",
    precision: str = "fp32", batch_size: int | None = None,
) -> AestheticReward:
    """LAION aesthetic MLP over a CLIPModel's L2-normalised image embeddings (about 1-10, 5 average).

    ``path``: a folder written by ``convert-reward aesthetic`` (it names its head), or a CLIPModel
    folder plus the ``head`` safetensors file. The MLP runs in float32 (0.9 M parameters).
    """
    backbone = load_clip(path, "aesthetic", processor_path, device, need_text=False, precision=precision)
    config = check_folder_kind(backbone.path, "aesthetic")
    if (head is None or str(head).strip() == "") and config is not None:
        head = str(backbone.path / config["head"])
    width = int(backbone.model.config.projection_dim)
    return AestheticReward(backbone, load_aesthetic_head(head, width, "aesthetic", str(backbone.device)), batch_size)
