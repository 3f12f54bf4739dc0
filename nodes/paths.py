"""The one gate every file or folder name a node input carries goes through: it must stay inside a root.

Node inputs arrive over HTTP from anyone who can reach the server, so a name is never trusted as a
path: ``../``, absolute paths, NUL bytes and symlinks that lead out of the root are refused with an
error naming the input. Everything else (does the file exist, is it the right kind) stays with the
caller, which knows what the file is for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from progrpo.errors import ProGRPOConfigError

#: longest accepted name; far past any real file name, short enough that messages stay readable.
MAX_NAME = 1024


def resolve_inside(roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], name: object,
                   input_name: str, *, must_exist: bool = True) -> Path:
    """``name`` resolved (symlinks followed) inside the first root holding it; raises naming ``input_name``.

    ``roots`` is one folder or several (ComfyUI folder lists: the first that holds ``name`` wins).
    With ``must_exist`` off, the path inside the first root is returned whether or not it exists
    (for outputs). A root may itself be a symlink (a models folder moved to another disk): only
    where ``name`` leads *from* the root is checked.
    """
    folders = [Path(roots)] if isinstance(roots, (str, os.PathLike)) else [Path(root) for root in roots]
    where = " or ".join(str(folder) for folder in folders)
    if not isinstance(name, str):
        raise ProGRPOConfigError(f"{input_name}: {name!r} is not a name; give a file name inside {where}.")
    if "\x00" in name:
        raise ProGRPOConfigError(f"{input_name}: the name contains a NUL byte; give a plain file name inside {where}.")
    text = name.strip()
    if not text or len(text) > MAX_NAME:
        raise ProGRPOConfigError(
            f"{input_name}: {_short(name)} is {'empty' if not text else 'too long'}; give a file name inside {where}."
        )
    if os.path.isabs(text) or text.startswith("~") or ".." in Path(text.replace("\\", "/")).parts:
        raise ProGRPOConfigError(
            f"{input_name}: {_short(text)} points outside {where}; give a name relative to that folder "
            "(no absolute path, no '..', no '~')."
        )
    first: Path | None = None
    for folder in folders:
        root = folder.resolve()
        try:
            path = (root / text).resolve()
        except (OSError, RuntimeError, ValueError) as error:  # symlink loops, odd names
            raise ProGRPOConfigError(f"{input_name}: {_short(text)} cannot be resolved ({error}).") from None
        if not path.is_relative_to(root):
            raise ProGRPOConfigError(
                f"{input_name}: {_short(text)} leads outside {folder} (a symlink out of the folder); put the "
                "file itself inside the folder."
            )
        first = first or path
        try:
            if path.exists():
                return path
        except OSError as error:  # a name the file system refuses (too long, ...)
            raise ProGRPOConfigError(
                f"{input_name}: {_short(text)} is not a usable file name ({error.strerror}); give a shorter plain name."
            ) from None
    if must_exist or first is None:
        raise ProGRPOConfigError(f"{input_name}: {_short(text)} was not found in {where}; put it there.")
    return first


def _short(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:77] + "...")
