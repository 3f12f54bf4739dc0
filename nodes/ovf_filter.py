"""ProGRPOOVFFilter: keep, per group, the k scored items with the largest reward variance (static OVF)."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from progrpo.errors import ProGRPOConfigError
from progrpo.ovf import optimal_variance_subset
from progrpo.pruning import rows_of_positions

from .input_checks import number_problem
from .rewards import ScoresType


def _check_k(k: int | None, group_size: int | None) -> str | None:
    # declared in validate_inputs, so ComfyUI neither range-checks them nor stops a value it failed to convert
    for name, value in (("k", k), ("group_size", group_size)):
        problem = number_problem(name, value, 1, 4096)
        if problem:
            return problem
    if k is not None and k < 2:
        return f"k: k={k} keeps fewer than 2 per group, which has no reward variance; set k to at least 2."
    if k is not None and group_size is not None and k > group_size:
        return f"k: k={k} is larger than group_size={group_size}; set k <= group_size."
    return None


def kept_rows(scores: torch.Tensor, k: int, group_size: int) -> torch.Tensor:
    """Row indices [groups * k] (group-major, ascending within a group) that OVF keeps."""
    problem = _check_k(k, group_size)
    if problem:
        raise ProGRPOConfigError(problem)
    count = int(scores.shape[0])
    if count % group_size:
        raise ProGRPOConfigError(
            f"group_size: {count} scores are not a whole number of groups of {group_size}; set group_size to a "
            "divisor of the batch (the batch is group-major: group 0's items first)."
        )
    groups = scores.float().reshape(count // group_size, group_size)
    return rows_of_positions(optimal_variance_subset(groups, k), group_size)


class ProGRPOOVFFilter(io.ComfyNode):
    """Static Optimal Variance Filtering of a scored batch."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOOVFFilter",
            display_name="Pro-GRPO OVF Filter",
            category="Pro-GRPO/sampling",
            description="Per group of group_size consecutive items, keeps the k whose scores have the largest "
            "variance (Optimal Variance Filtering: some lowest plus some highest).",
            inputs=[
                ScoresType.Input("scores", tooltip="One score per item, from Pro-GRPO Reward Score."),
                io.Int.Input("k", default=4, min=1, max=4096, tooltip="Items kept per group (2 <= k <= group_size)."),
                io.Int.Input("group_size", default=8, min=1, max=4096,
                             tooltip="Items per group; the batch is group-major (group 0 first)."),
                io.Image.Input("images", optional=True, tooltip="Images to filter (same order as the scores)."),
                io.Latent.Input("latent", optional=True, tooltip="Latents to filter (same order as the scores)."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The kept images (empty 1x1 black if none given)."),
                io.Latent.Output(display_name="latent", tooltip="The kept latents (an empty 1x4x1x1 latent if none given)."),
                io.String.Output(display_name="indices", tooltip="Comma-separated kept indices into the batch."),
            ],
        )

    @classmethod
    def validate_inputs(cls, k: int | None = None, group_size: int | None = None) -> bool | str:
        return _check_k(k, group_size) or True

    @classmethod
    def execute(cls, scores: torch.Tensor, k: int, group_size: int, images: torch.Tensor | None = None,
                latent: dict[str, Any] | None = None) -> io.NodeOutput:
        rows = kept_rows(torch.as_tensor(scores), k, group_size)
        for name, batch in (("images", images), ("latent", None if latent is None else latent["samples"])):
            if batch is not None and batch.shape[0] != scores.shape[0]:
                raise ProGRPOConfigError(
                    f"{name}: batch of {batch.shape[0]} but {scores.shape[0]} scores; score exactly this batch."
                )
        kept_images = images[rows] if images is not None else torch.zeros(1, 1, 1, 3)
        kept_latent = None
        if latent is not None:
            kept_latent = {**latent, "samples": latent["samples"][rows]}
            kept_latent.pop("batch_index", None)
            kept_latent.pop("noise_mask", None)
        else:
            kept_latent = {"samples": torch.zeros(1, 4, 1, 1)}
        return io.NodeOutput(kept_images, kept_latent, ", ".join(str(i) for i in rows.tolist()))
