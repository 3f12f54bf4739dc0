"""Classifier-free guidance with both branches in one batched forward (every backend uses it).

The batch is laid out ``[negative rows, positive rows]`` (as diffusers' pipelines and Flow-GRPO
do), and the guided output is ``uncond + w * (cond - uncond)`` in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ProGRPOConfigError
from .base import Conditioning, guidance_branches

#: ``forward(sample [N,C,H,W], timestep [N], inputs name -> [N, ...], shared) -> prediction [N,C,H,W]``.
Forward = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]


def stack_branches(negative: dict[str, torch.Tensor], positive: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inputs of the batched CFG forward: name -> cat([negative [B, ...], positive [B, ...]]) = [2B, ...].

    A negative with 1 row (one shared negative prompt) is broadcast to the B positive rows.
    """
    if set(negative) != set(positive):
        raise ProGRPOConfigError(
            f"negative conditioning has inputs {sorted(negative)} but the positive has {sorted(positive)}; "
            "encode both with the same denoiser's encode_prompts."
        )
    stacked = {}
    for name, cond in positive.items():
        uncond = negative[name]
        if uncond.shape[0] == 1:
            uncond = uncond.expand(cond.shape[0], *uncond.shape[1:])
        if uncond.shape != cond.shape:
            raise ProGRPOConfigError(
                f"negative conditioning {name!r} has shape {tuple(uncond.shape)} but the positive has "
                f"{tuple(cond.shape)}; encode both in one encode_prompts call (same max_sequence_length)."
            )
        stacked[name] = torch.cat([uncond.to(device=cond.device, dtype=cond.dtype), cond])
    return stacked


def guided_prediction(
    forward: Forward,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
) -> torch.Tensor:
    """Guided prediction float32 [B,C,H,W] from ``forward`` (sample [B,C,H,W], timestep [B], B-row conditioning).

    With guidance (``guidance_branches == 2``) the network runs once on 2B rows; otherwise on the
    B positive rows only. Gradients flow through (no ``no_grad`` here).
    """
    if guidance_branches(guidance_scale, conditioning) == 1:
        return forward(sample, timestep, conditioning.positive, conditioning.shared).float()
    assert conditioning.negative is not None
    inputs = stack_branches(conditioning.negative, conditioning.positive)
    both = forward(torch.cat([sample, sample]), torch.cat([timestep, timestep]), inputs, conditioning.shared)
    uncond, cond = both.float().chunk(2)
    return uncond + guidance_scale * (cond - uncond)
