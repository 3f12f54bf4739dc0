"""Rewards: weight-free statistics against hand computations, the registry and weighted sum,
CLIP-family loaders round-tripping tiny saved models against independent computations, and
error messages that name the offending input."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from progrpo.errors import ProGRPOConfigError
from progrpo.rewards import (
    REWARDS,
    WeightedSum,
    build_reward,
    build_rewards,
    read_image_preprocess,
    register_reward,
)
from progrpo.rewards.tiny import save_tiny_aesthetic_head, save_tiny_clip

torch.set_num_threads(1)  # 2 shared cores

PROMPTS4 = ["a photo of a red cat", "a photo of a red cat", "a dog on a tree", "a blue car"]


def _constant(rgb: tuple[float, float, float], size: int = 16, batch: int = 1) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(batch, 3, size, size).clone()


def _noise(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- weight-free


def test_jpeg_compressibility_ranks_flat_above_noise_and_matches_pil() -> None:
    images = torch.cat([_constant((0.5, 0.5, 0.5), size=64), _noise(1)])
    compress = build_reward("jpeg_compressibility").score(images, ["a", "b"])
    incompress = build_reward("jpeg_incompressibility").score(images, ["a", "b"])
    assert compress.dtype == torch.float32 and compress.shape == (2,)
    assert compress[0] > compress[1]
    assert incompress[1] > incompress[0]
    torch.testing.assert_close(incompress, -compress)
    # DDPO: PIL JPEG at quality 95, size in kB (bytes / 1000).
    buffer = io.BytesIO()
    array = (images[1] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    assert incompress[1].item() == pytest.approx(len(buffer.getvalue()) / 1000.0)


def test_brightness_of_constant_image_is_its_luma() -> None:
    rgb = (0.2, 0.6, 0.9)
    value = build_reward("brightness").score(_constant(rgb, batch=2), ["x", "y"])
    expected = 0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 0.9  # Rec. 601 luma weights
    torch.testing.assert_close(value, torch.full((2,), expected))


def test_contrast_is_luma_std() -> None:
    half = torch.zeros(1, 3, 8, 8)
    half[..., :4] = 1.0
    contrast = build_reward("contrast")
    assert contrast.score(_constant((0.3, 0.3, 0.3)), ["x"]).item() == pytest.approx(
        0.0, abs=1e-6
    )  # fp32 luma rounding
    assert contrast.score(half, ["x"]).item() == pytest.approx(0.5)


def test_saturation_of_grey_is_zero_and_of_pure_red_is_one() -> None:
    saturation = build_reward("saturation")
    assert saturation.score(_constant((0.4, 0.4, 0.4)), ["x"]).item() == 0.0
    assert saturation.score(_constant((1.0, 0.0, 0.0)), ["x"]).item() == pytest.approx(1.0)


def test_colorfulness_grey_zero_saturated_positive_and_matches_formula() -> None:
    colorfulness = build_reward("colorfulness")
    assert colorfulness.score(_constant((0.5, 0.5, 0.5)), ["x"]).item() == 0.0
    images = _noise(1, size=16)
    images[:, 2] = 0.0  # saturated: blue off, random red/green
    value = colorfulness.score(images, ["x"]).item()
    assert value > 0
    # Hasler & Süsstrunk 2003 on the 0-255 scale, written out with numpy.
    r, g, b = images[0].double().numpy() * 255.0
    rg, yb = r - g, 0.5 * (r + g) - b
    expected = np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    assert value == pytest.approx(expected, rel=1e-5)


def test_sharpness_flat_is_zero_and_below_noise() -> None:
    sharpness = build_reward("sharpness")
    flat = sharpness.score(_constant((0.7, 0.2, 0.1), size=32), ["x"])
    noisy = sharpness.score(_noise(1, size=32), ["x"])
    assert flat.item() == 0.0
    assert noisy.item() > flat.item()


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "sharpness", "colorfulness"])
def test_statistics_are_differentiable_even_on_flat_images(name: str) -> None:
    reward = build_reward(name)
    assert reward.differentiable
    for images in (_noise(2, size=16), _constant((0.5, 0.5, 0.5), batch=2)):
        pixels = images.clone().requires_grad_(True)
        reward.score(pixels, ["x", "y"]).sum().backward()
        assert pixels.grad is not None and torch.isfinite(pixels.grad).all()
    pixels = _noise(2, size=16).requires_grad_(True)
    reward.score(pixels, ["x", "y"]).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


# --------------------------------------------------------------------------- registry, weighted sum


def test_weighted_sum_equals_hand_sum_and_exposes_components() -> None:
    images = torch.cat([_constant((0.2, 0.6, 0.9), size=32), _noise(1, size=32)])
    prompts = ["a", "b"]
    parts = {"brightness": build_reward("brightness"), "jpeg_compressibility": build_reward("jpeg_compressibility")}
    combined = WeightedSum(parts, {"brightness": 2.0, "jpeg_compressibility": -0.5})
    components = combined.score_components(images, prompts)
    assert set(components) == set(parts)
    expected = 2.0 * parts["brightness"].score(images, prompts) - 0.5 * parts["jpeg_compressibility"].score(
        images, prompts
    )
    torch.testing.assert_close(combined.score(images, prompts), expected)
    torch.testing.assert_close(combined.combine(components), expected)
    assert not combined.differentiable  # JPEG is not


def test_build_rewards_from_spec() -> None:
    images, prompts = _noise(2, size=16), ["a", "b"]
    combined = build_rewards(
        {"brightness": {"weight": 1.5}, "sat": {"reward": "saturation", "weight": 0.25}, "sharpness": {}}
    )
    assert combined.weights == {"brightness": 1.5, "sat": 0.25, "sharpness": 1.0}
    expected = (
        1.5 * build_reward("brightness").score(images, prompts)
        + 0.25 * build_reward("saturation").score(images, prompts)
        + build_reward("sharpness").score(images, prompts)
    )
    torch.testing.assert_close(combined.score(images, prompts), expected)
    with pytest.raises(ProGRPOConfigError, match="weight of reward 'brightness'"):
        build_rewards({"brightness": {"weight": "high"}})
    with pytest.raises(ProGRPOConfigError, match="non-empty"):
        build_rewards({})


def test_unknown_reward_name_lists_known_names() -> None:
    with pytest.raises(ProGRPOConfigError, match="unknown reward 'aesthetics'") as error:
        build_reward("aesthetics")
    for known in ("aesthetic", "brightness", "clip_score", "jpeg_compressibility", "pickscore"):
        assert known in str(error.value)
    with pytest.raises(ProGRPOConfigError, match="unknown reward 'nope'"):
        build_rewards({"nope": {"weight": 1.0}})


def test_bad_options_and_duplicate_registration_are_errors() -> None:
    with pytest.raises(ProGRPOConfigError, match="reward 'brightness': invalid options.*strength"):
        build_reward("brightness", strength=2)
    with pytest.raises(ProGRPOConfigError, match="reward 'clip_score'.*path"):
        build_reward("clip_score")
    with pytest.raises(ProGRPOConfigError, match="'brightness' is already registered"):
        register_reward("brightness")(lambda: None)
    assert "brightness" in REWARDS


@pytest.mark.parametrize(
    ("images", "prompts", "needle"),
    [
        (torch.rand(2, 16, 16, 3), ["a", "b"], r"`images` must have shape \[B,3,H,W\], got \(2, 16, 16, 3\)"),
        (torch.rand(3, 16, 16), ["a"] * 3, r"`images` must have shape \[B,3,H,W\], got \(3, 16, 16\)"),
        (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), ["a", "b"], r"`images` must be a float.*torch.uint8"),
        (torch.rand(2, 3, 8, 8) * 2 - 1, ["a", "b"], r"`images` of shape \(2, 3, 8, 8\) must have values in \[0,1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), ["a"], r"`images`.*NaN"),
        (torch.rand(2, 3, 8, 8), ["a"], r"len\(prompts\) = 1 but `images` has batch size 2"),
        (torch.rand(2, 3, 8, 8), "a cat", r"`prompts` must be a list of 2 strings"),
    ],
)
def test_invalid_inputs_name_the_input(images: torch.Tensor, prompts: object, needle: str) -> None:
    with pytest.raises(ProGRPOConfigError, match=needle):
        build_reward("brightness").score(images, prompts)  # type: ignore[arg-type]
    with pytest.raises(ProGRPOConfigError, match=needle):
        build_rewards({"brightness": {}}).score(images, prompts)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- CLIP family


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=1)


@pytest.fixture(scope="module")
def head_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_aesthetic_head(tmp_path_factory.mktemp("head") / "aesthetic.safetensors", input_dim=16, seed=2)


def _reference_embeddings(folder: Path, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, ...]:
    """Raw (unnormalised) image/text embeddings and logit scale from an independently loaded
    CLIPModel; the images are already at the model's 32x32 so preprocessing is normalisation."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    settings = json.loads((folder / "processor_config.json").read_text())["image_processor"]
    mean = torch.tensor(settings["image_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(settings["image_std"]).view(1, 3, 1, 1)
    tokens = tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=(images - mean) / std).pooler_output)
        text = model.text_projection(
            model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        )
    return image, text, model.logit_scale.detach().exp()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.square().sum(-1).sqrt() * b.square().sum(-1).sqrt())


def test_clip_family_scores_match_independent_computation(clip_folder: Path, head_file: Path) -> None:
    images = _noise(4, size=32, seed=3)
    image, text, logit_scale = _reference_embeddings(clip_folder, images, PROMPTS4)
    cosine = _cosine(image, text)
    with torch.no_grad():
        scores = {
            name: build_reward(name, path=str(clip_folder)).score(images, PROMPTS4)
            for name in ("clip_score", "pickscore", "hps")
        }
        scores["clip_raw"] = build_reward("clip_score", path=clip_folder, clamp_negative=False, scale=2.5).score(
            images, PROMPTS4
        )
        scores["aesthetic"] = build_reward("aesthetic", path=clip_folder, head=str(head_file)).score(images, PROMPTS4)
    torch.testing.assert_close(scores["clip_score"], 100 * cosine.clamp_min(0), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(scores["clip_raw"], 2.5 * cosine, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores["pickscore"], logit_scale * cosine, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores["hps"], cosine, atol=1e-6, rtol=1e-5)
    # The LAION head is purely linear (dropout is off at inference) on the L2-normalised embedding.
    from safetensors.torch import load_file

    state = load_file(str(head_file))
    x = image / image.norm(dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    torch.testing.assert_close(scores["aesthetic"], x.squeeze(-1), atol=1e-5, rtol=1e-5)
    assert all(score.dtype == torch.float32 and score.shape == (4,) for score in scores.values())


def test_clip_models_are_cached_per_path(clip_folder: Path, head_file: Path) -> None:
    first = build_reward("clip_score", path=clip_folder)
    second = build_reward("pickscore", path=str(clip_folder))
    aesthetic = build_reward("aesthetic", path=clip_folder, head=head_file)
    assert first.backbone.model is second.backbone.model is aesthetic.backbone.model
    assert aesthetic.head is build_reward("aesthetic", path=clip_folder, head=head_file).head


def test_clip_score_gradients_reach_pixels(clip_folder: Path, head_file: Path) -> None:
    for reward in (
        build_reward("clip_score", path=clip_folder, clamp_negative=False),
        build_reward("aesthetic", path=clip_folder, head=head_file),
    ):
        assert reward.differentiable
        pixels = _noise(2, size=48, seed=4).requires_grad_(True)  # 48 -> resized to 32
        reward.score(pixels, PROMPTS4[:2]).sum().backward()
        assert pixels.grad is not None and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


def test_preprocessing_matches_the_saved_pil_processor(clip_folder: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(clip_folder), local_files_only=True)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
    image = (torch.stack([xs, ys, (xs + ys) / 2])[None] * 255).round() / 255  # smooth, non-square, asymmetric
    pil = Image.fromarray((image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    expected = processor(images=[pil], return_tensors="pt")["pixel_values"]
    ours = build_reward("hps", path=clip_folder).backbone.preprocess(image)
    assert ours.shape == expected.shape == (1, 3, 32, 32)
    # PIL's bicubic and torch's antialiased bicubic differ by about one uint8 level.
    assert (ours - expected).abs().max() < 0.03


def test_legacy_preprocessor_config_is_read(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"size": 40, "crop_size": 32, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    )
    preprocess = read_image_preprocess(tmp_path, image_size=224)
    assert preprocess.output_size(48, 64) == (40, 53)  # short side to 40, HF's int() rounding
    out = preprocess(torch.full((1, 3, 48, 64), 0.75))
    assert out.shape == (1, 3, 32, 32)
    torch.testing.assert_close(out, torch.ones_like(out))  # (0.75 - 0.5) / 0.25


# --------------------------------------------------------------------------- loader errors


def test_missing_clip_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(ProGRPOConfigError, match="does not exist; expected a transformers CLIPModel folder") as error:
        build_reward("clip_score", path=str(missing))
    assert str(missing) in str(error.value)


def test_folder_without_config_or_not_clip_or_without_weights(tmp_path: Path, clip_folder: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ProGRPOConfigError, match="has no config.json; expected a transformers CLIPModel") as error:
        build_reward("pickscore", path=empty)
    assert str(empty) in str(error.value)

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ProGRPOConfigError, match="model_type 'bert', not 'clip'") as error:
        build_reward("hps", path=bert)
    assert str(bert) in str(error.value)

    no_weights = tmp_path / "no_weights"
    shutil.copytree(clip_folder, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ProGRPOConfigError, match="has no weights") as error:
        build_reward("clip_score", path=no_weights)
    assert str(no_weights) in str(error.value)

    checkpoint = tmp_path / "HPS_v2.1_compressed.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(ProGRPOConfigError, match="is a file, not a folder.*converted"):
        build_reward("hps", path=checkpoint)


def test_aesthetic_head_errors_name_the_file(tmp_path: Path, clip_folder: Path) -> None:
    from safetensors.torch import save_file

    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ProGRPOConfigError, match="head file .* does not exist") as error:
        build_reward("aesthetic", path=clip_folder, head=missing)
    assert str(missing) in str(error.value)

    wrong_keys = tmp_path / "wrong_keys.safetensors"
    save_file({"mlp.weight": torch.zeros(1, 16)}, str(wrong_keys))
    with pytest.raises(ProGRPOConfigError, match=r"missing keys \['layers.0.weight'") as error:
        build_reward("aesthetic", path=clip_folder, head=wrong_keys)
    assert str(wrong_keys.resolve()) in str(error.value)

    wrong_width = save_tiny_aesthetic_head(tmp_path / "wide.safetensors", input_dim=8)
    with pytest.raises(ProGRPOConfigError, match="expects 8-dim embeddings but the CLIP model's projection_dim is 16"):
        build_reward("aesthetic", path=clip_folder, head=wrong_width)


def test_missing_tokenizer_names_the_folder(tmp_path: Path, clip_folder: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_folder / name, bare / name)
    with pytest.raises(ProGRPOConfigError, match="no usable tokenizer: expected tokenizer.json") as error:
        build_reward("clip_score", path=bare)
    assert str(bare.resolve()) in str(error.value)
    # The aesthetic reward needs no tokenizer (and falls back to the vision tower's image size).
    head = save_tiny_aesthetic_head(tmp_path / "head.safetensors")
    reward = build_reward("aesthetic", path=bare, head=head)
    assert reward.score(_noise(1, size=40), ["ignored"]).shape == (1,)
