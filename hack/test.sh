#!/usr/bin/env bash
# The project's test command (README, .ci/run): set-up, lint, ansible-doc, ansible-test sanity, then unit and
# integration tests (pytest) on the real daemons of the simulated test bed; a table of each phase's seconds at the end.
# Extra arguments go to both pytest phases, e.g. `hack/test.sh -k gpu_facts`.
#
# Phases run in order; a failed phase is reported and the others still run (set-up failing stops everything), and the
# exit status is the first failure's. To add a phase: one `phase "name" command args...` line below.
#
# Environment:
#   GPUFLEET_TEST_WORKERS   pytest-xdist workers for the integration tests and, with a filter, the unit tests (default 2;
#                           0 = no xdist); without a filter the unit tests and the matrix run in one process each
#   GPUFLEET_TEST_SKIP      space-separated phase names to skip (e.g. "lint+sanity")
#   GPUFLEET_TEST_SERIAL    1: ansible-lint and sanity in the foreground (default: in the background, beside pytest)
#   GPUFLEET_TEST_MATRIX    0: without the version matrix (hack/matrix.sh, default: on, 2.16-2.18); or a list of cores
# shellcheck disable=SC2317  # phase functions are called indirectly, through phase
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WORKERS=${GPUFLEET_TEST_WORKERS:-2}
SKIP=" ${GPUFLEET_TEST_SKIP:-} "

TABLE=()  # "name|seconds|result"
FIRST_RC=0
LAST_RC=0  # the last foreground phase's
T_START=$(date +%s.%N)

section() { printf '\n=== %s\n' "$*"; }

# cpu_ticks: "busy total" jiffies of all CPUs (/proc/stat); cpu_busy T0: the machine's busy share since T0, in %
# (every process, the bed's daemons too: how much CPU a phase left idle).
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }
cpu_busy() {
  local b0 t0 b1 t1
  read -r b0 t0 <<<"$1"
  read -r b1 t1 <<<"$(cpu_ticks)"
  awk -v b="$((b1 - b0))" -v t="$((t1 - t0))" 'BEGIN { printf "%d%%", (t > 0 ? 100 * b / t : 0) }'
}
CPU_START=$(cpu_ticks)
# gauge: the CPU seconds of a fixed pure-Python loop, the same work every time: how fast this machine's CPUs are now.
# The run is CPU-bound, and that speed differs between machines and over time (on this project's test machine the
# same tests took 1.6-1.9x the CPU seconds in the afternoon that they took in the morning), so the table prints it at
# the start and at the end: compare runs' times only with their gauges beside them.
gauge() {
  python3 -c 'import time
t = time.process_time()
n = 0
for i in range(5_000_000):
    n += i
print(f"{time.process_time() - t:.2f}")' 2>/dev/null || echo "-"
}
GAUGE_START=$(gauge)
# timed CPUFILE COMMAND...: run COMMAND (in a subshell) and write the CPU seconds (user + system) of the processes it
# ran and waited for into CPUFILE: what the phase itself costs, whatever else runs beside it.
timed() {
  local f=$1 rc=0
  shift
  (
    "$@" || rc=$?
    times >"$f.times"  # (not in a pipe: that would be a new subshell, without these children)
    awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] } printf "%.0f", n }' \
      "$f.times" >"$f"
    rm -f "$f.times"
    exit "$rc"
  )
}

# phase NAME COMMAND [ARGS...]: run, time and record one phase.
phase() {
  local name=$1 t0 rc=0 secs cpu0 log
  shift
  if [[ "$SKIP" == *" $name "* ]]; then
    TABLE+=("$name|0.0|skipped")
    LAST_RC=0
    return 0
  fi
  section "$name"
  mkdir -p "$ROOT/.build/test-logs"
  log="$ROOT/.build/test-logs/${name//[^A-Za-z0-9_.-]/_}.log"
  t0=$(date +%s.%N)
  cpu0=$(cpu_ticks)
  timed "$log.cpu" "$@" 2>&1 | tee "$log" || rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  TABLE+=("$name|$secs|$([[ $rc -eq 0 ]] && echo ok || echo "FAILED (rc=$rc)")|$(cpu_busy "$cpu0")|$(cat "$log.cpu" 2>/dev/null)")
  if [[ $rc -ne 0 ]]; then FAILED_LOGS+=("$name|$log"); fi
  if [[ $rc -ne 0 && $FIRST_RC -eq 0 ]]; then FIRST_RC=$rc; fi
  LAST_RC=$rc
  return 0
}

# failures: after every phase's output, what failed, again (CI shows the end of the output): pytest's FAILED/ERROR
# lines, molecule's per-scenario summary, else the end of the phase's log.
FAILED_LOGS=()  # "name|log"
failures() {
  local row name log lines
  ((${#FAILED_LOGS[@]})) || return 0
  printf '\n=== failures (the whole output of each phase is above, and in .build/test-logs/)\n'
  for row in "${FAILED_LOGS[@]}"; do
    IFS='|' read -r name log <<<"$row"
    printf -- '--- %s\n' "$name"
    lines=$(grep -E '^(FAILED|ERROR) |^molecule summary|^  (ok|FAILED) +roles/|^[0-9]+ (failed|passed)|FAILED \(rc=' "$log" | tail -60 || true)
    if [[ -n "$lines" ]]; then echo "$lines"; else tail -30 "$log"; fi
  done
}

# phase_bg NAME COMMAND [ARGS...]: start one phase in the background, its output in .build/test-logs/NAME.log; its
# result is collected by wait_bg (output printed then, table row added). For the CPU-light or network-bound phases
# (ansible-lint, sanity: its venvs' pip installs on a fresh machine) that overlap the pytest phases' waits on the bed.
# phase_bg --nice N NAME ...: at a lower CPU priority (renice N) than the foreground phases (the integration tests are
# the critical path on 2 cores; a niced phase still ends well within them).
BG_PIDS=()  # "pid|name|t0|log"
phase_bg() {
  local name log nice=0
  if [[ $1 == --nice ]]; then
    nice=$2
    shift 2
  fi
  name=$1
  shift
  if [[ "$SKIP" == *" $name "* ]]; then
    TABLE+=("$name|0.0|skipped")
    return 0
  fi
  mkdir -p "$ROOT/.build/test-logs"
  log="$ROOT/.build/test-logs/${name//[^A-Za-z0-9_.-]/_}.log"
  section "$name (background, output after it ends: $log)"
  (
    if ((nice)); then renice -n "$nice" -p "$BASHPID" >/dev/null; fi
    timed "$log.cpu" "$@"
  ) >"$log" 2>&1 </dev/null &
  BG_PIDS+=("$!|$name|$(date +%s.%N)|$log")
}

wait_bg() {
  local row pid name t0 log rc secs
  for row in "${BG_PIDS[@]}"; do
    IFS='|' read -r pid name t0 log <<<"$row"
    rc=0
    wait "$pid" || rc=$?
    # the end time is when wait returned: at most the phase's own time plus the foreground phases it overlapped
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    section "$name (background)"
    cat "$log"
    TABLE+=("$name (bg)|<=$secs|$([[ $rc -eq 0 ]] && echo ok || echo "FAILED (rc=$rc)")|-|$(cat "$log.cpu" 2>/dev/null)")
    if [[ $rc -ne 0 ]]; then FAILED_LOGS+=("$name|$log"); fi
    if [[ $rc -ne 0 && $FIRST_RC -eq 0 ]]; then FIRST_RC=$rc; fi
  done
  BG_PIDS=()
}

print_table() {
  local total row
  total=$(awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  printf '\n=== timing (seconds)\n'
  printf '%-22s %9s %5s %7s  %s\n' phase seconds cpu "cpu s" result
  for row in "${TABLE[@]}"; do
    IFS='|' read -r n s r c o <<<"$row"
    printf '%-22s %9s %5s %7s  %s\n' "$n" "$s" "${c:--}" "${o:--}" "$r"
  done
  printf '%-22s %9s %5s\n' total "$total" "$(cpu_busy "$CPU_START")"
  printf '(cpu: the whole machine busy during the phase; cpu s: CPU seconds of the phase'"'"'s own processes)\n'
  printf 'machine gauge: %s CPU-s at the start, %s at the end (a 5M-step Python loop; lower is faster)\n' \
    "$GAUGE_START" "$(gauge)"
}
trap 'failures; print_table' EXIT

# ------------------------------------------------------------------------------------------------ phases
# Set-up in two phases: the machine's packages, the venv and, while pip makes it, the bed's engine and images; then the
# rest of the bed (sim/bed.sh up: on a fresh machine its hosts, Ray image and registries take minutes, mostly on one
# core), with ansible-lint and sanity, which need only the venv, started in the background between them.
phase "setup" "$ROOT/hack/setup.sh" --bed-images
if [[ $FIRST_RC -ne 0 ]]; then exit "$FIRST_RC"; fi
# shellcheck source=env.sh
source "$ROOT/hack/env.sh"

lint_ruff() {
  ruff check . && ruff format --check --diff .
}

# One ansible-doc process renders every module (each failure is named in its output; rc 1 if any fails).
docs_ansible_doc() {
  local mods
  mapfile -t mods < <(find plugins/modules -name '*.py' ! -name '__init__.py' -exec basename {} .py \; | sort)
  ansible-doc -t module "${mods[@]/#/gpufleet.vllm.}" >/dev/null && echo "ok: ${#mods[@]} modules"
}

# pytest exits 5 when nothing was collected: with a filter that is the caller's choice, without one it is a failure.
run_pytest() {
  local rc=0
  python -m pytest "$@" || rc=$?
  if [[ $rc -eq 5 && $FILTERED -eq 1 ]]; then rc=0; fi
  return "$rc"
}
FILTERED=$(($# > 0 ? 1 : 0))
XDIST=()
if [[ "$WORKERS" != 0 ]]; then XDIST=(-n "$WORKERS"); fi

phase "lint: ruff" lint_ruff
phase "docs: ansible-doc" docs_ansible_doc
# ansible-lint (production profile, offline: .ansible-lint, no skips; never installs from Galaxy) and ansible-test
# sanity run in the background beside the pytest phases, one after the other (GPUFLEET_TEST_SERIAL=1: in the
# foreground, in this order, as before). Their output follows when they end.
static_checks() {
  local rc=0 t0=$SECONDS
  section "lint: ansible-lint"
  ansible-lint --offline --profile production || rc=$?
  echo "ansible-lint: $((SECONDS - t0)) s"
  t0=$SECONDS
  section "sanity"
  "$ROOT/hack/sanity.sh" || rc=$((rc ? rc : $?))
  echo "sanity: $((SECONDS - t0)) s"
  return "$rc"
}
if [[ "${GPUFLEET_TEST_SERIAL:-0}" == 1 ]]; then
  phase "lint: ansible-lint" ansible-lint --offline --profile production
  phase "sanity" "$ROOT/hack/sanity.sh"
else
  phase_bg --nice 10 "lint+sanity" static_checks
fi
phase "setup: bed" "$ROOT/sim/bed.sh" up
if [[ $LAST_RC -ne 0 ]]; then  # the bed failed (a failed lint or docs phase before it does not stop the run)
  wait_bg
  exit "$FIRST_RC"
fi
# The execution environment's image (sim/images/ee/build.sh: built once per content hash) in the background, so that
# tests/integration/test_ee.py, in the fleet tests' chain, finds it built (its fixture runs the same script, which
# waits for a build in progress and then has nothing to do). Not with a pytest filter (arguments).
if [[ $FILTERED -eq 0 ]]; then phase_bg --nice 10 "ee image" "$ROOT/sim/images/ee/build.sh"; fi
# The version matrix (hack/matrix.sh: ansible-core 2.16, 2.17, 2.18 beside the test venv's 2.19, each in its own cached
# venv: sanity import/validate-modules, the unit tests that use ansible-core, a converge on one host on each)
# in the background beside the integration phase, which leaves CPU idle while it waits on the bed; the converges run
# on the solo host gpu-e, holding its lock (never the fleet tests' hosts). Not with a pytest filter (arguments).
# GPUFLEET_TEST_MATRIX=0: left out; or a list of cores, e.g. GPUFLEET_TEST_MATRIX="2.16 2.18".
if [[ "${GPUFLEET_TEST_MATRIX:-1}" != 0 && $FILTERED -eq 0 ]]; then
  MATRIX_CORES=()
  if [[ "${GPUFLEET_TEST_MATRIX:-1}" != 1 ]]; then read -ra MATRIX_CORES <<<"$GPUFLEET_TEST_MATRIX"; fi
  # Its unit tests in one process per core (GPUFLEET_MATRIX_WORKERS=0), as the unit phase's below: 42 vs 53 CPU-s.
  phase_bg --nice 10 "matrix" env GPUFLEET_MATRIX_WORKERS="${GPUFLEET_MATRIX_WORKERS:-0}" "$ROOT/hack/matrix.sh" \
    "${MATRIX_CORES[@]}"
elif [[ "${GPUFLEET_TEST_MATRIX:-1}" == 0 ]]; then
  TABLE+=("matrix|0.0|skipped (GPUFLEET_TEST_MATRIX=0)")
fi
# Molecule: every role's default scenario (roles/<role>/molecule/default: converge, idempotence, verify), offline
# (dependency disabled, no prerun), in the background beside the integration phase (one scenario after the other;
# output when they end). No scenario uses the fleet tests' hosts gpu-a/b/c (it would hold the fleet-tests lock, which
# the xdist worker with the fleet files waits for): those on one prepared host use the solo host gpu-e (started first:
# sim/hosts/hosts.sh solo, idempotent) and hold its lock, as hack/matrix.sh's converges and
# tests/integration/test_node_agent_role.py do; the gpu_host scenario holds the bare host gpu-d's lock, as
# tests/integration/test_gpu_host.py does; one on the controller only holds none (a lock file of its own). With a
# pytest filter (arguments), molecule is left out.
run_molecule() {
  local dir lock rc=0 one t0 rows=()
  "$ROOT/sim/steps.d/70-fleet.sh" up >/dev/null  # the models the deployments scenario serves
  for dir in roles/*/molecule/default; do
    [[ -f "$dir/molecule.yml" ]] || continue
    # The lock of the hosts the scenario uses (its platforms): the bare host gpu-d's, the solo host gpu-e's, the
    # shared hosts' (fleet-tests), or none (the controller only, e.g. monitoring's scenario). The bare or solo host is
    # started first: its inventory, which molecule reads before converge, is written by hosts.sh (a fresh machine has
    # none).
    lock=.none.lock
    start=()
    if grep -q -- '- name: gpu-d$' "$dir/molecule.yml"; then
      lock=.gpu-d.lock start=(bare gpu-d)
    elif grep -q -- '- name: gpu-e$' "$dir/molecule.yml"; then
      lock=.gpu-e.lock start=(solo gpu-e)
    elif grep -Eq -- '- name: gpu-[abc]$' "$dir/molecule.yml"; then
      lock=.fleet-tests.lock
    fi
    section "molecule: ${dir%%/molecule/*} (holding .build/hosts/$lock)"
    one=0
    t0=$SECONDS
    # shellcheck disable=SC2016  # $0 and $@ are the inner sh's: the checkout and the hosts.sh command
    (
      cd "${dir%/molecule/default}" &&
        flock -E 75 -w 1800 "$ROOT/.build/hosts/$lock" \
          sh -c 'if [ $# -gt 0 ]; then "$0/sim/hosts/hosts.sh" "$@" || exit; fi; molecule test' "$ROOT" "${start[@]}"
    ) || one=$?
    if [[ $one -eq 75 ]]; then echo "molecule: waited 30 min for .build/hosts/$lock (held by another run): not run"; fi
    rows+=("$(printf '  %-6s %-18s %4d s' "$([[ $one -eq 0 ]] && echo ok || echo FAILED)" "${dir%%/molecule/*}" $((SECONDS - t0)))")
    if [[ $one -ne 0 ]]; then rc=$one; fi
  done
  printf '\nmolecule summary (scenario, seconds with the wait for its lock):\n'
  printf '%s\n' "${rows[@]}"
  return "$rc"
}
if [[ $FILTERED -eq 0 ]]; then phase_bg "molecule" run_molecule; fi
# (The matrix and molecule start before the unit tests, so that they end within the integration phase; neither uses
# the fleet tests' hosts, so the fleet integration tests never wait for them.)
# Unit tests are independent: spread test by test. Integration tests: one xdist group per file, and one for the
# fleets on the shared simulated hosts (tests/conftest.py), so module fixtures are set up once and fleets never overlap.
# Without a filter the unit tests run in the background too, at a lower CPU priority: they take what the integration
# tests leave idle (their waits on containers and hosts) instead of running before them; with a filter, first, in the
# foreground.
# In the background in one process (no xdist): the machine is busy with the integration tests then, so two workers
# would end no sooner and cost 25 % more CPU (their own imports and collection: 63 vs 79 CPU-s here).
if [[ $FILTERED -eq 0 ]]; then
  phase_bg --nice 10 "pytest: unit" run_pytest tests/unit
else
  phase "pytest: unit" run_pytest tests/unit "${XDIST[@]}" "$@"
fi
phase "pytest: integration" run_pytest tests/integration "${XDIST[@]}" ${XDIST:+--dist loadgroup} --durations=25 "$@"

wait_bg
exit "$FIRST_RC"
