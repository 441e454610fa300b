"""The gateway's logic: routers from the plan (ports, workers, argv), the worker-set diff, ensure_workers against an
in-memory router that behaves like vllm-router 0.1.17 (400 on a duplicate add, 200 on removing an unknown worker),
the status side and the launcher's pure parts."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway import launch, status
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.config import (
    Router,
    router_argv,
    routers,
    unused_ports,
    worker_url,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.workers import (
    RouterClient,
    diff_workers,
    ensure_workers,
    normalize_url,
    write_workers_file,
)
from fixtures.paths import ROOT

ASSIGNMENTS = [
    {"deployment": "chat", "replica": 0, "host": "gpu-a", "port": 8000},
    {"deployment": "chat", "replica": 1, "host": "gpu-b", "port": 8000},
    {"deployment": "embed", "replica": 0, "host": "gpu-b", "port": 8100},
    {"deployment": "gone", "replica": 0, "host": "gpu-a", "port": 8200},  # not declared any more
]
ADDR = {"gpu-a": "10.0.0.11", "gpu-b": "10.0.0.12"}


def test_routers_from_the_plan() -> None:
    out = routers(["embed", "chat"], ASSIGNMENTS, ADDR)
    assert [r.deployment for r in out] == ["chat", "embed"]
    assert out[0] == Router("chat", 30000, 31000, ("http://10.0.0.11:8000", "http://10.0.0.12:8000"))
    assert out[1] == Router("embed", 30001, 31001, ("http://10.0.0.12:8100",))


def test_ports_pinned_and_stable() -> None:
    out = routers(["chat", "embed"], ASSIGNMENTS, ADDR, ports={"embed": 9000}, base_port=40000, metrics_offset=10)
    assert [(r.port, r.metrics_port) for r in out] == [(40000, 40010), (9000, 9010)]
    # a pinned port does not move when another deployment is added before it
    again = routers(["aaa", "chat", "embed"], ASSIGNMENTS, ADDR, ports={"embed": 9000})
    assert {r.deployment: r.port for r in again}["embed"] == 9000


def test_a_pinned_port_of_a_deployment_not_declared_gets_no_router_and_no_error() -> None:
    """A deployment set absent or pruned keeps its entry in the ports: the gateway drops its router (the converge that
    removed its replicas must not fail at the gateway) and the entry keeps nobody else off the port."""
    ports = {"gone": 30000, "embed": 9000}
    out = routers(["chat", "embed"], ASSIGNMENTS, ADDR, ports=ports)
    assert [(r.deployment, r.port) for r in out] == [("chat", 30000), ("embed", 9000)]
    assert unused_ports(ports, ["chat", "embed"]) == ["gone"]
    assert unused_ports(None, ["chat"]) == [] and unused_ports({"chat": 1}, ["chat"]) == []


def test_declared_without_replicas_has_no_workers_and_host_without_address_uses_its_name() -> None:
    out = routers(["chat", "idle"], ASSIGNMENTS, {"gpu-a": "10.0.0.11"})
    assert out[0].workers == ("http://10.0.0.11:8000", "http://gpu-b:8000")
    assert out[1].workers == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ports": {"chat": 30001}}, "already used"),
        ({"ports": {"chat": 65000}}, "not in 1..65535"),
    ],
)
def test_bad_ports(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(GpufleetError, match=message):
        routers(["chat", "embed"], ASSIGNMENTS, ADDR, **kwargs)


def test_replica_without_port_is_an_error() -> None:
    with pytest.raises(GpufleetError, match="no port"):
        routers(["chat"], [{"deployment": "chat", "replica": 0, "host": "gpu-a", "port": None}], ADDR)


def test_worker_url() -> None:
    assert worker_url("fd00::1", 8000) == "http://[fd00::1]:8000"
    for bad in ("", "a b", "x;rm"):
        with pytest.raises(GpufleetError):
            worker_url(bad, 8000)


def test_router_argv_has_health_retries_and_no_secret() -> None:
    r = Router("chat", 30000, 31000, ("http://10.0.0.11:8000",))
    argv = router_argv(r, "10.0.0.5", {"policy": "round_robin", "health_check_interval_secs": "1"})
    assert "--host=10.0.0.5" in argv and "--port=30000" in argv
    assert "--prometheus-host=10.0.0.5" in argv and "--prometheus-port=31000" in argv
    assert "--health-check-interval-secs=1" in argv and "--retry-max-retries=3" in argv
    assert not any("api-key" in a or "worker-urls" in a for a in argv)  # workers: the workers file; key: a file
    assert argv == router_argv(r, "10.0.0.5", {"policy": "round_robin", "health_check_interval_secs": "1"})


def test_router_argv_refuses_any_address_unless_asked() -> None:
    r = Router("chat", 30000, 31000)
    with pytest.raises(GpufleetError, match="refusing"):
        router_argv(r, "0.0.0.0", {})
    assert "--host=0.0.0.0" in router_argv(r, "0.0.0.0", {"allow_any_address": True})
    with pytest.raises(GpufleetError, match="policy"):
        router_argv(r, "10.0.0.5", {"policy": "fastest"})
    with pytest.raises(GpufleetError, match="positive"):
        router_argv(r, "10.0.0.5", {"health_check_interval_secs": 0})


def test_diff_workers() -> None:
    cur = ["http://a:1", "http://b:1"]
    assert diff_workers(cur, ["http://b:1", "http://c:1"]) == (
        ["http://b:1", "http://c:1"],
        diff_workers(cur, ["http://c:1", "http://b:1"])[1],
    )
    target, d = diff_workers(cur, ["http://b:1", "http://c:1"])
    assert (d.add, d.remove) == (("http://c:1",), ("http://a:1",))
    target, d = diff_workers(cur, remove=["http://b:1/"])
    assert target == ["http://a:1"] and d.remove == ("http://b:1",) and not d.add
    target, d = diff_workers(cur, add=["HTTP://A:1"])
    assert not d.changed and target == cur
    with pytest.raises(GpufleetError, match="both added and removed"):
        diff_workers(cur, add=["http://x:1"], remove=["http://x:1"])
    with pytest.raises(GpufleetError, match="URL"):
        normalize_url("a:1")


class FakeRouter:
    """vllm-router's worker API as 0.1.17 answers it."""

    def __init__(self, workers: list[str]) -> None:
        self.workers = list(workers)
        self.calls: list[tuple[str, str]] = []
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:
                pass

            def _send(self, code: int, body: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/list_workers":
                    self._send(200, json.dumps({"urls": fake.workers}))
                elif self.path == "/workers":
                    rows = [{"url": u, "is_healthy": "bad" not in u, "load": 0} for u in fake.workers]
                    self._send(200, json.dumps({"workers": rows, "total": len(rows)}))
                else:
                    self._send(200, "All servers healthy")

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                url = parse_qs(parts.query)["url"][0]
                fake.calls.append((parts.path, url))
                if parts.path == "/add_worker":
                    if url in fake.workers:
                        return self._send(400, f"Worker {url} already exists")
                    if "dead" in url:
                        return self._send(500, f"Timeout waiting for worker {url} to become healthy")
                    fake.workers.append(url)
                    return self._send(200, f"Successfully added worker: {url}")
                if url in fake.workers:
                    fake.workers.remove(url)
                return self._send(200, f"Successfully removed worker: {url}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Any:
    f = FakeRouter(["http://a:1", "http://b:1"])
    yield f
    f.close()


def test_ensure_exact_set_then_idempotent(fake: FakeRouter, tmp_path: Path) -> None:
    client = RouterClient(fake.url)
    wfile = tmp_path / "workers"
    res = ensure_workers(client, ["http://b:1", "http://c:1"], workers_file=str(wfile))
    assert res["changed"] and res["added"] == ["http://c:1"] and res["removed"] == ["http://a:1"]
    assert res["before"] == ["http://a:1", "http://b:1"] and res["after"] == ["http://b:1", "http://c:1"]
    assert fake.calls == [("/remove_worker", "http://a:1"), ("/add_worker", "http://c:1")]  # removals first
    assert wfile.read_text() == "http://b:1\nhttp://c:1\n"
    fake.calls.clear()
    again = ensure_workers(client, ["http://c:1", "http://b:1"], workers_file=str(wfile))
    assert not again["changed"] and fake.calls == []


def test_ensure_check_mode_calls_nothing(fake: FakeRouter, tmp_path: Path) -> None:
    client = RouterClient(fake.url)
    res = ensure_workers(client, remove=["http://a:1"], check_mode=True, workers_file=str(tmp_path / "w"))
    assert res["changed"] and res["removed"] == ["http://a:1"] and res["after"] == ["http://b:1"]
    assert res["workers_file_changed"] and not (tmp_path / "w").exists()
    assert fake.calls == [] and fake.workers == ["http://a:1", "http://b:1"]


def test_ensure_add_remove_keep_the_rest(fake: FakeRouter) -> None:
    client = RouterClient(fake.url)
    res = ensure_workers(client, remove=["http://a:1"])
    assert res["after"] == ["http://b:1"]
    res = ensure_workers(client, add=["http://a:1"])
    assert res["added"] == ["http://a:1"] and res["after"] == ["http://a:1", "http://b:1"]
    assert not ensure_workers(client, remove=["http://zzz:1"])["changed"]  # unknown: nothing to do, no call


def test_add_of_unhealthy_worker_fails_with_a_class(fake: FakeRouter) -> None:
    with pytest.raises(GpufleetError) as err:
        ensure_workers(RouterClient(fake.url), add=["http://dead:1"])
    assert err.value.details["failure_class"] == "gateway_worker_unhealthy"


def test_unreachable_router() -> None:
    with pytest.raises(GpufleetError) as err:
        RouterClient("http://127.0.0.1:9", timeout=1).list_workers()
    assert err.value.details["failure_class"] == "gateway_unreachable"


def test_status_from_router_args(fake: FakeRouter, tmp_path: Path) -> None:
    port = int(fake.url.rsplit(":", 1)[1])
    d = tmp_path / "routers" / "chat"
    d.mkdir(parents=True)
    (d / "router.args").write_text(f"--host=127.0.0.1\n--port={port}\n--prometheus-port=9\n--policy=round_robin\n")
    (tmp_path / "routers" / "down").mkdir()
    (tmp_path / "routers" / "down" / "router.args").write_text("--host=127.0.0.1\n--port=9\n")
    out = status.gateway_status(str(tmp_path), timeout=1)
    assert [r["deployment"] for r in out] == ["chat", "down"]
    assert out[0]["up"] and [w["url"] for w in out[0]["workers"]] == ["http://a:1", "http://b:1"]
    assert out[0]["metrics_port"] == 9
    assert not out[1]["up"] and out[1]["error"]
    assert status.gateway_status(str(tmp_path / "nothing")) == []


def test_launcher_pure_parts(tmp_path: Path) -> None:
    f = tmp_path / "workers"
    assert launch.read_lines(str(f)) == []
    f.write_text("# comment\nhttp://a:1\n\n http://b:1 \n")
    assert launch.read_lines(str(f)) == ["http://a:1", "http://b:1"]
    assert launch._router_url(["--host=10.0.0.5", "--port=30000", "--policy=x"]) == "http://10.0.0.5:30000"
    assert launch._router_url(["--host=0.0.0.0", "--port=1"]) == "http://127.0.0.1:1"
    assert launch.running_pid(str(tmp_path / "none.pid")) is None
    (tmp_path / "self.pid").write_text("1\n")  # pid 1 is not a gateway supervisor
    assert launch.running_pid(str(tmp_path / "self.pid")) is None


def test_launcher_runs_from_the_two_files_the_role_ships(tmp_path: Path) -> None:
    """The role ships launch.py and _supervisor.py alone (roles/gateway/vars/main.yml): of the collection, launch.py
    imports only _supervisor (the copy beside it on a gateway host), _supervisor nothing; both run from a directory
    that holds nothing else, without the collection on the path."""
    shipped = yaml.safe_load((ROOT / "roles" / "gateway" / "vars" / "main.yml").read_text())["_gateway_launcher_files"]
    assert [f["dest"] for f in shipped] == ["launch.py", "_supervisor.py"]
    for f in shipped:
        src = (ROOT / "plugins" / "module_utils" / f["src"]).read_text()
        imports = [
            n.module if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(ast.parse(src))
            if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names
        ]
        ours = [m for m in imports if m and m.startswith("ansible_collections")]
        assert ours == (["ansible_collections.gpufleet.vllm.plugins.module_utils"] if f["dest"] == "launch.py" else [])
        (tmp_path / f["dest"]).write_text(src)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no PYTHONPATH: the collection is not importable
    proc = subprocess.run(
        [sys.executable, "-s", str(tmp_path / "launch.py"), f"--pidfile={tmp_path / 'r.pid'}", "--stop"],
        capture_output=True, text=True, env=env, cwd="/", timeout=60, check=False,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "not running\n", "")


def test_workers_file_is_written_once_and_its_directory_made(tmp_path: Path) -> None:
    path = tmp_path / "routers" / "chat" / "workers"
    assert write_workers_file(str(path), ["http://a:1", "http://b:1"]) is True
    assert path.read_text() == "http://a:1\nhttp://b:1\n" and path.stat().st_mode & 0o777 == 0o644
    mtime = path.stat().st_mtime_ns
    assert write_workers_file(str(path), ["http://a:1", "http://b:1"]) is False and path.stat().st_mtime_ns == mtime
    assert write_workers_file(str(path), []) is True and path.read_text() == ""
