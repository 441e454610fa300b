#!/usr/bin/env bash
# The project's test command (README, .ci/run): set-up, lint, ansible-doc, ansible-test sanity, then unit and
# integration tests (pytest) on the real daemons of the simulated test bed.
# Extra arguments go to pytest, e.g. `hack/test.sh -k gpu_facts`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
"$ROOT/hack/setup.sh"
# shellcheck source=env.sh
source "$ROOT/hack/env.sh"
section() { printf '\n=== %s\n' "$*"; }

section "lint: ruff"
ruff check .
ruff format --check --diff .

# ansible-lint, production profile, offline (.ansible-lint: no skips, offline: true; never installs from Galaxy).
section "lint: ansible-lint"
ansible-lint --offline --profile production

section "docs: ansible-doc renders every module"
mods=$(find plugins/modules -name '*.py' ! -name '__init__.py' -exec basename {} .py \; | sort)
for m in $mods; do
  ansible-doc -t module "gpufleet.vllm.$m" >/dev/null || { echo "ansible-doc failed for $m" >&2; exit 1; }
done
echo "ok: $(echo "$mods" | wc -w) modules"

section "ansible-test sanity"
"$ROOT/hack/sanity.sh"

section "pytest: unit + integration"
set +e
python -m pytest tests "$@"
rc=$?
set -e
# pytest exits 5 when nothing was collected: with a filter that is the caller's choice, without one it is a failure.
if [[ $rc -eq 5 && $# -gt 0 ]]; then rc=0; fi
exit $rc
