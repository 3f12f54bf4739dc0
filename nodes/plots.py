"""Plot nodes: a rollout's pruning funnel and its clustering histogram, rendered to an IMAGE.

matplotlib runs with the Agg backend (no display); a figure becomes a [1, H, W, 3] float tensor.
"""

from __future__ import annotations

import io as _io

import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image

from progrpo.advantages import group_advantages
from progrpo.diagnostics import clustering_fraction
from progrpo.rollout import Rollout

from .input_checks import check_numbers
from .sockets import RolloutType


def _figure_to_image(figure) -> torch.Tensor:
    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    pixels = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).unsqueeze(0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def live_per_step(rollout: Rollout) -> list[int]:
    """Trajectories evaluated at each step 1..T: pruned-at-c ones ran c steps, survivors all T."""
    pruned_at = rollout.pruned_at
    steps = int(rollout.log_probs.shape[1])
    return [int(((pruned_at == -1) | (pruned_at >= step)).sum()) for step in range(1, steps + 1)]


def funnel_plot(rollout: Rollout, width: int = 640, height: int = 400) -> torch.Tensor:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(width / 100, height / 100))
    live = live_per_step(rollout)
    axis.bar(range(1, len(live) + 1), live, color="#4c72b0", label="live trajectories")
    axis.set_xlabel("step")
    axis.set_ylabel("live trajectories (all prompts)")
    for slot, step in enumerate(rollout.checkpoint_steps):
        axis.axvline(step + 0.5, color="#c44e52", linestyle="--", linewidth=1)
        axis.annotate(
            f"std {float(rollout.group_std_before[slot]):.3g} -> {float(rollout.group_std_after[slot]):.3g}",
            (step + 0.5, max(live) * (0.95 - 0.08 * slot)), fontsize=8, color="#c44e52",
        )
    axis.set_title("Pro-GRPO pruning funnel (preview-reward std before -> after each checkpoint)", fontsize=9)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    image = _figure_to_image(figure)
    plt.close(figure)
    return image


def histogram_plot(rollout: Rollout, delta: float, width: int = 640, height: int = 400) -> torch.Tensor:
    plt = _pyplot()
    advantages = group_advantages(rollout.final_rewards.float(), rollout.prompt_index.long(), clip=None)
    fraction = clustering_fraction(advantages, delta)
    figure, axis = plt.subplots(figsize=(width / 100, height / 100))
    axis.axvspan(-delta, delta, color="#dd8452", alpha=0.25, label=f"|A| <= {delta:g}: {fraction:.0%}")
    axis.hist(advantages.numpy(), bins=max(5, min(40, advantages.numel())), color="#4c72b0")
    axis.set_xlabel("group-normalised reward A = (R - mean) / std")
    axis.set_ylabel("trajectories")
    axis.set_title("Pro-GRPO reward clustering (final rewards of the survivors)", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    image = _figure_to_image(figure)
    plt.close(figure)
    return image


class ProGRPOPruningFunnel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOPruningFunnel",
            display_name="Pro-GRPO Pruning Funnel",
            category="Pro-GRPO/plots",
            description="Live trajectories per step of a rollout, with the within-group preview-reward std before "
            "and after each checkpoint.",
            inputs=[RolloutType.Input("rollout", tooltip="A rollout from Pro-GRPO Expanded Sampler.")],
            outputs=[io.Image.Output(display_name="plot", tooltip="The plot as an image (connect Preview Image).")],
        )

    @classmethod
    def execute(cls, rollout: Rollout) -> io.NodeOutput:
        return io.NodeOutput(funnel_plot(rollout))


class ProGRPOClusteringHistogram(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOClusteringHistogram",
            display_name="Pro-GRPO Clustering Histogram",
            category="Pro-GRPO/plots",
            description="Histogram of the survivors' group-normalised rewards; the shaded band |A| <= delta holds "
            "the clustered trajectories that carry little learning signal.",
            inputs=[
                RolloutType.Input("rollout", tooltip="A rollout from Pro-GRPO Expanded Sampler."),
                io.Float.Input("delta", default=0.25, min=0.0, max=5.0, step=0.05,
                               tooltip="Half-width of the clustering band around advantage 0."),
            ],
            outputs=[io.Image.Output(display_name="plot", tooltip="The plot as an image (connect Preview Image).")],
        )

    @classmethod
    def validate_inputs(cls, delta: float | None = None) -> bool | str:
        return check_numbers(cls, delta=delta)  # NaN passes ComfyUI's range check

    @classmethod
    def execute(cls, rollout: Rollout, delta: float) -> io.NodeOutput:
        return io.NodeOutput(histogram_plot(rollout, float(delta)))
