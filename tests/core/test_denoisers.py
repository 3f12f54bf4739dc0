"""The diffusers adapters reproduce diffusers' own pipelines (sampling, CFG, decode) on tiny models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from progrpo.denoisers.base import Denoiser
from progrpo.denoisers.diffusers_backend import (
    DENOISER_TYPES,
    denoiser_from_pipeline,
    load_diffusers_denoiser,
)
from progrpo.denoisers.diffusers_flux import FluxDenoiser, latent_image_ids, pack_latents, unpack_latents
from progrpo.denoisers.diffusers_sd3 import SD3Denoiser
from progrpo.denoisers.diffusers_unet import UNetDenoiser
from progrpo.errors import ProGRPOConfigError
from progrpo.schedule import StepCoefficients
from progrpo.tiny_models import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sd_pipeline

torch.set_num_threads(1)

PROMPTS = ["a photo of a cat", "a red car"]
SIZE = 32
#: the tiny tokenizer's model_max_length; SD3 pads CLIP + this many (zero) T5 tokens, Flux this many T5 tokens.
SEQ = 16
ATOL = 1e-4


def in_eval_mode(pipe: Any) -> Any:
    """Put every module of a pipeline built from configs in eval mode, as ``from_pretrained`` leaves them.

    Freshly constructed modules are in training mode, and the tiny T5's dropout (0.1) would make
    Flux prompt embeddings random.
    """
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def tiny_flux_guidance_pipeline() -> Any:
    """The tiny Flux pipeline with a guidance-distilled transformer (``guidance_embeds=True``)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    pipe = tiny_flux_pipeline()
    torch.manual_seed(1)
    config = {key: value for key, value in pipe.transformer.config.items() if not key.startswith("_")}
    transformer = FluxTransformer2DModel.from_config({**config, "guidance_embeds": True})
    return FluxPipeline(**{**pipe.components, "transformer": transformer})


@dataclass(frozen=True)
class Case:
    """A tiny pipeline, the adapter options, and how to call the pipeline for the same sampling run."""

    build: Callable[[], Any]
    adapter: type
    options: dict[str, Any]
    #: pipeline kwargs for CFG scale w (prompts, latents and steps are added by the test).
    pipe_kwargs: Callable[[float], dict[str, Any]]
    packed: bool = False


def _cfg_kwargs(w: float) -> dict[str, Any]:
    return {"guidance_scale": w, "negative_prompt": [""] * len(PROMPTS) if w != 1.0 else None}


def _flux_kwargs(guidance: float) -> Callable[[float], dict[str, Any]]:
    def kwargs(w: float) -> dict[str, Any]:
        negative = [""] * len(PROMPTS) if w != 1.0 else None
        return {
            "true_cfg_scale": w,
            "negative_prompt": negative,
            "guidance_scale": guidance,
            "max_sequence_length": SEQ,
        }

    return kwargs


CASES = {
    "sd_eps": Case(tiny_sd_pipeline, UNetDenoiser, {}, _cfg_kwargs),
    "sd_v": Case(lambda: tiny_sd_pipeline(prediction_type="v_prediction"), UNetDenoiser, {}, _cfg_kwargs),
    "sd_sample": Case(lambda: tiny_sd_pipeline(prediction_type="sample"), UNetDenoiser, {}, _cfg_kwargs),
    "sd3": Case(
        tiny_sd3_pipeline,
        SD3Denoiser,
        {"max_sequence_length": SEQ},
        lambda w: {**_cfg_kwargs(w), "max_sequence_length": SEQ},
    ),
    "flux": Case(tiny_flux_pipeline, FluxDenoiser, {"max_sequence_length": SEQ}, _flux_kwargs(3.5), packed=True),
    "flux_guidance": Case(
        tiny_flux_guidance_pipeline,
        FluxDenoiser,
        {"max_sequence_length": SEQ, "guidance": 2.0},
        _flux_kwargs(2.0),
        packed=True,
    ),
}
MAIN = ["sd_eps", "sd3", "flux"]


@pytest.fixture(scope="module")
def pipes() -> dict[str, Any]:
    """Tiny pipelines, built once per module on first use."""

    class Lazy(dict):
        def __missing__(self, name: str) -> Any:
            self[name] = in_eval_mode(CASES[name].build())
            return self[name]

    return Lazy()


def adapter_for(pipes: dict[str, Any], name: str) -> Any:
    return denoiser_from_pipeline(pipes[name], **CASES[name].options)


def initial_latents(denoiser: Any, rows: int = len(PROMPTS), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, *denoiser.latent_shape(SIZE, SIZE), generator=generator)


def deterministic_step(x: torch.Tensor, prediction: torch.Tensor, c: StepCoefficients) -> torch.Tensor:
    """Euler step for flow, DDIM eta=0 for VP, written from the schedule's coefficients (rows [B])."""
    alpha, sigma, alpha_next, sigma_next = (v.view(-1, 1, 1, 1) for v in (c.alpha, c.sigma, c.alpha_next, c.sigma_next))
    if c.kind == "flow":
        return x + (sigma_next - sigma) * prediction
    if c.prediction_type == "epsilon":
        x0, eps = (x - sigma * prediction) / alpha, prediction
    elif c.prediction_type == "v_prediction":
        x0, eps = alpha * x - sigma * prediction, sigma * x + alpha * prediction
    else:
        x0, eps = prediction, (x - alpha * prediction) / sigma
    return alpha_next * x0 + sigma_next * eps


def sample_with_adapter(denoiser: Any, latents: torch.Tensor, steps: int, guidance_scale: float) -> torch.Tensor:
    conditioning = denoiser.encode_prompts(PROMPTS, negative_prompt="")
    schedule = denoiser.schedule(steps, latents.shape[1:])
    x = latents
    with torch.no_grad():
        for i in range(steps):
            timestep = schedule.timesteps_for(i).expand(x.shape[0])
            prediction = denoiser.predict(x, timestep, conditioning, guidance_scale)
            x = deterministic_step(x, prediction, schedule.coefficients(i))
    return x


def run_pipeline(name: str, pipe: Any, latents: torch.Tensor, steps: int, w: float, output_type: str) -> torch.Tensor:
    """The pipeline's own sampling from ``latents`` (unpacked [B,C,H,W]); latents come back unpacked."""
    case = CASES[name]
    start = pack_latents(latents) if case.packed else latents
    out = pipe(
        PROMPTS,
        height=SIZE,
        width=SIZE,
        num_inference_steps=steps,
        latents=start,
        output_type=output_type,
        **case.pipe_kwargs(w),
    ).images
    if case.packed and output_type == "latent":
        return unpack_latents(out, latents.shape[2], latents.shape[3])
    return out


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
@pytest.mark.parametrize("name", list(CASES))
def test_sampling_matches_pipeline(pipes: dict[str, Any], name: str, guidance_scale: float) -> None:
    pipe = pipes[name]
    denoiser = adapter_for(pipes, name)
    assert isinstance(denoiser, CASES[name].adapter) and isinstance(denoiser, Denoiser)
    # SD multiplies given latents by init_noise_sigma (1 for DDIM); the flow pipelines take them as they are.
    assert getattr(pipe.scheduler, "init_noise_sigma", 1.0) == 1.0
    latents = initial_latents(denoiser)
    steps = 3
    ours = sample_with_adapter(denoiser, latents, steps, guidance_scale)
    theirs = run_pipeline(name, pipe, latents, steps, guidance_scale, "latent")
    assert ours.dtype == torch.float32 and ours.shape == latents.shape
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    assert not torch.allclose(ours, latents, atol=1e-2)  # the loop really moved the sample


def test_guidance_embedding_is_used(pipes: dict[str, Any]) -> None:
    denoiser = adapter_for(pipes, "flux_guidance")
    latents = initial_latents(denoiser)
    conditioning = denoiser.encode_prompts(PROMPTS, negative_prompt=None)
    timestep = denoiser.schedule(2, latents.shape[1:]).timesteps[:1]
    with torch.no_grad():
        at_2 = denoiser.predict(latents, timestep, conditioning, 1.0)
        denoiser.guidance = 5.0
        at_5 = denoiser.predict(latents, timestep, conditioning, 1.0)
    assert not torch.allclose(at_2, at_5)


@pytest.mark.parametrize("name", MAIN)
def test_decode_matches_pipeline(pipes: dict[str, Any], name: str) -> None:
    pipe = pipes[name]
    denoiser = adapter_for(pipes, name)
    latents = initial_latents(denoiser, seed=1)
    final = run_pipeline(name, pipe, latents, 2, 1.0, "latent")
    images = run_pipeline(name, pipe, latents, 2, 1.0, "pt")
    ours = denoiser.decode(final)
    assert ours.shape == (len(PROMPTS), 3, SIZE, SIZE) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, images, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", MAIN)
def test_save_and_load_gives_identical_predictions(pipes: dict[str, Any], name: str, tmp_path: Any) -> None:
    denoiser = adapter_for(pipes, name)
    pipes[name].save_pretrained(tmp_path)
    loaded = load_diffusers_denoiser(tmp_path, **CASES[name].options)
    assert type(loaded) is type(denoiser)
    latents = initial_latents(denoiser)
    timestep = denoiser.schedule(4, latents.shape[1:]).timesteps_for([0, 2])
    with torch.no_grad():
        expected = denoiser.predict(latents, timestep, denoiser.encode_prompts(PROMPTS), 3.0)
        got = loaded.predict(latents, timestep, loaded.encode_prompts(PROMPTS), 3.0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_load_rejects_missing_or_non_pipeline_folders(tmp_path: Any) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(ProGRPOConfigError, match="no_such_model"):
        load_diffusers_denoiser(missing)
    with pytest.raises(ProGRPOConfigError, match="model_index.json"):
        load_diffusers_denoiser(tmp_path)


@pytest.mark.parametrize("name", MAIN)
def test_gradients_reach_the_network(pipes: dict[str, Any], name: str) -> None:
    denoiser = adapter_for(pipes, name)
    latents = initial_latents(denoiser)
    conditioning = denoiser.encode_prompts(PROMPTS)
    timestep = denoiser.schedule(3, latents.shape[1:]).timesteps_for([0, 1])
    attention = {n: p for n, p in denoiser.network.named_parameters() if n.endswith("to_q.weight")}
    assert attention
    try:
        denoiser.predict(latents, timestep, conditioning, 3.0).square().mean().backward()
        for parameter_name, parameter in attention.items():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name
    finally:
        denoiser.network.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", MAIN)
def test_rows_with_own_prompts_and_timesteps_match_separate_calls(pipes: dict[str, Any], name: str) -> None:
    denoiser = adapter_for(pipes, name)
    prompts = ["a photo of a cat", "a red car", "a dog on a tree"]
    rows = torch.tensor([2, 0, 2, 1])
    latents = initial_latents(denoiser, rows=4, seed=2)
    timestep = denoiser.schedule(3, latents.shape[1:]).timesteps_for([0, 1, 2, 1])
    conditioning = denoiser.encode_prompts(prompts).take(rows)
    assert conditioning.prompts == [prompts[i] for i in rows.tolist()]
    with torch.no_grad():
        batched = denoiser.predict(latents, timestep, conditioning, 3.0)
        separate = torch.cat(
            [
                denoiser.predict(latents[j : j + 1], timestep[j : j + 1], denoiser.encode_prompts([prompts[r]]), 3.0)
                for j, r in enumerate(rows.tolist())
            ]
        )
    torch.testing.assert_close(batched, separate, atol=1e-5, rtol=0)


def test_flux_packing_matches_diffusers() -> None:
    from diffusers import FluxPipeline

    latents = torch.randn(2, 4, 6, 8)
    packed = pack_latents(latents)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(latents, 2, 4, 6, 8), atol=0, rtol=0)
    torch.testing.assert_close(unpack_latents(packed, 6, 8), latents, atol=0, rtol=0)
    expected_ids = FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32)
    torch.testing.assert_close(latent_image_ids(6, 8, torch.device("cpu"), torch.float32), expected_ids)


def test_pixel_space_unet_without_vae(pipes: dict[str, Any]) -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    parts = pipes["sd_eps"].components
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**parts["unet"].config, "in_channels": 1, "out_channels": 1})
    pipe = StableDiffusionPipeline(**{**parts, "unet": unet, "vae": None})
    denoiser = denoiser_from_pipeline(pipe)
    assert denoiser.latent_shape(16, 16) == (1, 16, 16)
    x = torch.linspace(-1.5, 1.5, 2 * 16 * 16).reshape(2, 1, 16, 16)
    images = denoiser.decode(x)
    assert images.shape == (2, 3, 16, 16)
    torch.testing.assert_close(images, (x / 2 + 0.5).clamp(0, 1).expand(-1, 3, -1, -1))
    timestep = denoiser.schedule(2, (1, 16, 16)).timesteps
    assert denoiser.predict(x, timestep, denoiser.encode_prompts(["a cat", "a dog"]), 2.0).shape == x.shape


def test_bad_inputs_name_the_input_and_the_fix(pipes: dict[str, Any]) -> None:
    denoiser = adapter_for(pipes, "sd_eps")
    conditioning = denoiser.encode_prompts(PROMPTS)
    timestep = torch.tensor([981.0, 981.0])
    with pytest.raises(ProGRPOConfigError, match="sample has 3 channels but the model expects 4"):
        denoiser.predict(torch.zeros(2, 3, 16, 16), timestep, conditioning, 1.0)
    with pytest.raises(ProGRPOConfigError, match="conditioning has 2 rows but sample has 3"):
        denoiser.predict(torch.zeros(3, 4, 16, 16), timestep[:1], conditioning, 1.0)
    with pytest.raises(ProGRPOConfigError, match="height=33"):
        denoiser.latent_shape(33, 32)
    with pytest.raises(ProGRPOConfigError, match="UNet2DConditionModel"):
        denoiser_from_pipeline(type("Pipe", (), {"unet": torch.nn.Linear(1, 1)})())
    assert set(DENOISER_TYPES) == {"UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel"}
