"""The extension's own socket types, and the typed value that travels in the rollout socket.

The type names (``PROGRPO_REWARD``, ...) are stored in saved workflows: never rename them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from comfy_api.latest import io

from progrpo.rollout import Rollout

from .comfy_conditioning import PromptTable

#: a progrpo reward (``score(images, prompts) -> [B]``): Reward Loader / Combine -> samplers, trainers, scores.
RewardType = io.Custom("PROGRPO_REWARD")
#: a :class:`ComfyRollout` (a plain :class:`progrpo.rollout.Rollout` is accepted where the extras are not needed).
RolloutType = io.Custom("PROGRPO_ROLLOUT")
#: a list of scores (float32 tensor [B]).
ScoresType = io.Custom("PROGRPO_SCORES")
#: a :class:`progrpo.pruning.PruneSchedule`.
PruneScheduleType = io.Custom("PROGRPO_PRUNE_SCHEDULE")


@dataclass(kw_only=True)
class ComfyRollout(Rollout):
    """A core :class:`~progrpo.rollout.Rollout` plus what only a ComfyUI consumer of it needs.

    It is a Rollout, so the plot nodes and any core function take it as one. The Train Step needs the
    extras to re-evaluate the rollout's rows: the conditioning rows index ``prompt_table`` (the sampling
    denoiser's), and the policy ratio must use the sigmas of the same ``scheduler``.
    """

    prompt_table: PromptTable
    scheduler: str

    @classmethod
    def wrap(cls, rollout: Rollout, prompt_table: PromptTable, scheduler: str) -> ComfyRollout:
        """``rollout``'s fields (shared, not copied) with the ComfyUI extras."""
        fields = {field.name: getattr(rollout, field.name) for field in dataclasses.fields(Rollout) if field.init}
        return cls(**fields, prompt_table=prompt_table, scheduler=scheduler)
