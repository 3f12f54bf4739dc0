"""A virtual environment holding exactly the run-time closure of a set of requirements, in seconds.

Installing ComfyUI's requirements for real (torch and its CUDA libraries, ~5 GB) would add minutes to
the test command. The distributions are already installed in the project's venv, so the fresh venv
gets symbolic links to exactly the files of the distributions in the dependency closure, resolved
from their installed metadata (Requires-Dist with markers and extras evaluated; files from RECORD):
whatever is outside the closure (pytest, comfy-cli, scikit-learn, the editable progrpo) is not
importable there.
"""

from __future__ import annotations

import re
import sysconfig
import venv
from collections.abc import Iterable
from importlib.metadata import Distribution, distributions
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path: Path) -> list[str]:
    """The requirement specifiers of a requirements file (comments, blank lines and options dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def installed_distributions(site_packages: Path) -> dict[str, Distribution]:
    """The distributions installed in ``site_packages``, by canonical name."""
    return {canonical_name(dist.metadata["Name"]): dist for dist in distributions(path=[str(site_packages)])}


def _applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def dependency_closure(requirements: Iterable[str], installed: dict[str, Distribution]) -> tuple[set[str], set[str]]:
    """(names of the installed distributions the requirements need, names needed but not installed)."""
    pending = [Requirement(line) for line in requirements]
    needed: set[str] = set()
    missing: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        name, extras = canonical_name(requirement.name), frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        if name not in installed:
            missing.add(name)
            continue
        needed.add(name)
        for line in installed[name].requires or []:
            nested = Requirement(line)
            if _applies(nested, extras):
                pending.append(nested)
    return needed, missing


def _files(dist: Distribution) -> list[PurePosixPath]:
    """The dist's files inside site-packages (RECORD entries such as ../../bin/x are scripts, not imports)."""
    if dist.files is None:
        raise RuntimeError(f"{dist.metadata['Name']} has no RECORD; cannot tell its files")
    return [PurePosixPath(str(path)) for path in dist.files if not str(path).startswith("..")]


def link_closure(names: set[str], installed: dict[str, Distribution], source: Path, target: Path) -> None:
    """Link the files of ``names`` from site-packages ``source`` into site-packages ``target``.

    A top-level entry no distribution outside the closure shares is linked whole; a shared one (a
    namespace folder such as ``nvidia/``) is made a real folder and its closure files linked one by one.
    """
    foreign = {path.parts[0] for name, dist in installed.items() if name not in names for path in _files(dist)}
    for name in sorted(names):
        for path in _files(installed[name]):
            top = path.parts[0]
            link = target / (path if top in foreign else top)
            if not link.exists() and not link.is_symlink() and (source / link.relative_to(target)).exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source / link.relative_to(target))


def create_runtime_venv(folder: Path, requirement_files: Iterable[Path], extra: Iterable[str] = ()) -> Path:
    """A venv in ``folder`` with the closure of the files' requirements plus ``extra``; its python.

    Raises RuntimeError naming a directly required distribution that is not installed here.
    """
    source = Path(sysconfig.get_paths()["purelib"])
    installed = installed_distributions(source)
    direct = [line for path in requirement_files for line in requirement_lines(path)] + list(extra)
    needed, missing = dependency_closure(direct, installed)
    absent = {canonical_name(Requirement(line).name) for line in direct} & missing
    if absent:
        raise RuntimeError(f"required but not installed in {source}: {sorted(absent)}")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
    python = folder / "bin" / "python"
    target = folder / source.relative_to(Path(sysconfig.get_paths()["data"]))
    link_closure(needed, installed, source, target)
    return python
