"""peft's own adapter folder, for exact resume of training.

Layout (what ``PeftModel.save_pretrained`` writes)::

    <folder>/adapter_config.json         LoraConfig.save_pretrained
    <folder>/adapter_model.safetensors   base_model.model.<module>.lora_A.weight [rank, in]
                                         base_model.model.<module>.lora_B.weight [out, rank]

The ComfyUI file is for inference; this folder keeps the full peft config (dropout, targets,
init) so a run resumes bit-exactly. The folder is written next to its destination under a
temporary name and renamed into place, so a crash never leaves a half-written adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..atomic import folder_atomically
from ..errors import ProGRPOConfigError
from ..log import logger
from .config import LoraSettings, network_class_name
from .inject import (
    DEFAULT_ADAPTER,
    _is_lora_parameter,
    _require_adapter,
    add_lora,
    has_adapter,
    load_lora_state_dict,
    lora_state_dict,
)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: peft's PeftModel prefixes saved keys with this; set_peft_model_state_dict strips it again.
PEFT_PREFIX = "base_model.model."


def save_peft_adapter(
    network: torch.nn.Module, folder: str | os.PathLike[str], adapter_name: str = DEFAULT_ADAPTER
) -> Path:
    """Write adapter ``adapter_name`` of ``network`` to ``folder`` in peft's format, atomically."""
    from safetensors.torch import save_file

    _require_adapter(network, adapter_name)
    folder = Path(folder)
    state = lora_state_dict(network, adapter_name)
    tensors = {PEFT_PREFIX + key: value.contiguous().cpu() for key, value in state.items()}
    with folder_atomically(folder) as temp:
        network.peft_config[adapter_name].save_pretrained(str(temp))
        save_file(tensors, str(temp / WEIGHTS_NAME), metadata={"format": "pt"})
    logger.info("saved peft adapter %r (%d tensors) to %s", adapter_name, len(tensors), folder)
    return folder


def _check_folder(folder: Path) -> None:
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise ProGRPOConfigError(
            f"peft adapter folder {str(folder)!r} lacks {missing}; pass a folder written by save_peft_adapter."
        )


def read_peft_settings(folder: str | os.PathLike[str]) -> LoraSettings:
    """``LoraSettings`` of the adapter saved in ``folder`` (rank, alpha, dropout, targets)."""
    folder = Path(folder)
    _check_folder(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    if config.get("peft_type") != "LORA":
        raise ProGRPOConfigError(
            f"{str(folder / CONFIG_NAME)!r} holds a {config.get('peft_type')!r} adapter; only LoRA is supported."
        )
    targets = config["target_modules"]
    return LoraSettings(
        rank=int(config["r"]),
        alpha=float(config["lora_alpha"]),
        dropout=float(config.get("lora_dropout", 0.0)),
        target_modules=(targets,) if isinstance(targets, str) else tuple(sorted(targets)),
    )


def load_peft_adapter(
    network: torch.nn.Module, folder: str | os.PathLike[str], adapter_name: str = DEFAULT_ADAPTER
) -> list[torch.nn.Parameter]:
    """Load a ``save_peft_adapter`` folder into ``network`` and return its trainable LoRA parameters.

    A network without the adapter gets it injected first from the saved settings; a network that
    has it must match the saved rank, alpha and targets. All keys must load.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    saved = read_peft_settings(folder)
    if has_adapter(network, adapter_name):
        config = network.peft_config[adapter_name]
        current = (config.r, float(config.lora_alpha), tuple(sorted(config.target_modules)))
        if current != (saved.rank, saved.alpha, tuple(sorted(saved.target_modules or ()))):
            raise ProGRPOConfigError(
                f"adapter {adapter_name!r} of {network_class_name(network)} has (rank, alpha, targets) {current}, "
                f"the folder {str(folder)!r} holds {(saved.rank, saved.alpha, saved.target_modules)}; "
                f"load into a fresh network (the adapter is then injected from the folder)."
            )
    else:
        add_lora(network, saved, adapter_name=adapter_name)
    load_lora_state_dict(network, load_file(str(folder / WEIGHTS_NAME)), adapter_name=adapter_name)
    trainable = [p for name, p in network.named_parameters() if _is_lora_parameter(name, adapter_name)]
    logger.info("loaded peft adapter %r from %s", adapter_name, folder)
    return trainable
