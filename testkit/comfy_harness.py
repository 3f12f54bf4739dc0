"""The installed ComfyUI for tests and benchmarks: in-process imports, a real server, the test node pack.

ComfyUI is installed by ``scripts/install_comfyui.sh`` into ``.comfyui/ComfyUI`` (``scripts/test.sh``
runs it first). This module never imports ComfyUI at import time, so collection works without it.
:func:`import_comfy` is the one place that puts ComfyUI's folder on ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from scripts.comfy_demo import stop_server

REPO = Path(__file__).resolve().parents[1]
COMFYUI = REPO / ".comfyui" / "ComfyUI"
PACK_NAME = "comfyui-progrpo"
#: the test-only node pack (fault injection, tiny families); link it with ``ComfyServer.start(extra_custom_nodes=...)``
TEST_PACK = Path(__file__).resolve().parent / "comfy_test_pack"

requires_comfyui = pytest.mark.skipif(
    not (COMFYUI / "main.py").is_file(),
    reason=f"ComfyUI is not installed in {COMFYUI}; run scripts/install_comfyui.sh (scripts/test.sh does)",
)


# --- in-process ComfyUI -------------------------------------------------------------------------

def import_comfy(cpu: bool = True) -> None:
    """Make ``comfy.*`` importable in this process, on the CPU unless ``cpu=False`` (idempotent).

    ComfyUI's folder goes *first* on sys.path: it has a top-level module ``nodes`` (and ``utils``)
    that must win over this repo's ``nodes/`` package, which pytest's ``pythonpath`` and ``python -m``
    put on the path. ``args.cpu`` must be set before ``comfy.model_management`` is imported, or it
    probes for CUDA (which ``cpu=False`` wants: bench/gpu_check.py).
    """
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    if cpu:
        from comfy.cli_args import args

        args.cpu = True
    import comfy.model_management  # noqa: F401  (initialises the device, with args.cpu when asked)


def load_extension_nodes() -> ModuleType:
    """This repo's ``nodes/`` package, imported under the alias ``progrpo_comfy_nodes``."""
    import_comfy()
    name = "progrpo_comfy_nodes"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, REPO / "nodes" / "__init__.py", submodule_search_locations=[str(REPO / "nodes")]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def comfy_unet_config(config: Any) -> dict[str, Any]:
    """ComfyUI ``UNetModel`` config of a diffusers ``UNet2DConditionModel`` config (the diffusers -> ComfyUI UNet key and config mapping).

    Raises ValueError for what ComfyUI's UNet cannot express (non-integer channel multiples,
    per-level head counts that are neither constant in count nor in width, GroupNorm != 32).
    """
    channels = list(config.block_out_channels)
    levels = len(channels)
    if any(c % channels[0] for c in channels) or config.norm_num_groups != 32:
        raise ValueError("ComfyUI's UNet needs channel multiples of the first level and GroupNorm(32)")

    def per_level(value: Any) -> list[int]:
        return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * levels

    res_blocks = per_level(config.layers_per_block)
    layers = per_level(config.transformer_layers_per_block)
    heads = per_level(config.num_attention_heads or config.attention_head_dim)  # diffusers' legacy naming
    up_types = list(reversed(config.up_block_types))
    depth, depth_output = [], []
    for level in range(levels):
        depth += [layers[level] if "CrossAttn" in config.down_block_types[level] else 0] * res_blocks[level]
        depth_output += [layers[level] if "CrossAttn" in up_types[level] else 0] * (res_blocks[level] + 1)
    if len(set(heads)) == 1:
        num_heads, head_channels = heads[0], -1
    elif len({c // h for c, h in zip(channels, heads, strict=True)}) == 1:
        num_heads, head_channels = -1, channels[0] // heads[0]
    else:
        raise ValueError(f"per-level heads {heads} on channels {channels} are not expressible in ComfyUI's UNet")
    return dict(
        image_size=32, in_channels=config.in_channels, out_channels=config.out_channels,
        model_channels=channels[0], num_res_blocks=res_blocks, channel_mult=[c // channels[0] for c in channels],
        transformer_depth=depth, transformer_depth_output=depth_output, transformer_depth_middle=layers[-1],
        context_dim=config.cross_attention_dim, use_spatial_transformer=True,
        use_linear_in_transformer=bool(config.use_linear_projection), adm_in_channels=None,
        use_temporal_attention=False, use_temporal_resblock=False, legacy=False, use_checkpoint=False,
        num_heads=num_heads, num_head_channels=head_channels,
    )


def comfy_model_from_diffusers_unet(unet: torch.nn.Module, model_type: str = "epsilon") -> Any:
    """A ComfyUI MODEL (ModelPatcher, CPU, fp32) with exactly the weights of a diffusers UNet.

    ``model_type`` (diffusers' names): "epsilon" or "v_prediction" (SD1.5 sampling: scaled-linear betas 0.00085..0.012),
    or "flow" (rectified flow, ComfyUI's ModelSamplingDiscreteFlow with shift 1, t = 1000 sigma).
    """
    import_comfy()
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    unet_config = comfy_unet_config(unet.config)
    config = comfy.supported_models.SD15(unet_config)
    config.unet_config.update(num_heads=unet_config["num_heads"], num_head_channels=unet_config["num_head_channels"])
    config.set_inference_dtype(torch.float32, None)
    kinds = {
        "epsilon": comfy.model_base.ModelType.EPS,
        "v_prediction": comfy.model_base.ModelType.V_PREDICTION,
        "flow": comfy.model_base.ModelType.FLOW,
    }
    if model_type == "flow":
        config.sampling_settings = {"shift": 1.0, "multiplier": 1000}
    model = comfy.model_base.BaseModel(config, model_type=kinds[model_type])
    key_map = comfy.utils.unet_to_diffusers(config.unet_config)
    weights = {key_map[name]: value for name, value in unet.state_dict().items()}
    missing, unexpected = model.diffusion_model.load_state_dict(weights, strict=True)
    assert not missing and not unexpected
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


# --- a real server ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_environment(extra: dict[str, str] | None) -> dict[str, str]:
    """This process's environment plus ``extra``, with this repo last on PYTHONPATH.

    The test node pack imports ``testkit`` inside the server; ComfyUI's folder (the server's script
    folder) stays first, so its ``nodes`` module still wins over this repo's ``nodes/``.
    """
    environment = {**os.environ, **(extra or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [environment.get("PYTHONPATH"), str(REPO)]))
    return environment


@dataclass
class ComfyServer:
    """A ComfyUI server started by scripts/start_comfyui.sh on a temporary base directory."""

    url: str
    pid: int
    base: Path
    log_path: Path
    start_seconds: float

    @property
    def models(self) -> Path:
        """The server's models folder (tests write tiny models here)."""
        return self.base / "models"

    @classmethod
    def start(cls, base: Path, timeout: float = 180.0, extra_args: Sequence[str] = (),
              extra_custom_nodes: Sequence[Path] = (), env: dict[str, str] | None = None) -> ComfyServer:
        """Start a server on a free port with ``base`` as --base-directory (this repo linked in custom_nodes).

        ``extra_args`` go to ComfyUI (e.g. ``--bf16-unet``); ``extra_custom_nodes`` are linked into
        custom_nodes/ too (test-only node packs); ``env`` adds environment variables for the server.
        """
        (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        for pack in extra_custom_nodes:
            if not (base / "custom_nodes" / pack.name).exists():
                (base / "custom_nodes" / pack.name).symlink_to(pack, target_is_directory=True)
        for folder in ("checkpoints", "diffusion_models", "vae", "loras", "clip"):
            (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        link = base / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        port = free_port()
        began = time.monotonic()
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "start_comfyui.sh"), "--port", str(port), "--base-directory", str(base),
             *(["--", *extra_args] if extra_args else [])],
            capture_output=True, text=True, timeout=timeout, check=False,
            env={**_server_environment(env), "COMFYUI_START_TIMEOUT": str(int(timeout))},
        )
        pid_file = base / f"comfyui-{port}.pid"
        if result.returncode != 0:
            if pid_file.exists():  # the script kills it on failure; make sure
                stop_server(int(pid_file.read_text()), timeout=30.0)
            raise RuntimeError(f"start_comfyui.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return cls(
            url=f"http://127.0.0.1:{port}", pid=int(pid_file.read_text()), base=base,
            log_path=base / f"comfyui-{port}.log", start_seconds=time.monotonic() - began,
        )

    def stop(self) -> None:
        stop_server(self.pid, timeout=30.0)  # ComfyUI exits cleanly on SIGTERM

    @classmethod
    def for_session(cls, tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[ComfyServer]:
        """Body of a session fixture: a server on a fresh base folder ``name``, stopped at the end.

        Skips the tier when ComfyUI is not installed.
        """
        if not (COMFYUI / "main.py").is_file():
            pytest.skip(f"ComfyUI is not installed in {COMFYUI}; run scripts/install_comfyui.sh")
        server = cls.start(tmp_path_factory.mktemp(name))
        try:
            yield server
        finally:
            server.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post_prompt(self, prompt: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /prompt; returns (HTTP status, JSON body) for accepted and rejected prompts alike."""
        request = urllib.request.Request(
            self.url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def wait_history(self, prompt_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Poll /history/<id> until the prompt finished (success or error); its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"]["completed"] or entry["status"].get("status_str") == "error"
            ):
                return entry
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s; log tail:\n{self.log()[-3000:]}")
