"""Fixtures of the reliability tier: one real ComfyUI server per session (as tests/nodes has), shared by
every tests/reliability module that needs one, so the burst, fuzz, confinement and clean-model tests do
not each pay a server start.

No ``__init__.py`` here (nor in tests/nodes): ComfyUI's top-level ``nodes`` module would clash with a
``tests.nodes`` package; the harness is imported from tests/nodes by path instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nodes"))

from comfy_harness import ComfyServer


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A running ComfyUI server with this extension (``.url``, ``.post_prompt``, ``.wait_history``, ``.log()``)."""
    yield from ComfyServer.for_session(tmp_path_factory, "comfyui-reliability")
