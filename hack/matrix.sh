#!/usr/bin/env bash
# Version matrix (issue #18): the collection on each supported ansible-core, with this machine's Python (3.11: every
# core from 2.16 to 2.19 supports it as a controller Python; 2.20 needs 3.12).
#   hack/matrix.sh [CORE...]        default: 2.16 2.17 2.18 2.19
# Per core: a venv in .cache/matrix/core-<core>-<hash> (ansible-core==<core>.* with requirements.txt,
# requirements-host.txt, pytest and pytest-xdist; cached by the hash of those files and of this script), then
#   1. ansible-test sanity --test compile --test import (the full sanity runs on the pinned core in hack/sanity.sh);
#   2. the unit tests (tests/unit, 2 xdist workers);
#   3. one fleet converge on one small inventory (gpu-c of the simulated hosts, one replica): converge, a second
#      converge with changed=0, then the replica removed; holding the fleet-tests lock like the integration tests.
# Exit status: the number of failed steps (0: all passed). A table of each step's seconds at the end.
# shellcheck disable=SC2317,SC2016  # step runs the functions indirectly; eval expands venv_for later
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=env.sh
source "$ROOT/hack/env.sh"
CORES=("$@")
if ((${#CORES[@]} == 0)); then CORES=(2.16 2.17 2.18 2.19); fi
PY=${PYTHON:-python3}
FAILED=0
ROWS=()

step() {  # step NAME COMMAND...: run, time, record
  local name=$1 t0 rc=0
  shift
  t0=$(date +%s.%N)
  printf '\n=== matrix: %s\n' "$name"
  "$@" || rc=$?
  ROWS+=("$name|$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')|$([[ $rc -eq 0 ]] && echo ok || echo "FAILED (rc=$rc)")")
  if [[ $rc -ne 0 ]]; then FAILED=$((FAILED + 1)); fi
  return 0
}

report() {
  local row
  printf '\n=== matrix timing (seconds)\n'
  for row in "${ROWS[@]}"; do
    IFS='|' read -r n s r <<<"$row"
    printf '%-34s %8s  %s\n' "$n" "$s" "$r"
  done
}
trap report EXIT

venv_for() {  # prints the venv's directory, creating it when its requirements changed
  local core=$1 hash dir
  hash=$(cat requirements.txt requirements-host.txt "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
  dir=$ROOT/.cache/matrix/core-$core-$hash
  if [[ ! -f "$dir/.complete" ]]; then
    rm -rf "$dir"
    "$PY" -m venv "$dir"
    grep -v '^ansible-core' requirements.txt >"$dir/requirements.txt"
    "$dir/bin/pip" install -q --disable-pip-version-check "ansible-core==$core.*" -r "$dir/requirements.txt" \
      -r requirements-host.txt "pytest>=8" "pytest-xdist>=3.5" "hypothesis>=6.100" 2>&1 | grep -v '^WARNING: Location' >&2 || true
    [[ "$("$dir/bin/ansible" --version)" == *"[core $core."* ]] || return 1
    touch "$dir/.complete"
  fi
  echo "$dir"
}

sanity() {  # the collection copy hack/sanity.sh keeps (.build/sanity), checked with this core's ansible-test
  local venv=$1
  GPUFLEET_SANITY_VENV=$venv "$ROOT/hack/sanity.sh" --test compile --test import
}

unit() {
  local venv=$1
  PATH="$venv/bin:$PATH" ANSIBLE_PYTHON_INTERPRETER="$venv/bin/python" \
    "$venv/bin/python" -m pytest tests/unit -q -n 2 -p no:cacheprovider
}

converge() {
  local venv=$1 work inv rc=0
  work=$(mktemp -d)
  inv=$work/inventory
  mkdir -p "$inv/group_vars/all"
  "$venv/bin/python" - "$ROOT/.build/hosts/inventory.yml" "$inv/hosts.yml" <<'PY'
import sys, yaml
inv = yaml.safe_load(open(sys.argv[1]))
hosts = inv["all"]["children"]["gpu_hosts"]["hosts"]
inv["all"]["children"]["gpu_hosts"]["hosts"] = {"gpu-c": hosts["gpu-c"]}
yaml.safe_dump(inv, open(sys.argv[2], "w"))
PY
  cat >"$inv/group_vars/all/fleet.yml" <<YAML
gpufleet_allowed_model_dirs: ["$ROOT/.build/fleet"]
gpufleet_artifacts_dir: "$work/artifacts"
gpufleet_wait_timeout: 180
gpufleet_deployments:
  - {name: matrixchat, model: "$ROOT/.build/fleet/models/tiny-chat", vllm_version: "0.10.2", port: 8500,
     engine_options: {max_model_len: 1024}}
YAML
  local play=("$venv/bin/ansible-playbook" -i "$inv")
  export ANSIBLE_PIPELINING=1 ANSIBLE_SSH_TIMEOUT=5
  (
    flock 9
    "${play[@]}" playbooks/converge.yml >"$work/1.log" 2>&1 || { tail -40 "$work/1.log"; exit 1; }
    "${play[@]}" playbooks/converge.yml >"$work/2.log" 2>&1 || { tail -40 "$work/2.log"; exit 1; }
    grep -Eq '^gpu-c +: ok=[0-9]+ +changed=0 +unreachable=0 +failed=0' "$work/2.log" \
      || { echo "second converge changed something:"; grep -A3 RECAP "$work/2.log"; exit 1; }
    "${play[@]}" playbooks/stop.yml -e names=matrixchat -e state=absent >"$work/3.log" 2>&1 || { tail -40 "$work/3.log"; exit 1; }
  ) 9>"$ROOT/.build/hosts/.fleet-tests.lock" || rc=$?
  rm -rf "$work"
  return "$rc"
}

"$ROOT/sim/steps.d/70-fleet.sh" up >/dev/null
for core in "${CORES[@]}"; do
  venv=""
  step "core $core: venv" eval 'venv=$(venv_for "$core")'
  if [[ -z "$venv" ]]; then continue; fi
  step "core $core: sanity compile+import" sanity "$venv"
  step "core $core: unit" unit "$venv"
  step "core $core: fleet converge" converge "$venv"
done
exit "$FAILED"
