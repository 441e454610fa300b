# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reproducibility manifest of a deployment: what runs, from what, where. Never a secret value.

Written to ``<manifest_dir>/<name>.json`` on the host, returned by vllm_container and kept in the
``gpufleet.manifest`` label. ``params_from_manifest`` turns one back into vllm_container parameters.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils.container_spec import ENGINE_OPTIONS

MANIFEST_VERSION = 1


def _model_sync_record(model: str) -> dict[str, Any] | None:
    """model_sync's own manifest (<models_root>/.gpufleet/manifests/<dir>.json) when the model came from it."""
    if not model.startswith("/"):
        return None
    parent, base = os.path.split(os.path.normpath(model))
    path = os.path.join(parent, ".gpufleet", "manifests", base + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def build(
    params: dict[str, Any],
    *,
    argv: list[str],
    env_keys: list[str],
    image_ref: str,
    image_id: str,
    image_digest: str | None,
    vllm_version: str | None,
    gpus: list[str],
    gpu_facts: list[dict[str, Any]] | None = None,
    config_hash: str = "",
    created_at: str | None = None,
    hostname: str | None = None,
) -> dict[str, Any]:
    """The manifest dict. ``env_keys`` are names only; secret values never enter (they are not parameters here)."""
    engine_args = {o.name: params.get(o.name) for o in ENGINE_OPTIONS if params.get(o.name) is not None}
    by_id = {}
    for g in gpu_facts or []:
        by_id[str(g.get("index"))] = g
        if g.get("uuid"):
            by_id[str(g["uuid"])] = g
    gpu_rows = []
    for gid in gpus:
        g = by_id.get(gid) or {}
        gpu_rows.append(
            {
                "id": gid,
                "index": g.get("index"),
                "uuid": g.get("uuid"),
                "name": g.get("name"),
                "memory_total_mib": g.get("memory_total_mib"),
            }
        )
    synced = _model_sync_record(params.get("model") or "")
    return {
        "manifest_version": MANIFEST_VERSION,
        "name": params["name"],
        "model": params.get("model"),
        "revision": params.get("revision") or (synced or {}).get("revision"),
        "commit": (synced or {}).get("commit"),
        "model_source": (synced or {}).get("source"),
        "seed": params.get("seed"),
        "vllm_version": vllm_version,
        "image": image_ref,
        "image_id": image_id,
        "image_digest": image_digest,
        "runtime": params.get("runtime") or "docker",
        "engine_args": engine_args,
        "extra_args": list(params.get("extra_args") or []),
        "argv": list(argv),
        "packages": {"vllm": vllm_version},
        "lora_modules": [{"name": lo["name"], "path": lo["path"]} for lo in params.get("lora_modules") or []],
        "gpus": gpu_rows,
        "gpu_memory_utilization": params.get("gpu_memory_utilization"),
        "tensor_parallel_size": params.get("tensor_parallel_size") or 1,
        "pipeline_parallel_size": params.get("pipeline_parallel_size") or 1,
        "host": params.get("host"),
        "port": params.get("port"),
        "sleep_mode": bool(params.get("sleep_mode")),
        "env_keys": sorted(env_keys),
        "hostname": hostname or socket.gethostname(),
        "config_hash": config_hash,
        "created_at": created_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write(directory: str, name: str, manifest: dict[str, Any]) -> tuple[str, bool]:
    """Write atomically when the content differs; (path, changed)."""
    path = os.path.join(directory, f"{name}.json")
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return path, False
    except OSError:
        pass
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path, True


def remove(directory: str, name: str) -> bool:
    try:
        os.unlink(os.path.join(directory, f"{name}.json"))
        return True
    except FileNotFoundError:
        return False


def params_from_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """vllm_container parameters that redeploy the manifest's server (secrets and env values must be given again)."""
    out: dict[str, Any] = {"name": manifest["name"], "model": manifest["model"], "image": manifest.get("image")}
    if manifest.get("image_digest") and manifest.get("image") and "@" not in manifest["image"]:
        out["image"] = manifest["image"].rsplit(":", 1)[0] + "@" + manifest["image_digest"]
    out.update(manifest.get("engine_args") or {})
    for k in ("extra_args", "lora_modules", "host", "port", "sleep_mode", "runtime"):
        if manifest.get(k) not in (None, []):
            out[k] = manifest[k]
    gpus = [g["id"] for g in manifest.get("gpus") or []]
    if gpus:
        out["gpus"] = gpus
    return out
