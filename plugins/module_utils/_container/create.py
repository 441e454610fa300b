# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What vllm_container asks the engine to create: the manifest of the deployment, the labels (label schema of
plugins/module_utils/_labels.py) and the engine-neutral CreateSpec, all from the resolved Desired."""

from __future__ import annotations

from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import manifest as mf
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.desired import Desired
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import CreateSpec


def manifest_of(params: dict[str, Any], desired: Desired, gpu_facts: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The deployment's manifest (manifest.build); ``gpu_facts``: the host's GPUs when they were gathered."""
    img = desired.image  # None in check mode before a pull
    return mf.build(
        params,
        argv=desired.argv,
        env_keys=list(desired.env),
        image_ref=params["image"],
        image_id=img.id if img is not None else None,
        image_digest=img.digest if img is not None else None,
        vllm_version=desired.version,
        gpus=desired.gpus,
        gpu_facts=gpu_facts,
        config_hash=desired.config_hash,
    )


def labels_of(params: dict[str, Any], desired: Desired, manifest: dict[str, Any], until: str | None) -> dict[str, str]:
    """The container's labels: the managed schema, the manifest, the spec, and the user's extra labels."""
    return lb.build(
        name=params["name"],
        port=params["port"],
        host=params.get("host") or "0.0.0.0",
        config_hash=desired.config_hash,
        vllm_version=desired.version,
        model=params["model"],
        gpus=desired.gpus,
        manifest=manifest,
        spec=desired.spec,
        serve_until=until,
        sleep_mode=bool(params.get("sleep_mode")),
        api_key=bool(params.get("api_key")),
        extra=params.get("labels"),
        argv_flags=cs.argv_flags_marker(params, desired.version) if params.get("validate_args") else None,
    )


def create_spec(params: dict[str, Any], desired: Desired, labels: dict[str, str]) -> CreateSpec:
    """The engine-neutral create request of the deployment's container."""
    spec = desired.spec
    log = cs.log_config(params)
    return CreateSpec(
        name=lb.container_name(params["name"]),
        image=params["image"],
        command=desired.argv,
        env=desired.env,
        mounts=cs.mounts_of(params),
        gpus=desired.gpus,
        network=spec["network"],
        ipc=spec["ipc"],
        shm_size=spec["shm_size"],
        restart_policy=spec["restart_policy"],
        labels=labels,
        port=params["port"],
        host=params.get("host") or "0.0.0.0",
        log_driver=log["driver"],
        log_max_size=log["max_size"],
        log_max_files=log["max_files"],
        pid=spec.get("pid"),
    )
