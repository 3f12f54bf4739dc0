#!/usr/bin/env bash
# Start the ComfyUI installed by scripts/install_comfyui.sh, headless on 127.0.0.1, with this
# extension loaded; wait until it answers, then print its URL, PID and log file.
#
#   scripts/start_comfyui.sh [--port N] [--base-directory DIR] [--foreground] [-- extra ComfyUI args]
#
# --base-directory: where custom_nodes/, models/, input/, output/, user/ live (default .comfyui/base,
#   which links this repo as custom_nodes/comfyui-progrpo). A DIR without that link gets one.
# --foreground: run in this terminal instead (Ctrl-C stops it); no readiness check.
# Background mode writes DIR/comfyui-PORT.log and DIR/comfyui-PORT.pid; stop with `kill PID`
# (SIGTERM exits cleanly). Fails (and stops the server) if this extension did not import.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PORT=8188
BASE=$ROOT/.comfyui/base
FOREGROUND=0
TIMEOUT=${COMFYUI_START_TIMEOUT:-120}
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --base-directory) mkdir -p "$2"; BASE=$(cd "$2" && pwd); shift 2 ;;
    --foreground) FOREGROUND=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option $1; usage: $0 [--port N] [--base-directory DIR] [--foreground] [-- comfyui args]" >&2; exit 2 ;;
  esac
done

TREE=$ROOT/.comfyui/ComfyUI
# COMFYUI_PYTHON: another interpreter (tests/package runs a venv holding only the run-time requirements).
PY=${COMFYUI_PYTHON:-$ROOT/.venv/bin/python}
[ -f "$TREE/main.py" ] && [ -x "$PY" ] || { echo "ComfyUI is not installed; run scripts/install_comfyui.sh" >&2; exit 1; }
mkdir -p "$BASE/custom_nodes" "$BASE/models"
[ -e "$BASE/custom_nodes/comfyui-progrpo" ] || ln -s "$ROOT" "$BASE/custom_nodes/comfyui-progrpo"

# --cpu: no GPU is assumed (drop it via a copy of this line to use one); --disable-api-nodes: no
# paid-API nodes and no calls to api.comfy.org, and half the start time; in-memory database: no
# user/comfyui.db written (alembic runs on every start otherwise).
ARGS=(main.py --cpu --listen 127.0.0.1 --port "$PORT" --disable-auto-launch --disable-api-nodes
      --database-url "sqlite:///:memory:" --base-directory "$BASE" "${EXTRA[@]}")
export DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
if [ "$FOREGROUND" = 1 ]; then
  cd "$TREE" && exec "$PY" "${ARGS[@]}"
fi

LOG=$BASE/comfyui-$PORT.log
PIDFILE=$BASE/comfyui-$PORT.pid
(cd "$TREE" && exec "$PY" "${ARGS[@]}") >"$LOG" 2>&1 &
PID=$!
echo "$PID" >"$PIDFILE"
URL=http://127.0.0.1:$PORT
started=$SECONDS

fail() {
  echo "ComfyUI $1; last lines of $LOG:" >&2
  tail -n 40 "$LOG" >&2
  kill "$PID" 2>/dev/null || true
  exit 1
}
http_get() {  # prints the body of GET $1, or nothing
  "$PY" -c "import urllib.request, sys
try: sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())
except Exception: pass" "$1"
}
until [ -n "$(http_get "$URL/system_stats")" ]; do
  kill -0 "$PID" 2>/dev/null || fail "exited before it was ready"
  [ $((SECONDS - started)) -lt "$TIMEOUT" ] || fail "was not ready after ${TIMEOUT} s"
  sleep 0.5
done
# ComfyUI only logs a failed custom-node import and starts anyway: check the log and the node list.
if grep -qE "IMPORT FAILED.*comfyui-progrpo|Cannot import .*comfyui-progrpo" "$LOG" \
   || ! http_get "$URL/object_info/ProGRPOPruneSchedule" | grep -q '"ProGRPOPruneSchedule"'; then
  fail "started, but the comfyui-progrpo extension did not import"
fi
echo "ComfyUI ready at $URL after $((SECONDS - started)) s (pid $PID, log $LOG; stop: kill $PID)"
