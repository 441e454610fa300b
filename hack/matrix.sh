#!/usr/bin/env bash
# Version matrix (issue #18): the collection on the older supported ansible-cores, with this machine's Python (3.11:
# every core from 2.16 to 2.19 supports it as a controller Python; 2.20 needs 3.12). The test venv (.venv) is the
# newest core (2.19, requirements-test.txt): the full sanity, unit and integration tests run there (hack/test.sh), so
# the matrix adds only what can differ with the core. hack/test.sh runs it by default (GPUFLEET_TEST_MATRIX=0: not).
#   hack/matrix.sh [CORE...]        default: 2.16 2.17 2.18
#   GPUFLEET_MATRIX_CONVERGE        the cores that also run the fleet converge: "all" (default: 10-20 s each on the
#                                   simulated hosts), "oldest" (the first core given), "none", or a list
#   GPUFLEET_MATRIX_WORKERS         pytest-xdist workers for the unit tests (default 2; 0 = no xdist)
# Per core:
#   venv      .cache/matrix/core-<core>-<hash>: a venv whose own site-packages hold ansible-core==<core>.* (and
#             whichever of its dependencies the test venv's do not satisfy), then the test venv's site-packages (a
#             .pth file): every other package is the test venv's own version, so only the core differs. Built in
#             parallel for all cores (pip downloads: network-bound on a fresh machine), kept while the hash of the
#             core, the Python and venv_for's own text is the same. pip's complaint in its log that the test venv's
#             ansible-lint, ansible-compat and molecule want another ansible-core is expected: they never run there.
#   sanity    ansible-test sanity --test import --test validate-modules with this core's ansible-test
#             (the module docs and argument specs, the import rules of this core; not compile: the same Python 3.11
#             compiles the same files on every core, hack/test.sh's sanity runs it), on a copy of its own
#             (.build/matrix/sanity-<core>, so it can run beside hack/test.sh's sanity); all tests: hack/sanity.sh.
#   unit      the unit test files that import ansible-core, directly or through the collection's files
#             (hack/matrix_tests.py: the modules' argument specs and main(), the action plugins, the filters, the
#             module_utils on ansible.module_utils.*); the others check the collection's pure logic, the same on
#             every core.
#   converge  one fleet converge on one small inventory (the solo simulated host gpu-e, sim/hosts/hosts.sh solo, one
#             replica): converge, a second converge with changed=0, then the replica removed; the cores' converges
#             one after the other under one hold of gpu-e's lock (molecule's scenarios on gpu-e take it too), never
#             the fleet integration tests' hosts (gpu-a/b/c), so the fleet tests never wait for the matrix.
# Exit status: the number of failed steps (0: all passed). A table of each step's seconds at the end.
# shellcheck disable=SC2317  # step runs the functions indirectly
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=env.sh
source "$ROOT/hack/env.sh"
CORES=("$@")
if ((${#CORES[@]} == 0)); then CORES=(2.16 2.17 2.18); fi
case "${GPUFLEET_MATRIX_CONVERGE:-all}" in
oldest) CONVERGE=" ${CORES[0]} " ;;
all) CONVERGE=" ${CORES[*]} " ;;
none) CONVERGE=" " ;;
*) CONVERGE=" $GPUFLEET_MATRIX_CONVERGE " ;;
esac
WORKERS=${GPUFLEET_MATRIX_WORKERS:-2}
XDIST=()
if [[ "$WORKERS" != 0 ]]; then XDIST=(-n "$WORKERS"); fi
TEST_VENV=$ROOT/.venv
PY=$TEST_VENV/bin/python
FAILED=0
ROWS=()
T_START=$(date +%s.%N)

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
  printf '\n=== matrix timing (seconds; load average at the end: %s)\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
  for row in "${ROWS[@]}"; do
    IFS='|' read -r n s r <<<"$row"
    printf '%-34s %8s  %s\n' "$n" "$s" "$r"
  done
  printf '%-34s %8s\n' total "$(awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
}
trap report EXIT

venv_dir() {  # venv_dir CORE: the venv's directory (the hash names what it is made of)
  local hash
  hash=$({ echo "$1"; "$PY" -VV; echo "$TEST_VENV"; declare -f venv_for; } | sha256sum | cut -c1-12)
  echo "$ROOT/.cache/matrix/core-$1-$hash"
}

venv_for() {  # venv_for CORE: make the venv unless it is complete; older venvs of that core are removed
  local core=$1 dir site old
  dir=$(venv_dir "$core")
  [[ -f "$dir/.complete" ]] && return 0
  for old in "$ROOT/.cache/matrix/core-$core-"*; do if [[ "$old" != "$dir" ]]; then rm -rf "$old"; fi; done
  rm -rf "$dir"
  # No pip of its own (the test venv's pip installs into it: --python) and no byte-compiling at install: what the
  # matrix imports is compiled when imported, into hack/env.sh's PYTHONPYCACHEPREFIX (cold: 12 -> 4 CPU-s a core).
  "$PY" -m venv --without-pip "$dir"
  site=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  "$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' >"$site/zz-gpufleet-test-venv.pth"
  "$PY" -m pip --python "$dir/bin/python" install -q --disable-pip-version-check --no-compile "ansible-core==$core.*" 2>&1 \
    | grep -v '^WARNING: Location' || true
  [[ "$("$dir/bin/ansible" --version)" == *"[core $core."* ]] || { echo "no ansible-core $core in $dir" >&2; return 1; }
  touch "$dir/.complete"
}

venvs() {  # every core's venv, in parallel
  local core rc=0 pids=()
  mkdir -p "$ROOT/.cache/matrix"
  for core in "${CORES[@]}"; do
    venv_for "$core" >"$ROOT/.cache/matrix/build-$core.log" 2>&1 &
    pids+=("$!")
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      echo "core ${CORES[$i]}: venv failed:"
      cat "$ROOT/.cache/matrix/build-${CORES[$i]}.log"
      rc=1
    fi
  done
  return "$rc"
}

sanity() {
  local core=$1
  GPUFLEET_SANITY_VENV=$(venv_dir "$core") GPUFLEET_SANITY_COPY=$ROOT/.build/matrix/sanity-$core \
    "$ROOT/hack/sanity.sh" --test import --test validate-modules
}

unit() {
  local venv tests
  venv=$(venv_dir "$1")
  mapfile -t tests < <("$PY" "$ROOT/hack/matrix_tests.py" "$ROOT")
  echo "${#tests[@]} test files (hack/matrix_tests.py)"
  PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest "${tests[@]}" -q "${XDIST[@]}" -p no:cacheprovider
}

converge() {
  local venv work inv rc=0
  venv=$(venv_dir "$1")
  work=$(mktemp -d)
  inv=$work/inventory
  mkdir -p "$inv/group_vars/all"
  cp "$ROOT/.build/hosts/gpu-e/inventory.yml" "$inv/hosts.yml"
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
    "${play[@]}" playbooks/converge.yml >"$work/1.log" 2>&1 || { tail -40 "$work/1.log"; exit 1; }
    "${play[@]}" playbooks/converge.yml >"$work/2.log" 2>&1 || { tail -40 "$work/2.log"; exit 1; }
    grep -Eq '^gpu-e +: ok=[0-9]+ +changed=0 +unreachable=0 +failed=0' "$work/2.log" \
      || { echo "second converge changed something:"; grep -A3 RECAP "$work/2.log"; exit 1; }
    "${play[@]}" playbooks/stop.yml -e names=matrixchat -e state=absent >"$work/3.log" 2>&1 || { tail -40 "$work/3.log"; exit 1; }
  ) || rc=$?
  rm -rf "$work"
  return "$rc"
}

lock_wait() {  # gpu-e's lock (fd 9), held by molecule's scenarios on it and test_node_agent_role of any test run
  flock -w 1800 9 || { echo "waited 30 min for .build/hosts/.gpu-e.lock (held by another run): no converge"; return 1; }
  # gpu-e started if it is not (idempotent); without fd 9, which its daemons would otherwise keep (and the lock with it)
  "$ROOT/sim/hosts/hosts.sh" solo gpu-e 9>&- || return
  "$ROOT/sim/steps.d/70-fleet.sh" up >/dev/null # the model the converges serve
  LOCKED=1
}

step "venvs (${CORES[*]}, parallel)" venvs
READY=()
for core in "${CORES[@]}"; do
  if [[ ! -f "$(venv_dir "$core")/.complete" ]]; then continue; fi
  READY+=("$core")
  step "core $core: sanity" sanity "$core"
  step "core $core: unit (ansible-core API)" unit "$core"
done
# The converges, one after the other, under one hold of the lock (one wait for the other runs' fleets, not one each).
if [[ -n "${CONVERGE// /}" ]]; then
  {
    step "gpu-e lock (wait), gpu-e up" lock_wait
    # Holding the lock, the converges are what molecule's scenarios on gpu-e wait for: at the normal CPU priority even
    # when hack/test.sh runs the matrix niced (root may lower its niceness again; elsewhere this does nothing).
    if [[ $(id -u) == 0 ]]; then renice -n 0 -p "$BASHPID" >/dev/null 2>&1 || true; fi
    for core in "${READY[@]}"; do
      if [[ -n ${LOCKED:-} && "$CONVERGE" == *" $core "* ]]; then step "core $core: fleet converge" converge "$core"; fi
    done
  } 9>"$ROOT/.build/hosts/.gpu-e.lock"
fi
exit "$FAILED"
