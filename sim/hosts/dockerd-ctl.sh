#!/usr/bin/env bash
# Start / restart / stop the dockerd of a simulated host from INSIDE the host (an SSH session, or nsenter), with the
# same settings hosts.sh gives it (its state dir, own bridge, cgroup parent). For hosts without systemd: role
# gpu_host's gpu_host_docker_start_command / gpu_host_docker_restart_command point here on bare hosts (hosts.sh bare).
#   sim/hosts/dockerd-ctl.sh start|restart|stop|status [NAME]     NAME defaults to $GPUFLEET_HOST (set by the host's sshd)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
NAME=${2:-${GPUFLEET_HOST:-}}
[[ $NAME =~ ^gpu-[a-z]$ ]] || { echo "dockerd-ctl.sh: no host name (GPUFLEET_HOST unset?)" >&2; exit 2; }
letters=abcdefghijklmnopqrstuvwxyz
prefix=${letters%%"${NAME#gpu-}"*}
i=${#prefix}
hd=$ROOT/.build/hosts/$NAME
export GPUFLEET_DOCKER_SOCK=/var/run/docker.sock GPUFLEET_DOCKER_STATE=$hd/engine GPUFLEET_DOCKER_DATA=/var/lib/docker \
  GPUFLEET_DOCKER_EXEC=/var/run/docker GPUFLEET_DOCKER_BRIDGE=gpufdk0 \
  GPUFLEET_DOCKER_EXTRA="--cgroup-parent gpufleet-$NAME --shutdown-timeout 5"
bridge() {
  ip link show gpufdk0 >/dev/null 2>&1 || { ip link add gpufdk0 type bridge && ip addr add "172.30.$((i + 1)).1/24" dev gpufdk0; }
  ip link set gpufdk0 up
}
case "${1:-}" in
  start) bridge; "$ROOT/sim/engine/dockerd.sh" up ;;
  restart) "$ROOT/sim/engine/dockerd.sh" down; bridge; "$ROOT/sim/engine/dockerd.sh" up ;;
  stop) "$ROOT/sim/engine/dockerd.sh" down ;;
  status) "$ROOT/sim/engine/dockerd.sh" status ;;
  *) echo "usage: $0 start|restart|stop|status [NAME]" >&2; exit 2 ;;
esac
