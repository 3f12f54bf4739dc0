"""Export the trained LoRA as a ``.safetensors`` file that ComfyUI's stock LoraLoader maps fully.

Key formats (one registry entry each, chosen by network class in ``EXPORT_FORMATS``):

* ``kohya`` (SD1.x/SDXL ``UNet2DConditionModel``)::

      lora_unet_<module path, "." -> "_">.lora_down.weight   [rank, in]
      lora_unet_<module path, "." -> "_">.lora_up.weight     [out, rank]
      lora_unet_<module path, "." -> "_">.alpha              [] float32 = settings.alpha

  ComfyUI maps ``"lora_unet_" + diffusers_key.replace(".", "_")`` for UNets but not peft-style
  ``unet.<module>.lora_A`` keys, so UNet LoRAs must be kohya. diffusers'
  ``convert_state_dict_to_kohya`` is not used: it writes alpha = rank whatever ``lora_alpha`` is.

* ``diffusers`` (SD3 / Flux transformers)::

      transformer.<module path>.lora_A.weight   [rank, in]
      transformer.<module path>.lora_B.weight   [out, rank]
      transformer.<module path>.alpha           [] float32 = settings.alpha

  ComfyUI maps ``transformer.<diffusers module>`` for SD3 and Flux (the fused-qkv slices
  included) and accepts ``lora_A/lora_B``.

ComfyUI scales ``up @ down`` by ``alpha / rank`` only when an ``.alpha`` key exists (else by 1),
so the alpha tensors are what makes the file reproduce peft's ``alpha / rank`` scale.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_save_safetensors
from ..errors import ProGRPOConfigError
from ..log import logger
from .config import LoraSettings, network_class_name
from .inject import DEFAULT_ADAPTER, SUPPORTED_LAYERS, _require_adapter, lora_state_dict
from .metadata import encode_metadata


@dataclass(frozen=True)
class KeyFormat:
    """How one LoRA module is named in a file: ``stem(module) + down/up/alpha suffix``."""

    prefix: str
    underscores: bool  # kohya flattens the module path with "_" (ComfyUI inverts it by lookup)
    down: str
    up: str
    alpha: str = ".alpha"

    def stem(self, module_name: str) -> str:
        """File key stem of the module at ``module_name`` (a diffusers module path)."""
        return self.prefix + (module_name.replace(".", "_") if self.underscores else module_name)


#: key format name -> naming rule.
KEY_FORMATS: dict[str, KeyFormat] = {
    "kohya": KeyFormat(prefix="lora_unet_", underscores=True, down=".lora_down.weight", up=".lora_up.weight"),
    "diffusers": KeyFormat(prefix="transformer.", underscores=False, down=".lora_A.weight", up=".lora_B.weight"),
}

#: network class name -> key format its ComfyUI loader maps.
EXPORT_FORMATS: dict[str, str] = {
    "UNet2DConditionModel": "kohya",
    "SD3Transformer2DModel": "diffusers",
    "FluxTransformer2DModel": "diffusers",
}

#: metadata keys the exporter owns; callers may only override ``base_model``.
RESERVED_METADATA = (
    "progrpo_version",
    "architecture",
    "key_format",
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "ss_network_dim",
    "ss_network_alpha",
)


def _build_metadata(
    network: torch.nn.Module, settings: LoraSettings, key_format: str, targets: tuple[str, ...], extra: dict[str, Any]
) -> dict[str, str]:
    from .. import __version__

    clashes = sorted(set(extra) & set(RESERVED_METADATA))
    if clashes:
        raise ProGRPOConfigError(
            f"export_comfyui_lora metadata keys {clashes} are written by the exporter itself; rename them."
        )
    config = getattr(network, "config", None)
    default_base = (config.get("_name_or_path") if hasattr(config, "get") else None) or "unknown"
    alpha_text = repr(settings.alpha)
    owned = {
        "progrpo_version": __version__,
        "architecture": network_class_name(network),
        "key_format": key_format,
        "rank": str(settings.rank),
        "alpha": alpha_text,
        "dropout": repr(settings.dropout),
        "target_modules": json.dumps(list(targets)),
        # kohya-ss / A1111 / Civitai tools read these two.
        "ss_network_dim": str(settings.rank),
        "ss_network_alpha": alpha_text,
    }
    return {"base_model": default_base, **encode_metadata(extra), **owned}


def _export_key_format(network: torch.nn.Module, settings: LoraSettings, path: Path, adapter_name: str) -> str:
    """The key format ``network`` exports in, after checking the path, the class and the adapter's settings."""
    _require_adapter(network, adapter_name)
    if path.suffix != ".safetensors":
        raise ProGRPOConfigError(
            f"LoRA export path {str(path)!r} must end with .safetensors (ComfyUI lists only those)."
        )
    class_name = network_class_name(network)
    if class_name not in EXPORT_FORMATS:
        raise ProGRPOConfigError(
            f"no ComfyUI LoRA key format for network class {class_name!r}; supported: {sorted(EXPORT_FORMATS)}."
        )
    peft_config = network.peft_config[adapter_name]
    if peft_config.r != settings.rank or float(peft_config.lora_alpha) != settings.alpha:
        raise ProGRPOConfigError(
            f"export settings (rank {settings.rank}, alpha {settings.alpha}) differ from the adapter's "
            f"(rank {peft_config.r}, alpha {peft_config.lora_alpha}); pass the LoraSettings used in add_lora."
        )
    return EXPORT_FORMATS[class_name]


def _file_tensors(state: dict[str, torch.Tensor], key_format: str, alpha: torch.Tensor,
                  dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """peft ``lora_A``/``lora_B`` weights renamed to ``key_format`` (down, up, alpha per module), on the CPU."""
    rule = KEY_FORMATS[key_format]
    tensors: dict[str, torch.Tensor] = {}
    for key, down in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        stem = rule.stem(module)
        if stem + rule.down in tensors:
            raise ProGRPOConfigError(f"two LoRA modules map to the same {key_format} key {stem!r}; rename targets.")
        up = state[f"{module}.lora_B.weight"]
        tensors[stem + rule.down] = (down if dtype is None else down.to(dtype)).contiguous().cpu()
        tensors[stem + rule.up] = (up if dtype is None else up.to(dtype)).contiguous().cpu()
        tensors[stem + rule.alpha] = alpha.clone()
    return tensors


def export_comfyui_lora(
    network: torch.nn.Module,
    settings: LoraSettings,
    path: str | os.PathLike[str],
    metadata: dict[str, Any] | None = None,
    adapter_name: str = DEFAULT_ADAPTER,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write adapter ``adapter_name`` of ``network`` as a ComfyUI LoRA file (see the module doc).

    Args:
        network: an injected network (``add_lora``) whose class is in ``EXPORT_FORMATS``.
        settings: the settings the adapter was built with (checked against peft's config).
        path: destination, ending in ``.safetensors``; parent folders are created.
        metadata: extra run information (steps, rewards, group size...); non-strings are JSON-encoded.
            ``base_model`` here overrides the network's ``_name_or_path``.
        dtype: dtype of the up/down tensors (default: as trained); alpha is always float32.

    Returns:
        The written path.
    """
    path = Path(path)
    key_format = _export_key_format(network, settings, path, adapter_name)
    state = lora_state_dict(network, adapter_name)
    tensors = _file_tensors(state, key_format, torch.tensor(settings.alpha, dtype=torch.float32), dtype)
    peft_config = network.peft_config[adapter_name]
    targets = tuple(sorted(peft_config.target_modules)) if settings.target_modules is None else settings.target_modules
    file_metadata = _build_metadata(network, settings, key_format, targets, dict(metadata or {}))
    atomic_save_safetensors(tensors, path, file_metadata)
    logger.info("exported %d LoRA modules (%s keys) to %s", len(tensors) // 3, key_format, path)
    return path


def read_lora_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a LoRA ``.safetensors`` file (``{}`` when it has none)."""
    from safetensors import safe_open

    _check_lora_file(path)
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _check_lora_file(path: str | os.PathLike[str]) -> None:
    """Refuse a missing or non-safetensors LoRA file (pickled .pt/.ckpt files can run code: never loaded)."""
    if Path(path).suffix.lower() != ".safetensors":
        raise ProGRPOConfigError(
            f"LoRA file {str(path)!r} is not a .safetensors file; only safetensors LoRAs are loaded (pickled "
            ".pt/.ckpt files can run code). Convert it with safetensors.torch.save_file."
        )
    if not Path(path).is_file():
        raise ProGRPOConfigError(f"LoRA file {str(path)!r} does not exist; check the path.")


#: file key suffix -> role; both formats (ComfyUI accepts either on any model).
_SUFFIX_ROLES: dict[str, str] = {
    **{rule.down: "down" for rule in KEY_FORMATS.values()},
    **{rule.up: "up" for rule in KEY_FORMATS.values()},
    ".alpha": "alpha",
}


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in _SUFFIX_ROLES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _weight_delta(stem: str, module: str, parts: dict[str, torch.Tensor], weight: torch.Tensor,
                  strength: float) -> torch.Tensor:
    """ComfyUI's LoRA delta [weight.shape] for ``module`` from its file tensors ``up``, ``down`` (and ``alpha``)."""
    up, down = parts["up"].flatten(1).float(), parts["down"].flatten(1).float()
    if up.shape[0] != weight.shape[0] or down.shape[1] != weight[0].numel() or up.shape[1] != down.shape[0]:
        raise ProGRPOConfigError(
            f"LoRA {stem!r} shapes up {tuple(parts['up'].shape)} / down {tuple(parts['down'].shape)} do not fit "
            f"weight {tuple(weight.shape)} of {module!r}; use the base model the LoRA was trained on."
        )
    # ComfyUI scales by alpha/rank only when an alpha key exists.
    scale = parts["alpha"].item() / down.shape[0] if "alpha" in parts else 1.0
    return (strength * scale * (up @ down)).reshape(weight.shape)


def apply_comfyui_lora(network: torch.nn.Module, path: str | os.PathLike[str], strength: float = 1.0) -> list[str]:
    """Merge a file written by ``export_comfyui_lora`` into a fresh base ``network``, in place.

    Emulates ComfyUI's LoRA math per module: ``W += strength * s * (up.flatten(1) @ down.flatten(1))``
    reshaped to ``W.shape``, with ``s = alpha / rank`` when the ``.alpha`` key exists, else 1
    (``rank = down.shape[0]``). Keys are mapped back to modules by generating every module's
    kohya and diffusers stem, as ComfyUI's key map does. Nothing is modified unless every key maps.

    Returns:
        The module paths that were patched, in file order.
    """
    from safetensors import safe_open

    if getattr(network, "_hf_peft_config_loaded", False):
        raise ProGRPOConfigError(
            "apply_comfyui_lora needs a fresh base network without peft adapters; build a new one."
        )
    _check_lora_file(path)
    layers = {name: m for name, m in network.named_modules() if isinstance(m, SUPPORTED_LAYERS)}
    stems = {rule.stem(name): name for rule in KEY_FORMATS.values() for name in layers}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unmapped: list[str] = []
    with safe_open(str(path), framework="pt") as handle:
        names: list[str] = list(handle.keys())  # safe_open handles are not iterable
        for key in names:
            split = _split_key(key)
            if split is None or split[0] not in stems:
                unmapped.append(key)
                continue
            groups.setdefault(split[0], {})[split[1]] = handle.get_tensor(key)
    incomplete = sorted(stem for stem, parts in groups.items() if not {"up", "down"} <= set(parts))
    if unmapped or incomplete:
        raise ProGRPOConfigError(
            f"LoRA file {str(path)!r} does not fit {network_class_name(network)}: unmapped keys {unmapped[:10]} "
            f"({len(unmapped)} in all), modules without both up and down {incomplete[:10]}; export it from "
            f"a network of the same architecture."
        )
    deltas = {stems[stem]: _weight_delta(stem, stems[stem], parts, layers[stems[stem]].weight, strength)
              for stem, parts in groups.items()}
    with torch.no_grad():
        for name, delta in deltas.items():
            weight = layers[name].weight
            weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
    return list(deltas)
