#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (and a no-op on a prepared one):
#   Debian packages, the Python venv (.venv, from requirements-test.txt: the controller's requirements.txt, the GPU
#   hosts' requirements-host.txt and the tools), the collection path (.build/collections),
#   then the simulated test bed (sim/bed.sh up: dockerd/podman, images, fake GPUs, fake hub).
# Usage: hack/setup.sh [--no-bed]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '[setup] %s\n' "$*" >&2; }

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

PY=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-host.txt requirements-test.txt | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log "creating the Python venv (.venv)"
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import ansible, docker, huggingface_hub, pynvml, yaml, jinja2, prometheus_client, requests"
  echo "$want" > "$stamp"
fi

# The bed's compile cache for zip imports (sim/hosts/zipcache.py: what AnsiballZ modules import on the simulated
# hosts), on when GPUFLEET_ZIPIMPORT_CACHE is set (hack/env.sh, the hosts' sshd): a link to it and a .pth that imports
# it, in the venv's site-packages.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
ln -sfn "$ROOT/sim/hosts/zipcache.py" "$site/gpufleet_zipcache.py"
echo 'import os; os.environ.get("GPUFLEET_ZIPIMPORT_CACHE") and __import__("gpufleet_zipcache")' >"$site/gpufleet_zipcache.pth"

# The collection on an Ansible collection path (the repo root is the collection root).
mkdir -p .build/collections/ansible_collections/gpufleet
ln -sfn "$ROOT" .build/collections/ansible_collections/gpufleet/vllm

if [[ "${1:-}" != "--no-bed" && -x sim/bed.sh ]]; then
  sim/bed.sh up
fi
log "ready"
