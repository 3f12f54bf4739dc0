"""Tiny random reward models built with the reference implementations' own code, saved in the
released file layouts, for the convert-reward tests (no download: every model and tokenizer is
built here).

* HPSv2.1 / aesthetic backbone: ``open_clip.model.CLIP`` (open-clip-torch), the real CLIP BPE
  shipped inside open_clip turned into ``vocab.json`` + ``merges.txt`` (the released HPSv2.1 tokenizer layout);
* PickScore: transformers ``CLIPModel`` + ``CLIPProcessor`` (PickScore's README scores with them);
* ImageReward: the ``image-reward`` package's own ``VisionTransformer``, ``BertModel`` (med.py),
  ``MLP`` and ``ImageReward.score`` code, imported module by module (its package ``__init__``
  imports the training code: datasets, diffusers, openai ``clip``), with the few shims
  transformers 5 needs (helpers moved or removed since 4.x) and a word-level BERT vocabulary.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

#: a tiny open_clip model config (open_clip model_configs/*.json format): also the --architecture file.
TINY_OPEN_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                                                  "patch_size": 8},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}
PROMPTS = ["a photo of a red cat", "a blue car on a street", "a photo of a red cat", "an astronaut riding a horse"]
WORDS = ["a", "photo", "of", "red", "cat", "blue", "car", "on", "street", "an", "astronaut", "riding", "horse"]


def sample_images(count: int = 4, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, list[Image.Image]]:
    """Random uint8 RGB images: as a float [B,3,H,W] tensor in [0,1] and as PIL images (same pixels)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return tensor, [Image.fromarray(image) for image in pixels]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode table (open_clip tokenizer.py ``bytes_to_unicode``)."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    codes, extra = list(visible), 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(visible, map(chr, codes)))


def write_clip_processor(folder: Path, image_size: int = 32) -> Path:
    """A CLIP-ViT-H-14-like processor folder: the real CLIP BPE from open_clip as vocab.json +
    merges.txt, a tokenizer_config and a CLIPImageProcessor config at ``image_size``."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as stream:
        merges = stream.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size}, "do_resize": True, "do_center_crop": True,
        "resample": 3, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return folder


def tiny_open_clip(seed: int, quick_gelu: bool = False) -> Any:
    """A random tiny ``open_clip.model.CLIP`` (ViT towers), eval mode."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(TINY_OPEN_CLIP["embed_dim"], TINY_OPEN_CLIP["vision_cfg"], TINY_OPEN_CLIP["text_cfg"],
                 quick_gelu=quick_gelu).eval()
    with torch.no_grad():  # open_clip starts with zero-ish projections; make every tensor matter
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def open_clip_features(model: Any, images: list[Image.Image], prompts: list[str] | None) -> tuple[torch.Tensor, ...]:
    """open_clip's eval transform + ``encode_image``/``encode_text`` with normalize=True (HPSv2 img_score.py)."""
    import open_clip

    preprocess = open_clip.image_transform(TINY_OPEN_CLIP["vision_cfg"]["image_size"], is_train=False)
    with torch.no_grad():
        image = model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True)
        text = None if prompts is None else model.encode_text(open_clip.tokenize(prompts), normalize=True)
    return image, text


def tiny_pickscore_folder(folder: Path, seed: int = 5) -> Any:
    """A random CLIPModel saved as PickScore_v1 is released (config + weights, no tokenizer); returns it."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "gelu", "bos_token_id": 49406,
            "eos_token_id": 49407, "pad_token_id": 49407}
    vision = {"hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8, "hidden_act": "gelu"}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(str(folder))
    return model


# --------------------------------------------------------------------------- ImageReward


def import_imagereward() -> dict[str, Any]:
    """ImageReward's ``ImageReward``/``MLP``/``_transform``, ``VisionTransformer``, ``BertConfig``/``BertModel``
    and ``AestheticScore``, imported without the package ``__init__`` and shimmed for transformers 5."""
    from transformers import modeling_utils, pytorch_utils

    sys.modules.setdefault("clip", types.ModuleType("clip"))  # AestheticScore.py imports openai CLIP's loader
    for name in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint", "fairscale.nn.checkpoint.checkpoint_activations"):
        sys.modules.setdefault(name, types.ModuleType(name))  # vit.py: gradient checkpointing only
    sys.modules["fairscale.nn.checkpoint.checkpoint_activations"].checkpoint_wrapper = lambda module, **_: module
    for name in ("apply_chunking_to_forward", "prune_linear_layer"):  # moved to pytorch_utils in transformers 5
        if not hasattr(modeling_utils, name):
            setattr(modeling_utils, name, getattr(pytorch_utils, name))
    if not hasattr(modeling_utils, "find_pruneable_heads_and_indices"):
        modeling_utils.find_pruneable_heads_and_indices = lambda *args: None  # head pruning only
    existing = sys.modules.get("ImageReward")
    base = (existing.__path__[0] if hasattr(existing, "__path__")
            else importlib.util.find_spec("ImageReward").submodule_search_locations[0])
    for name, path in (("ImageReward", base), ("ImageReward.models", f"{base}/models")):
        if not hasattr(sys.modules.get(name), "__path__"):
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
    from ImageReward.ImageReward import MLP, ImageReward, _transform
    from ImageReward.models.AestheticScore import AestheticScore
    from ImageReward.models.BLIP import med
    from ImageReward.models.BLIP.vit import VisionTransformer

    _shim_med(med)
    return {"ImageReward": ImageReward, "MLP": MLP, "transform": _transform, "VisionTransformer": VisionTransformer,
            "med": med, "AestheticScore": AestheticScore}


def has_imagereward() -> bool:
    """Whether the image-reward package is installed (found without running its ``__init__``)."""
    return "ImageReward" in sys.modules or importlib.util.find_spec("ImageReward") is not None


def _shim_med(med: Any) -> None:
    """transformers 5 dropped ``invert_attention_mask``/``get_head_mask`` from PreTrainedModel and
    changed ``init_weights``; these are the 4.x definitions (modeling_utils.ModuleUtilsMixin)."""

    def invert_attention_mask(self: Any, mask: torch.Tensor) -> torch.Tensor:
        mask = mask[:, None, None, :].to(self.dtype)
        return (1.0 - mask) * torch.finfo(self.dtype).min

    med.BertModel.invert_attention_mask = invert_attention_mask
    med.BertModel.get_head_mask = lambda self, head_mask, layers: [None] * layers
    med.BertPreTrainedModel.init_weights = lambda self: None  # weights are randomised by the caller


def write_bert_processor(folder: Path) -> Path:
    """A bert-base-uncased-like tokenizer folder (vocab.txt of special tokens and :data:`WORDS`)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                                                              "model_max_length": 512}))
    return folder


def tiny_imagereward(processor: Path, seed: int) -> Any:
    """A random tiny ``ImageReward.ImageReward`` built from the package's own modules (ViT 32 px /16,
    2 layers, width 32; BERT 2 layers, width 24) with BLIP's tokenizer set-up (blip.py init_tokenizer)."""
    from transformers import BertTokenizer

    modules = import_imagereward()
    tokenizer = BertTokenizer.from_pretrained(str(processor), local_files_only=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    torch.manual_seed(seed)
    config = modules["med"].BertConfig(vocab_size=len(tokenizer), hidden_size=24, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=40, max_position_embeddings=64,
                                       add_cross_attention=True, layer_norm_eps=1e-12)
    config.encoder_width = 32
    model = modules["ImageReward"].__new__(modules["ImageReward"])
    torch.nn.Module.__init__(model)
    model.device = "cpu"
    model.blip = torch.nn.Module()
    model.blip.visual_encoder = modules["VisionTransformer"](img_size=32, patch_size=16, embed_dim=32, depth=2,
                                                             num_heads=2)
    model.blip.tokenizer = tokenizer
    model.blip.text_encoder = modules["med"].BertModel(config=config, add_pooling_layer=False)
    model.blip.vision_proj, model.blip.text_proj = torch.nn.Linear(32, 8), torch.nn.Linear(24, 8)  # BLIP_Pretrain's
    model.preprocess = modules["transform"](32)
    model.mlp = modules["MLP"](24)
    model.mean, model.std = 0.16717362830052426, 1.0333394966054072
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.add_(torch.randn_like(parameter) * (0.1 if "mlp" in name else 0.05))
    return model.eval()
