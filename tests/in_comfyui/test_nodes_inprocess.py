"""The Pro-GRPO nodes called in-process on a tiny ComfyUI model (no server): exactness checks.

* ProGRPOSampler with ``ode`` is ComfyUI's Euler sampler (eps and flow models).
* Pruned rollouts through ComfyDenoiser, one prompt per trajectory group, give survivors exactly
  the latents the same rows get unpruned.
* The expanded sampler node, the OVF filter, the reward nodes and the plots on small inputs.
"""

from __future__ import annotations

import pytest
import torch

from testkit.comfy_harness import comfy_model_from_diffusers_unet, load_extension_nodes, requires_comfyui

pytestmark = [pytest.mark.slow, requires_comfyui]


@pytest.fixture(scope="module")
def ext():
    load_extension_nodes()
    import progrpo_comfy_nodes

    return progrpo_comfy_nodes


@pytest.fixture(scope="module")
def pipe():
    from progrpo.tiny_models import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=1)


def _conds(pipe, count: int = 1):
    generator = torch.Generator().manual_seed(0)
    width = pipe.unet.config.cross_attention_dim
    positives = [[[torch.randn(1, 16, width, generator=generator), {}]] for _ in range(count)]
    return positives, [[torch.zeros(1, 16, width), {}]]


@pytest.mark.parametrize("model_type", ["epsilon", "flow"])
def test_ode_sampler_node_is_comfyui_euler(ext, pipe, model_type):
    import comfy.sample
    import comfy.samplers

    model = comfy_model_from_diffusers_unet(pipe.unet, model_type)
    (positive,), negative = _conds(pipe)
    latent = torch.zeros(2, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 6)
    reference = comfy.sample.sample_custom(model, noise, 3.0, comfy.samplers.sampler_object("euler"), sigmas,
                                           positive, negative, latent, seed=5)
    sampler = ext.ProGRPOSampler.execute("ode", -1.0).result[0]
    ours = comfy.sample.sample_custom(model, noise, 3.0, sampler, sigmas, positive, negative, latent, seed=5)
    # fp32 rounding of the state rescaling x / sqrt(1 + s^2) on eps models; exact on flow models.
    assert (ours - reference).abs().max() <= 1e-4 * max(1.0, float(reference.abs().max()))


def test_stochastic_sampler_node_is_seeded_and_differs_from_ode(ext, pipe):
    import comfy.sample
    import comfy.samplers

    model = comfy_model_from_diffusers_unet(pipe.unet, "flow")
    (positive,), negative = _conds(pipe)
    latent = torch.zeros(2, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 4)

    def run(dynamics: str, seed: int) -> torch.Tensor:
        sampler = ext.ProGRPOSampler.execute(dynamics, -1.0).result[0]
        return comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, positive, negative, latent, seed=seed)

    first = run("flow_sde", 5)
    assert torch.isfinite(first).all()
    assert torch.equal(first, run("flow_sde", 5))
    assert not torch.allclose(first, run("flow_sde", 6))
    assert not torch.allclose(first, run("ode", 5))


def test_pruned_survivors_match_unpruned_rows_with_a_prompt_per_group(ext, pipe):
    from progrpo.rewards import build_reward
    from progrpo.rollout import RolloutConfig, expand_and_prune_rollout

    model = comfy_model_from_diffusers_unet(pipe.unet, "epsilon")
    positives, negative = _conds(pipe, count=3)
    reward = build_reward("brightness")

    # One row per model call: CPU kernels round differently for different batch sizes (~1e-6), and a
    # pruned run batches fewer rows; with equal calls the survivors must agree bit for bit.
    def rollout(schedule):
        denoiser = ext.comfy_backend.ComfyDenoiser(model)  # pixel-free: decode the latents' first 3 channels
        denoiser.decode = lambda latents: (latents[:, :3].float() / 2 + 0.5).clamp(0, 1)
        conditioning = denoiser.conditioning(positives, negative, ["a", "b", "c"])
        config = RolloutConfig(group_size=4, num_steps=4, dynamics="ddim", guidance_scale=2.0, height=8, width=8,
                               prune_schedule=schedule, seed=11, max_batch_rows=1)
        return expand_and_prune_rollout(denoiser, conditioning, reward, config)

    pruned, full = rollout("2:3, 3:2"), rollout(None)
    assert pruned.num_survivors == 6 and full.num_survivors == 12
    assert pruned.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    same_rows = full.latents[pruned.trajectory_index]
    assert torch.equal(pruned.latents, same_rows)
    assert torch.equal(pruned.log_probs, full.log_probs[pruned.trajectory_index])
    # the groups really saw different prompts: their final latents differ for equal noise statistics.
    assert not torch.allclose(full.latents[0, -1], full.latents[4, -1])


def test_expanded_sampler_node_outputs_and_errors(ext, pipe):
    from progrpo.errors import ProGRPOConfigError
    from progrpo.pruning import PruneSchedule
    from progrpo.rewards import build_reward

    model = comfy_model_from_diffusers_unet(pipe.unet, "epsilon")
    (positive,), negative = _conds(pipe)
    node = ext.ProGRPOExpandedSampler
    args = {"model": model, "positive": positive, "negative": negative, "latent": {"samples": torch.zeros(1, 4, 8, 8)},
            "group_size": 6, "steps": 4, "dynamics": "cps", "noise_level": -1.0, "cfg": 3.0, "seed": 7,
            "scheduler": "normal"}
    plain = node.execute(**args).result
    assert plain[0]["samples"].shape == (6, 4, 8, 8) and plain[2].shape == (6, 8, 8, 3)
    from test_comfy_backend import DiffusersVAEAsComfyVAE

    vae = DiffusersVAEAsComfyVAE(pipe.vae)
    pruned = node.execute(**args, prune_schedule=PruneSchedule.parse("2:4, 3:2"),
                          reward=build_reward("brightness"), vae=vae).result
    rollout = pruned[1]
    assert pruned[0]["samples"].shape == (2, 4, 8, 8) and pruned[2].shape == (2, 16, 16, 3)
    with pytest.raises(ProGRPOConfigError, match=r"^vae: "):
        node.execute(**args, reward=build_reward("brightness"))
    # survivors are the unpruned run's rows (same seed), in ComfyUI's latent space (up to batch-size rounding)
    torch.testing.assert_close(pruned[0]["samples"], plain[0]["samples"][rollout.trajectory_index],
                               atol=1e-4, rtol=1e-5)
    # as KSampler: an all-zero latent of another channel count is converted (comfy's fix_empty_latent_channels) ...
    converted = node.execute(**{**args, "latent": {"samples": torch.zeros(1, 16, 8, 8)}}).result
    assert torch.equal(converted[0]["samples"], plain[0]["samples"])
    # ... one with content is not, nor a video latent on an image model
    for samples in (torch.ones(1, 16, 8, 8), torch.zeros(1, 4, 2, 8, 8)):
        with pytest.raises(ProGRPOConfigError, match=r"^latent: .*4 latent channels"):
            node.execute(**{**args, "latent": {"samples": samples}})
    with pytest.raises(ProGRPOConfigError, match=r"^reward: "):
        node.execute(**args, prune_schedule=PruneSchedule.parse("2:4"))
    with pytest.raises(ProGRPOConfigError, match=r"^prune_schedule: .*"):
        node.execute(**{**args, "group_size": 3}, prune_schedule=PruneSchedule.parse("2:4"),
                     reward=build_reward("brightness"), vae=vae)
    with pytest.raises(ProGRPOConfigError, match=r"^dynamics: "):
        node.execute(**{**args, "dynamics": "flow_sde"})

    funnel = ext.ProGRPOPruningFunnel.execute(rollout).result[0]
    histogram = ext.ProGRPOClusteringHistogram.execute(rollout, 0.25).result[0]
    for plot in (funnel, histogram):
        assert plot.ndim == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3
        assert 0.0 <= float(plot.min()) and float(plot.max()) <= 1.0 and float(plot.std()) > 0
    from progrpo_comfy_nodes.plots import live_per_step

    assert live_per_step(rollout) == [6, 6, 4, 2]


def test_ovf_filter_keeps_the_max_variance_subset_per_group(ext):
    from progrpo.errors import ProGRPOConfigError

    scores = torch.tensor([0.5, 0.1, 0.9, 0.45, 3.0, 2.0, 1.0, 2.1])
    images = torch.arange(8.0).reshape(8, 1, 1, 1).expand(8, 2, 2, 3).contiguous()
    kept_images, _, indices = ext.ProGRPOOVFFilter.execute(scores, 2, 4, images).result
    assert indices == "1, 2, 4, 6"  # per group: its lowest and highest score
    assert kept_images[:, 0, 0, 0].tolist() == [1.0, 2.0, 4.0, 6.0]
    with pytest.raises(ProGRPOConfigError, match=r"^k: "):
        ext.ProGRPOOVFFilter.execute(scores, 5, 4, images)
    with pytest.raises(ProGRPOConfigError, match=r"^group_size: "):
        ext.ProGRPOOVFFilter.execute(scores, 2, 3, images)


def test_reward_nodes_score_with_a_clip_folder_and_weights(ext, tmp_path, monkeypatch):
    import folder_paths

    from progrpo.rewards.tiny import save_tiny_clip

    rewards = ext.rewards
    rewards.register_rewards_folder()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "rewards", ([str(tmp_path)], rewards.HEAD_EXTENSIONS))
    save_tiny_clip(tmp_path / "tiny_clip")
    assert "tiny_clip" in rewards.reward_entries()
    clip = ext.ProGRPORewardLoader.execute("clip_score", "tiny_clip", "(none)", 1.0).result[0]
    bright = ext.ProGRPORewardLoader.execute("brightness", "tiny_clip", "(none)", 2.0).result[0]  # model ignored
    images = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    scores, text = ext.ProGRPORewardScore.execute(images, bright, "one prompt").result
    assert scores.shape == (3,) and text.count("\n") == 2
    clip_scores = ext.ProGRPORewardScore.execute(images, clip, "a\nb\nc").result[0]
    assert clip_scores.shape == (3,) and torch.isfinite(clip_scores).all()
    combined = ext.ProGRPORewardCombine.execute(clip, 1.0, bright, -1.0).result[0]
    both = ext.ProGRPORewardScore.execute(images, combined, "a\nb\nc").result[0]
    assert torch.allclose(both, clip_scores - scores, atol=1e-5)
    assert "was not found in the rewards folder" in rewards._check_choice("clip_score", "missing", "(none)")
    assert rewards._check_choice("clip_score", "(none)", "(none)").startswith("model:")
    with pytest.raises(Exception, match=r"^prompts: 2 lines for 3 images"):
        ext.ProGRPORewardScore.execute(images, bright, "a\nb")


def test_expanded_sampler_ticks_progress_every_step_and_cancels_within_one(ext, pipe):
    import comfy.model_management
    import comfy.utils

    model = comfy_model_from_diffusers_unet(pipe.unet, "epsilon")
    (positive,), negative = _conds(pipe)
    ticks: list[tuple[int, int]] = []

    def hook(value, total, preview=None, node_id=None):
        ticks.append((value, total))
        if cancel_at is not None and value >= cancel_at:  # what the server's hook does on /interrupt
            raise comfy.model_management.InterruptProcessingException()

    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        cancel_at = None
        ext.ProGRPOExpandedSampler.execute(model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, 3, 5,
                                           "ddim", -1.0, 1.0, 0, "normal")
        assert ticks == [(step, 5) for step in range(1, 6)]
        ticks.clear()
        cancel_at = 2
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            ext.ProGRPOExpandedSampler.execute(model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, 3,
                                               5, "ddim", -1.0, 1.0, 0, "normal")
        assert ticks == [(1, 5), (2, 5)]
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)


def test_sampler_node_names_dynamics_that_do_not_fit_the_model(ext, pipe):
    import comfy.sample
    import comfy.samplers

    from progrpo.errors import ProGRPOConfigError

    model = comfy_model_from_diffusers_unet(pipe.unet, "epsilon")
    (positive,), negative = _conds(pipe)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 2)
    sampler = ext.ProGRPOSampler.execute("flow_sde", -1.0).result[0]
    latent = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ProGRPOConfigError, match=r"^dynamics: .*'ddim' or 'cps'"):
        comfy.sample.sample_custom(model, torch.randn(latent.shape), 1.0, sampler, sigmas, positive, negative, latent)


def test_config_errors_name_the_node_input_of_their_field(ext):
    from progrpo.errors import ProGRPOConfigError
    from progrpo_comfy_nodes.input_errors import relabeled

    loop, sampler = ext.ProGRPOTrainLoop, ext.ProGRPOExpandedSampler
    steps = relabeled(ProGRPOConfigError("num_steps=0 must be >= 1.", field="rollout.num_steps"), node=loop)
    assert str(steps) == "steps: num_steps=0 must be >= 1." and steps.field == "rollout.num_steps"
    assert str(relabeled(ProGRPOConfigError("must be >= 0.", field="rollout.guidance_scale"), node=loop)) == \
        "cfg: must be >= 0."
    # the sampler has no height input (the latent gives the size): no prefix
    assert str(relabeled(ProGRPOConfigError("height=7 is odd.", field="rollout.height"), node=sampler)) == \
        "height=7 is odd."
    # an error without a field is about no single input: the message is not read for one
    assert str(relabeled(ProGRPOConfigError("lr=-1 must be >= 0."), node=loop)) == "lr=-1 must be >= 0."
    assert str(relabeled(ProGRPOConfigError("dynamics: no."), input_name="dynamics")) == "dynamics: no."
