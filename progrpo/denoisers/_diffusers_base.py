"""What the diffusers adapters share: schedule, prompt encoding, input checks, guided predict, decode.

A subclass names its network, latent channels and spatial multiple, encodes one list of prompts
with its pipeline's own ``encode_prompt`` and runs one unguided network forward; this base turns
that into the :class:`~progrpo.denoisers.base.Denoiser` contract.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ProGRPOConfigError
from ..schedule import Schedule, schedule_from_scheduler
from ._cfg import guided_prediction
from .base import Conditioning, row_timesteps


def vae_scale_factor(vae: Any | None) -> int:
    """Pixels per latent cell: ``2 ** (levels - 1)`` as diffusers' pipelines compute it; 1 without a VAE."""
    if vae is None:
        return 1
    return 2 ** (len(vae.config.block_out_channels) - 1)


def calculate_mu(scheduler_config: Any, image_seq_len: int, default_max_shift: float) -> float:
    """Dynamic-shifting ``mu`` of diffusers' ``calculate_shift`` with the config's (or the pipeline's default) bounds."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(
        image_seq_len,
        scheduler_config.get("base_image_seq_len", 256),
        scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5),
        scheduler_config.get("max_shift", default_max_shift),
    )


@torch.no_grad()
def decode_latents(vae: Any | None, latents: torch.Tensor) -> torch.Tensor:
    """Latents [B,C,h,w] -> images float32 [B,3,H,W] in [0, 1].

    With a VAE: ``vae.decode(latents / scaling_factor + shift_factor)`` (a missing shift is 0).
    Without (pixel space): the sample is the image in [-1, 1]; one channel is repeated to three.
    Both end with diffusers' ``(x / 2 + 0.5).clamp(0, 1)``.
    """
    if vae is None:
        if latents.shape[1] not in (1, 3):
            raise ProGRPOConfigError(
                f"pixel-space sample has {latents.shape[1]} channels; decode without a VAE needs 1 (grey) or 3 (RGB)."
            )
        images = latents.float().expand(-1, 3, -1, -1)
    else:
        shift = vae.config.get("shift_factor", None) or 0.0
        scaled = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor + shift
        images = vae.decode(scaled, return_dict=False)[0].float()
    return (images / 2 + 0.5).clamp(0, 1)


class DiffusersDenoiser(ABC):
    """Base of the diffusers adapters; holds references to the pipeline's parts (nothing is copied).

    Attributes: ``pipeline``, ``network`` (the trainable UNet / transformer), ``scheduler``, ``vae``
    (``None`` in pixel space). Subclasses implement ``latent_channels``, ``_encode`` and ``_forward``.
    """

    #: latent height and width must be multiples of ``vae_scale_factor * spatial_multiple``.
    spatial_multiple: int = 1

    def __init__(self, pipeline: Any, network: torch.nn.Module, vae: Any | None) -> None:
        self.pipeline = pipeline
        self.network = network
        self.scheduler = pipeline.scheduler
        self.vae = vae
        self._placement_cache: tuple[Any, torch.device, torch.dtype] | None = None

    @classmethod
    def from_pipeline(cls, pipe: Any, **options: Any) -> DiffusersDenoiser:
        """Adapter over a loaded diffusers pipeline; ``options`` go to the constructor."""
        return cls(pipe, **options)

    @property
    def dtype(self) -> torch.dtype:
        return self._placement()[1]

    @property
    def device(self) -> torch.device:
        return self._placement()[0]

    def _placement(self) -> tuple[torch.device, torch.dtype]:
        """The network's ``(device, dtype)`` as diffusers reports them, cached while its first parameter stays put.

        diffusers' ``ModelMixin.device`` / ``.dtype`` walk every submodule looking for offload and
        casting hooks: ~3 ms each on a peft-wrapped UNet, paid on every ``predict`` (up to 8% of a
        tiny UNet's forward). Moving or casting the network changes its first parameter's device or
        dtype, which re-reads them.
        """
        first = next(self.network.parameters(), None)
        key = None if first is None else (first.device, first.dtype)
        cache = getattr(self, "_placement_cache", None)
        if cache is None or key is None or cache[0] != key:
            cache = (key, self.network.device, self.network.dtype)
            self._placement_cache = cache
        return cache[1], cache[2]

    @property
    @abstractmethod
    def latent_channels(self) -> int:
        """Channels C of the unpacked rollout state [B, C, H, W]."""

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Latent (C, H, W) for an image of ``height`` x ``width`` pixels."""
        factor = vae_scale_factor(self.vae)
        multiple = factor * self.spatial_multiple
        for name, size in (("height", height), ("width", width)):
            if int(size) <= 0 or int(size) % multiple:
                raise ProGRPOConfigError(
                    f"{name}={size} must be a positive multiple of {multiple} for this "
                    f"{type(self.network).__name__}; use e.g. {max(multiple, int(size) // multiple * multiple)}."
                )
        return (self.latent_channels, int(height) // factor, int(width) // factor)

    def schedule(self, num_steps: int, latent_shape: Sequence[int]) -> Schedule:
        """Schedule of ``num_steps`` steps at latent (C, H, W), from a copy of the pipeline's scheduler."""
        if int(num_steps) < 1:
            raise ProGRPOConfigError(f"num_steps={num_steps} must be >= 1.")
        if len(latent_shape) != 3:
            raise ProGRPOConfigError(f"latent_shape {tuple(latent_shape)} must be (C, H, W).")
        kwargs = self._schedule_kwargs(int(num_steps), tuple(int(size) for size in latent_shape))
        return schedule_from_scheduler(copy.deepcopy(self.scheduler), int(num_steps), **kwargs)

    def _schedule_kwargs(self, num_steps: int, latent_shape: tuple[int, int, int]) -> dict[str, Any]:
        """Extra ``set_timesteps`` arguments the pipeline would pass (e.g. ``mu``, ``sigmas``)."""
        return {}

    def encode_prompts(self, prompts: Sequence[str], negative_prompt: str | None = "") -> Conditioning:
        """Encode P prompts (+ one shared negative prompt, 1 row, or ``None``) with the pipeline's encoder."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ProGRPOConfigError("prompts is empty; pass at least one prompt.")
        with torch.no_grad():
            positive, shared = self._encode(prompts)
            negative = None if negative_prompt is None else self._encode([negative_prompt])[0]
        return Conditioning(positive=positive, negative=negative, shared=shared, prompts=prompts)

    @abstractmethod
    def _encode(self, prompts: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(name -> [P, ...] network inputs, shared tensors) for P prompts, with the pipeline's ``encode_prompt``."""

    def predict(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: Conditioning,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Guided prediction float32 [B,C,H,W] for sample [B,C,H,W], timestep [B] and B-row conditioning."""
        rows = self._check_sample(sample)
        if conditioning.num_rows != rows:
            raise ProGRPOConfigError(
                f"conditioning has {conditioning.num_rows} rows but sample has {rows}; "
                "select one row per sample with conditioning.take(rows)."
            )
        device, dtype = self._placement()
        return guided_prediction(
            self._forward,
            sample.to(device=device, dtype=dtype),
            row_timesteps(timestep, rows, device),
            self._on_network(conditioning),
            float(guidance_scale),
        )

    @abstractmethod
    def _forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        inputs: dict[str, torch.Tensor],
        shared: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """One unguided network call: sample [N,C,H,W], timestep float32 [N] -> prediction [N,C,H,W]."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B,C,h,w] -> images float32 [B,3,H,W] in [0, 1] (VAE decode, or identity in pixel space)."""
        return decode_latents(self.vae, latents)

    def _check_sample(self, sample: torch.Tensor) -> int:
        """Rows B of a sample [B, C, H, W] whose C matches the network; raise otherwise."""
        if sample.ndim != 4:
            raise ProGRPOConfigError(f"sample has shape {tuple(sample.shape)}; pass unpacked latents [B, C, H, W].")
        if sample.shape[1] != self.latent_channels:
            raise ProGRPOConfigError(
                f"sample has {sample.shape[1]} channels but the model expects {self.latent_channels}; "
                "build latents with this denoiser's latent_shape(height, width)."
            )
        return int(sample.shape[0])

    def _on_network(self, conditioning: Conditioning) -> Conditioning:
        """Conditioning with embeddings in the network's device and dtype (shared tensors: device only)."""

        device, network_dtype = self._placement()

        def move(tensors: dict[str, torch.Tensor], cast: bool) -> dict[str, torch.Tensor]:
            dtype = network_dtype if cast else None
            return {
                name: value.to(device=device, dtype=dtype if value.is_floating_point() else None)
                for name, value in tensors.items()
            }

        return Conditioning(
            positive=move(conditioning.positive, cast=True),
            negative=None if conditioning.negative is None else move(conditioning.negative, cast=True),
            shared=move(conditioning.shared, cast=False),
            prompts=conditioning.prompts,
        )
