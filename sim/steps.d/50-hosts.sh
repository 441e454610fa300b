#!/usr/bin/env bash
# Simulated GPU hosts (network namespaces with sshd, dockerd and fake GPUs) reached by Ansible over SSH.
# up: sim/hosts/hosts.sh up (a second run only checks: < 1 s); down: stops only what it started.
# gpu-c gets the images in its podman too (GPUFLEET_HOSTS_PODMAN_IMAGES, default gpu-c): a host that can run
# either engine; the generated inventory keeps gpufleet_runtime: docker unless GPUFLEET_HOSTS_PODMAN names it.
set -euo pipefail
H=$(cd "$(dirname "${BASH_SOURCE[0]}")/../hosts" && pwd)
case "$1" in
  up) "$H/hosts.sh" up ;;
  down) "$H/hosts.sh" down ;;
esac
