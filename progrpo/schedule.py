"""Noise schedules of one sampling run, in the shared ``x = alpha * x0 + sigma * eps`` form.

Both families the product supports are written in one coordinate system so that every step
dynamic is one formula:

* rectified flow (SD3, Flux, flow UNets): ``alpha = 1 - sigma``; the network predicts the
  velocity ``v = eps - x0``;
* variance preserving diffusion (SD1.x, SDXL, DDPM/DDIM): ``alpha = sqrt(alphabar_t)``,
  ``sigma = sqrt(1 - alphabar_t)``; the network predicts eps, v or the sample.

A schedule stores, per step ``i`` (0 = the noisiest), the coefficients of the state the step
starts from and of the state it moves to. DDIM defines its target as ``t - T/N`` rather than
the next timestep, so the two are stored separately instead of as one chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .errors import ProGRPOConfigError

#: prediction types a denoiser may produce, by schedule kind.
PREDICTION_TYPES = {"flow": ("flow",), "vp": ("epsilon", "v_prediction", "sample")}


@dataclass(frozen=True)
class StepCoefficients:
    """Coefficients of one or several steps; every tensor has shape [B] (one entry per row).

    ``sigma_cap`` is Flow-GRPO's replacement for sigma in ``sqrt(sigma / (1 - sigma))`` at
    sigma == 1 (the schedule's second sigma), only meaningful for flow schedules.
    """

    alpha: torch.Tensor
    sigma: torch.Tensor
    alpha_next: torch.Tensor
    sigma_next: torch.Tensor
    sigma_cap: torch.Tensor
    kind: str
    prediction_type: str
    clip_sample_range: float | None = None


@dataclass(frozen=True)
class Schedule:
    """Per-step coefficients of a sampling run with ``num_steps`` steps.

    Shapes: ``alpha, sigma, alpha_next, sigma_next, timesteps``: [N] float32 (timesteps are what
    the network receives, e.g. ``1000 * sigma`` for SD3 or the integer DDPM step for SD1.x).
    ``kind`` is ``"flow"`` or ``"vp"``; ``prediction_type`` one of ``PREDICTION_TYPES[kind]``.
    ``clip_sample_range`` reproduces diffusers' ``clip_sample`` (x0 is clamped, eps is not).
    """

    alpha: torch.Tensor
    sigma: torch.Tensor
    alpha_next: torch.Tensor
    sigma_next: torch.Tensor
    timesteps: torch.Tensor
    kind: str
    prediction_type: str
    clip_sample_range: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in PREDICTION_TYPES:
            raise ProGRPOConfigError(
                f"Schedule kind {self.kind!r} is unknown; use one of {sorted(PREDICTION_TYPES)}."
            )
        if self.prediction_type not in PREDICTION_TYPES[self.kind]:
            raise ProGRPOConfigError(
                f"prediction_type {self.prediction_type!r} does not fit a {self.kind!r} schedule; "
                f"use one of {PREDICTION_TYPES[self.kind]}."
            )
        lengths = {t.shape for t in (self.alpha, self.sigma, self.alpha_next, self.sigma_next, self.timesteps)}
        if len(lengths) != 1 or len(next(iter(lengths))) != 1:
            raise ProGRPOConfigError(
                "Schedule tensors alpha, sigma, alpha_next, sigma_next and timesteps must all be 1-D "
                f"with one entry per step; got shapes {sorted(lengths)}."
            )

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def sigma_cap(self) -> torch.Tensor:
        """Scalar used in place of sigma == 1 in Flow-GRPO's ``sqrt(sigma/(1-sigma))``."""
        if self.num_steps > 1:
            return self.sigma[1]
        return self.sigma_next[0]

    def coefficients(self, step_index: torch.Tensor | int, device: torch.device | None = None) -> StepCoefficients:
        """Coefficients for ``step_index`` (int, or LongTensor[B] for rows at different steps)."""
        index = torch.as_tensor(step_index, dtype=torch.long).reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_steps):
            raise ProGRPOConfigError(
                f"step_index {index.tolist()} is outside this schedule's 0..{self.num_steps - 1}."
            )

        def pick(values: torch.Tensor) -> torch.Tensor:
            return values[index].to(device=device or values.device, dtype=torch.float32)

        return StepCoefficients(
            alpha=pick(self.alpha),
            sigma=pick(self.sigma),
            alpha_next=pick(self.alpha_next),
            sigma_next=pick(self.sigma_next),
            sigma_cap=self.sigma_cap.to(device=device or self.sigma.device, dtype=torch.float32).expand(index.numel()),
            kind=self.kind,
            prediction_type=self.prediction_type,
            clip_sample_range=self.clip_sample_range,
        )

    def timesteps_for(self, step_index: torch.Tensor | int) -> torch.Tensor:
        return self.timesteps[torch.as_tensor(step_index, dtype=torch.long).reshape(-1)]


def flow_schedule(sigmas: torch.Tensor, timesteps: torch.Tensor) -> Schedule:
    """Rectified-flow schedule from the N+1 sigmas (last one 0) and the N network timesteps."""
    sigmas = sigmas.to(torch.float32)
    if sigmas.ndim != 1 or sigmas.shape[0] != timesteps.shape[0] + 1:
        raise ProGRPOConfigError(
            f"flow_schedule needs N+1 sigmas for N timesteps; got {tuple(sigmas.shape)} sigmas and "
            f"{tuple(timesteps.shape)} timesteps."
        )
    return Schedule(
        alpha=1.0 - sigmas[:-1],
        sigma=sigmas[:-1].clone(),
        alpha_next=1.0 - sigmas[1:],
        sigma_next=sigmas[1:].clone(),
        timesteps=timesteps.to(torch.float32),
        kind="flow",
        prediction_type="flow",
    )


def _flow_from_scheduler(scheduler: Any, num_steps: int, **kwargs: Any) -> Schedule:
    scheduler.set_timesteps(num_steps, device="cpu", **kwargs)
    return flow_schedule(scheduler.sigmas.detach().cpu(), scheduler.timesteps.detach().cpu())


def _vp_from_scheduler(scheduler: Any, num_steps: int, **kwargs: Any) -> Schedule:
    """DDIM coefficients for any scheduler trained on ``alphas_cumprod`` (DDIM, DDPM, PNDM, ...)."""
    from diffusers import DDIMScheduler

    ddim = scheduler if isinstance(scheduler, DDIMScheduler) else DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(num_steps, device="cpu")
    if getattr(ddim.config, "thresholding", False):
        raise ProGRPOConfigError(
            "scheduler.config.thresholding=True (dynamic thresholding) is not supported by the "
            "log-prob sampler; load the scheduler with thresholding=False."
        )
    alphas_cumprod = ddim.alphas_cumprod.to(torch.float32)
    timesteps = ddim.timesteps.to(torch.long)
    offset = ddim.config.num_train_timesteps // ddim.num_inference_steps
    prev = timesteps - offset
    final = ddim.final_alpha_cumprod.to(torch.float32)
    alphabar = alphas_cumprod[timesteps]
    alphabar_next = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], final)
    clip = float(ddim.config.clip_sample_range) if ddim.config.clip_sample else None
    return Schedule(
        alpha=alphabar.sqrt(),
        sigma=(1.0 - alphabar).sqrt(),
        alpha_next=alphabar_next.sqrt(),
        sigma_next=(1.0 - alphabar_next).sqrt(),
        timesteps=timesteps.to(torch.float32),
        kind="vp",
        prediction_type=ddim.config.prediction_type,
        clip_sample_range=clip,
    )


#: scheduler families -> builder; a builder takes (scheduler, num_steps, **set_timesteps kwargs).
SCHEDULE_BUILDERS: dict[str, Callable[..., Schedule]] = {
    "flow": _flow_from_scheduler,
    "vp": _vp_from_scheduler,
}


def schedule_family(scheduler: Any) -> str:
    """``"flow"`` for flow-matching schedulers, ``"vp"`` for those defined by ``alphas_cumprod``."""
    if hasattr(scheduler, "alphas_cumprod"):
        return "vp"
    if "FlowMatch" in type(scheduler).__name__:
        return "flow"
    raise ProGRPOConfigError(
        f"scheduler {type(scheduler).__name__} is neither a flow-matching scheduler nor one with "
        "alphas_cumprod; use FlowMatchEulerDiscreteScheduler or DDIMScheduler."
    )


def schedule_from_scheduler(scheduler: Any, num_steps: int, **kwargs: Any) -> Schedule:
    """Build a :class:`Schedule` from a diffusers scheduler as its pipeline would set it up.

    ``kwargs`` go to ``set_timesteps`` (e.g. ``mu`` for Flux's dynamic shifting, or ``sigmas``).
    """
    if int(num_steps) < 1:
        raise ProGRPOConfigError(f"num_steps={num_steps} must be >= 1.")
    return SCHEDULE_BUILDERS[schedule_family(scheduler)](scheduler, int(num_steps), **kwargs)
