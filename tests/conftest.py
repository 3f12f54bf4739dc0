"""Shared test set-up: one torch thread (the CI machine has 2 shared cores) and the ``comfy_server`` marker.

The support code the tests import (a ComfyUI harness, tiny models, reference implementations) is the
``testkit`` package at the repo root, importable through pytest's ``pythonpath`` option (pyproject.toml).
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``comfy_server`` every test that needs a fixture named ``*server``, directly or through another one.

    By convention only fixtures that give a running ComfyUI server end in ``server`` (``comfy_server``,
    ``tiny_models_server``, a module's ``server``); a test that starts one without such a fixture carries
    the marker itself (tests/in_comfyui/test_main_job.py).
    """
    for item in items:
        if any(name.endswith("server") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.comfy_server)
