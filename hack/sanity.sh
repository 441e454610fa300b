#!/usr/bin/env bash
# ansible-test sanity, offline-safe:
#  - ansible-test wants the collection at ansible_collections/<ns>/<name>/ inside a git work tree: copy the tracked
#    and untracked-not-ignored files there (fast, rsync) and make it a git repo of its own;
#  - ansible-test bootstraps pip in each sanity venv with a get-pip script downloaded from ansible's CI file server,
#    which this machine cannot reach: a stand-in that bootstraps pip with ensurepip is put in ansible-test's cache.
# Extra arguments go to `ansible-test sanity` (e.g. --test validate-modules).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=env.sh
source "$ROOT/hack/env.sh"
# GPUFLEET_SANITY_VENV: another venv (its python and ansible-test), e.g. another ansible-core (hack/matrix.sh).
PY=${GPUFLEET_SANITY_VENV:-$ROOT/.venv}/bin/python
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

pipver=$("$PY" - <<'PY'
import inspect, re
from ansible_test._internal import python_requirements as pr
m = re.search(r"pip='([0-9.]+)'", inspect.getsource(pr))
print(m.group(1) if m else "")
PY
)
cache=~/.ansible/test/cache/get_pip_${pipver//./_}.py
# The stand-in is written again when its text changed (a machine prepared before keeps no older one), atomically: the
# matrix's sanity runs beside this one.
standin=$(cat <<'PY'
# Offline stand-in for get-pip.py (gpufleet hack/sanity.sh): install the requested packages (pip==X ...) into this
# new venv with the pip wheel that Python bundles (run from the wheel: one install, not ensurepip's pip first and
# then the requested one), from the configured index; ensurepip when Python bundles no pip wheel.
# ansible-test's sanity venvs are each used by one test, and it uninstalls pip again after the test's requirements:
# the venv's own pip.conf (pip reads sys.prefix/pip.conf) turns off byte-compiling at install, so only what a test
# imports is compiled, when it imports it (pip's and setuptools' ~1,500 files were compiled twice per venv).
import ensurepip
import glob
import os
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
if sys.prefix != sys.base_prefix:
    with open(os.path.join(sys.prefix, "pip.conf"), "w", encoding="utf-8") as f:
        f.write("[install]\nno-compile = true\n")

wheels = sorted(glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl")))
if wheels and args:
    pip = [sys.executable, os.path.join(wheels[-1], "pip")]
    subprocess.check_call([*pip, "install", "--disable-pip-version-check", "--no-compile", *args])
else:
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
    if args:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args])
PY
)
if [[ -n "$pipver" && "$(cat "$cache" 2>/dev/null)" != "$standin" ]]; then
  mkdir -p "$(dirname "$cache")"
  printf '%s\n' "$standin" > "$cache.$$"
  mv -f "$cache.$$" "$cache"
fi

# GPUFLEET_SANITY_COPY: where the copy goes (default .build/sanity), e.g. one per core when sanity runs beside another.
DEST=${GPUFLEET_SANITY_COPY:-$ROOT/.build/sanity}/ansible_collections/gpufleet/vllm
mkdir -p "$DEST"
# The files to copy: tracked and untracked-not-ignored ones that exist (a deletion not yet committed is still listed),
# less what the collection build leaves out (galaxy.yml build_ignore: the test bed, tests other than tests/sanity,
# bench, hack, tools): sanity checks what ships (ruff and pytest check the rest), and pylint over the test bed was
# most of sanity's time. GPUFLEET_SANITY_ALL=1 checks every file.
(cd "$ROOT" && git ls-files -co --exclude-standard | while IFS= read -r f; do if [[ -e "$f" || -L "$f" ]]; then printf '%s\n' "$f"; fi; done) \
  | if [[ "${GPUFLEET_SANITY_ALL:-0}" == 1 ]]; then cat; else "$PY" "$ROOT/hack/shipped_files.py"; fi \
  | sort -u > "$DEST/../.wanted"
rsync -a --files-from="$DEST/../.wanted" "$ROOT/" "$DEST/"
# Drop files of the copy that left the list.
(cd "$DEST" && find . -type f ! -path './.git/*' | sed 's|^\./||' | sort) | comm -13 "$DEST/../.wanted" - | (cd "$DEST" && xargs -r rm -f)
rm -f "$DEST/../.wanted"
cd "$DEST"
[[ -d .git ]] || git init -q
# Ignore entries for files that are not in the copy would be errors of their own.
for f in tests/sanity/ignore-*.txt; do
  [[ -e "$f" ]] || continue
  while IFS= read -r line; do
    path=${line%% *}
    if [[ -z "$line" || "$line" == \#* || -e "$path" ]]; then printf '%s\n' "$line"; fi
  done < "$ROOT/$f" > "$f"
done
git add -A >/dev/null
"$(dirname "$PY")/ansible-test" sanity --python "$PYVER" --requirements --color no "$@"
