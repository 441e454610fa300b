#!/usr/bin/env bash
# Start / stop a dockerd for the test bed, with the fake NVIDIA hook on its PATH so `--gpus` is accepted.
#   sim/engine/dockerd.sh up     start one unless a daemon already answers on the socket
#   sim/engine/dockerd.sh down   stop the daemon this script started (by its recorded pid), nothing else
#   sim/engine/dockerd.sh status
# Settings (env): GPUFLEET_DOCKER_SOCK (default /var/run/docker.sock), GPUFLEET_DOCKER_STATE (default
# .build/engine/docker: pidfile and log), GPUFLEET_DOCKER_DATA (default /var/lib/docker),
# GPUFLEET_DOCKER_EXEC (default /var/run/docker), GPUFLEET_DOCKER_BRIDGE (default: dockerd's docker0).
# A simulated host (sim/hosts) runs this inside its own namespaces with its own socket, data and bridge.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SOCK=${GPUFLEET_DOCKER_SOCK:-/var/run/docker.sock}
STATE=${GPUFLEET_DOCKER_STATE:-$ROOT/.build/engine/docker}
DATA=${GPUFLEET_DOCKER_DATA:-/var/lib/docker}
EXEC=${GPUFLEET_DOCKER_EXEC:-/var/run/docker}
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log

answers() { DOCKER_HOST="unix://$SOCK" timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

case "${1:-up}" in
  up)
    if answers; then
      exit 0
    fi
    mkdir -p "$STATE"
    args=(--host "unix://$SOCK" --pidfile "$PIDFILE" --data-root "$DATA" --exec-root "$EXEC")
    [[ -n "${GPUFLEET_DOCKER_BRIDGE:-}" ]] && args+=(--bridge "$GPUFLEET_DOCKER_BRIDGE")
    [[ -n "${GPUFLEET_DOCKER_EXTRA:-}" ]] && read -r -a extra <<<"$GPUFLEET_DOCKER_EXTRA" && args+=("${extra[@]}")
    # setsid: the daemon outlives this shell; the hook dir first on PATH so dockerd registers the nvidia driver.
    PATH="$HERE/bin:$PATH" setsid dockerd "${args[@]}" >"$LOG" 2>&1 < /dev/null &
    for _ in $(seq 1 100); do
      answers && exit 0
      sleep 0.2
    done
    echo "dockerd did not answer on $SOCK within 20 s; last log lines:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
    ;;
  down)
    if [[ -f "$PIDFILE" ]]; then
      pid=$(cat "$PIDFILE")
      if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      fi
      rm -f "$PIDFILE"
    fi
    ;;
  status)
    if answers; then echo "dockerd answers on $SOCK"; else echo "no dockerd on $SOCK"; exit 1; fi
    ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
