"""Reading released reward files safely: pickles through ``torch.load(weights_only=True)`` only,
state dicts checked to hold tensors, tokenizer / processor folders checked for their files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ...errors import ProGRPOConfigError

#: tokenizer files: any of these sets makes a usable tokenizer folder.
TOKENIZER_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",))
#: every tokenizer / processor file copied into a converted folder when present.
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "vocab.txt", "added_tokens.json", "preprocessor_config.json", "processor_config.json")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_pickle(file: Path, what: str) -> Any:
    """``torch.load(file, weights_only=True)``: tensors and plain containers only, or an error naming the file."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises pickle.UnpicklingError, RuntimeError, EOFError...)
        if "Weights only load failed" in str(error):
            line = next((line for line in str(error).splitlines() if "WeightsUnpickler error" in line), "")
            reason = line.replace("WeightsUnpickler error:", "").split(". Please")[0].strip() + "."
            raise ProGRPOConfigError(
                f"{what}: '{file}' holds objects other than tensors and plain containers, which are not unpickled "
                f"(they could run code): {reason.strip()} Re-save only its state dict with "
                "torch.save(model.state_dict(), path), or get the released file again."
            ) from None
        raise ProGRPOConfigError(
            f"{what}: '{file}' could not be read as a torch file ({str(error).splitlines()[0]}); it is truncated or "
            "not a PyTorch checkpoint: download it again and check its size."
        ) from None


def read_weights(file: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a pickle (unwrapping ``{"state_dict": ...}`` and ``module.``)."""
    if not file.is_file():
        raise ProGRPOConfigError(f"{what}: '{file}' is not a file; give the released weights file.")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise ProGRPOConfigError(
                f"{what}: '{file}' is not a readable safetensors file ({error}); it is truncated or damaged: "
                "download it again."
            ) from None
    loaded = read_pickle(file, what)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded:
        raise ProGRPOConfigError(
            f"{what}: '{file}' holds {type(loaded).__name__}, not a state dict of tensors; give the released "
            "checkpoint (a dict of tensors, or a dict with 'state_dict')."
        )
    tensors = {str(k).removeprefix("module."): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(loaded):
        others = sorted(str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor))[:5]
        raise ProGRPOConfigError(
            f"{what}: '{file}' is not a state dict: entries {others} are not tensors; give the released checkpoint."
        )
    return tensors


def wrong_kind(what: str, file: Path, expected: str, missing: list[str], unexpected: list[str]) -> ProGRPOConfigError:
    """The error for weights of another model: names the file, a few missing/unexpected keys and the fix."""
    return ProGRPOConfigError(
        f"{what}: '{file}' is not {expected} (missing keys {missing[:4]}, unexpected keys {unexpected[:4]}); "
        "check that the file and the KIND match (python -m progrpo convert-reward --help lists the kinds)."
    )


def read_json_file(file: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``file``; errors name it."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ProGRPOConfigError(f"{what}: '{file}' is not readable JSON ({error}); fix or replace the file.") from None
    if not isinstance(data, dict):
        raise ProGRPOConfigError(f"{what}: '{file}' must hold a JSON object, got {type(data).__name__}.")
    return data


def check_processor(folder: Path | None, what: str, expected: str) -> Path:
    """``folder`` if it holds tokenizer files (one of :data:`TOKENIZER_SETS`), else an error naming it and the fix."""
    if folder is None:
        raise ProGRPOConfigError(f"{what}: no processor folder given; pass --processor {expected}.")
    if not folder.is_dir():
        raise ProGRPOConfigError(f"{what}: processor '{folder}' is not a folder; pass --processor {expected}.")
    if not any(all((folder / name).is_file() for name in names) for names in TOKENIZER_SETS):
        wanted = " or ".join(" + ".join(names) for names in TOKENIZER_SETS)
        raise ProGRPOConfigError(
            f"{what}: folder '{folder}' is missing its processor: no tokenizer files ({wanted}); pass --processor "
            f"{expected}."
        )
    return folder


def copy_processor(folder: Path, work: Path) -> list[str]:
    """Copy the tokenizer / processor files of ``folder`` into ``work``; return their names."""
    copied = []
    for name in PROCESSOR_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, work / name)
            copied.append(name)
    return copied


def write_image_processor(work: Path, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Write a CLIPImageProcessor ``preprocessor_config.json``: bicubic resize of the short side to
    ``image_size``, centre crop, normalisation with ``mean``/``std`` (open_clip's eval transform)."""
    from . import write_json

    write_json(work / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(mean),
        "image_std": list(std), "do_convert_rgb": True,
    })
