"""From the Expanded Sampler's sockets to a denoiser and a RolloutConfig, and from its rollout to its outputs.

Also the checks the Train Loop shares with it (prune schedule against the group, dynamics against the model).
"""

from __future__ import annotations

from typing import Any

import comfy.sample
import torch

from progrpo.dynamics import get_dynamics
from progrpo.errors import ProGRPOConfigError
from progrpo.pruning import PruneSchedule
from progrpo.rollout import Rollout, RolloutConfig

from .comfy_backend import ComfyDenoiser
from .input_errors import relabeled
from .model_families import family_of, log_warnings, resolve_dynamics
from .sockets import ComfyRollout


class ZeroReward:
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


def check_prune_schedule(prune_schedule: PruneSchedule | None, group_size: int, steps: int) -> None:
    """The connected schedule must fit the group and the step count; the error names prune_schedule."""
    if prune_schedule is None:
        return
    try:
        prune_schedule.validate_for(group_size, steps)
    except ProGRPOConfigError as error:
        raise relabeled(error, input_name="prune_schedule") from None


def policy_dynamics(model: Any, dynamics: str, kind: str, cfg: float, has_negative: bool) -> str:
    """The dynamic to sample with (``auto`` resolved for the model's ``kind``), checked against the model;
    logs the model family's warnings about the settings. Errors name the dynamics input."""
    dynamics = resolve_dynamics(dynamics, kind)
    log_warnings(model, cfg, has_negative=has_negative)
    try:
        get_dynamics(dynamics, kind)
    except ProGRPOConfigError as error:
        raise relabeled(error, input_name="dynamics") from None
    return dynamics


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


def check_scoring_sockets(prune_schedule: PruneSchedule | None, reward: Any | None, vae: Any | None,
                          latent_space: bool, group_size: int, steps: int) -> None:
    """A prune schedule needs a reward and must fit the group; a reward on a latent-space model needs a VAE.
    Errors name the input."""
    if prune_schedule is not None and reward is None:
        raise ProGRPOConfigError(
            "reward: a prune_schedule is connected but no reward; connect a Pro-GRPO Reward Loader (the "
            "checkpoints score previews with it) or disconnect the schedule."
        )
    check_prune_schedule(prune_schedule, group_size, steps)
    if reward is not None and latent_space and vae is None:
        raise ProGRPOConfigError(
            "vae: this model samples latents, so previews and survivors need a VAE to be scored; connect the "
            "model's VAE (e.g. from Load VAE / Load Checkpoint)."
        )


def sampler_denoiser(model: Any, vae: Any | None, reward: Any | None, latent_space: bool, scheduler: str,
                     seed: int, guidance: float) -> ComfyDenoiser:
    """The denoiser of one Expanded Sampler run (``guidance`` only reaches guidance-distilled models)."""
    denoiser_class = _NoDecodeDenoiser if (reward is None and vae is None and latent_space) else ComfyDenoiser
    return denoiser_class(model, vae=vae, scheduler=scheduler, seed=seed,
                          guidance=guidance if family_of(model).guidance_distilled else None)


def sampler_rollout_config(node: type, samples: torch.Tensor, factor: int, *, group_size: int, steps: int,
                           dynamics: str, noise_level: float, cfg: float, prune_schedule: PruneSchedule | None,
                           selection: str, seed: int, max_batch_rows: int) -> RolloutConfig:
    """The RolloutConfig of the sampler's inputs (image size from the latent times the VAE's ``factor``);
    its errors name ``node``'s input."""
    try:
        return RolloutConfig(
            group_size=group_size, num_steps=steps, dynamics=dynamics,
            noise_level=None if noise_level < 0 else float(noise_level), guidance_scale=float(cfg),
            prune_schedule=prune_schedule, selection=selection,
            height=int(samples.shape[-2]) * factor, width=int(samples.shape[-1]) * factor,
            seed=int(seed) % (2**63), keep_images=True, max_batch_rows=int(max_batch_rows) or None,
        )
    except ProGRPOConfigError as error:
        raise relabeled(error, node=node) from None


def sampler_outputs(denoiser: ComfyDenoiser, rollout: Rollout, scheduler: str, factor: int,
                    decoded: bool) -> tuple[dict, ComfyRollout, torch.Tensor]:
    """(survivors LATENT, the rollout with its ComfyUI extras, IMAGE [S, H, W, 3]); black images unless
    ``decoded`` (a VAE decoded them, or the model samples pixels)."""
    final = rollout.latents[:, -1]
    survivors = {"samples": denoiser.to_comfy_latent(final).cpu()}
    images = rollout.images
    if images is None or not decoded:
        images = torch.zeros(final.shape[0], 3, final.shape[2] * factor, final.shape[3] * factor)
    # the rollout's conditioning rows index this denoiser's prompt table: the train step needs both
    record = ComfyRollout.wrap(rollout, denoiser.prompts, scheduler)
    return survivors, record, images.movedim(1, -1).contiguous().float().cpu()
