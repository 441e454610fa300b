# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The container label schema of gpufleet-managed vLLM deployments (INTERFACES §4).

One place for the keys: vllm_container writes them, vllm_deployment_info and the node agent read them. Labels never
hold secret values: the manifest and the spec carry env *keys* and salted value hashes only.
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "gpufleet."
MANAGED = "gpufleet.managed"
DEPLOYMENT = "gpufleet.deployment"
PORT = "gpufleet.port"
CONFIG_HASH = "gpufleet.config-hash"
VLLM_VERSION = "gpufleet.vllm-version"
MODEL = "gpufleet.model"
GPUS = "gpufleet.gpus"
MANIFEST = "gpufleet.manifest"
SERVE_UNTIL = "gpufleet.serve-until"
# Not in the minimal schema but part of ours: the normalized spec (for --diff) and the endpoint.
SPEC = "gpufleet.spec"
HOST = "gpufleet.host"
SLEEP_MODE = "gpufleet.sleep-mode"
API_KEY_SET = "gpufleet.api-key"
# Set by the fleet (fleet_plan's digest of what a replica was declared with): the one gpufleet.* label a caller may
# pass in ``extra``; the controller compares it to plan which replicas a rollout must replace (_fleet/rollout.py).
PLAN_DIGEST = "gpufleet.plan-digest"
# Who the deployment belongs to (the inventory's ``owner``): status, usage and the agent's metrics group by it. Passed
# in ``extra`` like the plan digest; part of the config hash like any label.
OWNER = "gpufleet.owner"
# The hosts of a multi-host replica, head first (comma-separated), on its server: set by the fleet like the owner.
RAY_HOSTS = "gpufleet.ray-hosts"
CALLER_LABELS = (PLAN_DIGEST, OWNER, RAY_HOSTS)
# "<vLLM version>|<typed engine options>" whose flags were mapped through that version's flag table when the
# container was created (validate_args). The same value now lets a no-op converge compare hashes without loading the
# flag tables (container_spec.argv_flags_marker).
ARGV_FLAGS = "gpufleet.argv-flags"

# A Ray node of a multi-host replica (_ray/spec.py): its role (head|worker) and its cluster's port block. A Ray node is
# not a vLLM server: it carries DEPLOYMENT, GPUS and HOST but never MANAGED, so readers of servers pass it by.
RAY_ROLE = "gpufleet.ray-role"
RAY_PORT = "gpufleet.ray-port"
RAY_REPLICA = "gpufleet.ray-replica"

CONTAINER_PREFIX = "gpufleet-"
PREVIOUS_SUFFIX = "-previous"


def container_name(name: str) -> str:
    """Container name of deployment ``name``."""
    return f"{CONTAINER_PREFIX}{name}"


def previous_name(name: str) -> str:
    """Name the running container gets while its replacement starts (kept for rollback)."""
    return f"{CONTAINER_PREFIX}{name}{PREVIOUS_SUFFIX}"


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def build(
    *,
    name: str,
    port: int,
    host: str,
    config_hash: str,
    vllm_version: str | None,
    model: str,
    gpus: list[str],
    manifest: dict[str, Any],
    spec: dict[str, Any],
    serve_until: str | None = None,
    sleep_mode: bool = False,
    api_key: bool = False,
    extra: dict[str, str] | None = None,
    argv_flags: str | None = None,
) -> dict[str, str]:
    """All labels of a deployment's container (``extra`` = user labels, which may not use the gpufleet. prefix)."""
    labels = {k: str(v) for k, v in (extra or {}).items() if not k.startswith(PREFIX) or k in CALLER_LABELS}
    labels.update(
        {
            MANAGED: "true",
            DEPLOYMENT: name,
            PORT: str(port),
            HOST: host,
            CONFIG_HASH: config_hash,
            VLLM_VERSION: vllm_version or "unknown",
            MODEL: model,
            GPUS: ",".join(gpus),
            MANIFEST: _dump(manifest),
            SPEC: _dump(spec),
            SLEEP_MODE: "true" if sleep_mode else "false",
            API_KEY_SET: "true" if api_key else "false",
        }
    )
    if serve_until:
        labels[SERVE_UNTIL] = serve_until
    if argv_flags is not None:
        labels[ARGV_FLAGS] = argv_flags
    return labels


def selected(name: str, names: list[str] | None) -> bool:
    """Whether the deployment key ``name`` (the vllm_container ``name``) is chosen by ``names``.

    Each entry of ``names`` is a replica name (``chat-1``: that one, exactly) or a deployment name (``chat``: itself
    and every replica ``chat-<N>``). None or an empty list chooses every name.
    """
    if not names:
        return True
    for wanted in names:
        if name == wanted:
            return True
        suffix = name[len(wanted) + 1 :] if name.startswith(f"{wanted}-") else ""
        if suffix.isdigit() and suffix.isascii():
            return True
    return False


def is_managed(labels: dict[str, str] | None) -> bool:
    return bool(labels) and labels.get(MANAGED) == "true" and bool(labels.get(DEPLOYMENT))


def _json_or_none(raw: str | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def parse(labels: dict[str, str] | None) -> dict[str, Any]:
    """Typed view of a container's gpufleet labels (missing keys -> None); works on any container's labels."""
    labels = labels or {}
    port = labels.get(PORT)
    gpus = labels.get(GPUS)
    return {
        "managed": labels.get(MANAGED) == "true",
        "name": labels.get(DEPLOYMENT),
        "port": int(port) if port and port.isdigit() else None,
        "host": labels.get(HOST),
        "config_hash": labels.get(CONFIG_HASH),
        "vllm_version": labels.get(VLLM_VERSION),
        "model": labels.get(MODEL),
        "gpus": [g for g in gpus.split(",") if g] if gpus else [],
        "manifest": _json_or_none(labels.get(MANIFEST)),
        "spec": _json_or_none(labels.get(SPEC)),
        "serve_until": labels.get(SERVE_UNTIL),
        "sleep_mode": labels.get(SLEEP_MODE) == "true",
        "api_key": labels.get(API_KEY_SET) == "true",
        "plan_digest": labels.get(PLAN_DIGEST),
        "owner": labels.get(OWNER) or None,
        "ray_hosts": [h for h in (labels.get(RAY_HOSTS) or "").split(",") if h],
    }


def ray_node(labels: dict[str, str] | None) -> dict[str, Any] | None:
    """``{deployment, replica, role, port, gpus, host}`` of a Ray node container; None for any other container."""
    labels = labels or {}
    role, port, replica = labels.get(RAY_ROLE), labels.get(RAY_PORT, ""), labels.get(RAY_REPLICA, "")
    if role not in ("head", "worker") or not port.isdigit() or not replica.isdigit() or not labels.get(DEPLOYMENT):
        return None
    return {
        "deployment": labels[DEPLOYMENT],
        "replica": int(replica),
        "role": role,
        "port": int(port),
        "gpus": [g for g in (labels.get(GPUS) or "").split(",") if g],
        "host": labels.get(HOST),
    }
