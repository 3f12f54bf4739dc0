"""The Pro-GRPO nodes in a real ComfyUI server: listing, the shipped inspection workflow, node errors."""

from __future__ import annotations

import copy
import json

import pytest
from comfy_harness import REPO, requires_comfyui
from tiny_stock_models import write_tiny_stock_models

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
}
WORKFLOW = REPO / "workflows" / "inspect_expanded_sampling.api.json"


@pytest.fixture(scope="module")
def server(comfy_server):
    """The session server with the tiny stock-loadable models in its models folder."""
    write_tiny_stock_models(comfy_server.models)
    yield comfy_server
    # pytest keeps the last few temp dirs: do not leave ~300 MB of random weights in each.
    for path in comfy_server.models.glob("*/tiny_*.safetensors"):
        path.unlink()


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
    for node, category in NEW_NODES.items():
        assert node in info, f"{node} missing from /object_info"
        entry = info[node]
        assert entry["category"] == category
        assert entry["display_name"].startswith("Pro-GRPO")
        inputs = {**entry["input"].get("required", {}), **entry["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{node}.{name} has no tooltip"
        assert all(entry["output_tooltips"]), node


def test_inspection_workflow_runs_and_previews_images(server):
    entry = _run(server, _workflow())
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


def test_wrong_latent_channels_is_a_node_error_naming_latent(server):
    prompt = _workflow()
    prompt["6"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
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


UI_WORKFLOW = REPO / "workflows" / "inspect_expanded_sampling.json"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _widget_names(info: dict) -> list[str]:
    """The node's widget inputs in the front end's order; a seed's control_after_generate adds one value."""
    names = []
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            kind = spec[0]
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                names.append(name)
                if len(spec) > 1 and spec[1].get("control_after_generate"):
                    names.append("<control_after_generate>")
    return names


def test_ui_and_api_workflows_describe_the_same_graph(comfy_server):
    ui, api = json.loads(UI_WORKFLOW.read_text()), _workflow()
    assert ui["version"] == 0.4
    nodes = {str(node["id"]): node for node in ui["nodes"] if node["type"] != "Note"}
    assert any(node["type"] == "Note" for node in ui["nodes"])
    assert {k: n["type"] for k, n in nodes.items()} == {k: n["class_type"] for k, n in api.items()}
    assert ui["last_node_id"] >= max(node["id"] for node in ui["nodes"])
    assert ui["last_link_id"] >= max(link[0] for link in ui["links"])

    # links: [id, from_node, from_slot, to_node, to_slot, type] <-> API ["from", slot] on the named input
    ui_links = set()
    for link_id, source, source_slot, target, target_slot, kind in ui["links"]:
        target_input = nodes[str(target)]["inputs"][target_slot]
        assert target_input["link"] == link_id and target_input["type"] == kind
        assert link_id in nodes[str(source)]["outputs"][source_slot]["links"]
        ui_links.add((str(target), target_input["name"], str(source), source_slot))
    api_links = {
        (node_id, name, value[0], value[1])
        for node_id, node in api.items() for name, value in node["inputs"].items() if isinstance(value, list)
    }
    assert ui_links == api_links

    # widget values: in the front end's order (from /object_info), equal to the API's literal inputs
    info = comfy_server.get("/object_info")
    for node_id, node in nodes.items():
        names = _widget_names(info[node["type"]])
        assert len(names) == len(node["widgets_values"]), (node["type"], names)
        literal = {k: v for k, v in api[node_id]["inputs"].items() if not isinstance(v, list)}
        from_ui = {n: v for n, v in zip(names, node["widgets_values"], strict=True) if n != "<control_after_generate>"}
        assert from_ui == literal, node["type"]


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
