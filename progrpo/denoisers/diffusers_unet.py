"""Denoiser over a diffusers ``UNet2DConditionModel`` pipeline (SD1.x family, or pixel space without a VAE).

The rollout state is the network input itself: for variance-preserving schedulers it is
``x = sqrt(alphabar) * x0 + sqrt(1 - alphabar) * eps`` (what DDIM/DDPM/PNDM feed the UNet; the
sigma-scaled state of Euler-type schedulers is never used), for a flow-matching scheduler it is
``(1 - sigma) * x0 + sigma * eps``. The prediction type (eps, v, sample, flow) comes from the
scheduler config through the :class:`~progrpo.schedule.Schedule`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ProGRPOConfigError
from ._diffusers_base import DiffusersDenoiser


class UNetDenoiser(DiffusersDenoiser):
    """SD1.x-style pipeline (``StableDiffusionPipeline`` or any with ``unet``, ``scheduler``, ``encode_prompt``).

    ``pipeline.vae`` may be ``None`` (pixel space): ``latent_shape`` is then the image size and
    ``decode`` maps [-1, 1] to [0, 1]. Conditioning: ``encoder_hidden_states`` [P, L, D].
    """

    def __init__(self, pipeline: Any) -> None:
        unet = pipeline.unet
        config = unet.config
        if config.get("addition_embed_type") is not None:
            raise ProGRPOConfigError(
                f"this UNet has addition_embed_type={config.addition_embed_type!r} (SDXL-style extra "
                "conditioning), which UNetDenoiser does not feed; use an SD1.x-style UNet."
            )
        if config.get("time_cond_proj_dim") is not None:
            raise ProGRPOConfigError(
                "this UNet has time_cond_proj_dim set (a guidance-distilled LCM UNet), which UNetDenoiser "
                "does not feed; use a UNet trained for classifier-free guidance."
            )
        super().__init__(pipeline, unet, getattr(pipeline, "vae", None))

    @property
    def latent_channels(self) -> int:
        return int(self.network.config.in_channels)

    def _encode(self, prompts: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        embeds, _ = self.pipeline.encode_prompt(prompts, self.device, 1, False)
        return {"encoder_hidden_states": embeds}, {}

    def _forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        inputs: dict[str, torch.Tensor],
        shared: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """UNet call: sample [N,C,H,W], timestep [N] (DDPM step or ``1000 * sigma``) -> [N,C,H,W]."""
        hidden = inputs["encoder_hidden_states"]
        return self.network(sample, timestep, encoder_hidden_states=hidden, return_dict=False)[0]
