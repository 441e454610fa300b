#!/usr/bin/env bash
# bed-step: background
# Loopback image registries (open :5000, htpasswd :5001) seeded with the stand-in images; see sim/registry/registry.py.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=$ROOT/.venv/bin/python
[[ -x "$PY" ]] || PY=python3
case "$1" in
  up) "$PY" "$ROOT/sim/registry/registry.py" up ;;
  down) "$PY" "$ROOT/sim/registry/registry.py" down ;;
esac
