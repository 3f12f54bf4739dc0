"""The Pro-GRPO nodes in a real ComfyUI server: listing, the shipped inspection workflow, node errors."""

from __future__ import annotations

import copy
import json

import pytest

from testkit.comfy_harness import REPO, requires_comfyui

pytestmark = [pytest.mark.slow, requires_comfyui]

NEW_NODES = {
    "ProGRPOExpandedSampler": "Pro-GRPO/sampling",
    "ProGRPOSampler": "Pro-GRPO/sampling",
    "ProGRPOOVFFilter": "Pro-GRPO/sampling",
    "ProGRPORewardLoader": "Pro-GRPO/rewards",
    "ProGRPORewardCombine": "Pro-GRPO/rewards",
    "ProGRPORewardScore": "Pro-GRPO/rewards",
    "ProGRPOPruningFunnel": "Pro-GRPO/plots",
    "ProGRPOClusteringHistogram": "Pro-GRPO/plots",
    "ProGRPOEmbeddedModelLoader": "Pro-GRPO/loaders",
    "ProGRPOPromptGrid": "Pro-GRPO/evaluation",
    "ProGRPOEvaluation": "Pro-GRPO/evaluation",
}
WORKFLOW = REPO / "workflows" / "inspect_expanded_sampling.api.json"


@pytest.fixture(scope="module")
def server(tiny_models_server):
    return tiny_models_server


def _workflow() -> dict:
    return json.loads(WORKFLOW.read_text())


def _run(server, prompt: dict, timeout: float = 300.0) -> dict:
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    return server.wait_history(body["prompt_id"], timeout=timeout)


def _execution_error(entry: dict) -> dict:
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return data
    raise AssertionError(f"no execution_error in {entry['status']}")


def test_every_node_is_listed_with_category_and_input_tooltips(comfy_server):
    info = comfy_server.get("/object_info")
    ours = {name for name, entry in info.items() if entry.get("python_module", "").endswith("comfyui-progrpo")}
    assert ours >= set(NEW_NODES) | {"ProGRPOTrainLoop", "ProGRPOTrainStep", "ProGRPOSaveLoRA", "ProGRPOPruneSchedule"}
    for node in sorted(ours):
        entry = info[node]
        assert node.startswith("ProGRPO") and entry["category"].startswith("Pro-GRPO/"), node
        assert entry["category"] == NEW_NODES.get(node, entry["category"])
        assert entry["display_name"].startswith("Pro-GRPO")
        inputs = {**entry["input"].get("required", {}), **entry["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{node}.{name} has no tooltip"
        assert all(entry["output_tooltips"]), node


def test_inspection_workflow_runs_and_previews_images(server):
    prompt = _workflow()
    prompt["9"]["inputs"]["seed"] += 7  # not the graph another test queued: ComfyUI would serve it from its cache
    entry = _run(server, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    survivors = entry["outputs"]["11"]["images"]
    funnel = entry["outputs"]["13"]["images"]
    assert len(survivors) == 2  # the schedule's final keep "3:2", one prompt
    assert len(funnel) == 1


def test_schedule_larger_than_the_group_is_a_node_error_naming_the_input(server):
    prompt = _workflow()
    prompt["9"]["inputs"]["group_size"] = 3  # schedule keeps 4 first
    entry = _run(server, prompt)
    error = _execution_error(entry)
    assert error["node_type"] == "ProGRPOExpandedSampler"
    assert error["exception_message"].startswith("prune_schedule:")
    assert "group_size" in error["exception_message"]


def test_empty_latent_of_another_format_is_taken_as_ksampler_takes_it(server):
    """An all-zero 16-channel latent on an SD1.x model: converted to 4 channels, as KSampler converts it."""
    prompt = _workflow()
    prompt["6"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "converted"}}
    entry = _run(server, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["outputs"]["20"]["latents"]


def test_video_latent_on_an_image_model_is_a_node_error_naming_latent(server):
    prompt = _workflow()
    prompt["6"] = {"class_type": "EmptyHunyuanLatentVideo",
                   "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1}}
    entry = _run(server, prompt)
    error = _execution_error(entry)
    assert error["exception_message"].startswith("latent:")
    assert "4 latent channels" in error["exception_message"]


def test_missing_reward_file_is_rejected_naming_the_path_and_folder(server):
    prompt = _workflow()
    prompt["8"]["inputs"].update(reward="clip_score", model="no_such_clip")
    status, body = server.post_prompt(prompt)
    assert status == 400, body
    # ComfyUI reports a validate_inputs failure once per validated input, as "<input> - <message>".
    by_input = {error["extra_info"]["input_name"]: error["details"] for error in body["node_errors"]["8"]["errors"]}
    details = by_input["model"]
    assert details.startswith("model - model: 'no_such_clip' was not found in the rewards folder")
    assert str(server.models / "rewards") in details


def test_ovf_k_below_two_is_rejected_naming_k(server):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 4, "color": 0}},
        "2": {"class_type": "ProGRPORewardLoader",
              "inputs": {"reward": "brightness", "model": "(none)", "aesthetic_head": "(none)", "weight": 1.0}},
        "3": {"class_type": "ProGRPORewardScore", "inputs": {"images": ["1", 0], "reward": ["2", 0], "prompts": ""}},
        "4": {"class_type": "ProGRPOOVFFilter",
              "inputs": {"scores": ["3", 0], "k": 1, "group_size": 4, "images": ["1", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    status, body = server.post_prompt(prompt)
    assert status == 400, body
    by_input = {error["extra_info"]["input_name"]: error["details"] for error in body["node_errors"]["4"]["errors"]}
    assert by_input["k"].startswith("k - k: k=1") and "at least 2" in by_input["k"]
    good = copy.deepcopy(prompt)
    good["4"]["inputs"]["k"] = 2
    entry = _run(server, good)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(entry["outputs"]["5"]["images"]) == 2


def test_policy_sampler_runs_in_stock_sampler_custom_advanced(server):
    prompt = {key: value for key, value in _workflow().items() if key in {"1", "2", "3", "4", "5", "6"}}
    prompt.update({
        "20": {"class_type": "ProGRPOSampler", "inputs": {"dynamics": "ddim", "noise_level": -1.0}},
        "21": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 3,
                                                          "denoise": 1.0}},
        "22": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                     "cfg": 3.0}},
        "23": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        "24": {"class_type": "SamplerCustomAdvanced",
               "inputs": {"noise": ["23", 0], "guider": ["22", 0], "sampler": ["20", 0], "sigmas": ["21", 0],
                          "latent_image": ["6", 0]}},
        "25": {"class_type": "VAEDecode", "inputs": {"samples": ["24", 0], "vae": ["5", 0]}},
        "26": {"class_type": "PreviewImage", "inputs": {"images": ["25", 0]}},
    })
    entry = _run(server, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(entry["outputs"]["26"]["images"]) == 1
