"""Pro-GRPO's ComfyUI nodes (V3 API). The only package that imports ComfyUI.

Node ids are forever (DESIGN.md section 7); display names start with "Pro-GRPO". Every node is
listed in :data:`NODE_LIST`, which the repo root's ``comfy_entrypoint`` hands to ComfyUI.

Import this package only inside a ComfyUI process (or with ComfyUI's folder on ``sys.path``), and
only relatively or under an alias: ComfyUI has its own top-level module called ``nodes``.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .prune_schedule import ProGRPOPruneSchedule

#: every node class of the extension, in menu order.
NODE_LIST: list[type[io.ComfyNode]] = [ProGRPOPruneSchedule]


class ProGRPOExtension(ComfyExtension):
    """The extension object ComfyUI's loader receives from ``comfy_entrypoint``."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)
