"""The shipped workflows in ComfyUI's real graph editor (comfyui-frontend-package, served by the test server),
driven in headless Chromium by ``browser/editor.mjs`` (playwright-core from npm, Debian's /usr/bin/chromium).

Every UI-format workflow loads with no missing node type and no widget the editor rejects, and converts
(``app.graphToPrompt``) into its API-format twin; the inspection workflow and the embedded demo (short
setting) are queued from the page, complete, and the page shows their images; every Pro-GRPO node
definition the page has carries tooltips and defaults its widgets take. Screenshots go to
``runs/test-artifacts/browser/`` (or ``$PROGRPO_TEST_ARTIFACTS/browser``).

The editor's first-run dialogs are turned off the way a user would, in the user's settings file.
``scripts/test.sh`` installs Chromium and playwright-core (``scripts/install_browser.sh``); without
them the tests skip outside CI and fail in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from testkit.comfy_harness import REPO, requires_comfyui
from testkit.tiny_stock_models import write_tiny_stock_models

pytestmark = [pytest.mark.slow, requires_comfyui]

BROWSER = Path(__file__).resolve().parent / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WORKFLOWS = REPO / "workflows"
UI_FILES = sorted(path for path in WORKFLOWS.glob("*.json") if not path.name.endswith(".api.json"))
QUEUED = {
    "inspect_expanded_sampling": {},
    "embedded_digits_demo": {"ProGRPOTrainLoop": {"iterations": 3, "run_name": "browser_demo", "resume": False},
                             "ProGRPOPromptGrid": {"samples_per_prompt": 2}},
}
#: queued workflows whose node of this type the page watches while it runs (live view)
WATCHED = {"embedded_digits_demo": "ProGRPOTrainLoop"}
#: the user's settings file (user/default/comfy.settings.json): no first-run template dialog, no minimap,
#: full detail at any zoom (screenshots of whole graphs are zoomed out).
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 1}


#: loader input -> models folder, for the files the real-model templates name
LOADER_FOLDERS = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models", "clip_name": "text_encoders",
                  "clip_name1": "text_encoders", "clip_name2": "text_encoders", "vae_name": "vae"}


def _template_model_files(models: Path) -> list[Path]:
    """Empty stand-ins for the model files the real-model templates name (the editor only lists names)."""
    paths = []
    for path in WORKFLOWS.glob("*.api.json"):
        for node in json.loads(path.read_text()).values():
            for name, folder in LOADER_FOLDERS.items():
                value = node["inputs"].get(name)
                if isinstance(value, str) and "." in value and not value.startswith("tiny_") \
                        and not (models / folder / value).exists():
                    paths.append(models / folder / value)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return paths


def _artifacts() -> Path:
    root = Path(os.environ.get("PROGRPO_TEST_ARTIFACTS", REPO / "runs" / "test-artifacts"))
    return root / "browser"


@pytest.fixture(scope="module")
def editor(comfy_server):
    """Runs editor.mjs once over every UI workflow; returns (result JSON, server)."""
    ready = Path(CHROMIUM).is_file() and (BROWSER / "node_modules" / "playwright-core").is_dir()
    if not ready:
        message = "Chromium or playwright-core is missing; run scripts/install_browser.sh (scripts/test.sh does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    write_tiny_stock_models(comfy_server.models)
    stand_ins = _template_model_files(comfy_server.models)
    try:
        from testkit.tiny_checkpoints import write_tiny_checkpoints

        write_tiny_checkpoints(comfy_server.models)
        settings = comfy_server.base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(SETTINGS))
        (comfy_server.base / "input").mkdir(exist_ok=True)
        (comfy_server.base / "input" / "progrpo_prompts.txt").write_text("a photo of a red cat\n")
        out = _artifacts()
        shutil.rmtree(out, ignore_errors=True)
        job = {
            "url": comfy_server.url, "out": str(out), "chromium": CHROMIUM,
            "workflows": [
                {"name": path.stem, "ui": json.loads(path.read_text()), "queue": path.stem in QUEUED,
                 "short": QUEUED.get(path.stem, {}), "watch": WATCHED.get(path.stem), "timeout_ms": 300000}
                for path in UI_FILES
            ],
        }
        job_file = out.parent / "browser-job.json"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(job))
        run = subprocess.run(["node", str(BROWSER / "editor.mjs"), str(job_file)], cwd=BROWSER, capture_output=True,
                             text=True, timeout=900, check=False)
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout)
        assert "error" not in result, result["error"]
        yield result, comfy_server
    finally:
        for path in [*comfy_server.models.rglob("tiny_*.safetensors"), *stand_ins]:
            path.unlink(missing_ok=True)


def test_every_ui_workflow_loads_without_missing_nodes_or_red_widgets(editor):
    result, _ = editor
    assert set(result["workflows"]) == {path.stem for path in UI_FILES}
    for name, seen in result["workflows"].items():
        assert seen["missing"] == [], (name, seen["missing"])
        assert seen["invalid"] == [], (name, seen["invalid"])
        assert not [text for text in seen["dialogs"] if "missing" in text.lower()], (name, seen["dialogs"])


def _links(prompt: dict) -> set[tuple[str, str, str, int]]:
    return {(node_id, name, str(value[0]), int(value[1])) for node_id, node in prompt.items()
            for name, value in node["inputs"].items() if isinstance(value, list)}


def test_editor_converts_each_ui_workflow_into_its_api_twin(editor):
    result, _ = editor
    for name, seen in result["workflows"].items():
        api = json.loads((WORKFLOWS / f"{name}.api.json").read_text())
        prompt = seen["prompt"]
        assert {k: v["class_type"] for k, v in prompt.items()} == {k: v["class_type"] for k, v in api.items()}, name
        assert _links(prompt) == _links(api), name
        if name not in QUEUED:  # queued ones were shortened in the page before conversion ran again
            for node_id, node in api.items():
                literal = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
                converted = {k: v for k, v in prompt[node_id]["inputs"].items() if not isinstance(v, list)}
                assert converted == literal, (name, node["class_type"])


def test_demo_train_loop_shows_its_live_view_in_the_page(editor):
    """While the demo trains (3 iterations) the page receives a new preview image for the Train Loop node every
    iteration and its progress text with the ETA; screenshots of the page at the first previews are kept."""
    result, _ = editor
    run = result["workflows"]["embedded_digits_demo"]["run"]
    assert run["status"] == "success", run
    previews = {(p["size"], p["hash"]) for p in run["previews"]}
    assert len(run["previews"]) >= 3 and len(previews) >= 3, run["previews"]  # changed at least twice
    assert run["texts"] and all("ETA" in text for text in run["texts"]), run["texts"]
    assert run["texts"][-1].startswith("iteration 3/3"), run["texts"]
    live_shots = [shot for shot in run["shots"] if "_live_" in shot]
    assert len(live_shots) >= 2 and all(Path(shot).is_file() for shot in run["shots"]), run["shots"]
    assert any(shot.endswith("_evaluation_table.png") for shot in run["shots"]), run["shots"]


def test_demo_curve_has_a_panel_per_moving_quantity_and_none_flat(editor):
    """The demo's curve image: the reward panel plus one per quantity that moved (progrpo.train.curves), no
    panel of a quantity that stayed ~0."""
    from PIL import Image

    from progrpo.train.curves import PANELS, _series

    _, server = editor
    records = [json.loads(line) for line in
               (server.base / "output" / "progrpo" / "browser_demo" / "metrics.jsonl").read_text().splitlines()]
    moving = [title for title, _, keys in PANELS if _series(records, keys)]
    flat = [title for title, _, keys in PANELS if any(k in records[0] for k in keys) and not _series(records, keys)]
    (curve,) = sorted((server.base / "output" / "progrpo_demo").glob("reward_curve_*.png"))[-1:]
    with Image.open(curve) as image:
        assert image.width == 330 * (1 + len(moving)), (image.size, moving, flat)
    assert "within-group std" in moving and "grad norm" in moving, moving


def test_inspection_and_demo_run_from_the_page_and_show_their_images(editor):
    result, _ = editor
    for name in QUEUED:
        seen = result["workflows"][name]
        assert seen["run"]["status"] == "success", (name, seen["run"])
        api = json.loads((WORKFLOWS / f"{name}.api.json").read_text())
        image_nodes = {k for k, v in api.items() if v["class_type"] in ("PreviewImage", "SaveImage")}
        shown = seen["run"]["shown"]
        assert image_nodes and image_nodes <= set(shown), (name, image_nodes, shown)
        assert all(shown[node]["loaded"] >= 1 for node in image_nodes), (name, shown)
    # the demo's grids: one per prompt, before and after
    demo = result["workflows"]["embedded_digits_demo"]["run"]["shown"]
    assert demo["9"]["images"] == demo["10"]["images"] == 10


def test_a_screenshot_per_workflow_is_saved(editor):
    from PIL import Image

    result, _ = editor
    for name, seen in result["workflows"].items():
        path = Path(seen["screenshot"])
        assert path.is_file(), name
        with Image.open(path) as image:
            colours = image.convert("L").getextrema()
        assert image.size == (1600, 1000) and colours[1] - colours[0] > 100, (name, colours)  # not blank


def test_every_pack_node_shows_tooltips_and_sensible_defaults_in_the_editor(editor):
    result, server = editor
    defs = {entry["name"]: entry for entry in result["node_defs"]}
    info = server.get("/object_info")
    assert set(defs) == {name for name, entry in info.items()
                         if entry.get("python_module", "").endswith("comfyui-progrpo")}
    assert len(defs) >= 14
    compared = 0
    for name, entry in defs.items():
        assert name.startswith("ProGRPO") and entry["category"].startswith("Pro-GRPO/"), name
        assert entry["display_name"].startswith("Pro-GRPO") and entry["description"], name
        assert all(entry["output_tooltips"]), name
        for section in ("required", "optional"):
            for input_name, spec in entry["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip in the editor"
                if input_name in entry["widgets"]:
                    expected = options.get("default", spec[0][0] if isinstance(spec[0], list) else None)
                    if "default" in options or isinstance(spec[0], list):
                        assert entry["widgets"][input_name] == expected, (name, input_name)
                        compared += 1
                    for bound in ("min", "max"):
                        if bound in options and isinstance(entry["widgets"][input_name], (int, float)):
                            value = entry["widgets"][input_name]
                            assert (value >= options["min"]) if bound == "min" else (value <= options["max"])
    assert compared >= 50, f"only {compared} widget defaults were compared"
