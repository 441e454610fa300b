#!/usr/bin/env bash
# The collection's execution environment (EE) for the test bed, built without any registry:
#   sim/images/ee/build.sh        build gpufleet/ee:<hash> (and tag gpufleet/ee:latest) unless present; prints the tag
# The hash covers every input (the base image's id, requirements.txt, bindep.txt, meta/execution-environment.yml,
# requirements-ee.txt, the Dockerfile and this script), so the test command builds it once per change.
# FORCE=1 rebuilds.
#
# Why not `ansible-builder build`: the Containerfile `ansible-builder create` generates from
# meta/execution-environment.yml (with images.base_image = the bed's base and options.package_manager_path =
# /usr/bin/apt-get) needs, inside the build, what this machine cannot give a container:
#   - PyPI over HTTPS (`pip install ansible-core ansible-runner`, `pip install bindep pyyaml packaging`, the
#     requirements, `pip install dumb-init`): the machine reaches PyPI only through a TLS proxy whose CA is not in
#     the image, so every pip call in the build fails certificate verification;
#   - pip in the base (its pip_install script falls back to ensurepip, absent from Debian's python3 without
#     python3-venv, then to https://bootstrap.pypa.io/get-pip.py, the same TLS problem);
#   - dnf/microdnf (its assemble and install-from-bindep scripts pass dnf options and clean dnf caches).
# So this Dockerfile builds the equivalent image from the same requirement files: the wheels are downloaded on the
# host (pip wheel, which has the proxy's CA) and installed from them with --no-index; the bindep [platform:dpkg]
# packages are downloaded on the host too (apt-get --download-only resolved against the base image's dpkg status,
# so only what the base lacks; the base is mmdebstrap's essential variant, without apt) and installed with dpkg -i.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
BASE_IMAGE=${GPUFLEET_BASE_IMAGE:-gpufleet/bed-base:bookworm}
REPO=gpufleet/ee
WORK=$ROOT/.build/images
CACHE=$ROOT/.cache/ee-wheels
FORCE=${FORCE:-0}
PIP=${PIP:-$ROOT/.venv/bin/pip}

log() { printf '[ee] %s\n' "$*" >&2; }

# bindep.txt's packages for Debian: lines without a profile, or with platform:dpkg among their profiles.
system_packages() {
  sed -e 's/#.*//' "$ROOT/bindep.txt" | awk 'NF {
    if ($0 !~ /\[/ || $0 ~ /platform:dpkg/) print $1 }' | sort -u
}

inputs_hash() {
  {
    docker image inspect -f '{{.Id}}' "$BASE_IMAGE"
    (cd "$ROOT" && sha256sum requirements.txt bindep.txt meta/execution-environment.yml)
    (cd "$HERE" && sha256sum requirements-ee.txt Dockerfile build.sh)
  } | sha256sum | cut -c1-16
}

mkdir -p "$WORK"
exec 9>"$WORK/.ee.lock"
flock 9

docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || "$ROOT/sim/images/build.sh" base
hash=$(inputs_hash)
tag=$REPO:$hash
if [[ "$FORCE" != 1 ]] && docker image inspect "$tag" >/dev/null 2>&1; then
  log "$tag up to date"
  echo "$tag"
  exit 0
fi

# Wheels, cached by the requirement files' hash (pip itself too: the base image has none).
req_hash=$( (cd "$ROOT" && cat requirements.txt "$HERE/requirements-ee.txt") | sha256sum | cut -c1-16)
wheels=$CACHE/$req_hash
if [[ ! -f "$wheels/.complete" ]]; then
  log "pip wheel -> $wheels"
  rm -rf "$wheels"
  mkdir -p "$wheels"
  "$PIP" wheel -q --disable-pip-version-check -w "$wheels" pip \
    -r "$ROOT/requirements.txt" -r "$HERE/requirements-ee.txt" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  ls "$wheels"/ansible_core-*.whl "$wheels"/ansible_runner-*.whl >/dev/null
  touch "$wheels/.complete"
fi

# Debian packages of bindep.txt plus what the base image lacks of their dependencies, cached by both.
mapfile -t pkgs < <(system_packages)
deb_hash=$( (docker image inspect -f '{{.Id}}' "$BASE_IMAGE"; echo "${pkgs[@]}") | sha256sum | cut -c1-16)
debs=$ROOT/.cache/ee-debs/$deb_hash
if [[ ! -f "$debs/.complete" ]]; then
  log "apt-get --download-only ${pkgs[*]} -> $debs"
  rm -rf "$debs"
  mkdir -p "$debs/partial"
  docker run --rm "$BASE_IMAGE" cat /var/lib/dpkg/status >"$debs/status"
  apt_dl() {
    apt-get -qq -o Dir::State::status="$debs/status" -o Dir::Cache::archives="$debs" -o Debug::NoLocking=1 \
      --download-only --no-install-recommends -y install "${pkgs[@]}" >&2
  }
  apt_dl || { apt-get update -qq >&2 && apt_dl; }
  rm -rf "$debs/partial" "$debs/status" "$debs/lock"
  touch "$debs/.complete"
fi

ctx=$WORK/ee-ctx
rm -rf "$ctx"
mkdir -p "$ctx/debs"
cp "$HERE/Dockerfile" "$HERE/requirements-ee.txt" "$ROOT/requirements.txt" "$ctx/"
cp -r "$wheels" "$ctx/wheels"
cp "$debs"/*.deb "$ctx/debs/"
rm -f "$ctx/wheels/.complete"
log "building $tag (Debian packages: ${pkgs[*]})"
old=$(docker image inspect -f '{{.Id}}' "$REPO:latest" 2>/dev/null || true)
DOCKER_BUILDKIT=0 docker build -q --force-rm --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "EE_HASH=$hash" -t "$tag" "$ctx" \
  >/dev/null 2>"$WORK/ee-build.err" || {
  cat "$WORK/ee-build.err" >&2
  exit 1
}
docker tag "$tag" "$REPO:latest"
rm -rf "$ctx"
# The superseded image: removed unless a container still uses it (docker refuses then).
if [[ -n "$old" && "$old" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]]; then
  docker rmi "$old" >/dev/null 2>&1 || true
fi
echo "$tag"
