"""Pro-GRPO's ComfyUI nodes (V3 API). The only package that imports ComfyUI.

Node ids are forever (saved workflows name them); display names start with "Pro-GRPO". Every node is
listed in :data:`NODE_LIST`, which the repo root's ``comfy_entrypoint`` hands to ComfyUI.

Import this package only inside a ComfyUI process (or with ComfyUI's folder on ``sys.path``), and
only relatively or under an alias: ComfyUI has its own top-level module called ``nodes``.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .embedded_model import ProGRPOEmbeddedModelLoader
from .evaluation import ProGRPOEvaluation
from .expanded_sampler import ProGRPOExpandedSampler
from .ovf_filter import ProGRPOOVFFilter
from .plots import ProGRPOClusteringHistogram, ProGRPOPruningFunnel
from .prompt_grid import ProGRPOPromptGrid
from .prune_schedule import ProGRPOPruneSchedule
from .rewards import ProGRPORewardCombine, ProGRPORewardLoader, ProGRPORewardScore, register_rewards_folder
from .sampler_node import ProGRPOSampler
from .train_nodes import ProGRPOSaveLoRA, ProGRPOTrainLoop, ProGRPOTrainStep

#: every node class of the extension, in menu order.
NODE_LIST: list[type[io.ComfyNode]] = [
    ProGRPOEmbeddedModelLoader,
    ProGRPOExpandedSampler,
    ProGRPOSampler,
    ProGRPOPruneSchedule,
    ProGRPOOVFFilter,
    ProGRPORewardLoader,
    ProGRPORewardCombine,
    ProGRPORewardScore,
    ProGRPOPruningFunnel,
    ProGRPOClusteringHistogram,
    ProGRPOTrainLoop,
    ProGRPOTrainStep,
    ProGRPOSaveLoRA,
    ProGRPOPromptGrid,
    ProGRPOEvaluation,
]


class ProGRPOExtension(ComfyExtension):
    """The extension object ComfyUI's loader receives from ``comfy_entrypoint``."""

    async def on_load(self) -> None:
        # models/rewards holds CLIPModel folders and aesthetic heads for the reward loader.
        register_rewards_folder()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)
