#!/usr/bin/env bash
# Fake GPUs: builds the fake libnvidia-ml.so.1 into .build/nvml/ (cached by source hash; ≈0.2 s when it changed).
# The fake nvidia-smi (sim/nvml/bin/) and the example GPU sets (sim/nvml/examples/) need no build. `down`: nothing.
set -euo pipefail
N=$(cd "$(dirname "${BASH_SOURCE[0]}")/../nvml" && pwd)
case "$1" in
  up) "$N/build.sh" >/dev/null ;;
  down) : ;;
esac
