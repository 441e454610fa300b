# shellcheck shell=bash
# Sourced by the hack/ scripts and the tests: the project's venv and collection path.
GPUFLEET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export GPUFLEET_ROOT
export PATH="$GPUFLEET_ROOT/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$GPUFLEET_ROOT/.build/collections"
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false
export ANSIBLE_PYTHON_INTERPRETER="$GPUFLEET_ROOT/.venv/bin/python"
export ANSIBLE_NOCOLOR=1
# Bytecode is cached, but outside the source tree (.cache/ is git-ignored and not in the collection build), so the
# trees that are copied or shipped (sanity copy, collection tarball, node agent files, image contexts) never hold any.
# (PYTHONDONTWRITEBYTECODE=1 did the same by compiling every test file and collection module again in every process:
# about 2 s of CPU per pytest process.)
export PYTHONPYCACHEPREFIX="$GPUFLEET_ROOT/.cache/pycache"
# ... and written there: where the environment sets PYTHONDONTWRITEBYTECODE (this machine's does, and CI runs on one
# like it), every process compiled all it imports from source again, every time (ansible-playbook's start: 2.4 CPU-s
# instead of 0.9; the test suite starts a few hundred). With the prefix above nothing lands in a source tree anyway.
unset PYTHONDONTWRITEBYTECODE
# The bed's compile cache for the code Ansible modules import from their zip (sim/hosts/zipcache.py; the simulated
# hosts' sshd sets it too): about 0.2 s of CPU less per module run. GPUFLEET_ZIPIMPORT_CACHE= (empty): off.
export GPUFLEET_ZIPIMPORT_CACHE="${GPUFLEET_ZIPIMPORT_CACHE-$GPUFLEET_ROOT/.cache/zipimport}"
# The bed's cache of the imports ansible-playbook finds when it builds a module's payload (sim/controller/depcache.py):
# the same payload, without parsing every module_utils file again in every run (fleet_apply: 0.85 -> 0.16 s of CPU a
# build). GPUFLEET_ANSIBALLZ_CACHE= (empty): off.
export GPUFLEET_ANSIBALLZ_CACHE="${GPUFLEET_ANSIBALLZ_CACHE-$GPUFLEET_ROOT/.cache/ansiballz-deps}"
