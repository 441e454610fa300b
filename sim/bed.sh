#!/usr/bin/env bash
# The simulated test bed: real daemons, fake hardware only.
#   sim/bed.sh up     bring every part up (idempotent; a second run costs seconds)
#   sim/bed.sh down   stop what the bed started (only that)
# Each part is a step script in sim/steps.d/NN-name.sh taking `up` or `down`, run in name order (down: reverse).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=../hack/env.sh
source "$ROOT/hack/env.sh"
action=${1:-up}
mapfile -t steps < <(find "$HERE/steps.d" -maxdepth 1 -name "*.sh" | sort)
[[ "$action" == down ]] && mapfile -t steps < <(printf '%s\n' "${steps[@]}" | sort -r)
for s in "${steps[@]}"; do
  [[ -n "$s" ]] || continue
  t0=$EPOCHREALTIME
  bash "$s" "$action"
  printf "[bed] %-28s %s %ss\n" "$(basename "$s" .sh)" "$action" "$(python3 -c "print(round($EPOCHREALTIME - $t0, 1))")" >&2
done
