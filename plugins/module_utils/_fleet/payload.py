# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A plan → what the ``deployments`` role consumes: per host the replicas to run (each the ``model_sync`` and
``vllm_container`` arguments of one replica), the removals and the images, plus a summary of counts.

``fleet_plan()`` is what the ``fleet_plan`` action returns; the placement itself is ``placement.py``. Nothing here
holds a secret value: secrets stay in ``gpufleet_deployments`` and ``fleet_apply`` looks them up by deployment.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import ray, rollout
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.capacity import natural_key
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.placement import place_validated
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import (
    ORDERED,
    image_build,
    validate_deployments,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.layout import (
    DEFAULT_MODELS_ROOT,
    is_under,
    model_path,
)


def ordered_sync_args(model: Mapping[str, Any], host: Mapping[str, Any]) -> dict[str, Any]:
    """model_sync's arguments for a model with ``sources`` (the schema's ordered model): the order and the keys of the
    sources in it. ``local`` copies (hard links on one filesystem) into the revision directory like the others, and
    is left out of the order on a host whose ``gpufleet_allowed_model_dirs`` do not hold the path (model_sync would
    refuse it there); S3 credentials are the host's (boto3's chain: AWS_* environment, shared files, instance role)."""
    order = list(model["sources"])
    allowed = list(host.get("allowed_model_dirs") or [])
    if "local" in order and len(order) > 1 and not any(is_under(model["path"], d) for d in allowed):
        order.remove("local")
    args: dict[str, Any] = {"sources": order}
    for key in ("repo_id", "revision", "url", "checksum", "s3_url", "endpoint_url", "region", "hf_cache_dir"):
        if model.get(key) is not None:
            args[key] = model[key]
    if "local" in order:
        args.update(src=model["path"], allowed_dirs=allowed)
    return args


def container_spec(assignment: Mapping[str, Any], dep: Mapping[str, Any], host: Mapping[str, Any]) -> dict[str, Any]:
    """What the deployments role needs for one replica: placement metadata, ``model_sync`` (the
    ``gpufleet.vllm.model_sync`` arguments for the model, into ``<models_root>/<deployment>``) and ``container`` (the
    ``gpufleet.vllm.vllm_container`` arguments). Neither holds secrets (``secret_env``, ``api_key`` and ``hf_token``
    stay in ``gpufleet_deployments``; the role looks them up by ``deployment``).
    """
    model = dep["model"] or {}
    models_root = host.get("models_root") or DEFAULT_MODELS_ROOT
    # hf and url models are brought onto the host by model_sync, at the path it computes: the container serves that
    # path (no hub id, no revision: model_sync pinned the revision). Local models are served from where they are.
    synced_here = model.get("source") in ("hf", "url", ORDERED)
    model_arg = model.get("path") if model.get("source") == "local" else model_path(models_root, dep["name"])
    container: dict[str, Any] = dict(dep["engine_options"])
    container.update(
        name=assignment["name"],
        state="started",
        runtime=host.get("runtime") or "docker",
        model=model_arg,
        served_model_name=list(dep["served_model_name"] or [dep["name"]]),
        port=assignment["port"],
        gpus=list(assignment["gpus"]),
        # gpus: all leaves the tensor parallel size to the host's GPU count (divided by the pipeline parallel size)
        tensor_parallel_size=dep["tensor_parallel_size"]
        or len(assignment["gpus"]) // (dep["pipeline_parallel_size"] or 1),
        pipeline_parallel_size=dep["pipeline_parallel_size"],
        gpu_memory_utilization=dep["gpu_memory_utilization"],
        extra_args=list(dep["extra_args"]),
        # an adapter's path, or its hub repo (model_sync syncs it beside the model; vllm_container resolves it)
        lora_modules=[
            {k: m[k] for k in ("name", "path", "repo_id", "revision") if m.get(k) is not None}
            for m in dep["lora_modules"]
        ],
        env=dict(dep["env"]),
    )
    # serve_for was parsed once by the schema (hours as a number, or "infinite"): vllm_container reads that value with
    # the same parser (module_utils/_duration.py), so it is handed over as is, never re-formatted.
    container["serve_for"] = dep["serve_for"]
    container["max_failed_restarts"] = dep.get("max_failed_restarts", 3)  # the lifecycle record (never hashed)
    container["start_timeout"] = dep.get("start_timeout", 1800)
    container["idle_pause_after"] = dep.get("idle_pause_after")  # the warm cache (lifecycle record, never hashed)
    container["pin"] = bool(dep.get("pin"))
    for key in ("log_max_size", "log_max_files"):  # only when declared: other replicas keep their plan digest
        if dep.get(key) is not None:
            container[key] = dep[key]
    # The image is vllm_image's business (it resolves vllm_version to an image); vllm_container reads the version
    # from the image's label, so the deployment's vllm_version (e.g. "latest") is never a container argument.
    if dep["image"]:
        container["image"] = dep["image"]
    if synced_here:
        container.pop("revision", None)
    # What the replica is declared with, as a label: the controller compares it with the running container's to
    # plan the rolling update (_fleet/rollout.py). It is part of the config hash like any label.
    if dep.get("owner"):  # a label: part of what the replica is declared with (a changed owner rolls it)
        container["labels"] = {**(container.get("labels") or {}), labels.OWNER: dep["owner"]}
    digest = rollout.plan_digest(container, dep)
    container["labels"] = {**(container.get("labels") or {}), labels.PLAN_DIGEST: digest}
    # The readiness gate's real request: after the digest, so that turning it on or off never rolls a replica (it
    # decides how the next start is checked, not what runs; vllm_container keeps it out of the config hash too).
    smoke = dep.get("smoke_test", True)
    container["smoke_test"] = bool(smoke)
    if isinstance(smoke, dict):  # smoke_test: {endpoint, prompt} (the schema's): on, with that request
        container["smoke_request"] = smoke
    sync: dict[str, Any] = {"name": dep["name"], "source": model.get("source"), "models_root": models_root}
    if dep.get("keep_revisions") is not None:  # how many old revisions model_sync keeps (validated by the schema)
        sync["keep_revisions"] = dep["keep_revisions"]
    hub_loras = [{k: m[k] for k in ("name", "repo_id", "revision")} for m in dep["lora_modules"] if m.get("repo_id")]
    if hub_loras:  # LoRA adapters from the hub, synced beside the model (issue #19)
        sync["lora_modules"] = hub_loras
    if model.get("source") == "hf":
        sync.update(repo_id=model["repo_id"], revision=model["revision"])
    elif model.get("source") == "local":
        sync.update(src=model["path"], allowed_dirs=list(host.get("allowed_model_dirs") or []), link=True)
    elif model.get("source") == "url":
        sync.update(url=model["url"])
        if model.get("checksum"):
            sync["checksum"] = model["checksum"]
    elif model.get("source") == ORDERED:
        del sync["source"]
        sync.update(ordered_sync_args(model, host))
    return {
        "name": assignment["name"],
        "deployment": dep["name"],
        "replica": assignment["replica"],
        "action": assignment["action"],
        "previous": assignment["previous"],
        "host": assignment["host"],
        "gpus": list(assignment["gpus"]),
        "gpu_uuids": list(assignment["gpu_uuids"]),
        "port": assignment["port"],
        "vllm_version": dep["vllm_version"],
        "image": dep["image"],
        # The derived image (vllm_image's extra_pip_packages/plugins/pip options), None for the image as resolved.
        "image_build": image_build(dep),
        "model_source": dict(model),
        "model_sync": sync,
        "model_path": model_arg,
        "serve_for": dep["serve_for"],
        "secret_env_keys": sorted(dep["secret_env"]),
        "api_key_set": dep["api_key"] is not None,
        "hf_token_set": dep["hf_token"] is not None,
        "vram_per_gpu_mib": assignment["vram_per_gpu_mib"],
        "digest": digest,
        "container": container,
    }


def fleet_plan(
    hosts: Mapping[str, Mapping[str, Any]],
    deployments: Any,
    existing: Iterable[Mapping[str, Any]] = (),
    *,
    prune: bool = False,
    move_from_unreachable: bool = False,
) -> dict[str, Any]:
    """``plan()`` plus what the deployments role consumes: ``hosts[<host>]`` = container specs to run there (every
    host of the inventory has a key, sorted by name), ``remove[<host>]`` = managed containers to remove there,
    ``images[<host>]`` = the ``[image, vllm_version]`` pairs its specs need (each once), ``ray[<host>]`` = the Ray
    nodes of multi-host replicas it runs (``ray.plan_nodes``), ``rollout`` (the waves of the
    replicas that roll, ``rollout.compute``) and a ``summary`` of counts. Hosts carry ``runtime`` and ``models_root``
    (from ``validate_host_vars``) for the specs; ``existing`` entries may carry ``plan_digest`` and ``state``.
    """
    deps = {d["name"]: d for d in validate_deployments(list(deployments or []))}
    existing = list(existing or [])
    result = place_validated(hosts, list(deps.values()), existing, prune, move_from_unreachable)
    per_host: dict[str, list[dict[str, Any]]] = {h: [] for h in sorted(hosts, key=natural_key)}
    remove: dict[str, list[dict[str, Any]]] = {h: [] for h in per_host}
    for asg in result["assignments"]:
        per_host.setdefault(asg["host"], []).append(
            container_spec(asg, deps[asg["deployment"]], hosts.get(asg["host"], {}))
        )
    ray_nodes = ray.plan_nodes(result["assignments"], per_host, hosts, deps)  # multi-host replicas (docs/ray.md)
    waves = rollout.compute(hosts, deps, per_host, existing)
    ray.mark_waves(ray_nodes, per_host)  # a rolling multi-host replica swaps its cluster in its wave
    result["errors"] = sorted([*result["errors"], *waves.pop("errors")], key=lambda e: e["deployment"])
    for rem in result["removals"]:
        remove.setdefault(rem["host"], []).append(dict(rem))
    # The images each host resolves (gpufleet.vllm.vllm_image), once per [image, vllm_version] (and derived image:
    # its build options as a third item), in spec order.
    images = {
        h: [
            json.loads(key)
            for key in dict.fromkeys(
                json.dumps([s["image"], s["vllm_version"], *([s["image_build"]] if s.get("image_build") else [])])
                for s in specs
            )
        ]
        for h, specs in per_host.items()
    }
    actions = Counter(a["action"] for a in result["assignments"])
    result.update(
        hosts=per_host,
        remove=remove,
        images=images,
        rollout=waves,
        ray=ray_nodes,
        summary={
            "create": actions["create"],
            "keep": actions["keep"],
            "update": actions["update"],
            "move": actions["move"],
            "remove": len(result["removals"]),
            "undeclared": len(result["undeclared"]),
            "unschedulable": len(result["errors"]),
        },
    )
    return result
