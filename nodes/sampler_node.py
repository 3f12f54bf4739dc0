"""ProGRPOSampler: a ComfyUI SAMPLER stepping with a progrpo policy dynamic (for SamplerCustomAdvanced).

ComfyUI's k-diffusion samplers see the model as ``denoised = model(x, sigma)`` in its own state
(``x0 + s eps`` for eps/v models, ``(1 - s) x0 + s eps`` for flow models). Each step maps the
state into progrpo's coordinates with the functions :class:`~.comfy_backend.ComfyDenoiser` uses
(:mod:`progrpo.denoisers.base`'s k-diffusion ones, ``schedule_from_sigmas``), takes
:func:`progrpo.dynamics.policy_step` and maps back. With
``ode`` this is ComfyUI's Euler sampler, step for step.
"""

from __future__ import annotations

from typing import Any

import comfy.samplers
import torch
from comfy_api.latest import io

from progrpo.denoisers.base import from_k_diffusion_state, policy_prediction, to_k_diffusion_state
from progrpo.dynamics import DYNAMICS, get_dynamics, policy_step
from progrpo.errors import ProGRPOConfigError

from .comfy_backend import schedule_from_sigmas, schedule_kind
from .input_checks import check_choices
from .input_errors import relabeled
from .sampling_inputs import check_noise_level


def sample_policy(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                  callback: Any = None, disable: bool | None = None, dynamics: str = "ode",
                  noise_level: float = -1.0) -> torch.Tensor:
    """k-diffusion style sample function: ``x`` is the noised start, returns the final state."""
    extra_args = {} if extra_args is None else extra_args
    kind = schedule_kind(model.inner_model.inner_model.model_sampling)
    try:
        spec = get_dynamics(dynamics, kind)
    except ProGRPOConfigError as error:  # only here is the model known: name the node input to change
        raise relabeled(error, input_name="dynamics") from None
    level = spec.default_noise_level if noise_level < 0 else float(noise_level)
    schedule = schedule_from_sigmas(kind, sigmas)
    # the seed ComfyUI passes to samplers: reproducible per queue, independent of the global RNG.
    generator = torch.Generator().manual_seed(int(extra_args.get("seed", 0)) % (2**63))
    rows = x.shape[0]
    s_in = x.new_ones([rows])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        state = from_k_diffusion_state(kind, x.float(), sigma.float())
        output = policy_prediction(kind, state, denoised.float(), sigma.float())
        noise = torch.randn(state.shape, generator=generator).to(state.device)
        coeffs = schedule.coefficients(torch.full((rows,), i), state.device)
        nxt = policy_step(dynamics, output, state, coeffs, level, noise=noise).next_sample
        x = to_k_diffusion_state(kind, nxt, sigma_next.float()).to(x.dtype)
    return x


class ProGRPOSampler(io.ComfyNode):
    """A SAMPLER for SamplerCustomAdvanced that steps with a Pro-GRPO policy dynamic."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOSampler",
            display_name="Pro-GRPO Sampler",
            category="Pro-GRPO/sampling",
            description="The stochastic dynamic Pro-GRPO trains with, as a SAMPLER for SamplerCustomAdvanced "
            "(e.g. to look at what the policy samples). ode = ComfyUI's Euler.",
            inputs=[
                io.Combo.Input("dynamics", options=sorted(DYNAMICS), default="cps",
                               tooltip="flow_sde / dance_sde need a flow model; cps, ddim, ode work on both."),
                io.Float.Input("noise_level", default=-1.0, min=-1.0, max=10.0, step=0.01,
                               tooltip="The dynamic's noise knob; -1 takes its default, 0 is deterministic."),
            ],
            outputs=[io.Sampler.Output(display_name="sampler", tooltip="Connect to SamplerCustomAdvanced.")],
        )

    @classmethod
    def validate_inputs(cls, noise_level: float | None = None, dynamics: str | None = None) -> bool | str:
        checked = check_choices(cls, dynamics=dynamics)  # ComfyUI does not check V3 combo values
        return check_noise_level(noise_level) if checked is True else checked

    @classmethod
    def execute(cls, dynamics: str, noise_level: float) -> io.NodeOutput:
        if dynamics not in DYNAMICS:
            raise ProGRPOConfigError(f"dynamics: {dynamics!r} is unknown; use one of {sorted(DYNAMICS)}.")
        sampler = comfy.samplers.KSAMPLER(sample_policy, extra_options={"dynamics": dynamics,
                                                                        "noise_level": float(noise_level)})
        return io.NodeOutput(sampler)
