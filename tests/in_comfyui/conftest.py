"""Fixtures of the ComfyUI tier: one real ComfyUI server per test session, with this extension loaded.

The server runs from ``.comfyui/ComfyUI`` (installed by scripts/install_comfyui.sh) through
scripts/start_comfyui.sh, on a free port, with a temporary --base-directory whose custom_nodes/
links this repo and whose models/ the tests may fill with tiny models. It is stopped with SIGTERM
at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.comfy_harness import ComfyServer


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A running ComfyUI server (``.url``, ``.post_prompt``, ``.wait_history``, ``.log()``, ``.models``)."""
    yield from ComfyServer.for_session(tmp_path_factory, "comfyui-base")


@pytest.fixture(scope="module")
def tiny_models_server(comfy_server: ComfyServer) -> Iterator[ComfyServer]:
    """The session server with the tiny stock-loadable models (tiny_stock_models) in its models folder."""
    from testkit.tiny_stock_models import write_tiny_stock_models

    write_tiny_stock_models(comfy_server.models)
    yield comfy_server
    # pytest keeps the last few temp dirs: do not leave ~300 MB of random weights in each.
    for path in comfy_server.models.glob("*/tiny_*.safetensors"):
        path.unlink()
