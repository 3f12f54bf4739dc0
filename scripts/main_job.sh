#!/usr/bin/env bash
# README command 1, the main job: Pro-GRPO on the embedded digits model, through ComfyUI.
# Sets up .venv and ComfyUI when missing (scripts/setup_venv.sh, scripts/install_comfyui.sh), starts
# ComfyUI headless on 127.0.0.1:8188, queues workflows/embedded_digits_demo.api.json over HTTP,
# prints the training progress and leaves the results in runs/comfyui_demo/ (see scripts/comfy_demo.py):
#
#   bash scripts/main_job.sh [--iterations N] [--output DIR] [--port P] [--resume] [--keep-server]
#
# --keep-server leaves ComfyUI running for the graph editor at http://127.0.0.1:8188.
# The same training without ComfyUI (progrpo's own CLI and diffusers backend):
#   .venv/bin/python -m progrpo train progrpo/configs/digits_flow_alignment.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
bash scripts/install_comfyui.sh
# One thread per process: the models are tiny, and two cores shared by more threads only slow down.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python scripts/comfy_demo.py "$@"
