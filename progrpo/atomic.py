"""Atomic writes: a file or folder appears complete or not at all (checkpoints, LoRA files).

Everything is written to a temp name in the same folder, fsynced, then renamed into place, so a
crash or a full disk mid-write leaves the previous version intact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


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


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temp file next to ``path``, fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


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
