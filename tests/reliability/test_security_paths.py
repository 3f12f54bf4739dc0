"""Every node input that becomes a path stays inside ComfyUI's folders, over HTTP on a real server.

The inputs: the Reward Loader's ``model`` / ``aesthetic_head`` (models/rewards), the Train Loop's
``prompt_file`` (input/) and ``run_name`` (output/progrpo/), Save LoRA's ``name`` (models/loras), the embedded
loader's ``model_name`` (a fixed list). For each: ``../``, an absolute path, a NUL byte and a symlink that leads
out of the folder are refused with an error naming the input (HTTP 400 at queue time, or an execution error
of that node), nothing outside is read or written, and a plain name inside the folder still works.
"""

from __future__ import annotations

import os

import pytest

from testkit.comfy_graphs import LOADER, execution_error, rejected_inputs, reward, run, train_loop
from testkit.comfy_harness import requires_comfyui

pytestmark = [pytest.mark.slow, requires_comfyui]
NUL = "bad\x00name"


@pytest.fixture(scope="module")
def server(comfy_server):
    """Files inside and outside the server's folders, and symlinks from inside to outside."""
    base = comfy_server.base
    outside = base / "outside"
    (outside / "clip").mkdir(parents=True, exist_ok=True)
    (outside / "head.safetensors").write_bytes(b"not read")
    (outside / "secret.txt").write_text("a handwritten digit 1\n")
    (outside / "lora.safetensors").write_bytes(b"precious")
    (outside / "run").mkdir(exist_ok=True)
    rewards = comfy_server.models / "rewards"
    (rewards / "inside_folder").mkdir(parents=True, exist_ok=True)
    (rewards / "head.pth").write_bytes(b"pickle")
    _link(rewards / "clip_link", outside / "clip")
    _link(rewards / "head_link.safetensors", outside / "head.safetensors")
    (base / "input").mkdir(exist_ok=True)
    (base / "input" / "prompts.txt").write_text("a handwritten digit 4\n")
    _link(base / "input" / "secret_link.txt", outside / "secret.txt")
    (base / "output" / "progrpo").mkdir(parents=True, exist_ok=True)
    _link(base / "output" / "progrpo" / "run_link", outside / "run")
    (comfy_server.models / "loras").mkdir(parents=True, exist_ok=True)
    _link(comfy_server.models / "loras" / "lora_link.safetensors", outside / "lora.safetensors")
    return comfy_server


def _link(link, target) -> None:
    if not link.is_symlink():
        os.symlink(target, link)


def _reward_loader(**inputs) -> dict:
    prompt = {"1": reward()}
    prompt["1"]["inputs"].update(inputs)
    prompt["2"] = {"class_type": "ProGRPORewardScore", "inputs": {
        "images": ["3", 0], "reward": ["1", 0], "prompts": ""}}
    prompt["3"] = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
    prompt["4"] = {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}}
    return prompt


def _assert_rejected(server, prompt: dict, node_id: str, input_name: str, words: str) -> None:
    status, body = server.post_prompt(prompt)
    assert status == 400, (input_name, body)
    details = rejected_inputs(body, node_id).get(input_name, "")
    assert details and words in details, (input_name, body)


@pytest.mark.parametrize("name, words", [
    ("../../outside/clip", "points outside"),
    ("ABSOLUTE/outside/clip", "points outside"),
    ("clip_link", "leads outside"),
    (NUL, "NUL byte"),
])
def test_reward_model_folder_is_confined_to_the_rewards_folder(server, name, words):
    name = name.replace("ABSOLUTE", str(server.base))
    _assert_rejected(server, _reward_loader(reward="clip_score", model=name), "1", "model", "model - model: ")
    _assert_rejected(server, _reward_loader(reward="clip_score", model=name), "1", "model", words)


@pytest.mark.parametrize("name, words", [
    ("../../outside/head.safetensors", "points outside"),
    ("ABSOLUTE/outside/head.safetensors", "points outside"),
    ("head_link.safetensors", "leads outside"),
    (NUL, "NUL byte"),
    ("head.pth", "not a .safetensors file"),
])
def test_aesthetic_head_is_confined_and_safetensors_only(server, name, words):
    name = name.replace("ABSOLUTE", str(server.base))
    prompt = _reward_loader(reward="aesthetic", model="inside_folder", aesthetic_head=name)
    _assert_rejected(server, prompt, "1", "aesthetic_head", words)


def test_a_folder_inside_the_rewards_folder_still_resolves(server):
    entry = run(server, _reward_loader(reward="brightness", model="inside_folder"))
    assert entry["status"]["status_str"] == "success", entry["status"]


@pytest.mark.parametrize("name, words", [
    ("../outside/secret.txt", "points outside"),
    ("ABSOLUTE/outside/secret.txt", "points outside"),
    ("secret_link.txt", "leads outside"),
    (NUL, "NUL byte"),
])
def test_prompt_file_is_confined_to_the_input_folder(server, name, words):
    name = name.replace("ABSOLUTE", str(server.base))
    entry = run(server, train_loop("paths_prompt_file", prompt_file=name, prompts=""))
    error = execution_error(entry)
    assert error is not None and error["node_id"] == "3", entry["status"]
    assert error["exception_message"].startswith("prompt_file:") and words in error["exception_message"], error


def test_a_prompt_file_inside_the_input_folder_still_trains(server):
    entry = run(server, train_loop("paths_prompt_file_ok", prompt_file="prompts.txt", prompts=""))
    assert entry["status"]["status_str"] == "success", entry["status"]


@pytest.mark.parametrize("name", ["../escape", "ABSOLUTE/outside/run", "sub/run", "..", NUL, ".hidden"])
def test_run_name_is_a_plain_folder_name(server, name):
    name = name.replace("ABSOLUTE", str(server.base))
    _assert_rejected(server, train_loop(name), "3", "run_name", "run_name=")


def test_run_name_symlinked_out_of_the_output_folder_is_refused(server):
    entry = run(server, train_loop("run_link"))
    error = execution_error(entry)
    assert error is not None and error["node_id"] == "3", entry["status"]
    assert error["exception_message"].startswith("run_name:") and "leads outside" in error["exception_message"]
    assert list((server.base / "outside" / "run").iterdir()) == []  # nothing written through the link


def _save_lora(name: str) -> dict:
    prompt = train_loop("paths_save_lora")
    del prompt["4"]  # Save LoRA is the only output: a prompt whose every output is invalid gets HTTP 400
    prompt["5"] = {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["3", 1], "name": name}}
    return prompt


@pytest.mark.parametrize("name", ["../escape", "ABSOLUTE/outside/lora", "sub/lora", NUL, "..safetensors"])
def test_lora_name_is_a_plain_file_name(server, name):
    name = name.replace("ABSOLUTE", str(server.base))
    _assert_rejected(server, _save_lora(name), "5", "name", "name=")


def test_lora_name_symlinked_out_of_the_loras_folder_is_refused(server):
    entry = run(server, _save_lora("lora_link"))
    error = execution_error(entry)
    assert error is not None and error["node_id"] == "5", entry["status"]
    assert error["exception_message"].startswith("name:") and "leads outside" in error["exception_message"]
    assert (server.base / "outside" / "lora.safetensors").read_bytes() == b"precious"
    entry = run(server, _save_lora("paths_plain_name"))  # a plain name is written inside the loras folder
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert (server.models / "loras" / "paths_plain_name.safetensors").is_file()


@pytest.mark.parametrize("name", ["../digits_flow", "/etc/passwd", NUL])
def test_embedded_model_name_is_one_of_the_shipped_models(server, name):
    prompt = {"1": {**LOADER, "inputs": {"model_name": name}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    _assert_rejected(server, prompt, "1", "model_name", "model_name - model_name:")
