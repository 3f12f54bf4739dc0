"""Converted reward models in a real ComfyUI server: tiny PickScore, HPSv2.1, ImageReward and aesthetic
folders written by convert-reward into models/rewards load in the Reward Loader and score like the
library does in-process; PickScore + HPSv2.1 through the Combine node drive a 2-iteration Train Loop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from testkit.comfy_harness import REPO, requires_comfyui
from testkit.reference_rewards import (
    TINY_OPEN_CLIP,
    has_imagereward,
    tiny_imagereward,
    tiny_open_clip,
    tiny_pickscore_folder,
    write_bert_processor,
    write_clip_processor,
)
from testkit.tiny_stock_models import write_tiny_stock_models

pytestmark = [pytest.mark.slow, requires_comfyui]

WORKFLOW = REPO / "workflows" / "train_lora_sd15.api.json"
REWARDS = ("tiny_pickscore", "tiny_hpsv2.1", "tiny_aesthetic", "tiny_imagereward")


def _convert_all(rewards: Path, work: Path) -> dict[str, str]:
    """Convert tiny released files of each kind into ``rewards``; return reward name -> folder name."""
    from progrpo.rewards.clip_family import AestheticHead
    from progrpo.rewards.convert import convert_reward

    processor = write_clip_processor(work / "CLIP-ViT-H-14")
    architecture = work / "tiny.json"
    architecture.write_text(json.dumps(TINY_OPEN_CLIP))
    tiny_pickscore_folder(work / "PickScore_v1")
    convert_reward("pickscore", work / "PickScore_v1", rewards / "tiny_pickscore", processor=processor)
    torch.save({"state_dict": tiny_open_clip(seed=3).state_dict()}, work / "HPS_v2.1_compressed.pt")
    convert_reward("hpsv2", work / "HPS_v2.1_compressed.pt", rewards / "tiny_hpsv2.1", processor=processor,
                   architecture=architecture)
    torch.save(tiny_open_clip(seed=4).state_dict(), work / "open_clip_pytorch_model.bin")
    torch.save(AestheticHead(TINY_OPEN_CLIP["embed_dim"]).state_dict(), work / "aesthetic.pth")
    convert_reward("aesthetic", work / "aesthetic.pth", rewards / "tiny_aesthetic", architecture=architecture,
                   backbone=work / "open_clip_pytorch_model.bin")
    converted = {"pickscore": "tiny_pickscore", "hps": "tiny_hpsv2.1", "aesthetic": "tiny_aesthetic"}
    if has_imagereward():
        bert = write_bert_processor(work / "bert-base-uncased")
        torch.save(tiny_imagereward(bert, seed=11).state_dict(), work / "ImageReward.pt")
        (work / "ir.json").write_text(json.dumps({"vision_heads": 2, "text_heads": 2}))
        convert_reward("imagereward", work / "ImageReward.pt", rewards / "tiny_imagereward", processor=bert,
                       architecture=work / "ir.json")
        converted["imagereward"] = "tiny_imagereward"
    return converted


@pytest.fixture(scope="module")
def server(comfy_server, tmp_path_factory):
    pytest.importorskip("open_clip", reason="test-only reference: pip install open-clip-torch (README Dependencies)")
    write_tiny_stock_models(comfy_server.models)
    (comfy_server.base / "input").mkdir(exist_ok=True)
    (comfy_server.base / "input" / "progrpo_prompts.txt").write_text("a photo of a red cat\na blue car on a street\n")
    comfy_server.converted = _convert_all(comfy_server.models / "rewards", tmp_path_factory.mktemp("released"))
    yield comfy_server
    for name in REWARDS:
        shutil.rmtree(comfy_server.models / "rewards" / name, ignore_errors=True)
    for path in comfy_server.models.glob("*/tiny_*.safetensors"):
        path.unlink()


def _loader(reward: str, model: str, **extra: object) -> dict:
    return {"class_type": "ProGRPORewardLoader",
            "inputs": {"reward": reward, "model": model, "aesthetic_head": "(none)", "weight": 1.0, **extra}}


def test_converted_rewards_load_and_score_like_the_library(server):
    from progrpo.rewards import build_reward

    prompt: dict[str, dict] = {"1": {"class_type": "EmptyImage",
                                     "inputs": {"width": 48, "height": 48, "batch_size": 2, "color": 0x336699}}}
    for index, (reward, folder) in enumerate(sorted(server.converted.items())):
        loader, score, show = (str(10 * index + offset) for offset in (10, 11, 12))
        prompt[loader] = _loader(reward, folder, device="cpu", precision="fp32", batch_size=1)
        prompt[score] = {"class_type": "ProGRPORewardScore",
                         "inputs": {"images": ["1", 0], "reward": [loader, 0], "prompts": "a photo of a red cat"}}
        prompt[show] = {"class_type": "PreviewAny", "inputs": {"source": [score, 1]}}
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    image = torch.tensor([0x33, 0x66, 0x99]).float().div(255).view(1, 3, 1, 1).expand(2, 3, 48, 48)
    for index, (reward, folder) in enumerate(sorted(server.converted.items())):
        text = entry["outputs"][str(10 * index + 12)]["text"][0]
        served = torch.tensor([float(line.split(": ")[1]) for line in text.splitlines()])
        local = build_reward(reward, path=str(server.models / "rewards" / folder)).score(image, ["a photo of a red cat"] * 2)
        assert torch.allclose(served, local, atol=1e-4, rtol=1e-5), (reward, served, local)


def test_pickscore_plus_hpsv2_drives_two_training_iterations(server):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["30"] = _loader("pickscore", "tiny_pickscore")  # device/precision/batch_size left to their defaults
    prompt["31"] = _loader("hps", "tiny_hpsv2.1", precision="fp32")
    prompt["5"] = {"class_type": "ProGRPORewardCombine",
                   "inputs": {"reward_a": ["30", 0], "weight_a": 1.0, "reward_b": ["31", 0], "weight_b": 2.0}}
    prompt["6"]["inputs"].update(run_name="pickscore_hps", iterations=2, resume=False)
    status, body = server.post_prompt(prompt)
    assert status == 200, body
    entry = server.wait_history(body["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    run = server.base / "output" / "progrpo" / "pickscore_hps"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in records] == [0, 1]
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_2"


def test_reward_loader_keeps_its_inputs_and_adds_optional_device_precision(server):
    entry = server.get("/object_info/ProGRPORewardLoader")["ProGRPORewardLoader"]
    assert list(entry["input"]["required"]) == ["reward", "model", "aesthetic_head", "weight"]
    optional = entry["input"]["optional"]
    assert set(optional) == {"device", "precision", "batch_size"}
    assert optional["device"][1]["default"] == "comfyui" and "cpu" in _options(optional["device"])
    assert optional["precision"][1]["default"] == "auto"
    assert set(_options(optional["precision"])) == {"auto", "fp32", "fp16", "bf16"}
    assert all(spec[1].get("tooltip") for spec in optional.values())
    assert "imagereward" in _options(entry["input"]["required"]["reward"])


def _options(spec: list) -> list:
    """A combo's choices in /object_info (V3 nodes: ["COMBO", {"options": [...]}]; legacy: [[...], {...}])."""
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]
