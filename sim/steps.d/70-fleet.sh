#!/usr/bin/env bash
# Bed step of the fleet part (roles/deployments, playbooks/): the demo's local model directories.
# Writes tiny generated checkpoints (sim/hub/make_repo.py's model_files: config.json, tokenizer, safetensors shards)
# and a LoRA adapter under .build/fleet/, which every simulated host sees at the same path (the hosts share the
# checkout's filesystem). inventories/sim allowlists that directory (gpufleet_allowed_model_dirs).
#   up    write what is missing (idempotent, fast when done)      down  nothing to stop (files are kept)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=$ROOT/.build/fleet
case "${1:-up}" in
up)
  [[ -f "$OUT/.done-v1" ]] && exit 0
  mkdir -p "$OUT"
  PY=$ROOT/.venv/bin/python
  [[ -x "$PY" ]] || PY=python3
  "$PY" - "$ROOT" "$OUT" <<'PY'
import importlib.util, json, sys
from pathlib import Path

root, out = Path(sys.argv[1]), Path(sys.argv[2])
spec = importlib.util.spec_from_file_location("make_repo", root / "sim" / "hub" / "make_repo.py")
mr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mr)

def write(dest: Path, files: dict) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else Path(data).read_bytes())
    if dest.exists():
        import shutil
        shutil.rmtree(dest)
    tmp.rename(dest)

models = {
    "tiny-chat": dict(seed=1, shards=1, config={"max_position_embeddings": 4096}),
    "tp-model": dict(seed=2, shards=2, config={"max_position_embeddings": 8192, "num_hidden_layers": 4}),
    "lora-base": dict(seed=3, shards=2, config={"max_position_embeddings": 4096}),
}
for name, kw in models.items():
    write(out / "models" / name, mr.model_files(**kw))
adapter = {
    "adapter_config.json": json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                       "target_modules": ["q_proj", "v_proj"]}).encode(),
    "adapter_model.safetensors": mr.safetensors_bytes(2048, 9, "base_model.lora_A.weight"),
}
write(out / "loras" / "sql", adapter)
PY
  touch "$OUT/.done-v1"
  echo "[fleet] demo models in $OUT" >&2
  ;;
down) : ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
