"""A real ComfyUI server loads the extension: node list, tooltips, clean log, validation errors over HTTP."""

from __future__ import annotations

import pytest

from testkit.comfy_harness import PACK_NAME, requires_comfyui

pytestmark = [pytest.mark.slow, requires_comfyui]

NODE = "ProGRPOPruneSchedule"


def _schedule_prompt(checkpoints: str) -> dict:
    # PreviewAny (a stock output node taking any type) makes the schedule node part of an output's graph,
    # so ComfyUI validates and runs it.
    return {
        "1": {"class_type": NODE, "inputs": {"checkpoints": checkpoints}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }


def test_server_lists_the_node_with_category_and_tooltips(comfy_server):
    info = comfy_server.get(f"/object_info/{NODE}")[NODE]
    assert info["category"].startswith("Pro-GRPO/")
    assert info["display_name"].startswith("Pro-GRPO")
    assert PACK_NAME in info["python_module"]
    inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    assert set(inputs) == {"checkpoints"}
    for name, (_, options) in inputs.items():
        assert options.get("tooltip"), f"input {name} has no tooltip"
    assert inputs["checkpoints"][1]["default"] == "5:24, 7:12"
    assert info["output"] == ["PROGRPO_PRUNE_SCHEDULE"]
    assert all(info["output_tooltips"])


def test_server_log_shows_the_pack_imported(comfy_server):
    log = comfy_server.log()
    assert "IMPORT FAILED" not in log and "Cannot import" not in log, log[-3000:]
    assert PACK_NAME in log  # ComfyUI's "Import times for custom nodes" lists every pack it loaded


def test_bad_schedule_is_rejected_as_a_node_error_naming_the_input(comfy_server):
    status, body = comfy_server.post_prompt(_schedule_prompt("5:8, 7:12"))
    assert status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    (error,) = body["node_errors"]["1"]["errors"]
    assert error["extra_info"]["input_name"] == "checkpoints"
    assert error["details"].startswith("checkpoints")
    assert "must strictly shrink" in error["details"]


def test_good_schedule_runs_and_reaches_the_output(comfy_server):
    status, body = comfy_server.post_prompt(_schedule_prompt("5:24,7:12"))
    assert status == 200, body
    entry = comfy_server.wait_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["outputs"]["2"]["text"] == ["5:24, 7:12"]  # PreviewAny shows str(PruneSchedule)
