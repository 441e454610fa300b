#!/usr/bin/env bash
# The long-lived process of one simulated host. Started by hosts.sh as
#   unshare --mount --uts --propagation private -- ip netns exec gpufleet-<name> holder.sh <name> <hostdir>
# so it runs in the host's own network, mount and UTS namespaces. It prepares the mount namespace (hostname,
# cgroups, per-host directories), writes its pid, and then sleeps: it keeps the namespaces alive, and hosts.sh
# starts dockerd and sshd inside them with `nsenter -t <pid> -m -u -n`. Everything sshd starts (Ansible's
# sessions) inherits them as sshd's children.
set -euo pipefail
NAME=$1
HOSTDIR=$2
FS=$HOSTDIR/fs

hostname "$NAME"

# `ip netns exec` mounts a fresh sysfs on /sys (so /sys/class/net shows this namespace), which hides the cgroup
# hierarchies mounted under /sys/fs/cgroup; dockerd then fails with "Devices cgroup isn't mounted". Mount them
# again from the list hosts.sh captured in the main mount namespace (same options: same hierarchies).
if [[ -s "$HOSTDIR/cgroup.mounts" ]] && ! mountpoint -q /sys/fs/cgroup 2>/dev/null; then
  while read -r src mp fstype opts _; do
    mkdir -p "$mp"
    mount -t "$fstype" -o "$opts" "$src" "$mp"
  done <"$HOSTDIR/cgroup.mounts"
fi

# Per-host state: the host's own /run (docker.sock, sshd privsep dir), engines' data, GPU config, home and tmp.
# The repository (and so the venv and the fake NVML) stays visible at its usual path.
# Paths that must stay visible although they lie under one of those directories (GPUFLEET_HOSTS_KEEP, ':'-separated:
# the repository, the venv's base interpreter, e.g. pyenv's under /root) are bound into the per-host directory
# first (in this mount namespace only), and the per-host directory is then bound recursively.
IFS=: read -r -a keep <<<"${GPUFLEET_HOSTS_KEEP:-}"
# GPUFLEET_HOSTS_EXTRA_DIRS (space-separated, e.g. "opt/gpufleet" for a bare host): more per-host directories.
# shellcheck disable=SC2086
for d in run var/lib/docker etc/docker var/lib/containers var/lib/gpufleet etc/cdi root tmp ${GPUFLEET_HOSTS_EXTRA_DIRS:-}; do
  mkdir -p "$FS/$d" "/$d"
  for k in "${keep[@]}"; do
    if [[ -n $k && $k == /$d/* && -d $k ]]; then
      mkdir -p "$FS/$d/${k#/"$d"/}"
      mount --bind "$k" "$FS/$d/${k#/"$d"/}"
    fi
  done
  mount --rbind "$FS/$d" "/$d"
done
# GPUFLEET_HOSTS_OVERLAYS (space-separated, e.g. "usr" for a bare host): directories the host may write to without
# touching the machine's: an overlay with the machine's directory below and $HOSTDIR/overlay/<dir>/upper on top
# (a package installed inside the host lands there; the host's own dpkg database is one of the EXTRA_DIRS).
# shellcheck disable=SC2086
for d in ${GPUFLEET_HOSTS_OVERLAYS:-}; do
  mkdir -p "$HOSTDIR/overlay/$d/upper" "$HOSTDIR/overlay/$d/work"
  mount -t overlay "gpufleet-$NAME-$d" \
    -o "lowerdir=/$d,upperdir=$HOSTDIR/overlay/$d/upper,workdir=$HOSTDIR/overlay/$d/work" "/$d"
done
chmod 1777 /tmp
chmod 700 /root
mkdir -p /run/sshd /run/lock
chmod 755 /run/sshd
mount --bind "$HOSTDIR/etc-hosts" /etc/hosts
mount --bind "$HOSTDIR/etc-hostname" /etc/hostname

echo $$ >"$HOSTDIR/holder.pid.tmp"
mv "$HOSTDIR/holder.pid.tmp" "$HOSTDIR/holder.pid"
exec -a "gpufleet-host-$NAME" sleep infinity
