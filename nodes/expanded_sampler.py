"""ProGRPOExpandedSampler: one prompt's expanded group of stochastic trajectories, pruned at checkpoints.

Thin: it unpacks the sockets into a :class:`progrpo.rollout.RolloutConfig`, builds a
:class:`~.comfy_backend.ComfyDenoiser` on the MODEL (so sampling goes through ComfyUI's own
CFGGuider) and calls :func:`progrpo.rollout.expand_and_prune_rollout`.

One prompt group: the ``positive`` CONDITIONING is the prompt; the group is ``group_size``
trajectories of it. The LATENT input only gives the size (its batch and content are ignored,
every trajectory starts from fresh seeded noise).
"""

from __future__ import annotations

from typing import Any

import comfy.utils
from comfy_api.latest import io

from progrpo.pruning import SELECTIONS, PruneSchedule
from progrpo.rollout import expand_and_prune_rollout

from .input_checks import check_choices, check_numbers
from .sampling_inputs import check_noise_level, guidance_input, sampling_inputs, scheduler_input, seed_input
from .sampling_setup import (
    ZeroReward,
    check_scoring_sockets,
    latent_samples,
    policy_dynamics,
    sampler_denoiser,
    sampler_outputs,
    sampler_rollout_config,
)
from .sockets import PruneScheduleType, RewardType, RolloutType


class ProGRPOExpandedSampler(io.ComfyNode):
    """Expand-and-Prune sampling of one prompt group on a ComfyUI MODEL."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOExpandedSampler",
            display_name="Pro-GRPO Expanded Sampler",
            category="Pro-GRPO/sampling",
            description=(
                "Samples group_size stochastic trajectories of the positive prompt with a GRPO policy dynamic. "
                "With a prune schedule, every checkpoint decodes the clean-sample previews, scores them with the "
                "reward and keeps the most informative subset (Optimal Variance Filtering); the survivors finish."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion or flow MODEL to sample (LoRAs and patches apply)."),
                io.Conditioning.Input("positive", tooltip="The prompt's CONDITIONING; the whole group samples it."),
                io.Conditioning.Input(
                    "negative", tooltip="Negative CONDITIONING for classifier-free guidance (unused when cfg is 1)."
                ),
                io.Latent.Input(
                    "latent",
                    tooltip="Gives the latent size only (e.g. Empty Latent Image); its batch and content are ignored. "
                    "Its channels must match the model's latent format.",
                ),
                *sampling_inputs(training=False),
                seed_input("Seeds the initial noise and every step's noise (pruning never changes a survivor's noise).",
                           control_after_generate=True),
                scheduler_input(),
                PruneScheduleType.Input("prune_schedule", optional=True,
                                        tooltip="Checkpoints step:keep from Pro-GRPO Prune Schedule; leave "
                                        "unconnected to run every trajectory to the end."),
                io.Combo.Input("selection", options=sorted(SELECTIONS), default="ovf", optional=True,
                               tooltip="How a checkpoint keeps its subset: ovf (max reward variance, Pro-GRPO), "
                               "random, topk, or none (keep all; previews are still scored)."),
                RewardType.Input("reward", optional=True,
                                 tooltip="Scores previews and final images; required with a prune schedule."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Decodes previews and survivors; required with a prune schedule or a reward on "
                             "a latent-space model."),
                io.String.Input("prompt_text", default="", multiline=True, optional=True,
                                tooltip="The prompt's text, passed to text-aware rewards (CLIP score, digit "
                                "alignment); may stay empty for image-only rewards."),
                io.Int.Input("max_batch_rows", default=0, min=0, max=4096, optional=True,
                             tooltip="Trajectories per model call and per VAE decode (0: the whole group at once). "
                             "Lower it (e.g. 8) when a large group at a high resolution runs out of memory; results "
                             "change only by rounding."),
                guidance_input(),
            ],
            outputs=[
                io.Latent.Output(display_name="survivors",
                                 tooltip="Final latents of the surviving trajectories (batch = final group size)."),
                RolloutType.Output(display_name="rollout",
                                   tooltip="The rollout record (latents per step, log-probs, preview and final "
                                   "rewards, pruning); feed it to the plot and training nodes."),
                io.Image.Output(display_name="images",
                                tooltip="Decoded survivors (black placeholders when no VAE is connected)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, noise_level: float | None = None, cfg: float | None = None, dynamics: str | None = None,
                        scheduler: str | None = None, selection: str | None = None,
                        guidance: float | None = None) -> bool | str:
        for checked in (check_numbers(cls, cfg=cfg, guidance=guidance), check_noise_level(noise_level),
                        check_choices(cls, dynamics=dynamics, scheduler=scheduler, selection=selection)):
            if checked is not True:
                return checked
        return True

    @classmethod
    def execute(
        cls,
        model: Any,
        positive: list,
        negative: list,
        latent: dict,
        group_size: int,
        steps: int,
        dynamics: str,
        noise_level: float,
        cfg: float,
        seed: int,
        scheduler: str,
        prune_schedule: PruneSchedule | None = None,
        selection: str = "ovf",
        reward: Any | None = None,
        vae: Any | None = None,
        prompt_text: str = "",
        max_batch_rows: int = 0,
        guidance: float = 3.5,
    ) -> io.NodeOutput:
        samples = latent_samples(model, latent)
        latent_space = int(samples.shape[1]) not in (1, 3)
        check_scoring_sockets(prune_schedule, reward, vae, latent_space, group_size, steps)
        denoiser = sampler_denoiser(model, vae, reward, latent_space, scheduler, seed, guidance)
        dynamics = policy_dynamics(model, dynamics, denoiser.kind, cfg, has_negative=negative is not None)
        factor = 1 if vae is None else int(vae.spacial_compression_decode())
        config = sampler_rollout_config(
            cls, samples, factor, group_size=group_size, steps=steps, dynamics=dynamics, noise_level=noise_level,
            cfg=cfg, prune_schedule=prune_schedule, selection=selection, seed=seed, max_batch_rows=max_batch_rows,
        )
        conditioning = denoiser.conditioning(positive, None if cfg == 1.0 else negative, [prompt_text.strip()])
        bar = comfy.utils.ProgressBar(steps)
        # every update is a cancel point under the server (its global progress hook checks the interrupt flag).
        rollout = expand_and_prune_rollout(
            denoiser, conditioning, reward or ZeroReward(), config,
            progress=lambda done, total: bar.update_absolute(done, total),
        )
        decoded = vae is not None or not latent_space
        return io.NodeOutput(*sampler_outputs(denoiser, rollout, scheduler, factor, decoded))
