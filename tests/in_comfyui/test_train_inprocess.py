"""Pro-GRPO training nodes in-process, on a model loaded the way the server loads it (inference mode).

* The LoRA trains through ComfyUI's weight wrappers on a clone: the cached model's stock KSampler
  output is bit-identical after training and after a failed run.
* A LoRA applied upstream with the stock LoraLoader stays in effect in the trained MODEL.
* ProGRPOSaveLoRA's file loads through the stock LoraLoader with every key mapped and gives the
  trained MODEL's KSampler output.
* An interrupt mid-run leaves a checkpoint from which the run resumes to exactly the weights of an
  uninterrupted run.
"""

from __future__ import annotations

import logging

import pytest
import torch

from testkit.comfy_harness import load_extension_nodes, requires_comfyui
from testkit.tiny_stock_models import UNET_FILE, write_tiny_stock_models

pytestmark = [pytest.mark.slow, requires_comfyui]

TRAIN = {"group_size": 4, "steps": 3, "dynamics": "ddim", "noise_level": -1.0, "cfg": 2.0, "width": 32, "height": 32,
         "iterations": 2, "lr": 3e-2, "rank": 2, "alpha": 2.0, "checkpoint_every": 1, "resume": False, "seed": 0,
         "scheduler": "normal"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny UNet + TAESD in temp folders registered with folder_paths; output and loras folders in temp."""
    load_extension_nodes()
    import folder_paths

    root = tmp_path_factory.mktemp("train-inprocess")
    models = root / "models"
    (models / "diffusion_models").mkdir(parents=True)
    # only the UNet and TAESD (no 250 MB CLIP): tiny_stock_models skips files that exist
    (models / "text_encoders").mkdir()
    (models / "text_encoders" / "tiny_clip_l.safetensors").touch()
    write_tiny_stock_models(models)
    saved = {name: (list(folder_paths.folder_names_and_paths[name][0]),) for name in ("vae_approx", "diffusion_models",
                                                                                      "loras")}
    old_output = folder_paths.get_output_directory()
    folder_paths.add_model_folder_path("vae_approx", str(models / "vae_approx"), is_default=True)
    folder_paths.add_model_folder_path("diffusion_models", str(models / "diffusion_models"), is_default=True)
    (root / "loras").mkdir()
    folder_paths.add_model_folder_path("loras", str(root / "loras"), is_default=True)
    folder_paths.set_output_directory(str(root / "output"))
    yield root
    folder_paths.set_output_directory(old_output)
    for name, (paths,) in saved.items():
        folder_paths.folder_names_and_paths[name][0][:] = paths


@pytest.fixture(scope="module")
def loaded(env):
    """(model, vae, reward, positive, negative) loaded inside inference mode, as the server does."""
    import progrpo_comfy_nodes as ext

    import nodes as comfy_nodes

    with torch.inference_mode():
        model = comfy_nodes.UNETLoader().load_unet(UNET_FILE, "default")[0]
        vae = comfy_nodes.VAELoader().load_vae("taesd")[0]
        reward = ext.ProGRPORewardLoader.execute("brightness", "(none)", "(none)", 1.0).result[0]
    assert next(model.model.parameters()).is_inference()
    generator = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 77, 768, generator=generator), {}]]
    negative = [[torch.zeros(1, 77, 768), {}]]
    return model, vae, reward, positive, negative


def _ksampler(model, positive, negative, seed: int = 7) -> torch.Tensor:
    import nodes as comfy_nodes

    with torch.inference_mode():
        latent = {"samples": torch.zeros(1, 4, 4, 4)}
        return comfy_nodes.KSampler().sample(model, seed, 3, 2.0, "euler", "normal", positive, negative,
                                             latent)[0]["samples"].clone()


def _train(model, vae, reward, positive, negative, **overrides):
    import progrpo_comfy_nodes as ext

    settings = {**TRAIN, "run_name": "run", **overrides}
    with torch.inference_mode():  # ComfyUI executes nodes in inference mode
        return ext.ProGRPOTrainLoop.execute(model, vae, reward, positive=positive, negative=negative,
                                            **settings).result


def test_training_on_an_inference_mode_model_leaves_the_cached_model_bit_identical(loaded):
    model, vae, reward, positive, negative = loaded
    before = _ksampler(model, positive, negative)
    trained, lora, curve = _train(model, vae, reward, positive, negative, run_name="identity")
    assert curve.ndim == 4 and curve.shape[-1] == 3
    assert len(lora) == 3 * 24 and all(key.startswith("lora_unet_") for key in lora)
    assert torch.equal(_ksampler(model, positive, negative), before)
    assert not torch.equal(_ksampler(trained, positive, negative), before)  # the LoRA learnt something
    assert torch.equal(_ksampler(model, positive, negative), before)

    class Failing:
        calls = 0

        def score(self, images, prompts):
            Failing.calls += 1
            if Failing.calls > 1:
                raise RuntimeError("reward failed")
            return images.mean(dim=(1, 2, 3))

    with pytest.raises(RuntimeError, match="reward failed"):
        _train(model, vae, Failing(), positive, negative, run_name="failing")
    assert torch.equal(_ksampler(model, positive, negative), before)


def test_upstream_lora_stays_in_effect_during_training(loaded, env):
    from progrpo_comfy_nodes.comfy_backend import ComfyDenoiser
    from progrpo_comfy_nodes.comfy_lora import ComfyLoraAdapter, training_context
    from safetensors.torch import save_file

    import nodes as comfy_nodes

    model, vae, reward, positive, negative = loaded
    _, lora, _ = _train(model, vae, reward, positive, negative, run_name="upstream", iterations=1)
    save_file({k: v.contiguous() for k, v in lora.items()}, str(env / "loras" / "upstream.safetensors"))
    with torch.inference_mode():
        patched = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "upstream.safetensors", 20.0)[0]
    adapter = ComfyLoraAdapter(patched, rank=2, alpha=2.0)  # fresh: identity
    denoiser = ComfyDenoiser(adapter.patcher)
    base = ComfyDenoiser(model)
    upstream = ComfyDenoiser(patched)
    sample, sigma = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([3.0, 3.0])

    def predict(den):
        conditioning = den.conditioning(positive, negative)
        return den.predict(sample, sigma, conditioning.take(torch.tensor([0, 0])), 2.0)

    with torch.inference_mode():
        expected, plain = predict(upstream), predict(base)
    with training_context():
        ours = predict(denoiser)
        ours.square().mean().backward()  # gradients flow with the upstream LoRA patched in
    assert (expected - plain).abs().max() > 1e-5
    assert torch.equal(ours.detach(), expected)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())


def test_saved_lora_loads_completely_and_matches_the_trained_model(loaded, env, caplog):
    import progrpo_comfy_nodes as ext
    from safetensors import safe_open

    import nodes as comfy_nodes

    model, vae, reward, positive, negative = loaded
    trained, lora, _ = _train(model, vae, reward, positive, negative, run_name="save")
    with torch.inference_mode():
        name = ext.ProGRPOSaveLoRA.execute(lora, "progrpo_saved").result[0]
    assert name == "progrpo_saved.safetensors"
    path = env / "loras" / name
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["rank"] == "2" and "progrpo_steps" in handle.metadata()
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        applied = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)[0]
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()
                or "NOT LOADED" in r.getMessage()]
    assert len(applied.patches) == 24
    base = _ksampler(model, positive, negative)
    ours, stock = _ksampler(trained, positive, negative), _ksampler(applied, positive, negative)
    assert (ours - base).abs().max() > 1e-3
    assert (ours - stock).abs().max() <= 1e-4


def test_interrupt_leaves_a_checkpoint_that_resumes_exactly(loaded, env):
    import comfy.model_management as mm

    model, vae, reward, positive, negative = loaded
    full = _train(model, vae, reward, positive, negative, run_name="full", iterations=3, checkpoint_every=0)[1]

    class Interrupting:
        """The same reward (the run records its name), with Cancel pressed during iteration 2."""

        calls = 0
        name = reward.name

        def score(self, images, prompts):
            Interrupting.calls += 1
            if Interrupting.calls == 2:  # during iteration 2's rollout (iteration 1 scored once)
                mm.interrupt_current_processing(True)
            return reward.score(images, prompts)

    with pytest.raises(mm.InterruptProcessingException):
        _train(model, vae, Interrupting(), positive, negative, run_name="stopped", iterations=3, checkpoint_every=0)
    mm.interrupt_current_processing(False)
    checkpoints = env / "output" / "progrpo" / "stopped" / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "iter_1"
    resumed = _train(model, vae, reward, positive, negative, run_name="stopped", iterations=3, checkpoint_every=0,
                     resume=True)[1]
    assert resumed.keys() == full.keys()
    assert all(torch.equal(resumed[key], full[key]) for key in full)


def test_train_step_updates_the_lora_on_policy_from_an_expanded_sampler_rollout(loaded):
    import json

    import progrpo_comfy_nodes as ext

    model, vae, reward, positive, negative = loaded

    def sample(current):
        with torch.inference_mode():
            return ext.ProGRPOExpandedSampler.execute(
                current, positive, negative, {"samples": torch.zeros(1, 4, 4, 4)}, group_size=4, steps=3,
                dynamics="ddim", noise_level=-1.0, cfg=2.0, seed=1, scheduler="normal", reward=reward, vae=vae,
            ).result[1]

    with torch.inference_mode():
        first_model, first_lora, metrics = ext.ProGRPOTrainStep.execute(model, sample(model), 3e-2, 2, 2.0, 0,
                                                                        updates_per_rollout=1).result
    metrics = json.loads(metrics)
    assert abs(metrics["ratio_mean"] - 1.0) < 1e-5 and metrics["grad_norm"] > 0  # on-policy, learning
    before = _ksampler(model, positive, negative)
    assert not torch.equal(_ksampler(first_model, positive, negative), before)
    with torch.inference_mode():  # the next step continues the LoRA on a rollout of the updated model
        _, second_lora, metrics = ext.ProGRPOTrainStep.execute(model, sample(first_model), 3e-2, 2, 2.0, 0,
                                                               lora=first_lora).result
    metrics = json.loads(metrics)  # two optimiser steps (the default): the second one is off-policy
    assert metrics["optimizer_steps"] == 2 and metrics["ratio_deviation_off_policy"] > 0
    assert second_lora.keys() == first_lora.keys()
    assert any(not torch.equal(second_lora[k], first_lora[k]) for k in first_lora)
    assert torch.equal(_ksampler(model, positive, negative), before)


def test_model_eviction_during_training_changes_nothing(loaded):
    """A reward (or VAE) loading mid-run makes ComfyUI evict the models it manages; training must not
    notice: the LoRA equals the one of an undisturbed run and the cached model stays bit-identical."""
    import comfy.model_management

    model, vae, reward, positive, negative = loaded
    before = _ksampler(model, positive, negative)

    class Evicting:
        evictions = 0

        def score(self, images, prompts):
            comfy.model_management.unload_all_models()  # what loading another model under memory pressure does
            Evicting.evictions += 1
            return reward.score(images, prompts)

    _, calm_lora, _ = _train(model, vae, reward, positive, negative, run_name="calm")
    _, evicted_lora, _ = _train(model, vae, Evicting(), positive, negative, run_name="evicted")
    assert Evicting.evictions >= TRAIN["iterations"]
    assert calm_lora.keys() == evicted_lora.keys()
    assert all(torch.equal(calm_lora[key], evicted_lora[key]) for key in calm_lora)
    assert torch.equal(_ksampler(model, positive, negative), before)


def _lora_gradient(loaded, gradient_checkpointing: bool) -> torch.Tensor:
    """The accumulated LoRA gradient of one GRPO update on a fixed rollout, with or without checkpointing."""
    import progrpo_comfy_nodes as ext  # noqa: F401  (registers the package)
    from progrpo_comfy_nodes.comfy_backend import ComfyDenoiser
    from progrpo_comfy_nodes.comfy_lora import DEFAULT_TARGETS, ComfyLoraAdapter, training_context
    from progrpo_comfy_nodes.comfy_training import TrainingOptions, TrainingSession

    from progrpo.rollout import RolloutConfig, expand_and_prune_rollout
    from progrpo.train.config import GRPOConfig
    from progrpo.train.update import accumulate_policy_gradient, select_training_pairs

    model, vae, reward, positive, negative = loaded
    adapter = ComfyLoraAdapter(model, rank=2, alpha=2.0, targets=DEFAULT_TARGETS, seed=0)
    with torch.inference_mode(False), torch.no_grad():  # both factors non-zero: every parameter gets a gradient
        for index, param in enumerate(adapter.parameters()):
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(index)))
    session = TrainingSession(adapter, TrainingOptions(training_dtype="fp32",
                                                       gradient_checkpointing=gradient_checkpointing))
    denoiser = ComfyDenoiser(adapter.patcher, vae=vae)
    conditioning = denoiser.conditioning([positive], [negative])
    config = RolloutConfig(group_size=3, num_steps=3, dynamics="ddim", height=32, width=32, guidance_scale=2.0,
                           seed=5, keep_images=False)
    with training_context(), session:
        with torch.no_grad():
            rollout = expand_and_prune_rollout(denoiser, conditioning, reward, config)
        pairs = select_training_pairs(rollout, 1.0, torch.Generator())
        accumulate_policy_gradient(denoiser, rollout, torch.tensor([1.0, -0.5, -0.5]), pairs,
                                   GRPOConfig(micro_batch_rows=2), adapter=adapter)
        return torch.cat([param.grad.flatten().clone() for param in adapter.parameters()])


def test_gradient_checkpointing_gives_the_same_lora_gradients(loaded, monkeypatch):
    import torch.utils.checkpoint

    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    plain = _lora_gradient(loaded, gradient_checkpointing=False)
    assert not calls
    checkpointed = _lora_gradient(loaded, gradient_checkpointing=True)
    assert len(calls) >= 4, "checkpointing never ran: the comparison would be vacuous"
    assert plain.abs().max() > 0
    assert (checkpointed - plain).abs().max() <= 1e-5 * max(1.0, float(plain.abs().max()))


def test_checkpointing_wraps_the_unet_blocks_only_during_the_update(loaded):
    from progrpo_comfy_nodes.comfy_lora import DEFAULT_TARGETS, ComfyLoraAdapter
    from progrpo_comfy_nodes.comfy_training import TrainingOptions, TrainingSession, checkpoint_blocks

    model = loaded[0]
    blocks = checkpoint_blocks(model.model.diffusion_model)
    names = {type(block).__name__ for block in blocks}
    assert {"ResBlock", "SpatialTransformer"} <= names, names  # not the TimestepEmbedSequential containers
    assert all("forward" not in vars(block) for block in blocks)
    adapter = ComfyLoraAdapter(model, rank=2, alpha=2.0, targets=DEFAULT_TARGETS, seed=0)
    session = TrainingSession(adapter, TrainingOptions(training_dtype="fp32"))
    with torch.inference_mode(False), session, adapter.training():
        assert all("forward" in vars(block) for block in checkpoint_blocks(adapter.patcher.model.diffusion_model))
        assert not next(adapter.patcher.model.parameters()).is_inference()  # aliased, not copied
    assert all("forward" not in vars(block) for block in blocks)
    assert not model.model.diffusion_model.training


def test_the_rewards_models_are_found_for_offloading_during_the_update(loaded):
    from progrpo_comfy_nodes.comfy_training import offloaded, reward_modules

    from progrpo.rewards.base import WeightedSum

    class _ModelReward:
        def __init__(self) -> None:
            self.backbone = {"vision": torch.nn.Linear(2, 2)}
            self.head = torch.nn.Linear(2, 1)

        def score(self, images, prompts):
            return torch.zeros(images.shape[0])

    inner = _ModelReward()
    reward = WeightedSum({"model": inner, "brightness": loaded[2]}, {"model": 1.0, "brightness": 0.5})
    found = reward_modules(reward)
    assert {id(m) for m in found} == {id(inner.backbone["vision"]), id(inner.head)}
    with offloaded(found, torch.device("cpu")) as moved:  # already on the offload device: nothing moves
        assert moved == 0
