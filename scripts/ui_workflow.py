"""Write the UI-format twin of an API-format workflow (what the graph editor loads), with a Note node.

    python scripts/ui_workflow.py workflows/NAME.api.json [...] --server http://127.0.0.1:8188

For every ``workflows/NAME.api.json`` this writes ``workflows/NAME.json``: the same nodes, links and
widget values, laid out left to right by graph depth, plus a Note node holding
``workflows/notes/NAME.md``. Widget values are stored by position, in the order the server's
``/object_info`` lists the inputs (a seed with control_after_generate adds "fixed" after it), so the
script asks a running ComfyUI with this extension (``scripts/start_comfyui.sh``) for the node
definitions. ``tests/in_comfyui`` and the browser tests check that both twins describe the same graph.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
COLUMN_WIDTH, NODE_WIDTH, GAP = 420, 360, 40


def is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def ordered_inputs(info: dict) -> list[tuple[str, list]]:
    return [(name, spec) for section in ("required", "optional") for name, spec in info["input"].get(section, {}).items()]


def depth_of(api: dict) -> dict[str, int]:
    """Longest path from a source node, per node id (the layout column)."""
    depth: dict[str, int] = {}

    def visit(node_id: str, seen: tuple[str, ...] = ()) -> int:
        if node_id in depth:
            return depth[node_id]
        if node_id in seen:
            raise ValueError(f"the workflow has a cycle through node {node_id}")
        parents = [value[0] for value in api[node_id]["inputs"].values() if isinstance(value, list)]
        depth[node_id] = 1 + max((visit(parent, (*seen, node_id)) for parent in parents), default=-1)
        return depth[node_id]

    for node_id in api:
        visit(node_id)
    return depth


def to_ui(api: dict, object_info: dict, note: str, name: str) -> dict:
    ids = sorted(api, key=int)
    depth = depth_of(api)
    links, ui_nodes = [], []
    outputs: dict[str, list[dict]] = {}
    for node_id in ids:
        info = object_info.get(api[node_id]["class_type"])
        if info is None:
            raise KeyError(f"node type {api[node_id]['class_type']!r} (node {node_id}) is not on the server")
        outputs[node_id] = [
            {"name": name, "type": kind, "links": [], "slot_index": slot}
            for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"], strict=True))
        ]
    rows: dict[int, int] = defaultdict(int)
    for order, node_id in enumerate(ids):
        node = api[node_id]
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec in ordered_inputs(info):
            value = node["inputs"].get(name)
            if is_widget(spec):
                if isinstance(value, list):
                    raise ValueError(f"node {node_id}: widget input {name!r} is linked; give it a literal value")
                widgets.append(value if name in node["inputs"] else spec[1].get("default") if len(spec) > 1 else None)
                if len(spec) > 1 and spec[1].get("control_after_generate"):
                    widgets.append("fixed")
                continue
            link = None
            if isinstance(value, list):
                link = len(links) + 1
                source, slot = str(value[0]), int(value[1])
                links.append([link, int(source), slot, int(node_id), len(inputs), outputs[source][slot]["type"]])
                outputs[source][slot]["links"].append(link)
            inputs.append({"name": name, "type": spec[0], "link": link})
        column = depth[node_id]
        height = 46 + 24 * (len(inputs) + len(outputs[node_id])) + 26 * len(widgets)
        ui_nodes.append({
            "id": int(node_id), "type": node["class_type"],
            "pos": [40 + column * COLUMN_WIDTH, 60 + rows[column]], "size": [NODE_WIDTH, height],
            "flags": {}, "order": order, "mode": 0,
            "title": node.get("_meta", {}).get("title", info.get("display_name", node["class_type"])),
            "inputs": inputs, "outputs": outputs[node_id],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        })
        rows[column] += height + GAP
    note_id = max(int(node_id) for node_id in ids) + 1
    ui_nodes.append({
        "id": note_id, "type": "Note", "pos": [40, 60 + rows[0]], "size": [NODE_WIDTH, 320], "flags": {},
        "order": len(ids), "mode": 0, "title": "About this workflow", "inputs": [], "outputs": [],
        "properties": {}, "widgets_values": [note.strip()],
    })
    return {
        # The editor's schema wants a UUID string; derived from the name, so regenerating changes nothing.
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-progrpo/workflows/{name}")), "revision": 0, "last_node_id": note_id, "last_link_id": len(links), "nodes": ui_nodes,
        "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [0, 0]}},
        "version": 0.4,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflows", nargs="+", type=Path, help="API-format workflows (NAME.api.json)")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="a running ComfyUI with this extension")
    args = parser.parse_args(argv)
    with urllib.request.urlopen(f"{args.server}/object_info", timeout=60) as response:
        object_info = json.load(response)
    for path in args.workflows:
        if not path.name.endswith(".api.json"):
            parser.error(f"{path}: expected an API-format file named NAME.api.json")
        name = path.name[: -len(".api.json")]
        note_path = path.parent / "notes" / f"{name}.md"
        if not note_path.is_file():
            parser.error(f"{note_path} is missing; write the workflow's Note text there")
        ui = to_ui(json.loads(path.read_text()), object_info, note_path.read_text(encoding="utf-8"), name)
        target = path.with_name(f"{name}.json")
        target.write_text(json.dumps(ui, indent=1) + "\n", encoding="utf-8")
        sys.stdout.write(f"wrote {target}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
