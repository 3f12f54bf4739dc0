"""Denoiser over a diffusers ``SD3Transformer2DModel`` pipeline (SD3 / SD3.5).

The network predicts the flow velocity ``eps - x0`` from ``x = (1 - sigma) * x0 + sigma * eps``
at timestep ``1000 * sigma``; the shift (static ``shift``, or ``mu`` with dynamic shifting) comes
from the pipeline's ``FlowMatchEulerDiscreteScheduler`` config as in ``StableDiffusion3Pipeline``.
"""

from __future__ import annotations

from typing import Any

import torch

from ._diffusers_base import DiffusersDenoiser, calculate_mu


class SD3Denoiser(DiffusersDenoiser):
    """``StableDiffusion3Pipeline`` adapter. Conditioning: ``encoder_hidden_states`` [P, L, D], ``pooled_projections`` [P, D'].

    ``max_sequence_length``: T5 tokens (zeros when the pipeline has no T5), as the pipeline's argument.
    """

    def __init__(self, pipeline: Any, max_sequence_length: int = 256) -> None:
        super().__init__(pipeline, pipeline.transformer, pipeline.vae)
        self.max_sequence_length = int(max_sequence_length)
        self.spatial_multiple = int(self.network.config.patch_size)

    @property
    def latent_channels(self) -> int:
        return int(self.network.config.in_channels)

    def _schedule_kwargs(self, num_steps: int, latent_shape: tuple[int, int, int]) -> dict[str, Any]:
        config = self.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return {}
        patch = self.spatial_multiple
        image_seq_len = (latent_shape[1] // patch) * (latent_shape[2] // patch)
        return {"mu": calculate_mu(config, image_seq_len, default_max_shift=1.16)}

    def _encode(self, prompts: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}, {}

    def _forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        inputs: dict[str, torch.Tensor],
        shared: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Transformer call: sample [N,C,H,W], timestep [N] (``1000 * sigma``) -> velocity [N,C,H,W]."""
        return self.network(
            hidden_states=sample,
            timestep=timestep,
            encoder_hidden_states=inputs["encoder_hidden_states"],
            pooled_projections=inputs["pooled_projections"],
            return_dict=False,
        )[0]
