#!/usr/bin/env bash
# bed-step: background
# The vLLM stand-in with real Ray (gpufleet/bed-vllm-ray, sim/images/ray.sh) in gpu-a's and gpu-b's dockerd: the
# multi-host replica test (tests/integration/test_ray.py) runs its Ray head and worker there. Cached by content hash:
# a second `up` only compares image ids (≈1 s). `down` removes nothing.
set -euo pipefail
R=$(cd "$(dirname "${BASH_SOURCE[0]}")/../images" && pwd)/ray.sh
case "$1" in
  up) "$R" load gpu-a gpu-b ;;
  down) : ;;
esac
