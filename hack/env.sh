# shellcheck shell=bash
# Sourced by the hack/ scripts and the tests: the project's venv and collection path.
GPUFLEET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export GPUFLEET_ROOT
export PATH="$GPUFLEET_ROOT/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$GPUFLEET_ROOT/.build/collections"
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false
export ANSIBLE_PYTHON_INTERPRETER="$GPUFLEET_ROOT/.venv/bin/python"
export ANSIBLE_NOCOLOR=1
export PYTHONDONTWRITEBYTECODE=1
