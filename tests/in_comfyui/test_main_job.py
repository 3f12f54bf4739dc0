"""The main job (README command 1 -> scripts/main_job.sh -> scripts/comfy_demo.py), in a short setting.

It starts its own headless ComfyUI, queues the embedded-model training workflow over HTTP, follows
/ws, and must leave the LoRA, the reward curve, one before/after grid per prompt, the metrics JSONL
and the evaluation in the output folder, and stop the server it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testkit.comfy_harness import REPO, free_port, requires_comfyui

pytestmark = [pytest.mark.slow, pytest.mark.comfy_server, requires_comfyui]


def test_main_job_script_runs_the_demo_workflow_through_comfyui(tmp_path):
    assert "scripts/comfy_demo.py" in (REPO / "scripts" / "main_job.sh").read_text()
    port, output = free_port(), tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "comfy_demo.py"), "--iterations", "3", "--port", str(port),
         "--base-directory", str(tmp_path / "base"), "--output", str(output)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "iteration    3/3" in result.stdout  # progress from /ws, printed in the terminal
    assert "before" in result.stdout and "-> after" in result.stdout

    lora = output / "progrpo_digits_demo.safetensors"
    from safetensors import safe_open

    with safe_open(str(lora), "pt") as handle:
        keys = list(handle.keys())
        assert handle.metadata()["progrpo"] == "1"
    assert keys and all(key.startswith("diffusion_model.unet.") for key in keys)
    assert (output / "reward_curve.png").stat().st_size > 1000
    grids = sorted((output / "grids").glob("*.png"))
    assert len(grids) == 10 and grids[7].name == "07_a_handwritten_digit_7.png"
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in records] == [0, 1, 2]
    evaluation = json.loads((output / "evaluation.json").read_text())
    assert len(evaluation["per_prompt"]) == 10 and evaluation["iterations"] == 3
    assert 0.0 <= evaluation["mean_before"] <= 1.0 and 0.0 <= evaluation["mean_after"] <= 1.0
    held_out = json.loads((output / "held_out.json").read_text())
    assert len(held_out["prompts"]) == 10 and set(held_out["rewards"]) == {"digit_alignment", "contrast"}
    assert (output / "held_out_table.png").stat().st_size > 1000
    queued = json.loads((output / "workflow.api.json").read_text())
    assert queued["4"]["inputs"]["iterations"] == 3 and queued["4"]["inputs"]["resume"] is False

    # the server it started is gone (its port is free again)
    import socket

    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
