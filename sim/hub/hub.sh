#!/usr/bin/env bash
# A long-running fake Hugging Face hub for the demo and the simulated hosts (tests start their own, see
# tests/fixtures/hub.py). Listens on 0.0.0.0:$GPUFLEET_HUB_PORT (default 18080): the main namespace reaches it at
# 127.0.0.1, the simulated hosts at their gateway (10.213.37.1 by default). Serves .build/hub/root, where `up`
# generates the demo repo gpufleet-demo/tiny-llama once.
#   sim/hub/hub.sh up     start it (idempotent: a second call only checks, < 0.2 s); prints HF_ENDPOINT
#   sim/hub/hub.sh down   stop it (only the process it started, by its pid file)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
B="$ROOT/.build/hub"
PORT=${GPUFLEET_HUB_PORT:-18080}
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || PY=python3
PIDFILE="$B/fakehub.pid"

alive() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-up}" in
  up)
    mkdir -p "$B/root"
    if [[ ! -f "$B/root/gpufleet-demo/tiny-llama/repo.json" ]]; then
      "$PY" "$ROOT/sim/hub/make_repo.py" "$B/root" gpufleet-demo/tiny-llama --shards 2 --shard-bytes 65536 --tag v1.0 >/dev/null
    fi
    if ! alive; then
      nohup "$PY" "$ROOT/sim/hub/fakehub.py" --root "$B/root" --host 0.0.0.0 --port "$PORT" \
        --port-file "$B/port" >"$B/fakehub.log" 2>&1 &
      echo $! >"$PIDFILE"
      for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$PORT/api/models/gpufleet-demo/tiny-llama" >/dev/null 2>&1 && break
        sleep 0.05
      done
    fi
    curl -sf "http://127.0.0.1:$PORT/api/models/gpufleet-demo/tiny-llama" >/dev/null \
      || { echo "fake hub did not answer on port $PORT (see $B/fakehub.log)" >&2; exit 1; }
    echo "http://127.0.0.1:$PORT" >"$B/endpoint"
    echo "HF_ENDPOINT=http://127.0.0.1:$PORT"
    ;;
  down)
    if alive; then kill "$(cat "$PIDFILE")"; fi
    rm -f "$PIDFILE"
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
