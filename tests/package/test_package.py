"""The extension as the Comfy Registry and a user's ComfyUI see it.

* requirements.txt is pyproject's run-time dependencies, with no developer tool in it;
* ``comfy node validate`` passes and ``comfy node pack`` builds an archive with the extension and
  without the developers' tree (.comfyignore);
* a fresh venv with ComfyUI's requirements plus requirements.txt alone runs the embedded demo.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from testkit.runtime_venv import create_runtime_venv, requirement_lines

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
REPO = Path(__file__).resolve().parents[2]
COMFYUI = REPO / ".comfyui" / "ComfyUI"
COMFY = Path(sys.executable).parent / "comfy"
DEV_TOOLS = {"comfy-cli", "pytest", "pytest-xdist", "ruff", "scipy", "scikit-learn", "hypothesis"}

requires_comfyui = pytest.mark.skipif(
    not (COMFYUI / "main.py").is_file(), reason=f"ComfyUI is not installed in {COMFYUI}; run scripts/install_comfyui.sh"
)


def _comfy_env(home: Path) -> dict[str, str]:
    # comfy-cli keeps its config under HOME and asks for tracking consent: isolate it, no telemetry.
    return {**os.environ, "HOME": str(home), "DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1"}


def test_requirements_txt_is_pyprojects_runtime_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = requirement_lines(REPO / "requirements.txt")
    assert requirements == project["dependencies"]
    names = {line.split(">")[0].split("=")[0].split("<")[0].strip().lower() for line in requirements}
    assert not names & DEV_TOOLS, "developer tools belong in [project.optional-dependencies]"
    assert "comfy-cli>=1.3" in project["optional-dependencies"]["test"]


def _copy_of_the_tree(destination: Path) -> Path:
    """The repository's tracked and new (not ignored) files in a fresh git repository: pack writes node.zip in
    its working directory and archives what git lists, so it must not run in the shared checkout."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    subprocess.run(["git", "add", "-A"], cwd=destination, check=True)
    return destination


@pytest.mark.slow
def test_comfy_node_validate_and_pack_publish_the_extension_only(tmp_path):
    tree = _copy_of_the_tree(tmp_path / "tree")
    for command in (["node", "validate"], ["node", "pack"]):
        result = subprocess.run([str(COMFY), "--skip-prompt", *command], cwd=tree, env=_comfy_env(tmp_path),
                                capture_output=True, text=True, timeout=180, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    with zipfile.ZipFile(tree / "node.zip") as archive:
        names = archive.namelist()
    for kept in ("__init__.py", "requirements.txt", "pyproject.toml", "LICENSE", "README.md"):
        assert kept in names
    for folder in ("nodes/", "progrpo/", "workflows/", "progrpo/embedded/"):
        assert any(name.startswith(folder) for name in names), folder
    for left_out in ("tests/", "bench/", "scripts/", "runs/", ".venv/", ".comfyui/", ".github/"):
        assert not [name for name in names if name.startswith(left_out)], left_out


def _bare_env(**extra: str) -> dict[str, str]:
    """This process's environment without PYTHONPATH: the run-time venv must find nothing outside itself."""
    return {**{key: value for key, value in os.environ.items() if key != "PYTHONPATH"}, **extra}


def _start_server(python: Path, base: Path) -> tuple[str, int]:
    """ComfyUI on ``python`` (scripts/start_comfyui.sh, COMFYUI_PYTHON); its URL and pid."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(["bash", str(REPO / "scripts" / "start_comfyui.sh"), "--port", str(port),
                             "--base-directory", str(base)], capture_output=True, text=True, timeout=300, check=False,
                            env=_bare_env(COMFYUI_PYTHON=str(python), COMFYUI_START_TIMEOUT="240"))
    assert result.returncode == 0, result.stdout + result.stderr
    return f"http://127.0.0.1:{port}", int((base / f"comfyui-{port}.pid").read_text())


def _stop(pid: int) -> None:
    """SIGTERM (ComfyUI exits cleanly on it), then wait until the process is gone."""
    os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)


def _run_prompt(url: str, prompt: dict, timeout: float) -> dict:
    """POST the prompt and wait for its history entry."""
    request = urllib.request.Request(url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        prompt_id = json.loads(response.read())["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=30) as response:
            entry = json.loads(response.read()).get(prompt_id)
        status = (entry or {}).get("status", {})
        if status.get("completed") or status.get("status_str") == "error":
            return entry
        time.sleep(0.2)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")


def _short_demo() -> dict:
    """The embedded demo's API workflow, made short: one fresh iteration on one prompt per group, grids and
    evaluation of two prompts with one sample each (node ids and input names as shipped)."""
    prompt = json.loads((REPO / "workflows" / "embedded_digits_demo.api.json").read_text())
    prompt["4"]["inputs"].update(iterations=1, resume=False, run_name="runtime_venv_demo", prompts_per_iteration=1)
    for node in ("7", "8", "12"):
        inputs = prompt[node]["inputs"]
        inputs.update(samples_per_prompt=1, prompts="\n".join(inputs["prompts"].splitlines()[:2]))
    return prompt


@pytest.mark.slow
@requires_comfyui
def test_a_venv_with_only_the_runtime_requirements_runs_the_embedded_demo(tmp_path):
    python = create_runtime_venv(tmp_path / "venv", [COMFYUI / "requirements.txt", REPO / "requirements.txt"],
                                 extra=["requests"])  # ComfyUI's server.py imports requests; its file omits it
    for leaked in ("pytest", "comfy_cli", "sklearn", "progrpo"):  # dev tools, and the editable install
        probe = subprocess.run([str(python), "-c", f"import {leaked}"], cwd=tmp_path, env=_bare_env(),
                               capture_output=True, check=False)
        assert probe.returncode != 0, f"{leaked} is importable in the run-time venv"
    # every progrpo module imports there (the demo below only reaches the embedded model's path)
    walk = "import importlib, pkgutil, progrpo; [importlib.import_module(m.name) for m in pkgutil.walk_packages(" \
           "progrpo.__path__, 'progrpo.')]"
    modules = subprocess.run([str(python), "-c", walk], cwd=tmp_path, env=_bare_env(PYTHONPATH=str(REPO)),
                             capture_output=True, text=True, check=False)
    assert modules.returncode == 0, modules.stderr[-3000:]
    url, pid = _start_server(python, tmp_path / "base")
    try:
        entry = _run_prompt(url, _short_demo(), timeout=400)
    finally:
        _stop(pid)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
    assert entry["outputs"]["13"]["images"]  # the evaluation table, after training
    assert any((tmp_path / "base").rglob("progrpo_digits_demo*.safetensors"))
