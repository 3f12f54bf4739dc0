"""Every shipped workflow, on a real server: each API-format file completes over HTTP on tiny models, and each
UI-format twin describes the same graph (node types, links, widget values in the editor's order)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from testkit.comfy_harness import REPO, requires_comfyui
from testkit.tiny_families import TEMPLATES
from testkit.tiny_stock_models import write_tiny_stock_models

pytestmark = [pytest.mark.slow, requires_comfyui]

WORKFLOWS = REPO / "workflows"
API_FILES = sorted(WORKFLOWS.glob("*.api.json"))
#: the real-model templates name real model files: test_families_server queues them on the tiny family files
QUEUED_FILES = [path for path in API_FILES if path.name.removesuffix(".api.json") not in TEMPLATES]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
PROMPT_FILE = "progrpo_prompts.txt"

#: the short setting each node type runs with here (the shipped values are for the tiny models already,
#: except whole training runs and evaluation grids, which are cut to seconds).
SHORT = {
    "ProGRPOTrainLoop": {"iterations": 2, "checkpoint_every": 1, "resume": False},
    "ProGRPOPromptGrid": {"samples_per_prompt": 2},
}


def _name(path: Path) -> str:
    return path.name.removesuffix(".api.json")


@pytest.fixture(scope="module")
def server(comfy_server):
    """The session server with every tiny model a shipped workflow names, and its prompt file."""
    write_tiny_stock_models(comfy_server.models)
    checkpoints = _tiny_checkpoints_writer()
    if checkpoints is not None:
        checkpoints(comfy_server.models)
    (comfy_server.base / "input").mkdir(exist_ok=True)
    (comfy_server.base / "input" / PROMPT_FILE).write_text("a photo of a red cat\na blue car on a street\n")
    yield comfy_server
    for path in comfy_server.models.glob("*/tiny_*.safetensors"):
        path.unlink()


def _tiny_checkpoints_writer():
    try:
        from testkit.tiny_checkpoints import write_tiny_checkpoints
    except ImportError:
        return None
    return write_tiny_checkpoints


def widget_names(info: dict) -> list[str]:
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


def test_every_api_workflow_has_a_ui_twin_and_a_note():
    assert {_name(path) for path in API_FILES} >= {
        "inspect_expanded_sampling", "train_lora_sd15", "embedded_digits_demo",
    }
    for path in API_FILES:
        assert path.with_name(f"{_name(path)}.json").is_file(), f"{path.name} has no UI-format twin"
        assert (WORKFLOWS / "notes" / f"{_name(path)}.md").is_file(), f"{path.name} has no note"


@pytest.mark.parametrize("path", API_FILES, ids=_name)
def test_ui_twin_describes_the_same_graph(comfy_server, path):
    ui = json.loads(path.with_name(f"{_name(path)}.json").read_text())
    api = json.loads(path.read_text())
    assert ui["version"] == 0.4
    notes = [node for node in ui["nodes"] if node["type"] == "Note"]
    assert notes and notes[0]["widgets_values"][0].strip()
    nodes = {str(node["id"]): node for node in ui["nodes"] if node["type"] != "Note"}
    assert {k: n["type"] for k, n in nodes.items()} == {k: n["class_type"] for k, n in api.items()}
    assert ui["last_node_id"] >= max(node["id"] for node in ui["nodes"])
    assert ui["last_link_id"] >= max((link[0] for link in ui["links"]), default=0)

    # links: [id, from_node, from_slot, to_node, to_slot, type] <-> API ["from", slot] on the named input
    ui_links = set()
    for link_id, source, source_slot, target, target_slot, kind in ui["links"]:
        target_input = nodes[str(target)]["inputs"][target_slot]
        assert target_input["link"] == link_id and target_input["type"] in (kind, "*")  # "*": any (PreviewAny)
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
        names = widget_names(info[node["type"]])
        assert len(names) == len(node["widgets_values"]), (node["type"], names)
        literal = {k: v for k, v in api[node_id]["inputs"].items() if not isinstance(v, list)}
        from_ui = {n: v for n, v in zip(names, node["widgets_values"], strict=True) if n != "<control_after_generate>"}
        assert from_ui == literal, node["type"]


def short_setting(prompt: dict, tag: str) -> dict:
    """``prompt`` cut to seconds, with run names and seeds of its own (no cache hits from other tests)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        inputs.update(SHORT.get(node["class_type"], {}))
        if "run_name" in inputs:
            inputs["run_name"] = f"{inputs['run_name']}_{tag}"
        for key in ("seed", "noise_seed"):
            if isinstance(inputs.get(key), int):
                inputs[key] += 1000
    return prompt


@pytest.mark.parametrize("path", QUEUED_FILES, ids=_name)
def test_api_workflow_completes_over_http(server, path):
    prompt = short_setting(json.loads(path.read_text()), "every_workflow")
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"]
    info = server.get("/object_info")
    output_nodes = [node_id for node_id, node in prompt.items() if info[node["class_type"]]["output_node"]]
    assert output_nodes and all(outputs.get(node_id) for node_id in output_nodes), (output_nodes, outputs.keys())
    for node_id, node in prompt.items():
        if node["class_type"] == "ProGRPOTrainLoop":
            run = server.base / "output" / "progrpo" / node["inputs"]["run_name"]
            assert len((run / "metrics.jsonl").read_text().splitlines()) == node["inputs"]["iterations"]
