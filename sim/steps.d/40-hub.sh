#!/usr/bin/env bash
# The fake Hugging Face hub (sim/hub): a long-running one on port ${GPUFLEET_HUB_PORT:-18080} for the demo and the
# simulated hosts. Tests start their own (tests/fixtures/hub.py).
set -euo pipefail
H=$(cd "$(dirname "${BASH_SOURCE[0]}")/../hub" && pwd)
case "$1" in
  up) "$H/hub.sh" up >/dev/null ;;
  down) "$H/hub.sh" down ;;
esac
