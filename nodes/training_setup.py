"""From the Train Loop's sockets and widgets to a ready :class:`progrpo.train.trainer.Trainer`.

The node (:class:`~.train_nodes.ProGRPOTrainLoop`) only unpacks its inputs into :class:`TrainLoopInputs`,
calls :func:`prepare_training` and runs what it returns. Here: where the prompts come from, the LoRA
adapter on a clone of the MODEL, the denoiser every model call of which is a cancel point, and the
TrainConfig (:func:`build_trainer`, the one place that knows the TrainConfig / Trainer API).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.model_management
import folder_paths

from progrpo.errors import ProGRPOConfigError
from progrpo.lora import LoraSettings
from progrpo.pruning import PruneSchedule
from progrpo.rollout import RolloutConfig
from progrpo.train import GRPOConfig, OptimConfig, TrainConfig
from progrpo.train.checkpoint import read_checkpoint_config, resolve_checkpoint
from progrpo.train.distributed import SINGLE_PROCESS
from progrpo.train.precision import loss_scale_for
from progrpo.train.prompts import read_prompts
from progrpo.train.trainer import Trainer

from .comfy_backend import ComfyDenoiser
from .comfy_lora import ComfyLoraAdapter, matched_weight_keys
from .comfy_training import TrainingOptions, TrainingSession, options_from
from .input_errors import relabeled
from .live_view import LiveView, prompt_server
from .model_families import family_of, preset_targets
from .paths import resolve_inside
from .prompt_grid import prompt_lines
from .run_identity import default_run_name, node_run_identity
from .sampling_inputs import check_image_size
from .sampling_setup import check_prune_schedule, policy_dynamics

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: text the rewards see in CONDITIONING mode (no prompt text is known there).
CONDITIONING_PROMPT = "(positive conditioning)"


class TrainDenoiser(ComfyDenoiser):
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


@dataclass(frozen=True)
class TrainLoopInputs:
    """The Train Loop's widget values, by input name (the sockets travel beside them)."""

    group_size: int
    steps: int
    dynamics: str
    noise_level: float
    cfg: float
    width: int
    height: int
    iterations: int
    lr: float
    rank: int
    alpha: float
    checkpoint_every: int
    resume: bool
    run_name: str
    seed: int
    scheduler: str
    prompt_file: str
    negative_prompt: str
    selection: str
    prompts_per_iteration: int
    prompts: str
    training_dtype: str
    gradient_checkpointing: bool
    micro_batch_rows: int
    max_batch_rows: int
    updates_per_rollout: int
    lora_targets: str
    custom_targets: str
    guidance: float
    save_every: int
    keep_last: int
    eval_every: int
    eval_prompts: str

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> TrainLoopInputs:
        """The widget values among ``values`` (e.g. the node's ``locals()``: input name -> value)."""
        return cls(**{field.name: values[field.name] for field in dataclasses.fields(cls)})

    @property
    def options(self) -> TrainingOptions:
        return options_from(self.training_dtype, self.gradient_checkpointing, self.micro_batch_rows,
                            self.max_batch_rows)


@dataclass
class TrainingRun:
    """What :func:`prepare_training` builds: run it with ``with training_context(), run.session:``."""

    trainer: Trainer
    adapter: ComfyLoraAdapter
    denoiser: TrainDenoiser
    session: TrainingSession
    run_name: str
    resume_from: str | None


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


def run_directory(run_name: str) -> Path:
    if not isinstance(run_name, str) or not RUN_NAME.match(run_name):
        raise ProGRPOConfigError(
            f"run_name: {run_name!r} must be 1-100 characters of letters, digits, '_', '-' or '.', starting "
            "with a letter or digit (it names the folder under ComfyUI's output/progrpo)."
        )
    # the name is plain, but the run folder may be a symlink: checkpoints are read back from it on resume.
    return resolve_inside(Path(folder_paths.get_output_directory()) / "progrpo", run_name, "run_name",
                          must_exist=False)


def training_prompts(inputs: TrainLoopInputs, clip: Any | None, positive: list | None,
                     negative: list | None) -> list[str]:
    """The prompt texts to train on: the prompts box or prompt_file (with clip), or one CONDITIONING (positive)."""
    if clip is not None and positive is not None:
        raise ProGRPOConfigError(
            "clip / positive: both are connected; train either on prompt_file (clip) or on one CONDITIONING "
            "(positive), not both."
        )
    if clip is not None and not (inputs.prompt_file or "").strip() and (inputs.prompts or "").strip():
        return prompt_lines(inputs.prompts)
    if clip is not None:
        try:
            return read_prompts(resolve_prompt_file(inputs.prompt_file))
        except ProGRPOConfigError as error:
            raise relabeled(error, input_name="prompt_file") from None
    if positive is not None:
        if inputs.cfg != 1.0 and negative is None:
            raise ProGRPOConfigError(
                "negative: cfg is not 1, so guidance needs a negative CONDITIONING; connect one or set cfg to 1."
            )
        return [CONDITIONING_PROMPT]
    raise ProGRPOConfigError(
        "clip / positive: connect clip (with prompt_file naming a prompt list in ComfyUI's input folder) "
        "or positive (one prompt's CONDITIONING)."
    )


def resumed_targets(run_dir: Path | None, model: Any, targets: tuple[str, ...]) -> tuple[str, ...]:
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


def build_trainer(node: type, inputs: TrainLoopInputs, *, model: Any, reward: Any, clip: Any | None,
                  prune_schedule: PruneSchedule | None, adapter: ComfyLoraAdapter, denoiser: TrainDenoiser,
                  options: TrainingOptions, loss_scale: float, prompts: list[str], dynamics: str,
                  output_dir: Path | None) -> tuple[Trainer, str, Path]:
    """(trainer, run name, run folder): the TrainConfig of the inputs and its Trainer, in one place so a change
    of that API is made here only. An empty run_name is derived from the config. Errors name ``node``'s input."""
    run_name = inputs.run_name
    try:
        identity = node_run_identity(model, reward, output_dir if inputs.resume else None)
        config = TrainConfig(
            prompts=prompts, prompts_per_iteration=inputs.prompts_per_iteration,
            iterations=inputs.iterations, checkpoint_every=inputs.checkpoint_every, keep_last=inputs.keep_last,
            seed=int(inputs.seed), eval_every=inputs.eval_every,
            eval_prompts=(prompt_lines(inputs.eval_prompts, "eval_prompts") if (inputs.eval_prompts or "").strip()
                          else None),
            negative_prompt=(inputs.negative_prompt if clip is not None and inputs.cfg != 1.0 else None),
            output_dir=str(output_dir or "progrpo"),
            rollout=RolloutConfig(
                group_size=inputs.group_size, num_steps=inputs.steps, dynamics=dynamics,
                noise_level=None if inputs.noise_level < 0 else float(inputs.noise_level),
                guidance_scale=float(inputs.cfg), prune_schedule=prune_schedule, selection=inputs.selection,
                height=inputs.height, width=inputs.width,
                keep_images=True, max_batch_rows=options.rollout_rows,  # survivors for the live preview
            ),
            lora=LoraSettings(rank=inputs.rank, alpha=inputs.alpha, target_modules=adapter.targets),
            optim=OptimConfig(lr=inputs.lr),
            grpo=GRPOConfig(micro_batch_rows=options.micro_batch_rows, loss_scale=loss_scale,
                            updates_per_rollout=inputs.updates_per_rollout),
        )
    except ProGRPOConfigError as error:
        raise relabeled(error, node=node) from None
    if output_dir is None:
        run_name = default_run_name(config, identity)
        output_dir = run_directory(run_name)
        config = dataclasses.replace(config, output_dir=str(output_dir))
    # One process: a ComfyUI server trains on the model it has loaded and never joins a
    # torch.distributed job, whatever WORLD_SIZE its environment holds (multi-GPU: the CLI).
    trainer = Trainer(config, identity=identity, denoiser=denoiser, reward=reward, adapter=adapter,
                      distributed=SINGLE_PROCESS)
    return trainer, run_name, output_dir


def training_denoiser(inputs: TrainLoopInputs, adapter: ComfyLoraAdapter, model: Any, vae: Any, clip: Any | None,
                      positive: list | None, negative: list | None) -> TrainDenoiser:
    """The denoiser on the adapter's clone (``guidance`` only reaches guidance-distilled models)."""
    denoiser = TrainDenoiser(adapter.patcher, vae=vae, clip=clip, scheduler=inputs.scheduler, seed=inputs.seed,
                             guidance=inputs.guidance if family_of(model).guidance_distilled else None)
    if positive is not None:
        denoiser.fixed = (positive, None if inputs.cfg == 1.0 else negative)
    return denoiser


def prepare_training(node: type, inputs: TrainLoopInputs, *, model: Any, vae: Any, reward: Any, clip: Any | None,
                     positive: list | None, negative: list | None, prune_schedule: PruneSchedule | None,
                     unique_id: str | None) -> TrainingRun:
    """Checks the inputs and builds the run: adapter on a clone of ``model``, denoiser, session, trainer."""
    options = inputs.options
    output_dir = run_directory(inputs.run_name) if inputs.run_name else None  # empty: derived from the settings
    prompts = training_prompts(inputs, clip, positive, negative)
    check_prune_schedule(prune_schedule, inputs.group_size, inputs.steps)
    targets = resumed_targets(output_dir if inputs.resume else None, model,
                              preset_targets(model, inputs.lora_targets, inputs.custom_targets))
    adapter = ComfyLoraAdapter(model, rank=inputs.rank, alpha=inputs.alpha, targets=targets, seed=inputs.seed)
    denoiser = training_denoiser(inputs, adapter, model, vae, clip, positive, negative)
    dynamics = policy_dynamics(model, inputs.dynamics, denoiser.kind, inputs.cfg,
                               has_negative=negative is not None or clip is not None)
    check_image_size(vae, inputs.width, inputs.height)
    session = TrainingSession(adapter, options, reward)
    loss_scale = loss_scale_for(session.compute_dtype, denoiser.latent_shape(inputs.height, inputs.width))
    trainer, run_name, output_dir = build_trainer(
        node, inputs, model=model, reward=reward, clip=clip, prune_schedule=prune_schedule, adapter=adapter,
        denoiser=denoiser, options=options, loss_scale=loss_scale, prompts=prompts, dynamics=dynamics,
        output_dir=output_dir,
    )
    latest = output_dir / "checkpoints" / "latest"
    resume_from = "latest" if inputs.resume and latest.is_file() else None
    denoiser.live = LiveView(inputs.iterations, inputs.steps, unique_id, prompt_server())
    return TrainingRun(trainer, adapter, denoiser, session, run_name, resume_from)
