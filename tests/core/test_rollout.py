"""Expand-and-Prune rollouts: exact cost accounting, survivors' fidelity, real tiny models."""

from __future__ import annotations

import pytest
import torch

from progrpo.denoisers.diffusers_backend import denoiser_from_pipeline
from progrpo.diagnostics import clustering_fraction, preview_final_correlation, spearman
from progrpo.dynamics import policy_step
from progrpo.errors import ProGRPOConfigError
from progrpo.rewards import build_reward
from progrpo.rollout import RolloutConfig, expand_and_prune_rollout
from progrpo.tiny_models import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sd_pipeline
from testkit.gaussian_denoiser import GaussianDenoiser

PROMPTS = ["a red cat", "a blue car", "a thick seven"]


class RowCounter:
    """Counts rows that really pass through a network's forward (CFG branches included)."""

    def __init__(self, module: torch.nn.Module):
        self.rows = 0
        self.calls = 0
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else next(iter(kwargs.values()))
        self.rows += sample.shape[0]
        self.calls += 1


@pytest.fixture(scope="module")
def sd_denoiser():
    return denoiser_from_pipeline(tiny_sd_pipeline(seed=0))


@pytest.fixture(scope="module")
def brightness():
    return build_reward("brightness")


@pytest.mark.parametrize("preview", ["current", "stale"])
def test_ledger_counts_exactly_the_trajectory_steps_of_the_funnel(preview):
    """Schedule 8 -> 4 -> 2 at steps c1=3, c2=6 of 10: 8*c1 + 4*(c2-c1) + 2*(10-c2) trajectory-steps per
    prompt. The x_c preview adds one evaluation per PRUNED row at each checkpoint (8-4 at c1, 4-2 at c2):
    survivors reuse theirs for step c. The stale preview adds nothing."""
    denoiser = GaussianDenoiser(torch.zeros(3), torch.eye(3))
    counted_rows = []
    original = denoiser.predict
    denoiser.predict = lambda sample, *rest: (counted_rows.append(sample.shape[0]), original(sample, *rest))[1]
    config = RolloutConfig(group_size=8, num_steps=10, prune_schedule="3:4, 6:2", dynamics="flow_sde",
                           preview=preview)
    rollout = expand_and_prune_rollout(denoiser, denoiser.encode_prompts(PROMPTS), build_reward("brightness"), config)
    per_prompt = 8 * 3 + 4 * (6 - 3) + 2 * (10 - 6)
    extra = (8 - 4) + (4 - 2) if preview == "current" else 0
    assert sum(counted_rows) == len(PROMPTS) * (per_prompt + extra)  # what the model really saw
    assert rollout.ledger.trajectory_steps == len(PROMPTS) * per_prompt
    assert rollout.ledger.preview_evaluations == len(PROMPTS) * extra
    assert rollout.ledger.model_evaluations == len(PROMPTS) * (per_prompt + extra)  # no CFG branch here
    assert len(counted_rows) == 10  # one call per step either way: the preview call IS step c's call
    assert rollout.ledger.preview_decodes == len(PROMPTS) * (8 + 4)
    assert rollout.ledger.final_decodes == len(PROMPTS) * 2
    assert rollout.ledger.reward_calls == len(PROMPTS) * (8 + 4 + 2)
    assert rollout.num_survivors == len(PROMPTS) * 2
    assert (rollout.pruned_at == 3).sum() == len(PROMPTS) * 4 and (rollout.pruned_at == 6).sum() == len(PROMPTS) * 2


@pytest.mark.parametrize("preview", ["current", "stale"])
def test_ledger_counts_cfg_branches_on_a_real_network(sd_denoiser, brightness, preview):
    counter = RowCounter(sd_denoiser.network)
    config = RolloutConfig(group_size=4, num_steps=5, dynamics="ddim", guidance_scale=3.0,
                           prune_schedule="2:2", height=32, width=32, measure_flops=True, preview=preview)
    rollout = expand_and_prune_rollout(sd_denoiser, sd_denoiser.encode_prompts(PROMPTS[:2]), brightness, config)
    trajectory_steps = 2 * (4 * 2 + 2 * 3)
    extra = 2 * (4 - 2) * 2 if preview == "current" else 0  # 2 prompts x 2 pruned rows x 2 CFG branches
    assert rollout.ledger.trajectory_steps == trajectory_steps
    assert rollout.ledger.preview_evaluations == extra
    assert rollout.ledger.model_evaluations == 2 * trajectory_steps + extra == counter.rows
    assert rollout.ledger.model_calls == counter.calls == 5
    assert rollout.ledger.flops["sampling"] > 0 and rollout.ledger.flops["decode"] > 0


def test_current_preview_is_the_clean_sample_predicted_at_x_c(sd_denoiser):
    """The preview at checkpoint c scores x0 predicted by the network AT x_c (step c's call), which the
    stale mode does not: re-derive both by hand from the stored survivors' latents."""
    from progrpo.dynamics import predicted_x0_and_eps

    recorded: list[torch.Tensor] = []

    def reward(images, prompts):
        recorded.append(images.clone())
        return images.mean(dim=(1, 2, 3))

    conditioning = sd_denoiser.encode_prompts(PROMPTS[:2])
    common = dict(group_size=4, num_steps=5, dynamics="ddim", height=32, width=32, seed=5, prune_schedule="2:2",
                  selection="none")  # selection none: every row survives, so every preview row is stored
    previews = {}
    for preview, step in (("current", 2), ("stale", 1)):
        recorded.clear()
        rollout = expand_and_prune_rollout(sd_denoiser, conditioning, reward, RolloutConfig(**common, preview=preview))
        rows = rollout.num_survivors
        steps = torch.full((rows,), step)
        live = conditioning.take(rollout.prompt_index)
        with torch.no_grad():
            output = sd_denoiser.predict(rollout.latents[:, step], rollout.schedule.timesteps_for(steps), live, 1.0)
            clean = predicted_x0_and_eps(output.float(), rollout.latents[:, step].float(),
                                         rollout.schedule.coefficients(steps))[0]
            expected = sd_denoiser.decode(clean)
        assert (recorded[0] - expected).abs().max() <= 1e-5, preview
        torch.testing.assert_close(rollout.preview_rewards[0], expected.mean(dim=(1, 2, 3)), atol=1e-6, rtol=0)
        previews[preview] = recorded[0]
    # the two modes really differ (by far more than the 1e-5 tolerance above)
    assert (previews["current"] - previews["stale"]).abs().max() > 1e-3


def test_shared_initial_noise_gives_each_group_one_start():
    denoiser = GaussianDenoiser(torch.zeros(3), torch.eye(3))
    common = dict(group_size=4, num_steps=3, dynamics="flow_sde", seed=2, keep_images=False)
    conditioning = denoiser.encode_prompts(PROMPTS[:2])
    shared = expand_and_prune_rollout(denoiser, conditioning, build_reward("brightness"),
                                      RolloutConfig(**common, shared_initial_noise=True))
    own = expand_and_prune_rollout(denoiser, conditioning, build_reward("brightness"), RolloutConfig(**common))
    start = shared.latents[:, 0]
    for prompt in range(2):
        group = start[shared.prompt_index == prompt]
        assert torch.equal(group, group[:1].expand_as(group))  # one start per prompt
    assert not torch.equal(start[0], start[4])  # different prompts, different starts
    assert not torch.equal(own.latents[0, 0], own.latents[1, 0])  # default: every trajectory its own
    assert not torch.equal(shared.latents[0, 1], shared.latents[1, 1])  # the SDE noise still differs


@pytest.mark.parametrize("preview", ["current", "stale"])
def test_pruned_survivors_equal_the_same_rows_of_an_unpruned_run(sd_denoiser, brightness, preview):
    """Different prompt per group: pruning must slice conditioning, latents and noise to the survivors;
    with the x_c preview the survivors' reused step-c call must give the unpruned run's step c."""
    conditioning = sd_denoiser.encode_prompts(PROMPTS)
    common = dict(group_size=6, num_steps=6, dynamics="ddim", height=32, width=32, seed=11, preview=preview)
    full = expand_and_prune_rollout(sd_denoiser, conditioning, brightness, RolloutConfig(**common))
    pruned = expand_and_prune_rollout(
        sd_denoiser, conditioning, brightness, RolloutConfig(**common, prune_schedule="2:4, 4:2")
    )
    assert pruned.num_survivors == 3 * 2
    rows = pruned.trajectory_index  # positions of the survivors in the unpruned run
    assert torch.equal(pruned.prompt_index, full.prompt_index[rows])
    assert (pruned.latents - full.latents[rows]).abs().max() <= 1e-5
    assert (pruned.log_probs - full.log_probs[rows]).abs().max() <= 1e-5
    torch.testing.assert_close(pruned.final_rewards, full.final_rewards[rows], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "builder,dynamics",
    [(tiny_sd_pipeline, "ddim"), (tiny_sd3_pipeline, "flow_sde"), (tiny_flux_pipeline, "flow_sde"),
     (tiny_sd3_pipeline, "cps"), (tiny_flux_pipeline, "dance_sde")],
)
@pytest.mark.parametrize(
    "method,group_size,schedule,selection",
    [("grpo", 4, None, "ovf"), ("pro-grpo", 8, "2:4, 3:2", "ovf"), ("flash", 4, "2:3, 3:2", "ovf"),
     ("random", 8, "2:4, 3:2", "random")],
)
def test_methods_run_on_tiny_models(builder, dynamics, method, group_size, schedule, selection, brightness):
    denoiser = denoiser_from_pipeline(builder(seed=1))
    config = RolloutConfig(group_size=group_size, num_steps=5, dynamics=dynamics, prune_schedule=schedule,
                           selection=selection, guidance_scale=2.0, height=32, width=32)
    rollout = expand_and_prune_rollout(denoiser, denoiser.encode_prompts(PROMPTS[:2], ""), brightness, config)
    final = config.final_group_size
    channels, height, width = denoiser.latent_shape(32, 32)
    assert rollout.latents.shape == (2 * final, 6, channels, height, width)
    assert rollout.log_probs.shape == (2 * final, 5) and torch.isfinite(rollout.log_probs).all()
    assert rollout.images.shape == (2 * final, 3, 32, 32)
    assert rollout.images.min() >= 0 and rollout.images.max() <= 1
    assert torch.equal(rollout.prompt_index.bincount(), torch.full((2,), final))
    assert rollout.prompts[0] == PROMPTS[0] and rollout.prompts[-1] == PROMPTS[1]
    assert (rollout.step_std[:-1] > 0).all()
    if schedule is not None:
        assert (rollout.group_std_after >= 0).all()
        if selection == "ovf":  # OVF never lowers the within-group spread of what it scored
            assert (rollout.group_std_after >= rollout.group_std_before - 1e-6).all()


@pytest.mark.parametrize("builder,dynamics", [(tiny_sd_pipeline, "ddim"), (tiny_sd3_pipeline, "flow_sde")])
def test_reevaluating_stored_transitions_gives_ratio_one(builder, dynamics, brightness):
    denoiser = denoiser_from_pipeline(builder(seed=2))
    config = RolloutConfig(group_size=4, num_steps=4, dynamics=dynamics, guidance_scale=2.0,
                           prune_schedule="2:2", height=32, width=32)
    conditioning = denoiser.encode_prompts(PROMPTS[:2], "")
    rollout = expand_and_prune_rollout(denoiser, conditioning, brightness, config)
    rows = rollout.num_survivors
    live = conditioning.take(rollout.prompt_index)
    with torch.no_grad():
        for step in range(config.num_steps):
            steps = torch.full((rows,), step)
            output = denoiser.predict(rollout.latents[:, step], rollout.schedule.timesteps_for(steps), live, 2.0)
            again = policy_step(dynamics, output, rollout.latents[:, step], rollout.schedule.coefficients(steps),
                                float(rollout.noise_levels[step]), next_sample=rollout.latents[:, step + 1])
            assert (again.log_prob - rollout.log_probs[:, step]).abs().max() <= 1e-6
            assert torch.exp(again.log_prob - rollout.log_probs[:, step]).sub(1).abs().max() <= 1e-6


def test_sde_window_makes_other_steps_deterministic(sd_denoiser, brightness):
    config = RolloutConfig(group_size=2, num_steps=6, dynamics="ddim", sde_window=(1, 3), height=32, width=32)
    rollout = expand_and_prune_rollout(sd_denoiser, sd_denoiser.encode_prompts(PROMPTS[:1]), brightness, config)
    assert rollout.trainable_steps.tolist() == [1, 2]
    assert (rollout.log_probs[:, [0, 3, 4, 5]] == 0).all()


def test_diagnostics():
    assert clustering_fraction(torch.tensor([0.0, 0.1, -0.2, 1.0]), delta=0.25) == 0.75
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # ties: average ranks, scipy's definition
    assert spearman(torch.tensor([1.0, 1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.9486832980505138)
    denoiser = GaussianDenoiser(torch.zeros(2), torch.eye(2))
    config = RolloutConfig(group_size=16, num_steps=10, prune_schedule="8:8", selection="none")
    rollout = expand_and_prune_rollout(denoiser, denoiser.encode_prompts(PROMPTS), build_reward("brightness"), config)
    correlation = preview_final_correlation(rollout)
    # near the end the clean-sample preview nearly is the final sample: strongly rank-correlated
    assert correlation[8] > 0.8


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(group_size=1), "group_size=1: GRPO needs at least 2"),
        (dict(group_size=8, prune_schedule="3:8"), "group has only 8 trajectories"),
        (dict(group_size=8, num_steps=4, prune_schedule="4:4"), "outside 1..3"),
        (dict(prune_schedule="3:4, 5:1"), "at least 2"),
        (dict(dynamics="euler_a"), "dynamics 'euler_a' is unknown"),
        (dict(selection="best"), "selection 'best' is unknown"),
        (dict(noise_level=-0.1), "noise_level=-0.1 must be >= 0"),
        (dict(sde_window=(3, 2)), "sde_window"),
        (dict(num_steps=0), "num_steps=0 must be a positive integer"),
        (dict(height=0), "height=0 must be a positive integer"),
    ],
)
def test_bad_rollout_configs_name_the_input(options, message):
    with pytest.raises(ProGRPOConfigError, match=message):
        RolloutConfig(**options)


@pytest.mark.parametrize(
    "options,field",
    [
        ({"group_size": 1}, "rollout.group_size"),
        ({"width": 0}, "rollout.width"),
        ({"group_size": 8, "prune_schedule": "3:8"}, "rollout.prune_schedule"),
        ({"prune_schedule": "3"}, "rollout.prune_schedule"),
        ({"dynamics": "euler_a"}, "rollout.dynamics"),
        ({"selection": "best"}, "rollout.selection"),
        ({"noise_level": -0.1}, "rollout.noise_level"),
        ({"group_size": 8, "final_keep": 8}, "rollout.final_keep"),
        ({"sde_window": (3, 2)}, "rollout.sde_window"),
        ({"max_batch_rows": 0}, "rollout.max_batch_rows"),
        ({"guidance_scale": -1.0}, "rollout.guidance_scale"),
        ({"preview": "future"}, "rollout.preview"),
        ({"shared_initial_noise": 1}, "rollout.shared_initial_noise"),
    ],
)
def test_bad_rollout_configs_carry_the_train_config_field(options, field):
    with pytest.raises(ProGRPOConfigError) as caught:
        RolloutConfig(**options)
    assert caught.value.field == field


def test_dynamics_must_fit_the_model(sd_denoiser, brightness):
    with pytest.raises(ProGRPOConfigError, match="use 'ddim' or 'cps'"):
        expand_and_prune_rollout(sd_denoiser, sd_denoiser.encode_prompts(PROMPTS[:1]), brightness,
                                 RolloutConfig(group_size=2, num_steps=2, dynamics="flow_sde"))


def test_reward_must_return_one_score_per_image():
    denoiser = GaussianDenoiser(torch.zeros(2), torch.eye(2))
    with pytest.raises(ProGRPOConfigError, match="one per image"):
        expand_and_prune_rollout(denoiser, denoiser.encode_prompts(PROMPTS[:1]), lambda images, prompts: torch.zeros(1),
                                 RolloutConfig(group_size=2, num_steps=2))


def test_static_final_filter_keeps_the_max_variance_subset_of_final_rewards():
    denoiser = GaussianDenoiser(torch.zeros(2), torch.eye(2))
    conditioning = denoiser.encode_prompts(PROMPTS)
    common = dict(group_size=8, num_steps=4, seed=5)
    full = expand_and_prune_rollout(denoiser, conditioning, build_reward("brightness"), RolloutConfig(**common))
    static = expand_and_prune_rollout(denoiser, conditioning, build_reward("brightness"),
                                      RolloutConfig(**common, final_keep=3))
    assert static.num_survivors == 3 * len(PROMPTS)
    assert static.ledger.trajectory_steps == full.ledger.trajectory_steps  # sampled in full, filtered after
    from progrpo.ovf import optimal_variance_subset

    expected = optimal_variance_subset(full.final_rewards.reshape(len(PROMPTS), 8), 3)
    expected = (expected + torch.arange(len(PROMPTS)).unsqueeze(1) * 8).reshape(-1)
    assert torch.equal(static.trajectory_index, expected)
    assert torch.equal(static.final_rewards, full.final_rewards[expected])
    assert (static.pruned_at == 4).sum() == 5 * len(PROMPTS)
    with pytest.raises(ProGRPOConfigError, match="final_keep=8"):
        RolloutConfig(group_size=8, final_keep=8)
