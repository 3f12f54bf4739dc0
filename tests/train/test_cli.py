"""The command line, run as users run it: ``python -m progrpo ...`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from progrpo.lora import read_lora_metadata
from progrpo.train.run_config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "progrpo" / "configs" / "digits_flow_alignment.yaml"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "progrpo", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_train_on_the_shipped_example_config_writes_every_output(tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", str(EXAMPLE), "--iterations", "3", "--output-dir", str(run), "--evaluate-samples", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"run folder: {run}" in result.stderr
    for name in ("lora.safetensors", "metrics.jsonl", "curve.png", "config.yaml", "evaluation.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in records] == [0, 1, 2]
    assert Image.open(run / "curve.png").size[0] > 100
    saved = load_config(run / "config.yaml")
    assert saved.iterations == 3 and saved.model == "embedded:digits_flow" and str(saved.rollout.prune_schedule) == "3:8, 5:4"
    metadata = read_lora_metadata(run / "lora.safetensors")
    assert metadata["base_model"] == "embedded:digits_flow" and json.loads(metadata["group_size"]) == 16
    lora = load_file(run / "lora.safetensors")
    assert any(key.endswith(".alpha") for key in lora) and all(torch.isfinite(v).all() for v in lora.values())

    exported = tmp_path / "again.safetensors"
    result = run_cli("export-lora", str(run), str(exported))
    assert result.returncode == 0, result.stderr[-3000:]
    again = load_file(exported)
    assert again.keys() == lora.keys() and all(torch.equal(again[k], lora[k]) for k in lora)


def test_sample_writes_grid_and_summary(tmp_path):
    result = run_cli("sample", "--model", "embedded:digits_flow", "--prompt", "a handwritten digit 3",
                     "--group-size", "6", "--steps", "6", "--prune", "3:3", "--size", "16",
                     "--reward", "digit_alignment", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["final_rewards"]) == 3
    assert summary["ledger"]["trajectory_steps"] == 6 * 3 + 3 * 3
    assert Image.open(tmp_path / "survivors.png").size[0] >= 3 * 16


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(EXAMPLE.read_text().replace("prune_schedule: \"3:8, 5:4\"", "prune_schedule: \"3:16, 5:4\""))
    result = run_cli("train", str(config), "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "group has only 16 trajectories" in result.stderr and "Traceback" not in result.stderr
