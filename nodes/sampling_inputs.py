"""Inputs the sampling and training nodes share (same names, ranges and tooltips everywhere)."""

from __future__ import annotations

from typing import Any

import comfy.samplers
from comfy_api.latest import io

from progrpo.dynamics import DYNAMICS
from progrpo.errors import ProGRPOConfigError

from .input_checks import check_choices, check_numbers, number_problem
from .model_families import AUTO_DYNAMICS

DEFAULT_DYNAMICS = AUTO_DYNAMICS  # flow_sde on flow models, ddim on noise-prediction models
#: the largest seed any node takes: ComfyUI's own (KSampler's noise_seed), so every seed a saved workflow
#: holds stays valid; progrpo folds it where its generators need less (``seed % 2**63``).
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def seed_input(tooltip: str, control_after_generate: bool | None = False) -> Any:
    """The ``seed`` input (0 to :data:`SEED_MAX`); ``control_after_generate`` as each node has always had it."""
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=control_after_generate,
                        tooltip=tooltip)


def scheduler_input() -> Any:
    """The ``scheduler`` of the nodes that sample through :class:`~.comfy_backend.ComfyDenoiser`."""
    return io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="normal",
                          tooltip="ComfyUI scheduler giving the sigmas (as in KSampler).")


def sampling_inputs(training: bool) -> list:
    """group_size, steps, dynamics, noise_level, cfg; ``training`` adds what matters for a policy gradient."""
    trained = " Must be > 0 to train." if training else ""
    return [
        io.Int.Input("group_size", default=8, min=2, max=256,
                     tooltip="Trajectories per prompt at the start (G_max); at least 2."),
        io.Int.Input("steps", default=10, min=1, max=1000, tooltip="Sampling steps T per trajectory."),
        io.Combo.Input("dynamics", options=[DEFAULT_DYNAMICS, *sorted(DYNAMICS)], default=DEFAULT_DYNAMICS,
                       tooltip="Step dynamic: auto picks flow_sde (Flow-GRPO) on flow models (SD3, Flux, Qwen-Image, "
                       "...) and ddim (DDPO) on SD1.x/SDXL; flow_sde / dance_sde need a flow model; cps, ddim and "
                       "ode work on both; ode is deterministic (no policy gradient)."),
        io.Float.Input("noise_level", default=-1.0, min=-1.0, max=10.0, step=0.01,
                       tooltip="The dynamic's noise knob; -1 takes the dynamic's default, 0 is deterministic." + trained),
        io.Float.Input("cfg", default=4.5, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance scale" + (" while sampling and training" if training else "")
                       + "; 1 turns the negative branch off."),
    ]


def guidance_input() -> Any:
    """The optional ``guidance`` input: the guidance strength a guidance-distilled model takes as an input."""
    return io.Float.Input("guidance", default=3.5, min=0.0, max=100.0, step=0.1, round=0.01, optional=True,
                          tooltip="Guidance strength for guidance-distilled models (Flux.1-dev, Flux.2), set on "
                          "the conditioning as the FluxGuidance node does (a value FluxGuidance already set wins); "
                          "keep cfg at 1 for them. Other models ignore it.")


def check_noise_level(noise_level: float | None) -> bool | str:
    """Queue-time check of the one widget whose range (-1 or >= 0) a min/max cannot express.

    Declaring it in validate_inputs turns ComfyUI's own range check off, so the whole range is checked here.
    """
    problem = number_problem("noise_level", noise_level, -1.0, 10.0)
    if problem:
        return problem
    if noise_level is not None and noise_level < 0 and noise_level != -1:
        return f"noise_level={noise_level}: use -1 for the dynamic's default or a value >= 0."
    return True


def image_size_inputs() -> list:
    """width and height in pixels (checked against the VAE by :func:`check_image_size`)."""
    return [
        io.Int.Input("width", default=512, min=8, max=4096, step=8,
                     tooltip="Image width in pixels (a multiple of the VAE's downscale factor)."),
        io.Int.Input("height", default=512, min=8, max=4096, step=8,
                     tooltip="Image height in pixels (a multiple of the VAE's downscale factor)."),
    ]


def check_image_size(vae: Any, width: int, height: int) -> int:
    """The VAE's downscale factor; raises naming width/height when a size is not a multiple of it."""
    factor = int(vae.spacial_compression_decode())
    for name, size in (("width", width), ("height", height)):
        if size % factor:
            raise ProGRPOConfigError(
                f"{name}: {size} is not a multiple of the VAE's downscale factor {factor}; use "
                f"{max(factor, size // factor * factor)}."
            )
    return factor


def prompt_list_inputs(prompts_tooltip: str) -> list:
    """clip, vae, prompts (in this order): the text-to-image inputs of the Prompt Grid and Evaluation nodes."""
    return [
        io.Clip.Input("clip", tooltip="Encodes the prompts."),
        io.Vae.Input("vae", tooltip="Decodes the samples."),
        io.String.Input("prompts", default="", multiline=True, tooltip=prompts_tooltip),
    ]


def grid_sampling_inputs() -> list:
    """samples_per_prompt, width, height, steps, cfg, sampler_name, scheduler, seed, negative_prompt (in this order):
    the stock-sampler settings of the Prompt Grid and Evaluation nodes."""
    return [
        io.Int.Input("samples_per_prompt", default=8, min=1, max=64, tooltip="Images per prompt."),
        *image_size_inputs(),
        io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps."),
        io.Float.Input("cfg", default=4.5, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance scale (1: no negative branch)."),
        io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                       tooltip="ComfyUI sampler, as in KSampler."),
        io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="simple",
                       tooltip="ComfyUI scheduler, as in KSampler."),
        seed_input("Noise seed; every prompt starts from this seed's noise."),
        io.String.Input("negative_prompt", default="", tooltip="Negative prompt for CFG."),
    ]


def check_grid_sampling(node: type, cfg: float | None, sampler_name: str | None,
                        scheduler: str | None) -> bool | str:
    """Queue-time check of :func:`grid_sampling_inputs`' cfg (NaN passes ComfyUI's range check) and combos."""
    checked = check_numbers(node, cfg=cfg)
    return check_choices(node, sampler_name=sampler_name, scheduler=scheduler) if checked is True else checked
