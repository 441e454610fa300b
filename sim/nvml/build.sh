#!/usr/bin/env bash
# Builds the fake libnvidia-ml.so.1 into .build/nvml/ (cached by the source's hash; a rebuild takes ≈0.2 s).
#   sim/nvml/build.sh          build if the source changed; prints the library's directory
#   sim/nvml/build.sh --force  rebuild
# Use: LD_LIBRARY_PATH=<printed dir> GPUFLEET_FAKE_GPUS=sim/nvml/examples/2xA100-80GB.json python -c 'import pynvml; ...'
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="$ROOT/.build/nvml"
SRC="$HERE/fake_nvml.c"
LIB="$OUT/libnvidia-ml.so.1"
mkdir -p "$OUT"
hash=$(cat "$SRC" "$0" | sha256sum | cut -c1-16)
if [[ "${1:-}" != --force && -f "$LIB" && "$(cat "$OUT/.hash" 2>/dev/null)" == "$hash" ]]; then
  echo "$OUT"
  exit 0
fi
command -v gcc >/dev/null || { echo "sim/nvml/build.sh: gcc is missing (apt-get install -y gcc)" >&2; exit 1; }
tmp=$(mktemp "$OUT/.libnvidia-ml.XXXXXX")
trap 'rm -f "$tmp"' EXIT
gcc -shared -fPIC -O2 -Wall -Wextra -Wl,-soname,libnvidia-ml.so.1 -o "$tmp" "$SRC"
chmod 0755 "$tmp"
mv -f "$tmp" "$LIB"  # atomic: a test loading the old library at this moment keeps a whole file
echo "$hash" >"$OUT/.hash"
echo "$OUT"
