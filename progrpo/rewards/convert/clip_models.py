"""Converters for the CLIP-based rewards: PickScore, HPSv2/v2.1 and the LAION aesthetic head.

* ``pickscore``: ``PickScore_v1`` is already a transformers ``CLIPModel``; its tokenizer and
  image processor live in the ``CLIP-ViT-H-14-laion2B-s32B-b79K`` folder (PickScore README), so
  the converter packages both into one folder (pickled ``pytorch_model.bin`` becomes safetensors).
* ``hpsv2``: ``HPS_v2.1_compressed.pt`` is an open_clip ViT-H-14 checkpoint (a dict with
  ``state_dict``; HPSv2 img_score.py). Its keys are renamed to ``CLIPModel``'s, the fused
  attention ``in_proj`` split into q/k/v and the projections transposed (open_clip computes
  ``x @ proj``, transformers ``Linear``: ``x @ W.T``), following open_clip's model.py.
* ``aesthetic``: the LAION improved-aesthetic-predictor ``.pth`` (an MLP state dict) with its
  CLIP backbone (a transformers CLIPModel folder, or an open_clip state dict such as ViT-L/14).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch

from ...errors import ProGRPOConfigError
from ..clip_family import AESTHETIC_HEAD_KEYS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ..reward_folder import reward_config
from . import ConvertRequest, register_converter
from .sources import check_processor, copy_processor, read_json_file, read_weights, write_image_processor, wrong_kind

#: open_clip's model config of ViT-H-14 (open_clip/model_configs/ViT-H-14.json): HPSv2 and PickScore's base.
VIT_H_14 = {"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80,
                                              "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}}
#: OpenAI ViT-L/14 as open_clip describes it (ViT-L-14.json + quick_gelu): the aesthetic head's backbone.
VIT_L_14 = {"embed_dim": 768, "quick_gelu": True,
            "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12}}
CLIP_H_PROCESSOR = "<the CLIP-ViT-H-14-laion2B-s32B-b79K folder (tokenizer + preprocessor_config.json)>"
#: open_clip residual block -> transformers CLIPEncoderLayer (in_proj is split separately).
BLOCK_NAMES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
               "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _architecture(request: ConvertRequest, default: dict[str, Any]) -> dict[str, Any]:
    return default if request.architecture is None else read_json_file(request.architecture, "--architecture")


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(key[len(prefix):].split(".")[0]) for key in state if key.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _convert_blocks(state: dict[str, torch.Tensor], source: str, target: str, out: dict[str, torch.Tensor]) -> int:
    """Move open_clip ``{source}{i}.*`` blocks into transformers ``{target}{i}.*`` keys of ``out``; return the count."""
    layers = _count_blocks(state, source)
    for index in range(layers):
        old, new = f"{source}{index}.", f"{target}{index}."
        for part in ("weight", "bias"):
            query, key, value = state.pop(f"{old}attn.in_proj_{part}").chunk(3, dim=0)
            for name, tensor in (("q_proj", query), ("k_proj", key), ("v_proj", value)):
                out[f"{new}self_attn.{name}.{part}"] = tensor.contiguous()
            for old_name, new_name in BLOCK_NAMES.items():
                out[f"{new}{new_name}.{part}"] = state.pop(f"{old}{old_name}.{part}")
    return layers


def open_clip_to_transformers(state: dict[str, torch.Tensor], file: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """open_clip ``CLIP`` state dict -> (transformers ``CLIPModel`` state dict, sizes read off the tensors).

    Follows open_clip model.py (VisionTransformer: conv1, class_embedding, positional_embedding,
    ln_pre, ln_post, proj; text: token_embedding, positional_embedding, ln_final, text_projection).
    """
    state, out = dict(state), {}
    try:
        renames = {"visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
                   "visual.class_embedding": "vision_model.embeddings.class_embedding",
                   "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
                   "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
                   "positional_embedding": "text_model.embeddings.position_embedding.weight",
                   "logit_scale": "logit_scale"}
        for old, new in renames.items():
            out[new] = state.pop(old)
        for old, new in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                         ("ln_final", "text_model.final_layer_norm")):
            for part in ("weight", "bias"):
                out[f"{new}.{part}"] = state.pop(f"{old}.{part}")
        out["visual_projection.weight"] = state.pop("visual.proj").t().contiguous()
        out["text_projection.weight"] = state.pop("text_projection").t().contiguous()
        sizes = {"vision_layers": _convert_blocks(state, "visual.transformer.resblocks.", "vision_model.encoder.layers.", out),
                 "text_layers": _convert_blocks(state, "transformer.resblocks.", "text_model.encoder.layers.", out)}
    except KeyError as error:
        raise wrong_kind("convert-reward", file, "an open_clip CLIP (ViT) checkpoint", [str(error)], sorted(state)) from None
    state.pop("attn_mask", None)
    if state:
        raise wrong_kind("convert-reward", file, "an open_clip CLIP (ViT) checkpoint this converter supports", [],
                         sorted(state))
    return out, sizes


def clip_config(out: dict[str, torch.Tensor], sizes: dict[str, int], architecture: dict[str, Any],
                token_ids: dict[str, int]) -> Any:
    """The transformers ``CLIPConfig`` of converted weights; head counts come from ``architecture``."""
    from transformers import CLIPConfig

    patch = out["vision_model.embeddings.patch_embedding.weight"]
    positions = out["vision_model.embeddings.position_embedding.weight"].shape[0]
    tokens = out["text_model.embeddings.token_embedding.weight"]
    vision_cfg, text_cfg = architecture.get("vision_cfg", {}), architecture.get("text_cfg", {})
    act = "quick_gelu" if architecture.get("quick_gelu") else "gelu"
    vision = {"hidden_size": patch.shape[0], "patch_size": patch.shape[-1], "num_hidden_layers": sizes["vision_layers"],
              "image_size": math.isqrt(positions - 1) * patch.shape[-1], "hidden_act": act,
              "intermediate_size": out["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
              "num_attention_heads": patch.shape[0] // int(vision_cfg.get("head_width", 64))}
    text = {"hidden_size": tokens.shape[1], "vocab_size": tokens.shape[0], "num_hidden_layers": sizes["text_layers"],
            "max_position_embeddings": out["text_model.embeddings.position_embedding.weight"].shape[0],
            "intermediate_size": out["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0], "hidden_act": act,
            "num_attention_heads": int(text_cfg.get("heads", 8)), **token_ids}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=out["visual_projection.weight"].shape[0])


def check_clip_weights(config: Any, state: dict[str, torch.Tensor], file: Path, what: str) -> None:
    """Every tensor of ``state`` must be one of ``CLIPModel(config)``'s with the same shape (built on the meta device)."""
    from transformers import CLIPModel

    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in CLIPModel(config).state_dict().items()
                    if not name.endswith("position_ids")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(name for name in set(expected) & set(state) if tuple(state[name].shape) != expected[name])
    if missing or unexpected or wrong:
        hint = f" wrong shapes for {wrong[:4]} (check --architecture);" if wrong else ""
        raise ProGRPOConfigError(f"{what}: '{file}' does not fit a CLIP model:{hint} missing {missing[:4]}, "
                                 f"unexpected {unexpected[:4]}; check that the file and the KIND match.")


def save_clip(work: Path, config: Any, state: dict[str, torch.Tensor]) -> None:
    """Write ``config.json`` and ``model.safetensors`` (loadable by ``CLIPModel.from_pretrained``)."""
    from safetensors.torch import save_file

    config.save_pretrained(str(work))
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(work / "model.safetensors"),
              metadata={"format": "pt"})


def _token_ids(processor: Path | None) -> dict[str, int]:
    """bos/eos/pad ids of the tokenizer in ``processor`` (transformers pools the text at the first eos)."""
    if processor is None:
        return {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}  # OpenAI CLIP BPE
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(processor), local_files_only=True)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    return {name: int(value) for name, value in ids.items() if value is not None}


def _convert_open_clip(file: Path, work: Path, architecture: dict[str, Any], processor: Path | None, what: str) -> Any:
    """open_clip checkpoint ``file`` -> CLIPModel files in ``work``; returns the config."""
    out, sizes = open_clip_to_transformers(read_weights(file, what), file)
    config = clip_config(out, sizes, architecture, _token_ids(processor))
    check_clip_weights(config, out, file, what)
    save_clip(work, config, out)
    return config


def _processor_files(processor: Path, work: Path, image_size: int) -> list[str]:
    copied = copy_processor(processor, work)
    if "preprocessor_config.json" not in copied and "processor_config.json" not in copied:
        write_image_processor(work, image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return copied


@register_converter("hpsv2")
def convert_hpsv2(request: ConvertRequest, work: Path) -> dict[str, Any]:
    """HPS_v2.1_compressed.pt (open_clip ViT-H-14) + the CLIP-H processor folder -> CLIPModel folder."""
    what = "convert-reward hpsv2"
    processor = check_processor(request.processor, what, CLIP_H_PROCESSOR)
    config = _convert_open_clip(request.source, work, _architecture(request, VIT_H_14), processor, what)
    _processor_files(processor, work, int(config.vision_config.image_size))
    return reward_config("hpsv2", request.source, score="cos(image, text) (HPSv2 img_score.py)")


@register_converter("pickscore")
def convert_pickscore(request: ConvertRequest, work: Path) -> dict[str, Any]:
    """PickScore_v1 folder (+ the CLIP-H processor folder, unless it holds its own) -> one folder."""
    what = "convert-reward pickscore"
    processor = check_processor(request.processor or request.source, what, CLIP_H_PROCESSOR)
    _copy_clip_folder(request.source, work, what)
    copy_processor(processor, work)
    return reward_config("pickscore", request.source, score="logit_scale.exp() * cos(image, text) (PickScore README)")


def _read_head(file: Path) -> dict[str, torch.Tensor]:
    """The LAION MLP state dict in ``file`` (keys checked)."""
    what = "convert-reward aesthetic"
    head = read_weights(file, what)
    missing = [k for k in AESTHETIC_HEAD_KEYS if k not in head]
    unexpected = sorted(set(head) - set(AESTHETIC_HEAD_KEYS))
    if missing or unexpected:
        raise wrong_kind(what, file, "a LAION aesthetic MLP head (keys layers.{0,2,4,6,7}.*)", missing, unexpected)
    return head


@register_converter("aesthetic")
def convert_aesthetic(request: ConvertRequest, work: Path) -> dict[str, Any]:
    """LAION aesthetic ``.pth`` head + its CLIP backbone (--backbone) -> one folder."""
    from safetensors.torch import save_file

    what = "convert-reward aesthetic"
    backbone = request.backbone
    if backbone is None or not backbone.exists():
        raise ProGRPOConfigError(f"{what}: --backbone '{backbone}' does not exist; give the head's CLIP model: a "
                                 "transformers folder (openai/clip-vit-large-patch14) or an open_clip ViT-L-14 file.")
    head = _read_head(request.source)  # a wrong or damaged head fails before the backbone is converted
    if backbone.is_dir():
        _copy_clip_folder(backbone, work, what)
    else:
        config = _convert_open_clip(backbone, work, _architecture(request, VIT_L_14), None, what)
        write_image_processor(work, int(config.vision_config.image_size), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    width = int(read_json_file(work / "config.json", what).get("projection_dim", 0))
    if head["layers.0.weight"].shape[1] != width:
        raise ProGRPOConfigError(f"{what}: head '{request.source}' takes {head['layers.0.weight'].shape[1]}-dim "
                                 f"embeddings but the backbone gives {width}; use the backbone the head was trained "
                                 "on (CLIP ViT-L/14).")
    save_file({k: v.float().contiguous() for k, v in head.items()}, str(work / "aesthetic_head.safetensors"))
    return reward_config("aesthetic", request.source, head="aesthetic_head.safetensors", backbone=backbone.name,
                         score="LAION MLP on the L2-normalised CLIP image embedding (simple_inference.py)")


def _copy_clip_folder(folder: Path, work: Path, what: str) -> Any:
    """A transformers CLIPModel folder (safetensors or pickled weights) written into ``work`` as config +
    safetensors, with its image processor config (a default one when it has none); returns the config."""
    from transformers import CLIPConfig

    config_file = folder / "config.json"
    if not folder.is_dir() or not config_file.is_file():
        raise ProGRPOConfigError(f"{what}: '{folder}' is not a transformers CLIP folder (no config.json); give the "
                                 "folder with config.json + model.safetensors (or pytorch_model.bin).")
    if read_json_file(config_file, what).get("model_type") != "clip":
        raise ProGRPOConfigError(f"{what}: '{config_file}' is not a CLIP model config (model_type 'clip'); give the "
                                 "right folder for this KIND.")
    config = CLIPConfig.from_pretrained(str(folder), local_files_only=True)
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise ProGRPOConfigError(f"{what}: '{folder}' has no model.safetensors or pytorch_model.bin; give the "
                                 "complete model folder.")
    state = {k: v for k, v in read_weights(weights, what).items() if not k.endswith("position_ids")}
    check_clip_weights(config, state, weights, what)
    save_clip(work, config, state)
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, work / name)
            return config
    write_image_processor(work, int(config.vision_config.image_size), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return config
