"""Inject, toggle, read and write the trained LoRA of a diffusers network through peft.

The route is diffusers' ``network.add_adapter(LoraConfig(...))`` (``PeftAdapterMixin`` on
``UNet2DConditionModel``, ``SD3Transformer2DModel``, ``FluxTransformer2DModel``...): the network
keeps its class and forward signature, and ``disable_adapters()`` gives the frozen reference
policy of the KL term without a second copy of the model.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from ..errors import ProGRPOConfigError
from ..log import logger
from .config import LoraSettings, network_class_name

#: layer types the exporters and ``apply_comfyui_lora`` know how to write and merge.
SUPPORTED_LAYERS: tuple[type[torch.nn.Module], ...] = (torch.nn.Linear, torch.nn.Conv2d)

DEFAULT_ADAPTER = "progrpo"


def _matches(module_name: str, target: str) -> bool:
    # peft's rule for a list of targets: the full path, or a suffix starting at a "." boundary.
    return module_name == target or module_name.endswith("." + target)


def _short_name(module_name: str) -> str:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0`` -> ``attn1.to_out.0``."""
    parts = module_name.split(".")
    numeric = [i for i, part in enumerate(parts[:-1]) if part.isdigit()]
    return ".".join(parts[numeric[-1] + 1 :]) if numeric else module_name


def available_linear_names(network: torch.nn.Module, limit: int = 40) -> list[str]:
    """Distinct short names (path after the last block index) of the Linear modules of ``network``."""
    names = sorted({_short_name(n) for n, m in network.named_modules() if isinstance(m, torch.nn.Linear)})
    return names[:limit]


def find_target_modules(network: torch.nn.Module, targets: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """Modules of ``network`` that the peft ``targets`` select, by path (model order).

    Raises ``ProGRPOConfigError`` when a target selects nothing (a typo, or a name of another
    architecture) or selects a layer type the exporters cannot write.
    """
    matched: dict[str, torch.nn.Module] = {}
    unmatched = []
    for target in targets:
        hits = {name: m for name, m in network.named_modules() if name and _matches(name, target)}
        if not hits:
            unmatched.append(target)
        matched.update(hits)
    if unmatched:
        raise ProGRPOConfigError(
            f"LoraSettings.target_modules entries {unmatched} match no module of "
            f"{network_class_name(network)}; use names of its Linear layers, e.g. "
            f"{available_linear_names(network)}, or target_modules=None for the defaults.",
            field="lora.target_modules",
        )
    wrong = {name: type(m).__name__ for name, m in matched.items() if not isinstance(m, SUPPORTED_LAYERS)}
    if wrong:
        raise ProGRPOConfigError(
            f"LoraSettings.target_modules select modules that are not Linear/Conv2d layers: "
            f"{dict(list(wrong.items())[:8])}; target their projections instead, e.g. "
            f"{available_linear_names(network, 12)}.",
            field="lora.target_modules",
        )
    return {name: matched[name] for name, _ in network.named_modules() if name in matched}


def has_adapter(network: torch.nn.Module, adapter_name: str = DEFAULT_ADAPTER) -> bool:
    """Whether peft adapter ``adapter_name`` is injected into ``network``."""
    return bool(getattr(network, "_hf_peft_config_loaded", False)) and adapter_name in getattr(
        network, "peft_config", {}
    )


def _require_adapter(network: torch.nn.Module, adapter_name: str) -> None:
    if not has_adapter(network, adapter_name):
        present = sorted(getattr(network, "peft_config", {}) or {})
        raise ProGRPOConfigError(
            f"network {network_class_name(network)} has no LoRA adapter {adapter_name!r} (adapters: {present}); "
            f"call progrpo.lora.add_lora(network, settings, adapter_name={adapter_name!r}) first."
        )


def _is_lora_parameter(name: str, adapter_name: str) -> bool:
    # peft names adapter weights "<module>.lora_A.<adapter>.weight" / "<module>.lora_B.<adapter>.weight".
    return re.search(rf"\.lora_[AB]\.{re.escape(adapter_name)}\.", name) is not None


def lora_module_names(network: torch.nn.Module, adapter_name: str = DEFAULT_ADAPTER) -> list[str]:
    """Paths of the modules carrying adapter ``adapter_name`` (as in the base network), model order."""
    from peft.tuners.lora import LoraLayer

    return [
        name
        for name, module in network.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    ]


def _check_injectable(network: torch.nn.Module, adapter_name: str) -> None:
    """Refuse a network peft cannot inject into, or one that already has ``adapter_name``."""
    if not hasattr(network, "add_adapter"):
        raise ProGRPOConfigError(
            f"network {network_class_name(network)} has no add_adapter method; pass a diffusers model "
            f"(UNet2DConditionModel, SD3Transformer2DModel, FluxTransformer2DModel, ...)."
        )
    if has_adapter(network, adapter_name):
        raise ProGRPOConfigError(
            f"network {network_class_name(network)} already has a LoRA adapter {adapter_name!r}; "
            f"use another adapter_name or a fresh network."
        )


def _freeze_all_but_lora(network: torch.nn.Module, adapter_name: str) -> list[torch.nn.Parameter]:
    """Only adapter ``adapter_name``'s LoRA weights keep ``requires_grad``; returns them (model order)."""
    trainable = []
    for name, parameter in network.named_parameters():
        is_lora = _is_lora_parameter(name, adapter_name)
        parameter.requires_grad_(is_lora)
        if is_lora:
            trainable.append(parameter)
    return trainable


def add_lora(
    network: torch.nn.Module, settings: LoraSettings, adapter_name: str = DEFAULT_ADAPTER
) -> list[torch.nn.Parameter]:
    """Inject a LoRA adapter into ``network`` in place and freeze everything else.

    ``lora_A`` [rank, in] is drawn by peft's default (Kaiming uniform, seeded by
    ``settings.init_seed``), ``lora_B`` [out, rank] is zero, so the forward output is unchanged.

    Returns:
        The trainable parameters (every ``lora_A``/``lora_B`` weight of the adapter, model order);
        all other parameters of ``network`` have ``requires_grad=False``.
    """
    from peft import LoraConfig

    _check_injectable(network, adapter_name)
    targets = settings.resolve_targets(network)
    matched = find_target_modules(network, targets)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        init_lora_weights=True,  # Kaiming-uniform A, zero B: the adapter starts as the identity.
    )
    # peft draws lora_A on the CPU before moving it to the base layer's device, so forking the CPU
    # generator is enough to make the init reproducible without consuming the caller's RNG.
    with torch.random.fork_rng(devices=[], enabled=settings.init_seed is not None):
        if settings.init_seed is not None:
            torch.manual_seed(settings.init_seed)
        was_training = network.training
        network.add_adapter(config, adapter_name=adapter_name)
    # peft builds the adapter's dropout modules in train mode even inside an eval network; give the
    # whole tree back the mode it had, or an eval-mode sampler would sample with LoRA dropout on.
    network.train(was_training)
    trainable = _freeze_all_but_lora(network, adapter_name)
    logger.info(
        "LoRA %r on %s: %d modules, rank %d, alpha %g, %d trainable parameters",
        adapter_name,
        network_class_name(network),
        len(matched),
        settings.rank,
        settings.alpha,
        sum(p.numel() for p in trainable),
    )
    return trainable


@contextlib.contextmanager
def lora_disabled(network: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``network`` as its frozen base model inside the block (the KL reference policy).

    Every adapter is bypassed, so outputs equal the base network's exactly. ``requires_grad`` of
    all parameters is restored on exit (peft's toggle would otherwise re-enable the grads of every
    active adapter, including ones the caller froze). Nested use is a no-op.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not getattr(network, "_hf_peft_config_loaded", False):
        raise ProGRPOConfigError(
            f"lora_disabled: network {network_class_name(network)} has no LoRA adapter; "
            f"call progrpo.lora.add_lora first (or use the network directly as the reference)."
        )
    layers = [m for m in network.modules() if isinstance(m, BaseTunerLayer)]
    if all(layer.disable_adapters for layer in layers):
        yield network
        return
    grads = {p: p.requires_grad for p in network.parameters()}
    network.disable_adapters()
    try:
        yield network
    finally:
        network.enable_adapters()
        for parameter, requires_grad in grads.items():
            parameter.requires_grad_(requires_grad)


def lora_state_dict(network: torch.nn.Module, adapter_name: str = DEFAULT_ADAPTER) -> dict[str, torch.Tensor]:
    """The adapter's weights as peft writes them, detached copies.

    Keys: ``<module path>.lora_A.weight`` [rank, in] and ``<module path>.lora_B.weight`` [out, rank]
    (no adapter name, no prefix); Conv2d modules give 4-D tensors.
    """
    from peft import get_peft_model_state_dict

    _require_adapter(network, adapter_name)
    state = get_peft_model_state_dict(network, adapter_name=adapter_name)
    return {key: value.detach().clone() for key, value in state.items()}


def load_lora_state_dict(
    network: torch.nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str = DEFAULT_ADAPTER
) -> None:
    """Copy ``state_dict`` (``lora_state_dict`` format) into the injected adapter, all keys required."""
    from peft import set_peft_model_state_dict

    _require_adapter(network, adapter_name)
    expected = set(lora_state_dict(network, adapter_name))
    given = {key.removeprefix("base_model.model.") for key in state_dict}
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ProGRPOConfigError(
            f"LoRA state dict does not fit adapter {adapter_name!r} of {network_class_name(network)}: "
            f"missing {missing[:6]} ({len(missing)}), unexpected {unexpected[:6]} ({len(unexpected)}); "
            f"load a state dict saved from a network built with the same LoraSettings."
        )
    try:
        set_peft_model_state_dict(network, dict(state_dict), adapter_name=adapter_name)
    except RuntimeError as error:  # shape mismatch (another rank or architecture size)
        raise ProGRPOConfigError(
            f"LoRA state dict shapes do not fit adapter {adapter_name!r}: {error}; use the same rank and base model."
        ) from error
