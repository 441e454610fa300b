# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus scrape targets of the fleet: file_sd entries per scrape job, from what ``vllm_deployment_info`` returns
per host.

Secrets never enter them: a server that needs a bearer token goes to a job whose scrape config names a credentials
file (``config``), never the token itself. File_sd target files are the only files a new or removed deployment
changes (Prometheus re-reads them by itself, no reload).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._monitoring.names import DEFAULT_JOB
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import ports as ray_ports

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
WILDCARD = ("0.0.0.0", "::", "[::]", "")
_JOB = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Job:
    """One scrape job of vLLM servers: its file_sd entries (``{"targets": [host:port], "labels": {...}}``, sorted)
    and the credentials file its scrape config names (None: no authorization)."""

    credentials_file: str | None = None
    targets: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Targets:
    """The scrape jobs of the vLLM servers, and the servers that cannot be scraped (``host``, ``name``, ``reason``)."""

    jobs: dict[str, Job]
    skipped: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Kept:
    """A target entry of a host without an answer this run, carried over from the current target file."""

    host: str
    deployment: str | None
    job: str

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "deployment": self.deployment, "job": self.job}


def split_name(name: str) -> tuple[str, str]:
    """(deployment, replica) of a vllm_container name: ``chat-1`` -> (chat, 1); ``llama`` -> (llama, 0)."""
    m = re.match(r"^(.*)-(\d+)$", name)
    if m and m.group(1):
        return m.group(1), m.group(2)
    return name, "0"


def _host_port(endpoint: str) -> tuple[str, int] | None:
    m = re.match(r"^https?://(\[[^\]]*\]|[^/:]*):(\d+)/?$", str(endpoint or "").strip())
    if not m:
        return None
    return m.group(1), int(m.group(2))


def scrape_address(endpoint: Any, address: str | None, port: Any = None) -> tuple[str | None, str | None]:
    """``(host:port, None)`` Prometheus scrapes for a server at ``endpoint`` on a host reached at ``address``, or
    ``(None, reason)`` when it cannot be scraped from elsewhere.

    A server bound to all interfaces is scraped at the host's address; one bound to loopback only is scraped at
    loopback when the host itself is the local machine (address loopback or unset), else it is skipped.
    """
    hp = _host_port(endpoint) if endpoint else None
    if hp is None:
        if port is None:
            return None, "no endpoint (not started, or not a managed server)"
        hp = ("0.0.0.0", int(port))
    bind, p = hp
    addr = (address or "").strip()
    if bind in WILDCARD:
        host = addr or "127.0.0.1"
    elif bind in LOOPBACK:
        if addr and addr not in LOOPBACK:
            return None, f"binds {bind} only: reachable from its own host only (set host: 0.0.0.0 and an api_key)"
        host = bind
    else:
        host = bind
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{p}", None


def _entries(info: Any) -> list[Mapping[str, Any]]:
    entries = info.get("deployments") if isinstance(info, Mapping) else info
    if info is not None and not isinstance(entries, list):
        raise GpufleetError(
            "infos: each host's value must be the registered result of gpufleet.vllm.vllm_deployment_info (or its "
            "deployments list)"
        )
    return [d for d in entries or [] if isinstance(d, Mapping)]


def target_labels(deployment: str, replica: Any, host: str, gpus: Any, **more: str) -> dict[str, str]:
    """The labels every target entry of a replica carries (``deployment``, ``replica``, ``host``, ``gpus``: the GPU
    ids comma-separated), then the job's own (``more``), all as strings."""
    gpu_text = ",".join(str(g) for g in gpus) if isinstance(gpus, list) else str(gpus or "")
    labels = {"deployment": str(deployment), "replica": str(replica), "host": str(host)}
    return {**labels, **{k: str(v) for k, v in more.items()}, "gpus": gpu_text}


def _address(host: str, addresses: Mapping[str, Any] | None) -> str:
    """The address Prometheus reaches ``host`` at: its ``ansible_host`` (``addresses``), else its name."""
    addr = str((addresses or {}).get(host) or host)
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr


def ray_targets(infos: Mapping[str, Any], addresses: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One file_sd entry per Ray node of a multi-host replica in ``infos`` (per host, vllm_deployment_info's result:
    its ``ray_nodes``): the node's metrics export port in its replica's port block (``_ray/ports.py``; Ray binds it
    on every interface of the host unless the node's IP is loopback) at the host's address, with the labels
    deployment, replica, host, ray_role and gpus. Single-host replicas have no Ray node, hence no entry."""
    out = []
    for host in sorted(infos or {}):
        info = infos[host]
        for n in (info.get("ray_nodes") if isinstance(info, Mapping) else None) or []:
            if not isinstance(n, Mapping) or not str(n.get("ray_port") or n.get("port") or "").isdigit():
                continue
            port = ray_ports.ports(int(n.get("ray_port") or n["port"]))["metrics_export_port"]
            role = str(n.get("ray_role") or n.get("role"))
            labels = target_labels(str(n.get("deployment")), n.get("replica"), host, n.get("gpus"), ray_role=role)
            out.append({"targets": [f"{_address(host, addresses)}:{port}"], "labels": labels})
    return sorted(out, key=_entry_key)


def _entry_key(entry: Mapping[str, Any]) -> tuple[str, ...]:
    labels = entry.get("labels") or {}
    return tuple(str(labels.get(k, "")) for k in ("deployment", "replica", "host")) + tuple(entry.get("targets") or [])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def vllm_targets(
    infos: Mapping[str, Any],
    addresses: Mapping[str, Any] | None = None,
    *,
    job_name: str = DEFAULT_JOB,
    credentials_file: str | None = None,
    credentials_files: Mapping[str, str] | None = None,
) -> Targets:
    """Scrape targets of every managed vLLM server in ``infos`` (per host, vllm_deployment_info's result).

    Servers without an API key go to ``job_name``; servers with one (the info's ``api_key`` flag, or a name in
    ``credentials_files``) to ``<job_name>-auth`` (``credentials_file``) or ``<job_name>-auth-<deployment>`` (their
    own file in ``credentials_files``, keyed by deployment or replica name). Each entry has one target and the
    labels deployment, replica, host, model, gpus, and owner when the deployment has one.
    """
    if not _JOB.match(job_name or ""):
        raise GpufleetError(f"job_name: {job_name!r} must be letters, digits, '_', '.' or '-'")
    per_name = dict(credentials_files or {})
    jobs: dict[str, Job] = {job_name: Job()}
    skipped: list[dict[str, Any]] = []
    for host in sorted(infos or {}):
        address = (addresses or {}).get(host)
        for d in _entries(infos[host]):
            name = str(d.get("name") or "")
            if not name:
                continue
            deployment, replica = split_name(name)
            target, reason = scrape_address(d.get("endpoint"), str(address) if address else None, d.get("port"))
            if target is None:
                skipped.append({"host": host, "name": name, "reason": reason})
                continue
            cred_file = per_name.get(name) or per_name.get(deployment)
            if cred_file:
                job = f"{job_name}-auth-{_slug(deployment)}"
            elif d.get("api_key") and credentials_file:
                job, cred_file = f"{job_name}-auth", credentials_file
            else:
                job = job_name
            slot = jobs.setdefault(job, Job(credentials_file=cred_file))
            if slot.credentials_file != cred_file:
                raise GpufleetError(
                    f"{deployment}: its replicas name different credentials files; give one per deployment",
                    deployment=deployment,
                )
            labels = target_labels(deployment, replica, str(host), d.get("gpus") or [], model=str(d.get("model") or ""))
            if d.get("owner"):  # the inventory's owner: every series of the server carries it (usage per owner)
                labels["owner"] = str(d["owner"])
            slot.targets.append({"targets": [target], "labels": labels})
    for slot in jobs.values():
        slot.targets.sort(key=_entry_key)
    return Targets(jobs=jobs, skipped=skipped)


def keep_targets(
    jobs: dict[str, Job],
    current: Mapping[str, list[Any]],
    job_name: str,
    hosts: Iterable[str],
    *,
    credentials_file: str | None = None,
    credentials_files: Mapping[str, str] | None = None,
) -> list[Kept]:
    """Carry the entries of ``hosts`` (hosts without an answer this run: unreachable) in the ``current`` target files
    (per job, their entries as read) over into ``jobs``, so that their servers stay scraped (and alert) instead of
    vanishing. An auth job is carried over only while a credentials file for it is set. Returns what was kept."""
    kept: list[Kept] = []
    wanted = set(hosts)
    for job in sorted(current, key=lambda j: f"{j}.json"):  # the order of the files' names
        if job != job_name and not job.startswith(f"{job_name}-auth"):
            continue
        entries = current[job]
        for entry in entries if isinstance(entries, list) else []:
            labels = entry.get("labels") if isinstance(entry, dict) else None
            if not isinstance(labels, dict) or labels.get("host") not in wanted:
                continue
            if job not in jobs:
                deployment = str(labels.get("deployment"))
                cred = (credentials_files or {}).get(deployment) or credentials_file
                if job != job_name and not cred:
                    continue
                jobs[job] = Job(credentials_file=cred if job != job_name else None)
            jobs[job].targets.append({"targets": list(entry.get("targets") or []), "labels": dict(labels)})
            kept.append(Kept(host=labels["host"], deployment=labels.get("deployment"), job=job))
    for slot in jobs.values():
        slot.targets.sort(key=_entry_key)
    return kept


def agent_targets(hosts: Iterable[str], addresses: Mapping[str, Any] | None, port: int) -> list[dict[str, Any]]:
    """One file_sd entry per host for the node agent's exporter on ``port`` (label ``host``)."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise GpufleetError(f"node_agent_port: {port!r} is not a TCP port (1-65535)")
    return [{"targets": [f"{_address(h, addresses)}:{port}"], "labels": {"host": str(h)}} for h in sorted(set(hosts))]
