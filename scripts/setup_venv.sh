#!/usr/bin/env bash
# Create the project's virtual environment (.venv) when missing and install what it needs.
# Idempotent: a second run only checks. Usage: scripts/setup_venv.sh [extra ...]  (e.g. test)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch is pinned for the project's own venv to the release ComfyUI's requirements resolve to here
# (scripts/install_comfyui.sh pins the same), so it is installed once and never drifts;
# set PROGRPO_TORCH (e.g. "torch==2.14.1" or "torch") to choose another.
TORCH_SPEC=${PROGRPO_TORCH:-torch==2.14.1}
extras=$(IFS=,; echo "$*")
# pip without this machine's local-mirror "WARNING: Location ... is ignored" noise, keeping its exit status.
pip_quiet() { .venv/bin/python -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
  pip_quiet install --quiet --upgrade pip
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  pip_quiet install --quiet "$TORCH_SPEC"
fi
stamp=".venv/.progrpo-installed-${extras:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing comfyui-progrpo${extras:+[$extras]} (editable)"
  pip_quiet install --quiet -e ".${extras:+[$extras]}"
  .venv/bin/python -c "import progrpo, diffusers, transformers, peft, kornia" 
  if [[ ",$extras," == *",test,"* ]]; then
    # ImageReward's reference code for tests/core/test_reward_conversion.py; --no-deps: its pins (timm==0.6.13,
    # fairscale, datasets, diffusers) conflict with open-clip-torch and are not needed by the modules the test imports.
    pip_quiet install --quiet --no-deps "image-reward==1.5"
  fi
  touch "$stamp"
fi
