"""Fixtures of the reliability tier: one real ComfyUI server per session (as tests/in_comfyui has), shared by
every tests/reliability module that needs one, so the burst, fuzz, confinement and clean-model tests do
not each pay a server start.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.comfy_harness import ComfyServer


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A running ComfyUI server with this extension (``.url``, ``.post_prompt``, ``.wait_history``, ``.log()``)."""
    yield from ComfyServer.for_session(tmp_path_factory, "comfyui-reliability")
