"""LoRA hyperparameters and the default target modules of each supported network class.

The LoRA update of a targeted ``nn.Linear`` with weight ``W`` [out, in] is
``W + (alpha / rank) * B @ A`` with ``A`` [rank, in] (peft ``lora_A``, kohya ``lora_down``) and
``B`` [out, rank] (peft ``lora_B``, kohya ``lora_up``). ``B`` starts at zero, so an injected
network starts exactly at the base model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ProGRPOConfigError

#: the attention projections of an MMDiT block (SD3 joint blocks, Flux double blocks).
_MMDIT_ATTENTION = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)

#: network class name -> peft ``target_modules`` entries trained by default. peft matches an entry
#: against a module path when the path equals it or ends with ``"." + entry``.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    # SD1.x / SDXL: the q/k/v/out projections of every self- (attn1) and cross- (attn2) attention,
    # as DDPO trains them. These are the names ComfyUI maps from kohya ``lora_unet_*`` keys.
    "UNet2DConditionModel": ("to_q", "to_k", "to_v", "to_out.0"),
    # SD3 / SD3.5: the 8 joint-attention projections Flow-GRPO trains. The "attn." prefix keeps
    # SD3.5-M's extra ``attn2`` self-attention out, matching Flow-GRPO's target list.
    "SD3Transformer2DModel": _MMDIT_ATTENTION,
    # Flux: the same projections in the double-stream blocks; single-stream blocks only have
    # attn.to_q/k/v (their output is ``proj_out``, shared with the MLP). ComfyUI maps every one of
    # them, the single-block q/k/v as slices of ``linear1``.
    "FluxTransformer2DModel": _MMDIT_ATTENTION,
}


def network_class_name(network: torch.nn.Module) -> str:
    """Class name of ``network``, looking through a ``torch.compile`` wrapper."""
    return type(getattr(network, "_orig_mod", network)).__name__


@dataclass(frozen=True)
class LoraSettings:
    """Hyperparameters of the trained LoRA.

    Attributes:
        rank: inner dimension ``r`` of every LoRA pair (>= 1).
        alpha: peft ``lora_alpha``; the update is scaled by ``alpha / rank`` (> 0). Exported files
            carry it as the ``.alpha`` tensors, so ComfyUI applies the same scale.
        dropout: dropout on the LoRA branch input during training, in [0, 1).
        target_modules: peft target entries (module path suffixes such as ``"to_q"`` or
            ``"attn.to_out.0"``); ``None`` uses ``DEFAULT_TARGETS`` of the network class.
        init_seed: seed of the random ``lora_A`` initialisation (drawn under a forked RNG so the
            global torch RNG is untouched); ``None`` draws from the global RNG.
    """

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    init_seed: int | None = 0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ProGRPOConfigError(f"LoraSettings.rank must be an integer >= 1, got {self.rank!r}; use e.g. rank=4.",
                                     field="lora.rank")
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ProGRPOConfigError(
                f"LoraSettings.alpha must be a finite number > 0, got {self.alpha!r}; use e.g. alpha=rank.",
                field="lora.alpha",
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ProGRPOConfigError(
                f"LoraSettings.dropout must be in [0, 1), got {self.dropout!r}; use 0.0 to disable it.",
                field="lora.dropout",
            )
        if self.init_seed is not None and (isinstance(self.init_seed, bool) or not isinstance(self.init_seed, int)):
            raise ProGRPOConfigError(f"LoraSettings.init_seed must be an integer or None, got {self.init_seed!r}.",
                                     field="lora.init_seed")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))
        if self.target_modules is not None:
            targets = (self.target_modules,) if isinstance(self.target_modules, str) else tuple(self.target_modules)
            if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
                raise ProGRPOConfigError(
                    f"LoraSettings.target_modules must be a non-empty list of module names, got "
                    f"{self.target_modules!r}; use None for the architecture's defaults.",
                    field="lora.target_modules",
                )
            object.__setattr__(self, "target_modules", targets)

    @property
    def scale(self) -> float:
        """The LoRA scale ``alpha / rank`` peft applies to ``B @ A``."""
        return self.alpha / self.rank

    def resolve_targets(self, network: torch.nn.Module) -> tuple[str, ...]:
        """The target entries for ``network``: the explicit ones, else its class's defaults."""
        if self.target_modules is not None:
            return self.target_modules
        name = network_class_name(network)
        if name not in DEFAULT_TARGETS:
            raise ProGRPOConfigError(
                f"LoraSettings.target_modules is None but there are no default targets for network class "
                f"{name!r} (known: {sorted(DEFAULT_TARGETS)}); pass target_modules explicitly.",
                field="lora.target_modules",
            )
        return DEFAULT_TARGETS[name]
