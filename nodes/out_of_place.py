"""Augmented assignments that autograd can differentiate through ComfyUI's diffusion models.

ComfyUI 0.3.75 writes residuals with augmented assignments on tensors that autograd has saved for
backward, e.g. ``comfy/ldm/flux/layers.py`` (DoubleStreamBlock: ``img += apply_mod(...)``,
``txt += ...``; SingleStreamBlock: ``x += apply_mod(output, ...)``), used by Flux.1, Flux.2 and
Chroma: ``img`` is the input the block's LayerNorm saved, so the first backward through such a block
fails with "one of the variables needed for gradient computation has been modified by an inplace
operation". Sampling never notices (no autograd).

Inside :func:`augmented_assignments_out_of_place`, an augmented assignment (``a += b``, ``-=``, ``*=``,
``/=``) on a tensor that requires grad computes ``a + b`` into a new tensor instead. The statement
rebinds the name to the result either way, so the block computes the same values and the saved tensor
is no longer overwritten; only another name of the same tensor would miss the update, and ComfyUI's
blocks hold none (the residual stream is a local). Explicit in-place calls (``a.add_(b)``) keep their
meaning: they are told apart by the bytecode of the calling frame, which for ``a += b`` is an in-place
binary operation.
"""

from __future__ import annotations

import contextlib
import dis
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

#: the in-place tensor method Python calls for each augmented assignment -> its out-of-place twin
_OUT_OF_PLACE = {
    torch.Tensor.add_: torch.add,
    torch.Tensor.sub_: torch.sub,
    torch.Tensor.mul_: torch.mul,
    torch.Tensor.div_: torch.div,
}
#: Python >= 3.11 encodes ``a += b`` as BINARY_OP with an NB_INPLACE_* argument (3.10: INPLACE_* opcodes)
_INPLACE_ARGUMENTS = frozenset(
    index for index, (name, _) in enumerate(getattr(dis, "_nb_ops", ())) if name.startswith("NB_INPLACE")
)


def is_augmented_assignment(frame: FrameType) -> bool:
    """Whether ``frame`` is executing an in-place binary operation (``a += b``) right now."""
    code, offset = frame.f_code.co_code, frame.f_lasti
    name = dis.opname[code[offset]]
    return name.startswith("INPLACE_") or (name == "BINARY_OP" and code[offset + 1] in _INPLACE_ARGUMENTS)


def _requires_grad(args: tuple) -> bool:
    return any(isinstance(arg, torch.Tensor) and arg.requires_grad for arg in args)


class _OutOfPlaceMode(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        twin = _OUT_OF_PLACE.get(func)
        if twin is not None and torch.is_grad_enabled() and _requires_grad(args) \
                and is_augmented_assignment(sys._getframe(1)):
            return twin(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def augmented_assignments_out_of_place() -> Iterator[None]:
    """Inside the block, ``a += b`` on tensors is ``a = a + b`` while autograd records (module doc)."""
    with _OutOfPlaceMode():
        yield
