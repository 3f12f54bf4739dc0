"""Precision and placement of training: compute dtypes, the fp16 loss scale, optimiser state beside its weights.

The LoRA weights, their gradients and the AdamW moments are float32 whatever the model computes in;
log-probs, ratios, advantages and KL are float32 (:mod:`progrpo.dynamics`). Only the network's
forward and backward run in the compute dtype.

Why fp16 needs a loss scale here: the GRPO loss is a mean over pairs of log-probs that are means over
the D latent elements (Flow-GRPO's convention), so the gradient reaching each element of the network
output is about ``|A| * dt / (std * D * pairs)``: ~1e-7 for SD1.5 at 512 px (D = 16,384) and less at
higher resolutions, which is in fp16's subnormal range (smallest normal 6.1e-5, smallest subnormal
6e-8) and flushes to 0 in places. Scaling the loss by D before backward and the float32 LoRA
gradients by 1/D after it turns the per-element means back into sums for the backward pass only; the
update is unchanged (Adam and clipping see the unscaled gradient). bf16 has fp32's exponent range and
needs no scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

#: training_dtype names -> compute dtype (``auto``: :func:`resolve_training_dtype`).
TRAINING_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}


def resolve_training_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype ``name`` means on ``device``.

    ``auto`` is bf16 on a CUDA device that supports it (fp32's range, half the memory and bandwidth,
    tensor-core speed), fp32 otherwise (CPU, older GPUs: CPU kernels are fastest in fp32 except on
    AVX512-BF16/AMX machines, see the README's benchmark).
    """
    if name not in TRAINING_DTYPES:
        raise ValueError(f"training dtype {name!r} is not one of {sorted(TRAINING_DTYPES)}")
    dtype = TRAINING_DTYPES[name]
    if dtype is not None:
        return dtype
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def loss_scale_for(compute_dtype: torch.dtype, latent_shape: Sequence[int]) -> float:
    """Static loss scale for a compute dtype: the latent's element count for fp16, else 1 (module doc).

    Args:
        latent_shape: one sample's latent shape, e.g. (4, 64, 64).
    """
    if compute_dtype != torch.float16:
        return 1.0
    return float(max(1, int(torch.Size(latent_shape).numel())))


def unscale_gradients(params: Iterable[torch.nn.Parameter], scale: float) -> None:
    """Divide the (float32) gradients of ``params`` by ``scale`` in place (no-op for scale 1)."""
    if scale == 1.0:
        return
    for param in params:
        if param.grad is not None:
            param.grad.div_(scale)


def align_optimizer_state(optimizer: torch.optim.Optimizer) -> int:
    """Move each parameter's optimiser state to that parameter's device; returns how many tensors moved.

    A model host (ComfyUI) may move the LoRA weights after the optimiser state was created or restored
    from a checkpoint (CPU -> GPU on load, back on offload); AdamW's kernels then refuse tensors on two
    devices. Moments follow the parameter's device and keep float32 (the LoRA weights are float32 and
    AdamW keeps moments in the parameter's dtype, so a changed parameter dtype is followed too). The
    scalar ``step`` stays where AdamW keeps it (a CPU tensor unless ``capturable``/``fused``).
    """
    moved = 0
    for group in optimizer.param_groups:
        keeps_step_on_device = bool(group.get("capturable") or group.get("fused"))
        for param in group["params"]:
            state = optimizer.state.get(param)
            if not state:
                continue
            for name, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if name == "step" and not keeps_step_on_device:
                    continue
                dtype = value.dtype if name == "step" else param.dtype
                if value.device != param.device or value.dtype != dtype:
                    state[name] = value.to(device=param.device, dtype=dtype)
                    moved += 1
    return moved
