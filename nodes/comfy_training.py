"""Training a ComfyUI MODEL within the memory and precision of the user's machine.

:class:`TrainingSession` holds what the training nodes change on the adapter's clone for a run and
undoes all of it on exit (success, error, out of memory or Cancel), so the MODEL the server cached
is left as it was:

* **compute dtype** (``training_dtype``): ComfyUI's own trainer route,
  ``ModelPatcher.set_model_compute_dtype`` on the clone, so every layer casts its stored weight
  (fp32/fp16/bf16/fp8) to the compute dtype per forward. The LoRA weights, their gradients and the
  AdamW state stay float32; progrpo computes log-probs, ratios, advantages and KL in float32.
  fp16 compute gets a static loss scale (:func:`progrpo.train.precision.loss_scale_for`).
* **train mode** on the diffusion model for the whole run: ComfyUI's fp8 fast path
  (``comfy.ops.fp8_ops``, ``torch._scaled_mm``, which has no backward) only runs in eval mode, so
  rollouts and updates both take the dequantizing path and their log-probs agree.
* **per update** (:meth:`TrainingSession.update`): the model is loaded fully as ComfyUI's trainer
  loads it (``load_models_gpu(..., force_full_load=True)``, which evicts the VAE and other models from
  the device first; the reward's models, which ComfyUI does not manage, go to the offload device until
  the update ends), inference-mode weights are aliased (:func:`.comfy_lora.alias_inference_tensors`,
  no copy), the LoRA parameters and AdamW state are put beside the weights, and the highest
  non-container modules of the diffusion model run under ``torch.utils.checkpoint`` (recomputed in
  backward, as ComfyUI's TrainLoraNode patches them) when ``gradient_checkpointing`` is on, and
  augmented assignments on saved tensors (Flux's residual ``img += ...``) run out of place
  (:mod:`.out_of_place`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import comfy.model_management
import torch
import torch.utils.checkpoint

from progrpo.errors import ProGRPOConfigError
from progrpo.train.precision import TRAINING_DTYPES, resolve_training_dtype

from .comfy_lora import ComfyLoraAdapter, alias_inference_tensors
from .out_of_place import augmented_assignments_out_of_place

logger = logging.getLogger("progrpo")


@dataclass(frozen=True)
class TrainingOptions:
    """Memory and precision knobs of the training nodes (each one an optional node input).

    Attributes:
        training_dtype: compute dtype of the diffusion model while training: ``auto`` (bf16 on a GPU
            that supports it, else fp32), ``bf16``, ``fp16`` (loss-scaled) or ``fp32``.
        gradient_checkpointing: recompute each block's activations in backward instead of keeping them.
        micro_batch_rows: (trajectory, step) pairs per forward/backward of the update.
        max_batch_rows: rows per network call in the rollout and per VAE decode (0: all at once).
    """

    training_dtype: str = "auto"
    gradient_checkpointing: bool = True
    micro_batch_rows: int = 2
    max_batch_rows: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.training_dtype, str) or self.training_dtype not in TRAINING_DTYPES:
            raise ProGRPOConfigError(
                f"training_dtype: {self.training_dtype!r} is not one of {sorted(TRAINING_DTYPES)}."
            )
        if int(self.micro_batch_rows) < 1:
            raise ProGRPOConfigError(f"micro_batch_rows: {self.micro_batch_rows} must be >= 1.")
        if int(self.max_batch_rows) < 0:
            raise ProGRPOConfigError(f"max_batch_rows: {self.max_batch_rows} must be >= 0 (0: no chunking).")

    @property
    def rollout_rows(self) -> int | None:
        """``RolloutConfig.max_batch_rows``: None when 0 (one call for the whole group)."""
        return int(self.max_batch_rows) or None


def compute_dtype_of(patcher: Any) -> torch.dtype:
    """The dtype ComfyUI computes this MODEL in: its compute-dtype patch, else the loader's manual cast, else storage.

    Read from the patcher and the model's config, never from ``model.manual_cast_dtype``: another clone that
    is loaded right now may have patched that attribute of the shared model.
    """
    patched = patcher.object_patches.get("manual_cast_dtype")
    if patched is not None:
        return patched
    model = patcher.model
    configured = model.model_config.manual_cast_dtype
    return configured if configured is not None else model.get_dtype()


def reward_modules(reward: Any, depth: int = 4) -> list[torch.nn.Module]:
    """The torch modules a reward object holds (its models), found through attributes, dicts and lists.

    Pro-GRPO rewards keep their networks as plain attributes (a CLIP model, an aesthetic head; a weighted
    sum keeps its rewards in a dict): ComfyUI does not manage them, so the training session moves them
    off the device during the update itself.
    """
    found: list[torch.nn.Module] = []
    seen: set[int] = set()

    def visit(value: Any, level: int) -> None:
        if id(value) in seen or level > depth or isinstance(value, (str, bytes, int, float, torch.Tensor)):
            return
        seen.add(id(value))
        if isinstance(value, torch.nn.Module):
            found.append(value)
            return
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, (list, tuple)):
            children = list(value)
        else:
            children = list(getattr(value, "__dict__", {}).values())
        for child in children:
            visit(child, level + 1)

    visit(reward, 0)
    return found


@contextlib.contextmanager
def offloaded(modules: list[torch.nn.Module], offload_device: torch.device) -> Iterator[int]:
    """Inside the block, every module not on ``offload_device`` sits there; each goes back after. Yields how many moved."""
    moved = []
    try:
        for module in modules:
            tensor = next(iter([*module.parameters(), *module.buffers()]), None)
            if tensor is not None and tensor.device != offload_device:
                moved.append((module, tensor.device))
                with torch.inference_mode(tensor.is_inference()):
                    module.to(offload_device)
        yield len(moved)
    finally:
        for module, device in moved:
            tensor = next(iter([*module.parameters(), *module.buffers()]))
            with torch.inference_mode(tensor.is_inference()):
                module.to(device)


_CONTAINERS = (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)


def checkpoint_blocks(diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules gradient checkpointing wraps: the highest non-container modules of the diffusion model.

    ComfyUI's TrainLoraNode rule (``find_all_highest_child_module_with_forward``): descend through
    ``ModuleList`` / ``Sequential`` / ``ModuleDict`` containers and take the first modules that are not one.
    Taking a container itself would do nothing on UNets: ``forward_timestep_embed`` iterates a
    ``TimestepEmbedSequential``'s layers and calls each one directly, never the container's ``forward``.
    So UNets checkpoint each ResBlock / SpatialTransformer / Downsample, MMDiT each joint block, Flux
    each double and single block (and the small embedders beside them, which cost nothing to recompute).
    """
    blocks: list[torch.nn.Module] = []

    def visit(module: torch.nn.Module) -> None:
        for child in module.children():
            if isinstance(child, _CONTAINERS):
                visit(child)
            else:
                blocks.append(child)

    visit(diffusion_model)
    return blocks


def _out_of_place(forward: Any) -> Any:
    """``forward`` inside :func:`.out_of_place.augmented_assignments_out_of_place`, also when the checkpoint
    recomputes it during backward (on a GPU, autograd may run that on its own thread)."""
    def run(*args: Any, **kwargs: Any) -> Any:
        with augmented_assignments_out_of_place():
            return forward(*args, **kwargs)

    return run


@contextlib.contextmanager
def checkpointed(blocks: list[torch.nn.Module]) -> Iterator[None]:
    """Inside the block, each block's forward is recomputed in backward (only when autograd records)."""
    patched = []
    try:
        for block in blocks:
            original = block.forward

            def forward(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                if not torch.is_grad_enabled():
                    return _original(*args, **kwargs)
                return torch.utils.checkpoint.checkpoint(_out_of_place(_original), *args, use_reentrant=False,
                                                         **kwargs)

            block.forward = forward
            patched.append(block)
        yield
    finally:
        for block in patched:
            del block.forward  # the class's forward again


class TrainingSession:
    """What training changes on ``adapter.patcher`` (module doc); use as a context manager.

    Args:
        adapter: the LoRA adapter whose clone is trained.
        options: the memory and precision knobs.
        reward: the run's reward; its models leave the device during each update (ComfyUI's offload device).
    """

    def __init__(self, adapter: ComfyLoraAdapter, options: TrainingOptions, reward: Any | None = None) -> None:
        self.adapter = adapter
        self.options = options
        self.reward_modules = reward_modules(reward) if reward is not None else []
        patcher = adapter.patcher
        self.device = torch.device(patcher.load_device)
        self.compute_dtype = resolve_training_dtype(options.training_dtype, self.device)
        stored = patcher.model.get_dtype()
        if options.training_dtype == "auto" and stored == torch.float16 and self.compute_dtype != torch.float16:
            logger.info("the diffusion model is stored in fp16; training computes in %s (fp16 gradients underflow)",
                        self.compute_dtype)
        if compute_dtype_of(patcher) != self.compute_dtype:
            patcher.set_model_compute_dtype(self.compute_dtype)
        self._was_training: bool | None = None
        adapter.update_context = self.update

    def __enter__(self) -> TrainingSession:
        diffusion_model = self.adapter.patcher.model.diffusion_model
        self._was_training = diffusion_model.training
        diffusion_model.train(True)  # no fp8 fast path (no backward): see the module doc
        return self

    def __exit__(self, *exc: object) -> None:
        if self._was_training is not None:
            self.adapter.patcher.model.diffusion_model.train(self._was_training)
        self.adapter.update_context = None

    @contextlib.contextmanager
    def update(self) -> Iterator[None]:
        """The context of one optimiser update: full load, aliased weights, LoRA beside them, checkpointing."""
        patcher = self.adapter.patcher
        comfy.model_management.load_models_gpu([patcher], memory_required=1e20, force_full_load=True)  # evicts VAE/others
        alias_inference_tensors(patcher.model)
        self.adapter.place_parameters(torch.device(patcher.load_device))
        blocks = checkpoint_blocks(patcher.model.diffusion_model) if self.options.gradient_checkpointing else []
        with (offloaded(self.reward_modules, torch.device(patcher.offload_device)), checkpointed(blocks),
              augmented_assignments_out_of_place()):
            yield


def training_option_inputs() -> list[Any]:
    """The optional node inputs of :class:`TrainingOptions` (appended last: UI workflows store widgets by position)."""
    from comfy_api.latest import io

    defaults = TrainingOptions()
    return [
        io.Combo.Input("training_dtype", options=list(TRAINING_DTYPES), default=defaults.training_dtype, optional=True,
                       tooltip="Compute precision of the diffusion model while training. auto: bf16 on a GPU that "
                       "supports it, else fp32. bf16 halves activation memory at fp32's range; fp16 is loss-scaled "
                       "(older GPUs); fp32 is exact but uses twice the memory. LoRA weights, gradients and optimiser "
                       "state stay fp32."),
        io.Boolean.Input("gradient_checkpointing", default=defaults.gradient_checkpointing, optional=True,
                         tooltip="Recompute each block's activations during backward instead of keeping them: a "
                         "fraction of the activation memory for about 30% more update time. Sampling is unaffected."),
        io.Int.Input("micro_batch_rows", default=defaults.micro_batch_rows, min=1, max=256, optional=True,
                     tooltip="(trajectory, step) pairs per forward/backward of the update (doubled by CFG). Each "
                     "extra row costs one more set of activations; 1 is the least memory, larger is faster."),
        io.Int.Input("max_batch_rows", default=defaults.max_batch_rows, min=0, max=4096, optional=True,
                     tooltip="Trajectories per model call while sampling and per VAE decode (0: the whole group at "
                     "once). Lower it when sampling runs out of memory; results change only by rounding."),
    ]


def updates_per_rollout_input() -> Any:
    """The optional ``updates_per_rollout`` input (Flow-GRPO's two optimiser steps per sampled batch)."""
    from comfy_api.latest import io

    return io.Int.Input("updates_per_rollout", default=2, min=1, max=64, optional=True,
                        tooltip="Optimiser steps per rollout, each on a disjoint share of the survivors' (trajectory, "
                        "step) pairs (Flow-GRPO: 2). From the second on the update is off-policy, so the clip "
                        "range binds; 1 is one on-policy step per rollout.")


def lora_target_inputs() -> list[Any]:
    """The optional ``lora_targets`` preset and ``custom_targets`` inputs of the training nodes."""
    from comfy_api.latest import io

    from .model_families import LORA_PRESETS

    return [
        io.Combo.Input("lora_targets", options=list(LORA_PRESETS), default=LORA_PRESETS[0], optional=True,
                       tooltip="Which Linear layers of the diffusion model the LoRA trains, chosen for the MODEL's "
                       "family. attention: the attention projections (SD1.x/SDXL to_q/k/v/out; SD3.5 attn and attn2; "
                       "Flux, Flux.2, Chroma: img/txt attention and the single blocks' linear1/linear2; Qwen-Image, "
                       "HiDream, Lumina2, Z-Image: their q/k/v/out). attention+mlp: also the feed-forward layers "
                       "(about 2-3x the LoRA size). all linear: every Linear layer. custom: the custom_targets list."),
        io.String.Input("custom_targets", default="", optional=True,
                        tooltip="With lora_targets custom: module-path suffixes of the layers to train, separated by "
                        "commas (e.g. 'to_q, to_k, to_v, to_out.0'; '*' trains every Linear layer)."),
    ]


def options_from(training_dtype: str, gradient_checkpointing: bool, micro_batch_rows: int,
                 max_batch_rows: int) -> TrainingOptions:
    """:class:`TrainingOptions` from the node inputs (their names are the fields')."""
    return TrainingOptions(training_dtype=training_dtype, gradient_checkpointing=bool(gradient_checkpointing),
                           micro_batch_rows=int(micro_batch_rows), max_batch_rows=int(max_batch_rows))
