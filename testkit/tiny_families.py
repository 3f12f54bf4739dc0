"""Tiny diffusion-model files, one per text-to-image family ComfyUI 0.3.75 runs (issue 13).

Each :class:`TinyFamily` writes a diffusion-model file (``models/diffusion_models``) that the stock
``UNETLoader`` detects as the family's model class (ComfyUI's ``model_detection`` reads the sizes back
from the tensors, so depth, width and heads are shrunk and the key layout kept), and a VAE file
(``models/vae`` or ``models/vae_approx``) that the stock ``VAELoader`` loads for the family's latent
format. Text encoders of these families are gigabytes, so :meth:`TinyFamily.conditioning` builds a
CONDITIONING of the family's shapes from the prompt text instead (a seeded function of the text: the
same text gives the same tensors, different texts differ); the test node pack exposes it as a node and
as a CLIP-like object. The conditioning path from a real CLIP stays covered by the SD1.x/SD3 tests.

Weights are seeded ``0.02 * randn`` with norm weights one (:func:`tiny_stock_models._randomised`).

**Where detection pins the width.** ComfyUI 0.3.75 reads few sizes of the newer families back from the
tensors and hard-codes the rest (Flux.1: 24 heads x 128; Flux.2: 48 heads; Qwen-Image: 3072 wide; HiDream:
every size; Z-Image is told from Lumina2 by its width 3840 alone), so the smallest file the stock loader
detects is hundreds of MB to tens of GB. Those families' test files are narrow and carry, in their
safetensors metadata (:data:`DETECTION_METADATA`), the sizes in which they differ from what detection
returns for them (``sizes``) and, for Z-Image, the released value of a class-selecting size (``match``).
:func:`install_detection_shim` (run by the test node pack inside the test server) wraps
``comfy.model_detection.model_config_from_unet``: ComfyUI's own ``detect_unet_config`` reads the file, its own
``model_config_from_unet_config`` picks the class from that config (``match`` applied for the choice only),
and the model is built with ``sizes``. Files without the metadata load unchanged. The released-width layout
of each such family is checked to detect as its class without the shim (``test_families_server``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class TinyFamily:
    """One family's tiny files and conditioning.

    Attributes:
        name: the family's name in the README table (``"flux1-dev"``).
        model_class: the ``comfy.supported_models`` class UNETLoader must detect (``"Flux"``).
        unet_file: file name under ``models/diffusion_models``.
        vae_name: the name the stock VAELoader takes (a file under ``models/vae``, or a TAESD name).
        write: ``write(models_dir, seed)`` writes the diffusion model and VAE (keeps existing files).
        conditioning: ``conditioning(text) -> CONDITIONING`` of the family's shapes.
        size: a small image side (px) the family samples at in the tests.
        guidance_distilled: the model takes a guidance value through the conditioning (Flux.1-dev, Flux.2).
        note: why the tiny file differs from the released one where it must (README table).
    """

    name: str
    model_class: str
    unet_file: str
    vae_name: str
    write: Callable[[Path, int], None]
    conditioning: Callable[[str], list]
    size: int = 64
    guidance_distilled: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def text_tensor(text: str, shape: tuple[int, ...], salt: str = "") -> torch.Tensor:
    """A float32 tensor of ``shape`` drawn from a generator seeded by ``text`` (+ ``salt``): deterministic."""
    seed = int.from_bytes(hashlib.sha256(f"{salt}|{text}".encode()).digest()[:8], "little") % (2**63)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


#: workflow templates for real models (workflows/<name>.api.json) -> the family the tests run them on
TEMPLATES = {"train_lora_sdxl": "sdxl", "train_lora_flux1_dev": "flux1-dev", "train_lora_qwen_image": "qwen-image"}
DETECTION_METADATA = "progrpo_tiny_detection"


def save_tiny_unet(path: Path, config_class: str, unet_config: dict, seed: int, match: dict | None = None) -> None:
    """Write a diffusion-model file of ComfyUI's ``config_class`` model built from ``unet_config`` (kept if present).

    Weights: :func:`tiny_stock_models._randomised` (seeded, float16, norm weights one). When ComfyUI's detection
    reads back another config than ``unet_config`` (a pinned size), the differing entries go into the file's
    metadata for :func:`install_detection_shim`, with ``match`` (class-selecting values, e.g. Z-Image's dim).
    """
    import comfy.model_detection
    import comfy.supported_models
    import safetensors.torch

    from testkit.tiny_stock_models import _randomised

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    config = getattr(comfy.supported_models, config_class)(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device=torch.device("meta"))
    state = _randomised(model.diffusion_model.state_dict(), seed, torch.float16)
    for name in state:  # RMS norm scales _randomised does not recognise
        if name.endswith((".scale", "ln_q.weight", "ln_k.weight", "norm_q.weight", "norm_k.weight")):
            state[name] = torch.ones(state[name].shape, dtype=torch.float16)
    detected = comfy.model_detection.detect_unet_config(state, "") or {}
    sizes = {key: value for key, value in unet_config.items() if detected.get(key) != value}
    metadata = {DETECTION_METADATA: json.dumps({"sizes": sizes, "match": match or {}})} if sizes or match else None
    temp = path.with_name(path.name + ".tmp")
    safetensors.torch.save_file({f"model.diffusion_model.{key}": value for key, value in state.items()}, str(temp),
                                metadata=metadata)
    temp.replace(path)


def install_detection_shim() -> None:
    """Let narrow test files of width-pinned families load (module doc); idempotent, test servers only."""
    import comfy.model_detection

    original = comfy.model_detection.model_config_from_unet
    if getattr(original, "_progrpo_shim", False):
        return

    def model_config_from_unet(state_dict, unet_key_prefix, use_base_if_no_match=False, metadata=None):
        tiny = json.loads(metadata[DETECTION_METADATA]) if metadata and DETECTION_METADATA in metadata else None
        if tiny is None:
            return original(state_dict, unet_key_prefix, use_base_if_no_match, metadata=metadata)
        detected = comfy.model_detection.detect_unet_config(state_dict, unet_key_prefix, metadata=metadata)
        chosen = comfy.model_detection.model_config_from_unet_config({**detected, **tiny["sizes"], **tiny["match"]},
                                                                     state_dict)
        if chosen is not None:
            chosen.unet_config.update({**detected, **tiny["sizes"]})
        return chosen

    model_config_from_unet._progrpo_shim = True
    comfy.model_detection.model_config_from_unet = model_config_from_unet


def all_families() -> dict[str, TinyFamily]:
    """Every family, in the README table's order (imports the writers lazily: they import ComfyUI)."""
    from testkit.tiny_families_a import FAMILIES_A
    from testkit.tiny_families_b import FAMILIES_B

    return {**FAMILIES_A, **FAMILIES_B}


class FamilyClip:
    """Stands in for a family's text encoder where the Train Loop takes a CLIP: the two methods ComfyUI's
    CLIPTextEncode calls, giving :meth:`TinyFamily.conditioning` of the text (no guidance, as a real CLIP)."""

    def __init__(self, family: TinyFamily) -> None:
        self.family = family

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens_scheduled(self, tokens: str) -> list:
        return self.family.conditioning(tokens)
