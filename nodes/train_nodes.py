"""Training nodes: ProGRPOTrainLoop (a whole GRPO run on a MODEL) and ProGRPOSaveLoRA (into models/loras).

The loop is thin: :func:`~.training_setup.prepare_training` builds a :class:`progrpo.train.TrainConfig`
from the sockets, a :class:`~.comfy_lora.ComfyLoraAdapter` (trainable weight wrappers on a *clone* of
the MODEL, so the model the server cached is never modified and upstream LoRAs stay in effect) and a
:class:`~.comfy_backend.ComfyDenoiser` on that clone; the node runs :class:`progrpo.train.Trainer`
under ``torch.inference_mode(False)`` + ``torch.enable_grad()``.

Progress and cancel: the progress bar ticks once per iteration and every model evaluation checks
ComfyUI's interrupt flag, so Cancel / ``POST /interrupt`` stops within one iteration. The last
completed iteration is then checkpointed (atomically, under ``output/progrpo/<run_name>``) and a
run with ``resume`` on continues from it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import comfy.model_management
import folder_paths
import numpy as np
import torch
from comfy_api.latest import io

from progrpo.atomic import atomic_save_safetensors
from progrpo.errors import ProGRPOConfigError
from progrpo.lora import run_metadata
from progrpo.pruning import PruneSchedule
from progrpo.train import GRPOConfig, OptimConfig
from progrpo.train.checkpoint import LORA_DIR, resolve_checkpoint
from progrpo.train.faults import out_of_memory
from progrpo.train.precision import loss_scale_for
from progrpo.train.trainer import Trainer

from .comfy_lora import WEIGHTS_FILE, ComfyLoraAdapter, training_context
from .comfy_training import (
    TrainingSession,
    lora_target_inputs,
    options_from,
    training_option_inputs,
    updates_per_rollout_input,
)
from .input_checks import check_choices, check_numbers
from .input_errors import relabeled
from .live_view import LiveView
from .model_families import preset_targets
from .paths import resolve_inside
from .sampling_inputs import check_noise_level, seed_input
from .sockets import ComfyRollout, RolloutType
from .train_inputs import lora_inputs, train_loop_inputs
from .training_setup import RUN_NAME, TrainDenoiser, TrainLoopInputs, prepare_training

logger = logging.getLogger("progrpo")
LORA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_. -]{0,149}$")


class TrainedLora(dict):
    """A ``LORA_MODEL`` (ComfyUI's dict of LoRA tensors, as its own training nodes pass it) plus ``metadata``.

    Stock nodes (Load LoRA Model, Save LoRA Weights) see a plain dict of tensors; ProGRPOSaveLoRA also
    writes ``metadata`` (run settings) into the file.
    """

    metadata: dict[str, str]


def image_from_png(path: Path | None, fallback: tuple[int, int] = (64, 64)) -> torch.Tensor:
    """IMAGE [1, H, W, 3] float in [0, 1] from a PNG (black when there is none)."""
    if path is None or not Path(path).is_file():
        return torch.zeros(1, fallback[0], fallback[1], 3)
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).unsqueeze(0)


class ProGRPOTrainLoop(io.ComfyNode):
    """A whole Pro-GRPO LoRA training run on a MODEL, with checkpoints, resume and a reward curve."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOTrainLoop",
            display_name="Pro-GRPO Train Loop",
            category="Pro-GRPO/training",
            description=(
                "Trains a LoRA on the MODEL with GRPO: every iteration samples an expanded group of stochastic "
                "trajectories per prompt, prunes it at the schedule's checkpoints (Optimal Variance Filtering), "
                "scores the survivors with the reward and takes one optimiser step. The input MODEL is not "
                "modified; the output MODEL is a copy with the trained LoRA applied. Runs in this one ComfyUI "
                "process on its device; for several GPUs run `torchrun -m progrpo train` (see the README)."
            ),
            inputs=train_loop_inputs(),
            outputs=[
                io.Model.Output(display_name="model",
                                tooltip="A copy of the input MODEL with the trained LoRA applied as ordinary weight "
                                "patches (as Load LoRA applies it: samples at stock speed)."),
                io.LoraModel.Output(display_name="lora",
                                    tooltip="The trained LoRA weights (kohya keys + alpha); save them with Pro-GRPO "
                                    "Save LoRA, or apply them with Load LoRA Model."),
                io.Image.Output(display_name="curve", tooltip="Training curves per iteration: survivors' reward, "
                                "within-group std, KL, clip fraction, grad norm (panels of quantities that move)."),
            ],
            hidden=[io.Hidden.unique_id],  # the live view's text goes to this node
        )

    @classmethod
    def validate_inputs(cls, noise_level: float | None = None, run_name: str | None = None, cfg: float | None = None,
                        lr: float | None = None, alpha: float | None = None, dynamics: str | None = None,
                        scheduler: str | None = None, selection: str | None = None,
                        training_dtype: str | None = None, lora_targets: str | None = None,
                        guidance: float | None = None) -> bool | str:
        for checked in (check_numbers(cls, cfg=cfg, lr=lr, alpha=alpha, guidance=guidance),
                        check_noise_level(noise_level),
                        check_choices(cls, dynamics=dynamics, scheduler=scheduler, selection=selection,
                                      training_dtype=training_dtype, lora_targets=lora_targets)):
            if checked is not True:
                return checked
        if noise_level == 0:
            return ("noise_level=0: the rollout would be deterministic, with no policy gradient to train on; use -1 "
                    "(the dynamic's default) or a value > 0.")
        if run_name and not RUN_NAME.match(run_name):
            return (f"run_name={run_name!r}: use 1-100 letters, digits, '_', '-' or '.', starting with a letter "
                    "or digit.")
        return True

    @classmethod
    def execute(cls, model: Any, vae: Any, reward: Any, group_size: int, steps: int, dynamics: str,
                noise_level: float, cfg: float, width: int, height: int, iterations: int, lr: float, rank: int,
                alpha: float, checkpoint_every: int, resume: bool, run_name: str, seed: int, scheduler: str,
                clip: Any | None = None, prompt_file: str = "", negative_prompt: str = "",
                positive: list | None = None, negative: list | None = None,
                prune_schedule: PruneSchedule | None = None, selection: str = "ovf",
                prompts_per_iteration: int = 1, prompts: str = "", training_dtype: str = "auto",
                gradient_checkpointing: bool = True, micro_batch_rows: int = 2,
                max_batch_rows: int = 8, updates_per_rollout: int = 2, lora_targets: str = "attention",
                custom_targets: str = "", guidance: float = 3.5, save_every: int = 0,
                keep_last: int = 3, eval_every: int = 0, eval_prompts: str = "") -> io.NodeOutput:
        inputs = TrainLoopInputs.of(locals())  # the widget values, by input name
        run = prepare_training(cls, inputs, model=model, vae=vae, reward=reward, clip=clip, positive=positive,
                               negative=negative, prune_schedule=prune_schedule,
                               unique_id=cls.hidden.unique_id if cls.hidden else None)
        with training_context(), run.session:
            result = _run(run.trainer, run.run_name, run.resume_from, save_every, run.denoiser.live)
        lora = TrainedLora(run.adapter.state_dict())
        lora.metadata = _metadata(run.trainer.export_metadata(), run.adapter)
        curve = image_from_png(result.curve_path)
        return io.NodeOutput(run.adapter.patched_model(), lora, curve)


def _run(trainer: Trainer, run_name: str, resume_from: str | None, save_every: int, live: LiveView) -> Any:
    """``trainer.run`` with the live view (:mod:`.live_view`) and Cancel; LoRA files every ``save_every`` and on failure.

    A cancelled or failed run checkpoints its last completed iteration (the trainer does, for its own errors)
    and writes that iteration's LoRA to ``<run_name>_<iteration>.safetensors`` before the error goes on.
    """
    def progress(done: int, total: int) -> None:
        live.iteration_done(done, trainer.last_rollout, trainer.history)
        if save_every and done % save_every == 0:
            _save_iteration_lora(trainer, run_name, trainer.adapter.state_dict(), done)

    try:
        return trainer.run(progress=progress, resume_from=resume_from)
    except BaseException as error:
        if isinstance(error, comfy.model_management.InterruptProcessingException):
            trainer.checkpoint_on_interrupt()  # the last completed iteration, resumable
        _save_checkpointed_lora(trainer, run_name)
        raise


def _save_iteration_lora(trainer: Trainer, run_name: str, tensors: dict[str, torch.Tensor], iteration: int) -> Path:
    path = write_lora_file(f"{run_name}_{iteration}", tensors, _metadata(trainer.export_metadata(), trainer.adapter),
                           input_name="run_name")
    logger.info("LoRA of iteration %d written to %s", iteration, path)
    return path


def _save_checkpointed_lora(trainer: Trainer, run_name: str) -> None:
    """The latest checkpoint's LoRA into models/loras, when there is one (never raises over the run's error)."""
    from safetensors.torch import load_file

    try:
        folder = resolve_checkpoint(trainer.output_dir, "latest")
        iteration = int(folder.name.removeprefix("iter_"))
        _save_iteration_lora(trainer, run_name, load_file(str(folder / LORA_DIR / WEIGHTS_FILE)), iteration)
    except (OSError, ValueError, ProGRPOConfigError) as failure:
        logger.warning("no LoRA file written for the stopped run %s: %s", run_name, failure)


def _metadata(run: dict[str, Any], adapter: ComfyLoraAdapter) -> dict[str, str]:
    return run_metadata(adapter.rank, adapter.alpha, run)


def write_lora_file(stem: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None,
                    input_name: str = "name") -> Path:
    """Write ``<stem>.safetensors`` into ComfyUI's loras folder atomically (the stock loader lists it at once)."""
    folder = Path(folder_paths.get_folder_paths("loras")[0])
    folder.mkdir(parents=True, exist_ok=True)
    path = resolve_inside(folder, f"{stem}.safetensors", input_name, must_exist=False)
    return atomic_save_safetensors({key: value.detach().contiguous().cpu() for key, value in tensors.items()}, path,
                                   metadata or {"progrpo": "1"})


class ProGRPOSaveLoRA(io.ComfyNode):
    """Write a LoRA into ComfyUI's loras folder so the stock Load LoRA node lists and applies it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOSaveLoRA",
            display_name="Pro-GRPO Save LoRA",
            category="Pro-GRPO/training",
            description="Saves the trained LoRA as <name>.safetensors in ComfyUI's loras folder (kohya keys with "
            "alpha, as the stock Load LoRA node maps them), with the run settings as metadata.",
            inputs=[
                io.LoraModel.Input("lora", tooltip="The LoRA from Pro-GRPO Train Loop."),
                io.String.Input("name", default="progrpo_lora",
                                tooltip="File name without .safetensors; letters, digits, spaces, '_', '-', '.'. "
                                "An existing file of that name is replaced."),
            ],
            outputs=[io.String.Output(display_name="lora_name",
                                      tooltip="The file name as Load LoRA lists it.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, name: str | None = None) -> bool | str:
        if name is not None and not LORA_NAME.match(name.removesuffix(".safetensors")):
            return (f"name={name!r}: use 1-150 letters, digits, spaces, '_', '-' or '.', starting with a letter "
                    "or digit, and no folders.")
        return True

    @classmethod
    def execute(cls, lora: dict, name: str) -> io.NodeOutput:
        stem = name.removesuffix(".safetensors")
        if not LORA_NAME.match(stem):
            raise ProGRPOConfigError(f"name: {name!r} is not a plain file name; use letters, digits, '_', '-', '.'.")
        tensors = {key: value for key, value in lora.items() if isinstance(value, torch.Tensor)}
        if not tensors:
            raise ProGRPOConfigError("lora: holds no tensors; connect the lora output of Pro-GRPO Train Loop.")
        path = write_lora_file(stem, tensors, getattr(lora, "metadata", None))
        return io.NodeOutput(path.name, ui={"text": [path.name]})


class ProGRPOTrainStep(io.ComfyNode):
    """One GRPO update of a LoRA from one rollout of Pro-GRPO Expanded Sampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOTrainStep",
            display_name="Pro-GRPO Train Step",
            category="Pro-GRPO/training",
            description=(
                "One optimiser step of GRPO on the survivors of a rollout (advantages from their final rewards). "
                "The rollout must have been sampled by this MODEL with this LoRA applied (e.g. the model output of "
                "the previous step) so the policy ratio starts at 1. The optimiser starts fresh each step; for "
                "whole runs use Pro-GRPO Train Loop."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base MODEL the rollout was sampled with (never modified)."),
                RolloutType.Input("rollout", tooltip="The rollout record from Pro-GRPO Expanded Sampler."),
                *lora_inputs("AdamW learning rate of this step.", "LoRA rank (must match the lora input).",
                             "LoRA alpha (scale alpha / rank; must match the lora input)."),
                seed_input("Seeds the LoRA init of a fresh LoRA.", control_after_generate=None),
                io.LoraModel.Input("lora", optional=True,
                                   tooltip="LoRA to continue from (the lora output of a previous step); "
                                   "unconnected: a fresh LoRA."),
                *training_option_inputs()[:3],  # the rollout is given: no sampling chunk here
                updates_per_rollout_input(),
                *lora_target_inputs(),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="A copy of the MODEL with the updated LoRA applied as "
                                "ordinary weight patches (as Load LoRA applies it)."),
                io.LoraModel.Output(display_name="lora", tooltip="The updated LoRA weights."),
                io.String.Output(display_name="metrics", tooltip="The update's metrics as JSON."),
            ],
        )

    @classmethod
    def validate_inputs(cls, lr: float | None = None, alpha: float | None = None,
                        training_dtype: str | None = None, lora_targets: str | None = None) -> bool | str:
        checked = check_numbers(cls, lr=lr, alpha=alpha)
        return checked if checked is not True else check_choices(cls, training_dtype=training_dtype,
                                                                 lora_targets=lora_targets)

    @classmethod
    def execute(cls, model: Any, rollout: Any, lr: float, rank: int, alpha: float, seed: int,
                lora: dict | None = None, training_dtype: str = "auto", gradient_checkpointing: bool = True,
                micro_batch_rows: int = 2, updates_per_rollout: int = 2, lora_targets: str = "attention",
                custom_targets: str = "") -> io.NodeOutput:
        import json

        from progrpo.advantages import group_advantages
        from progrpo.train.update import grpo_update

        if not isinstance(rollout, ComfyRollout):
            raise ProGRPOConfigError(
                "rollout: this rollout was not made by Pro-GRPO Expanded Sampler in this ComfyUI session; connect "
                "its rollout output."
            )
        adapter = ComfyLoraAdapter(model, rank=rank, alpha=alpha, seed=seed,
                                   targets=preset_targets(model, lora_targets, custom_targets))
        if lora is not None:
            try:
                adapter.load_state_dict({k: v for k, v in lora.items() if isinstance(v, torch.Tensor)})
            except ProGRPOConfigError as error:
                raise relabeled(error, input_name="lora") from None
        options = options_from(training_dtype, gradient_checkpointing, micro_batch_rows, 0)
        session = TrainingSession(adapter, options)
        denoiser = TrainDenoiser(adapter.patcher, scheduler=rollout.scheduler)
        denoiser.prompts = rollout.prompt_table
        grpo = GRPOConfig(micro_batch_rows=options.micro_batch_rows, updates_per_rollout=updates_per_rollout,
                          loss_scale=loss_scale_for(session.compute_dtype, tuple(rollout.latents.shape[2:])))
        advantages = group_advantages(rollout.final_rewards, rollout.prompt_index, std_mode=grpo.std_mode,
                                      clip=grpo.adv_clip)
        params = adapter.parameters()
        with training_context(), session:
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=OptimConfig().weight_decay)
            try:
                metrics = grpo_update(denoiser, rollout, advantages, optimizer, grpo, params,
                                      torch.Generator().manual_seed(int(seed)), adapter=adapter)
            except torch.OutOfMemoryError as error:
                raise out_of_memory(error, -1, None, {"micro_batch_rows": options.micro_batch_rows}) from error
        out = TrainedLora(adapter.state_dict())
        out.metadata = {"progrpo": "1", "rank": str(adapter.rank), "alpha": str(adapter.alpha)}
        return io.NodeOutput(adapter.patched_model(), out, json.dumps(metrics))
