"""Where and in which precision a reward model runs: torch device, dtype and scoring batch size.

Reward models score every preview and final image of a rollout, so on a GPU machine they should
run on the GPU and, where the hardware supports it, in half precision (fp16/bf16). The scores a
reward returns are always float32, whatever precision the model computed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import ProGRPOConfigError

#: precision name -> dtype (``auto`` is resolved per device by :func:`resolve_dtype`).
PRECISIONS: dict[str, torch.dtype | None] = {
    "auto": None,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
#: images scored per model call unless a reward is given another ``batch_size``.
DEFAULT_BATCH_SIZE = 16


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a :class:`torch.device` (None: CPU); an unknown name is an error naming it."""
    if device is None or str(device).strip() == "":
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ProGRPOConfigError(
            f"reward option `device`={device!r} is not a torch device ({error}); use 'cpu', 'cuda' or 'cuda:1'."
        ) from None


def resolve_dtype(precision: str | None, device: torch.device) -> torch.dtype:
    """The dtype a reward model runs in on ``device``.

    ``auto``: bf16 on a CUDA GPU that supports it, else fp16 on CUDA/MPS, fp32 on the CPU (CPU half
    precision is only faster on CPUs with bf16 matrix units; ask for ``bf16`` explicitly there).
    """
    name = "fp32" if precision is None else str(precision).lower()
    if name not in PRECISIONS:
        raise ProGRPOConfigError(
            f"reward option `precision`={precision!r} is unknown; use one of {', '.join(PRECISIONS)}."
        )
    dtype = PRECISIONS[name]
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.float32


def check_batch_size(batch_size: int | None) -> int:
    """``batch_size`` checked (a positive int; None: :data:`DEFAULT_BATCH_SIZE`)."""
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ProGRPOConfigError(f"reward option `batch_size`={batch_size!r} must be a positive integer, e.g. 16.")
    return batch_size


def score_in_batches(
    score_batch: Callable[[torch.Tensor, list[str]], torch.Tensor],
    images: torch.Tensor,
    prompts: Sequence[str],
    batch_size: int,
) -> torch.Tensor:
    """Call ``score_batch`` on chunks of at most ``batch_size`` images: [B,3,H,W], B prompts -> float32 [B]."""
    chunks = [
        score_batch(images[start : start + batch_size], list(prompts[start : start + batch_size])).float()
        for start in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(chunks) if chunks else images.new_zeros(0)
