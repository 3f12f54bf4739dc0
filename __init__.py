"""ComfyUI entry point of the Pro-GRPO extension (V3 node API: ``comfy_entrypoint``).

ComfyUI imports this file as the package ``custom_nodes/comfyui-progrpo`` and awaits
``comfy_entrypoint()``. Nothing here imports ComfyUI at module import time: the node classes
(``nodes/``, the only code that touches ``comfy``/``comfy_api``) load inside ``comfy_entrypoint``,
so pytest, ``pip install -e .`` and plain ``python`` can import this file without ComfyUI.

There is deliberately no ``NODE_CLASS_MAPPINGS``: ComfyUI treats a module that has one as a V1
pack and never calls ``comfy_entrypoint``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

# A pack installed by cloning into custom_nodes/ (ComfyUI-Manager) has its requirements installed
# but not itself: make the bundled ``progrpo`` package importable. Appended, never prepended, so
# ComfyUI's own top-level modules (it has one called ``nodes``) keep precedence.
_REPO = os.path.dirname(os.path.abspath(__file__))
if importlib.util.find_spec("progrpo") is None and _REPO not in sys.path:
    sys.path.append(_REPO)

__all__ = ["comfy_entrypoint"]


async def comfy_entrypoint() -> Any:
    """The ``ComfyExtension`` ComfyUI asks for; its ``get_node_list`` returns ``nodes.NODE_LIST``."""
    from .nodes import ProGRPOExtension

    return ProGRPOExtension()
