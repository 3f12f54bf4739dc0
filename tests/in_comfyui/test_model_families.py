"""The family registry (LoRA presets, auto dynamics, warnings) and out-of-place augmented assignments.

In-process, without a server: the registry is read from ComfyUI's own config classes, and the augmented
assignment mode is checked on a block written like ComfyUI's Flux blocks (``x += f(norm(x))``) against the same
block written out of place.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from testkit.comfy_harness import load_extension_nodes, requires_comfyui

pytestmark = [requires_comfyui]


@pytest.fixture(scope="module")
def nodes():
    load_extension_nodes()
    return {name: importlib.import_module(f"progrpo_comfy_nodes.{name}")
            for name in ("model_families", "out_of_place", "comfy_lora")}


class _Patcher:
    """The attribute path family_of reads: ModelPatcher.model.model_config."""

    def __init__(self, config) -> None:
        self.model = type("BaseModel", (), {"model_config": config})()


def _config(name: str):
    import comfy.supported_models

    klass = getattr(comfy.supported_models, name)
    return klass.__new__(klass)  # the class is all family_of reads


@pytest.mark.parametrize("config_class, family", [
    ("SD15", "SD1.x/SD2.x"), ("SDXL", "SDXL"), ("Segmind_Vega", "SDXL"), ("SSD1B", "SDXL"), ("SD3", "SD3/SD3.5"),
    ("Flux", "Flux.1-dev"), ("FluxSchnell", "Flux.1-schnell"), ("FluxInpaint", "Flux.1-dev"), ("Flux2", "Flux.2"),
    ("Chroma", "Chroma"), ("HiDream", "HiDream"), ("QwenImage", "Qwen-Image"), ("Lumina2", "Lumina2"),
    ("ZImage", "Z-Image"), ("AuraFlow", "other"),
])
def test_family_is_read_from_the_config_class_and_its_bases(nodes, config_class, family):
    assert nodes["model_families"].family_of(_Patcher(_config(config_class))).name == family


def test_presets_grow_and_flux_trains_its_single_blocks(nodes):
    families = nodes["model_families"]
    flux = families.family_of(_Patcher(_config("Flux")))
    attention, with_mlp = flux.targets("attention"), flux.targets("attention+mlp")
    assert {"linear1", "linear2", "img_attn.qkv"} <= set(attention) and set(attention) < set(with_mlp)
    assert flux.targets("all linear") == (families.ALL_LINEAR,)
    assert "attn2.qkv" in families.family_of(_Patcher(_config("SD3"))).targets("attention")
    assert families.preset_targets(_Patcher(_config("SD15")), "custom", "to_q,\n to_k  to_q") == ("to_q", "to_k")
    with pytest.raises(Exception, match="custom_targets"):
        families.preset_targets(_Patcher(_config("SD15")), "custom", " ,")
    with pytest.raises(Exception, match="lora_targets"):
        flux.targets("everything")
    # the generic preset never takes Flux's bare linear1/linear2, which other architectures use for MLPs
    assert not {"linear1", "linear2"} & set(families.OTHER.attention)


def test_auto_dynamics_and_distilled_model_warnings(nodes):
    families = nodes["model_families"]
    assert families.resolve_dynamics("auto", "flow") == "flow_sde"
    assert families.resolve_dynamics("auto", "vp") == "ddim"
    assert families.resolve_dynamics("cps", "flow") == "cps"
    dev, sdxl = _Patcher(_config("Flux")), _Patcher(_config("SDXL"))
    (warning,) = families.settings_warnings(dev, 3.5, has_negative=False)
    assert "Flux.1-dev" in warning and "guidance input" in warning and "no negative" in warning
    assert families.settings_warnings(_Patcher(_config("FluxSchnell")), 2.0, True)
    assert families.settings_warnings(dev, 1.0, False) == [] and families.settings_warnings(sdxl, 7.0, True) == []


class _FluxLikeBlock(torch.nn.Module):
    """``x += f(norm(x))`` twice, as ComfyUI's Flux DoubleStreamBlock writes its residuals."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm, self.attn, self.mlp = torch.nn.LayerNorm(8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.in_place = in_place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 1.0
        if self.in_place:
            x += self.attn(self.norm(x))
            x *= 1.5
            x += self.mlp(self.norm(x))
        else:
            x = x + self.attn(self.norm(x))
            x = x * 1.5
            x = x + self.mlp(self.norm(x))
        return x


def test_augmented_assignments_run_out_of_place_with_the_same_values_and_gradients(nodes):
    mode = nodes["out_of_place"].augmented_assignments_out_of_place
    inputs = torch.randn(3, 8)
    in_place, reference = _FluxLikeBlock(True), _FluxLikeBlock(False)
    with pytest.raises(RuntimeError, match="inplace operation"):
        in_place(inputs).square().sum().backward()
    in_place.zero_grad()
    with mode():
        output = in_place(inputs)
        output.square().sum().backward()
    expected = reference(inputs)
    expected.square().sum().backward()
    assert torch.equal(output, expected)
    for mine, theirs in zip(in_place.parameters(), reference.parameters()):
        assert torch.equal(mine.grad, theirs.grad)


def test_explicit_in_place_calls_keep_their_meaning(nodes):
    with nodes["out_of_place"].augmented_assignments_out_of_place(), torch.enable_grad():
        weight = torch.ones(2, requires_grad=True)
        total = torch.zeros(2)
        total.add_(weight * 2)  # a statement: must still write into total
        alias = total
        alias += 1  # rebinds alias to a new tensor: total, another name of the old one, keeps its value
    assert torch.equal(total, torch.full((2,), 2.0)) and torch.equal(alias, torch.full((2,), 3.0))
    with nodes["out_of_place"].augmented_assignments_out_of_place(), torch.enable_grad():
        plain = torch.zeros(2)
        other = plain
        other += 1  # no operand requires grad: in place as always
    assert torch.equal(plain, torch.ones(2))
