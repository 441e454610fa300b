# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Usage per owner and per deployment (``playbooks/usage.yml``): requests, prompt and completion tokens, and the
current tokens/s, from each replica's vLLM ``/metrics``.

Two halves, one home:

- on each host (module ``vllm_usage``), ``sample_host``: every running managed replica's counters
  ``vllm:request_success_total``, ``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total`` (read with
  prometheus_client's parser, ``_vllm/metrics.py``), sampled twice ``interval`` seconds apart on the host's
  monotonic clock; a replica's rate is the counters' increase over the time between its own two samples (a counter
  that went down restarted from zero: its increase is its new value, as Prometheus' ``rate`` counts it);
- on the controller (``fleet_report kind=usage``), ``usage_report``: the replicas of every host summed per deployment
  and per owner (the ``gpufleet.owner`` label), and ``usage_table``.

The totals are vLLM's counters, which start at zero with each server process: usage since each replica's start. Use
Prometheus (role monitoring, whose series carry the ``owner`` label) for history across restarts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.validate import name_problem
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.table import render_table
from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import metrics

USAGE_VERSION = 1
DEFAULT_INTERVAL = 5.0
MAX_INTERVAL = 300.0

# vLLM's counters -> a sample's keys (the status report's names).
SCRAPED = {
    metrics.REQUEST_SUCCESS: "requests",
    metrics.PROMPT_TOKENS: "prompt_tokens",
    metrics.GENERATION_TOKENS: "generation_tokens",
}
# A sample's keys -> the usage report's (completion tokens = vLLM's generation tokens).
COUNTERS = {"requests": "requests", "prompt_tokens": "prompt_tokens", "generation_tokens": "completion_tokens"}
SUMS = ("requests", "prompt_tokens", "completion_tokens", "tokens_per_s", "prompt_tokens_per_s")

ARGUMENT_SPEC: dict[str, Any] = {
    "names": {"type": "list", "elements": "str", "default": []},
    "interval": {"type": "float", "default": DEFAULT_INTERVAL},
    "timeout": {"type": "float", "default": 5.0},
    "runtime": {"type": "str", "default": "docker", "choices": ["docker", "podman"]},
    "docker_host": {"type": "str"},
}

Fetch = Callable[[str, float], tuple[int, bytes]]


def check_params(params: Mapping[str, Any]) -> None:
    """One clear error for values the argument spec's types let through."""
    interval = params.get("interval")
    if interval is None or not 0 <= float(interval) <= MAX_INTERVAL:
        raise GpufleetError(
            f"interval: {interval!r} must be seconds between 0 and {MAX_INTERVAL:g} (0: one sample, no tokens/s)"
        )
    problems = [p for p in (name_problem(n, "names:") for n in params.get("names") or []) if p]
    if problems:
        raise GpufleetError("; ".join(problems) + " (names select deployments by their vllm_container name)")
    timeout = params.get("timeout")
    if timeout is None or not 0 < float(timeout) <= 60:
        raise GpufleetError(f"timeout: {timeout!r} must be seconds above 0, at most 60")


def _fetch(url: str, timeout: float) -> tuple[int, bytes]:
    return rd.http(url, timeout=timeout)


def _sample(
    endpoint: str, fetch: Fetch, clock: Callable[[], float], timeout: float
) -> tuple[float, dict[str, float] | None, str | None]:
    """(when, counters, error) of one scrape; ``when`` is the middle of the request on the monotonic clock."""
    start = clock()
    status, body = fetch(endpoint + "/metrics", timeout)
    when = (start + clock()) / 2
    if status != 200:
        return when, None, f"/metrics answered {status}" if status else "/metrics did not answer"
    raw = metrics.sums(body.decode("utf-8", "replace"), SCRAPED)
    counters = {key: raw[name] for name, key in SCRAPED.items() if name in raw}
    if "requests" not in counters:
        return when, None, "/metrics has no vllm:request_success_total (not a vLLM server?)"
    return when, counters, None


def _increase(before: float, after: float) -> float:
    return after - before if after >= before else after


def replica_usage(
    first: tuple[float, dict[str, float] | None, str | None],
    second: tuple[float, dict[str, float] | None, str | None] | None,
) -> dict[str, Any]:
    """A replica's totals (the later sample) and rates (the increase between its two samples over their time apart;
    None with one sample, or when either failed)."""
    last = second if second is not None and second[1] is not None else first
    out: dict[str, Any] = {"scraped": last[1] is not None, "error": None if last[1] is not None else last[2]}
    for key, name in COUNTERS.items():
        out[name] = int(last[1].get(key, 0)) if last[1] is not None else None
    out["tokens_per_s"] = out["prompt_tokens_per_s"] = None
    if second is not None and first[1] is not None and second[1] is not None and second[0] > first[0]:
        dt = second[0] - first[0]
        gen = _increase(first[1].get("generation_tokens", 0.0), second[1].get("generation_tokens", 0.0))
        prompt = _increase(first[1].get("prompt_tokens", 0.0), second[1].get("prompt_tokens", 0.0))
        out["tokens_per_s"] = round(gen / dt, 2)
        out["prompt_tokens_per_s"] = round(prompt / dt, 2)
    return out


def sample_replicas(
    replicas: Iterable[Mapping[str, Any]],
    interval: float,
    *,
    timeout: float = 5.0,
    fetch: Fetch = _fetch,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Usage of ``replicas`` (``name``, ``owner``, ``endpoint``, ``running``): every running one sampled, then, when
    ``interval`` > 0, every one again after ``interval`` seconds (one wait for the whole host)."""
    rows = [dict(r) for r in replicas]
    live = [r for r in rows if r.get("running") and r.get("endpoint")]
    firsts = {r["name"]: _sample(str(r["endpoint"]), fetch, clock, timeout) for r in live}
    seconds: dict[str, Any] = {}
    if interval > 0 and live:
        sleep(interval)
        seconds = {r["name"]: _sample(str(r["endpoint"]), fetch, clock, timeout) for r in live}
    out = []
    for r in rows:
        base = {k: r.get(k) for k in ("name", "owner", "endpoint")}
        base["deployment"] = deployment_of(str(r.get("name")))
        if r["name"] in firsts:
            base.update(replica_usage(firsts[r["name"]], seconds.get(r["name"])))
        else:
            base.update(dict.fromkeys(SUMS), scraped=False, error="not running")
        out.append(base)
    return out


def sample_host(params: Mapping[str, Any], rt: Runtime, **kw: Any) -> dict[str, Any]:
    """What module ``vllm_usage`` returns: ``replicas`` (the managed replicas on this host selected by ``names``,
    sorted by name) and ``interval_s``."""
    check_params(params)
    found = []
    for c in rt.list_managed():
        lab = lb.parse(c.labels)
        name = lab["name"]
        if not name or c.name != lb.container_name(name) or not lb.selected(name, params.get("names") or []):
            continue
        endpoint = rd.base_url(lab["host"], lab["port"]) if lab["port"] else None
        found.append({"name": name, "owner": lab["owner"], "endpoint": endpoint, "running": c.running})
    found.sort(key=lambda r: r["name"])
    interval = float(params["interval"])
    rows = sample_replicas(found, interval, timeout=float(params["timeout"]), **kw)
    return {"changed": False, "replicas": rows, "interval_s": interval}


def deployment_of(name: str) -> str:
    """``chat-1`` -> ``chat`` (the replica key's deployment)."""
    return re.sub(r"-\d+$", "", name)


def _host_rows(value: Any) -> list[Mapping[str, Any]]:
    """One host's replicas: vllm_usage's registered result or its ``replicas`` list (None: the host did not run)."""
    rows = value.get("replicas") if isinstance(value, Mapping) else value
    return [r for r in rows or [] if isinstance(r, Mapping)]


def _add(group: dict[str, Any], row: Mapping[str, Any]) -> None:
    group["replicas"] += 1
    if row.get("scraped"):
        group["scraped"] += 1
    for key in SUMS:
        if row.get(key) is not None:
            group[key] = round((group[key] or 0) + row[key], 2)


def _group(**keys: Any) -> dict[str, Any]:
    return {**keys, "replicas": 0, "scraped": 0, **dict.fromkeys(SUMS)}


def usage_report(
    hosts: Mapping[str, Any],
    *,
    unreachable: Iterable[str] = (),
    generated_at: float | None = None,
) -> dict[str, Any]:
    """Usage of the fleet from each host's ``vllm_usage`` result: ``replicas`` (with ``host``), ``deployments`` and
    ``owners`` (sums: ``requests``, ``prompt_tokens``, ``completion_tokens``, ``tokens_per_s``,
    ``prompt_tokens_per_s``; ``replicas`` and ``scraped`` counts; None where no replica was read), ``total``.

    A deployment's ``owner`` is its replicas' (their labels; several during a roll that changes it: joined by ``,``);
    an owner's sums are over the replicas labelled with it (no owner: ``null``)."""
    replicas: list[dict[str, Any]] = []
    intervals = set()
    for host in sorted(hosts or {}):
        value = hosts[host]
        if isinstance(value, Mapping) and value.get("interval_s") is not None:
            intervals.add(float(value["interval_s"]))
        for r in _host_rows(value):
            row = {**r, "host": host}
            row["deployment"] = row.get("deployment") or deployment_of(str(row.get("name")))
            replicas.append(row)
    replicas.sort(key=lambda r: (r["deployment"], str(r.get("name")), r["host"]))
    deployments: dict[str, dict[str, Any]] = {}
    owners: dict[str, dict[str, Any]] = {}
    total = _group()
    for r in replicas:
        dep = deployments.setdefault(r["deployment"], _group(deployment=r["deployment"], owner=None, _owners=set()))
        dep["_owners"].add(r.get("owner"))
        _add(dep, r)
        own = owners.setdefault(r.get("owner") or "", _group(owner=r.get("owner") or None, deployments=[]))
        if r["deployment"] not in own["deployments"]:
            own["deployments"].append(r["deployment"])
        _add(own, r)
        _add(total, r)
    for dep in deployments.values():
        named = sorted(o for o in dep.pop("_owners") if o)
        dep["owner"] = ",".join(named) or None
    return {
        "version": USAGE_VERSION,
        "kind": "usage",
        "generated_at": stamp(generated_at),
        "interval_s": max(intervals) if intervals else None,
        "replicas": replicas,
        "deployments": [deployments[k] for k in sorted(deployments)],
        "owners": sorted(owners.values(), key=lambda o: (o["owner"] is None, str(o["owner"]))),
        "total": total,
        "unreachable_hosts": sorted(str(h) for h in unreachable),
    }


def _counts(g: Mapping[str, Any]) -> list[Any]:
    return [
        f"{g['scraped']}/{g['replicas']}",
        g["requests"],
        g["prompt_tokens"],
        g["completion_tokens"],
        g["tokens_per_s"],
    ]


_COUNT_HEADER = ["REPLICAS", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "TOK/S"]


def usage_table(report: Mapping[str, Any]) -> list[str]:
    """Two tables - per owner, then per deployment - with a total line, then what the numbers are."""
    owners = [[o["owner"], ",".join(o["deployments"]), *_counts(o)] for o in report.get("owners") or []]
    total = report.get("total") or _group()
    out = render_table(
        ["OWNER", "DEPLOYMENTS", *_COUNT_HEADER], [*owners, ["TOTAL", None, *_counts(total)]] if owners else []
    )
    out.append("")
    deployments = [[d["deployment"], d["owner"], *_counts(d)] for d in report.get("deployments") or []]
    out += render_table(["DEPLOYMENT", "OWNER", *_COUNT_HEADER], deployments)
    if not deployments:
        out.append("(no managed deployments)")
    interval = report.get("interval_s")
    rate = f"completion tokens per second over the last {interval:g} s" if interval else "not sampled (interval 0)"
    out.append(f"Counters since each server started; TOK/S: {rate}; REPLICAS: read/managed.")
    missed = [f"{r['name']} on {r['host']}: {r['error']}" for r in report.get("replicas") or [] if r.get("error")]
    if missed:
        out.append("not read: " + "; ".join(missed))
    if report.get("unreachable_hosts"):
        out.append("unreachable hosts (not counted): " + ", ".join(report["unreachable_hosts"]))
    return out
