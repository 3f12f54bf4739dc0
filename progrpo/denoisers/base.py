"""The denoiser contract every backend (diffusers, ComfyUI, pixel-space demo) implements.

A denoiser turns ``(latent, step, conditioning)`` into the network's raw prediction in the
parameterisation its :class:`~progrpo.schedule.Schedule` declares (flow velocity, eps, v or
sample); the step dynamics in :mod:`progrpo.dynamics` turn that into the next latent and its
log-prob. Classifier-free guidance is applied inside ``predict`` with both branches in one
batch (as Flow-GRPO does in sampling and training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch

from ..schedule import Schedule


@dataclass
class Conditioning:
    """Encoded prompts, one row per prompt (P rows).

    ``positive`` / ``negative``: name -> batch-first tensor [P, ...] fed to the network (e.g.
    ``encoder_hidden_states``, ``pooled_projections``). ``negative`` may have 1 row (shared
    negative prompt) or P rows, or be ``None`` when guidance is off. ``shared`` holds tensors
    without a batch dimension (e.g. Flux's ``txt_ids``). ``prompts`` keeps the text for rewards.
    """

    positive: dict[str, torch.Tensor]
    negative: dict[str, torch.Tensor] | None = None
    shared: dict[str, torch.Tensor] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return int(next(iter(self.positive.values())).shape[0])

    def take(self, rows: torch.Tensor) -> "Conditioning":
        """Conditioning whose row ``j`` is row ``rows[j]`` of this one (rows: LongTensor[B])."""
        rows = rows.to(torch.long)
        positive = {name: value[rows.to(value.device)] for name, value in self.positive.items()}
        negative = None
        if self.negative is not None:
            negative = {}
            for name, value in self.negative.items():
                index = torch.zeros_like(rows) if value.shape[0] == 1 else rows
                negative[name] = value[index.to(value.device)]
        prompts = [self.prompts[i] for i in rows.tolist()] if self.prompts else []
        return Conditioning(positive=positive, negative=negative, shared=dict(self.shared), prompts=prompts)


@runtime_checkable
class Denoiser(Protocol):
    """What the rollout and the trainer need from a model backend.

    Shapes: latents are [B, C, H, W] (backends that pack, like Flux, pack inside ``predict``);
    ``step_index`` is LongTensor[B]; images are [B, 3, H_img, W_img] in [0, 1].
    """

    def schedule(self, num_steps: int, latent_shape: Sequence[int]) -> Schedule:
        """The sampling schedule for ``num_steps`` steps at latent shape (C, H, W)."""
        ...

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Latent (C, H, W) for an image of ``height`` x ``width`` pixels."""
        ...

    def encode_prompts(self, prompts: Sequence[str], negative_prompt: str | None = "") -> Conditioning:
        """Encode P prompts (and one shared negative prompt, or none) into a Conditioning."""
        ...

    def predict(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: Conditioning,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Guided network prediction [B, C, H, W] (float32) for rows aligned with ``conditioning``.

        ``timestep``: [B] network timesteps (``Schedule.timesteps`` entries).
        """
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, H, W] -> images [B, 3, H_img, W_img] in [0, 1] (VAE, or identity)."""
        ...


def row_timesteps(timestep: torch.Tensor | float, rows: int, device: torch.device | None = None) -> torch.Tensor:
    """Timesteps float32 [rows] from a tensor with ``rows`` entries or one entry (shared by all rows)."""
    from ..errors import ProGRPOConfigError

    values = torch.as_tensor(timestep, dtype=torch.float32, device=device).reshape(-1)
    if values.numel() == 1:
        return values.expand(rows)
    if values.numel() != rows:
        raise ProGRPOConfigError(
            f"timestep has {values.numel()} entries but sample has {rows} rows; pass one timestep per row."
        )
    return values


def guidance_branches(guidance_scale: float, conditioning: Conditioning) -> int:
    """Network evaluations per row: 2 when classifier-free guidance runs, else 1."""
    return 2 if (guidance_scale != 1.0 and conditioning.negative is not None) else 1


# --- k-diffusion coordinates ----------------------------------------------------------------------
# k-diffusion samplers (ComfyUI's) hold ``x_k = x0 + s eps`` for eps/v models and ``(1 - s) x0 + s eps``
# for flow models, and their model returns x0 ("denoised"). The policy state of a "vp" schedule is the
# variance-preserving ``x = x_k / sqrt(1 + s^2)`` and predicts x0; a "flow" state is x_k itself and
# predicts the velocity ``(x - x0) / s``. ``sigma`` is k-diffusion's s, broadcastable to the state.


def k_diffusion_scale(kind: str, sigma: torch.Tensor) -> torch.Tensor | float:
    """``x_k / x``: ``sqrt(1 + s^2)`` for a ``"vp"`` schedule, 1 for ``"flow"``."""
    return (1.0 + sigma.square()).sqrt() if kind == "vp" else 1.0


def to_k_diffusion_state(kind: str, state: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Policy state [B, ...] -> k-diffusion state at sigma ``s`` (what ComfyUI's model takes)."""
    return state * k_diffusion_scale(kind, sigma)


def from_k_diffusion_state(kind: str, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """k-diffusion state [B, ...] at sigma ``s`` -> policy state."""
    return sample / k_diffusion_scale(kind, sigma)


def policy_prediction(kind: str, state: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The policy's prediction from k-diffusion's x0 ``denoised``: x0 itself ("vp"), the velocity ("flow")."""
    return denoised if kind == "vp" else (state - denoised) / sigma
