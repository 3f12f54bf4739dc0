"""ProGRPOExpandedSampler: one prompt's expanded group of stochastic trajectories, pruned at checkpoints.

Thin: it unpacks the sockets into a :class:`progrpo.rollout.RolloutConfig`, builds a
:class:`~.comfy_backend.ComfyDenoiser` on the MODEL (so sampling goes through ComfyUI's own
CFGGuider) and calls :func:`progrpo.rollout.expand_and_prune_rollout`.

One prompt group: the ``positive`` CONDITIONING is the prompt; the group is ``group_size``
trajectories of it. The LATENT input only gives the size (its batch and content are ignored,
every trajectory starts from fresh seeded noise).
"""

from __future__ import annotations

from typing import Any

import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

from progrpo.dynamics import get_dynamics
from progrpo.errors import ProGRPOConfigError
from progrpo.pruning import SELECTIONS, PruneSchedule
from progrpo.rollout import RolloutConfig, expand_and_prune_rollout

from .comfy_backend import ComfyDenoiser
from .input_checks import check_choices, check_numbers
from .model_families import family_of, log_warnings, resolve_dynamics
from .prune_schedule import PruneScheduleType
from .sampling_inputs import check_noise_level, guidance_input, sampling_inputs

#: socket types shared with the reward and plot nodes.
RewardType = io.Custom("PROGRPO_REWARD")
RolloutType = io.Custom("PROGRPO_ROLLOUT")



class _ZeroReward:
    """Stands in when no reward is connected and nothing is pruned: every image scores 0."""

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.zeros(images.shape[0])


class _NoDecodeDenoiser(ComfyDenoiser):
    """A ComfyDenoiser for a latent model without a VAE and without a reward.

    The rollout decodes its final samples for the reward; with neither a VAE nor a reward the
    images are never looked at, so black placeholders spare the user a meaningless error.
    """

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.zeros(latents.shape[0], 3, latents.shape[2], latents.shape[3])


def _seed_max() -> int:
    return 0xFFFFFFFFFFFFFFFF


class ProGRPOExpandedSampler(io.ComfyNode):
    """Expand-and-Prune sampling of one prompt group on a ComfyUI MODEL."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOExpandedSampler",
            display_name="Pro-GRPO Expanded Sampler",
            category="Pro-GRPO/sampling",
            description=(
                "Samples group_size stochastic trajectories of the positive prompt with a GRPO policy dynamic. "
                "With a prune schedule, every checkpoint decodes the clean-sample previews, scores them with the "
                "reward and keeps the most informative subset (Optimal Variance Filtering); the survivors finish."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion or flow MODEL to sample (LoRAs and patches apply)."),
                io.Conditioning.Input("positive", tooltip="The prompt's CONDITIONING; the whole group samples it."),
                io.Conditioning.Input(
                    "negative", tooltip="Negative CONDITIONING for classifier-free guidance (unused when cfg is 1)."
                ),
                io.Latent.Input(
                    "latent",
                    tooltip="Gives the latent size only (e.g. Empty Latent Image); its batch and content are ignored. "
                    "Its channels must match the model's latent format.",
                ),
                *sampling_inputs(training=False),
                io.Int.Input("seed", default=0, min=0, max=_seed_max(), control_after_generate=True,
                             tooltip="Seeds the initial noise and every step's noise (pruning never changes a "
                             "survivor's noise)."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="normal",
                               tooltip="ComfyUI scheduler giving the sigmas (as in KSampler)."),
                PruneScheduleType.Input("prune_schedule", optional=True,
                                        tooltip="Checkpoints step:keep from Pro-GRPO Prune Schedule; leave "
                                        "unconnected to run every trajectory to the end."),
                io.Combo.Input("selection", options=sorted(SELECTIONS), default="ovf", optional=True,
                               tooltip="How a checkpoint keeps its subset: ovf (max reward variance, Pro-GRPO), "
                               "random, topk, or none (keep all; previews are still scored)."),
                RewardType.Input("reward", optional=True,
                                 tooltip="Scores previews and final images; required with a prune schedule."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Decodes previews and survivors; required with a prune schedule or a reward on "
                             "a latent-space model."),
                io.String.Input("prompt_text", default="", multiline=True, optional=True,
                                tooltip="The prompt's text, passed to text-aware rewards (CLIP score, digit "
                                "alignment); may stay empty for image-only rewards."),
                io.Int.Input("max_batch_rows", default=0, min=0, max=4096, optional=True,
                             tooltip="Trajectories per model call and per VAE decode (0: the whole group at once). "
                             "Lower it (e.g. 8) when a large group at a high resolution runs out of memory; results "
                             "change only by rounding."),
                guidance_input(),
            ],
            outputs=[
                io.Latent.Output(display_name="survivors",
                                 tooltip="Final latents of the surviving trajectories (batch = final group size)."),
                RolloutType.Output(display_name="rollout",
                                   tooltip="The rollout record (latents per step, log-probs, preview and final "
                                   "rewards, pruning); feed it to the plot and training nodes."),
                io.Image.Output(display_name="images",
                                tooltip="Decoded survivors (black placeholders when no VAE is connected)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, noise_level: float | None = None, cfg: float | None = None, dynamics: str | None = None,
                        scheduler: str | None = None, selection: str | None = None,
                        guidance: float | None = None) -> bool | str:
        for checked in (check_numbers(cls, cfg=cfg, guidance=guidance), check_noise_level(noise_level),
                        check_choices(cls, dynamics=dynamics, scheduler=scheduler, selection=selection)):
            if checked is not True:
                return checked
        return True

    @classmethod
    def execute(
        cls,
        model: Any,
        positive: list,
        negative: list,
        latent: dict,
        group_size: int,
        steps: int,
        dynamics: str,
        noise_level: float,
        cfg: float,
        seed: int,
        scheduler: str,
        prune_schedule: PruneSchedule | None = None,
        selection: str = "ovf",
        reward: Any | None = None,
        vae: Any | None = None,
        prompt_text: str = "",
        max_batch_rows: int = 0,
        guidance: float = 3.5,
    ) -> io.NodeOutput:
        samples = latent_samples(model, latent)
        channels = int(samples.shape[1])
        latent_space = channels not in (1, 3)
        if prune_schedule is not None:
            if reward is None:
                raise ProGRPOConfigError(
                    "reward: a prune_schedule is connected but no reward; connect a Pro-GRPO Reward Loader (the "
                    "checkpoints score previews with it) or disconnect the schedule."
                )
            try:
                prune_schedule.validate_for(group_size, steps)
            except ProGRPOConfigError as error:
                raise ProGRPOConfigError(f"prune_schedule: {error}") from None
        if reward is not None and latent_space and vae is None:
            raise ProGRPOConfigError(
                "vae: this model samples latents, so previews and survivors need a VAE to be scored; connect the "
                "model's VAE (e.g. from Load VAE / Load Checkpoint)."
            )
        denoiser_class = _NoDecodeDenoiser if (reward is None and vae is None and latent_space) else ComfyDenoiser
        family = family_of(model)
        denoiser = denoiser_class(model, vae=vae, scheduler=scheduler, seed=seed,
                                  guidance=guidance if family.guidance_distilled else None)
        dynamics = resolve_dynamics(dynamics, denoiser.kind)
        log_warnings(model, cfg, has_negative=negative is not None)
        try:
            get_dynamics(dynamics, denoiser.kind)
        except ProGRPOConfigError as error:
            raise ProGRPOConfigError(f"dynamics: {error}") from None
        factor = 1 if vae is None else int(vae.spacial_compression_decode())
        try:
            config = RolloutConfig(
                group_size=group_size, num_steps=steps, dynamics=dynamics,
                noise_level=None if noise_level < 0 else float(noise_level), guidance_scale=float(cfg),
                prune_schedule=prune_schedule, selection=selection,
                height=int(samples.shape[-2]) * factor, width=int(samples.shape[-1]) * factor,
                seed=int(seed) % (2**63), keep_images=True, max_batch_rows=int(max_batch_rows) or None,
            )
        except ProGRPOConfigError as error:
            raise ProGRPOConfigError(f"{_input_named_in(str(error))}{error}") from None
        conditioning = denoiser.conditioning(positive, None if cfg == 1.0 else negative, [prompt_text.strip()])
        bar = comfy.utils.ProgressBar(steps)
        # every update is a cancel point under the server (its global progress hook checks the interrupt flag).
        rollout = expand_and_prune_rollout(
            denoiser, conditioning, reward or _ZeroReward(), config,
            progress=lambda done, total: bar.update_absolute(done, total),
        )
        # the rollout's conditioning rows index this denoiser's prompt table: keep it for the train step
        rollout.comfy_prompts = denoiser.prompts
        rollout.comfy_scheduler = scheduler
        final = rollout.latents[:, -1]
        survivors = {"samples": denoiser.to_comfy_latent(final).cpu()}
        images = rollout.images
        if images is None or (vae is None and latent_space):
            images = torch.zeros(final.shape[0], 3, final.shape[2] * factor, final.shape[3] * factor)
        return io.NodeOutput(survivors, rollout, images.movedim(1, -1).contiguous().float().cpu())


def latent_samples(model: Any, latent: dict) -> torch.Tensor:
    """The LATENT's samples as the stock samplers take them: an all-zero latent of another channel count is
    converted to the model's (``comfy.sample.fix_empty_latent_channels``); then [B, C, H, W], or
    [B, C, 1, H, W] for a model with 5-D latents (Qwen-Image). Raises naming ``latent`` otherwise."""
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    latent_format = model.get_model_object("latent_format")
    channels, video = int(latent_format.latent_channels), int(latent_format.latent_dimensions) == 3
    shape_ok = samples.ndim == 4 or (video and samples.ndim == 5 and samples.shape[2] == 1)
    if not shape_ok or samples.shape[1] != channels:
        expected = f"[B, {channels}, 1, H, W]" if video else f"[B, {channels}, H, W]"
        raise ProGRPOConfigError(
            f"latent: has shape {tuple(samples.shape)} but this model needs {channels} latent channels {expected} "
            "(an all-zero latent of any channel count is converted, as KSampler does); use an Empty Latent node "
            "made for this model (e.g. Empty Latent Image for SD1.x/SDXL, EmptySD3LatentImage for SD3/Flux)."
        )
    return samples


def _input_named_in(message: str) -> str:
    """Prefix naming the node input a progrpo config error is about (its messages name the field)."""
    for field, name in (("group_size", "group_size"), ("num_steps", "steps"), ("noise_level", "noise_level"),
                        ("dynamics", "dynamics"), ("guidance_scale", "cfg"), ("prune_schedule", "prune_schedule"),
                        ("selection", "selection")):
        if field in message:
            return f"{name}: "
    return ""
