#!/usr/bin/env bash
# README command 1: set up .venv if needed, then run the main job: a short Pro-GRPO training of the
# embedded digits flow model towards prompt alignment, and print where its outputs went.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m progrpo train progrpo/configs/digits_flow_alignment.yaml "$@"
