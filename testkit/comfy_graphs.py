"""API-format graphs on the shipped digits model (no downloads, seconds on a CPU) and outcome checks, shared
by the reliability tests that talk to a real ComfyUI server (test_comfy_*.py, test_security_paths.py).

Node ids are fixed per role ("1" the loader, "2" the reward...), so ComfyUI's cache hands every prompt the
*same* loaded MODEL object: what one prompt does to it, the next one sees.
"""

from __future__ import annotations

import io
import json
import time
import urllib.parse
import urllib.request
from typing import Any

PROMPT = "a handwritten digit 3"
LOADER = {"class_type": "ProGRPOEmbeddedModelLoader", "inputs": {"model_name": "digits_flow"}}


def reward(name: str = "brightness") -> dict[str, Any]:
    return {"class_type": "ProGRPORewardLoader",
            "inputs": {"reward": name, "model": "(none)", "aesthetic_head": "(none)", "weight": 1.0}}


def sampling(prefix: str, seed: int = 7, steps: int = 4, batch: int = 2) -> dict[str, Any]:
    """Stock CLIPTextEncode -> KSampler -> SaveLatent + VAEDecode -> SaveImage on the cached loader "1"."""
    return {
        "1": LOADER,
        "30": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "31": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": batch}},
        "32": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["30", 0], "negative": ["30", 0], "latent_image": ["31", 0],
            "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0}},
        "33": {"class_type": "SaveLatent", "inputs": {"samples": ["32", 0], "filename_prefix": f"{prefix}/latent"}},
        "34": {"class_type": "VAEDecode", "inputs": {"samples": ["32", 0], "vae": ["1", 2]}},
        "35": {"class_type": "SaveImage", "inputs": {"images": ["34", 0], "filename_prefix": f"{prefix}/image"}},
    }


def train_loop(run_name: str, iterations: int = 1, reward_name: str = "brightness", prompts: str = PROMPT,
               **overrides: Any) -> dict[str, Any]:
    """Loader "1" + reward "2" + Train Loop "3" (tiny: group 2, 2 steps, 16x16) + Preview of its curve."""
    inputs = {
        "model": ["1", 0], "vae": ["1", 2], "reward": ["2", 0], "clip": ["1", 1], "group_size": 2, "steps": 2,
        "dynamics": "flow_sde", "noise_level": 0.7, "cfg": 1.0, "width": 16, "height": 16,
        "iterations": iterations, "lr": 0.05, "rank": 2, "alpha": 2.0, "checkpoint_every": 0, "resume": False,
        "run_name": run_name, "seed": 0, "scheduler": "simple", "prompt_file": "", "negative_prompt": "",
        "selection": "ovf", "prompts_per_iteration": 1, "prompts": prompts,
    }
    inputs.update(overrides)
    return {
        "1": LOADER, "2": reward(reward_name),
        "3": {"class_type": "ProGRPOTrainLoop", "inputs": inputs},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 2]}},
    }


def expanded_sampler(seed: int = 0, group_size: int = 2, steps: int = 2) -> dict[str, Any]:
    """Loader "1" + reward "2" + Expanded Sampler "11" (+ the text encode it needs) + Preview of survivors."""
    return {
        "1": LOADER, "2": reward(),
        "10": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        # the digits model's latents are 1-channel 16x16 pixels: the grey VAE encodes an empty image into one
        "14": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "12": {"class_type": "VAEEncode", "inputs": {"pixels": ["14", 0], "vae": ["1", 2]}},
        "11": {"class_type": "ProGRPOExpandedSampler", "inputs": {
            "model": ["1", 0], "positive": ["10", 0], "negative": ["10", 0], "latent": ["12", 0],
            "group_size": group_size, "steps": steps, "dynamics": "flow_sde", "noise_level": 0.7, "cfg": 1.0,
            "seed": seed, "scheduler": "simple", "selection": "ovf", "reward": ["2", 0], "vae": ["1", 2],
            "prompt_text": PROMPT}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["11", 2]}},
    }


# --- outcomes -----------------------------------------------------------------------------------------------


def run(server: Any, prompt: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    return server.wait_history(body["prompt_id"], timeout=timeout)


def execution_error(entry: dict[str, Any]) -> dict[str, Any] | None:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return data
    return None


def cached_nodes(entry: dict[str, Any]) -> set[str]:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_cached":
            return set(data["nodes"])
    return set()


def rejected_inputs(body: dict[str, Any], node_id: str) -> dict[str, str]:
    """input name -> details of a 400's node errors for ``node_id`` (empty when that node has none)."""
    errors = body.get("node_errors", {}).get(node_id, {}).get("errors", [])
    return {error.get("extra_info", {}).get("input_name", ""): error.get("details", "") for error in errors}


def view(server: Any, file: dict[str, Any]) -> bytes:
    """An output file's bytes through GET /view (as the front end reads it)."""
    query = urllib.parse.urlencode({"filename": file["filename"], "subfolder": file.get("subfolder", ""),
                                    "type": file.get("type", "output")})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=30) as response:
        return response.read()


def pixels(data: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()


def latent_bytes(data: bytes) -> bytes:
    from safetensors.torch import load

    return load(data)["latent_tensor"].numpy().tobytes()


def post(server: Any, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30):
        pass


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def alive(server: Any) -> bool:
    try:
        server.get("/queue")
        return True
    except OSError:
        return False


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not happen within {timeout} s")
