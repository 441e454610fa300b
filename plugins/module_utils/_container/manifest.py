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
from collections.abc import Collection, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._container.spec import (
    ENGINE_OPTIONS,
    OPTION_BY_NAME,
    env_of,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.validate import name_problem
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_if_changed
from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp

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
    image_id: str | None,
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
        "created_at": created_at or stamp(),
    }


def path_of(directory: str, name: str) -> str:
    """``<directory>/<name>.json``; a name that is not a deployment name (``../victim``, ``a/b``) is refused."""
    problem = name_problem(name)
    if problem:
        raise GpufleetError(problem, failure_class="bad_args")
    return os.path.join(directory, f"{name}.json")


def write(directory: str, name: str, manifest: dict[str, Any]) -> tuple[str, bool]:
    """Write atomically when the content differs; (path, changed)."""
    path = path_of(directory, name)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    return path, write_if_changed(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def remove(directory: str, name: str) -> bool:
    try:
        os.unlink(path_of(directory, name))
        return True
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------------- feeding back
# The vllm_container parameters a manifest gives (from_manifest); everything else (env values, secrets, mounts,
# caches, network, restart policy, labels) comes from the task, since a manifest never holds it.
MANIFEST_PARAMS = (
    "name",
    "image",
    "model",
    "runtime",
    "host",
    "port",
    "gpus",
    "extra_args",
    "lora_modules",
    "sleep_mode",
    *(o.name for o in ENGINE_OPTIONS),
)


def read(path: str) -> dict[str, Any]:
    """The manifest JSON at ``path`` on this host, checked (``check``); a clear GpufleetError when it is missing,
    unreadable, not JSON or of another manifest version."""
    hint = "give the path of a manifest vllm_container wrote on this host (e.g. /var/lib/gpufleet/manifests/NAME.json)"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise GpufleetError(f"from_manifest: {path} does not exist on this host; {hint}", manifest=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise GpufleetError(f"from_manifest: cannot read {path}: {e}; {hint}", manifest=path) from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise GpufleetError(f"from_manifest: {path} is not JSON ({e}); {hint}", manifest=path) from None
    check(data, path)
    return data


def check(manifest: Any, where: str = "manifest") -> None:
    """Raise unless ``manifest`` is a gpufleet reproducibility manifest of MANIFEST_VERSION with what a redeploy
    needs (name, image, model; engine_args naming only options this collection knows)."""
    if not isinstance(manifest, Mapping) or "manifest_version" not in manifest:
        raise GpufleetError(
            f"from_manifest: {where} is not a gpufleet reproducibility manifest (no manifest_version); use the JSON "
            "vllm_container wrote to <manifest_dir>/NAME.json or returned as 'manifest'",
            manifest=where,
        )
    version = manifest["manifest_version"]
    if version != MANIFEST_VERSION:
        raise GpufleetError(
            f"from_manifest: {where} has manifest_version {version!r}; this collection reads version "
            f"{MANIFEST_VERSION} (write it again with this collection's vllm_container, or use a matching collection)",
            manifest=where,
            manifest_version=version,
        )
    missing = [k for k in ("name", "image", "model") if not manifest.get(k)]
    if missing:
        raise GpufleetError(f"from_manifest: {where} lacks {', '.join(missing)}", manifest=where)
    engine_args = manifest.get("engine_args") or {}
    if not isinstance(engine_args, Mapping):
        raise GpufleetError(f"from_manifest: {where}: engine_args is not a mapping", manifest=where)
    known = {o.name for o in ENGINE_OPTIONS}
    unknown = sorted(k for k in engine_args if k not in known)
    if unknown:
        raise GpufleetError(
            f"from_manifest: {where}: engine_args {', '.join(unknown)} are not vllm_container options of this "
            "collection (written by a newer one?); the server could not be reproduced",
            manifest=where,
        )


def pinned_image(image: str, digest: str | None) -> str:
    """``repo:tag`` pinned to the manifest's registry digest (``repo@sha256:...``) when there is one."""
    if not digest or "@" in image:
        return image
    from ansible_collections.gpufleet.vllm.plugins.module_utils._image.ref import split_reference

    repo, _tag, _digest = split_reference(image)
    return f"{repo}@{digest}"


def params_from_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """vllm_container parameters that redeploy the manifest's server (keys of MANIFEST_PARAMS only).

    Secrets and env values are never in a manifest: they must be given again. The image is pinned to its registry
    digest when the manifest has one (a tag may have moved since).
    """
    check(manifest)
    out: dict[str, Any] = {
        "name": manifest["name"],
        "model": manifest["model"],
        "image": pinned_image(str(manifest["image"]), manifest.get("image_digest")),
    }
    out.update({k: v for k, v in (manifest.get("engine_args") or {}).items() if v is not None})
    for k in ("extra_args", "host", "port", "runtime"):
        if manifest.get(k) not in (None, []):
            out[k] = manifest[k]
    out["sleep_mode"] = bool(manifest.get("sleep_mode"))
    loras = [{"name": lo["name"], "path": lo["path"]} for lo in manifest.get("lora_modules") or []]
    if loras:
        out["lora_modules"] = loras
    gpus = [str(g["id"]) for g in manifest.get("gpus") or [] if g.get("id") is not None]
    if gpus:
        out["gpus"] = gpus
    return out


def _given(params: Mapping[str, Any], key: str) -> bool:
    """Without the list of explicit parameters: a value is taken as given when it is set and not the default."""
    value = params.get(key)
    opt = OPTION_BY_NAME.get(key)
    default = opt.default if opt is not None else None
    return value is not None and value != default


def merge(
    params: Mapping[str, Any], manifest: Mapping[str, Any], explicit: Collection[str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """(parameters, warnings): the manifest's parameters (params_from_manifest), with every parameter given
    explicitly winning (``explicit``: the names the task set; None = those set to something other than their
    default). ``from_manifest`` is cleared in the result. Warns about env keys the manifest's server had that the
    result does not set (values are never in a manifest)."""
    from_manifest = params_from_manifest(manifest)
    out = dict(params)
    for key, value in from_manifest.items():
        given = (key in explicit and params.get(key) is not None) if explicit is not None else _given(params, key)
        if not given:
            out[key] = value
    out["from_manifest"] = None
    warnings = []
    provided = set(env_of(out)[0])
    missing = sorted(k for k in manifest.get("env_keys") or [] if k not in provided)
    if missing:
        warnings.append(
            f"from_manifest: the manifest's server had env {', '.join(missing)}, which this deployment does not set "
            "(a manifest records env keys, never values: give them again in env, secret_env, api_key or hf_token)"
        )
    return out, warnings


def apply_manifest(params: dict[str, Any], explicit: Collection[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """(parameters, warnings) for ``from_manifest``: the manifest on this host read and merged under the parameters
    given explicitly (merge; ``explicit`` = the names the task set, None = those that differ from their default).
    Without from_manifest: the parameters as they are. The result has from_manifest cleared, so applying it twice
    changes nothing. Call it before choosing the engine adapter: the manifest may name the runtime."""
    source = params.get("from_manifest")
    if not source:
        return params, []
    if isinstance(source, Mapping):  # the manifest itself (e.g. read on the controller)
        manifest = dict(source)
        check(manifest, "the manifest given")
    elif isinstance(source, str):
        manifest = read(os.path.expanduser(source))
    else:
        raise GpufleetError("from_manifest: give a manifest file path on this host or the manifest itself (a dict)")
    return merge(params, manifest, explicit)
