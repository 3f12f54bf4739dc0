"""The atomic writers: a file or folder is replaced whole or not at all, and no temp is left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from progrpo.atomic import atomic_save_safetensors, atomic_write_text, folder_atomically, write_atomically


def _names(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


def test_a_failed_file_write_keeps_the_previous_file(tmp_path: Path):
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "first")
    with pytest.raises(RuntimeError, match="disk"), write_atomically(path) as temp:
        temp.write_text("half")
        raise RuntimeError("disk gone")
    assert path.read_text() == "first" and _names(path.parent) == ["a.txt"]
    atomic_write_text(path, "second")
    assert path.read_text() == "second" and _names(path.parent) == ["a.txt"]


def test_files_get_the_mode_of_an_ordinary_file(tmp_path: Path):
    umask = os.umask(0)
    os.umask(umask)
    path = atomic_write_text(tmp_path / "a.txt", "x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_safetensors_with_metadata(tmp_path: Path):
    path = atomic_save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors", {"key": "value"})
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"key": "value"} and torch.equal(handle.get_tensor("w"), torch.ones(2))
    assert _names(tmp_path) == ["w.safetensors"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path: Path):
    folder = tmp_path / "run"
    with folder_atomically(folder) as temp:
        (temp / "a").write_text("1")
    with pytest.raises(RuntimeError), folder_atomically(folder) as temp:
        (temp / "b").write_text("2")
        raise RuntimeError("killed")
    assert _names(folder) == ["a"] and _names(tmp_path) == ["run"]
    with folder_atomically(folder) as temp:
        (temp / "b").write_text("2")
    assert _names(folder) == ["b"] and _names(tmp_path) == ["run"]
