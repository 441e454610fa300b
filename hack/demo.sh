#!/usr/bin/env bash
# The README's demo: set up this machine (hack/setup.sh: packages, venv, the simulated test bed with three GPU hosts
# reached over SSH), converge inventories/sim/ (a small chat model with two replicas, a tensor-parallel model, a
# LoRA deployment), then print the fleet status table. Re-running it is a no-op converge (changed=0).
#   hack/demo.sh                 everything
#   hack/demo.sh --no-setup      skip hack/setup.sh (the bed is already up)
# Extra arguments after -- go to the converge, e.g. `hack/demo.sh -- --check --diff`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
setup=1
if [[ "${1:-}" == --no-setup ]]; then setup=0; shift; fi
[[ "${1:-}" == -- ]] && shift
if ((setup)); then
  "$ROOT/hack/setup.sh"
fi
# shellcheck source=env.sh
source "$ROOT/hack/env.sh"
# The demo's local model directories (idempotent; also a step of sim/bed.sh).
bash "$ROOT/sim/steps.d/70-fleet.sh" up
export ANSIBLE_PIPELINING=1
printf '\n=== converge: ansible-playbook -i inventories/sim playbooks/converge.yml\n'
ansible-playbook -i inventories/sim playbooks/converge.yml "$@"
printf '\n=== status: ansible-playbook -i inventories/sim playbooks/status.yml\n'
ansible-playbook -i inventories/sim playbooks/status.yml
printf '\nsummary: %s\nstatus:  %s\n' "$ROOT/.build/fleet/artifacts/converge-summary.json" "$ROOT/.build/fleet/artifacts/status.json"
