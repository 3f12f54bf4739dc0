"""The layering rule: progrpo/ never imports ComfyUI, and the repo root imports without it (fast, no ComfyUI)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: top-level modules that exist only inside a ComfyUI installation.
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server",
                 "execution", "node_helpers", "latent_preview"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_progrpo_never_imports_comfyui():
    offenders = {
        str(path.relative_to(REPO)): sorted(_imported_roots(path) & (COMFY_MODULES | {"nodes"}))
        for path in (REPO / "progrpo").rglob("*.py")
    }
    assert not {path: names for path, names in offenders.items() if names}


def test_repo_root_imports_without_comfyui_and_is_a_v3_pack():
    # A fresh interpreter: other tests of this session may already have imported ComfyUI.
    script = f"""
import importlib.util, inspect, sys
spec = importlib.util.spec_from_file_location("progrpo_pack", {str(REPO / "__init__.py")!r},
                                              submodule_search_locations=[{str(REPO)!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["progrpo_pack"] = pack
spec.loader.exec_module(pack)
assert inspect.iscoroutinefunction(pack.comfy_entrypoint)
assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # ComfyUI would treat the pack as V1 and skip the entrypoint
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {sorted(COMFY_MODULES)!r})
assert not loaded, loaded
assert "progrpo_pack.nodes" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", check=False)
    assert result.returncode == 0, result.stderr
