"""Every file the repository's code and docs point a reader at is in the repository.

Docstrings and docs once cited research notes that never shipped (the fidelity review, the design
notes, ``../shared/research/...``): a newcomer following them finds nothing. Checked here:
in *.py, *.sh and *.md, every ``*.md`` named and every path under one of the repository's own
folders. Generated files (git-ignored outputs such as ``bench/results/*.json``) and placeholders in
usage lines (``workflows/NAME.api.json``) are fine; files of other projects are named without a
repository folder in front (``comfy/ldm/flux/layers.py``) and are not checked.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("bench", "docs", "nodes", "progrpo", "scripts", "tests", "workflows")
PLACEHOLDERS = {"NAME", "CONFIG", "DIR", "TREE", "ABSOLUTE", "PORT"}
REFERENCE = re.compile(r"(?<![\w/.:@-])((?:\.\.?/)*[\w.-]+(?:/[\w.-]+)*\.[a-z]+)\b")
URL_BEFORE = re.compile(r"(https?://|www\.)\S*$")


def _repository_files() -> list[str]:
    return subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.splitlines()


def _checked(reference: str) -> bool:
    """Whether ``reference`` names a file this repository should hold."""
    parts = PurePosixPath(reference).parts
    if PLACEHOLDERS & {part.split(".")[0] for part in parts}:
        return False
    return reference.endswith(".md") or parts[0] in FOLDERS


def _resolves(reference: str, referrer: str, files: set[str], names: set[str]) -> bool:
    """Found from the repository root, from the referring file's folder, or (a bare *.md name) anywhere."""
    for base in (REPO, (REPO / referrer).parent):
        path = (base / reference).resolve()
        if path.is_relative_to(REPO) and str(path.relative_to(REPO)) in files | {"."}:
            return True
        if path.is_relative_to(REPO) and any(name.startswith(f"{path.relative_to(REPO)}/") for name in files):
            return True
    if "/" not in reference and reference in names:
        return True
    if reference.startswith("../"):
        return False
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", reference], cwd=REPO,
                             capture_output=True, check=False)
    return ignored.returncode == 0  # a generated output


def dangling_references() -> list[str]:
    """``file:line: reference`` for each reference to a file the repository does not hold."""
    files = set(_repository_files())
    names = {PurePosixPath(name).name for name in files}
    found = []
    for referrer in sorted(files):
        if not referrer.endswith((".py", ".sh", ".md")) or not (REPO / referrer).is_file():
            continue
        for number, line in enumerate((REPO / referrer).read_text(errors="replace").splitlines(), 1):
            for match in REFERENCE.finditer(line):
                reference = match.group(1)
                if URL_BEFORE.search(line[: match.start()]) or not _checked(reference):
                    continue
                if not _resolves(reference, referrer, files, names):
                    found.append(f"{referrer}:{number}: {reference}")
    return found


def test_every_file_a_docstring_or_doc_names_is_in_the_repository():
    dangling = dangling_references()
    assert not dangling, "references to files not in the repository:\n" + "\n".join(dangling)
