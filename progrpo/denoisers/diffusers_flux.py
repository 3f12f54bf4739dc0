"""Denoiser over a diffusers ``FluxTransformer2DModel`` pipeline (Flux.1 dev / schnell style).

The rollout state stays unpacked [B, C, H, W]; ``predict`` packs it into 2x2 patches
[B, H/2 * W/2, 4C] for the transformer and unpacks the velocity. As in ``FluxPipeline``: the
network gets ``timestep / 1000``, positional ids ``img_ids`` / ``txt_ids``, the distilled
guidance embedding (``guidance``) when the transformer has one, and sigmas
``linspace(1, 1/N, N)`` shifted by ``mu`` of the image sequence length. True classifier-free
guidance (a negative branch) runs when ``guidance_scale != 1`` and a negative prompt is encoded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ProGRPOConfigError
from ._diffusers_base import DiffusersDenoiser, calculate_mu


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C] (row-major 2x2 patches, channel-major inside a patch)."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: [B, H/2 * W/2, 4C] -> [B, C, H, W] (latent height/width)."""
    b, _, channels = packed.shape
    patches = packed.reshape(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, channels // 4, height, width)


def latent_image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Positional ids [H/2 * W/2, 3] of the packed image tokens: (0, row, column)."""
    rows = torch.arange(height // 2, device=device, dtype=dtype)[:, None].expand(height // 2, width // 2)
    cols = torch.arange(width // 2, device=device, dtype=dtype)[None, :].expand(height // 2, width // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)


class FluxDenoiser(DiffusersDenoiser):
    """``FluxPipeline`` adapter. Conditioning: ``encoder_hidden_states`` [P, L, D] (T5),
    ``pooled_projections`` [P, D'] (CLIP); shared ``txt_ids`` [L, 3].

    ``guidance``: the distilled guidance value (FluxPipeline's ``guidance_scale``), used only when
    ``transformer.config.guidance_embeds``; ``predict``'s ``guidance_scale`` is true CFG
    (FluxPipeline's ``true_cfg_scale``). ``max_sequence_length``: T5 tokens, as the pipeline's argument.
    """

    spatial_multiple = 2

    def __init__(self, pipeline: Any, max_sequence_length: int = 512, guidance: float = 3.5) -> None:
        super().__init__(pipeline, pipeline.transformer, pipeline.vae)
        self.max_sequence_length = int(max_sequence_length)
        self.guidance = float(guidance)

    @property
    def latent_channels(self) -> int:
        return int(self.network.config.in_channels) // 4

    def _schedule_kwargs(self, num_steps: int, latent_shape: tuple[int, int, int]) -> dict[str, Any]:
        config = self.scheduler.config
        image_seq_len = (latent_shape[1] // 2) * (latent_shape[2] // 2)
        kwargs: dict[str, Any] = {"mu": calculate_mu(config, image_seq_len, default_max_shift=1.15)}
        if not config.get("use_flow_sigmas", False):
            kwargs["sigmas"] = np.linspace(1.0, 1 / num_steps, num_steps)
        return kwargs

    def _encode(self, prompts: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        embeds, pooled, text_ids = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}, {"txt_ids": text_ids}

    def _check_sample(self, sample: torch.Tensor) -> int:
        rows = super()._check_sample(sample)
        if sample.shape[2] % 2 or sample.shape[3] % 2:
            raise ProGRPOConfigError(
                f"sample has latent size {tuple(sample.shape[2:])} but Flux packs 2x2 patches; "
                "use even latent sizes (images a multiple of 2 * vae_scale_factor)."
            )
        return rows

    def _forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        inputs: dict[str, torch.Tensor],
        shared: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Transformer call on packed tokens: sample [N,C,H,W], timestep [N] (``1000 * sigma``) -> [N,C,H,W]."""
        rows, _, height, width = sample.shape
        txt_ids = shared["txt_ids"]
        guidance = None
        if self.network.config.guidance_embeds:
            guidance = torch.full((rows,), self.guidance, device=sample.device, dtype=torch.float32)
        packed = self.network(
            hidden_states=pack_latents(sample),
            timestep=timestep / 1000,
            guidance=guidance,
            pooled_projections=inputs["pooled_projections"],
            encoder_hidden_states=inputs["encoder_hidden_states"],
            txt_ids=txt_ids,
            img_ids=latent_image_ids(height, width, sample.device, txt_ids.dtype),
            return_dict=False,
        )[0]
        return unpack_latents(packed, height, width)
