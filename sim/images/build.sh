#!/usr/bin/env bash
# Local images of the test bed, built without any registry.
#   sim/images/build.sh base      gpufleet/bed-base:bookworm  (mmdebstrap rootfs + docker import; cached by a label: the recipe's hash)
#   sim/images/build.sh standin   vllm/vllm-openai:{v0.8.5,v0.10.2,v0.33.0,latest}  (cached by a content-hash label)
#   sim/images/build.sh podman    copy those images into podman's storage (only when missing or a different id)
#   sim/images/build.sh all       the three above, in order
# FORCE=1 rebuilds even when the cache says it is up to date.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BASE_IMAGE=${GPUFLEET_BASE_IMAGE:-gpufleet/bed-base:bookworm}
REPO=vllm/vllm-openai
WORK=$ROOT/.build/images
FORCE=${FORCE:-0}
MIRROR=${GPUFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf '[images] %s\n' "$*" >&2; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The base image's recipe (this function's text): its label, so a changed recipe builds it again.
base_hash() { declare -f build_base | sha256sum | cut -c1-16; }

build_base() {
  local hash
  hash=$(base_hash)
  if [[ "$FORCE" != 1 ]] && [[ "$(docker image inspect -f '{{index .Config.Labels "gpufleet.base.hash"}}' "$BASE_IMAGE" 2>/dev/null)" == "$hash" ]]; then
    log "$BASE_IMAGE up to date ($hash)"
    return 0
  fi
  mkdir -p "$WORK"
  local tar=$WORK/bed-base.tar
  log "mmdebstrap bookworm -> $tar"
  # essential + the few packages the bed needs; docs, man pages and locales are dropped by dpkg path filters. The
  # bytecode Debian's packages compile at install stays (about 10 MB): without it every Python that starts in a
  # container (the vLLM stand-in, Ray) compiled the standard library first, 0.4 s of CPU of its 0.54 s start.
  # shellcheck disable=SC2016  # the hooks' "$1" (the rootfs) is expanded by mmdebstrap, not here
  mmdebstrap --variant=essential --mode=root --format=tar \
    --include=python3,python3-requests,ca-certificates,procps,curl \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*.log' \
    --customize-hook='find "$1"/usr/lib/python3* -depth -type d -name test -path "*/python3.*/test" -exec rm -rf {} +' \
    bookworm "$tar" "$MIRROR" >"$WORK/mmdebstrap.log" 2>&1 || {
    tail -30 "$WORK/mmdebstrap.log" >&2
    return 1
  }
  log "docker import -> $BASE_IMAGE"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.title=gpufleet-bed-base org.opencontainers.image.source=gpufleet.vllm/sim/images gpufleet.base.hash=$hash" \
    "$tar" "$BASE_IMAGE" >/dev/null
  rm -f "$tar"
}

# The flag-table modules the stand-in parses argv with (the generated tables of
# plugins/module_utils/_vllm/flag_tables), copied into one directory. Prints the directory.
tables_dir() {
  local out=$WORK/tables f
  rm -rf "$out"
  mkdir -p "$out"
  for f in "$ROOT/plugins/module_utils/_vllm/flag_tables"/v[0-9]*.py; do
    [[ -f "$f" ]] && cp "$f" "$out/"
  done
  echo "$out"
}

# Versions = the table modules' names (v0_10_2.py -> 0.10.2), sorted by version.
table_versions() {
  local d=$1 f
  for f in "$d"/v[0-9]*.py; do
    basename "$f" .py | sed -e 's/^v//' -e 's/_/./g'
  done | sort -V
}

content_hash() {
  local tdir=$1
  {
    docker image inspect -f '{{.Id}}' "$BASE_IMAGE"
    (cd "$HERE/../standin" && find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.md' | LC_ALL=C sort | xargs sha256sum)
    (cd "$tdir" && find . -maxdepth 1 -name '*.py' -type f | LC_ALL=C sort | xargs sha256sum)
    sha256sum <"$HERE/build.sh"
  } | sha256sum | cut -c1-16
}

# Dockerfile of one stand-in image (ENTRYPOINT cannot come from a build arg, so it is written per version).
standin_dockerfile() {
  local ver=$1 entry
  if [[ "$(printf '%s\n0.9.0\n' "$ver" | sort -V | head -1)" != 0.9.0 ]]; then
    entry='["python3", "-m", "vllm.entrypoints.openai.api_server"]'
  else
    entry='["vllm", "serve"]'
  fi
  cat <<DOCKERFILE
FROM $BASE_IMAGE
COPY standin /opt/standin/standin
COPY vllm /opt/standin/vllm
COPY tables /opt/standin/tables
COPY bin/vllm /usr/local/bin/vllm
RUN python3 -m compileall -q /opt/standin >/dev/null
ENV VLLM_VERSION=$ver PYTHONPATH=/opt/standin PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \\
    VLLM_USAGE_SOURCE=production-docker-image
WORKDIR /vllm-workspace
LABEL org.opencontainers.image.version=$ver org.opencontainers.image.title=vllm-openai \\
      org.opencontainers.image.description="gpufleet vLLM stand-in (sim/standin)" gpufleet.standin.hash=$2
ENTRYPOINT $entry
DOCKERFILE
}

build_standin() {
  have_image "$BASE_IMAGE" || build_base
  local tdir versions hash newest ctx
  tdir=$(tables_dir)
  mapfile -t versions < <(table_versions "$tdir")
  [[ ${#versions[@]} -gt 0 ]] || { log "no flag tables in $tdir"; return 1; }
  newest=${versions[-1]}
  hash=$(content_hash "$tdir")
  ctx=$WORK/standin-ctx
  local prepared=0 v tag have old_ids=()
  for v in "${versions[@]}"; do
    tag=$REPO:v$v
    have=$(docker image inspect -f '{{index .Config.Labels "gpufleet.standin.hash"}}' "$tag" 2>/dev/null || true)
    if [[ "$FORCE" != 1 && "$have" == "$hash" ]]; then
      log "$tag up to date ($hash)"
      continue
    fi
    [[ -n "$have" ]] && old_ids+=("$(docker image inspect -f '{{.Id}}' "$tag")")
    if [[ $prepared == 0 ]]; then
      rm -rf "$ctx"
      mkdir -p "$ctx/tables" "$ctx/bin"
      cp -r "$HERE/../standin/standin" "$HERE/../standin/vllm" "$ctx/"
      cp "$HERE/../standin/bin/vllm" "$ctx/bin/"
      find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
      cp "$tdir"/v[0-9]*.py "$ctx/tables/"
      prepared=1
    fi
    log "building $tag"
    standin_dockerfile "$v" "$hash" >"$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null 2>"$WORK/build.err" || {
      cat "$WORK/build.err" >&2
      return 1
    }
  done
  # latest = the newest table's image (same image id, another tag).
  if [[ "$(docker image inspect -f '{{.Id}}' "$REPO:latest" 2>/dev/null)" != "$(docker image inspect -f '{{.Id}}' "$REPO:v$newest")" ]]; then
    docker tag "$REPO:v$newest" "$REPO:latest"
    log "$REPO:latest -> v$newest"
  fi
  rm -rf "$ctx"
  # Superseded stand-in images: removed unless a container still uses them (docker refuses then).
  local id
  for id in "${old_ids[@]}"; do docker rmi "$id" >/dev/null 2>&1 || true; done
}

# Copy docker images into podman storage under their full docker.io/ names (podman would otherwise try to pull).
to_podman() {
  command -v podman >/dev/null || { log "podman not installed; skipped"; return 0; }
  local tags=() t
  have_image "$BASE_IMAGE" && tags+=("$BASE_IMAGE")
  while read -r t; do [[ -n "$t" && "$t" != *"<none>"* ]] && tags+=("$t"); done \
    < <(docker images --format '{{.Repository}}:{{.Tag}}' "$REPO")
  local stale=()
  for t in "${tags[@]}"; do
    local full=docker.io/$t did pid
    did=$(docker image inspect -f '{{.Id}}' "$t")
    pid=$(podman image inspect -f '{{.Id}}' "$full" 2>/dev/null || true)
    if [[ "sha256:$pid" == "$did" || "$pid" == "$did" ]]; then
      log "podman $full up to date"
      continue
    fi
    [[ -n "$pid" ]] && stale+=("$pid")
    if podman image exists "${did#sha256:}"; then
      podman tag "${did#sha256:}" "$full"
      log "podman tag $full (image already loaded)"
      continue
    fi
    log "podman load $full"
    local loaded
    loaded=$(docker save "$t" | podman load 2>&1 | sed -n 's/^Loaded image[^:]*: *//p' | tail -1)
    # `docker save` of a tag loads as that name (or localhost/<name>); make sure the docker.io name points at it.
    podman tag "${loaded:-$t}" "$full" 2>/dev/null || podman tag "$did" "$full"
    if [[ "$loaded" == localhost/* ]]; then
      podman untag "$loaded" "$loaded" 2>/dev/null || true
    fi
  done
  # Superseded copies: removed unless still tagged or used by a container (podman refuses then).
  for t in "${stale[@]}"; do podman rmi "$t" >/dev/null 2>&1 || true; done
}

# One build at a time (several test sessions may ask at once); the loser then finds the cache up to date.
mkdir -p "$WORK"
exec 9>"$WORK/.lock"
flock 9

case "${1:-all}" in
  base) build_base ;;
  standin) build_standin ;;
  podman) to_podman ;;
  all) build_base; build_standin; to_podman ;;
  *) echo "usage: $0 base|standin|podman|all" >&2; exit 2 ;;
esac
