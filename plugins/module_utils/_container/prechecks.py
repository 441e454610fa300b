# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_container's pre-checks: everything that must hold before a container is created. A failed pre-check touches
nothing; all problems are reported together (``precheck`` = their names, ``problems`` = their messages). A GPU that
gpu_facts calls unhealthy (``_gpu/health.py``) is refused (``gpu_unhealthy``), with its issues.

The GPU rule (GPUs per replica, memory fit) is the fleet placement's, from plugins/module_utils/_gpu/fit.py.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import fit

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def gpu_facts() -> tuple[list[dict[str, Any]] | None, str | None]:
    """(gpus list, None) from plugins/module_utils/_gpu/facts.py (NVML, else nvidia-smi), or (None, why not)."""
    # Imported here: a no-op converge never loads NVML / nvidia-smi.
    from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.facts import gather_gpus

    try:
        facts = gather_gpus(timeout=10.0)
    except Exception as e:  # no NVML on this host is not an error for us: the checks are skipped with a warning
        return None, f"GPU facts unavailable: {e}"
    if facts.get("gpu_source") in (None, "none"):
        return None, f"no GPU source answered ({facts.get('gpu_source_reason') or 'no NVML, no nvidia-smi'})"
    return list(facts.get("gpus") or []), None


class GpuFacts:
    """The host's GPUs, gathered on first use only (a run whose pre-checks need no GPU never asks)."""

    def __init__(
        self,
        fn: Callable[[], tuple[list[dict[str, Any]] | None, str | None]] = gpu_facts,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self._fn = fn
        self._warn = warn or (lambda msg: None)
        self._gpus: list[dict[str, Any]] | None = None
        self._loaded = False

    def get(self) -> list[dict[str, Any]] | None:
        """The GPU list (gathered now if not yet), or None when no source answered (then warned once)."""
        if not self._loaded:
            self._gpus, why = self._fn()
            self._loaded = True
            if self._gpus is None and why:
                self._warn(f"GPU pre-checks skipped: {why}")
        return self._gpus

    @property
    def gathered(self) -> list[dict[str, Any]] | None:
        """The GPU list if it was gathered already, else None (never gathers)."""
        return self._gpus if self._loaded else None


def port_in_use(host: str, port: int) -> bool:
    """True when something on this host already listens on host:port."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return False
    except OSError as e:
        return e.errno == errno.EADDRINUSE
    finally:
        s.close()


def host_warning(params: dict[str, Any], warn: Callable[[str], None]) -> None:
    """Warn when the server listens beyond loopback without an api_key."""
    host = params.get("host") or "0.0.0.0"
    if host not in LOOPBACK and not params.get("api_key"):
        warn(
            f"vLLM listens on {host}:{params['port']} without api_key: anyone who reaches the port can use the "
            "server; set api_key or host: 127.0.0.1"
        )


def check(
    params: dict[str, Any],
    gpus: list[str],
    cur: ContainerState | None,
    starting: bool,
    facts: GpuFacts,
    rt: Runtime,
) -> None:
    """Raise GpufleetError (``precheck``, ``problems``; failure_class port_conflict when that comes first) unless
    every pre-check holds. ``gpus``: the normalized GPU ids (spec.gpus_of); ``cur``: this deployment's current
    container (its port and GPU memory count as free for its replacement); ``starting``: the port is checked."""
    if not params.get("prechecks"):
        return
    problems = _gpu_problems(params, gpus, cur, facts, rt)
    problems += _path_problems(params)
    if starting and (params.get("network") or "host") == "host":
        problems += _port_problems(params, cur)
    if problems:
        raise GpufleetError(
            "pre-check failed: " + "; ".join(p[1] for p in problems),
            precheck=[p[0] for p in problems],
            problems=[p[1] for p in problems],
            failure_class=problems[0][0] if problems[0][0] == "port_conflict" else None,
        )


def ray_executor(params: dict[str, Any]) -> bool:
    """Whether the server runs over a Ray cluster (``--distributed-executor-backend ray`` in extra_args)."""
    args = [str(a) for a in params.get("extra_args") or []]
    pairs = zip(args, [*args[1:], ""], strict=False)
    return "--distributed-executor-backend=ray" in args or ("--distributed-executor-backend", "ray") in pairs


def _gpu_problems(
    params: dict[str, Any], gpus: list[str], cur: ContainerState | None, facts: GpuFacts, rt: Runtime
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    world = fit.gpus_per_replica(params.get("tensor_parallel_size"), params.get("pipeline_parallel_size"))
    host_gpus = facts.get() if gpus else None
    if gpus and gpus != ["all"] and world > len(gpus) and ray_executor(params):
        pass  # a multi-host replica: the other GPUs are its Ray workers' (the cluster is checked before the start)
    elif gpus and gpus != ["all"] and world != len(gpus):
        problems.append(
            (
                "tp_mismatch",
                f"tensor_parallel_size x pipeline_parallel_size = {world} but {len(gpus)} GPU(s) are "
                f"given ({','.join(gpus)}); make them equal",
            )
        )
    if not gpus and world > 1:
        problems.append(("tp_mismatch", f"tensor_parallel_size x pipeline_parallel_size = {world} but no gpus given"))
    if host_gpus is None or not gpus:
        return problems
    by_id: dict[str, dict[str, Any]] = {}
    for g in host_gpus:
        by_id[str(g.get("index"))] = g
        if g.get("uuid"):
            by_id[str(g["uuid"])] = g
    if gpus == ["all"]:
        selected = list(host_gpus)
        if world != len(host_gpus) and world > 1:
            problems.append(
                (
                    "tp_mismatch",
                    f"tensor_parallel_size x pipeline_parallel_size = {world} but gpus=all is {len(host_gpus)} GPU(s)",
                )
            )
    else:
        missing = [g for g in gpus if g not in by_id]
        if missing:
            have = ", ".join(f"{g.get('index')} ({g.get('uuid')})" for g in host_gpus) or "none"
            problems.append(("gpu_not_found", f"GPU(s) {', '.join(missing)} not on this host; it has: {have}"))
        selected = [by_id[g] for g in gpus if g in by_id]
    for g in selected:  # gpu_facts' verdict (_gpu/health.py): the fleet's placement skips such a GPU too
        if g.get("healthy") is False:
            issues = ", ".join(str(i) for i in g.get("health_issues") or []) or "unhealthy"
            problems.append(
                (
                    "gpu_unhealthy",
                    f"GPU {g.get('index')} ({g.get('uuid')}) is unhealthy: {issues}; use another GPU or fix this one "
                    "(gpufleet.vllm.gpu_facts shows its state)",
                )
            )
    frac = params.get("gpu_memory_utilization") or fit.DEFAULT_UTILIZATION
    own = own_usage(rt, cur, host_gpus)
    for g in selected:
        total = g.get("memory_total_mib")
        free = g.get("memory_free_mib")
        if total is None or free is None:
            continue
        free_eff = min(total, free + own.get(str(g.get("index")), 0))
        if not fit.free_enough(total, free_eff, frac):
            problems.append(
                (
                    "gpu_memory",
                    f"gpu_memory_utilization {frac} x {total} MiB = {frac * total:.0f} MiB on GPU "
                    f"{g.get('index')} but only {free_eff:.0f} MiB are free; lower gpu_memory_utilization to "
                    f"{max(0.0, free_eff / total - 0.01):.2f} or free the GPU",
                )
            )
    return problems


def _path_problems(params: dict[str, Any]) -> list[tuple[str, str]]:
    """The local model directory and the LoRA paths exist on this host."""
    problems: list[tuple[str, str]] = []
    model = params["model"]
    if cs.is_local_model(model):
        mp = cs.normalize_model(model)
        if not os.path.exists(mp):
            problems.append(
                (
                    "model_missing",
                    f"model path {mp} does not exist on this host; sync it first (gpufleet.vllm.model_sync)",
                )
            )
        elif os.path.isdir(mp) and not (
            os.path.exists(os.path.join(mp, "config.json")) or os.path.exists(os.path.join(mp, "params.json"))
        ):
            problems.append(("model_invalid", f"model path {mp} has no config.json"))
    for lo in params.get("lora_modules") or []:
        if not os.path.exists(lo["path"]):
            problems.append(("lora_missing", f"LoRA {lo['name']}: path {lo['path']} does not exist on this host"))
    return problems


def _port_problems(params: dict[str, Any], cur: ContainerState | None) -> list[tuple[str, str]]:
    """The port is free on the host network, unless this deployment's own running container holds it."""
    ours = (
        cur is not None and (cur.running or cur.status == "paused") and lb.parse(cur.labels)["port"] == params["port"]
    )
    host = params.get("host") or "0.0.0.0"
    if not ours and port_in_use(host if host != "localhost" else "127.0.0.1", params["port"]):
        return [
            (
                "port_conflict",
                f"port {params['port']} is already bound on this host by something else; choose "
                "another port or stop what listens there",
            )
        ]
    return []


def own_usage(rt: Runtime, cur: ContainerState | None, host_gpus: list[dict[str, Any]] | None) -> dict[str, float]:
    """MiB this deployment's current container holds per GPU index (counts as free for its replacement)."""
    if cur is None or not cur.running or not host_gpus:
        return {}
    pids = set(rt.pids(cur.id))
    out: dict[str, float] = {}
    for g in host_gpus:
        used = 0.0
        for proc in g.get("processes") or []:
            if proc.get("pid") in pids:
                used += float(proc.get("used_memory_mib") or proc.get("memory_mib") or 0)
        if used:
            out[str(g.get("index"))] = used
    if not out:
        # No pid match (e.g. another PID namespace): assume its own share of each GPU it holds.
        old = lb.parse(cur.labels)
        frac = ((old["manifest"] or {}).get("gpu_memory_utilization")) or fit.DEFAULT_UTILIZATION
        for g in host_gpus:
            if str(g.get("index")) in old["gpus"] or str(g.get("uuid")) in old["gpus"] or old["gpus"] == ["all"]:
                out[str(g.get("index"))] = frac * float(g.get("memory_total_mib") or 0)
    return out
