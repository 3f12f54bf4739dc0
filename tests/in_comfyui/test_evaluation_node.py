"""ProGRPOEvaluation on a real ComfyUI server: its JSON equals the Reward Score node on its own images.

Tiny stock-loadable SD1.5 files (UNETLoader, CLIPLoader, VAELoader taesd) at 32 px, 2 steps, 2 prompts x 2
samples. The "after" model is the base with the stock ModelSamplingDiscrete (v_prediction) patch: a
different model on the same weights; the base against itself must give identical scores (identical noise).
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from testkit.comfy_harness import requires_comfyui
from testkit.tiny_stock_models import CLIP_FILE, UNET_FILE, VAE_NAME

pytestmark = [pytest.mark.slow, requires_comfyui]

PROMPTS = ["a red cube on a table", "a blue car on a street"]
SAMPLES = 2
REWARDS = {"21": "brightness", "22": "jpeg_compressibility"}


@pytest.fixture(scope="module")
def server(tiny_models_server):
    return tiny_models_server


def _graph(prompts: str = "\n".join(PROMPTS), after: list | None = None) -> dict:
    """Loaders, two weight-free rewards, the Evaluation node "30" and Reward Score nodes on its image outputs."""
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET_FILE, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_FILE, "type": "stable_diffusion"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_NAME}},
        "4": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": "v_prediction",
                                                                "zsnr": False}},
        "30": {"class_type": "ProGRPOEvaluation", "inputs": {
            "model_before": ["1", 0], "model_after": after or ["4", 0], "clip": ["2", 0], "vae": ["3", 0],
            "prompts": prompts, "reward_1": ["21", 0], "reward_2": ["22", 0], "samples_per_prompt": SAMPLES,
            "width": 32, "height": 32, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple",
            "seed": 3, "negative_prompt": ""}},
        "31": {"class_type": "PreviewImage", "inputs": {"images": ["30", 0]}},
    }
    per_image = "\n".join(text for text in PROMPTS for _ in range(SAMPLES))
    for node, name in REWARDS.items():
        graph[node] = {"class_type": "ProGRPORewardLoader",
                       "inputs": {"reward": name, "model": "(none)", "aesthetic_head": "(none)", "weight": 1.0}}
        for output, side in ((2, "before"), (3, "after")):
            score, show = f"4{node}{output}", f"5{node}{output}"
            graph[score] = {"class_type": "ProGRPORewardScore",
                            "inputs": {"images": ["30", output], "reward": [node, 0], "prompts": per_image}}
            graph[show] = {"class_type": "PreviewAny", "inputs": {"source": [score, 1]}}
    return graph


def _run(server, graph: dict) -> dict:
    status, body = server.post_prompt(graph)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=300.0)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry["outputs"]


def _scored(outputs: dict, node: str, output: int) -> list[str]:
    """The Reward Score node's 'index: score' lines, as PreviewAny shows them."""
    return outputs[f"5{node}{output}"]["text"][0].splitlines()


def test_evaluation_json_equals_reward_score_on_its_images(server):
    outputs = _run(server, _graph())
    summary = json.loads(outputs["30"]["text"][0])
    assert summary["prompts"] == PROMPTS
    assert summary["settings"]["seed"] == 3 and summary["settings"]["samples_per_prompt"] == SAMPLES
    assert set(summary["rewards"]) == set(REWARDS.values())
    for node, name in REWARDS.items():
        entry = summary["rewards"][name]
        for output, side in ((2, "before"), (3, "after")):
            values = entry[side]
            assert len(values) == len(PROMPTS) * SAMPLES
            # the same float32 scores print the same: ProGRPORewardScore's text is f"{i}: {value:.6g}"
            assert _scored(outputs, node, output) == [f"{i}: {value:.6g}" for i, value in enumerate(values)]
            rescored = [float(line.split(": ")[1]) for line in _scored(outputs, node, output)]
            assert values == pytest.approx(rescored, rel=1e-5, abs=1e-6)
            assert entry[f"{side}_mean"] == pytest.approx(sum(values) / len(values), abs=1e-9)
            assert entry[f"{side}_mean"] == pytest.approx(sum(rescored) / len(rescored), rel=1e-5, abs=1e-6)
            for index, text in enumerate(PROMPTS):
                mine = values[index * SAMPLES:(index + 1) * SAMPLES]
                assert entry["per_prompt"][text][side] == pytest.approx(sum(mine) / SAMPLES, abs=1e-9)
        assert entry["difference"] == pytest.approx(entry["after_mean"] - entry["before_mean"], abs=1e-9)
    assert summary["rewards"]["brightness"]["before"] != summary["rewards"]["brightness"]["after"]
    (table,) = outputs["31"]["images"]
    with Image.open(server.base / "temp" / table.get("subfolder", "") / table["filename"]) as image:
        assert image.width > 200 and image.height > 60, image.size


def test_the_same_model_before_and_after_scores_identically(server):
    summary = json.loads(_run(server, _graph(after=["1", 0]))["30"]["text"][0])
    for entry in summary["rewards"].values():
        assert entry["before"] == entry["after"] and entry["difference"] == 0.0


def test_empty_prompts_is_a_node_error_naming_prompts(server):
    status, body = server.post_prompt(_graph(prompts=" \n\n  "))
    errors = body.get("node_errors", {}).get("30", {}).get("errors", [])
    assert status == 400 and errors, body
    assert any("prompts" in f"{e.get('extra_info', {}).get('input_name', '')} {e.get('details', '')}" for e in errors)


def test_a_reward_that_cannot_score_is_an_error_naming_its_input(server):
    graph = _graph()
    graph["21"]["inputs"]["reward"] = "digit_alignment"  # the prompts name no digit
    status, body = server.post_prompt(graph)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=300.0)
    (error,) = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert error["node_id"] == "30" and error["exception_type"].endswith("ProGRPOConfigError")
    assert error["exception_message"].startswith("reward_1: ") and "names no digit" in error["exception_message"]
