#!/usr/bin/env bash
# dockerd (with the fake NVIDIA hook) and podman (ulimits drop-in, CDI spec for fake GPUs).
set -euo pipefail
E=$(cd "$(dirname "${BASH_SOURCE[0]}")/../engine" && pwd)
case "$1" in
  up) "$E/dockerd.sh" up; "$E/podman.sh" ;;
  down) "$E/dockerd.sh" down ;;
esac
