"""convert-reward against the reference implementations: a tiny random model built with the
reference's own code (open-clip-torch, image-reward, transformers for PickScore), saved in the
released layout (pickles where the release is one), converted, and scored by both on the same
images and prompts: equal within 1e-4 in fp32. Images are at the model's input size, so both
preprocessings reduce to the same normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from progrpo.rewards import build_reward, clear_model_cache
from progrpo.rewards.convert import convert_reward
from progrpo.rewards.reward_folder import read_reward_config
from testkit.reference_rewards import (
    PROMPTS,
    TINY_OPEN_CLIP,
    has_imagereward,
    import_imagereward,
    open_clip_features,
    sample_images,
    tiny_imagereward,
    tiny_open_clip,
    tiny_pickscore_folder,
    write_bert_processor,
    write_clip_processor,
)

pytest.importorskip("open_clip", reason="test-only reference: pip install open-clip-torch (README Dependencies)")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def clip_processor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip_processor(tmp_path_factory.mktemp("CLIP-ViT-H-14-laion2B-s32B-b79K"))


@pytest.fixture(scope="module")
def architecture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    file = tmp_path_factory.mktemp("arch") / "tiny.json"
    file.write_text(json.dumps(TINY_OPEN_CLIP))
    return file


def _close(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Max |ours - reference| (asserted < 1e-4); printed with -s for the README figures."""
    reference = reference.detach().float()
    difference = float((ours - reference).abs().max())
    print(f"max |ours - reference| = {difference:.2e} over scores {reference.tolist()}")
    assert difference < TOLERANCE, (ours, reference)
    return difference


def test_hpsv2_pickle_converts_and_scores_like_open_clip(tmp_path: Path, clip_processor: Path, architecture: Path):
    model = tiny_open_clip(seed=3)
    released = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, released)  # HPSv2's checkpoint layout
    folder = convert_reward("hpsv2", released, tmp_path / "hpsv2.1", processor=clip_processor,
                            architecture=architecture)
    assert read_reward_config(folder)["kind"] == "hpsv2"
    images, pil = sample_images(4)
    image, text = open_clip_features(model, pil, PROMPTS)
    reference = (image * text).sum(-1)  # HPSv2 img_score.py: diagonal of image_features @ text_features.T
    ours = build_reward("hps", path=str(folder)).score(images, PROMPTS)
    _close(ours, reference)
    assert float(reference.std()) > 1e-3  # the scores differ between pairs: the comparison is not vacuous


def test_pickscore_folders_package_into_one_and_score_like_the_readme(tmp_path: Path, clip_processor: Path):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPProcessor

    model = tiny_pickscore_folder(tmp_path / "PickScore_v1")
    folder = convert_reward("pickscore", tmp_path / "PickScore_v1", tmp_path / "pickscore", processor=clip_processor)
    images, pil = sample_images(4, seed=1)
    # PickScore README: AutoProcessor of the CLIP-H folder, i.e. this CLIPProcessor
    processor = CLIPProcessor(image_processor=AutoImageProcessor.from_pretrained(str(clip_processor), local_files_only=True),
                              tokenizer=AutoTokenizer.from_pretrained(str(clip_processor), local_files_only=True))
    # PickScore README: embeddings normalised, score = logit_scale.exp() * text_embs @ image_embs.T
    with torch.no_grad():
        image = model.get_image_features(**processor(images=pil, return_tensors="pt"))
        text = model.get_text_features(**processor(text=PROMPTS, padding=True, truncation=True, max_length=77,
                                                   return_tensors="pt"))
    image, text = (getattr(x, "pooler_output", x) for x in (image, text))
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    reference = model.logit_scale.exp() * (image * text).sum(-1)
    _close(build_reward("pickscore", path=str(folder)).score(images, PROMPTS), reference)


def test_aesthetic_head_and_open_clip_backbone_score_like_imagereward_aesthetic(tmp_path: Path, architecture: Path):
    if not has_imagereward():
        pytest.skip("test-only reference: pip install --no-deps image-reward==1.5 (README Dependencies)")
    modules = import_imagereward()
    backbone = tiny_open_clip(seed=7, quick_gelu=True)  # OpenAI ViT-L/14 uses QuickGELU
    torch.save(backbone.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    torch.manual_seed(8)
    reference = modules["AestheticScore"].__new__(modules["AestheticScore"])
    torch.nn.Module.__init__(reference)
    reference.device, reference.clip_model = "cpu", backbone
    reference.mlp = modules["MLP"](TINY_OPEN_CLIP["embed_dim"]).eval()
    with torch.no_grad():  # spread the scores (the default init gives nearly equal ones)
        for parameter in reference.mlp.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    torch.save(reference.mlp.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")  # LAION's release layout
    import open_clip

    reference.preprocess = open_clip.image_transform(32, is_train=False)
    folder = convert_reward("aesthetic", tmp_path / "sac+logos+ava1-l14-linearMSE.pth", tmp_path / "aesthetic",
                            backbone=tmp_path / "open_clip_pytorch_model.bin", architecture=_quick(architecture))
    images, pil = sample_images(4, seed=2)
    paths = []
    for index, image in enumerate(pil):
        paths.append(str(tmp_path / f"{index}.png"))
        image.save(paths[-1])
    with torch.no_grad():
        _, expected = reference.inference_rank("", paths)  # ImageReward AestheticScore: mlp(normalize(encode_image))
    _close(build_reward("aesthetic", path=str(folder)).score(images, [""] * 4), torch.tensor(expected))
    assert float(torch.tensor(expected).std()) > 1e-3


def _quick(architecture: Path) -> Path:
    file = architecture.with_name("tiny_quick_gelu.json")
    file.write_text(json.dumps({**TINY_OPEN_CLIP, "quick_gelu": True}))
    return file


def test_imagereward_checkpoint_converts_and_scores_like_the_package(tmp_path: Path):
    if not has_imagereward():
        pytest.skip("test-only reference: pip install --no-deps image-reward==1.5 (README Dependencies)")
    bert = write_bert_processor(tmp_path / "bert-base-uncased")
    reference = tiny_imagereward(bert, seed=11)
    torch.save(reference.state_dict(), tmp_path / "ImageReward.pt")  # the release: a plain state dict
    (tmp_path / "arch.json").write_text(json.dumps({"vision_heads": 2, "text_heads": 2}))
    folder = convert_reward("imagereward", tmp_path / "ImageReward.pt", tmp_path / "imagereward", processor=bert,
                            architecture=tmp_path / "arch.json")
    images, pil = sample_images(3, seed=4)
    prompts = ["a photo of a red cat", "an astronaut riding a horse", "a blue car"]
    with torch.no_grad():
        expected = torch.tensor([reference.score(prompt, image) for prompt, image in zip(prompts, pil)])
    ours = build_reward("imagereward", path=str(folder)).score(images, prompts)
    _close(ours, expected)
    assert float(expected.std()) > 1e-3


def test_reduced_precision_and_batches_stay_close_to_fp32(tmp_path: Path, clip_processor: Path, architecture: Path):
    torch.save({"state_dict": tiny_open_clip(seed=4).state_dict()}, tmp_path / "hps.pt")
    folder = str(convert_reward("hpsv2", tmp_path / "hps.pt", tmp_path / "hps", processor=clip_processor,
                                architecture=architecture))
    images, _ = sample_images(4, seed=6)
    full = build_reward("hps", path=folder).score(images, PROMPTS)
    batched = build_reward("hps", path=folder, batch_size=3).score(images, PROMPTS)
    half = build_reward("hps", path=folder, precision="bf16").score(images, PROMPTS)
    assert half.dtype == torch.float32 and batched.dtype == torch.float32
    assert torch.allclose(batched, full, atol=1e-6)
    assert float((half - full).abs().max()) < 0.05
    clear_model_cache()


# --------------------------------------------------------------------------- bad inputs write nothing


def _refused(tmp_path: Path, kind: str, source: Path, pattern: str, **options: object) -> None:
    from progrpo.errors import ProGRPOConfigError

    destination = tmp_path / "out" / "converted"
    with pytest.raises(ProGRPOConfigError, match=pattern) as caught:
        convert_reward(kind, source, destination, **options)
    assert str(source.name) in str(caught.value) or str(options.get("processor", "")) in str(caught.value)
    assert not (tmp_path / "out").exists()  # nothing written: no folder, no temp folder, not even the parent


def test_wrong_kind_truncated_unsafe_pickle_and_missing_processor_are_refused(tmp_path: Path, clip_processor: Path):
    import datetime

    head = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save({f"layers.{i}.weight": torch.zeros(2, 2) for i in (0, 2, 4, 6, 7)}, head)
    _refused(tmp_path, "hpsv2", head, r"not an open_clip CLIP.*KIND match", processor=clip_processor)
    _refused(tmp_path, "imagereward", head, r"not an ImageReward checkpoint.*KIND match", processor=clip_processor)
    good = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": tiny_open_clip(seed=1).state_dict()}, good)
    truncated = tmp_path / "HPS_truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _refused(tmp_path, "hpsv2", truncated, r"truncated.*download it again", processor=clip_processor)
    unsafe = tmp_path / "HPS_with_objects.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "saved": datetime.datetime(2024, 1, 1)}, unsafe)
    _refused(tmp_path, "hpsv2", unsafe, r"objects other than tensors.*datetime.*state_dict", processor=clip_processor)
    no_tokenizer = tmp_path / "CLIP-H-without-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "preprocessor_config.json").write_text("{}")
    _refused(tmp_path, "hpsv2", good, r"missing its processor.*--processor", processor=no_tokenizer)
    tiny_pickscore_folder(tmp_path / "PickScore_v1")
    _refused(tmp_path, "pickscore", tmp_path / "PickScore_v1", r"missing its processor.*CLIP-ViT-H-14")


def test_cli_converts_and_reports_errors(tmp_path: Path, clip_processor: Path, architecture: Path):
    from progrpo.__main__ import main

    torch.save({"state_dict": tiny_open_clip(seed=2).state_dict()}, tmp_path / "hps.pt")
    base = ["convert-reward", "hpsv2", str(tmp_path / "hps.pt"), str(tmp_path / "out"), "--processor",
            str(clip_processor), "--architecture", str(architecture)]
    assert main(base) == 0 and read_reward_config(tmp_path / "out")["reward"] == "hps"
    assert main(base) == 2  # exists: refused without --overwrite
    assert main([*base, "--overwrite"]) == 0
    sample = ["sample", "--model", "tiny:sd3", "--prompt", "a red cat", "--group-size", "2", "--steps", "2",
              "--reward", "hps", "--reward-path", str(tmp_path / "out"), "--reward-device", "cpu",
              "--reward-precision", "bf16", "--out", str(tmp_path / "sample")]
    assert main(sample) == 0
    assert len(json.loads((tmp_path / "sample" / "summary.json").read_text())["final_rewards"]) == 2


def test_training_device_reaches_model_rewards_only(tmp_path: Path, clip_processor: Path, architecture: Path):
    from progrpo.errors import ProGRPOConfigError
    from progrpo.rewards import build_rewards

    torch.save({"state_dict": tiny_open_clip(seed=5).state_dict()}, tmp_path / "hps.pt")
    folder = str(convert_reward("hpsv2", tmp_path / "hps.pt", tmp_path / "hps", processor=clip_processor,
                                architecture=architecture))
    combined = build_rewards({"hps": {"path": folder, "precision": "bf16"}, "brightness": {"weight": 0.5}},
                             default_device="cpu")
    assert combined.rewards["hps"].backbone.dtype == torch.bfloat16
    assert combined.rewards["hps"].backbone.device == torch.device("cpu")
    with pytest.raises(ProGRPOConfigError, match="device.*not a torch device"):
        build_rewards({"hps": {"path": folder}}, default_device="warp-drive")
    with pytest.raises(ProGRPOConfigError, match="converted as 'hpsv2'.*pick reward 'hps'"):
        build_reward("pickscore", path=folder)
    clear_model_cache()


def test_transformers_backbone_and_pickled_weights_convert_too(tmp_path: Path, clip_processor: Path):
    """The aesthetic head on a transformers CLIP folder (openai/clip-vit-large-patch14's layout), and a
    PickScore folder holding only pytorch_model.bin: same scores as computed from the model directly."""
    from progrpo.rewards.clip_family import AestheticHead

    model = tiny_pickscore_folder(tmp_path / "clip-vit-large-patch14", seed=9)
    torch.manual_seed(10)
    head = AestheticHead(16).eval()
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    torch.save(head.state_dict(), tmp_path / "head.pth")
    folder = convert_reward("aesthetic", tmp_path / "head.pth", tmp_path / "aesthetic",
                            backbone=tmp_path / "clip-vit-large-patch14")
    images, _ = sample_images(3, seed=8)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=(images - mean) / std)
        features = getattr(features, "pooler_output", features)
        expected = head(features / features.norm(dim=-1, keepdim=True))
    _close(build_reward("aesthetic", path=str(folder)).score(images, [""] * 3), expected)

    pickled = tmp_path / "PickScore_v1_bin"
    pickled.mkdir()
    (pickled / "config.json").write_text((tmp_path / "clip-vit-large-patch14" / "config.json").read_text())
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    from_bin = convert_reward("pickscore", pickled, tmp_path / "pick_bin", processor=clip_processor)
    from_safetensors = convert_reward("pickscore", tmp_path / "clip-vit-large-patch14", tmp_path / "pick_st",
                                      processor=clip_processor)
    assert (from_bin / "model.safetensors").is_file() and not (from_bin / "pytorch_model.bin").exists()
    prompts = PROMPTS[:3]
    assert torch.equal(build_reward("pickscore", path=str(from_bin)).score(images, prompts),
                       build_reward("pickscore", path=str(from_safetensors)).score(images, prompts))
