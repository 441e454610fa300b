#!/usr/bin/env bash
# The simulated test bed: real daemons, fake hardware only.
#   sim/bed.sh up     bring every part up (idempotent; a second run costs seconds)
#   sim/bed.sh down   stop what the bed started (only that)
#   sim/bed.sh up STEP...   only those steps (names without number or .sh, e.g. `up engine images`; hack/setup.sh
#                     builds the images this way while it makes the venv)
# Each part is a step script in sim/steps.d/NN-name.sh taking `up` or `down`, run in name order (down: reverse). A step
# with the line `# bed-step: background` starts its `up` in the background, beside the steps after it (its output
# follows when it ends); `up` returns when every step ended and fails when one failed. Such a step needs only the
# steps before it, and no later step needs it.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=../hack/env.sh
source "$ROOT/hack/env.sh"
action=${1:-up}
only=("${@:2}")
STEPS=${GPUFLEET_BED_STEPS:-$HERE/steps.d}  # (another directory: tests/unit/sim/test_bed_steps.py)
mapfile -t steps < <(find "$STEPS" -maxdepth 1 -name "*.sh" | sort)
if ((${#only[@]})); then
  wanted=()
  for name in "${only[@]}"; do
    match=$(printf '%s\n' "${steps[@]}" | grep -E "/[0-9]+-$name\.sh$" || true)
    [[ -n "$match" ]] || { echo "sim/bed.sh: no step named $name in $STEPS" >&2; exit 2; }
    wanted+=("$match")
  done
  mapfile -t steps < <(printf '%s\n' "${wanted[@]}" | sort -u)
fi
[[ "$action" == down ]] && mapfile -t steps < <(printf '%s\n' "${steps[@]}" | sort -r)
# run_step STEP: run and time one step.
run_step() {
  local t0=$EPOCHREALTIME rc=0
  bash "$1" "$action" || rc=$?
  printf "[bed] %-28s %s %ss%s\n" "$(basename "$1" .sh)" "$action" \
    "$(python3 -c "print(round($EPOCHREALTIME - $t0, 1))")" "$([[ $rc -eq 0 ]] || echo " FAILED (rc=$rc)")" >&2
  return "$rc"
}
bg_pids=() bg_logs=()
for s in "${steps[@]}"; do
  [[ -n "$s" ]] || continue
  if [[ "$action" == up ]] && grep -q '^# bed-step: background$' "$s"; then
    log=$(mktemp "${TMPDIR:-/tmp}/gpufleet-bed-step.XXXXXX")
    run_step "$s" >"$log" 2>&1 &
    bg_pids+=("$!") bg_logs+=("$log")
    continue
  fi
  run_step "$s"
done
failed=0
for i in "${!bg_pids[@]}"; do
  wait "${bg_pids[$i]}" || failed=1
  cat "${bg_logs[$i]}" >&2
  rm -f "${bg_logs[$i]}"
done
exit "$failed"
