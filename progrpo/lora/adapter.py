"""The trained LoRA as the trainer sees it: parameters, a reference toggle, checkpoints, export.

:class:`LoraAdapter` is what :class:`progrpo.train.Trainer` and :func:`progrpo.train.update.grpo_update`
need from "a LoRA on the denoiser", whatever mechanism applies it:

* :class:`PeftLoraAdapter` (the default): peft injected into a diffusers network
  (:func:`~progrpo.lora.add_lora`), checkpointed in peft's folder format, exported with
  :func:`~progrpo.lora.export_comfyui_lora`;
* the ComfyUI nodes' adapter (``nodes/comfy_lora.py``): trainable weight wrappers on a cloned
  ComfyUI ModelPatcher, so the loaded model is never modified (progrpo itself never imports ComfyUI).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from .config import LoraSettings
from .export import export_comfyui_lora
from .inject import add_lora, load_lora_state_dict, lora_disabled, lora_state_dict
from .peft_format import load_peft_adapter, save_peft_adapter


@runtime_checkable
class LoraAdapter(Protocol):
    """A trainable LoRA applied to a denoiser.

    ``parameters()``: the trainable tensors (fixed list, model order; the optimiser holds them).
    ``disabled()``: inside the block the denoiser runs as its base model (the KL reference).
    ``training()``: inside the block the adapter is in training mode (dropout on, if any).
    ``state_dict()`` / ``load_state_dict()``: the LoRA weights (detached copies / copied in place).
    ``save(folder)`` / ``load(folder)``: checkpoint the weights and settings exactly (resume).
    ``export(path, metadata)``: write the LoRA file the stock ComfyUI loaders apply; returns the path.
    """

    def parameters(self) -> list[torch.nn.Parameter]: ...

    def disabled(self) -> contextlib.AbstractContextManager[Any]: ...

    def training(self) -> contextlib.AbstractContextManager[Any]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...

    def save(self, folder: str | os.PathLike[str]) -> Path: ...

    def load(self, folder: str | os.PathLike[str]) -> None: ...

    def export(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Path: ...


class PeftLoraAdapter:
    """A peft LoRA injected into ``network`` (a diffusers model) with ``settings``.

    Building it injects the adapter (:func:`add_lora`), freezes the base, puts the network in eval
    mode (sampling runs without LoRA dropout) and keeps the LoRA weights in float32.
    """

    def __init__(self, network: torch.nn.Module, settings: LoraSettings) -> None:
        self.network = network
        self.settings = settings
        self._params = add_lora(network, settings)
        network.eval()
        for param in self._params:  # LoRA weights train in float32 whatever the base dtype
            param.data = param.data.float()

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self._params)

    def disabled(self) -> contextlib.AbstractContextManager[Any]:
        return lora_disabled(self.network)

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        was_training = self.network.training
        self.network.train()
        try:
            yield
        finally:
            self.network.train(was_training)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return lora_state_dict(self.network)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        load_lora_state_dict(self.network, dict(state))

    def save(self, folder: str | os.PathLike[str]) -> Path:
        return save_peft_adapter(self.network, folder)

    def load(self, folder: str | os.PathLike[str]) -> None:
        load_peft_adapter(self.network, folder)

    def export(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Path:
        return export_comfyui_lora(self.network, self.settings, path, dict(metadata or {}))
