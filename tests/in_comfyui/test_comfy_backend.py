"""ComfyDenoiser (ComfyUI's sampling machinery) against progrpo's diffusers UNetDenoiser and ComfyUI's KSampler.

In-process, on the CPU: the tiny SD1.x UNet of ``progrpo.tiny_models`` is mapped weight for weight
onto ComfyUI's UNetModel (eps, v-prediction, or declared a rectified-flow model), so both backends
run the same network and must agree on predictions, log-probs and whole pruned rollouts.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from testkit.comfy_harness import comfy_model_from_diffusers_unet, load_extension_nodes, requires_comfyui

pytestmark = [pytest.mark.slow, requires_comfyui]

PROMPTS = ["a red cat", "a blue dog on a car"]
ROWS = torch.tensor([0, 1, 1, 0])  # per-row prompts, deliberately not in table order


class DiffusersVAEAsComfyVAE:
    """The diffusers tiny VAE behind ComfyUI's VAE interface (ComfyUI's SD VAE loader has fixed sizes)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae = vae

    def spacial_compression_decode(self) -> int:
        return 2

    @torch.no_grad()
    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(samples, return_dict=False)[0]
        return (images / 2 + 0.5).clamp(0, 1).movedim(1, -1)  # ComfyUI: [B, H, W, C] in [0, 1]


@pytest.fixture(scope="module")
def backend():
    """The ``comfy_backend`` module of this repo's nodes package (ComfyUI imported in-process, CPU)."""
    nodes = load_extension_nodes()
    from progrpo_comfy_nodes import comfy_backend

    assert nodes.NODE_LIST
    return comfy_backend


def _pair(backend, prediction_type: str, flow: bool = False, **options):
    """(diffusers UNetDenoiser, ComfyDenoiser, diffusers Conditioning, comfy Conditioning) on one UNet."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from progrpo.denoisers.diffusers_unet import UNetDenoiser
    from progrpo.tiny_models import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(seed=1, prediction_type=prediction_type)
    if flow:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    model = comfy_model_from_diffusers_unet(pipe.unet, "flow" if flow else prediction_type)
    diffusers = UNetDenoiser(pipe)
    comfy = backend.ComfyDenoiser(model, vae=DiffusersVAEAsComfyVAE(pipe.vae), **options)
    cond_d = diffusers.encode_prompts(PROMPTS, "")
    embeds, negative = cond_d.positive["encoder_hidden_states"], cond_d.negative["encoder_hidden_states"]
    positive = [[[embeds[i : i + 1], {}]] for i in range(len(PROMPTS))]  # one CONDITIONING per prompt
    cond_c = comfy.conditioning(positive, [[negative, {}]], PROMPTS)
    return diffusers, comfy, cond_d, cond_c


def _x0(schedule, step: int, output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    from progrpo.dynamics import predicted_x0_and_eps

    return predicted_x0_and_eps(output, sample, schedule.coefficients(torch.full((sample.shape[0],), step)))[0]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_vp_predictions_and_log_probs_match_diffusers(backend, prediction_type):
    from progrpo.dynamics import policy_step

    diffusers, comfy, cond_d, cond_c = _pair(backend, prediction_type, scheduler="ddim_uniform")
    steps = 10  # ddim_uniform hits DDIM's "leading" timesteps 901, 801, ..., 1 when steps divides 1000
    sched_d, sched_c = diffusers.schedule(steps, (4, 8, 8)), comfy.schedule(steps, (4, 8, 8))
    assert sched_c.kind == "vp" and sched_c.prediction_type == "sample"
    torch.testing.assert_close(sched_c.alpha, sched_d.alpha, atol=1e-6, rtol=0)
    torch.testing.assert_close(sched_c.alpha_next[:-1], sched_d.alpha_next[:-1], atol=1e-6, rtol=0)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(4, 4, 8, 8, generator=generator)
    for step in (0, 4, 8):
        rows = torch.full((4,), step)
        for guidance in (1.0, 4.5):
            out_d = diffusers.predict(sample, sched_d.timesteps_for(rows), cond_d.take(ROWS), guidance)
            out_c = comfy.predict(sample, sched_c.timesteps_for(rows), cond_c.take(ROWS), guidance)
            torch.testing.assert_close(out_c, _x0(sched_d, step, out_d, sample), atol=1e-4, rtol=1e-5)
        # log-prob of one stored DDIM(eta=1) transition under both policies (the trainer's re-evaluation)
        given = policy_step("ddim", out_d, sample, sched_d.coefficients(rows), 1.0, generator=generator).next_sample
        log_d = policy_step("ddim", out_d, sample, sched_d.coefficients(rows), 1.0, next_sample=given).log_prob
        log_c = policy_step("ddim", out_c, sample, sched_c.coefficients(rows), 1.0, next_sample=given).log_prob
        torch.testing.assert_close(log_c, log_d, atol=1e-4, rtol=0)


def test_pruned_rollout_matches_diffusers(backend):
    """Per-row prompts survive pruning: same survivors, latents, log-probs and previews as diffusers."""
    from progrpo.rollout import RolloutConfig, expand_and_prune_rollout

    diffusers, comfy, cond_d, cond_c = _pair(backend, "epsilon", scheduler="ddim_uniform")
    config = RolloutConfig(group_size=4, num_steps=5, dynamics="ddim", noise_level=1.0, guidance_scale=4.5,
                           prune_schedule="3:2", height=16, width=16, seed=3)

    def reward(images, prompts):
        return images.mean(dim=(1, 2, 3)) + torch.tensor([len(p) for p in prompts]) * 0.01

    rollout_d = expand_and_prune_rollout(diffusers, cond_d, reward, config)
    rollout_c = expand_and_prune_rollout(comfy, cond_c, reward, dataclasses.replace(config))
    assert rollout_c.trajectory_index.tolist() == rollout_d.trajectory_index.tolist()
    assert rollout_c.prompts == rollout_d.prompts
    # Every step but the last one: diffusers' DDIM ends at alphabar_0 (set_alpha_to_one=False), ComfyUI at sigma 0.
    torch.testing.assert_close(rollout_c.latents[:, :-1], rollout_d.latents[:, :-1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(rollout_c.log_probs[:, :-1], rollout_d.log_probs[:, :-1], atol=1e-4, rtol=0)
    torch.testing.assert_close(rollout_c.preview_rewards, rollout_d.preview_rewards, atol=1e-4, rtol=0)
    assert float(rollout_c.step_std[-1]) == 0.0  # DDIM into sigma 0 is deterministic


def test_flow_predictions_and_log_probs_match_diffusers(backend):
    """The same UNet declared a rectified-flow model in both libraries, at diffusers' flow sigmas."""
    from progrpo.dynamics import policy_step

    diffusers, _, cond_d, _ = _pair(backend, "epsilon", flow=True)
    sched_d = diffusers.schedule(6, (4, 8, 8))
    sigmas = torch.cat([sched_d.sigma, sched_d.sigma_next[-1:]])
    _, comfy, _, cond_c = _pair(backend, "epsilon", flow=True, sigmas=sigmas)
    sched_c = comfy.schedule(6, (4, 8, 8))
    assert sched_c.kind == "flow"
    torch.testing.assert_close(sched_c.sigma, sched_d.sigma)
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(4, 4, 8, 8, generator=generator)
    for step in (0, 3, 5):
        rows = torch.full((4,), step)
        out_d = diffusers.predict(sample, sched_d.timesteps_for(rows), cond_d.take(ROWS), 3.0)
        out_c = comfy.predict(sample, sched_c.timesteps_for(rows), cond_c.take(ROWS), 3.0)
        # ComfyUI returns x0 = x - sigma * v; the velocity recovered from it carries x0's fp32 rounding
        # times 1/sigma (4e-4 at diffusers' last sigma 0.001), so compare x0 at every step, v where sigma >= 0.1.
        torch.testing.assert_close(_x0(sched_c, step, out_c, sample), _x0(sched_d, step, out_d, sample),
                                   atol=1e-5, rtol=1e-6)
        if float(sched_d.sigma[step]) >= 0.1:
            torch.testing.assert_close(out_c, out_d, atol=1e-4, rtol=1e-5)
        given = policy_step("flow_sde", out_d, sample, sched_d.coefficients(rows), 0.7, generator=generator)
        log_d = policy_step("flow_sde", out_d, sample, sched_d.coefficients(rows), 0.7,
                            next_sample=given.next_sample).log_prob
        log_c = policy_step("flow_sde", out_c, sample, sched_c.coefficients(rows), 0.7,
                            next_sample=given.next_sample).log_prob
        torch.testing.assert_close(log_c, log_d, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind, scheduler", [("epsilon", "normal"), ("epsilon", "karras"), ("flow", "simple")])
def test_deterministic_rollout_is_comfyui_euler(backend, kind, scheduler):
    """progrpo's ODE step on ComfyDenoiser's schedule reproduces the stock KSampler (euler), step for step."""
    import comfy.sample

    from progrpo.dynamics import policy_step

    _, comfy_denoiser, _, _ = _pair(backend, "epsilon", flow=kind == "flow", scheduler=scheduler)
    embeds = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(5))
    positive, negative = [[embeds, {}]], [[torch.zeros(1, 16, 32), {}]]
    latent = torch.zeros(2, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 42)
    reference = comfy.sample.sample(comfy_denoiser.model, noise, 6, 3.0, "euler", scheduler, positive, negative,
                                    latent, seed=42, disable_pbar=True)

    conditioning = comfy_denoiser.conditioning(positive, negative).take(torch.zeros(2, dtype=torch.long))
    schedule = comfy_denoiser.schedule(6, (4, 8, 8))
    # ComfyUI starts at sqrt(1 + sigma_max^2) * noise (vp) or noise (flow): both are `noise` in progrpo's coordinates.
    sample = noise.clone()
    for step in range(6):
        rows = torch.full((2,), step)
        output = comfy_denoiser.predict(sample, schedule.timesteps_for(rows), conditioning, 3.0)
        sample = policy_step("ode", output, sample, schedule.coefficients(rows), 0.0).next_sample
    torch.testing.assert_close(comfy_denoiser.to_comfy_latent(sample), reference, atol=1e-4, rtol=1e-5)


def test_predictions_carry_gradients_to_the_model(backend):
    _, comfy_denoiser, _, cond_c = _pair(backend, "epsilon")
    schedule = comfy_denoiser.schedule(4, (4, 8, 8))
    sample = torch.randn(4, 4, 8, 8)
    output = comfy_denoiser.predict(sample, schedule.timesteps_for(torch.full((4,), 1)), cond_c.take(ROWS), 4.0)
    output.square().mean().backward()
    weight = comfy_denoiser.model.model.diffusion_model.out[-1].weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_decode_without_vae_is_pixel_space(backend):
    _, comfy_denoiser, _, _ = _pair(backend, "epsilon")
    comfy_denoiser.vae = None
    grey = torch.tensor([-1.0, 0.0, 1.0, 3.0]).reshape(4, 1, 1, 1)
    images = comfy_denoiser.decode(grey)
    assert images.shape == (4, 3, 1, 1)
    torch.testing.assert_close(images[:, 0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.0]))
    assert comfy_denoiser.latent_shape(16, 24) == (4, 16, 24)


class TextEncoderStandIn:
    """The two CLIP methods CLIPTextEncode calls (a real ComfyUI CLIP needs weight files)."""

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens_scheduled(self, tokens: str) -> list:
        self.encoded.append(tokens)
        generator = torch.Generator().manual_seed(len(tokens))
        return [[torch.randn(1, 16, 32, generator=generator), {}]]


def test_encode_prompts_encodes_each_text_once_and_none_disables_guidance(backend):
    _, comfy_denoiser, _, _ = _pair(backend, "epsilon")
    comfy_denoiser.clip = TextEncoderStandIn()
    guided = comfy_denoiser.encode_prompts(["a cat", "a red dog", "a cat"], "")
    unguided = comfy_denoiser.encode_prompts(["a red dog"], None)
    assert comfy_denoiser.clip.encoded == ["a cat", "a red dog", ""]
    rows = guided.positive[backend.ROW_KEY].tolist()
    assert rows[0] == rows[2] != rows[1] and unguided.positive[backend.ROW_KEY].tolist() == [rows[1]]
    assert unguided.negative is None
    schedule = comfy_denoiser.schedule(4, (4, 8, 8))
    sample = torch.randn(1, 4, 8, 8)
    timestep = schedule.timesteps_for(1)
    without_negative = comfy_denoiser.predict(sample, timestep, unguided, 5.0)
    cfg_one = comfy_denoiser.predict(sample, timestep, guided.take(torch.tensor([1])), 1.0)
    torch.testing.assert_close(without_negative, cfg_one, atol=0, rtol=0)


def test_prompts_are_stacked_per_row(backend):
    from progrpo_comfy_nodes.comfy_conditioning import PromptTable

    table = PromptTable()
    short = [[torch.full((1, 2, 3), 1.0), {"pooled_output": torch.full((1, 5), 1.0), "guidance": 3.5}]]
    long = [[torch.full((1, 4, 3), 2.0), {"pooled_output": torch.full((1, 5), 2.0), "guidance": 3.5}]]
    a, b = table.add(short), table.add(long)
    assert table.add(short) == a  # same object, same row
    ((tokens, options),) = table.select(torch.tensor([b, a, b]))
    assert tokens.shape == (3, 4, 3)  # lengths 2 and 4 -> 4, the short prompt repeated (attention-neutral)
    assert tokens[:, 0, 0].tolist() == [2.0, 1.0, 2.0]
    assert options["pooled_output"][:, 0].tolist() == [2.0, 1.0, 2.0]
    assert options["guidance"] == 3.5
    assert table.select(torch.tensor([a, a])) is short  # one prompt: passed through, ComfyUI broadcasts it


def test_bad_inputs_raise_messages_naming_the_fix(backend):
    from progrpo_comfy_nodes.comfy_conditioning import PromptTable

    from progrpo.errors import ProGRPOConfigError

    _, comfy_denoiser, cond_d, _ = _pair(backend, "epsilon", scheduler="ddim_uniform")
    sample = torch.randn(2, 4, 8, 8)
    with pytest.raises(ProGRPOConfigError, match="not built by a ComfyDenoiser"):
        comfy_denoiser.predict(sample, torch.ones(2), cond_d, 1.0)
    with pytest.raises(ProGRPOConfigError, match="divides 1000"):
        comfy_denoiser.schedule(6, (4, 8, 8))
    with pytest.raises(ProGRPOConfigError, match="CONDITIONING"):
        comfy_denoiser.conditioning("a red cat")
    with pytest.raises(ProGRPOConfigError, match="no CLIP"):
        comfy_denoiser.encode_prompts(["a red cat"])
    with pytest.raises(ProGRPOConfigError, match="scheduler 'nope' is unknown"):
        backend.ComfyDenoiser(comfy_denoiser.model, scheduler="nope")
    import comfy.model_sampling

    assert backend.schedule_kind(comfy.model_sampling.EDM()) == "vp"
    assert backend.schedule_kind(comfy.model_sampling.CONST()) == "flow"
    with pytest.raises(ProGRPOConfigError, match="COSMOS_RFLOW is not supported"):
        backend.schedule_kind(comfy.model_sampling.COSMOS_RFLOW())
    table = PromptTable()
    left = table.add([[torch.zeros(1, 2, 3), {"area": (8, 8, 0, 0)}]])
    right = table.add([[torch.zeros(1, 2, 3), {"area": (8, 8, 8, 0)}]])
    with pytest.raises(ProGRPOConfigError, match="'area'"):
        table.select(torch.tensor([left, right]))
