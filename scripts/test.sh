#!/usr/bin/env bash
# README command 2: set up .venv if needed, then run every test tier (core, train, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test
bash scripts/install_comfyui.sh  # ComfyUI 0.3.75 for tests/in_comfyui (first run: ~2 min, +4.9 GB; then instant)
bash scripts/install_browser.sh  # Chromium + playwright-core for the graph-editor tests (first run: ~1 min)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# One single-threaded worker per core (PROGRPO_TEST_WORKERS overrides); a test file stays in one worker, so its
# module fixtures (a ComfyUI server, tiny models) are built once.
workers=${PROGRPO_TEST_WORKERS:-$(getconf _NPROCESSORS_ONLN)}  # not nproc: it honours OMP_NUM_THREADS
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider --durations=15 -n "$workers" --dist loadfile "$@"
