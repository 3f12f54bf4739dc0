"""Every text-to-image family ComfyUI 0.3.75 runs, through the whole loop on a real server (issue 13).

For each family of :func:`tiny_families.all_families` (a tiny diffusion-model file the stock UNETLoader
detects as the family's class, a VAE the stock VAELoader loads, CONDITIONING of the family's shapes from the
test node pack), one prompt runs:

* the stock empty latent (``EmptyLatentImage``: 4 channels, converted by the nodes as KSampler converts it;
  ``EmptyFlux2LatentImage`` for Flux.2, whose latents are 16x smaller) into the **Expanded Sampler** with a
  prune schedule and a weight-free reward (4 trajectories, 2 kept after step 1);
* Pro-GRPO's SAMPLER (``cps``) in the stock SamplerCustomAdvanced on the same latent;
* a **Train Loop** of 2 iterations with the family's ``attention`` preset (``auto`` dynamics: ``flow_sde`` on
  flow families, ``ddim`` on SD), its LoRA saved by **Save LoRA**, and a stock KSampler on its MODEL output;

then a second prompt samples the same with the stock ``LoraLoaderModelOnly`` + KSampler: no "lora key not
loaded" line, and the latents equal the Train Loop MODEL's within 1e-4 (fp32). The preset must train the
family's attention layers (checked against the saved file's keys).

The real-model workflow templates (SDXL from one checkpoint file, Flux.1-dev and Qwen-Image from separate
files) run rewritten to the tiny files (loaders swapped, sizes and counts cut), and their LoRA loads through
the stock loader.

Flux.1-dev with a prompt list: the Train Loop sets the ``guidance`` input on the conditioning (the model's
guidance embedding receives it, recorded by a probe), and another value trains another LoRA.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from testkit.comfy_harness import REPO, TEST_PACK, ComfyServer, import_comfy, requires_comfyui
from testkit.tiny_families import TEMPLATES

pytestmark = [pytest.mark.slow, requires_comfyui]

#: expected LoRA layer names (substrings of the saved keys) that the attention preset must train, per family
PRESET_LAYERS = {
    "sd15": ["attn1_to_q", "attn2_to_out_0"],
    "sdxl": ["attn1_to_q", "attn2_to_out_0"],
    "sd35-medium": ["x_block.attn.qkv", "x_block.attn2.qkv", "context_block.attn.qkv"],
    "flux1-dev": ["img_attn.qkv", "txt_attn.proj", "single_blocks.0.linear1", "single_blocks.0.linear2"],
    "flux1-schnell": ["img_attn.qkv", "single_blocks.0.linear1"],
    "chroma": ["img_attn.qkv", "single_blocks.0.linear2"],
    "flux2": ["img_attn.qkv", "single_blocks.0.linear1"],
    "hidream": ["attn1.to_q", "attn1.to_out"],
    "qwen-image": ["attn.to_q", "attn.add_q_proj", "attn.to_add_out"],
    "lumina2": ["attention.qkv", "attention.out"],
    "z-image": ["attention.qkv", "attention.out"],
}


def _families() -> dict:
    from testkit.tiny_families import all_families

    return all_families()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("families-server")
    (base / "models").mkdir()
    server = ComfyServer.start(base, extra_custom_nodes=[TEST_PACK])
    yield server
    server.stop()


def _run(server, prompt: dict, timeout: float = 600) -> dict:
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=timeout)
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log()[-3000:])
    return entry


def _saved_latent(server, entry: dict, node: str) -> torch.Tensor:
    from safetensors.torch import load_file

    saved = entry["outputs"][node]["latents"][0]
    return load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def _common(family, size: int) -> dict:
    latent = ({"class_type": "EmptyFlux2LatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}}
              if family.name == "flux2" else
              {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}})
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": family.unet_file, "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": family.vae_name}},
        "3": {"class_type": "ProGRPOTestFamilyConditioning", "inputs": {"family": family.name, "text": "a red cube"}},
        "4": {"class_type": "ProGRPOTestFamilyConditioning", "inputs": {"family": family.name, "text": "blurry"}},
        "5": {"class_type": "ProGRPORewardLoader", "inputs": {"reward": "brightness", "model": "(none)",
                                                             "aesthetic_head": "(none)", "weight": 1.0}},
        "6": latent,
    }


def _ksampler(model: list, positive: list) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 3, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "denoise": 1.0, "positive": positive, "negative": ["4", 0], "latent_image": ["6", 0]}}


def _train_inputs(family, run_name: str) -> dict:
    return {"model": ["1", 0], "vae": ["2", 0], "reward": ["5", 0], "group_size": 2, "steps": 2,
            "dynamics": "auto", "noise_level": -1.0, "cfg": 1.0, "width": family.size, "height": family.size,
            "iterations": 2, "lr": 1e-2, "rank": 2, "alpha": 2.0, "checkpoint_every": 0, "resume": False,
            "run_name": run_name, "seed": 0, "scheduler": "simple", "micro_batch_rows": 2, "max_batch_rows": 0,
            "lora_targets": "attention"}


def _loop_graph(family) -> dict:
    run_name = f"family_{family.name}"
    graph = _common(family, family.size)
    graph["7"] = {"class_type": "ProGRPOPruneSchedule", "inputs": {"checkpoints": "1:2"}}
    graph["8"] = {"class_type": "ProGRPOExpandedSampler", "inputs": {
        "model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0], "latent": ["6", 0], "group_size": 4,
        "steps": 2, "dynamics": "auto", "noise_level": -1.0, "cfg": 1.0, "seed": 0, "scheduler": "simple",
        "prune_schedule": ["7", 0], "selection": "ovf", "reward": ["5", 0], "vae": ["2", 0],
        "prompt_text": "a red cube", "max_batch_rows": 0}}
    graph["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": f"{run_name}_survivors"}}
    graph["10"] = {"class_type": "ProGRPOTrainLoop", "inputs": {**_train_inputs(family, run_name), "positive": ["3", 0]}}
    graph["11"] = {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["10", 1], "name": run_name}}
    graph["12"] = _ksampler(["10", 0], ["3", 0])
    graph["13"] = {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0], "filename_prefix": f"{run_name}_loop"}}
    # Pro-GRPO's SAMPLER in the stock SamplerCustomAdvanced, on the same stock empty latent
    graph["14"] = {"class_type": "ProGRPOSampler", "inputs": {"dynamics": "cps", "noise_level": -1.0}}
    graph["15"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    graph["16"] = {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["3", 0]}}
    graph["17"] = {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 2,
                                                              "denoise": 1.0}}
    graph["18"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["15", 0], "guider": ["16", 0], "sampler": ["14", 0], "sigmas": ["17", 0], "latent_image": ["6", 0]}}
    graph["19"] = {"class_type": "SaveLatent", "inputs": {"samples": ["18", 0], "filename_prefix": f"{run_name}_custom"}}
    return graph


def _stock_lora_graph(family, lora_name: str) -> dict:
    graph = _common(family, family.size)
    graph["20"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora_name,
                                                                  "strength_model": 1.0}}
    graph["12"] = _ksampler(["20", 0], ["3", 0])
    graph["13"] = {"class_type": "SaveLatent", "inputs": {"samples": ["12", 0],
                                                          "filename_prefix": f"{Path(lora_name).stem}_stock"}}
    return graph


@pytest.mark.parametrize("name", list(PRESET_LAYERS))
def test_family_samples_prunes_trains_and_round_trips_its_lora(server, name: str):
    from safetensors.torch import load_file

    family = _families()[name]
    family.write(server.models, 0)
    loop = _run(server, _loop_graph(family))

    survivors = _saved_latent(server, loop, "9")
    assert survivors.shape[0] == 2 and torch.isfinite(survivors).all(), survivors.shape
    custom = _saved_latent(server, loop, "19")  # the SAMPLER node through SamplerCustomAdvanced
    assert custom.shape[1:] == survivors.shape[1:] and torch.isfinite(custom).all(), (custom.shape, survivors.shape)
    run = server.base / "output" / "progrpo" / f"family_{name}"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["grad_norm"])) for r in records), records

    lora_file = server.models / "loras" / f"family_{name}.safetensors"
    keys = list(load_file(str(lora_file)))
    for layer in PRESET_LAYERS[name]:
        assert any(layer in key for key in keys), (layer, keys[:12])

    log_start = len(server.log())
    stock = _run(server, _stock_lora_graph(family, lora_file.name))
    assert "lora key not loaded" not in server.log()[log_start:]
    trained, reloaded = _saved_latent(server, loop, "13"), _saved_latent(server, stock, "13")
    assert trained.shape == reloaded.shape
    assert torch.allclose(trained, reloaded, atol=1e-4, rtol=0), float((trained - reloaded).abs().max())


def _guidance_graph(family, guidance: float, probe: str) -> dict:
    graph = _common(family, family.size)
    graph["30"] = {"class_type": "ProGRPOTestGuidanceProbe", "inputs": {"model": ["1", 0], "probe": probe}}
    graph["31"] = {"class_type": "ProGRPOTestFamilyClip", "inputs": {"family": family.name}}
    graph["10"] = {"class_type": "ProGRPOTrainLoop", "inputs": {
        **_train_inputs(family, probe), "iterations": 1, "model": ["30", 0], "clip": ["31", 0], "prompt_file": "",
        "prompts": "a red cube\na blue ball", "prompts_per_iteration": 2, "guidance": guidance}}
    graph["11"] = {"class_type": "ProGRPOSaveLoRA", "inputs": {"lora": ["10", 1], "name": probe}}
    graph["32"] = {"class_type": "ProGRPOTestGuidanceReport", "inputs": {"probe": probe, "after": ["11", 0]}}
    return graph


def test_flux_dev_train_loop_applies_the_guidance_input_to_a_prompt_list(server):
    from safetensors.torch import load_file

    family = _families()["flux1-dev"]
    family.write(server.models, 0)
    loras = {}
    for guidance in (2.0, 5.0):
        probe = f"guidance_{guidance:g}"
        entry = _run(server, _guidance_graph(family, guidance, probe))
        seen = json.loads(entry["outputs"]["32"]["text"][0])
        assert seen == [guidance], seen  # every model call, sampling and training, got the input's value
        loras[guidance] = load_file(str(server.models / "loras" / f"{probe}.safetensors"))
    difference = max(float((loras[2.0][k] - loras[5.0][k]).abs().max()) for k in loras[2.0])
    assert difference > 0, "the guidance value did not change what was trained"


def _full_size_families() -> list[str]:
    return [name for name, family in _families().items() if "full_size" in family.extra]


@pytest.mark.parametrize("name", _full_size_families())
def test_released_width_layout_is_detected_without_the_test_shim(name: str):
    """Families whose width ComfyUI's detection hard-codes run the server tests on a narrow file through the
    test pack's detection shim; their released-width key layout (built on the meta device: shapes only) must
    be detected as the same class by ComfyUI's unmodified detection."""
    import_comfy()
    import comfy.model_detection
    import comfy.supported_models

    family = _families()[name]
    config_class, unet_config = family.extra["full_size"]
    assert not getattr(comfy.model_detection.model_config_from_unet, "_progrpo_shim", False)
    config = getattr(comfy.supported_models, config_class)(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device=torch.device("meta"))
    state = {f"model.diffusion_model.{key}": value for key, value in model.diffusion_model.state_dict().items()}
    detected = comfy.model_detection.model_config_from_unet(state, "model.diffusion_model.")
    assert type(detected).__name__ == family.model_class


def _tiny_template(workflow: dict, family, run_name: str) -> dict:
    """A real-model template rewritten to the tiny family files and to seconds of work (same graph)."""
    prompt = copy.deepcopy(workflow)
    size = family.size
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            node.update(class_type="ProGRPOTestFamilyCheckpoint", inputs={"family": family.name})
        elif kind in ("CLIPLoader", "DualCLIPLoader"):
            node.update(class_type="ProGRPOTestFamilyClip", inputs={"family": family.name})
        elif kind == "UNETLoader":
            inputs.update(unet_name=family.unet_file, weight_dtype="default")
        elif kind == "VAELoader":
            inputs["vae_name"] = family.vae_name
        elif kind == "ProGRPOPruneSchedule":
            inputs["checkpoints"] = "1:2"
        elif kind == "ProGRPOTrainLoop":
            inputs.update(width=size, height=size, steps=2, group_size=4, iterations=2, prompts_per_iteration=1,
                          micro_batch_rows=2, max_batch_rows=0, checkpoint_every=1, resume=False, run_name=run_name)
        elif kind in ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyFlux2LatentImage"):
            inputs.update(width=size, height=size)
        elif kind == "KSampler":
            inputs["steps"] = 2
        elif kind == "ProGRPOSaveLoRA":
            inputs["name"] = run_name
    return prompt


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_real_model_template_runs_on_the_tiny_family_model(server, template: str):
    workflow = json.loads((REPO / "workflows" / f"{template}.api.json").read_text())
    (train,) = [node["inputs"] for node in workflow.values() if node["class_type"] == "ProGRPOTrainLoop"]
    # the shipped file is for the real model: its resolution, group, schedule, lr and run length
    assert train["width"] >= 512 and train["group_size"] >= 12 and train["steps"] >= 16
    assert train["iterations"] >= 100 and train["lr"] <= 3e-4 and train["lora_targets"] == "attention"
    family = _families()[TEMPLATES[template]]
    family.write(server.models, 0)
    run_name = f"template_{template}"
    entry = _run(server, _tiny_template(workflow, family, run_name))
    previews = [key for key, node in workflow.items() if node["class_type"] == "PreviewImage"]
    assert previews and all(entry["outputs"][key]["images"] for key in previews)
    log_start = len(server.log())
    _run(server, _stock_lora_graph(family, f"{run_name}.safetensors"))
    assert "lora key not loaded" not in server.log()[log_start:]
