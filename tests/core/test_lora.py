"""LoRA injection, reference toggle, ComfyUI export round trips and peft resume on the tiny networks."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

import pytest
import torch
from safetensors.torch import load_file, save_file

import progrpo
from progrpo.errors import ProGRPOConfigError
from progrpo.lora import (
    DEFAULT_TARGETS,
    EXPORT_FORMATS,
    KEY_FORMATS,
    LoraSettings,
    add_lora,
    apply_comfyui_lora,
    encode_metadata,
    export_comfyui_lora,
    find_target_modules,
    load_lora_state_dict,
    load_peft_adapter,
    lora_disabled,
    lora_module_names,
    lora_state_dict,
    read_lora_metadata,
    read_peft_settings,
    run_metadata,
    save_peft_adapter,
)
from progrpo.tiny_models import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sd_pipeline

torch.set_num_threads(1)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _forward_sd(net: torch.nn.Module) -> torch.Tensor:
    """UNet eps prediction [2, 4, 16, 16]."""
    return net(
        _randn(2, 4, 16, 16, seed=1), torch.tensor([10, 500]), encoder_hidden_states=_randn(2, 5, 32, seed=2)
    ).sample


def _forward_sd3(net: torch.nn.Module) -> torch.Tensor:
    """SD3 velocity [2, 4, 16, 16]."""
    return net(
        hidden_states=_randn(2, 4, 16, 16, seed=1),
        encoder_hidden_states=_randn(2, 5, 64, seed=2),
        pooled_projections=_randn(2, 64, seed=3),
        timestep=torch.tensor([10.0, 500.0]),
    ).sample


def _forward_flux(net: torch.nn.Module) -> torch.Tensor:
    """Flux velocity on packed tokens [2, 64, 16] (an 8x8 latent grid)."""
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    img_ids = torch.stack([torch.zeros(64), rows.flatten(), cols.flatten()], dim=1)
    return net(
        hidden_states=_randn(2, 64, 16, seed=1),
        encoder_hidden_states=_randn(2, 5, 32, seed=2),
        pooled_projections=_randn(2, 32, seed=3),
        timestep=torch.tensor([0.1, 0.5]),
        img_ids=img_ids,
        txt_ids=torch.zeros(5, 3),
    ).sample


@dataclass(frozen=True)
class Case:
    build: Callable[[], torch.nn.Module]
    forward: Callable[[torch.nn.Module], torch.Tensor]
    n_modules: int  # modules the default targets select in the tiny network
    key_pattern: str  # every exported key matches this


CASES: dict[str, Case] = {
    # 4 attention blocks x (attn1, attn2) x (q, k, v, out.0)
    "sd": Case(
        lambda: tiny_sd_pipeline(seed=0).unet,
        _forward_sd,
        32,
        r"lora_unet_[a-z0-9_]+_attn[12]_to_(q|k|v|out_0)\.(lora_down\.weight|lora_up\.weight|alpha)",
    ),
    # block 0: 8 projections; block 1 (context_pre_only): no to_add_out
    "sd3": Case(
        lambda: tiny_sd3_pipeline(seed=0).transformer,
        _forward_sd3,
        15,
        r"transformer\.transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_[qkv]_proj|to_add_out)"
        r"\.(lora_A\.weight|lora_B\.weight|alpha)",
    ),
    # one double block (8) + one single block (q, k, v)
    "flux": Case(
        lambda: tiny_flux_pipeline(seed=0).transformer,
        _forward_flux,
        11,
        r"transformer\.(single_)?transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_[qkv]_proj|to_add_out)"
        r"\.(lora_A\.weight|lora_B\.weight|alpha)",
    ),
}
ARCHS = list(CASES)


@pytest.fixture(scope="module")
def bases() -> dict[str, torch.nn.Module]:
    """Pristine base networks (seed 0); tests work on deep copies."""
    return {arch: case.build().eval() for arch, case in CASES.items()}


def _perturb(params: list[torch.nn.Parameter], seed: int = 7) -> None:
    """Random A and B (B != 0), so the LoRA changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in params:
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))


def _trained(bases: dict[str, torch.nn.Module], arch: str, settings: LoraSettings) -> torch.nn.Module:
    network = copy.deepcopy(bases[arch])
    _perturb(add_lora(network, settings))
    return network


@pytest.mark.parametrize("arch", ARCHS)
def test_default_targets_match_modules(bases, arch):
    network = bases[arch]
    matched = find_target_modules(network, DEFAULT_TARGETS[type(network).__name__])
    assert len(matched) == CASES[arch].n_modules
    assert all(isinstance(m, torch.nn.Linear) for m in matched.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_add_lora_trains_only_lora_and_starts_at_base(bases, arch):
    base = bases[arch]
    network = copy.deepcopy(base)
    params = add_lora(network, LoraSettings(rank=4, alpha=8.0))
    trainable = {name for name, p in network.named_parameters() if p.requires_grad}
    assert len(params) == len(trainable) == 2 * CASES[arch].n_modules
    assert all(re.search(r"\.lora_[AB]\.progrpo\.weight$", name) for name in trainable)
    assert {id(p) for p in params} == {id(p) for p in network.parameters() if p.requires_grad}
    assert len(lora_module_names(network)) == CASES[arch].n_modules
    with torch.no_grad():  # B = 0 at init: the adapter is the identity
        assert torch.equal(CASES[arch].forward(network), CASES[arch].forward(base))


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_disabled_gives_base_output_exactly(bases, arch):
    network = _trained(bases, arch, LoraSettings(rank=4, alpha=8.0))
    forward = CASES[arch].forward
    with torch.no_grad():
        trained = forward(network)
        with lora_disabled(network):
            reference = forward(network)
            with lora_disabled(network):  # nesting is a no-op
                assert torch.equal(forward(network), reference)
        assert torch.equal(reference, forward(bases[arch]))
        assert (trained - reference).abs().max() > 1e-2
        assert torch.equal(forward(network), trained)  # re-enabled on exit
    assert sum(p.requires_grad for p in network.parameters()) == 2 * CASES[arch].n_modules


@pytest.mark.parametrize("alpha", [8.0, 2.0])
@pytest.mark.parametrize("arch", ARCHS)
def test_export_then_apply_reproduces_peft_forward(bases, arch, alpha, tmp_path):
    """alpha != rank: the file's alpha tensors must give ComfyUI's alpha/rank = peft's scale."""
    settings = LoraSettings(rank=4, alpha=alpha)
    network = _trained(bases, arch, settings)
    path = export_comfyui_lora(network, settings, tmp_path / f"{arch}.safetensors")
    fresh = copy.deepcopy(bases[arch])
    patched = apply_comfyui_lora(fresh, path)
    assert sorted(patched) == sorted(lora_module_names(network))
    forward = CASES[arch].forward
    with torch.no_grad():
        expected, merged, base = forward(network), forward(fresh), forward(bases[arch])
    assert (expected - base).abs().max() > 1e-2  # the LoRA matters
    assert (merged - expected).abs().max() < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == [f"{arch}.safetensors"]  # no temp file left


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_keys_follow_comfyui_format(bases, arch, tmp_path):
    settings = LoraSettings(rank=4, alpha=8.0)
    network = _trained(bases, arch, settings)
    tensors = load_file(export_comfyui_lora(network, settings, tmp_path / "lora.safetensors"))
    assert all(re.fullmatch(CASES[arch].key_pattern, key) for key in tensors), sorted(tensors)[:5]
    rule = KEY_FORMATS[EXPORT_FORMATS[type(network).__name__]]
    stems = [rule.stem(name) for name in lora_module_names(network)]
    assert len(set(stems)) == len(stems) == CASES[arch].n_modules
    assert set(tensors) == {stem + suffix for stem in stems for suffix in (rule.down, rule.up, rule.alpha)}
    peft_state = lora_state_dict(network)
    for name, stem in zip(lora_module_names(network), stems):
        assert tensors[stem + rule.alpha].shape == () and tensors[stem + rule.alpha].item() == 8.0  # alpha, not rank
        assert torch.equal(tensors[stem + rule.down], peft_state[f"{name}.lora_A.weight"])
        assert torch.equal(tensors[stem + rule.up], peft_state[f"{name}.lora_B.weight"])


def test_metadata_round_trips(bases, tmp_path):
    settings = LoraSettings(rank=4, alpha=2.0)
    network = _trained(bases, "sd3", settings)
    extra = {
        "base_model": "tiny-sd3",
        "steps": 12,
        "rewards": ["jpeg_compressibility", "aesthetic"],
        "reward_weights": [0.7, 0.3],
        "group_size": 8,
        "prune_schedule": {"at_steps": [2, 5], "keep": [8, 4]},
        "note": "plain string",
    }
    metadata = read_lora_metadata(export_comfyui_lora(network, settings, tmp_path / "m.safetensors", extra))
    assert all(isinstance(v, str) for v in metadata.values())
    assert metadata["base_model"] == "tiny-sd3" and metadata["note"] == "plain string"
    for key in ("steps", "rewards", "reward_weights", "group_size", "prune_schedule"):
        assert json.loads(metadata[key]) == extra[key]
    assert metadata["progrpo_version"] == progrpo.__version__
    assert metadata["architecture"] == "SD3Transformer2DModel" and metadata["key_format"] == "diffusers"
    assert (metadata["rank"], metadata["ss_network_dim"]) == ("4", "4")
    assert float(metadata["alpha"]) == float(metadata["ss_network_alpha"]) == 2.0
    assert json.loads(metadata["target_modules"]) == sorted(DEFAULT_TARGETS["SD3Transformer2DModel"])
    with pytest.raises(ProGRPOConfigError, match="rank"):
        export_comfyui_lora(network, settings, tmp_path / "x.safetensors", {"rank": 99})
    with pytest.raises(ProGRPOConfigError, match=r"metadata\['bad'\]"):
        export_comfyui_lora(network, settings, tmp_path / "x.safetensors", {"bad": object()})


@pytest.mark.parametrize("arch", ["sd", "flux"])
def test_peft_folder_resumes_identical_weights(bases, arch, tmp_path):
    settings = LoraSettings(rank=4, alpha=8.0, dropout=0.1)
    network = _trained(bases, arch, settings)
    folder = save_peft_adapter(network, tmp_path / "adapter")
    save_peft_adapter(network, folder)  # overwriting an existing folder is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = read_peft_settings(folder)
    assert (saved.rank, saved.alpha, saved.dropout) == (4, 8.0, 0.1)
    expected = lora_state_dict(network)

    injected = copy.deepcopy(bases[arch])  # injected with another init, then loaded
    add_lora(injected, LoraSettings(rank=4, alpha=8.0, dropout=0.1, init_seed=123))
    load_peft_adapter(injected, folder)
    fresh = copy.deepcopy(bases[arch])  # not injected: the folder's settings inject it
    params = load_peft_adapter(fresh, folder)
    assert len(params) == 2 * CASES[arch].n_modules and all(p.requires_grad for p in params)
    for loaded in (injected, fresh):
        state = lora_state_dict(loaded)
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[key], expected[key]) for key in expected)

    other = copy.deepcopy(bases[arch])
    add_lora(other, LoraSettings(rank=2, alpha=8.0))
    with pytest.raises(ProGRPOConfigError, match="rank, alpha, targets"):
        load_peft_adapter(other, folder)


def test_load_lora_state_dict_rejects_missing_keys(bases):
    network = _trained(bases, "sd3", LoraSettings())
    state = lora_state_dict(network)
    state.pop(next(iter(state)))
    with pytest.raises(ProGRPOConfigError, match="missing"):
        load_lora_state_dict(network, state)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"target_modules": ()}, "target_modules"),
        ({"init_seed": "x"}, "init_seed"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ProGRPOConfigError, match=f"LoraSettings.{field}") as caught:
        LoraSettings(**kwargs)
    assert caught.value.field == f"lora.{field}"


def test_unknown_targets_list_available_linear_names(bases):
    network = copy.deepcopy(bases["sd"])
    with pytest.raises(ProGRPOConfigError, match=r"target_modules.*'to_qq'.*attn1\.to_q"):
        add_lora(network, LoraSettings(target_modules=("to_q", "to_qq")))
    with pytest.raises(ProGRPOConfigError, match="not Linear/Conv2d"):
        add_lora(network, LoraSettings(target_modules=("attn1",)))
    assert all(p.requires_grad for p in network.parameters())  # untouched: checks run before freezing
    with pytest.raises(ProGRPOConfigError, match="no default targets") as caught:
        LoraSettings().resolve_targets(torch.nn.Linear(2, 2))
    assert caught.value.field == "lora.target_modules"


def test_one_metadata_encoder_for_both_file_kinds():
    run = {"steps": 3, "spec": {"b": 1, "a": 2}, "path": PurePosixPath("/a"), "note": "text"}
    encoded = run_metadata(2, 4.0, run)  # the nodes' files: keys prefixed, key order kept, str() for the rest
    assert encoded == {"progrpo": "1", "rank": "2", "alpha": "4.0", "progrpo_steps": "3",
                       "progrpo_spec": '{"b": 1, "a": 2}', "progrpo_path": '"/a"', "progrpo_note": "text"}
    assert encode_metadata({"spec": {"b": 1, "a": 2}}) == {"spec": '{"a": 2, "b": 1}'}  # the export's: sorted keys
    with pytest.raises(ProGRPOConfigError, match=r"metadata\['bad'\]"):
        encode_metadata({"bad": object()})


def test_apply_lists_unmapped_keys(bases, tmp_path):
    settings = LoraSettings()
    sd3_file = export_comfyui_lora(_trained(bases, "sd3", settings), settings, tmp_path / "sd3.safetensors")
    flux = copy.deepcopy(bases["flux"])
    before = {k: v.clone() for k, v in flux.state_dict().items()}
    with pytest.raises(ProGRPOConfigError, match=r"unmapped keys \['transformer\.transformer_blocks\.1"):
        apply_comfyui_lora(flux, sd3_file)  # SD3 has a second joint block, the tiny Flux does not
    assert all(torch.equal(v, before[k]) for k, v in flux.state_dict().items())  # nothing merged
    tensors = load_file(sd3_file)
    tensors["transformer.not_a_module.lora_A.weight"] = torch.zeros(4, 64)
    save_file(tensors, tmp_path / "extra.safetensors")
    with pytest.raises(ProGRPOConfigError, match="not_a_module"):
        apply_comfyui_lora(copy.deepcopy(bases["sd3"]), tmp_path / "extra.safetensors")
    with pytest.raises(ProGRPOConfigError, match=r"\.safetensors"):
        export_comfyui_lora(_trained(bases, "sd3", settings), settings, tmp_path / "lora.pt")


def test_diffusers_loads_the_kohya_file_like_our_apply(bases, tmp_path):
    """diffusers' kohya reader (alpha != rank) and our ComfyUI-style merge agree."""
    settings = LoraSettings(rank=4, alpha=8.0)
    path = export_comfyui_lora(_trained(bases, "sd", settings), settings, tmp_path / "kohya.safetensors")
    merged = copy.deepcopy(bases["sd"])
    apply_comfyui_lora(merged, path)
    pipeline = tiny_sd_pipeline(seed=0)
    pipeline.load_lora_weights(str(path))
    (config,) = pipeline.unet.peft_config.values()
    assert (config.r, config.lora_alpha) == (4, 8.0)
    with torch.no_grad():
        assert (_forward_sd(pipeline.unet) - _forward_sd(merged)).abs().max() < 1e-4


def test_export_dtype_keeps_alpha_float32(bases, tmp_path):
    settings = LoraSettings(rank=2, alpha=3.0)
    network = _trained(bases, "flux", settings)
    tensors = load_file(export_comfyui_lora(network, settings, tmp_path / "h.safetensors", dtype=torch.float16))
    assert {t.dtype for k, t in tensors.items() if not k.endswith(".alpha")} == {torch.float16}
    assert {t.dtype for k, t in tensors.items() if k.endswith(".alpha")} == {torch.float32}
    with pytest.raises(ProGRPOConfigError, match="differ from the adapter"):
        export_comfyui_lora(network, LoraSettings(rank=2, alpha=2.0), tmp_path / "x.safetensors")
