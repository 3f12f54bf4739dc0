"""Atomic writes: a file or folder appears complete or not at all (checkpoints, LoRA files).

Everything is written to a temp name in the same folder, fsynced, then renamed into place, so a
crash or a full disk mid-write leaves the previous version intact.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (directories: best effort, some platforms cannot)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _fsync_file(path: Path) -> None:
    """fsync a written file; unlike :func:`fsync_path` a failure raises (a full disk can surface only here)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextlib.contextmanager
def write_atomically(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``path`` to write; on success it is fsynced and renamed over ``path``.

    On any error the temp file is deleted and ``path`` keeps its previous content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # created like an ordinary file (mode from the umask), exclusively: two writers never share a temp
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temp
        _fsync_file(temp)
        os.replace(temp, path)  # atomic on one filesystem: readers never see a partial file
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to a temp file next to ``path``, fsync it and rename it over ``path``."""
    with write_atomically(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> Path:
    """``safetensors.torch.save_file`` through :func:`write_atomically`; returns ``path``."""
    from safetensors.torch import save_file

    with write_atomically(path) as temp:
        save_file(dict(tensors), str(temp), metadata=None if metadata is None else dict(metadata))
    return Path(path)


@contextlib.contextmanager
def folder_atomically(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder next to ``folder`` to fill; on success it replaces ``folder`` (:func:`replace_folder`).

    On any error the temp folder is deleted and ``folder`` keeps its previous content.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield temp
        replace_folder(temp, folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def replace_folder(temp: Path, folder: Path) -> None:
    """Rename the finished ``temp`` folder to ``folder``; an existing one is moved aside, then deleted."""
    backup = None
    if folder.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        backup.rmdir()
        os.replace(folder, backup)
    os.replace(temp, folder)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a leftover of the writers above (``.x.<random>.tmp``, ``.x.tmp-<random>``, ``.x.old-<random>``)."""
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name or ".old-" in name)


def remove_stale_temps(*folders: Path) -> list[Path]:
    """Delete the temp files/folders a killed writer left in ``folders`` (call only when no writer runs there).

    Returns what was removed. A crash mid-write leaves the previous version in place and its temp
    beside it; nothing reads temps, so they only waste disk.
    """
    removed = []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for entry in Path(folder).iterdir():
            if is_temp_name(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed
