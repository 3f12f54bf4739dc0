"""The Train Loop's inputs (names, defaults, ranges, tooltips and their order are stored in saved workflows).

UI-format workflows store widget values by position: new inputs go last, and nothing here is reordered.
"""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from progrpo.pruning import SELECTIONS

from .comfy_training import lora_target_inputs, training_option_inputs, updates_per_rollout_input
from .sampling_inputs import guidance_input, image_size_inputs, sampling_inputs, scheduler_input, seed_input
from .sockets import PruneScheduleType, RewardType


def lora_inputs(lr_tooltip: str, rank_tooltip: str, alpha_tooltip: str) -> list[Any]:
    """lr, rank, alpha: the LoRA and its optimiser (Train Loop and Train Step; their tooltips differ)."""
    return [
        io.Float.Input("lr", default=1e-4, min=0.0, max=1.0, step=1e-6, round=1e-8, tooltip=lr_tooltip),
        io.Int.Input("rank", default=8, min=1, max=256, tooltip=rank_tooltip),
        io.Float.Input("alpha", default=8.0, min=0.0, max=1024.0, step=0.5, tooltip=alpha_tooltip),
    ]


def _run_inputs() -> list[Any]:
    """iterations, lr, rank, alpha, checkpoint_every, resume, run_name, seed, scheduler."""
    return [
        io.Int.Input("iterations", default=100, min=1, max=1000000,
                     tooltip="Rollout + update rounds (one optimiser step each), in all, resumed ones "
                     "included."),
        *lora_inputs("AdamW learning rate of the LoRA weights.", "LoRA rank.",
                     "LoRA alpha; the update is scaled by alpha / rank."),
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
        seed_input("Seeds prompt choice, noise, LoRA init: the same seed and settings give the same run."),
        scheduler_input(),
    ]


def _prompt_inputs() -> list[Any]:
    """Where the prompts come from (clip + prompt_file / prompts, or positive), the pruning, prompts per iteration."""
    return [
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
    ]


def _saving_inputs() -> list[Any]:
    """save_every, keep_last, eval_every, eval_prompts."""
    return [
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
    ]


def train_loop_inputs() -> list[Any]:
    """Every input of the Train Loop, in its stored order."""
    return [
        io.Model.Input("model", tooltip="The MODEL to train a LoRA for (upstream LoRAs and patches stay "
                       "in effect; it is never modified)."),
        io.Vae.Input("vae", tooltip="Decodes survivors and previews for the reward (the model's VAE)."),
        RewardType.Input("reward", tooltip="What to maximise: a Pro-GRPO Reward Loader / Combine."),
        *sampling_inputs(training=True),
        *image_size_inputs(),
        *_run_inputs(),
        *_prompt_inputs(),
        *training_option_inputs(),
        updates_per_rollout_input(),
        *lora_target_inputs(),
        guidance_input(),
        *_saving_inputs(),
    ]
