"""ProGRPOPruneSchedule: the checkpoints of Pro-GRPO's funnel, as a value other nodes consume."""

from __future__ import annotations

from comfy_api.latest import io

from progrpo.errors import ProGRPOConfigError
from progrpo.pruning import PruneSchedule

from .input_errors import relabeled
from .sockets import PruneScheduleType

DEFAULT_CHECKPOINTS = "5:24, 7:12"


class ProGRPOPruneSchedule(io.ComfyNode):
    """Parses ``"step:keep, ..."`` into a PruneSchedule (checked again against the group by the sampler)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ProGRPOPruneSchedule",
            display_name="Pro-GRPO Prune Schedule",
            category="Pro-GRPO/sampling",
            description=(
                "When to prune each prompt's expanded group and how many trajectories to keep. "
                "At every checkpoint the sampler scores the clean-sample previews and keeps the subset "
                "with the largest reward variance (Optimal Variance Filtering)."
            ),
            inputs=[
                io.String.Input(
                    "checkpoints",
                    default=DEFAULT_CHECKPOINTS,
                    tooltip=(
                        "Comma-separated step:keep pairs, e.g. '5:24, 7:12' = after step 5 keep 24 "
                        "trajectories per prompt, after step 7 keep 12. Steps must increase, keeps must "
                        "shrink, every keep must be at least 2 and the first below the group size."
                    ),
                ),
            ],
            outputs=[
                PruneScheduleType.Output(
                    display_name="prune_schedule",
                    tooltip="The parsed schedule; connect it to a Pro-GRPO sampler's prune_schedule input.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, checkpoints: str | None = None) -> bool | str:
        """Reject a bad schedule when the prompt is queued (ComfyUI prefixes the input name)."""
        if checkpoints is None:  # linked from another node: only known at execution
            return True
        try:
            PruneSchedule.parse(checkpoints)
        except ProGRPOConfigError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, checkpoints: str) -> io.NodeOutput:
        try:
            schedule = PruneSchedule.parse(checkpoints)
        except ProGRPOConfigError as error:
            raise relabeled(error, input_name="checkpoints") from None
        return io.NodeOutput(schedule)
