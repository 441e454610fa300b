#!/usr/bin/env bash
# The vLLM stand-in with real Ray, for multi-host replicas (docs/ray.md): gpufleet/bed-vllm-ray:v<version>, FROM the
# stand-in image vllm/vllm-openai:v<version> plus Ray from PyPI (pip install --target, the image's Python 3.11) and
# the `ray` command. Not a vllm/vllm-openai tag on purpose: sim/hosts copies every such tag into every host and
# podman; this one (≈300 MB) goes only where a multi-host test runs.
#   sim/images/ray.sh build            build when the content hash (stand-in image id, Ray version, this script) moved
#   sim/images/ray.sh load HOST...     load it into those simulated hosts' dockerd when their copy differs
#   sim/images/ray.sh ref              print the image reference
# FORCE=1 rebuilds. GPUFLEET_RAY_VERSION (default 2.60.0), GPUFLEET_RAY_STANDIN (default 0.10.2).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RAY_VERSION=${GPUFLEET_RAY_VERSION:-2.60.0}
STANDIN=${GPUFLEET_RAY_STANDIN:-0.10.2}
FROM=vllm/vllm-openai:v$STANDIN
IMAGE=gpufleet/bed-vllm-ray:v$STANDIN
WORK=$ROOT/.build/images
HOSTS_DIR=$ROOT/.build/hosts
FORCE=${FORCE:-0}
# Ray's raylet, GCS and _raylet.so need libstdc++, which the bed's base image leaves out: the machine's copy (the same
# Debian release as the image) goes in.
LIBSTDCXX=$(readlink -f /usr/lib/x86_64-linux-gnu/libstdc++.so.6)

log() { printf '[ray-image] %s\n' "$*" >&2; }

content_hash() {
  {
    docker image inspect -f '{{.Id}}' "$FROM"
    echo "ray==$RAY_VERSION"
    sha256sum <"$LIBSTDCXX"
    sha256sum <"$HERE/ray.sh"
  } | sha256sum | cut -c1-16
}

# Ray and its dependencies for the image's Python (3.11, like the bed's venv), fetched once per Ray version.
site_dir() {
  local site=$WORK/ray-site-$RAY_VERSION
  if [[ ! -f "$site/.complete" ]]; then
    rm -rf "$site"
    log "pip install --target $site ray==$RAY_VERSION"
    "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile --target "$site" \
      "ray==$RAY_VERSION" >"$WORK/ray-pip.log" 2>&1 || { tail -20 "$WORK/ray-pip.log" >&2; return 1; }
    rm -rf "${site:?}/bin"
    find "$site" -name __pycache__ -prune -exec rm -rf {} +
    touch "$site/.complete"
  fi
  echo "$site"
}

build() {
  docker image inspect "$FROM" >/dev/null 2>&1 || "$HERE/build.sh" standin
  local hash have site ctx
  hash=$(content_hash)
  have=$(docker image inspect -f '{{index .Config.Labels "gpufleet.ray.hash"}}' "$IMAGE" 2>/dev/null || true)
  if [[ "$FORCE" != 1 && "$have" == "$hash" ]]; then
    log "$IMAGE up to date ($hash)"
    return 0
  fi
  site=$(site_dir)
  ctx=$WORK/ray-ctx
  rm -rf "$ctx"
  mkdir -p "$ctx"
  cp -a "$site" "$ctx/site"
  rm -f "$ctx/site/.complete"
  printf '%s\n' '#!/usr/bin/python3' 'import sys' 'from ray.scripts.scripts import main' 'sys.exit(main())' >"$ctx/ray"
  chmod 755 "$ctx/ray"
  cp "$LIBSTDCXX" "$ctx/libstdc++.so.6"
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $FROM
COPY site /opt/ray-site
COPY ray /usr/local/bin/ray
COPY libstdc++.so.6 /usr/lib/x86_64-linux-gnu/libstdc++.so.6
# Byte-compiled once here: the stand-in's image never writes .pyc (PYTHONDONTWRITEBYTECODE), and Ray's agents compiling
# ray from source at every start outlast the raylet's fixed 15 s wait for them on a busy 2-core machine
# (ray-project/ray#65983: "Timed out waiting for file .../dashboard_agent_listen_port_<node>").
RUN python3 -m compileall -q -j 0 /opt/ray-site >/dev/null
ENV PYTHONPATH=/opt/standin:/opt/ray-site RAY_USAGE_STATS_ENABLED=0
LABEL gpufleet.ray.hash=$hash gpufleet.ray.version=$RAY_VERSION
DOCKERFILE
  log "building $IMAGE (ray $RAY_VERSION on the v$STANDIN stand-in)"
  local old
  old=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$ctx" >/dev/null 2>"$WORK/ray-build.err" || {
    cat "$WORK/ray-build.err" >&2
    return 1
  }
  rm -rf "$ctx"
  if [[ -n "$old" ]]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
}

load() {
  local id host sock have
  id=$(docker image inspect -f '{{.Id}}' "$IMAGE")
  for host in "$@"; do
    sock=$HOSTS_DIR/$host/fs/run/docker.sock
    [[ -S "$sock" ]] || { log "$host: no dockerd socket at $sock (sim/hosts/hosts.sh up)"; return 1; }
    have=$(DOCKER_HOST=unix://$sock docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    if [[ "$have" == "$id" ]]; then
      log "$host: $IMAGE up to date"
      continue
    fi
    log "$host: loading $IMAGE"
    docker save "$IMAGE" | DOCKER_HOST=unix://$sock docker load -q >/dev/null
    if [[ -n "$have" ]]; then DOCKER_HOST=unix://$sock docker rmi "$have" >/dev/null 2>&1 || true; fi
  done
}

mkdir -p "$WORK"
exec 8>"$WORK/.ray.lock"
flock 8
case "${1:-build}" in
  build) build ;;
  load) shift; build; load "$@" ;;
  ref) echo "$IMAGE" ;;
  *) echo "usage: $0 build|load HOST...|ref" >&2; exit 2 ;;
esac
