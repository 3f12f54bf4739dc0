"""Training nodes: ProGRPOTrainLoop (a whole GRPO run on a MODEL) and ProGRPOSaveLoRA (into models/loras).

The loop is thin: it builds a :class:`progrpo.train.TrainConfig` from the sockets, a
:class:`~.comfy_lora.ComfyLoraAdapter` (trainable weight wrappers on a *clone* of the MODEL, so
the model the server cached is never modified and upstream LoRAs stay in effect) and a
:class:`~.comfy_backend.ComfyDenoiser` on that clone, and runs :class:`progrpo.train.Trainer`
under ``torch.inference_mode(False)`` + ``torch.enable_grad()``.

Progress and cancel: the progress bar ticks once per iteration and every model evaluation checks
ComfyUI's interrupt flag, so Cancel / ``POST /interrupt`` stops within one iteration. The last
completed iteration is then checkpointed (atomically, under ``output/progrpo/<run_name>``) and a
run with ``resume`` on continues from it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths
import numpy as np
import torch
from comfy_api.latest import io

from progrpo.dynamics import get_dynamics
from progrpo.errors import ProGRPOConfigError
from progrpo.lora import LoraSettings
from progrpo.pruning import SELECTIONS, PruneSchedule
from progrpo.rollout import RolloutConfig
from progrpo.train import GRPOConfig, OptimConfig, TrainConfig
from progrpo.train.checkpoint import LORA_DIR, read_checkpoint_config, resolve_checkpoint
from progrpo.train.config import read_prompts
from progrpo.train.distributed import SINGLE_PROCESS
from progrpo.train.faults import out_of_memory
from progrpo.train.precision import loss_scale_for
from progrpo.train.trainer import Trainer

from .comfy_backend import ComfyDenoiser
from .comfy_lora import WEIGHTS_FILE, ComfyLoraAdapter, matched_weight_keys, training_context
from .comfy_training import (
    TrainingSession,
    lora_target_inputs,
    options_from,
    training_option_inputs,
    updates_per_rollout_input,
)
from .expanded_sampler import RewardType, RolloutType
from .input_checks import check_choices, check_numbers
from .live_view import LiveView, prompt_server
from .model_families import family_of, log_warnings, preset_targets, resolve_dynamics
from .paths import resolve_inside
from .prompt_grid import prompt_lines
from .prune_schedule import PruneScheduleType
from .run_identity import default_run_name, node_run_identity
from .sampling_inputs import check_image_size, check_noise_level, guidance_input, image_size_inputs, sampling_inputs

logger = logging.getLogger("progrpo")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
LORA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_. -]{0,149}$")
#: text the rewards see in CONDITIONING mode (no prompt text is known there).
CONDITIONING_PROMPT = "(positive conditioning)"


class TrainedLora(dict):
    """A ``LORA_MODEL`` (ComfyUI's dict of LoRA tensors, as its own training nodes pass it) plus ``metadata``.

    Stock nodes (Load LoRA Model, Save LoRA Weights) see a plain dict of tensors; ProGRPOSaveLoRA also
    writes ``metadata`` (run settings) into the file.
    """

    metadata: dict[str, str]


class _TrainDenoiser(ComfyDenoiser):
    """ComfyDenoiser whose every model evaluation is a cancel point; optionally fixed CONDITIONINGs."""

    fixed: tuple[Any, Any] | None = None
    live: LiveView | None = None

    def predict(self, sample, timestep, conditioning, guidance_scale):  # type: ignore[override]
        comfy.model_management.throw_exception_if_processing_interrupted()
        prediction = super().predict(sample, timestep, conditioning, guidance_scale)
        if self.live is not None:
            self.live.model_call()
        return prediction

    def encode_prompts(self, prompts, negative_prompt=""):  # type: ignore[override]
        if self.fixed is None:
            return super().encode_prompts(prompts, negative_prompt)
        positive, negative = self.fixed
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not hasattr(self, "_fixed_rows"):
            self._fixed_rows = (self.prompts.add(self._guided(positive)),
                                None if negative is None else self.prompts.add(self._guided(negative)))
        positive_row, negative_row = self._fixed_rows
        return self._rows_conditioning(
            [positive_row] * len(prompts), None if negative_row is None else [negative_row], prompts
        )


def resolve_prompt_file(name: str) -> Path:
    """``name`` inside ComfyUI's input folder (never outside it); raises naming the input."""
    root = Path(folder_paths.get_input_directory())
    if not name.strip():
        raise ProGRPOConfigError(
            "prompt_file: empty; write the prompts into the prompts box (one per line), or put a .txt file with "
            f"one prompt per line into ComfyUI's input folder ({root}) and enter its name, or connect positive "
            "CONDITIONING instead of clip."
        )
    path = resolve_inside(root, name, "prompt_file", must_exist=False)
    if not path.is_file():
        raise ProGRPOConfigError(
            f"prompt_file: {name!r} was not found in ComfyUI's input folder {root}; put the prompt file there "
            "(one prompt per line)."
        )
    return path


def image_from_png(path: Path | None, fallback: tuple[int, int] = (64, 64)) -> torch.Tensor:
    """IMAGE [1, H, W, 3] float in [0, 1] from a PNG (black when there is none)."""
    if path is None or not Path(path).is_file():
        return torch.zeros(1, fallback[0], fallback[1], 3)
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).unsqueeze(0)


def run_directory(run_name: str) -> Path:
    if not isinstance(run_name, str) or not RUN_NAME.match(run_name):
        raise ProGRPOConfigError(
            f"run_name: {run_name!r} must be 1-100 characters of letters, digits, '_', '-' or '.', starting "
            "with a letter or digit (it names the folder under ComfyUI's output/progrpo)."
        )
    # the name is plain, but the run folder may be a symlink: checkpoints are read back from it on resume.
    return resolve_inside(Path(folder_paths.get_output_directory()) / "progrpo", run_name, "run_name",
                          must_exist=False)


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
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to train a LoRA for (upstream LoRAs and patches stay "
                               "in effect; it is never modified)."),
                io.Vae.Input("vae", tooltip="Decodes survivors and previews for the reward (the model's VAE)."),
                RewardType.Input("reward", tooltip="What to maximise: a Pro-GRPO Reward Loader / Combine."),
                *sampling_inputs(training=True),
                *image_size_inputs(),
                io.Int.Input("iterations", default=100, min=1, max=1000000,
                             tooltip="Rollout + update rounds (one optimiser step each), in all, resumed ones "
                             "included."),
                io.Float.Input("lr", default=1e-4, min=0.0, max=1.0, step=1e-6, round=1e-8,
                               tooltip="AdamW learning rate of the LoRA weights."),
                io.Int.Input("rank", default=8, min=1, max=256, tooltip="LoRA rank."),
                io.Float.Input("alpha", default=8.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="LoRA alpha; the update is scaled by alpha / rank."),
                io.Int.Input("checkpoint_every", default=10, min=0, max=100000,
                             tooltip="Write a resumable checkpoint every this many iterations (0: only at the end "
                             "or when cancelled)."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from the run's latest checkpoint if there is one (same settings "
                                 "required); off starts over and overwrites the run's checkpoints."),
                io.String.Input("run_name", default="",
                                tooltip="Folder under ComfyUI's output/progrpo for checkpoints, metrics, the LoRA "
                                "file and the curve; letters, digits, '_', '-', '.'. Empty: named from the model, "
                                "reward and settings (progrpo_<family>_<hash>), so a new run never continues "
                                "another and the same settings continue their own run. Resuming a run with another "
                                "model, reward, rank or targets is refused, naming what changed."),
                io.Int.Input("seed", default=0, min=0, max=2**62, control_after_generate=False,
                             tooltip="Seeds prompt choice, noise, LoRA init: the same seed and settings give the "
                             "same run."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="normal",
                               tooltip="ComfyUI scheduler giving the sigmas (as in KSampler)."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Encodes the prompts of prompt_file (use this or positive)."),
                io.String.Input("prompt_file", default="", optional=True,
                                tooltip="With clip: a .txt file (one prompt per line) in ComfyUI's input folder; "
                                "when empty, the prompts box is used."),
                io.String.Input("negative_prompt", default="", optional=True,
                                tooltip="With clip: the shared negative prompt for CFG."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Instead of clip + prompt_file: one prompt's CONDITIONING to train on."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="With positive: the negative CONDITIONING for CFG (needed when cfg != 1)."),
                PruneScheduleType.Input("prune_schedule", optional=True,
                                        tooltip="Pro-GRPO checkpoints step:keep; unconnected: plain GRPO "
                                        "(every trajectory trained)."),
                io.Combo.Input("selection", options=sorted(SELECTIONS), default="ovf", optional=True,
                               tooltip="How checkpoints keep their subset: ovf (Pro-GRPO), random, topk, none."),
                io.Int.Input("prompts_per_iteration", default=1, min=1, max=256, optional=True,
                             tooltip="Prompt groups per iteration."),
                # New inputs go last: UI-format workflows store widget values by position.
                io.String.Input("prompts", default="", multiline=True, optional=True,
                                tooltip="With clip and no prompt_file: the prompts to train on, one per line "
                                "(kept inside the workflow, so a shared workflow carries them)."),
                *training_option_inputs(),
                updates_per_rollout_input(),
                *lora_target_inputs(),
                guidance_input(),
                io.Int.Input("save_every", default=0, min=0, max=100000, optional=True,
                             tooltip="Also write the LoRA as <run_name>_<iteration>.safetensors into models/loras "
                             "every this many iterations (the stock Load LoRA lists it at once); 0: only at the "
                             "end. A cancelled or failed run always writes its last completed iteration's LoRA."),
                io.Int.Input("keep_last", default=3, min=0, max=100000, optional=True,
                             tooltip="Resumable checkpoints to keep under output/progrpo/<run_name> (older ones "
                             "are deleted once a newer one is complete); 0 keeps all."),
                io.Int.Input("eval_every", default=0, min=0, max=100000, optional=True,
                             tooltip="Every this many iterations, sample the held-out prompts (eval_prompts, else the "
                             "training prompts) on fixed seeds and plot their mean reward on the curves and in the "
                             "node's text; 0: off. Costs one rollout of eval_prompts x 4 samples each time."),
                io.String.Input("eval_prompts", default="", multiline=True, optional=True,
                                tooltip="With eval_every: held-out prompts, one per line (empty: the training "
                                "prompts). Ignored when training on one CONDITIONING (positive)."),
            ],
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
        options = options_from(training_dtype, gradient_checkpointing, micro_batch_rows, max_batch_rows)
        output_dir = run_directory(run_name) if run_name else None  # empty: derived from the settings below
        if clip is not None and positive is not None:
            raise ProGRPOConfigError(
                "clip / positive: both are connected; train either on prompt_file (clip) or on one CONDITIONING "
                "(positive), not both."
            )
        prompt_text = prompts
        if clip is not None and not (prompt_file or "").strip() and (prompt_text or "").strip():
            prompts = prompt_lines(prompt_text)
        elif clip is not None:
            try:
                prompts = read_prompts(resolve_prompt_file(prompt_file))
            except ProGRPOConfigError as error:
                message = str(error)
                raise ProGRPOConfigError(message if message.startswith("prompt_file:") else f"prompt_file: {message}") from None
        elif positive is not None:
            if cfg != 1.0 and negative is None:
                raise ProGRPOConfigError(
                    "negative: cfg is not 1, so guidance needs a negative CONDITIONING; connect one or set cfg to 1."
                )
            prompts = [CONDITIONING_PROMPT]
        else:
            raise ProGRPOConfigError(
                "clip / positive: connect clip (with prompt_file naming a prompt list in ComfyUI's input folder) "
                "or positive (one prompt's CONDITIONING)."
            )
        if prune_schedule is not None:
            try:
                prune_schedule.validate_for(group_size, steps)
            except ProGRPOConfigError as error:
                raise ProGRPOConfigError(f"prune_schedule: {error}") from None
        targets = _resumed_targets(output_dir if resume else None, model,
                                   preset_targets(model, lora_targets, custom_targets))
        adapter = ComfyLoraAdapter(model, rank=rank, alpha=alpha, targets=targets, seed=seed)
        denoiser = _TrainDenoiser(adapter.patcher, vae=vae, clip=clip, scheduler=scheduler, seed=seed,
                                  guidance=guidance if family_of(model).guidance_distilled else None)
        if positive is not None:
            denoiser.fixed = (positive, None if cfg == 1.0 else negative)
        dynamics = resolve_dynamics(dynamics, denoiser.kind)
        log_warnings(model, cfg, has_negative=negative is not None or clip is not None)
        try:
            get_dynamics(dynamics, denoiser.kind)
        except ProGRPOConfigError as error:
            raise ProGRPOConfigError(f"dynamics: {error}") from None
        check_image_size(vae, width, height)
        session = TrainingSession(adapter, options, reward)
        loss_scale = loss_scale_for(session.compute_dtype, denoiser.latent_shape(height, width))
        try:
            identity = node_run_identity(model, reward, output_dir if resume else None)
            config = TrainConfig(
                prompts=prompts, prompts_per_iteration=prompts_per_iteration,
                iterations=iterations, checkpoint_every=checkpoint_every, keep_last=keep_last, seed=int(seed),
                eval_every=eval_every,
                eval_prompts=prompt_lines(eval_prompts, "eval_prompts") if (eval_prompts or "").strip() else None,
                negative_prompt=(negative_prompt if clip is not None and cfg != 1.0 else None),
                output_dir=str(output_dir or "progrpo"),
                rollout=RolloutConfig(
                    group_size=group_size, num_steps=steps, dynamics=dynamics,
                    noise_level=None if noise_level < 0 else float(noise_level), guidance_scale=float(cfg),
                    prune_schedule=prune_schedule, selection=selection, height=height, width=width,
                    keep_images=True, max_batch_rows=options.rollout_rows,  # survivors for the live preview
                ),
                lora=LoraSettings(rank=rank, alpha=alpha, target_modules=adapter.targets),
                optim=OptimConfig(lr=lr),
                grpo=GRPOConfig(micro_batch_rows=options.micro_batch_rows, loss_scale=loss_scale,
                                updates_per_rollout=updates_per_rollout),
            )
        except ProGRPOConfigError as error:
            raise ProGRPOConfigError(f"{_input_named_in(str(error))}{error}") from None
        if output_dir is None:
            run_name = default_run_name(config, identity)
            output_dir = run_directory(run_name)
            config = dataclasses.replace(config, output_dir=str(output_dir))
        # One process: a ComfyUI server trains on the model it has loaded and never joins a
        # torch.distributed job, whatever WORLD_SIZE its environment holds (multi-GPU: the CLI).
        trainer = Trainer(config, identity=identity, denoiser=denoiser, reward=reward, adapter=adapter,
                          distributed=SINGLE_PROCESS)
        latest = output_dir / "checkpoints" / "latest"
        resume_from = "latest" if resume and latest.is_file() else None
        denoiser.live = LiveView(iterations, steps, cls.hidden.unique_id if cls.hidden else None, prompt_server())
        with training_context(), session:
            result = _run(trainer, run_name, resume_from, save_every, denoiser.live)
        lora = TrainedLora(adapter.state_dict())
        lora.metadata = _metadata(trainer.export_metadata(), adapter)
        curve = image_from_png(result.curve_path)
        return io.NodeOutput(adapter.patched_model(), lora, curve)


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


def _resumed_targets(run_dir: Path | None, model: Any, targets: tuple[str, ...]) -> tuple[str, ...]:
    """The run's saved target list when it trains the same layers as ``targets`` (a run started before the
    family presets resumes unchanged), else ``targets``; a real difference is refused later, naming it."""
    if run_dir is None or not (run_dir / "checkpoints" / "latest").is_file():
        return targets
    try:
        saved = read_checkpoint_config(resolve_checkpoint(run_dir, "latest"))
    except (OSError, ValueError, ProGRPOConfigError):
        return targets
    old = (saved.get("lora") or {}).get("target_modules")
    if isinstance(old, list) and old and tuple(old) != targets and \
            matched_weight_keys(model.model, old) == matched_weight_keys(model.model, targets):
        return tuple(old)
    return targets


def _metadata(run: dict[str, Any], adapter: ComfyLoraAdapter) -> dict[str, str]:
    import json

    meta = {"progrpo": "1", "rank": str(adapter.rank), "alpha": str(adapter.alpha)}
    for name, value in run.items():
        meta[f"progrpo_{name}"] = value if isinstance(value, str) else json.dumps(value, default=str)
    return meta


def _input_named_in(message: str) -> str:
    for field, name in (("group_size", "group_size"), ("num_steps", "steps"), ("noise_level", "noise_level"),
                        ("dynamics", "dynamics"), ("guidance_scale", "cfg"), ("prune_schedule", "prune_schedule"),
                        ("selection", "selection"), ("height", "height"), ("width", "width"), ("lr", "lr"),
                        ("rank", "rank"), ("alpha", "alpha"), ("iterations", "iterations")):
        if field in message:
            return f"{name}: "
    return ""


def write_lora_file(stem: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None,
                    input_name: str = "name") -> Path:
    """Write ``<stem>.safetensors`` into ComfyUI's loras folder atomically (the stock loader lists it at once)."""
    from safetensors.torch import save_file

    folder = Path(folder_paths.get_folder_paths("loras")[0])
    folder.mkdir(parents=True, exist_ok=True)
    path = resolve_inside(folder, f"{stem}.safetensors", input_name, must_exist=False)
    temp = folder / f".{stem}.safetensors.tmp-{os.getpid()}"
    try:
        save_file({key: value.detach().contiguous().cpu() for key, value in tensors.items()}, str(temp),
                  metadata=dict(metadata or {"progrpo": "1"}))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


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
                io.Float.Input("lr", default=1e-4, min=0.0, max=1.0, step=1e-6, round=1e-8,
                               tooltip="AdamW learning rate of this step."),
                io.Int.Input("rank", default=8, min=1, max=256, tooltip="LoRA rank (must match the lora input)."),
                io.Float.Input("alpha", default=8.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="LoRA alpha (scale alpha / rank; must match the lora input)."),
                io.Int.Input("seed", default=0, min=0, max=2**62, tooltip="Seeds the LoRA init of a fresh LoRA."),
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

        prompts = getattr(rollout, "comfy_prompts", None)
        if prompts is None:
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
                raise ProGRPOConfigError(f"lora: {error}") from None
        options = options_from(training_dtype, gradient_checkpointing, micro_batch_rows, 0)
        session = TrainingSession(adapter, options)
        denoiser = _TrainDenoiser(adapter.patcher, scheduler=getattr(rollout, "comfy_scheduler", "normal"))
        denoiser.prompts = prompts
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
