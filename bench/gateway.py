# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the gateway: requests through vllm-router vs straight to the replicas, on loopback.

Goals (issue 15): throughput through the gateway >= 0.9 x direct; added p50 latency <= 2 ms.

Throughput with ``--clients`` concurrent clients; the added latency with one client sending requests one after the
other (what the hop itself adds, without the CPU contention of a saturated small machine, which the loaded p50 also
shows). Two vLLM stand-ins (sim/standin, run as local processes on 127.0.0.1) and one vllm-router started by the
collection's launcher (plugins/module_utils/_gateway/launch.py, the workers file) with the arguments the role gives it
(``_gateway/config.router_argv`` with the role's defaults: round_robin, health checks every 2 s, 3 retries, log level
info; ``--router-log-level`` changes the last) and, as the role deploys it, behind the admin guard: HAProxy
(``_gateway/config.haproxy_config``, the router on loopback) when haproxy is installed, unless ``--no-guard``.
The same httpx client and load for both rounds, in one run: ``--clients`` threads, each with its own keep-alive
connection, ``--requests`` small completions in all; direct = each client sends to the replicas in turn (the
same round robin the router does). Rounds alternate direct/gateway ``--rounds`` times; the figures are the medians.

vllm-router comes from .build/gateway-venv, created from .build/gateway-wheelhouse (tests/integration/test_gateway.py
fills it) or the configured index when missing.

Usage: .venv/bin/python bench/gateway.py [--requests 600] [--clients 8] [--rounds 3]
Results also go to bench/out/gateway.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".build" / "collections"))
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.config import (  # noqa: E402
    Router,
    haproxy_config,
    router_argv,
)

OUT = ROOT / "bench" / "out"
VENV = ROOT / ".build" / "gateway-venv"
WHEELHOUSE = ROOT / ".build" / "gateway-wheelhouse"
LAUNCHER = ROOT / "plugins" / "module_utils" / "_gateway" / "launch.py"
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def router_python() -> str:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if subprocess.run([str(py), "-c", "import vllm_router.launch_router"], capture_output=True).returncode != 0:
        extra = ["--no-index", "--find-links", str(WHEELHOUSE)] if list(WHEELHOUSE.glob("vllm_router-*")) else []
        subprocess.run([str(py), "-m", "pip", "install", "-q", *extra, "vllm-router==0.1.17"], check=True)
    return str(py)


def wait_http(url: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {deadline_s} s")


def run_load(targets: list[str], requests: int, clients: int) -> dict[str, float]:
    """``requests`` completions over ``clients`` threads; thread i sends its n-th request to targets[(i+n) % len]."""
    lat: list[float] = []
    lock = threading.Lock()
    per = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    body = {"model": "m", "prompt": "hello gateway", "max_tokens": 8}
    headers = {"Authorization": f"Bearer {KEY}"}

    def worker(i: int) -> int:
        ok = 0
        mine: list[float] = []
        with httpx.Client(timeout=30) as c:
            for n in range(per[i]):
                url = targets[(i + n) % len(targets)] + "/v1/completions"
                t0 = time.perf_counter()
                r = c.post(url, json=body, headers=headers)
                mine.append(time.perf_counter() - t0)
                ok += r.status_code == 200
        with lock:
            lat.extend(mine)
        return ok

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        ok = sum(pool.map(worker, range(clients)))
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "ok": ok,
        "rps": requests / wall,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-requests", type=int, default=200, help="sequential requests (1 client) per round")
    ap.add_argument("--router-log-level", default="", help="the router's --log-level (default: the role's, info)")
    ap.add_argument("--no-guard", action="store_true", help="clients straight to the router (no HAProxy in front)")
    args = ap.parse_args()
    args.requests = max(10, min(args.requests, 20000))  # bounded load
    args.rounds = max(1, min(args.rounds, 10))
    args.latency_requests = max(10, min(args.latency_requests, 5000))
    py = router_python()
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="gpufleet-bench-gateway-"))
    try:
        model = tmp / "model"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "sim" / "standin"),
            "STANDIN_TABLES": str(ROOT / "plugins" / "module_utils" / "_vllm" / "flag_tables"),
            "STANDIN_ALLOW_NO_GPU": "1",
        }
        replicas = []
        for _ in range(2):
            port = free_port()
            cmd = [sys.executable, str(ROOT / "sim" / "standin" / "bin" / "vllm"), "serve", str(model)]
            cmd += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", "m", "--api-key", KEY]
            cmd += ["--disable-uvicorn-access-log"]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            replicas.append(f"http://127.0.0.1:{port}")
        gw_port, metrics_port = free_port(), free_port()
        (tmp / "workers").write_text("".join(u + "\n" for u in replicas))
        (tmp / "api_key").write_text(KEY + "\n")
        router = Router("bench", gw_port, metrics_port, tuple(replicas))
        haproxy = None if args.no_guard else shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")
        settings = {"log_level": args.router_log_level, "admin_guard": bool(haproxy)}
        if haproxy:  # the admin guard: HAProxy on the gateway port, the router on 127.0.0.1:<port + offset>
            settings["internal_offset"] = free_port() - gw_port
            (tmp / "haproxy.cfg").write_text(haproxy_config([router], "127.0.0.1", [], settings))
            procs.append(subprocess.Popen([haproxy, "-db", "-f", str(tmp / "haproxy.cfg")], stdout=subprocess.DEVNULL))
        cmd = [py, str(LAUNCHER), *router_argv(router, "127.0.0.1", settings)]
        cmd += [f"--api-key-file={tmp / 'api_key'}", f"--workers-file={tmp / 'workers'}"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        gateway = f"http://127.0.0.1:{gw_port}"
        for url in replicas:
            wait_http(url + "/health")
        wait_http(gateway + "/health")
        end = time.monotonic() + 60
        while len(httpx.get(gateway + "/list_workers", timeout=2).json()["urls"]) < 2 and time.monotonic() < end:
            time.sleep(0.1)
        run_load(replicas, 40, args.clients)  # warm-up, both paths
        run_load([gateway], 40, args.clients)
        rounds: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": [], "direct1": [], "gateway1": []}
        for _ in range(args.rounds):
            rounds["direct"].append(run_load(replicas, args.requests, args.clients))
            rounds["gateway"].append(run_load([gateway], args.requests, args.clients))
            rounds["direct1"].append(run_load(replicas, args.latency_requests, 1))
            rounds["gateway1"].append(run_load([gateway], args.latency_requests, 1))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[kind])

    d = {k: med("direct", k) for k in ("rps", "p50_ms", "p99_ms")}
    g = {k: med("gateway", k) for k in ("rps", "p50_ms", "p99_ms")}
    d1 = {k: med("direct1", k) for k in ("rps", "p50_ms", "p99_ms")}
    g1 = {k: med("gateway1", k) for k in ("rps", "p50_ms", "p99_ms")}
    sent = {"direct": args.requests, "gateway": args.requests, "direct1": args.latency_requests}
    failed = sum(sent.get(kind, args.latency_requests) - r["ok"] for kind, rs in rounds.items() for r in rs)
    result = {
        "requests": args.requests,
        "clients": args.clients,
        "rounds": args.rounds,
        "direct": d,
        "gateway": g,
        "direct_1_client": d1,
        "gateway_1_client": g1,
        "throughput_ratio": g["rps"] / d["rps"],
        "added_p50_ms": g1["p50_ms"] - d1["p50_ms"],
        "added_p99_ms": g1["p99_ms"] - d1["p99_ms"],
        "added_p50_ms_loaded": g["p50_ms"] - d["p50_ms"],
        "failed_requests": failed,
        "router_log_level": args.router_log_level or "info",
        "admin_guard": "haproxy" if haproxy else "none",
    }
    print(f"{'':10} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}   ({args.requests} requests x {args.rounds} rounds, "
          f"{args.clients} clients, loopback, medians, router log level {result['router_log_level']}, guard {result['admin_guard']})")  # fmt: skip
    for label, row in (("direct", d), ("gateway", g), ("direct 1c", d1), ("gateway 1c", g1)):
        print(f"{label:10} {row['rps']:9.1f} {row['p50_ms']:9.2f} {row['p99_ms']:9.2f}")
    print(
        f"throughput ratio ({args.clients} clients) {result['throughput_ratio']:.3f} (goal >= 0.9); added latency, "
        f"1 client ({args.latency_requests} sequential requests): p50 {result['added_p50_ms']:.2f} ms (goal <= 2 ms), "
        f"p99 {result['added_p99_ms']:.2f} ms; added p50 under load {result['added_p50_ms_loaded']:.2f} ms; "
        f"failed requests {failed}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gateway.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
