"""A trainable LoRA on a ComfyUI MODEL through ComfyUI's weight wrappers (progrpo's LoraAdapter).

The route ComfyUI's own trainer (comfy_extras/nodes_train.py) uses (docs/comfyui_internals.md,
"The LoRA on a clone of the MODEL"): the MODEL (a ModelPatcher) is *cloned* and every targeted weight gets a
trainable wrapper registered with ``clone.add_weight_wrapper(key, module)``. ComfyUI applies the
wrappers when it loads the clone, on top of its own weight patches, so

* the cached model the server loaded is never modified (its next load wipes the wrappers);
* a LoRA applied upstream with the stock LoraLoader stays in effect (it is a weight patch of the
  same patcher, merged or applied before the wrappers);
* model eviction and reloads (VAE decodes and reward models in the loop) keep working.

Only the trained layers get a wrapper: ComfyUI then casts just those weights per forward, and every
other layer keeps its stock fast path (no per-forward copy, nothing retained for backward beyond
what the layer's own backward needs).

Inference tensors: a server loads models inside ``torch.inference_mode()``, so their parameters
cannot be saved for backward, which every layer between the LoRA and the loss needs (the input
gradient of ``x @ W.T`` is ``g @ W``). :func:`alias_inference_tensors` replaces each such parameter
with an ordinary tensor over the *same storage* (no copy, same bits), which autograd accepts;
:class:`~.comfy_training.TrainingSession` runs it before the update. Training then runs under
``torch.inference_mode(False)`` and ``torch.enable_grad()``; see :func:`training_context`.

After training, :meth:`ComfyLoraAdapter.patched_model` gives the input MODEL with the trained LoRA as
ordinary ComfyUI weight patches (what the stock LoraLoader builds), so sampling it runs at stock speed.

The trained LoRA is each target's ``lora_up`` [out, rank] and ``lora_down`` [rank, in] (ComfyUI's
``LoraDiff`` from ``LoRAAdapter.create_train``) with ``W' = W + (alpha / rank) up @ down``, and
``export`` writes it in kohya naming (``lora_unet_<diffusers path>`` for UNets) with alpha tensors,
which the stock LoraLoader maps completely.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import comfy.lora
import comfy.utils
import torch
from comfy.weight_adapter.lora import LoraDiff

from progrpo.atomic import atomic_save_safetensors, folder_atomically
from progrpo.errors import ProGRPOConfigError
from progrpo.lora import run_metadata

#: module-path suffixes trained when none are given: the attention projections of UNets (SD1.x/SDXL),
#: MMDiT (SD3) and Flux double blocks. The nodes pass the MODEL family's preset instead
#: (:mod:`.model_families`). Exact suffixes: a UNet's feed-forward ``ff.net.0.proj`` does not match
#: ``attn.proj``; ``*`` matches every Linear layer.
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "attn.qkv", "attn.proj", "img_attn.qkv", "img_attn.proj",
                   "txt_attn.qkv", "txt_attn.proj")
ALL_LINEAR = "*"
WEIGHTS_FILE = "lora.safetensors"
SETTINGS_FILE = "lora_settings.json"


class _Switch:
    """Shared on/off flag of one adapter's wrappers (off = the base model, the KL reference)."""

    def __init__(self) -> None:
        self.enabled = True


def alias_of(tensor: torch.Tensor) -> torch.Tensor:
    """An ordinary (non-inference) tensor over ``tensor``'s storage: no copy, same bits.

    Autograd refuses to save inference tensors for backward; an alias made outside inference mode is
    an ordinary tensor, so a frozen weight can take part in a differentiated forward without the
    per-forward copy ``tensor.clone()`` would cost (a whole second model for a real checkpoint).
    """
    with torch.inference_mode(False):
        return torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(
            tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride()
        )


def _base(weight: torch.Tensor) -> torch.Tensor:
    """The base weight as autograd may use it: an alias of an inference tensor, else a detached view."""
    return alias_of(weight) if weight.is_inference() else weight.detach()


def alias_inference_tensors(module: torch.nn.Module) -> int:
    """Replace every inference-tensor parameter and buffer of ``module`` by its alias; returns how many.

    Values and storage are unchanged (the model ComfyUI cached stays bit-identical and its memory is
    not duplicated); only the tensors' inference flag goes, so a differentiated forward may save them.
    """
    replaced = 0
    with torch.inference_mode(False):
        for submodule in module.modules():
            for table in (submodule._parameters, submodule._buffers):
                for name, tensor in table.items():
                    if tensor is None or not tensor.is_inference():
                        continue
                    alias = alias_of(tensor.data)
                    table[name] = torch.nn.Parameter(alias, requires_grad=False) if table is submodule._parameters \
                        else alias
                    replaced += 1
    return replaced


def _create_lora(shape: torch.Size, rank: int, alpha: float) -> torch.nn.Module:
    """ComfyUI's trainable ``LoraDiff`` for a [out, in] weight, as ``LoRAAdapter.create_train`` initialises it.

    Kaiming-uniform ``lora_up`` [out, rank] and zero ``lora_down`` [rank, in] (the identity at the start),
    float32, drawn on the CPU, so the same seed gives the same LoRA whatever device the model is on.
    """
    up = torch.empty(shape[0], rank, dtype=torch.float32)
    down = torch.zeros(rank, shape[1:].numel(), dtype=torch.float32)
    torch.nn.init.kaiming_uniform_(up, a=5**0.5)
    return LoraDiff((up, down, alpha, None, None, None))


class _LoraWrapper(torch.nn.Module):
    """Trainable LoRA weight wrapper: ComfyUI's ``LoraDiff`` behind the adapter's on/off switch."""

    def __init__(self, lora: torch.nn.Module, switch: _Switch) -> None:
        super().__init__()
        self.lora = lora
        self._switch = switch

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        base = _base(weight) if torch.is_grad_enabled() else weight
        if not self._switch.enabled:
            return base
        return self.lora(base)

    def passive_memory_usage(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def move_to(self, device: Any) -> int:
        self.to(device)
        return self.passive_memory_usage()


@contextlib.contextmanager
def training_context() -> Iterator[None]:
    """Autograd on, even inside the inference mode ComfyUI executes nodes in."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _matches(path: str, targets: Sequence[str]) -> bool:
    return any(t == ALL_LINEAR or path == t or path.endswith("." + t) for t in targets)


def _trainable(path: str, module: torch.nn.Module) -> bool:
    """A Linear layer of the diffusion model that ComfyUI can wrap (its ops have ``weight_function``)."""
    weight = getattr(module, "weight", None)
    return (hasattr(module, "weight_function") and weight is not None and weight.ndim == 2
            and path.startswith("diffusion_model."))


def matched_weight_keys(model: torch.nn.Module, targets: Sequence[str]) -> list[str]:
    """``diffusion_model.<path>.weight`` of every trainable layer of ``model`` that ``targets`` match."""
    return [f"{path}.weight" for path, module in model.named_modules()
            if _trainable(path, module) and _matches(path, targets)]


def kohya_key_names(model: Any, weight_keys: Sequence[str]) -> dict[str, str]:
    """File key prefix for each model weight key (``diffusion_model.<path>.weight``) in ``weight_keys``.

    UNets (SD1.x/SDXL): kohya ``lora_unet_<diffusers path with _>``; other models: ComfyUI's generic
    ``diffusion_model.<path>``. Every name is checked against ComfyUI's own LoRA key map of ``model``
    (``comfy.lora.model_lora_keys_unet``), so the stock LoraLoader loads all of them.
    """
    diffusers: dict[str, str] = {}
    unet_config = getattr(getattr(model, "model_config", None), "unet_config", None) or {}
    if "num_res_blocks" in unet_config:
        try:
            for name, unet_key in comfy.utils.unet_to_diffusers(unet_config).items():
                if name.endswith(".weight"):
                    diffusers["diffusion_model." + unet_key] = "lora_unet_" + name[: -len(".weight")].replace(".", "_")
        except Exception:  # noqa: BLE001 (a config unet_to_diffusers does not know: use generic names)
            diffusers = {}
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    names = {}
    for key in weight_keys:
        name = diffusers.get(key) or key[: -len(".weight")]
        if key_map.get(name) != key:
            name = key[: -len(".weight")]
        if key_map.get(name) != key:
            raise ProGRPOConfigError(
                f"ComfyUI's LoRA loader has no key for weight {key!r}; LoRA targets must be weights of the "
                "diffusion model's layers."
            )
        names[key] = name
    return names


class ComfyLoraAdapter:
    """progrpo :class:`~progrpo.lora.adapter.LoraAdapter` on a ComfyUI MODEL (module doc).

    Args:
        model: the MODEL (ModelPatcher) to train on; it is cloned, never modified.
        rank, alpha: LoRA rank and alpha (scale ``alpha / rank``).
        targets: module-path suffixes to train (default: the attention projections).
        seed: seeds the LoRA init (ComfyUI's: Kaiming ``lora_up``, zero ``lora_down``: the identity).

    ``patcher`` is the clone carrying the wrappers: sample and train with it.
    """

    def __init__(self, model: Any, rank: int = 4, alpha: float = 4.0, targets: Sequence[str] | None = None,
                 seed: int = 0) -> None:
        if int(rank) < 1:
            raise ProGRPOConfigError(f"rank={rank} must be >= 1.", field="lora.rank")
        self.rank, self.alpha = int(rank), float(alpha)
        self.targets = tuple(targets or DEFAULT_TARGETS)
        self.base = model
        self.patcher = model.clone()
        self._switch = _Switch()
        #: set by an open :class:`~.comfy_training.TrainingSession`: the context of each update
        self.update_context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
        self.wrappers: dict[str, _LoraWrapper] = {}
        trained = []
        device = torch.device(model.load_device)
        with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) % (2**63))
            for path, module in self.patcher.model.named_modules():
                if not (_trainable(path, module) and _matches(path, self.targets)):
                    continue
                key = f"{path}.weight"
                weight = module.weight
                # initialised on the CPU (the same numbers on every device), then placed where ComfyUI runs
                # the model; ComfyUI moves it with the model afterwards (``move_to``)
                lora = _create_lora(weight.shape, self.rank, self.alpha).to(device)
                lora.alpha.requires_grad_(False)
                wrapper = _LoraWrapper(lora, self._switch)
                self.wrappers[key] = wrapper
                self.patcher.add_weight_wrapper(key, wrapper)
                trained.append(key)
        if not trained:
            raise ProGRPOConfigError(
                f"lora_targets: {list(self.targets)} match no Linear layer of this MODEL's diffusion model; pick "
                "a preset (chosen for the model's family) or list module-path suffixes of its Linear layers in "
                "custom_targets ('*' trains every Linear layer).",
                field="lora.target_modules",
            )
        self.key_names = kohya_key_names(self.patcher.model, trained)

    def patched_model(self) -> Any:
        """The input MODEL with the current LoRA as ordinary weight patches, no training wrappers.

        Built exactly as the stock LoraLoaderModelOnly builds it from the exported file (ComfyUI's key map,
        ``add_patches`` at strength 1), so downstream samplers run at stock speed and give its output.
        """
        import comfy.sd

        return comfy.sd.load_lora_for_models(self.base, None, self.state_dict(), 1.0, 0.0)[0]

    # --- LoraAdapter -------------------------------------------------------------------------

    def parameters(self) -> list[torch.nn.Parameter]:
        params = []
        for wrapper in self.wrappers.values():
            params += [wrapper.lora.lora_up.weight, wrapper.lora.lora_down.weight]
        return params

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        previous = self._switch.enabled
        self._switch.enabled = False
        try:
            yield
        finally:
            self._switch.enabled = previous

    def training(self) -> contextlib.AbstractContextManager[Any]:
        """The update's context: the training session's (full load, aliases, checkpointing) when one is open.

        ComfyUI's LoraDiff has no dropout, so there is no train mode of the LoRA itself.
        """
        return self.update_context() if self.update_context is not None else contextlib.nullcontext()

    def place_parameters(self, device: torch.device) -> None:
        """Move the LoRA weights (and their gradients) to ``device`` in place: the optimiser keeps them."""
        with torch.inference_mode(False), torch.no_grad():
            for param in self.parameters():
                if param.device != device:
                    param.data = param.data.to(device)
                    if param.grad is not None:
                        param.grad = param.grad.to(device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``<file key>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha`` (the exported file's tensors)."""
        state = {}
        for key, wrapper in self.wrappers.items():
            name = self.key_names[key]
            state[f"{name}.lora_up.weight"] = wrapper.lora.lora_up.weight.detach().float().cpu().clone()
            state[f"{name}.lora_down.weight"] = wrapper.lora.lora_down.weight.detach().float().cpu().clone()
            state[f"{name}.alpha"] = torch.tensor(self.alpha, dtype=torch.float32)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ProGRPOConfigError(
                f"LoRA weights do not fit this adapter: missing {missing[:4]} ({len(missing)}), unexpected "
                f"{unexpected[:4]} ({len(unexpected)}); resume with the same model, rank and targets."
            )
        with torch.inference_mode(False), torch.no_grad():
            for key, wrapper in self.wrappers.items():
                name = self.key_names[key]
                for part in ("lora_up", "lora_down"):
                    param = getattr(wrapper.lora, part).weight
                    value = state[f"{name}.{part}.weight"]
                    if value.shape != param.shape:
                        raise ProGRPOConfigError(
                            f"LoRA weight {name}.{part} has shape {tuple(value.shape)}, this adapter "
                            f"{tuple(param.shape)}; resume with the same rank and model."
                        )
                    param.copy_(value.to(param))

    def settings(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    def same_layers(self, settings: Mapping[str, Any]) -> bool:
        """Whether saved adapter ``settings`` describe this LoRA: rank, alpha, and targets that train the same layers.

        Targets are compared by the layers they match on this MODEL, so a checkpoint written with the old
        suffix list resumes under the family preset that trains the same layers.
        """
        if settings.get("rank") != self.rank or settings.get("alpha") != self.alpha:
            return False
        saved = settings.get("targets")
        if not isinstance(saved, list):
            return False
        return saved == list(self.targets) or matched_weight_keys(self.patcher.model, saved) == list(self.wrappers)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/lora.safetensors`` + ``lora_settings.json`` (atomic folder replace)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        with folder_atomically(folder) as temp:
            save_file(self.state_dict(), str(temp / WEIGHTS_FILE))
            (temp / SETTINGS_FILE).write_text(json.dumps(self.settings()), encoding="utf-8")
        return folder

    def load(self, folder: str | os.PathLike[str]) -> None:
        from safetensors.torch import load_file

        folder = Path(folder)
        settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
        if not self.same_layers(settings):
            raise ProGRPOConfigError(
                f"checkpoint {str(folder)!r} holds a LoRA with {settings}, this run has {self.settings()}; resume "
                "with the same rank, alpha and targets (or start a new run name)."
            )
        self.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))

    def export(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the LoRA file atomically: kohya keys + alpha, metadata by :func:`progrpo.lora.run_metadata`."""
        return atomic_save_safetensors(self.state_dict(), path, run_metadata(self.rank, self.alpha, metadata or {}))
