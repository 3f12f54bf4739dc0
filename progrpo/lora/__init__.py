"""LoRA for Pro-GRPO: injection through peft, the KL reference toggle, ComfyUI export, resume.

Typical use::

    settings = LoraSettings(rank=32, alpha=64.0)
    params = add_lora(network, settings)              # only LoRA weights train
    with lora_disabled(network):                      # reference policy for the KL term
        reference = network(...)
    export_comfyui_lora(network, settings, "out.safetensors", {"steps": 100})
    save_peft_adapter(network, "checkpoint/lora")     # exact resume: load_peft_adapter
"""

from __future__ import annotations

from .adapter import LoraAdapter, PeftLoraAdapter
from .config import DEFAULT_TARGETS, LoraSettings, network_class_name
from .export import (
    EXPORT_FORMATS,
    KEY_FORMATS,
    KeyFormat,
    apply_comfyui_lora,
    export_comfyui_lora,
    read_lora_metadata,
)
from .inject import (
    DEFAULT_ADAPTER,
    add_lora,
    available_linear_names,
    find_target_modules,
    has_adapter,
    load_lora_state_dict,
    lora_disabled,
    lora_module_names,
    lora_state_dict,
)
from .metadata import encode_metadata, run_metadata
from .peft_format import load_peft_adapter, read_peft_settings, save_peft_adapter

__all__ = [
    "DEFAULT_ADAPTER",
    "DEFAULT_TARGETS",
    "EXPORT_FORMATS",
    "KEY_FORMATS",
    "KeyFormat",
    "LoraAdapter",
    "LoraSettings",
    "PeftLoraAdapter",
    "add_lora",
    "apply_comfyui_lora",
    "available_linear_names",
    "encode_metadata",
    "export_comfyui_lora",
    "find_target_modules",
    "has_adapter",
    "load_lora_state_dict",
    "load_peft_adapter",
    "lora_disabled",
    "lora_module_names",
    "lora_state_dict",
    "network_class_name",
    "read_lora_metadata",
    "read_peft_settings",
    "run_metadata",
    "save_peft_adapter",
]
