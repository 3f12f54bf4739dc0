"""Training as a GPU user's ComfyUI stores and computes the model, on real servers (CPU proxies of the GPU case).

On a CPU ComfyUI stores fp16/bf16/fp8 weights as asked but computes in fp32 and never takes the fp8 fast
path, so loading a half-precision file alone proves nothing. Here:

* storage comes from the stock loaders: ``--bf16-unet`` / ``--fp16-unet`` servers and UNETLoader's
  ``weight_dtype`` fp8_e4m3fn / fp8_e4m3fn_fast (the test pack makes ComfyUI build the fast path's
  ``fp8_ops`` layers, which call ``torch._scaled_mm``);
* compute is forced by the Train Loop's ``training_dtype`` (bf16 / fp32 / fp16), which the node applies
  as ComfyUI's own trainer does (``set_model_compute_dtype``).

The storage x compute matrix trains at **512 px** on the tiny SD3.5-Medium MMDiT-X (Linear layers: bf16 and
fp16 matrix products are emulated on this CPU, 40x slower than fp32, which an MMDiT of width 128 can
afford; a 16 x 64 x 64 latent of 65k elements): one iteration of 2 trajectories x 2 flow_sde steps, finite
non-zero LoRA gradients, a LoRA that moved, and a saved file that loads through the stock
LoraLoaderModelOnly with no unloaded key. The SD1.5 UNet (convolutions, 50-100x slower in bf16 here) trains
from bf16 storage in bf16 and fp32 at 32 px. fp16 compute must give the fp32 gradient (loss-scaled) at 64 px
on the UNet and at 512 px on the MMDiT; an injected out-of-memory error in the update names the fixes,
keeps the last checkpoint and leaves the server and its cached model as they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import pytest
import torch

from testkit.comfy_harness import TEST_PACK, ComfyServer, requires_comfyui
from testkit.tiny_families import all_families
from testkit.tiny_stock_models import CLIP_FILE, UNET_FILE, write_tiny_stock_models

pytestmark = [pytest.mark.slow, requires_comfyui]

MMDIT_FAMILY = all_families()["sd35-medium"]
TRAIN = {"group_size": 2, "steps": 2, "dynamics": "ddim", "noise_level": -1.0, "cfg": 1.0, "iterations": 1,
         "lr": 1e-2, "rank": 2, "alpha": 2.0, "checkpoint_every": 1, "resume": False, "seed": 0,
         "scheduler": "normal", "prompt_file": "", "negative_prompt": "", "selection": "ovf",
         "prompts_per_iteration": 1, "prompts": "a photo of a red cat", "micro_batch_rows": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("precision-models")
    write_tiny_stock_models(folder)
    return folder


def _server(tmp_path_factory, models: Path, name: str, extra_args: list[str], env: dict[str, str]):
    base = tmp_path_factory.mktemp(name)
    (base / "models").mkdir()
    for folder in models.iterdir():  # the tiny files are shared; each server saves its own LoRAs
        if folder.name != "loras":
            (base / "models" / folder.name).symlink_to(folder, target_is_directory=True)
    (base / "models" / "loras").mkdir()
    return ComfyServer.start(base, extra_args=extra_args, extra_custom_nodes=[TEST_PACK], env=env)


@pytest.fixture(scope="module")
def bf16_server(tmp_path_factory, models):
    server = _server(tmp_path_factory, models, "bf16-server", ["--bf16-unet"], {})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fp16_server(tmp_path_factory, models):
    """fp16 storage by default; UNETLoader's fp8 weight dtypes on it, with the fp8 fast path forced."""
    server = _server(tmp_path_factory, models, "fp16-server", ["--fp16-unet"], {"PROGRPO_TEST_FP8_COMPUTE": "1"})
    yield server
    server.stop()


def _graph(run_name: str, weight_dtype: str, training_dtype: str, size: int = 32, oom: bool = False) -> dict:
    model = ["1", 0]
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET_FILE, "weight_dtype": weight_dtype}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_FILE, "type": "stable_diffusion",
                                                     "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},
        "5": {"class_type": "ProGRPORewardLoader", "inputs": {"reward": "brightness", "model": "(none)",
                                                             "aesthetic_head": "(none)", "weight": 1.0}},
        "9": {"class_type": "ProGRPOTestModelReport", "inputs": {"model": ["1", 0]}},
    }
    if oom:
        graph["10"] = {"class_type": "ProGRPOTestOutOfMemory", "inputs": {"model": ["1", 0]}}
        model = ["10", 0]
    graph["6"] = {"class_type": "ProGRPOTrainLoop", "inputs": {
        **TRAIN, "model": model, "vae": ["3", 0], "reward": ["5", 0], "clip": ["2", 0], "width": size, "height": size,
        "run_name": run_name, "training_dtype": training_dtype}}
    graph["7"] = {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["6", 1], "name": run_name}}
    return graph


def _run(server, prompt: dict, timeout: float = 900) -> dict:
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    return server.wait_history(body["prompt_id"], timeout=timeout)


def _report(entry: dict) -> dict:
    return json.loads(entry["outputs"]["9"]["text"][0])


def _stock_sample(server, prefix: str, lora_name: str | None = None) -> tuple[dict, torch.Tensor | None]:
    """Stock KSampler on the cached UNETLoader model, optionally through LoraLoaderModelOnly -> (entry, latent)."""
    from safetensors.torch import load_file

    model = ["1", 0]
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET_FILE, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_FILE, "type": "stable_diffusion",
                                                     "device": "default"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["2", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    if lora_name is not None:
        prompt["4"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora_name,
                                                                      "strength_model": 1.0}}
        model = ["4", 0]
    prompt["6"] = {"class_type": "KSampler", "inputs": {"model": model, "seed": 1, "steps": 2, "cfg": 1.0,
                                                        "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                                                        "positive": ["3", 0], "negative": ["3", 0],
                                                        "latent_image": ["5", 0]}}
    prompt["7"] = {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix}}
    entry = _run(server, prompt)
    if entry["status"]["status_str"] != "success":
        return entry, None
    saved = entry["outputs"]["7"]["latents"][0]
    return entry, load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def _check_learned(server, run_name: str, stock: bool = True) -> None:
    from safetensors.torch import load_file

    run = server.base / "output" / "progrpo" / run_name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and not any(r.get("skipped") for r in records), records
    norms = [r["grad_norm"] for r in records]
    assert all(math.isfinite(n) and n > 0 for n in norms), norms
    lora = load_file(str(server.models / "loras" / f"{run_name}.safetensors"))
    downs = [t for k, t in lora.items() if k.endswith("lora_down.weight")]
    assert downs and all(torch.isfinite(t).all() for t in lora.values())
    assert any(t.abs().max() > 0 for t in downs), "lora_down never moved from its zero start"
    if not stock:
        return
    log_start = len(server.log())
    entry, _ = _stock_sample(server, f"check_{run_name}", f"{run_name}.safetensors")
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert "lora key not loaded" not in server.log()[log_start:]


@pytest.mark.parametrize("training_dtype", ["bf16", "fp32"])
def test_bf16_stored_model_trains_in_bf16_and_fp32(bf16_server, training_dtype):
    entry = _run(bf16_server, _graph(f"bf16_{training_dtype}", "default", training_dtype))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert _report(entry)["weight_dtypes"] == ["torch.bfloat16"]
    _check_learned(bf16_server, f"bf16_{training_dtype}")


def _train_step_graph(training_dtypes: list[str], size: int) -> dict:
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET_FILE, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": CLIP_FILE, "type": "stable_diffusion",
                                                     "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a red cat", "clip": ["2", 0]}},
        "5": {"class_type": "ProGRPORewardLoader", "inputs": {"reward": "brightness", "model": "(none)",
                                                             "aesthetic_head": "(none)", "weight": 1.0}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "7": {"class_type": "ProGRPOExpandedSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["4", 0], "latent": ["6", 0], "group_size": 2,
            "steps": 3, "dynamics": "ddim", "noise_level": -1.0, "cfg": 1.0, "seed": 3, "scheduler": "normal",
            "vae": ["3", 0], "reward": ["5", 0]}},
    }
    return _with_train_steps(graph, training_dtypes)


def _with_train_steps(graph: dict, training_dtypes: list[str], **inputs) -> dict:
    """Add a Train Step per dtype on the rollout of node "7" (nodes 1<i>) and a PreviewAny of its metrics (2<i>)."""
    for index, dtype in enumerate(training_dtypes):
        graph[f"1{index}"] = {"class_type": "ProGRPOTrainStep", "inputs": {
            "model": ["1", 0], "rollout": ["7", 1], "lr": 1e-4, "rank": 2, "alpha": 2.0, "seed": 0,
            "training_dtype": dtype, **inputs}}
        graph[f"2{index}"] = {"class_type": "PreviewAny", "inputs": {"source": [f"1{index}", 2]}}
    return graph


def _check_fp16_gradient(entry: dict, case: str) -> None:
    """The fp16 Train Step's LoRA grad norm (node 21) is within 3% of the fp32 one's (node 20)."""
    assert entry["status"]["status_str"] == "success", entry["status"]
    fp32, fp16 = (json.loads(entry["outputs"][f"2{i}"]["text"][0])["grad_norm"] for i in range(2))
    logging.getLogger("progrpo").info("%s LoRA grad norm: fp16 %.6g / fp32 %.6g = %.5f", case, fp16, fp32, fp16 / fp32)
    assert fp32 > 0 and math.isfinite(fp16)
    assert abs(fp16 / fp32 - 1) < 0.03, (fp16, fp32)


def test_fp16_compute_gives_the_fp32_gradient(fp16_server):
    """Loss-scaled fp16 compute keeps the gradient: grad norm within 3% of fp32's on the same rollout.

    3%: fp16 keeps 11 significant bits (rounding 5e-4 per operation), and the tiny UNet's ~30 layers
    between the loss and the LoRA compound that to about 1% here (bf16, 8 bits, lands within 1.5%); the
    unscaled fp16 gradient lost 14% of its norm at this latent size before (README, Memory and precision).
    """
    entry = _run(fp16_server, _train_step_graph(["fp32", "fp16"], 64))
    _check_fp16_gradient(entry, "64 px UNet")


def _sha256(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_out_of_memory_in_the_update_names_the_fixes_and_loses_nothing(bf16_server):
    _, sample_before = _stock_sample(bf16_server, "oom_before")
    first = _graph("oom_run", "default", "fp32")
    first["6"]["inputs"]["iterations"] = 2
    entry = _run(bf16_server, first)
    assert entry["status"]["status_str"] == "success", entry["status"]
    checkpoints = bf16_server.base / "output" / "progrpo" / "oom_run" / "checkpoints"
    before = {name: _sha256(checkpoints / name) for name in ("iter_1", "iter_2")}

    graph = _graph("oom_run", "default", "fp32", oom=True)
    graph["6"]["inputs"].update(iterations=4, resume=True)
    entry = _run(bf16_server, graph)
    assert entry["status"]["status_str"] == "error", entry["status"]
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_id"] == "6", error
    for fix in ("micro_batch_rows", "gradient_checkpointing", "width", "height", "iter_2"):
        assert fix in error["exception_message"], error["exception_message"]
    assert (checkpoints / "latest").read_text().strip() == "iter_2"
    assert {name: _sha256(checkpoints / name) for name in ("iter_1", "iter_2")} == before
    _, sample_after = _stock_sample(bf16_server, "oom_after")  # the server still serves, its model unchanged
    assert torch.equal(sample_after, sample_before)


def _mmdit_graph(run_name: str, weight_dtype: str, training_dtype: str, size: int = 512) -> dict:
    """A Train Loop on the tiny SD3.5-Medium MMDiT-X (Linear layers only, so bf16/fp16 compute stays affordable on
    this CPU at 512 px: 1024 image tokens, a 16 x 64 x 64 latent of 65k elements)."""
    family = MMDIT_FAMILY
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": family.unet_file, "weight_dtype": weight_dtype}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": family.vae_name}},
        "4": {"class_type": "ProGRPOTestFamilyConditioning", "inputs": {"family": family.name, "text": "a red cube"}},
        "5": {"class_type": "ProGRPORewardLoader", "inputs": {"reward": "brightness", "model": "(none)",
                                                             "aesthetic_head": "(none)", "weight": 1.0}},
        "9": {"class_type": "ProGRPOTestModelReport", "inputs": {"model": ["1", 0]}},
        "6": {"class_type": "ProGRPOTrainLoop", "inputs": {
            **TRAIN, "dynamics": "flow_sde", "scheduler": "simple", "model": ["1", 0], "vae": ["3", 0],
            "reward": ["5", 0], "positive": ["4", 0], "prompts": "", "width": size, "height": size,
            "run_name": run_name, "training_dtype": training_dtype}},
        "7": {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["6", 1], "name": run_name}},
    }


STORED = {"default": "torch.float16", "fp8_e4m3fn": "torch.float8_e4m3fn", "fp8_e4m3fn_fast": "torch.float8_e4m3fn"}


def _check_mmdit_lora_loads(server, name: str, weight_dtype: str) -> None:
    """The saved LoRA through the stock LoraLoaderModelOnly + KSampler on the same stored model: no unloaded key."""
    log_start = len(server.log())
    family = MMDIT_FAMILY
    stock = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": family.unet_file, "weight_dtype": weight_dtype}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": f"{name}.safetensors",
                                                             "strength_model": 1.0}},
        "4": {"class_type": "ProGRPOTestFamilyConditioning", "inputs": {"family": family.name, "text": "a red cube"}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 1, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
                                                   "positive": ["4", 0], "negative": ["4", 0], "latent_image": ["5", 0]}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"check_{name}"}},
    }
    assert _run(server, stock)["status"]["status_str"] == "success"
    assert "lora key not loaded" not in server.log()[log_start:]


def _train_mmdit_at_512_px(server, weight_dtype: str, training_dtype: str, stored: str) -> dict:
    name = f"mmdit512_{stored.removeprefix('torch.')}_{weight_dtype}_{training_dtype}"
    MMDIT_FAMILY.write(server.models, 0)
    entry = _run(server, _mmdit_graph(name, weight_dtype, training_dtype), timeout=1200)
    assert entry["status"]["status_str"] == "success", entry["status"]
    report = _report(entry)
    assert report["weight_dtypes"] == [stored], report
    _check_learned(server, name, stock=False)
    _check_mmdit_lora_loads(server, name, weight_dtype)
    return report


@pytest.mark.parametrize("weight_dtype", sorted(STORED))
@pytest.mark.parametrize("training_dtype", ["bf16", "fp32"])
def test_fp16_and_fp8_stored_mmdit_trains_at_512_px_in_bf16_and_fp32(fp16_server, weight_dtype, training_dtype):
    report = _train_mmdit_at_512_px(fp16_server, weight_dtype, training_dtype, STORED[weight_dtype])
    if weight_dtype == "fp8_e4m3fn_fast":  # the scaled-mm fast path was in place
        assert report["linear_classes"] == ["comfy.ops.fp8_ops.Linear"], report


@pytest.mark.parametrize("training_dtype", ["bf16", "fp32"])
def test_bf16_stored_mmdit_trains_at_512_px_in_bf16_and_fp32(bf16_server, training_dtype):
    _train_mmdit_at_512_px(bf16_server, "default", training_dtype, "torch.bfloat16")


def test_fp16_compute_gives_the_fp32_gradient_at_512_px(fp16_server):
    """fp16 compute at 512 px on the MMDiT (a 65k-element latent, where an unscaled fp16 gradient underflows):
    loss-scaled, the LoRA gradient norm is within 3% of fp32's on the same rollout (see the 64 px UNet case)."""
    MMDIT_FAMILY.write(fp16_server.models, 0)
    family = MMDIT_FAMILY
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": family.unet_file, "weight_dtype": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": family.vae_name}},
        "4": {"class_type": "ProGRPOTestFamilyConditioning", "inputs": {"family": family.name, "text": "a red cube"}},
        "5": {"class_type": "ProGRPORewardLoader", "inputs": {"reward": "brightness", "model": "(none)",
                                                             "aesthetic_head": "(none)", "weight": 1.0}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "7": {"class_type": "ProGRPOExpandedSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["4", 0], "latent": ["6", 0], "group_size": 2,
            "steps": 2, "dynamics": "flow_sde", "noise_level": -1.0, "cfg": 1.0, "seed": 3, "scheduler": "simple",
            "vae": ["3", 0], "reward": ["5", 0]}},
    }
    entry = _run(fp16_server, _with_train_steps(graph, ["fp32", "fp16"], micro_batch_rows=1), timeout=1200)
    _check_fp16_gradient(entry, "512 px MMDiT")
