#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (and a no-op on a prepared one):
#   Debian packages, the Python venv (.venv, from requirements-test.txt: the controller's requirements.txt, the GPU
#   hosts' requirements-host.txt and the tools), the collection path (.build/collections),
#   then the simulated test bed (sim/bed.sh up: dockerd/podman, images, fake GPUs, fake hub). The bed's engine and
#   images (on a fresh machine: a Debian rootfs from the mirror, about a minute on one core) are built while pip makes
#   the venv (downloads: the CPU is mostly idle), then the other steps run.
# Usage: hack/setup.sh [--no-bed | --bed-images]
#   --no-bed       packages and venv only
#   --bed-images   packages, venv, and of the bed only its engine and images (hack/test.sh: the rest of the bed is a
#                  phase of its own, after ansible-lint and sanity started)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '[setup] %s\n' "$*" >&2; }
MODE=${1:-all}
case "$MODE" in all | --no-bed | --bed-images) ;; *) echo "usage: hack/setup.sh [--no-bed | --bed-images]" >&2; exit 2 ;; esac

# dpkg-dev, gnupg: the bed's local apt repository (sim/hosts/toolkit/aptrepo.sh); python3-debian: what role gpu_host's
# deb822_repository needs on a host (the bare host gpu-d has the machine's packages). haproxy: the gateway's admin guard.
APT_PKGS=(docker.io podman crun uidmap mmdebstrap openssh-server openssh-client iproute2 iptables
          prometheus docker-registry gcc libc6-dev curl git rsync procps util-linux shellcheck
          dpkg-dev gnupg python3-debian haproxy)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's prometheus/docker-registry packages may start their services; the bed starts what it needs itself.

IMAGES_PID=
IMAGES_LOG=$ROOT/.build/setup-bed-images.log
if [[ "$MODE" != --no-bed && -x sim/bed.sh ]]; then
  mkdir -p .build
  sim/bed.sh up engine images >"$IMAGES_LOG" 2>&1 &
  IMAGES_PID=$!
fi

PY=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-host.txt requirements-test.txt | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log "creating the Python venv (.venv)"
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  # --no-compile: the processes of the test command and the bed (hack/env.sh's PYTHONPYCACHEPREFIX) never read the
  # __pycache__ beside the sources; they compile what they import into the prefix, once. pip's compiling of the whole
  # venv (170 MB of bytecode) cost 28 of its 84 CPU-s here, for files most of which nothing imports.
  .venv/bin/pip install -q --disable-pip-version-check --no-compile -r requirements-test.txt 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import ansible, docker, huggingface_hub, pynvml, yaml, jinja2, prometheus_client, requests"
  echo "$want" > "$stamp"
fi

# The bed's compile cache for zip imports (sim/hosts/zipcache.py: what AnsiballZ modules import on the simulated
# hosts), on when GPUFLEET_ZIPIMPORT_CACHE is set (hack/env.sh, the hosts' sshd), and its cache of the imports
# ansible-playbook finds when it builds those zips (sim/controller/depcache.py), on when GPUFLEET_ANSIBALLZ_CACHE is
# set (hack/env.sh): a link to each and a .pth that imports them, in the venv's site-packages.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
ln -sfn "$ROOT/sim/hosts/zipcache.py" "$site/gpufleet_zipcache.py"
ln -sfn "$ROOT/sim/controller/depcache.py" "$site/gpufleet_depcache.py"
cat >"$site/gpufleet_zipcache.pth" <<'PTH'
import os; os.environ.get("GPUFLEET_ZIPIMPORT_CACHE") and __import__("gpufleet_zipcache")
import os; os.environ.get("GPUFLEET_ANSIBALLZ_CACHE") and __import__("gpufleet_depcache")
PTH

# The collection on an Ansible collection path (the repo root is the collection root).
mkdir -p .build/collections/ansible_collections/gpufleet
ln -sfn "$ROOT" .build/collections/ansible_collections/gpufleet/vllm

if [[ -n "$IMAGES_PID" ]]; then
  rc=0
  wait "$IMAGES_PID" || rc=$?
  cat "$IMAGES_LOG" >&2
  if [[ $rc -ne 0 ]]; then log "the bed's engine or images failed (rc=$rc)"; exit "$rc"; fi
fi
if [[ "$MODE" == all && -x sim/bed.sh ]]; then
  sim/bed.sh up
fi
log "ready"
