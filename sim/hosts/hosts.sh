#!/usr/bin/env bash
# Simulated GPU hosts that Ansible reaches over real SSH (see sim/hosts/README.md).
#   sim/hosts/hosts.sh up       create/start the hosts (idempotent: a second run only checks)
#   sim/hosts/hosts.sh down     stop what this script started (recorded pids), remove the namespaces
#   sim/hosts/hosts.sh status   one line per host; exit 1 when a host is not fully up
#   sim/hosts/hosts.sh clean    down, then delete the hosts' state (.build/hosts: engines' data, keys)
#   sim/hosts/hosts.sh bare NAME         start the bare host NAME (e.g. gpu-d; not one of the COUNT hosts): no Python
#                                        venv, no engine configuration, for role gpu_host (see README "Bare hosts")
#   sim/hosts/hosts.sh bare-down NAME    stop it (keeps its state; `down` stops it too)
#   sim/hosts/hosts.sh bare-reset NAME   stop it and delete what a preparation made (venv, daemon.json, CDI spec),
#                                        keeping its engines' images: the next `bare` starts from nothing again
#   sim/hosts/hosts.sh solo NAME [SET]   start NAME (e.g. gpu-e; not one of the COUNT hosts) as a prepared host like
#                                        them (dockerd configured, the checkout's venv, the bed's images; fake GPU set
#                                        SET, default 1x-h100) with an inventory of its own (.build/hosts/NAME/
#                                        inventory.yml), not in the shared one: for the runs beside the fleet tests
#                                        (molecule, the matrix, the node_agent role test), which then never wait for
#                                        the fleet tests' hosts (see README "Solo hosts")
#   sim/hosts/hosts.sh solo-down NAME    stop it
# Each host = network namespace gpufleet-<name> (veth to bridge gpufbr0 in the main namespace) + its own mount
# and UTS namespace (hostname, /run, /var/lib/docker, /etc/docker, /var/lib/gpufleet, /etc/cdi, /root, /tmp
# from .build/hosts/<name>/fs) held by a sleeping holder process, with its own dockerd (sim/engine/dockerd.sh,
# fake NVIDIA hook, own bridge) and an sshd (key auth; SetEnv gives the host its fake GPU set and the bed's compile
# cache for the modules' zip imports, zipcache.py: GPUFLEET_ZIPIMPORT_CACHE, empty = off).
# Settings (env):
#   GPUFLEET_HOSTS_COUNT   number of hosts, named gpu-a, gpu-b, ... (default 3)
#   GPUFLEET_HOSTS_NET     first three octets of the hosts' /24 (default 10.213.37; .1 = main namespace,
#                          host i gets .(10+i))
#   GPUFLEET_HOSTS_IMAGES  images loaded from the main dockerd into every host's dockerd (default: the base
#                          image and every vllm/vllm-openai:* present; "none" = skip)
#   GPUFLEET_HOSTS_PODMAN  hosts whose runtime is podman, e.g. "gpu-c": images go into their podman storage too
#                          (tagged docker.io/...), and the inventory says gpufleet_runtime: podman
#   GPUFLEET_HOSTS_PODMAN_IMAGES  hosts whose podman storage gets the images as well while their inventory runtime
#                          stays docker (default "gpu-c": a host that can run either engine; "" = none)
#   GPUFLEET_HOSTS_GPUS    per-host fake GPU sets, e.g. "gpu-a=2x-a100-80gb gpu-d=1x-h100" (files in
#                          sim/nvml/examples/, default gpu-a=2x-a100-80gb gpu-b=4x-l40s gpu-c=1x-h100, then cycling)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
B=$ROOT/.build/hosts
COUNT=${GPUFLEET_HOSTS_COUNT:-3}
NET=${GPUFLEET_HOSTS_NET:-10.213.37}
BRIDGE=gpufbr0
GW=$NET.1
SSH_KEY=$B/ssh/id_ed25519
VENV_PY=$ROOT/.venv/bin/python
MAIN_SOCK=${GPUFLEET_DOCKER_SOCK:-/var/run/docker.sock}
DEFAULT_SETS=(2x-a100-80gb 4x-l40s 1x-h100)
DEFAULT_LABELS=("{gpu: a100, zone: eu1}" "{gpu: l40s, zone: eu1}" "{gpu: h100, zone: us1}")

# One run at a time (sim/bed.sh up from two shells): the lock is held by flock itself (-o: the daemons started
# below must not inherit its descriptor, or the lock would live as long as they do).
if [[ -z ${GPUFLEET_HOSTS_LOCKED:-} && ${1:-} =~ ^(up|down|clean|bare|bare-down|bare-reset|solo|solo-down)$ ]]; then
  mkdir -p "$B"
  GPUFLEET_HOSTS_LOCKED=1 exec flock -o "$B/.lock" "$0" "$@"
fi

# The daemons started below (holders, dockerd, sshd) must not inherit a caller's descriptors either: a caller's lock
# (`flock LOCK hosts.sh solo gpu-e ...`, `{ flock 9; hosts.sh ...; } 9>LOCK`) would live as long as they do, and every
# later holder of that lock would wait for the host to stop. (bash reads this script on fd 255.)
for fd in /proc/$$/fd/*; do
  fd=${fd##*/}
  if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2 && fd != 255)); then eval "exec $fd>&-" 2>/dev/null || true; fi
done

log() { printf '[hosts] %s\n' "$*" >&2; }
die() { printf '[hosts] error: %s\n' "$*" >&2; exit 1; }

names=()
letters=abcdefghijklmnopqrstuvwxyz
((COUNT >= 1 && COUNT <= 26)) || die "GPUFLEET_HOSTS_COUNT must be 1..26, got $COUNT"
for ((i = 0; i < COUNT; i++)); do names+=("gpu-${letters:i:1}"); done

addr_of() { echo "$NET.$((11 + $1))"; }          # index 0 -> .11
netns_of() { echo "gpufleet-$1"; }
veth_of() { echo "vgf-$1"; }                      # <= 15 chars
gpuset_of() {                                     # name index -> example file stem
  local n=$1 i=$2 kv
  for kv in ${GPUFLEET_HOSTS_GPUS:-}; do [[ ${kv%%=*} == "$n" ]] && { echo "${kv#*=}"; return; }; done
  echo "${DEFAULT_SETS[i % 3]}"
}
runtime_of() {                                    # docker, or podman for hosts named in GPUFLEET_HOSTS_PODMAN
  [[ " ${GPUFLEET_HOSTS_PODMAN:-} " == *" $1 "* ]] && echo podman || echo docker
}
podman_host() {                                   # true when the host's podman storage gets the images too
  [[ $(runtime_of "$1") == podman || " ${GPUFLEET_HOSTS_PODMAN_IMAGES-gpu-c} " == *" $1 "* ]]
}
have_podman() { command -v podman >/dev/null; }
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
pid_in() { cat "$1" 2>/dev/null || true; }
holder_pid() {                                    # the holder's pid if it is alive and in the host's netns
  local hd=$B/$1 p
  p=$(pid_in "$hd/holder.pid")
  alive "$p" || return 1
  [[ -e /run/netns/$(netns_of "$1") ]] || return 1
  [[ "$(readlink "/proc/$p/ns/net")" == "net:[$(stat -L -c %i "/run/netns/$(netns_of "$1")")]" ]] || return 1
  echo "$p"
}
in_host() { local p=$1; shift; nsenter -t "$p" -m -u -n -- "$@"; }
main_docker() { DOCKER_HOST="unix://$MAIN_SOCK" docker "$@"; }

ensure_tools() {
  local t
  for t in ip unshare nsenter sshd ssh-keygen iptables docker mountpoint; do
    command -v "$t" >/dev/null || [[ -x /usr/sbin/$t ]] || die "'$t' is missing (apt-get install iproute2 util-linux openssh-server iptables docker.io)"
  done
  [[ $(id -u) == 0 ]] || die "needs root (network namespaces, mounts)"
}

ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    touch "$B/bridge.created"
  fi
  [[ " $(ip -br addr show dev "$BRIDGE") " == *" $GW/24 "* ]] || ip addr add "$GW/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # The main dockerd sets FORWARD's policy to DROP; with br_netfilter, bridged host<->host frames go through
  # FORWARD too and were dropped. Accept traffic that stays on our bridge.
  if ! iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; then
    iptables -I FORWARD 1 -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
    touch "$B/forward.added"
  fi
}

ensure_keys() {
  mkdir -p "$B/ssh"
  chmod 700 "$B/ssh"
  [[ -f $SSH_KEY ]] || ssh-keygen -q -t ed25519 -N '' -C gpufleet-sim-hosts -f "$SSH_KEY"
  cp "$SSH_KEY.pub" "$B/ssh/authorized_keys"
  chmod 600 "$B/ssh/authorized_keys"
}

write_if_changed() {                              # write_if_changed FILE < content
  local f=$1 tmp
  tmp=$(mktemp "$f.XXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$f"; then rm -f "$tmp"; else mv "$tmp" "$f"; fi
}

host_files() {                                    # host_files NAME INDEX
  local n=$1 i=$2 hd=$B/$1 set path
  mkdir -p "$hd/fs" "$hd/engine"
  [[ -f $hd/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -C "$n" -f "$hd/ssh_host_ed25519_key"
  set=$(gpuset_of "$n" "$i")
  [[ -f $ROOT/sim/nvml/examples/$set.json ]] || log "$n: sim/nvml/examples/$set.json does not exist (yet); GPUFLEET_FAKE_GPUS points to it anyway"
  path="$ROOT/sim/nvml/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  local gpus=$ROOT/sim/nvml/examples/$set.json
  if [[ $n == "${BARE:-}" ]]; then
    # A bare host: its own copy of the fake GPU set (a test may change the driver version in it). No NVIDIA toolkit:
    # role gpu_host installs it from the bed's apt repository (sim/hosts/toolkit/aptrepo.sh) into the host's /usr.
    [[ -f $hd/fake-gpus.json ]] || cp "$gpus" "$hd/fake-gpus.json"
    gpus=$hd/fake-gpus.json
  fi
  write_if_changed "$hd/sshd_config" <<EOF
# Generated by sim/hosts/hosts.sh for simulated host $n.
ListenAddress $(addr_of "$i")
Port 22
HostKey $hd/ssh_host_ed25519_key
PidFile $hd/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile $B/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
PrintMotd no
MaxSessions 64
MaxStartups 64:30:128
LogLevel INFO
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
SetEnv GPUFLEET_HOST=$n GPUFLEET_FAKE_GPUS=$gpus LD_LIBRARY_PATH=$ROOT/.build/nvml PATH=$path GPUFLEET_ZIPIMPORT_CACHE=${GPUFLEET_ZIPIMPORT_CACHE-$ROOT/.cache/zipimport}
EOF
  {
    echo "127.0.0.1 localhost"
    echo "::1 localhost ip6-localhost ip6-loopback"
    echo "$GW gpufleet-controller"
    local j
    for j in "${!names[@]}"; do echo "$(addr_of "$j") ${names[j]}"; done
  } | write_if_changed "$hd/etc-hosts"
  echo "$n" | write_if_changed "$hd/etc-hostname"
  grep -E '^[^ ]+ /sys/fs/cgroup[/ ]' /proc/self/mounts | write_if_changed "$hd/cgroup.mounts"
}

start_holder() {                                  # start_holder NAME INDEX -> creates netns, veth, holder
  local n=$1 i=$2 hd=$B/$1 ns veth p
  ns=$(netns_of "$n")
  veth=$(veth_of "$n")
  stop_host "$n" quiet                            # leftovers of a host whose holder died
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" master "$BRIDGE" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$(addr_of "$i")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$GW"
  rm -f "$hd/holder.pid"
  # /run of a host is a plain directory, not a tmpfs: clear podman's runtime state of the previous holder (its
  # containers, mounts and network namespaces died with it), as a reboot would. Podman then refreshes its
  # containers' states (exited) on first use; dockerd does the same for its own on start.
  rm -rf "$hd/fs/run/libpod" "$hd/fs/run/containers" "$hd/fs/run/runc" "$hd/fs/run/gpufleet-podman.sock"
  rm -f "$hd/fs/run/netns"/cni-* 2>/dev/null || true
  local keep
  keep=$ROOT:$(readlink -f "$ROOT"):$("$VENV_PY" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))' 2>/dev/null || true)
  GPUFLEET_HOSTS_KEEP=$keep GPUFLEET_HOSTS_EXTRA_DIRS=${EXTRA_DIRS:-} \
    GPUFLEET_HOSTS_OVERLAYS=${OVERLAYS:-} setsid unshare --mount --uts --propagation private -- \
    ip netns exec "$ns" "$HERE/holder.sh" "$n" "$hd" </dev/null >"$hd/holder.log" 2>&1 &
  for _ in $(seq 1 100); do
    [[ -s $hd/holder.pid ]] && break
    sleep 0.05
  done
  p=$(pid_in "$hd/holder.pid")
  alive "$p" || { cat "$hd/holder.log" >&2; die "$n: the namespace holder did not start"; }
}

start_dockerd() {                                 # start_dockerd NAME INDEX HOLDERPID
  local n=$1 i=$2 p=$3 hd=$B/$1
  # dockerd needs a bridge with a non-default name to exist; inside the host's netns it is private anyway.
  in_host "$p" sh -c "ip link show gpufdk0 >/dev/null 2>&1 || { ip link add gpufdk0 type bridge &&
    ip addr add 172.30.$((i + 1)).1/24 dev gpufdk0; }; ip link set gpufdk0 up"
  in_host "$p" env GPUFLEET_DOCKER_SOCK=/var/run/docker.sock GPUFLEET_DOCKER_STATE="$hd/engine" \
    GPUFLEET_DOCKER_DATA=/var/lib/docker GPUFLEET_DOCKER_EXEC=/var/run/docker GPUFLEET_DOCKER_BRIDGE=gpufdk0 \
    GPUFLEET_DOCKER_EXTRA="--cgroup-parent gpufleet-$n --shutdown-timeout 5" "$ROOT/sim/engine/dockerd.sh" up
  # CDI spec for podman with as many fake devices as the host has GPUs (/etc/cdi is per host).
  local set count
  set=$(gpuset_of "$n" "$i")
  count=$("$VENV_PY" -c 'import json,sys; print(len(json.load(open(sys.argv[1])).get("gpus", [])) or 1)' \
    "$ROOT/sim/nvml/examples/$set.json" 2>/dev/null || echo 1)
  if [[ ! -f $hd/fs/etc/cdi/nvidia.yaml || "$(cat "$hd/cdi.count" 2>/dev/null)" != "$count" ||
    $ROOT/sim/engine/podman.sh -nt $hd/fs/etc/cdi/nvidia.yaml ]]; then
    in_host "$p" env GPUFLEET_CDI_GPUS="$count" "$ROOT/sim/engine/podman.sh"
    echo "$count" >"$hd/cdi.count"
  fi
}

start_sshd() {
  local n=$1 p=$2 hd=$B/$1 sp
  sp=$(pid_in "$hd/sshd.pid")
  if alive "$sp" && cmp -s "$hd/sshd_config" "$hd/sshd_config.running"; then return; fi
  if alive "$sp"; then kill "$sp"; for _ in $(seq 1 50); do alive "$sp" || break; sleep 0.05; done; fi
  in_host "$p" /usr/sbin/sshd -f "$hd/sshd_config" -E "$hd/sshd.log"
  cp "$hd/sshd_config" "$hd/sshd_config.running"
}

image_table() {                                   # image_table DOCKER_HOST -> "repo:tag id" lines (id without sha256:)
  DOCKER_HOST=$1 docker image ls --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}' 2>/dev/null |
    grep -v '<none>' | sed 's/ sha256:/ /' || true
}

podman_table() {                                  # podman_table HOLDERPID -> "repo:tag id" lines, docker.io/ dropped
  in_host "$1" podman images --noheading --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}' 2>/dev/null |
    grep -v '<none>' | sed -e 's/ sha256:/ /' -e 's|^docker.io/||' || true
}

sync_images() {                                   # load wanted images into every host (engine) whose copy differs
  local img id want=() union=() n tbl tar have p
  if ! main_docker version >/dev/null 2>&1; then log "the main dockerd does not answer: no images loaded"; return; fi
  tbl=$(image_table "unix://$MAIN_SOCK")
  if [[ -n ${GPUFLEET_HOSTS_IMAGES:-} ]]; then
    [[ $GPUFLEET_HOSTS_IMAGES == none ]] && return
    for img in $GPUFLEET_HOSTS_IMAGES; do
      [[ $img == *:* ]] || img=$img:latest
      if grep -q "^$img " <<<"$tbl"; then want+=("$img"); else log "no image $img in the main dockerd"; fi
    done
  else
    mapfile -t want < <(awk '$1 ~ /^(gpufleet\/bed-base:bookworm|vllm\/vllm-openai:.+)$/ {print $1}' <<<"$tbl" | sort)
  fi
  ((${#want[@]})) || return 0
  local -A need=()                                # "name/engine" -> images missing there
  for n in "${names[@]}"; do
    local engines=(docker)
    if podman_host "$n"; then
      if have_podman; then
        engines+=(podman)
      elif [[ $(runtime_of "$n") == podman ]]; then
        die "$n: GPUFLEET_HOSTS_PODMAN names it but podman is not installed (apt-get install podman)"
      fi
    fi
    for e in "${engines[@]}"; do
      if [[ $e == docker ]]; then
        have=$(image_table "unix://$B/$n/fs/run/docker.sock")
      else
        have=$(podman_table "$(pid_in "$B/$n/holder.pid")")
      fi
      for img in "${want[@]}"; do
        id=$(awk -v i="$img" '$1 == i {print $2}' <<<"$tbl")
        if ! grep -qxF "$img $id" <<<"$have"; then
          need[$n/$e]+="$img "
          [[ " ${union[*]} " == *" $img "* ]] || union+=("$img")
        fi
      done
    done
  done
  ((${#union[@]})) || return 0
  # One `docker save` (layers shared by the stand-ins are written once), then the hosts load it in parallel.
  tar=$B/images.tar
  log "loading ${union[*]} into ${!need[*]}"
  main_docker save -o "$tar" "${union[@]}" || { rm -f "$tar"; return 1; }
  local jobs=() j rc=0 key
  for key in "${!need[@]}"; do
    n=${key%/*}
    if [[ ${key#*/} == docker ]]; then
      (
        sock="unix://$B/$n/fs/run/docker.sock"
        DOCKER_HOST=$sock docker load -q -i "$tar" >/dev/null
        # Tags that moved (a rebuilt stand-in) leave the old image dangling in the host's dockerd: drop those.
        DOCKER_HOST=$sock docker image prune -f >/dev/null
      ) &
    else
      p=$(pid_in "$B/$n/holder.pid")
      (
        # podman load names docker-saved images localhost/<name>: tag them as docker.io/<name> like a pull would
        # (every image of the tar, also those this host already had: the tar holds the main dockerd's current ones).
        in_host "$p" podman load -q -i "$tar" >/dev/null
        for img in "${union[@]}"; do
          in_host "$p" podman image exists "localhost/$img" || continue
          in_host "$p" podman tag "localhost/$img" "docker.io/$img"
          in_host "$p" podman untag "localhost/$img" "localhost/$img" 2>/dev/null || true
        done
        in_host "$p" podman image prune -f >/dev/null
      ) &
    fi
    jobs+=($!)
  done
  for j in "${jobs[@]}"; do wait "$j" || rc=1; done   # not a bare `wait`: the holders are children too
  rm -f "$tar"
  return $rc
}

stop_host() {                                     # stop_host NAME [quiet]
  local n=$1 hd=$B/$1 ns p sp
  ns=$(netns_of "$n")
  sp=$(pid_in "$hd/sshd.pid")
  if alive "$sp"; then kill "$sp"; fi
  rm -f "$hd/sshd.pid" "$hd/sshd_config.running"
  GPUFLEET_DOCKER_STATE="$hd/engine" "$ROOT/sim/engine/dockerd.sh" down
  # Podman's containers are not children of a daemon, and with a bridge network their processes live in network
  # namespaces of their own (not listed by `ip netns pids` below): stop them the way a host shutdown would.
  p=$(pid_in "$hd/holder.pid")
  if alive "$p" && have_podman && [[ -d $hd/fs/run/libpod ]]; then
    timeout 60 nsenter -t "$p" -m -u -n -- podman stop --all --time 5 >/dev/null 2>&1 || true
  fi
  # What remains in the host's namespace was started inside it (sessions, listeners, containerd-shims of
  # containers): it belongs to this host and goes with it.
  if [[ -e /run/netns/$ns ]]; then
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      # shellcheck disable=SC2086
      kill $pids 2>/dev/null || true
      for _ in $(seq 1 40); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -z $pids ]] && break
        sleep 0.05
      done
      # shellcheck disable=SC2086
      [[ -z $pids ]] || kill -9 $pids 2>/dev/null || true
    fi
  fi
  p=$(pid_in "$hd/holder.pid")
  if alive "$p"; then kill "$p" 2>/dev/null || true; fi
  rm -f "$hd/holder.pid"
  ip link del "$(veth_of "$n")" 2>/dev/null || true
  [[ -e /run/netns/$ns ]] && ip netns del "$ns"
  [[ ${2:-} == quiet ]] || log "$n: down"
}

inventory_head() {                                # inventory_head TEXT [no-venv]: an inventory's lines down to its
  echo "# Generated by sim/hosts/hosts.sh$1"       # host list (no-venv: without the checkout's venv as interpreter)
  echo "all:"
  echo "  vars:"
  echo "    ansible_user: root"
  echo "    ansible_ssh_private_key_file: $SSH_KEY"
  echo "    ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
  [[ ${2:-} == no-venv ]] || echo "    ansible_python_interpreter: $VENV_PY"
  echo "    gpufleet_sim_controller_address: $GW  # the main namespace, as the hosts (and their containers) reach it"
  echo "  children:"
  echo "    gpu_hosts:"
  echo "      hosts:"
}

wait_sshd() {                                     # wait_sshd NAME INDEX: until the host's sshd accepts connections
  local n=$1 i=$2
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$(addr_of "$i")/22") 2>/dev/null && break
    sleep 0.05
  done
  alive "$(pid_in "$B/$n/sshd.pid")" || die "$n: sshd did not start"
}

write_inventory() {
  local i
  {
    inventory_head ": the simulated GPU hosts of this checkout."
    for i in "${!names[@]}"; do
      echo "        ${names[i]}:"
      echo "          ansible_host: $(addr_of "$i")"
      echo "          gpufleet_runtime: $(runtime_of "${names[i]}")"
      echo "          gpufleet_labels: ${DEFAULT_LABELS[i % 3]}"
      echo "          gpufleet_fake_gpus: $(gpuset_of "${names[i]}" "$i")"
    done
  } | write_if_changed "$B/inventory.yml"
}

start_prepared() {                                # start_prepared NAME INDEX: files, holder, dockerd, sshd of a
  local n=$1 i=$2 p                               # prepared host (a COUNT host or a solo one); idempotent
  host_files "$n" "$i"
  if ! p=$(holder_pid "$n"); then
    start_holder "$n" "$i"
    p=$(pid_in "$B/$n/holder.pid")
  fi
  start_dockerd "$n" "$i" "$p"
  start_sshd "$n" "$p"
}

up() {
  ensure_tools
  mkdir -p "$B"
  ensure_bridge
  ensure_keys
  local i
  for i in "${!names[@]}"; do
    start_prepared "${names[i]}" "$i"
  done
  # An image retagged while we copy it (a stand-in rebuilt meanwhile) makes save/load fail: compare again once.
  sync_images || { log "image copy failed; trying again"; sync_images; } || die "loading images into the hosts failed"
  write_inventory
  for i in "${!names[@]}"; do
    for _ in $(seq 1 100); do
      (exec 3<>"/dev/tcp/$(addr_of "$i")/22") 2>/dev/null && break
      sleep 0.05
    done
  done
  status >/dev/null || { status; die "not every host is up"; }
}

down() {
  local n d jobs=() j
  # Hosts of an earlier, larger count too: every state dir with a holder pid or a netns of ours.
  for d in "$B"/gpu-*; do
    [[ -d $d ]] || continue
    n=$(basename "$d")
    if [[ -e $d/holder.pid || -e $d/sshd.pid || -e $d/engine/dockerd.pid || -e /run/netns/$(netns_of "$n") ]]; then
      stop_host "$n" &                            # in parallel: each dockerd takes ~2 s to stop its containerd
      jobs+=($!)
    fi
  done
  for j in "${jobs[@]}"; do wait "$j"; done
  if [[ -e $B/forward.added ]]; then
    iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null || true
    rm -f "$B/forward.added"
  fi
  if [[ -e $B/bridge.created ]]; then
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -f "$B/bridge.created"
  fi
}

status() {
  local i n hd p rc=0 d s
  for i in "${!names[@]}"; do
    n=${names[i]}
    hd=$B/$n
    if p=$(holder_pid "$n"); then
      d=down
      DOCKER_HOST="unix://$hd/fs/run/docker.sock" timeout 5 docker version >/dev/null 2>&1 && d=up
      s=down
      alive "$(pid_in "$hd/sshd.pid")" && s=up
      printf '%s %s holder=%s dockerd=%s sshd=%s\n' "$n" "$(addr_of "$i")" "$p" "$d" "$s"
      [[ $d == up && $s == up ]] || rc=1
    else
      printf '%s %s down\n' "$n" "$(addr_of "$i")"
      rc=1
    fi
  done
  return $rc
}

bare_index() {                                    # bare_index NAME -> its index (gpu-d -> 3), refusing the COUNT hosts
  local n=$1 prefix
  [[ $n =~ ^gpu-[a-z]$ ]] || die "a bare or solo host is named gpu-<letter>, got '$n'"
  prefix=${letters%%"${n#gpu-}"*}
  ((${#prefix} >= COUNT)) || die "$n is one of the $COUNT regular hosts; a bare or solo host is one after them (e.g. gpu-d, gpu-e)"
  echo "${#prefix}"
}

# A bare host's own package state, so that apt and dpkg inside it (role gpu_host's repository and package tasks) never
# touch the machine's: /etc/apt with no source (the bed reaches no distribution mirror; a role adds its own),
# empty apt lists and cache, a copy of the machine's dpkg database (the packages the machine has, which its /usr
# holds), its own /var/log; /usr is an overlay (holder.sh) whose upper layer takes what a package installs.
BARE_SYSTEM_DIRS="etc/apt var/lib/apt var/cache/apt var/lib/dpkg var/log"
bare_system() {                                   # bare_system HOSTDIR: create the per-host package state if missing
  local fs=$1/fs f
  [[ -f $fs/var/lib/dpkg/status ]] && return 0
  rm -rf "$fs/etc/apt" "$fs/var/lib/apt" "$fs/var/cache/apt" "$fs/var/lib/dpkg" "$fs/var/log" "$1/overlay"
  mkdir -p "$fs/etc/apt"/{apt.conf.d,auth.conf.d,keyrings,preferences.d,sources.list.d,trusted.gpg.d} \
    "$fs/var/lib/apt/lists/partial" "$fs/var/cache/apt/archives/partial" "$fs/var/log/apt" "$fs/var/lib/dpkg"
  for f in 01autoremove 70debconf; do                # what Debian's own packages put there; no site settings
    [[ -f /etc/apt/apt.conf.d/$f ]] && cp /etc/apt/apt.conf.d/$f "$fs/etc/apt/apt.conf.d/"
  done
  cp /etc/apt/trusted.gpg.d/debian-archive-* "$fs/etc/apt/trusted.gpg.d/" 2>/dev/null || true
  cp -a /var/lib/dpkg/. "$fs/var/lib/dpkg/"
  rm -f "$fs/var/lib/dpkg/lock" "$fs/var/lib/dpkg/lock-frontend" "$fs/var/lib/dpkg/triggers/Lock"
}

bare_up() {                                       # bare_up NAME: holder, dockerd (no daemon.json), sshd, images
  local n=$1 i p hd=$B/$1 base=gpufleet/bed-base:bookworm
  i=$(bare_index "$n")
  BARE=$n
  EXTRA_DIRS="opt/gpufleet $BARE_SYSTEM_DIRS"     # the venv's default place (/opt/gpufleet/venv) is per host
  OVERLAYS=usr
  names+=("$n")
  ensure_tools
  ensure_bridge
  ensure_keys
  host_files "$n" "$i"
  if ! p=$(holder_pid "$n"); then
    bare_system "$hd"
    start_holder "$n" "$i"
    p=$(pid_in "$hd/holder.pid")
  fi
  # dockerd as the engine package leaves it on a fresh machine: running, no /etc/docker/daemon.json.
  in_host "$p" env GPUFLEET_HOST="$n" "$HERE/dockerd-ctl.sh" start
  start_sshd "$n" "$p"
  names=("$n")
  sync_images || { log "image copy failed; trying again"; sync_images; } || die "loading images into $n failed"
  # The GPU check's image in its podman storage too (a podman preparation's container check runs it).
  if have_podman && main_docker image inspect "$base" >/dev/null 2>&1 &&
    ! in_host "$p" podman image exists "docker.io/$base"; then
    main_docker save "$base" | in_host "$p" podman load -q >/dev/null
    in_host "$p" podman tag "localhost/$base" "docker.io/$base"
    in_host "$p" podman untag "localhost/$base" "localhost/$base" 2>/dev/null || true
  fi
  {
    inventory_head " bare $n: the bare host (role gpu_host prepares it)." no-venv
    echo "        $n:"
    echo "          ansible_host: $(addr_of "$i")"
    echo "          ansible_python_interpreter: /opt/gpufleet/venv/bin/python  # what role gpu_host creates"
    echo "          gpufleet_runtime: docker"
    echo "          gpufleet_fake_gpus: $(gpuset_of "$n" "$i")"
    echo "          # no systemd in a simulated host: the role starts and restarts dockerd with these"
    echo "          gpu_host_docker_start_command: [$HERE/dockerd-ctl.sh, start]"
    echo "          gpu_host_docker_restart_command: [$HERE/dockerd-ctl.sh, restart]"
  } | write_if_changed "$hd/inventory.yml"
  wait_sshd "$n" "$i"
  log "$n: up (bare; inventory $hd/inventory.yml)"
}

solo_up() {                                       # solo_up NAME [SET]: a prepared host with an inventory of its own
  local n=$1 i hd=$B/$1 set=${2:-1x-h100}
  i=$(bare_index "$n")
  [[ -f $ROOT/sim/nvml/examples/$set.json ]] || die "no fake GPU set '$set' (sim/nvml/examples/$set.json)"
  GPUFLEET_HOSTS_GPUS="$n=$set ${GPUFLEET_HOSTS_GPUS:-}"
  names+=("$n")
  ensure_tools
  mkdir -p "$B"
  ensure_bridge
  ensure_keys
  start_prepared "$n" "$i"
  names=("$n")
  sync_images || { log "image copy failed; trying again"; sync_images; } || die "loading images into $n failed"
  {
    inventory_head " solo $n: a prepared simulated host outside the shared inventory."
    echo "        $n:"
    echo "          ansible_host: $(addr_of "$i")"
    echo "          gpufleet_runtime: docker"
    echo "          gpufleet_labels: {solo: true}"
    echo "          gpufleet_fake_gpus: $set"
  } | write_if_changed "$hd/inventory.yml"
  wait_sshd "$n" "$i"
  log "$n: up (solo; inventory $hd/inventory.yml)"
}

bare_reset() {                                    # bare_reset NAME: down, then forget what a preparation made
  local n=$1 hd=$B/$1
  bare_index "$n" >/dev/null
  [[ -d $hd ]] || return 0
  stop_host "$n" quiet
  rm -rf "$hd/fs/opt" "$hd/fs/etc/docker" "$hd/fs/etc/cdi" "$hd/fs/var/lib/gpufleet" "$hd/fs/root" "$hd/fs/tmp" \
    "$hd/fs/etc/apt" "$hd/fs/var/lib/apt" "$hd/fs/var/cache/apt" "$hd/fs/var/lib/dpkg" "$hd/fs/var/log" "$hd/overlay" \
    "$hd/fake-gpus.json"
  log "$n: reset"
}

case "${1:-}" in
  up) up ;;
  bare) bare_up "${2:?usage: $0 bare NAME}" ;;
  bare-down) bare_index "${2:?usage: $0 bare-down NAME}" >/dev/null && stop_host "$2" ;;
  bare-reset) bare_reset "${2:?usage: $0 bare-reset NAME}" ;;
  solo) solo_up "${2:?usage: $0 solo NAME [SET]}" "${3:-}" ;;
  solo-down) bare_index "${2:?usage: $0 solo-down NAME}" >/dev/null && stop_host "$2" ;;
  down) down ;;
  status) status ;;
  clean)
    down
    rm -rf "$B"
    ;;
  *) echo "usage: $0 up|down|status|clean|bare NAME|bare-down NAME|bare-reset NAME|solo NAME [SET]|solo-down NAME" >&2; exit 2 ;;
esac
