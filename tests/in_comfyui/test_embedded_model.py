"""The shipped digits generators as ComfyUI MODEL / CLIP / VAE (ProGRPOEmbeddedModelLoader), in-process.

The loader must give ComfyUI exactly the model the diffusers backend runs: the same prompt
encoding through the stock CLIPTextEncode, the same clean-sample predictions and log-probs at the
same sigmas, and stock KSampler samples that the digit classifier recognises as the prompted digit.
"""

from __future__ import annotations

import pytest
import torch

from testkit.comfy_harness import load_extension_nodes, requires_comfyui

pytestmark = [pytest.mark.slow, requires_comfyui]

PROMPTS = ["a handwritten digit 3", "a handwritten digit 7"]
ROWS = torch.tensor([1, 0, 0, 1])


@pytest.fixture(scope="module")
def embedded():
    load_extension_nodes()
    from progrpo_comfy_nodes import embedded_model

    return embedded_model


@pytest.fixture(scope="module")
def stock():
    import nodes as comfy_nodes  # ComfyUI's own nodes module (its folder is first on sys.path)

    return comfy_nodes


def _encode(stock, clip, texts):
    with torch.inference_mode():
        return [stock.CLIPTextEncode().encode(clip, text)[0] for text in texts]


def _x0(schedule, step, output, sample):
    from progrpo.dynamics import predicted_x0_and_eps

    return predicted_x0_and_eps(output, sample, schedule.coefficients(torch.full((sample.shape[0],), step)))[0]


def test_stock_clip_text_encode_equals_the_pipeline_encoding(embedded, stock):
    from progrpo.denoisers.loading import load_denoiser

    clip = embedded.load_embedded_clip("digits_flow")
    diffusers = load_denoiser("embedded:digits_flow")
    expected = diffusers.encode_prompts(PROMPTS + [""], None).positive["encoder_hidden_states"]
    encoded = _encode(stock, clip, PROMPTS + [""])
    for index, conditioning in enumerate(encoded):
        assert len(conditioning) == 1 and conditioning[0][1]["pooled_output"].shape == (1, 32)
        torch.testing.assert_close(conditioning[0][0], expected[index : index + 1], atol=0, rtol=0)
    # CLIP Set Last Layer is honoured (the penultimate layer is a different encoding), and -3 is refused.
    with torch.inference_mode():
        penultimate = stock.CLIPTextEncode().encode(stock.CLIPSetLastLayer().set_last_layer(clip, -2)[0], PROMPTS[0])[0]
        assert not torch.allclose(penultimate[0][0], encoded[0][0][0])
        with pytest.raises(Exception, match="layer -3 is out of range"):
            stock.CLIPTextEncode().encode(stock.CLIPSetLastLayer().set_last_layer(clip, -3)[0], PROMPTS[0])


@pytest.mark.parametrize("name", ["digits_flow", "digits_ddim"])
def test_comfy_model_matches_the_diffusers_backend(embedded, stock, name):
    """Same x0 and log-probs as progrpo's diffusers backend on the same sigmas, rows and guidance."""
    from progrpo_comfy_nodes.comfy_backend import ComfyDenoiser

    from progrpo.denoisers.loading import load_denoiser
    from progrpo.dynamics import policy_step

    diffusers = load_denoiser(f"embedded:{name}")
    flow = name == "digits_flow"
    sched_d = diffusers.schedule(10, (1, 16, 16))
    options = {"sigmas": torch.cat([sched_d.sigma, sched_d.sigma_next[-1:]])} if flow else {"scheduler": "ddim_uniform"}
    model, clip = embedded.load_embedded_model(name), embedded.load_embedded_clip(name)
    comfy = ComfyDenoiser(model, vae=embedded.grey_pixel_vae(), clip=clip, **options)
    sched_c = comfy.schedule(10, (1, 16, 16))
    assert sched_c.kind == ("flow" if flow else "vp")
    torch.testing.assert_close(sched_c.alpha, sched_d.alpha, atol=1e-6, rtol=0)
    cond_d, cond_c = diffusers.encode_prompts(PROMPTS, ""), comfy.encode_prompts(PROMPTS, "")
    dynamic = "flow_sde" if flow else "ddim"
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(4, 1, 16, 16, generator=generator)
    for step in (0, 5, 8):
        rows = torch.full((4,), step)
        for guidance in (1.0, 3.0):
            out_d = diffusers.predict(sample, sched_d.timesteps_for(rows), cond_d.take(ROWS), guidance)
            out_c = comfy.predict(sample, sched_c.timesteps_for(rows), cond_c.take(ROWS), guidance)
            torch.testing.assert_close(_x0(sched_c, step, out_c, sample), _x0(sched_d, step, out_d, sample),
                                       atol=1e-4, rtol=1e-5)
        given = policy_step(dynamic, out_d, sample, sched_d.coefficients(rows), 0.7, generator=generator)
        log_d = policy_step(dynamic, out_d, sample, sched_d.coefficients(rows), 0.7, next_sample=given.next_sample)
        log_c = policy_step(dynamic, out_c, sample, sched_c.coefficients(rows), 0.7, next_sample=given.next_sample)
        torch.testing.assert_close(log_c.log_prob, log_d.log_prob, atol=1e-4, rtol=0)


def test_stock_ksampler_draws_the_prompted_digits(embedded, stock):
    """Empty Latent Image -> KSampler -> VAE Decode: 16x16 RGB images the classifier reads as the prompt."""
    from progrpo.rewards.digits import DigitAlignmentReward

    model, clip, vae = (embedded.load_embedded_model("digits_flow"), embedded.load_embedded_clip("digits_flow"),
                        embedded.grey_pixel_vae())
    reward = DigitAlignmentReward()
    negative = _encode(stock, clip, [""])[0]
    correct = 0
    with torch.inference_mode():
        for prompt, positive in zip(PROMPTS, _encode(stock, clip, PROMPTS), strict=True):
            latent = stock.EmptyLatentImage().generate(128, 128, 16)[0]
            sampled = stock.common_ksampler(model, 7, 10, 3.0, "euler", "simple", positive, negative, latent)[0]
            assert sampled["samples"].shape == (16, 1, 16, 16)
            images = stock.VAEDecode().decode(vae, sampled)[0]
            assert images.shape == (16, 16, 16, 3) and float(images.min()) >= 0 and float(images.max()) <= 1
            assert torch.equal(images[..., 0], images[..., 2])  # grey
            predicted = reward.predict(images.movedim(-1, 1))
            correct += int((predicted == int(prompt[-1])).sum())
            # VAE Encode inverts VAE Decode on grey images in range
            encoded = stock.VAEEncode().encode(vae, images)[0]["samples"]
            torch.testing.assert_close(encoded, sampled["samples"].clamp(-1, 1), atol=1e-6, rtol=0)
    # Chance is 10%. Recorded with progrpo's sampler (metrics.json): 92% over all digits at CFG 3, and
    # "3" is the weakest digit (28% at CFG 1); stock euler on 3 and 7 measured 23/32 here.
    assert correct / 32 >= 0.6, f"only {correct}/32 samples show the prompted digit"


def test_loader_node_outputs_and_lora_wrappers_reach_the_unet(embedded):
    """The node returns MODEL/CLIP/VAE; training wrappers hook every attention projection of the UNet."""
    from progrpo_comfy_nodes.comfy_lora import ComfyLoraAdapter

    output = embedded.ProGRPOEmbeddedModelLoader.execute("digits_ddim")
    model, clip, vae = output.result
    assert model.model.latent_format.latent_channels == 1 and vae.latent_channels == 1
    assert clip.tokenize("a handwritten digit 4")["digits"][0][:4] == [(2, 1.0), (4, 1.0), (5, 1.0), (6, 1.0)]
    adapter = ComfyLoraAdapter(model, rank=2, alpha=2.0)
    projections = [name for name, module in model.model.named_modules()
                   if name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or name.endswith("to_out.0")]
    assert len(adapter.wrappers) == len(projections) > 0
    assert all(key.startswith("diffusion_model.unet.") for key in adapter.key_names.values())
