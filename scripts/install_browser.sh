#!/usr/bin/env bash
# Install what the graph-editor tests (tests/in_comfyui/test_browser_editor.py) drive: Debian's Chromium
# and playwright-core from npm (pinned in tests/in_comfyui/browser/package-lock.json; it downloads no
# browser of its own). Idempotent: a second run only checks. Needs root for apt-get (CI is root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "[browser] chromium is missing and this is not root: run 'sudo apt-get install chromium'" >&2
    exit 1
  fi
  echo "[browser] installing chromium (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d tests/in_comfyui/browser/node_modules/playwright-core ]; then
  command -v npm >/dev/null 2>&1 || { echo "[browser] npm is missing: apt-get install npm" >&2; exit 1; }
  echo "[browser] installing playwright-core (npm ci)"
  (cd tests/in_comfyui/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
