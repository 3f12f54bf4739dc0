"""Step dynamics: deterministic limits equal diffusers, marginals are preserved, log-probs exact."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from progrpo.dynamics import DYNAMICS, gaussian_kl_same_std, gaussian_log_prob, policy_step
from progrpo.errors import ProGRPOConfigError
from progrpo.schedule import schedule_from_scheduler
from testkit.gaussian_denoiser import GaussianDenoiser

FLOW_DYNAMICS = [name for name, spec in DYNAMICS.items() if "flow" in spec.schedule_kinds]
VP_DYNAMICS = [name for name, spec in DYNAMICS.items() if "vp" in spec.schedule_kinds]


@pytest.mark.parametrize("dynamics", FLOW_DYNAMICS)
def test_noise_zero_reproduces_flow_match_euler(dynamics):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule = schedule_from_scheduler(scheduler, 10)
    reference = FlowMatchEulerDiscreteScheduler(shift=3.0)
    reference.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    ours = theirs = torch.randn(3, 4, 8, 8, generator=generator)
    for step, timestep in enumerate(reference.timesteps):
        output = torch.randn(3, 4, 8, 8, generator=generator)
        theirs = reference.step(output, timestep, theirs).prev_sample
        ours = policy_step(dynamics, output, ours, schedule.coefficients(torch.full((3,), step)), 0.0).next_sample
        assert (ours - theirs).abs().max() <= 1e-5, f"{dynamics} diverged from diffusers at step {step}"


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("dynamics", VP_DYNAMICS)
def test_noise_zero_reproduces_ddim(dynamics, prediction_type, clip_sample):
    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                  set_alpha_to_one=False, clip_sample=clip_sample, prediction_type=prediction_type)
    schedule = schedule_from_scheduler(DDIMScheduler(**config), 12)
    reference = DDIMScheduler(**config)
    reference.set_timesteps(12)
    generator = torch.Generator().manual_seed(1)
    ours = theirs = torch.randn(2, 4, 8, 8, generator=generator)
    for step, timestep in enumerate(reference.timesteps):
        output = torch.randn(2, 4, 8, 8, generator=generator)
        theirs = reference.step(output, timestep, theirs, eta=0.0).prev_sample
        ours = policy_step(dynamics, output, ours, schedule.coefficients(torch.full((2,), step)), 0.0).next_sample
        assert (ours - theirs).abs().max() <= 1e-5, f"{dynamics} diverged from DDIM at step {step}"


def test_ddim_eta_one_matches_diffusers_stochastic_step():
    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    schedule = schedule_from_scheduler(DDIMScheduler(**config), 20)
    reference = DDIMScheduler(**config)
    reference.set_timesteps(20)
    generator = torch.Generator().manual_seed(2)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    for step in (0, 7, 19):
        output, noise = torch.randn(2, 2, 4, 8, 8, generator=generator)
        theirs = reference.step(output, reference.timesteps[step], sample, eta=1.0, variance_noise=noise).prev_sample
        ours = policy_step("ddim", output, sample, schedule.coefficients(torch.full((2,), step)), 1.0, noise=noise)
        assert (ours.next_sample - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("dynamics", ["flow_sde", "dance_sde", "cps", "ddim"])
def test_log_prob_is_the_gaussian_density_averaged_over_dims(dynamics):
    schedule = schedule_from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), 10)
    generator = torch.Generator().manual_seed(3)
    sample, output = torch.randn(2, 4, 4, 3, 5, generator=generator)
    steps = torch.tensor([0, 3, 6, 8])  # rows at different steps in one call (cps/ddim: the last step is deterministic)
    result = policy_step(dynamics, output, sample, schedule.coefficients(steps), 0.7, generator=generator)
    assert (result.std > 0).all()
    expected = torch.distributions.Normal(result.mean, result.std.reshape(-1, 1, 1, 1)).log_prob(result.next_sample)
    torch.testing.assert_close(result.log_prob, expected.flatten(1).mean(1), atol=1e-5, rtol=1e-6)
    # evaluating the log-prob of the GIVEN next sample reproduces it exactly (ratio == 1)
    again = policy_step(dynamics, output, sample, schedule.coefficients(steps), 0.7, next_sample=result.next_sample)
    assert (again.log_prob - result.log_prob).abs().max() <= 1e-6
    assert again.log_prob.dtype == torch.float32


def test_flow_sde_std_is_flow_grpo_formula():
    schedule = schedule_from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), 10)
    sample = torch.zeros(10, 1, 1, 1)
    result = policy_step("flow_sde", sample, sample, schedule.coefficients(torch.arange(10)), 0.7)
    sigma, sigma_next = schedule.sigma, schedule.sigma_next
    denominator = torch.where(sigma >= 1, schedule.sigma[1], sigma)
    expected = 0.7 * (sigma / (1 - denominator)).sqrt() * (sigma - sigma_next).sqrt()
    torch.testing.assert_close(result.std, expected)


def test_ode_has_zero_std_and_zero_log_prob():
    schedule = schedule_from_scheduler(FlowMatchEulerDiscreteScheduler(), 4)
    sample = torch.randn(2, 4, 4, 4)
    result = policy_step("ode", sample, sample, schedule.coefficients(torch.tensor([0, 1])), 0.5)
    assert (result.std == 0).all() and (result.log_prob == 0).all()


def test_kl_is_zero_for_equal_means_and_matches_closed_form():
    mean = torch.randn(3, 2, 4, 4)
    std = torch.tensor([0.5, 1.0, 0.0])
    assert (gaussian_kl_same_std(mean, mean, std) == 0).all()
    shifted = mean + 0.1
    kl = gaussian_kl_same_std(shifted, mean, std)
    torch.testing.assert_close(kl[:2], 0.01 / (2 * std[:2] ** 2))
    assert kl[2] == 0


def _sample_gaussian(kind: str, dynamics: str, prediction_type: str | None, num_steps: int, count: int):
    mean = torch.tensor([0.7, -0.4])
    covariance = torch.tensor([[0.36, 0.15], [0.15, 0.25]])
    denoiser = GaussianDenoiser(mean, covariance, kind=kind, prediction_type=prediction_type)
    schedule = denoiser.schedule(num_steps, (2, 1, 1))
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(count, 2, 1, 1, generator=generator)
    if kind == "vp":  # DDIM starts from alpha_0 > 0: draw the exact marginal at the first step
        x0 = mean + torch.randn(count, 2, generator=generator) @ torch.linalg.cholesky(covariance).T
        x = (schedule.alpha[0] * x0 + schedule.sigma[0] * torch.randn(count, 2, generator=generator)).reshape(count, 2, 1, 1)
    for step in range(num_steps):
        steps = torch.full((count,), step)
        output = denoiser.predict(x, schedule.timesteps[steps], None, 1.0)
        level = DYNAMICS[dynamics].default_noise_level
        x = policy_step(dynamics, output, x, schedule.coefficients(steps), level, generator=generator).next_sample
    samples = x.flatten(1).double()
    return samples, mean.double(), covariance.double()


MARGINAL_CASES = [("flow", name, None) for name in FLOW_DYNAMICS if name != "cps"] + [
    ("vp", name, prediction) for name in VP_DYNAMICS if name != "cps" for prediction in ("epsilon", "v_prediction")
]


@pytest.mark.parametrize("kind,dynamics,prediction_type", MARGINAL_CASES)
def test_marginals_preserved_on_gaussian_data(kind, dynamics, prediction_type):
    """With the exact denoiser, every SDE dynamic samples N(m, Sigma) up to sampling/discretisation error."""
    samples, mean, covariance = _sample_gaussian(kind, dynamics, prediction_type, num_steps=100, count=40000)
    # standard errors: mean sqrt(0.36/40000) = 0.003, covariance ~0.36*sqrt(2/40000) = 0.0025;
    # the O(dt) discretisation error at 100 steps measured <= 0.022 (DDIM eta=1 on flow).
    assert (samples.mean(0) - mean).abs().max() < 0.02
    assert (torch.cov(samples.T) - covariance).abs().max() < 0.04


@pytest.mark.parametrize("kind,prediction_type", [("flow", None), ("vp", "epsilon")])
def test_cps_preserves_coefficients_and_mean_but_not_the_covariance(kind, prediction_type):
    """CPS re-noises O(1) per step (std = sigma'*sin(eta*pi/2), not O(sqrt(dt))), so it keeps the
    signal/noise coefficients exactly but not the marginals: with a posterior-mean denoiser the
    covariance shrinks (measured 0.23 instead of 0.36 on flow at 100 steps). We test what holds and
    pin the measured shrinkage so a change in CPS's behaviour is noticed."""
    schedule = schedule_from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), 10)
    coeffs = schedule.coefficients(torch.arange(9))
    x = torch.randn(9, 2, 1, 1)
    result = policy_step("cps", x, x, coeffs, 0.8)
    direction = (coeffs.sigma_next.square() - result.std.square()).sqrt()
    torch.testing.assert_close(direction.square() + result.std.square(), coeffs.sigma_next.square())
    samples, mean, covariance = _sample_gaussian(kind, "cps", prediction_type, num_steps=100, count=40000)
    assert (samples.mean(0) - mean).abs().max() < 0.02
    shrink = torch.diagonal(torch.cov(samples.T)) / torch.diagonal(covariance)
    assert (shrink < 0.9).all() and (shrink > 0.4).all()


def test_bad_inputs_name_the_input():
    schedule = schedule_from_scheduler(FlowMatchEulerDiscreteScheduler(), 4)
    coeffs = schedule.coefficients(torch.tensor([0, 1]))
    x = torch.randn(2, 4, 4, 4)
    with pytest.raises(ProGRPOConfigError, match="dynamics 'langevin' is unknown"):
        policy_step("langevin", x, x, coeffs, 0.5)
    with pytest.raises(ProGRPOConfigError, match="model_output shape"):
        policy_step("flow_sde", x[:, :3], x, coeffs, 0.5)
    with pytest.raises(ProGRPOConfigError, match="coefficients have 2 rows"):
        policy_step("flow_sde", x[:1], x[:1], coeffs, 0.5)
    with pytest.raises(ProGRPOConfigError, match="noise_level"):
        policy_step("flow_sde", x, x, coeffs, -1.0)
    with pytest.raises(ProGRPOConfigError, match="step_index"):
        schedule.coefficients(torch.tensor([4]))
    vp = schedule_from_scheduler(DDIMScheduler(), 4)
    with pytest.raises(ProGRPOConfigError, match="use 'ddim' or 'cps'"):
        policy_step("flow_sde", x, x, vp.coefficients(torch.tensor([0, 1])), 0.5)


def test_log_prob_handles_zero_std_rows():
    value = torch.randn(2, 3, 2, 2)
    log_prob = gaussian_log_prob(value, value * 0, torch.tensor([0.0, 1.0]))
    assert log_prob[0] == 0 and torch.isfinite(log_prob).all()
