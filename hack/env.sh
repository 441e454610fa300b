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
# The bed's compile cache for the code Ansible modules import from their zip (sim/hosts/zipcache.py; the simulated
# hosts' sshd sets it too): about 0.2 s of CPU less per module run. GPUFLEET_ZIPIMPORT_CACHE= (empty): off.
export GPUFLEET_ZIPIMPORT_CACHE="${GPUFLEET_ZIPIMPORT_CACHE-$GPUFLEET_ROOT/.cache/zipimport}"
