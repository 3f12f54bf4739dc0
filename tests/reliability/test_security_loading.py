"""Loading policy, checked on the source (ast) and on real files: nothing untrusted is unpickled or run, and
nothing is fetched from the network.

* every ``torch.load`` passes ``weights_only=True`` (only the trainer's own checkpoint tensors use it);
* no ``eval`` / ``exec`` / ``compile`` calls, no ``pickle`` / ``marshal`` / ``yaml.load`` / ``torch.jit.load``;
* no network modules in progrpo/ and nodes/ (urllib.request, requests, http.client, socket, aiohttp,
  huggingface_hub...); scripts/ may talk to the local ComfyUI server only (127.0.0.1);
* every ``from_pretrained`` passes ``local_files_only=True``, and model weights also ``use_safetensors=True``;
* user files (reward heads, CLIP folders, LoRA files) load only as safetensors: a ``.pth`` / ``.pt`` /
  ``pytorch_model.bin`` is refused with a message saying how to convert it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from progrpo.errors import ProGRPOConfigError

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for folder in ("progrpo", "nodes", "scripts") for p in (REPO / folder).rglob("*.py"))
NETWORK_MODULES = ("urllib.request", "urllib3", "requests", "http.client", "socket", "aiohttp", "httpx",
                   "huggingface_hub", "ftplib", "websocket", "websockets")
#: scripts that drive a ComfyUI server on this machine (the demo, the UI-workflow generator).
LOCAL_SERVER_SCRIPTS = {"scripts/comfy_demo.py", "scripts/ui_workflow.py"}
#: from_pretrained on these loads text/config only (no weights), so use_safetensors does not apply.
NO_WEIGHTS = ("Tokenizer", "Processor", "Config", "Scheduler")


def _trees():
    for path in SOURCES:
        yield path.relative_to(REPO).as_posix(), ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else "<expr>"
    return None


def _calls():
    for name, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield name, node, _dotted(node.func)


def test_sources_were_found():
    names = {p.relative_to(REPO).as_posix() for p in SOURCES}
    assert {"progrpo/train/checkpoint.py", "nodes/train_nodes.py", "scripts/comfy_demo.py"} <= names
    assert len(SOURCES) > 40


def test_every_torch_load_is_weights_only():
    found = []
    for name, call, func in _calls():
        if func in ("torch.load", "load") and (func == "torch.load" or name.startswith("progrpo/train")):
            if func == "load" and not any(k.arg == "weights_only" for k in call.keywords):
                continue  # a local function called load (json, safetensors); torch.load is always qualified here
            found.append(name)
            assert _keyword(call, "weights_only") is True, f"{name}:{call.lineno}: torch.load without weights_only=True"
    assert found, "the trainer's checkpoint loader should be found (the check would be vacuous otherwise)"


def test_no_eval_exec_pickle_or_unsafe_deserialisers():
    forbidden_calls = {"eval", "exec", "compile", "__import__", "pickle.load", "pickle.loads", "marshal.loads",
                       "yaml.load", "yaml.unsafe_load", "torch.jit.load", "dill.load", "cloudpickle.load"}
    for name, call, func in _calls():
        assert func not in forbidden_calls, f"{name}:{call.lineno}: {func}() runs or unpickles untrusted input"
        if func in ("np.load", "numpy.load"):
            assert _keyword(call, "allow_pickle") in (None, False), f"{name}:{call.lineno}: np.load allow_pickle"
    for name, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for module in modules:
                    assert module.split(".")[0] not in {"pickle", "marshal", "dill", "cloudpickle", "shelve"}, (
                        f"{name}:{node.lineno}: imports {module}")


def test_no_network_access_outside_the_local_server_scripts():
    for name, tree in _trees():
        for node in ast.walk(tree):
            modules: list[str] = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            hits = [m for m in modules if any(m == n or m.startswith(n + ".") for n in NETWORK_MODULES)]
            if hits and name not in LOCAL_SERVER_SCRIPTS:
                pytest.fail(f"{name}:{node.lineno}: imports {hits} (no network access at run time)")
        for node in ast.walk(tree):  # download helpers called by name
            if isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] in {
                    "hf_hub_download", "snapshot_download", "urlretrieve", "urlopen", "load_state_dict_from_url",
                    "download_url_to_file"}:
                assert name in LOCAL_SERVER_SCRIPTS, f"{name}:{node.lineno}: downloads ({_dotted(node.func)})"
    for name in LOCAL_SERVER_SCRIPTS:  # those talk to 127.0.0.1 only: no other host in their URLs
        text = (REPO / name).read_text()
        for tree_node in ast.walk(ast.parse(text)):
            if isinstance(tree_node, ast.Constant) and isinstance(tree_node.value, str) and "://" in tree_node.value:
                assert "127.0.0.1" in tree_node.value or "localhost" in tree_node.value, (name, tree_node.value)


def test_every_from_pretrained_is_local_and_weights_are_safetensors():
    seen = 0
    for name, call, func in _calls():
        if not func.endswith(".from_pretrained"):
            continue
        seen += 1
        where = f"{name}:{call.lineno} {func}"
        assert _keyword(call, "local_files_only") is True, f"{where}: pass local_files_only=True (no downloads)"
        if not any(part in func for part in NO_WEIGHTS):
            assert _keyword(call, "use_safetensors") is True, f"{where}: pass use_safetensors=True (no pickles)"
    assert seen >= 5


# --- user files are safetensors only (in-process, real files) ----------------------------------------------


def test_pickled_aesthetic_head_is_refused_with_a_conversion_hint(tmp_path):
    from progrpo.rewards import build_reward
    from progrpo.rewards.tiny import save_tiny_aesthetic_head, save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    head = save_tiny_aesthetic_head(tmp_path / "head.safetensors", input_dim=16)
    from safetensors.torch import load_file

    torch.save(load_file(str(head)), tmp_path / "head.pth")
    with pytest.raises(ProGRPOConfigError, match=r"not a \.safetensors file.*save_file"):
        build_reward("aesthetic", path=clip, head=str(tmp_path / "head.pth"))
    assert build_reward("aesthetic", path=clip, head=str(head)) is not None  # the safetensors twin loads


def test_clip_folder_with_only_pickled_weights_is_refused(tmp_path):
    from progrpo.rewards import build_reward
    from progrpo.rewards.tiny import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    weights = clip / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), clip / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ProGRPOConfigError, match=r"only pickled weights.*safe_serialization"):
        build_reward("clip_score", path=clip)


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_pickled_lora_file_is_refused(tmp_path, suffix):
    from progrpo.lora.export import apply_comfyui_lora, read_lora_metadata

    path = tmp_path / f"lora{suffix}"
    torch.save({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, path)
    for call in (lambda: read_lora_metadata(path), lambda: apply_comfyui_lora(torch.nn.Linear(2, 2), path)):
        with pytest.raises(ProGRPOConfigError, match=r"not a \.safetensors file"):
            call()
