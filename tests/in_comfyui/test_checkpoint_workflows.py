"""The two Load Checkpoint training templates on a real server, with tiny random checkpoints that the stock
CheckpointLoaderSimple loads: each workflow trains over HTTP, saves a LoRA whose every key the stock
LoraLoaderModelOnly maps on the checkpoint's MODEL, and that LoRA changes a stock KSampler's output."""

from __future__ import annotations

import json
import time

import pytest
import torch

from testkit.comfy_harness import REPO, requires_comfyui
from testkit.tiny_checkpoints import write_tiny_checkpoints

pytestmark = [pytest.mark.slow, requires_comfyui]

WORKFLOWS = {
    "sd15": REPO / "workflows" / "train_lora_sd_checkpoint.api.json",
    "sd3": REPO / "workflows" / "train_lora_sd3_checkpoint.api.json",
}


@pytest.fixture(scope="module")
def server(comfy_server):
    """The session server with the tiny checkpoints (and the stock files they are built from) in its models."""
    before = set(comfy_server.models.rglob("*"))
    began = time.monotonic()
    names = write_tiny_checkpoints(comfy_server.models)
    sizes = {kind: (comfy_server.models / "checkpoints" / name).stat().st_size / 2**20 for kind, name in names.items()}
    print(f"tiny checkpoints written in {time.monotonic() - began:.1f} s: "
          + ", ".join(f"{names[kind]} {size:.0f} MiB" for kind, size in sizes.items()))
    yield comfy_server, names
    for path in sorted(set(comfy_server.models.rglob("*")) - before, reverse=True):
        if path.is_file():
            path.unlink()


def _node(workflow: dict, class_type: str) -> str:
    (node_id,) = [key for key, node in workflow.items() if node["class_type"] == class_type]
    return node_id


def _stock_sample(server, workflow: dict, prefix: str, lora: str | None = None) -> torch.Tensor:
    """The workflow's KSampler on the checkpoint's MODEL (optionally through LoraLoaderModelOnly) -> saved latent."""
    from safetensors.torch import load_file

    loader, sampler = _node(workflow, "CheckpointLoaderSimple"), _node(workflow, "KSampler")
    inputs = workflow[sampler]["inputs"]
    prompt = {key: workflow[key] for key in {loader, inputs["positive"][0], inputs["negative"][0],
                                              inputs["latent_image"][0]}}
    model = [loader, 0]
    if lora is not None:
        prompt["100"] = {"class_type": "LoraLoaderModelOnly",
                         "inputs": {"model": [loader, 0], "lora_name": lora, "strength_model": 1.0}}
        model = ["100", 0]
    prompt["101"] = {"class_type": "KSampler", "inputs": {**inputs, "model": model, "seed": 3}}
    prompt["102"] = {"class_type": "SaveLatent", "inputs": {"samples": ["101", 0], "filename_prefix": prefix}}
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = entry["outputs"]["102"]["latents"][0]
    return load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def _error_message(entry: dict) -> str:
    return " ".join(str(data.get("exception_message", "")) for kind, data in entry["status"]["messages"]
                    if kind == "execution_error")


@pytest.mark.parametrize("kind", sorted(WORKFLOWS))
def test_checkpoint_workflow_trains_and_its_lora_loads_with_the_stock_loader(server, kind):
    server, names = server
    workflow = json.loads(WORKFLOWS[kind].read_text())
    loader, train = _node(workflow, "CheckpointLoaderSimple"), _node(workflow, "ProGRPOTrainLoop")
    assert workflow[loader]["inputs"]["ckpt_name"] == names[kind]
    before = _stock_sample(server, workflow, f"{kind}_before")

    began = time.monotonic()
    status, body = server.post_prompt(workflow)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=300)
    seconds = time.monotonic() - began
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"]
    previews = [key for key, node in workflow.items() if node["class_type"] == "PreviewImage"]
    assert len(previews) == 2 and all(outputs[key]["images"] for key in previews)  # reward curve, trained sample
    print(f"{WORKFLOWS[kind].name} ({workflow[train]['inputs']['iterations']} iterations) took {seconds:.1f} s")

    lora = server.models / "loras" / f"{workflow[_node(workflow, 'ProGRPOSaveLoRA')]['inputs']['name']}.safetensors"
    assert lora.is_file()
    run = server.base / "output" / "progrpo" / workflow[train]["inputs"]["run_name"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == workflow[train]["inputs"]["iterations"]

    log_start = len(server.log())
    with_lora = _stock_sample(server, workflow, f"{kind}_with_lora", lora=lora.name)
    assert "lora key not loaded" not in server.log()[log_start:]
    assert with_lora.isfinite().all() and not torch.equal(with_lora, before)
