#!/usr/bin/env bash
# bed-step: background
# Bed step of the wheelhouses the simulated hosts install Python packages from, as a site's hosts install from the
# mirror it names (the hosts reach no index; the controller's pip downloads here, once):
#   .build/gateway-wheelhouse      vllm-router (role gateway's pin) and its dependencies: role gateway's
#                                  gpufleet_gateway_pip_extra_args "--no-index --find-links" in the tests, molecule, bench
#   .build/wheelhouse/gpu_host     role gpu_host's lock (roles/gpu_host/files/requirements-host.lock), --no-deps:
#                                  gpu_host_pip_find_links in tests/integration/test_gpu_host.py and molecule
# Each is made whole in a temporary directory and renamed into place with a stamp of what it holds (.stamp: the pin
# or the lock's text), so a reader never sees a half-filled one; made again only when the stamp differs.
# Made here, before any test runs, because the molecule scenarios (in the background of hack/test.sh) and the
# integration tests both use them.
#   up    fill what is missing or stale (idempotent; no network when done)      down  nothing to stop (files kept)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=$ROOT/.venv/bin/python
[[ -x "$PY" ]] || PY=python3
GATEWAY_PIN=vllm-router==0.1.17  # roles/gateway/defaults/main.yml gateway_pip_packages
HOST_LOCK=$ROOT/roles/gpu_host/files/requirements-host.lock

# fill DIR STAMP PIP_DOWNLOAD_ARGS...: DIR holds what `pip download ARGS` gives, and DIR/.stamp says STAMP.
fill() {
  local dir=$1 stamp=$2 tmp
  shift 2
  if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$stamp" ]]; then return 0; fi
  mkdir -p "$(dirname "$dir")"
  tmp=$(mktemp -d "$dir.tmp.XXXXXX")
  chmod 755 "$tmp"  # mktemp's 0700: the hosts' users read it too
  if ! "$PY" -m pip download -q --disable-pip-version-check -d "$tmp" "$@" >"$tmp.log" 2>&1; then
    echo "[wheelhouses] pip download $* failed (the package index must be reachable once):" >&2
    tail -20 "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    return 1
  fi
  printf '%s' "$stamp" >"$tmp/.stamp"
  rm -rf "$tmp.log" "$dir.old"
  if [[ -e "$dir" ]]; then mv "$dir" "$dir.old"; fi
  mv "$tmp" "$dir"
  rm -rf "$dir.old"
  echo "[wheelhouses] $dir: $(find "$dir" -name '*.whl' | wc -l) wheels" >&2
}

case "${1:-up}" in
up)
  fill "$ROOT/.build/gateway-wheelhouse" "$GATEWAY_PIN" "$GATEWAY_PIN"
  mapfile -t pins < <(grep -Ev '^\s*(#|$)' "$HOST_LOCK")
  fill "$ROOT/.build/wheelhouse/gpu_host" "$(cat "$HOST_LOCK")" --no-deps "${pins[@]}"
  ;;
down) : ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
