"""A checkpoint write that fails (full disk, read-only folder) leaves the previous checkpoint intact and
loadable, ``latest`` unchanged, no temp behind, and stops with a ProGRPOCheckpointError naming the folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

import progrpo.atomic
import progrpo.train.checkpoint as checkpoint_module
from progrpo.errors import ProGRPOCheckpointError
from progrpo.train import Trainer
from testkit.training_setup import digits_config, lora_of, temp_entries, tree_hashes


def _run_until_the_third_checkpoint_fails(tmp_path: Path, before_third) -> tuple[ProGRPOCheckpointError, dict]:
    """Train with a checkpoint per iteration; ``before_third()`` runs once iteration 3 completed, before its
    checkpoint (iter_2 is then the newest). Returns the error and the hashes of checkpoints/ at that moment."""
    run = tmp_path / "run"
    snapshot: dict[str, dict[str, str]] = {}

    def progress(done: int, total: int) -> None:
        if done == 3:
            snapshot["before"] = tree_hashes(run / "checkpoints")
            before_third()

    with pytest.raises(ProGRPOCheckpointError) as caught:
        Trainer.from_run(digits_config(run, iterations=5)).run(progress=progress)
    return caught.value, snapshot["before"]


def _assert_previous_intact(tmp_path: Path, before: dict[str, str]) -> None:
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text().strip() == "iter_2"
    after = tree_hashes(root)
    assert {k: v for k, v in after.items() if not k.startswith("iter_3")} == before, "an earlier checkpoint changed"
    assert temp_entries(root) == [], "a temp file or folder was left behind"
    verifier = Trainer.from_run(digits_config(tmp_path / "verify"))
    lora_of(root / "iter_2", verifier)  # loads through the real resume path
    assert verifier.iteration == 2


def _assert_message(error: ProGRPOCheckpointError, tmp_path: Path, cause: type[OSError], code: int) -> None:
    message = str(error)
    for fragment in (str(tmp_path / "run" / "checkpoints"), "'iter_3'", "'iter_2'", "intact", "--resume latest"):
        assert fragment in message, fragment
    assert isinstance(error.__cause__, cause) and error.__cause__.errno == code


def test_disk_full_while_writing_the_state(tmp_path: Path, monkeypatch):
    real_save = torch.save
    armed = []

    def full_disk_save(obj, path, *args, **kwargs):
        if armed:  # write part of the file, then fail as a full disk does
            Path(path).write_bytes(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk_save)
    error, before = _run_until_the_third_checkpoint_fails(tmp_path, lambda: armed.append(1))
    _assert_message(error, tmp_path, OSError, errno.ENOSPC)
    assert "No space left on device" in str(error) and "Free disk space" in str(error)
    assert not (tmp_path / "run" / "checkpoints" / "iter_3").exists()
    _assert_previous_intact(tmp_path, before)


def test_disk_full_while_replacing_latest(tmp_path: Path, monkeypatch):
    real_fsync, real_replace = os.fsync, progrpo.atomic.replace_folder
    armed = []

    def replace_then_arm(temp: Path, folder: Path) -> None:
        real_replace(temp, folder)
        if folder.name == "iter_3":
            armed.append(1)  # the folder is in place; the next fsync (of latest's temp file) fails

    def full_disk_fsync(fd: int) -> None:
        if armed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(progrpo.atomic, "replace_folder", replace_then_arm)
    monkeypatch.setattr(progrpo.atomic.os, "fsync", full_disk_fsync)
    error, before = _run_until_the_third_checkpoint_fails(tmp_path, lambda: None)
    monkeypatch.setattr(progrpo.atomic.os, "fsync", real_fsync)
    _assert_message(error, tmp_path, OSError, errno.ENOSPC)
    _assert_previous_intact(tmp_path, before)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_checkpoints_folder(tmp_path: Path):
    root = tmp_path / "run" / "checkpoints"
    try:
        error, before = _run_until_the_third_checkpoint_fails(tmp_path, lambda: root.chmod(0o555))
    finally:
        root.chmod(0o755)
    _assert_message(error, tmp_path, PermissionError, errno.EACCES)
    assert "make the folder writable" in str(error)
    _assert_previous_intact(tmp_path, before)
