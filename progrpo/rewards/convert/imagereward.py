"""Converter for ImageReward: ``ImageReward.pt`` (+ bert-base-uncased tokenizer) -> safetensors folder.

The released checkpoint is the state dict of ``ImageReward.ImageReward``: ``blip.visual_encoder.*``
(BLIP's timm-style ViT), ``blip.text_encoder.*`` (BLIP med.py BertModel with cross-attention),
``mlp.layers.*``, plus BLIP pre-training projections ImageReward never uses. Keys are renamed
to transformers' ``BlipVisionModel`` / ``BlipTextModel`` ones as transformers'
``convert_blip_original_pytorch_to_hf.py`` does; the tokenizer gets ImageReward's extra tokens
(``[DEC]`` as bos, ``[ENC]``; BLIP blip.py ``init_tokenizer``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import ProGRPOConfigError
from ..clip_family import AESTHETIC_HEAD_KEYS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ..imagereward import IMAGEREWARD_MAX_LENGTH, IMAGEREWARD_MEAN, IMAGEREWARD_STD, ImageRewardModel
from ..reward_folder import reward_config
from . import ConvertRequest, register_converter
from .sources import check_processor, read_json_file, read_weights, write_image_processor, wrong_kind

#: ImageReward v1.0: BLIP ViT-L/16 at 224 px (blip.py ``create_vit('large')``: 16 heads, LayerNorm eps 1e-6)
#: and med_config.json (BERT-base, 12 heads, eps 1e-12). Only what the weights cannot tell is listed.
IMAGEREWARD_ARCHITECTURE = {"vision_heads": 16, "vision_layer_norm_eps": 1e-6, "text_heads": 12,
                            "text_layer_norm_eps": 1e-12, "mean": IMAGEREWARD_MEAN, "std": IMAGEREWARD_STD}
BERT_PROCESSOR = "<the bert-base-uncased folder (vocab.txt or tokenizer.json)>"
#: BLIP ViT key fragments -> transformers BlipVisionModel (convert_blip_original_pytorch_to_hf.py rename_key).
VISION_RENAMES = (("blip.visual_encoder.patch_embed.proj", "vision_model.embeddings.patch_embedding"),
                  ("blip.visual_encoder.pos_embed", "vision_model.embeddings.position_embedding"),
                  ("blip.visual_encoder.cls_token", "vision_model.embeddings.class_embedding"),
                  ("blip.visual_encoder.norm.", "vision_model.post_layernorm."),
                  ("blip.visual_encoder.blocks.", "vision_model.encoder.layers."),
                  (".attn.proj.", ".self_attn.projection."), (".attn.qkv.", ".self_attn.qkv."),
                  (".norm1.", ".layer_norm1."), (".norm2.", ".layer_norm2."))
#: BLIP pre-training parts that ImageReward's score never uses.
UNUSED_PREFIXES = ("blip.vision_proj.", "blip.text_proj.", "blip.itm_head.", "blip.text_encoder.embeddings.position_ids")


def rename_imagereward_key(key: str) -> str | None:
    """Released key -> converted key (None: not used by the score; unchanged: not ImageReward's)."""
    if key.startswith(UNUSED_PREFIXES):
        return None
    if key.startswith("mlp.layers."):
        return "head." + key.removeprefix("mlp.")
    if key.startswith("blip.text_encoder."):
        return "text_model." + key.removeprefix("blip.text_encoder.")
    if key.startswith("blip.visual_encoder."):
        for old, new in VISION_RENAMES:
            key = key.replace(old, new)
    return key


def _configs(state: dict[str, torch.Tensor], architecture: dict[str, Any], vocab_size: int) -> tuple[dict, dict]:
    """BlipVisionConfig / BlipTextConfig keyword dicts read off the converted tensors."""
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    positions = state["vision_model.embeddings.position_embedding"].shape[1]
    count = len({k.split(".")[3] for k in state if k.startswith("vision_model.encoder.layers.")})
    vision = {"hidden_size": patch.shape[0], "patch_size": patch.shape[-1], "num_hidden_layers": count,
              "image_size": int((positions - 1) ** 0.5) * patch.shape[-1],
              "intermediate_size": state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
              "num_attention_heads": int(architecture["vision_heads"]), "hidden_act": "gelu",
              "layer_norm_eps": float(architecture["vision_layer_norm_eps"])}
    words = state["text_model.embeddings.word_embeddings.weight"]
    if words.shape[0] != vocab_size:
        raise ProGRPOConfigError(
            f"convert-reward imagereward: the tokenizer has {vocab_size} tokens with [DEC] and [ENC] but the text "
            f"encoder {words.shape[0]}; pass --processor {BERT_PROCESSOR}."
        )
    text = {"vocab_size": words.shape[0], "hidden_size": words.shape[1], "encoder_hidden_size": patch.shape[0],
            "num_hidden_layers": len({k.split(".")[3] for k in state if k.startswith("text_model.encoder.layer.")}),
            "intermediate_size": state["text_model.encoder.layer.0.intermediate.dense.weight"].shape[0],
            "max_position_embeddings": state["text_model.embeddings.position_embeddings.weight"].shape[0],
            "num_attention_heads": int(architecture["text_heads"]), "hidden_act": "gelu",
            "layer_norm_eps": float(architecture["text_layer_norm_eps"]), "pad_token_id": 0}
    return vision, text


def _check(vision: dict, text: dict, state: dict[str, torch.Tensor], file: Path) -> None:
    """Every tensor must fit ``ImageRewardModel(vision, text)`` (built on the meta device)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in ImageRewardModel(vision, text).state_dict().items()
                    if not k.endswith("position_ids")}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise wrong_kind("convert-reward imagereward", file, f"an ImageReward checkpoint (wrong shapes {wrong[:3]})",
                         missing, unexpected)


def _tokenizer(processor: Path, work: Path) -> int:
    """Save bert-base-uncased plus ImageReward's [DEC]/[ENC] tokens into ``work``; return its size."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(processor), local_files_only=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.save_pretrained(str(work))
    return len(tokenizer)


@register_converter("imagereward")
def convert_imagereward(request: ConvertRequest, work: Path) -> dict[str, Any]:
    """ImageReward.pt + bert-base-uncased tokenizer folder -> safetensors + config + tokenizer."""
    from safetensors.torch import save_file

    what = "convert-reward imagereward"
    architecture = dict(IMAGEREWARD_ARCHITECTURE)
    if request.architecture is not None:
        architecture.update(read_json_file(request.architecture, "--architecture"))
    released = read_weights(request.source, what)
    if not any(k.startswith("blip.text_encoder.") for k in released) or not all(k in released for k in
                                                                                  ("mlp." + h for h in AESTHETIC_HEAD_KEYS)):
        raise wrong_kind(what, request.source, "an ImageReward checkpoint (blip.* and mlp.layers.* keys)",
                         ["blip.text_encoder.*", "mlp.layers.*"], sorted(released)[:4])
    state = {new: tensor for key, tensor in released.items() if (new := rename_imagereward_key(key)) is not None}
    processor = check_processor(request.processor, what, BERT_PROCESSOR)
    vision, text = _configs(state, architecture, _tokenizer(processor, work))
    _check(vision, text, state, request.source)
    save_file({k: v.contiguous() for k, v in state.items()}, str(work / "model.safetensors"), metadata={"format": "pt"})
    write_image_processor(work, int(vision["image_size"]), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return reward_config("imagereward", request.source, vision_config=vision, text_config=text,
                         mean=float(architecture["mean"]), std=float(architecture["std"]),
                         max_length=IMAGEREWARD_MAX_LENGTH, score="(mlp(cls) - mean) / std (ImageReward.score)")
