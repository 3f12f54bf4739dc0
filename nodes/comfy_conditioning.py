"""Per-row ComfyUI conditioning: one CONDITIONING per prompt, batched into the rows a model call needs.

ComfyUI fits a conditioning to the latent batch with ``repeat_to_batch_size``, which *truncates*
a tensor with more rows than the batch (``comfy.utils.repeat_to_batch_size``): rows [1, 3] of a 4-prompt
batch would silently be denoised with prompts [0, 1]. So the model never sees the P-prompt
conditioning; for every call :meth:`PromptTable.select` builds one whose tensors have exactly
one row per latent row (or the single prompt itself, which ComfyUI broadcasts correctly).

A CONDITIONING is ComfyUI's ``[[cross_attn [1, L, D], {name: value, ...}], ...]``: a list of
entries, each a token tensor plus a dict (``pooled_output``, ``guidance``, area/mask/ControlNet
settings, ...). Prompts mixed in one call must have the same entries; their tensors are stacked
row-wise and everything else must be identical (area, mask, ControlNet, hooks ... apply to the
whole batch in ComfyUI, so they cannot differ per row).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from progrpo.errors import ProGRPOConfigError

#: ComfyUI's CONDITIONING: a list of [cross_attn tensor or None, options dict] entries.
ComfyConditioning = list

#: option keys ComfyUI's sampler applies to the whole batch (samplers.py get_area_and_mult,
#: calc_cond_batch, process_conds); prompts mixed in one call must agree on them.
BATCH_WIDE_KEYS = frozenset({
    "area", "strength", "mask", "mask_strength", "set_area_to_bounds", "timestep_start", "timestep_end",
    "start_percent", "end_percent", "control", "control_apply_to_uncond", "gligen", "hooks", "default",
})

_MISSING = object()


def is_conditioning(value: Any) -> bool:
    """True for one ComfyUI CONDITIONING (a list of [tensor or None, dict] pairs)."""
    return (
        isinstance(value, (list, tuple)) and len(value) > 0
        and all(isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], dict) for entry in value)
    )


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
        )
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - e.g. lists of tensors have no truth value: treat as different
        return False


def _stack_tokens(tensors: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """Token tensors [1, L_u, D] of U prompts -> [B, L, D] rows ``index`` [B].

    Shorter sequences are repeated up to the least common multiple of the lengths, as ComfyUI's
    ``CONDCrossAttn.concat`` does: repeating every key/value the same number of times leaves
    softmax attention unchanged.
    """
    length = math.lcm(*(int(t.shape[1]) for t in tensors))
    padded = [t if t.shape[1] == length else t.repeat(1, length // t.shape[1], 1) for t in tensors]
    return torch.cat(padded)[index.to(padded[0].device)]


def _merge_option(key: str, values: list[Any], index: torch.Tensor) -> Any:
    """One option of U prompts' entries for rows ``index``: shared as is, or stacked per row."""
    if all(_same(values[0], value) for value in values[1:]):
        return values[0]
    if key in BATCH_WIDE_KEYS:
        raise ProGRPOConfigError(
            f"the prompts' conditionings differ in {key!r}, which ComfyUI applies to the whole batch; "
            "give every prompt the same area/mask/ControlNet/hooks settings, or sample the prompts separately."
        )
    if all(isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == 1 for v in values) and len(
        {tuple(v.shape) for v in values}
    ) == 1:
        return torch.cat(values)[index.to(values[0].device)]
    raise ProGRPOConfigError(
        f"the prompts' conditionings differ in {key!r} in a way that cannot be batched (each prompt needs a "
        "one-row tensor of the same shape); encode every prompt with the same text encoder and settings."
    )


def stack_prompts(prompts: Sequence[ComfyConditioning], index: torch.Tensor) -> ComfyConditioning:
    """CONDITIONING whose row ``b`` is prompt ``index[b]`` of ``prompts`` (U CONDITIONINGs, one prompt each)."""
    if len({len(conditioning) for conditioning in prompts}) != 1:
        raise ProGRPOConfigError(
            "the prompts' conditionings have different numbers of entries (e.g. one went through "
            "ConditioningCombine); combine every prompt the same way, or sample the prompts separately."
        )
    stacked = []
    for entries in zip(*prompts, strict=True):
        tokens = [entry[0] for entry in entries]
        if all(t is None for t in tokens):
            cross_attn = None
        elif any(t is None or t.ndim != 3 or t.shape[0] != 1 for t in tokens):
            raise ProGRPOConfigError(
                "each prompt's CONDITIONING must hold one prompt (token tensors [1, L, D]); got shapes "
                f"{[None if t is None else tuple(t.shape) for t in tokens]}. Pass one CONDITIONING per prompt."
            )
        else:
            cross_attn = _stack_tokens(tokens, index)
        keys = list(OrderedDict.fromkeys(key for entry in entries for key in entry[1]))
        options = {}
        for key in keys:
            values = [entry[1].get(key, _MISSING) for entry in entries]
            if any(value is _MISSING for value in values):
                if all(value is _MISSING for value in values):
                    continue
                raise ProGRPOConfigError(
                    f"only some prompts' conditionings set {key!r}; encode all prompts the same way."
                )
            options[key] = _merge_option(key, values, index)
        stacked.append([cross_attn, options])
    return stacked


class PromptTable:
    """Append-only table of per-prompt CONDITIONINGs; progrpo's Conditioning rows hold indices into it.

    The table keeps a reference to every registered object, so an id never changes meaning.
    :meth:`select` results are cached for the last few row patterns (a rollout repeats one
    pattern between checkpoints).
    """

    def __init__(self, cache_size: int = 8) -> None:
        self._entries: list[ComfyConditioning] = []
        self._ids: dict[int, int] = {}  # id(object) -> table index
        self._cache: OrderedDict[tuple[int, ...], ComfyConditioning] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, conditioning: ComfyConditioning) -> int:
        """Index of ``conditioning`` (registered on first sight; the same object keeps its index)."""
        if not is_conditioning(conditioning):
            raise ProGRPOConfigError(
                "expected a ComfyUI CONDITIONING (a list of [tensor, dict] pairs, e.g. from CLIPTextEncode); "
                f"got {type(conditioning).__name__}."
            )
        key = id(conditioning)
        if key not in self._ids:
            self._ids[key] = len(self._entries)
            self._entries.append(conditioning)
        return self._ids[key]

    def __getitem__(self, index: int) -> ComfyConditioning:
        return self._entries[index]

    def select(self, rows: torch.Tensor) -> ComfyConditioning:
        """CONDITIONING for the latent rows whose prompts are ``rows`` (LongTensor[B] of table indices).

        One distinct prompt: that CONDITIONING unchanged (ComfyUI repeats its one row). Several:
        :func:`stack_prompts`, with exactly B rows.
        """
        key = tuple(int(r) for r in rows.reshape(-1).tolist())
        if not key:
            raise ProGRPOConfigError("no rows to select conditioning for; pass at least one sample row.")
        if any(not 0 <= r < len(self._entries) for r in key):
            raise ProGRPOConfigError(
                f"conditioning rows {sorted(set(key))} are not in this denoiser's prompt table (size "
                f"{len(self._entries)}); build the Conditioning with the same ComfyDenoiser."
            )
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        unique = sorted(set(key))
        if len(unique) == 1:
            result = self._entries[unique[0]]
        else:
            position = {table_index: k for k, table_index in enumerate(unique)}
            index = torch.tensor([position[r] for r in key], dtype=torch.long)
            result = stack_prompts([self._entries[i] for i in unique], index)
        self._cache[key] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result
