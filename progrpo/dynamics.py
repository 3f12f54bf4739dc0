"""Stochastic sampling steps that return Gaussian log-probs: the policy of diffusion GRPO.

Every dynamic maps the network output at one step to a Gaussian ``N(mean, std^2 I)`` over the
next latent, samples from it (or takes a GIVEN next latent, as training re-evaluates stored
transitions) and returns its log-density. All arithmetic is float32 whatever the model dtype
(Flow-GRPO found bf16 overflows in the mean).

Coordinates follow :mod:`progrpo.schedule`: ``x = alpha * x0 + sigma * eps``; a step moves from
``(alpha, sigma)`` to ``(alpha_next, sigma_next)``. Dynamics (``noise_level`` meaning in brackets):

* ``flow_sde`` (Flow-GRPO, ``a``): Euler-Maruyama of the marginal-preserving reverse SDE with
  diffusion ``s = a*sqrt(sigma/(1-sigma))``; mean ``x + dt*(v + s^2/(2 sigma) * eps_hat)``,
  std ``s*sqrt(|dt|)``. Flow schedules only.
* ``dance_sde`` (DanceGRPO, ``eta``): the same drift with a constant diffusion ``s = eta``.
* ``cps`` (coefficient-preserving, ``eta``): std ``sigma_next*sin(eta*pi/2)``, mean
  ``alpha_next*x0_hat + sqrt(sigma_next^2 - std^2)*eps_hat``: the sample keeps exactly the signal
  and noise coefficients of the next state.
* ``ddim`` (DDPO/DanceGRPO on SD, ``eta``): DDIM with ``std = eta * posterior std``.
* ``ode`` (deterministic): Euler for flow, DDIM(eta=0) for diffusion; log-prob 0.

At ``noise_level == 0`` every dynamic reduces to the deterministic sampler of its schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ProGRPOConfigError
from .schedule import StepCoefficients

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class StepOutput:
    """Result of one policy step for B rows (all float32).

    ``next_sample``, ``mean``, ``x0_pred``: [B, ...] like the input sample; ``log_prob``: [B];
    ``std``: [B] (0 for deterministic steps).
    """

    next_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    x0_pred: torch.Tensor


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-row values [B] to broadcast against [B, ...]."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def predicted_x0_and_eps(
    model_output: torch.Tensor, sample: torch.Tensor, coeffs: StepCoefficients
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean-sample and noise predictions ``(x0_hat, eps_hat)`` [B, ...] from the network output.

    ``x0_hat`` is the one-step jump to the end of the trajectory that Pro-GRPO previews. With
    ``clip_sample_range`` x0 is clamped and eps kept, exactly as diffusers' DDIM does.
    """
    alpha, sigma = _rows(coeffs.alpha, sample), _rows(coeffs.sigma, sample)
    prediction = coeffs.prediction_type
    if prediction == "flow":
        x0, eps = sample - sigma * model_output, sample + (1.0 - sigma) * model_output
    elif prediction == "epsilon":
        eps = model_output
        x0 = (sample - sigma * eps) / alpha
    elif prediction == "v_prediction":
        x0 = alpha * sample - sigma * model_output
        eps = alpha * model_output + sigma * sample
    elif prediction == "sample":
        x0 = model_output
        eps = (sample - alpha * x0) / sigma
    else:
        raise ProGRPOConfigError(
            f"prediction_type {prediction!r} is unknown; use flow, epsilon, v_prediction or sample."
        )
    if coeffs.clip_sample_range is not None:
        x0 = x0.clamp(-coeffs.clip_sample_range, coeffs.clip_sample_range)
    return x0, eps


def gaussian_log_prob(value: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log-density of ``N(mean, std^2 I)`` at ``value``, AVERAGED over the non-batch dims -> [B].

    Averaging (not summing) keeps one step's log-ratio O(1) whatever the latent size, so a clip
    range like 1e-4 means the same at 32x32 and 128x128 (Flow-GRPO's convention); the ratio is
    the geometric mean of per-dimension density ratios. Rows with ``std == 0`` (deterministic
    steps) get log-prob 0: a point mass has no density and such steps are never trained.
    """
    value, mean, std = value.float(), mean.float(), std.float()
    stochastic = std > 0
    safe_std = torch.where(stochastic, std, torch.ones_like(std))
    z = (value - mean) / _rows(safe_std, value)
    per_dim = -0.5 * z.square() - _rows(safe_std.log(), value) - _HALF_LOG_TWO_PI
    log_prob = per_dim.flatten(1).mean(dim=1)
    return torch.where(stochastic, log_prob, torch.zeros_like(log_prob))


def gaussian_kl_same_std(mean_a: torch.Tensor, mean_b: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_a, std^2 I) || N(mean_b, std^2 I)) averaged over non-batch dims -> [B].

    The reference policy (LoRA disabled) shares the step's std, so the KL is the scaled squared
    distance of the means; deterministic rows (std 0) give 0.
    """
    stochastic = std > 0
    safe_std = torch.where(stochastic, std, torch.ones_like(std)).float()
    kl = ((mean_a.float() - mean_b.float()).square() / (2.0 * _rows(safe_std, mean_a).square())).flatten(1).mean(1)
    return torch.where(stochastic, kl, torch.zeros_like(kl))


# --- the dynamics: each returns (mean [B,...], std [B]) ---------------------------------------

DynamicsFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, StepCoefficients, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor],
]


def _flow_velocity(model_output: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, coeffs: StepCoefficients) -> torch.Tensor:
    # Use the raw velocity when the network predicts it, so noise 0 is bit-for-bit diffusers' Euler.
    return model_output if coeffs.prediction_type == "flow" else eps - x0


def _reverse_sde(sample, model_output, x0, eps, coeffs, diffusion):
    """Shared drift of Flow-GRPO and DanceGRPO: ``v + s^2/(2 sigma) * (x + (1-sigma) v)``."""
    sigma = _rows(coeffs.sigma, sample)
    dt = _rows(coeffs.sigma_next - coeffs.sigma, sample)
    velocity = _flow_velocity(model_output, x0, eps, coeffs)
    s = _rows(diffusion, sample)
    mean = sample + dt * (velocity + s.square() / (2.0 * sigma) * (sample + (1.0 - sigma) * velocity))
    std = diffusion * (coeffs.sigma - coeffs.sigma_next).clamp(min=0).sqrt()
    return mean, std


def _flow_sde(sample, model_output, x0, eps, coeffs, noise_level):
    # Flow-GRPO replaces sigma == 1 in the denominator by the schedule's second sigma.
    denominator_sigma = torch.where(coeffs.sigma >= 1.0, coeffs.sigma_cap, coeffs.sigma)
    diffusion = noise_level * (coeffs.sigma / (1.0 - denominator_sigma)).sqrt()
    return _reverse_sde(sample, model_output, x0, eps, coeffs, diffusion)


def _dance_sde(sample, model_output, x0, eps, coeffs, noise_level):
    return _reverse_sde(sample, model_output, x0, eps, coeffs, noise_level.expand_as(coeffs.sigma))


def _mix(x0, eps, coeffs, std):
    """``alpha_next*x0 + sqrt(sigma_next^2 - std^2)*eps``: the DDIM/CPS mean."""
    direction = (coeffs.sigma_next.square() - std.square()).clamp(min=0).sqrt()
    return _rows(coeffs.alpha_next, x0) * x0 + _rows(direction, eps) * eps


def _cps(sample, model_output, x0, eps, coeffs, noise_level):
    std = coeffs.sigma_next * torch.sin(noise_level * math.pi / 2.0)
    return _mix(x0, eps, coeffs, std), std


def _ddim(sample, model_output, x0, eps, coeffs, noise_level):
    # DDIM posterior variance in (alpha, sigma) form: sigma_next^2 * (1 - (alpha*sigma_next/(alpha_next*sigma))^2);
    # for VP schedules this is diffusers' (1-abar_prev)/(1-abar_t) * (1 - abar_t/abar_prev).
    ratio = (coeffs.alpha * coeffs.sigma_next) / (coeffs.alpha_next * coeffs.sigma)
    variance = (coeffs.sigma_next.square() * (1.0 - ratio.square())).clamp(min=0)
    std = noise_level * variance.sqrt()
    return _mix(x0, eps, coeffs, std), std


def _ode(sample, model_output, x0, eps, coeffs, noise_level):
    std = torch.zeros_like(coeffs.sigma)
    if coeffs.kind == "flow":
        dt = _rows(coeffs.sigma_next - coeffs.sigma, sample)
        return sample + dt * _flow_velocity(model_output, x0, eps, coeffs), std
    return _mix(x0, eps, coeffs, std), std


@dataclass(frozen=True)
class Dynamics:
    """A registered step dynamic: its mean/std rule, default noise level, allowed schedules."""

    name: str
    fn: DynamicsFn
    default_noise_level: float
    schedule_kinds: tuple[str, ...]
    description: str


DYNAMICS: dict[str, Dynamics] = {
    d.name: d
    for d in (
        Dynamics("flow_sde", _flow_sde, 0.7, ("flow",), "Flow-GRPO SDE, std = a*sqrt(sigma/(1-sigma))"),
        Dynamics("dance_sde", _dance_sde, 0.3, ("flow",), "DanceGRPO SDE, constant diffusion eta"),
        Dynamics("cps", _cps, 0.8, ("flow", "vp"), "coefficient-preserving sampling, std = sigma'*sin(eta*pi/2)"),
        Dynamics("ddim", _ddim, 1.0, ("flow", "vp"), "DDIM with eta (DDPO / DanceGRPO on SD)"),
        Dynamics("ode", _ode, 0.0, ("flow", "vp"), "deterministic Euler / DDIM(eta=0)"),
    )
}


def get_dynamics(name: str, schedule_kind: str | None = None) -> Dynamics:
    """Look up a dynamic by name, checking it suits the schedule kind (``flow`` or ``vp``)."""
    if name not in DYNAMICS:
        raise ProGRPOConfigError(f"dynamics {name!r} is unknown; use one of {sorted(DYNAMICS)}.")
    dynamics = DYNAMICS[name]
    if schedule_kind is not None and schedule_kind not in dynamics.schedule_kinds:
        raise ProGRPOConfigError(
            f"dynamics {name!r} needs a {' or '.join(dynamics.schedule_kinds)} schedule but the model's "
            f"schedule is {schedule_kind!r}; for eps/v-prediction models use 'ddim' or 'cps'."
        )
    return dynamics


def policy_step(
    dynamics: str,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    coeffs: StepCoefficients,
    noise_level: float | torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    next_sample: torch.Tensor | None = None,
) -> StepOutput:
    """One policy step for B rows, possibly at different steps (``coeffs`` tensors are [B]).

    Args:
        dynamics: a name in :data:`DYNAMICS`.
        model_output: network prediction [B, ...] in the schedule's parameterisation.
        sample: current latent x [B, ...].
        noise_level: float or [B] tensor (0 gives the deterministic sampler).
        noise: standard normal [B, ...] to use for the sample (else drawn from ``generator``).
        next_sample: a GIVEN next latent [B, ...]; its log-prob is evaluated instead of sampling.

    Returns:
        :class:`StepOutput`; ``log_prob`` is the Gaussian log-density averaged over latent dims.
    """
    spec = get_dynamics(dynamics, coeffs.kind)
    if model_output.shape != sample.shape:
        raise ProGRPOConfigError(
            f"model_output shape {tuple(model_output.shape)} differs from sample shape "
            f"{tuple(sample.shape)}; the denoiser must return one prediction per latent."
        )
    if coeffs.sigma.shape[0] != sample.shape[0]:
        raise ProGRPOConfigError(
            f"coefficients have {coeffs.sigma.shape[0]} rows but sample has {sample.shape[0]}; "
            "pass one step index per row to Schedule.coefficients."
        )
    sample32, output32 = sample.float(), model_output.float()
    level = torch.as_tensor(noise_level, dtype=torch.float32, device=sample.device)
    if bool((level < 0).any()):
        raise ProGRPOConfigError(f"noise_level {noise_level} must be >= 0.")
    x0, eps = predicted_x0_and_eps(output32, sample32, coeffs)
    mean, std = spec.fn(sample32, output32, x0, eps, coeffs, level)
    std = std.float().expand(sample.shape[0]).contiguous()
    if next_sample is None:
        if noise is None:
            noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        next_sample = mean + _rows(std, mean) * noise.float()
    log_prob = gaussian_log_prob(next_sample, mean, std)
    return StepOutput(next_sample=next_sample.float(), log_prob=log_prob, mean=mean, std=std, x0_pred=x0)
