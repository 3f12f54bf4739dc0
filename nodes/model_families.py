"""Model families ComfyUI runs, as the training and sampling nodes need to know them (issue 13).

A family is recognised from the MODEL's ComfyUI config class (``comfy.supported_models``: what the
stock loaders detected), walking its class hierarchy so derivatives (SSD-1B, Segmind Vega: SDXL)
find their base. Each family says:

* which layers the LoRA presets train: ``attention`` (the attention projections, including Flux's
  single-stream ``linear1`` / ``linear2``, which fuse the attention input and output with the MLP,
  and SD3.5's second attention ``attn2``), ``attention+mlp`` (plus the feed-forward layers) and
  ``all linear`` (every Linear layer of the diffusion model). Names are exact module-path suffixes
  as ComfyUI builds the model (``comfy/ldm/...``);
* whether it is guidance-distilled (Flux.1-dev, Flux.2: the guidance value enters as an input of the
  model through the conditioning, as the stock FluxGuidance node sets it, and CFG stays 1);
* whether it is step-distilled for CFG 1 (Flux.1-schnell).

``auto`` dynamics sample flow families with ``flow_sde`` (Flow-GRPO's SDE) and noise-prediction
families with ``ddim`` (DDPO / DanceGRPO's dynamic on SD).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from progrpo.errors import ProGRPOConfigError

logger = logging.getLogger("progrpo")

#: the LoRA target presets, in the order the node lists them; "custom" takes the custom_targets text
LORA_PRESETS = ("attention", "attention+mlp", "all linear", "custom")
#: the target that matches every Linear layer of the diffusion model
ALL_LINEAR = "*"
AUTO_DYNAMICS = "auto"


@dataclass(frozen=True)
class ModelFamily:
    """What the nodes need to know about one family (module doc).

    Attributes:
        name: as the README table and messages name it.
        config_classes: ``comfy.supported_models`` class names that belong to it.
        attention: module-path suffixes of the attention projections.
        mlp: module-path suffixes of the feed-forward layers.
        guidance_distilled: takes a ``guidance`` value through the conditioning; CFG 1.
        cfg_distilled: trained for CFG 1 without a guidance input (timestep-distilled).
    """

    name: str
    config_classes: tuple[str, ...]
    attention: tuple[str, ...]
    mlp: tuple[str, ...] = ()
    guidance_distilled: bool = False
    cfg_distilled: bool = False

    def targets(self, preset: str) -> tuple[str, ...]:
        """The module-path suffixes a LoRA preset trains on this family."""
        if preset == "attention":
            return self.attention
        if preset == "attention+mlp":
            return self.attention + self.mlp
        if preset == "all linear":
            return (ALL_LINEAR,)
        raise ProGRPOConfigError(f"lora_targets: {preset!r} is not a preset; use one of {list(LORA_PRESETS)}.")


_UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
_UNET_MLP = ("ff.net.0.proj", "ff.net.2")
_FLUX_ATTENTION = ("img_attn.qkv", "img_attn.proj", "txt_attn.qkv", "txt_attn.proj", "linear1", "linear2")
_FLUX_MLP = ("img_mlp.0", "img_mlp.2", "txt_mlp.0", "txt_mlp.2")

FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily("SD1.x/SD2.x", ("SD15", "SD20"), _UNET_ATTENTION, _UNET_MLP),
    ModelFamily("SDXL", ("SDXL", "SDXLRefiner"), _UNET_ATTENTION, _UNET_MLP),
    ModelFamily("SD3/SD3.5", ("SD3",), ("attn.qkv", "attn.proj", "attn2.qkv", "attn2.proj"), ("mlp.fc1", "mlp.fc2")),
    ModelFamily("Flux.1-schnell", ("FluxSchnell",), _FLUX_ATTENTION, _FLUX_MLP, cfg_distilled=True),
    ModelFamily("Flux.2", ("Flux2",), _FLUX_ATTENTION, _FLUX_MLP, guidance_distilled=True),
    ModelFamily("Chroma", ("Chroma",), _FLUX_ATTENTION, _FLUX_MLP),
    ModelFamily("Flux.1-dev", ("Flux",), _FLUX_ATTENTION, _FLUX_MLP, guidance_distilled=True),
    ModelFamily("HiDream", ("HiDream",),
                ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out", "attn1.to_q_t", "attn1.to_k_t",
                 "attn1.to_v_t", "attn1.to_out_t"),
                ("w1", "w2", "w3")),
    ModelFamily("Qwen-Image", ("QwenImage",),
                ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                 "attn.add_v_proj", "attn.to_add_out"),
                ("img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2")),
    ModelFamily("Z-Image", ("ZImage",), ("attention.qkv", "attention.out"),
                ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")),
    ModelFamily("Lumina2", ("Lumina2",), ("attention.qkv", "attention.out"),
                ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")),
)
_BY_CONFIG: Mapping[str, ModelFamily] = {name: family for family in FAMILIES for name in family.config_classes}

#: families ComfyUI runs that have no entry above: every family's attention names (exact suffixes) but
#: Flux's bare ``linear1`` / ``linear2``, which other architectures use for MLPs
OTHER = ModelFamily(
    "other", (),
    tuple(dict.fromkeys(name for family in FAMILIES for name in family.attention if name not in ("linear1", "linear2"))),
)


def config_class_name(model: Any) -> str:
    """The ``comfy.supported_models`` class name of a MODEL (ModelPatcher), or "" when it has none."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return "" if config is None else type(config).__name__


def family_of(model: Any) -> ModelFamily:
    """The family of a MODEL (ModelPatcher): its config class or the nearest registered base class."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    for klass in type(config).__mro__ if config is not None else ():
        family = _BY_CONFIG.get(klass.__name__)
        if family is not None:
            return family
    return OTHER


def parse_targets(text: str) -> tuple[str, ...]:
    """Custom LoRA targets: module-path suffixes separated by commas, spaces or new lines."""
    targets = tuple(dict.fromkeys(part for part in re.split(r"[\s,]+", text or "") if part))
    if not targets:
        raise ProGRPOConfigError(
            "custom_targets: empty while lora_targets is custom; list module-path suffixes such as "
            "'to_q, to_k, to_v, to_out.0' (or '*' for every Linear layer), or pick a preset."
        )
    return targets


def preset_targets(model: Any, preset: str, custom_targets: str = "") -> tuple[str, ...]:
    """The module-path suffixes a LoRA trains: the MODEL family's ``preset``, or the parsed custom list."""
    if preset == "custom":
        return parse_targets(custom_targets)
    return family_of(model).targets(preset)


def resolve_dynamics(name: str, schedule_kind: str) -> str:
    """``auto``: ``flow_sde`` on flow models (Flow-GRPO), ``ddim`` on noise-prediction models (DDPO); else ``name``."""
    if name != AUTO_DYNAMICS:
        return name
    return "flow_sde" if schedule_kind == "flow" else "ddim"


def settings_warnings(model: Any, cfg: float, has_negative: bool) -> list[str]:
    """Sampling settings that make no sense for the MODEL's family, as messages (logged by the nodes)."""
    family = family_of(model)
    warnings = []
    if cfg > 1.0 and (family.guidance_distilled or family.cfg_distilled):
        how = ("takes its guidance strength from the guidance input (as FluxGuidance sets it)"
               if family.guidance_distilled else "was distilled to sample without classifier-free guidance")
        warnings.append(
            f"cfg={cfg:g} on {family.name}: this model {how}; cfg > 1 adds a negative branch it was not trained "
            f"with{'' if has_negative else ' (and no negative is connected)'} and doubles the cost. Use cfg 1."
        )
    return warnings


def log_warnings(model: Any, cfg: float, has_negative: bool) -> list[str]:
    """:func:`settings_warnings`, each logged as a warning; returns them."""
    warnings = settings_warnings(model, cfg, has_negative)
    for message in warnings:
        logger.warning(message)
    return warnings
