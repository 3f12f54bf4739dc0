"""Pro-GRPO training in a real ComfyUI server: the shipped training workflow over HTTP, progress on /ws,
POST /interrupt with a resumable checkpoint, the cached model untouched, the saved LoRA loading cleanly."""

from __future__ import annotations

import json
import struct
import time
import urllib.request
import uuid

import pytest
import torch

from testkit.comfy_harness import REPO, requires_comfyui
from testkit.tiny_stock_models import write_tiny_stock_models

pytestmark = [pytest.mark.slow, requires_comfyui]

WORKFLOW = REPO / "workflows" / "train_lora_sd15.api.json"
PROMPTS = "a photo of a red cat\na blue car on a street\n"


@pytest.fixture(scope="module")
def server(comfy_server):
    write_tiny_stock_models(comfy_server.models)
    (comfy_server.base / "input").mkdir(exist_ok=True)
    (comfy_server.base / "input" / "progrpo_prompts.txt").write_text(PROMPTS)
    yield comfy_server
    for path in comfy_server.models.glob("*/tiny_*.safetensors"):
        path.unlink()


def _workflow() -> dict:
    return json.loads(WORKFLOW.read_text())


def _post(server, path: str, body: dict) -> dict:
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        data = response.read()
    return json.loads(data) if data else {}


class _Socket:
    """A /ws client (websocket-client) collecting JSON messages."""

    def __init__(self, server) -> None:
        import websocket

        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(f"{server.url.replace('http', 'ws')}/ws?clientId={self.client_id}",
                                              timeout=300)
        self.messages: list[dict] = []
        self.frames: list[bytes] = []

    def queue(self, server, prompt: dict) -> str:
        return _post(server, "/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def next(self) -> dict:
        while True:
            frame = self.ws.recv()
            if isinstance(frame, str):
                message = json.loads(frame)
                self.messages.append(message)
                return message
            self.frames.append(bytes(frame))

    def previews(self) -> list[bytes]:
        """Preview images sent without metadata (binary event 1: event, image type, image bytes)."""
        return [frame[8:] for frame in self.frames if struct.unpack(">I", frame[:4])[0] == 1]

    def texts(self, node: str) -> list[str]:
        """Progress texts of ``node`` (binary event 3: event, node id length, node id, text)."""
        texts = []
        for frame in self.frames:
            if struct.unpack(">I", frame[:4])[0] == 3:
                length = struct.unpack(">I", frame[4:8])[0]
                if frame[8:8 + length].decode() == node:
                    texts.append(frame[8 + length:].decode())
        return texts

    def until(self, prompt_id: str, kinds: set[str]) -> dict:
        while True:
            message = self.next()
            if message["type"] in kinds and message["data"].get("prompt_id") == prompt_id:
                return message

    def close(self) -> None:
        self.ws.close()


def _stock_sample(server, prefix: str, lora: str | None = None) -> torch.Tensor:
    """Stock KSampler on the cached UNETLoader model (optionally through LoraLoaderModelOnly) -> saved latent."""
    from safetensors.torch import load_file

    workflow = _workflow()
    prompt = {key: workflow[key] for key in ("1", "2", "9", "10", "11")}
    model = ["1", 0]
    if lora is not None:
        prompt["20"] = {"class_type": "LoraLoaderModelOnly",
                        "inputs": {"model": ["1", 0], "lora_name": lora, "strength_model": 1.0}}
        model = ["20", 0]
    prompt["21"] = {"class_type": "KSampler", "inputs": {**workflow["12"]["inputs"], "model": model, "seed": 3}}
    prompt["22"] = {"class_type": "SaveLatent", "inputs": {"samples": ["21", 0], "filename_prefix": prefix}}
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = entry["outputs"]["22"]["latents"][0]
    return load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def test_training_workflow_runs_over_http_with_progress_and_a_loadable_lora(server):
    before = _stock_sample(server, "before")
    socket = _Socket(server)
    try:
        began = time.monotonic()
        prompt_id = socket.queue(server, _workflow())
        done = socket.until(prompt_id, {"execution_success", "execution_error", "execution_interrupted"})
        seconds = time.monotonic() - began
    finally:
        socket.close()
    assert done["type"] == "execution_success", done
    progress = [m["data"] for m in socket.messages if m["type"] == "progress" and m["data"].get("node") == "6"]
    # ticks on every model call (sampling steps, training micro-batches), ending full
    assert len(progress) > 2 * 4 and progress[-1]["value"] == progress[-1]["max"], progress
    entry = server.wait_history(prompt_id)
    assert entry["outputs"]["8"]["images"] and entry["outputs"]["14"]["images"]
    lora = server.models / "loras" / "progrpo_sd15_brightness.safetensors"
    assert lora.is_file()
    run = server.base / "output" / "progrpo" / "sd15_brightness"
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_2"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    print(f"training workflow (2 iterations) took {seconds:.1f} s")

    # the cached model is untouched; the saved LoRA loads through the stock loader with every key mapped
    assert torch.equal(_stock_sample(server, "after"), before)
    log_start = len(server.log())
    with_lora = _stock_sample(server, "with_lora", lora=lora.name)
    assert "lora key not loaded" not in server.log()[log_start:]
    assert not torch.equal(with_lora, before)


def test_interrupt_stops_within_an_iteration_and_leaves_a_resumable_checkpoint(server):
    before = _stock_sample(server, "before_interrupt")
    workflow = _workflow()
    prompt = {key: workflow[key] for key in ("1", "2", "3", "4", "5", "6", "8")}
    prompt["6"]["inputs"].update(iterations=500, checkpoint_every=0, run_name="interrupted", resume=False)
    socket = _Socket(server)
    try:
        prompt_id = socket.queue(server, prompt)
        # the Train Loop's per-iteration message: the first iteration is complete
        message = socket.until(prompt_id, {"progrpo.progress", "execution_error", "execution_success"})
        assert message["type"] == "progrpo.progress", message
        seen = message["data"]["iteration"]
        _post(server, "/interrupt", {"prompt_id": prompt_id})
        stopped = socket.until(prompt_id, {"execution_interrupted", "execution_error", "execution_success"})
    finally:
        socket.close()
    assert stopped["type"] == "execution_interrupted", stopped
    reached = max(m["data"]["iteration"] for m in socket.messages if m["type"] == "progrpo.progress")
    run = server.base / "output" / "progrpo" / "interrupted"
    latest = (run / "checkpoints" / "latest").read_text().strip()
    iteration = int(latest.removeprefix("iter_"))
    assert seen <= iteration <= seen + 1 and reached <= iteration <= reached + 1  # within one iteration

    assert torch.equal(_stock_sample(server, "after_interrupt"), before)

    prompt["6"]["inputs"].update(iterations=iteration + 1, resume=True)
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(iteration + 1))
    # the cancelled run wrote its last completed iteration's LoRA where the stock loader finds it
    cancelled = server.models / "loras" / f"interrupted_{iteration}.safetensors"
    assert cancelled.is_file()
    log_start = len(server.log())
    _stock_sample(server, "cancelled_lora", lora=cancelled.name)
    assert "lora key not loaded" not in server.log()[log_start:]


def _other_unet(server) -> str:
    """A copy of the tiny UNet file with every weight scaled by 1.01: the same architecture, other weights."""
    from safetensors.torch import load_file, save_file

    name = "tiny_sd15_unet_other.safetensors"
    folder = server.models / "diffusion_models"
    if not (folder / name).exists():
        state = load_file(str(folder / prompt_unet_file()))
        save_file({key: value * 1.01 if value.is_floating_point() else value for key, value in state.items()},
                  str(folder / name))
    return name


def prompt_unet_file() -> str:
    return _workflow()["1"]["inputs"]["unet_name"]


def test_live_view_shows_survivors_curve_and_eta_while_training(server):
    """Every iteration: a new preview image (survivors + reward curve), a status text with the ETA (and the
    held-out reward, evaluated every iteration here), and the numbers as a progrpo.progress message on /ws."""
    prompt = _short_run("live_view", iterations=3, resume=False, eval_every=1, eval_prompts="a green frog")
    socket = _Socket(server)
    try:
        prompt_id = socket.queue(server, prompt)
        done = socket.until(prompt_id, {"execution_success", "execution_error", "execution_interrupted"})
    finally:
        socket.close()
    assert done["type"] == "execution_success", done
    previews = socket.previews()
    assert len(previews) >= 3 and len(set(previews)) >= 3, len(previews)  # one per iteration, each different
    texts = socket.texts("6")
    assert len(texts) == 3 and all("ETA" in text and "groups tied" in text for text in texts), texts
    assert texts[-1].startswith("iteration 3/3")
    events = [m["data"] for m in socket.messages if m["type"] == "progrpo.progress"]
    assert [e["iteration"] for e in events] == [1, 2, 3] and all("reward_mean" in e for e in events), events
    assert all(isinstance(e["eval_reward"], float) for e in events) and all("held-out" in t for t in texts), events


def _short_run(run_name: str, **inputs) -> dict:
    workflow = _workflow()
    prompt = {key: workflow[key] for key in ("1", "2", "3", "4", "5", "6", "8")}
    prompt["6"]["inputs"].update({"run_name": run_name, "resume": True, "checkpoint_every": 1, **inputs})
    return prompt


def _error_message(server, prompt: dict) -> str:
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "error", entry["status"]
    return next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")["exception_message"]


def _succeeds(server, prompt: dict) -> None:
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]


def test_save_every_writes_loadable_loras_and_keep_last_prunes_checkpoints(server):
    _succeeds(server, _short_run("saved_every", iterations=4, save_every=2, keep_last=2, resume=False))
    names = sorted(p.name for p in (server.models / "loras").glob("saved_every_*.safetensors"))
    assert names == ["saved_every_2.safetensors", "saved_every_4.safetensors"]
    listed = server.get("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"]
    assert set(names) <= set(listed[0] if isinstance(listed[0], list) else listed[1]["options"])
    checkpoints = server.base / "output" / "progrpo" / "saved_every" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["iter_3", "iter_4", "latest"]
    log_start = len(server.log())
    _stock_sample(server, "saved_every_2", lora=names[0])
    assert "lora key not loaded" not in server.log()[log_start:]


@pytest.mark.parametrize("change, field", [
    ({"rank": 3, "alpha": 3.0}, "lora.rank"),
    ("reward", "rewards.comfyui.reward"),
    ("model", "model"),
])
def test_resume_with_another_reward_rank_or_base_model_is_refused_naming_it(server, change, field):
    run_name = f"identity_{field.replace('.', '_')}"
    _succeeds(server, _short_run(run_name, iterations=1, resume=False))
    prompt = _short_run(run_name, iterations=2)
    if change == "reward":
        prompt["5"]["inputs"]["reward"] = "contrast"
    elif change == "model":  # the same architecture with other weights (another fine-tune of the base)
        prompt["1"]["inputs"]["unet_name"] = _other_unet(server)
    else:
        prompt["6"]["inputs"].update(change)
    message = _error_message(server, prompt)
    assert "cannot resume" in message and f"{field}:" in message, message


def test_training_nodes_are_listed_with_category_and_input_tooltips(comfy_server):
    info = comfy_server.get("/object_info")
    for node in ("ProGRPOTrainLoop", "ProGRPOTrainStep", "ProGRPOSaveLoRA"):
        entry = info[node]
        assert entry["category"] == "Pro-GRPO/training"
        assert entry["display_name"].startswith("Pro-GRPO")
        inputs = {**entry["input"].get("required", {}), **entry["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{node}.{name} has no tooltip"
        assert all(entry["output_tooltips"]), node
    assert info["ProGRPOTrainLoop"]["output"] == ["MODEL", "LORA_MODEL", "IMAGE"]
    assert info["ProGRPOSaveLoRA"]["output_node"] is True
