#!/usr/bin/env bash
# Local images: the base rootfs image, the vLLM stand-in images, and their copies in podman's storage.
# Cached (by tag / content hash / image id): a second `up` costs well under a second. `down` removes nothing.
set -euo pipefail
B=$(cd "$(dirname "${BASH_SOURCE[0]}")/../images" && pwd)/build.sh
case "$1" in
  up) "$B" base; "$B" standin; "$B" podman ;;
  down) : ;;
esac
