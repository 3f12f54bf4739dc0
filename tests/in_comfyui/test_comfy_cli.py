"""comfy-cli against this repository and the test server: registry validation, headless runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.comfy_harness import COMFYUI, REPO, requires_comfyui
from testkit.tiny_stock_models import write_tiny_stock_models

pytestmark = [pytest.mark.slow, requires_comfyui]

COMFY = Path(sys.executable).parent / "comfy"


def _env(tmp_path: Path) -> dict[str, str]:
    # comfy-cli keeps its config under HOME and re-spawns `comfy` by name: isolate both.
    return {**os.environ, "HOME": str(tmp_path), "DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1",
            "PATH": f"{COMFY.parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_comfy_node_validate_passes_on_the_repository(tmp_path):
    result = subprocess.run([str(COMFY), "--skip-prompt", "node", "validate"], cwd=REPO, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "validation checks passed" in output
    # the registry's security lint (exec/eval, S102/S307) must have nothing to say
    assert "S102" not in output and "S307" not in output


def test_comfy_run_executes_the_inspection_api_twin(comfy_server, tmp_path):
    # The shipped twin with another sampler seed: the same prompt queued again by another test on
    # this session's server would otherwise be served from ComfyUI's cache, with no outputs in history.
    workflow = json.loads((REPO / "workflows" / "inspect_expanded_sampling.api.json").read_text())
    sampler = next(node for node in workflow.values() if node["class_type"] == "ProGRPOExpandedSampler")
    sampler["inputs"]["seed"] += 1
    workflow_file = tmp_path / "inspect_expanded_sampling.api.json"
    workflow_file.write_text(json.dumps(workflow))
    write_tiny_stock_models(comfy_server.models)
    try:
        host, port = comfy_server.url.rsplit("//", 1)[1].split(":")
        result = subprocess.run(
            [str(COMFY), "--workspace", str(COMFYUI), "run", "--workflow", str(workflow_file),
             "--host", host, "--port", port, "--wait", "--timeout", "300"],
            cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=400,
        )
    finally:
        for path in comfy_server.models.glob("*/tiny_*.safetensors"):
            path.unlink()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # comfy-cli answers a non-TTY with one JSON envelope
    envelope = json.loads(result.stdout)
    assert envelope["ok"] and envelope["data"]["status"] == "completed", envelope
    assert len(envelope["data"]["outputs_by_node"]["11"]) == 2  # survivors of "3:2"
    assert len(envelope["data"]["outputs_by_node"]["13"]) == 1  # the pruning funnel
