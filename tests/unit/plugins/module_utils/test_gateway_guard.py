"""The gateway's admin guard: vllm-router on loopback, HAProxy on the clients' port passing only the OpenAI API and
/health from anywhere (docs/gateway.md, "The admin API"). The configuration is checked by the real haproxy -c when
HAProxy is installed, and one HAProxy in front of a fake router shows the refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from ansible.utils.display import Display
from ansible_collections.gpufleet.vllm.plugins.filter.gateway_haproxy_config import gateway_haproxy_config
from ansible_collections.gpufleet.vllm.plugins.filter.gateway_routers import gateway_routers
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway import status
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.config import (
    Router,
    admin_url,
    haproxy_config,
    internal_port,
    router_argv,
)
from fixtures.container import free_port

CHAT = Router("chat", 30000, 31000, ("http://10.0.0.11:8000",))
GUARD = {"admin_guard": True}


def test_guarded_router_listens_on_loopback_and_metrics_stay_on_the_address() -> None:
    argv = router_argv(CHAT, "10.0.0.5", GUARD)
    assert "--host=127.0.0.1" in argv and "--port=32000" in argv
    assert "--prometheus-host=10.0.0.5" in argv and "--prometheus-port=31000" in argv
    assert admin_url(CHAT, "10.0.0.5", GUARD) == "http://127.0.0.1:32000"
    assert admin_url(CHAT, "10.0.0.5", {"admin_guard": "false"}) == "http://10.0.0.5:30000"
    assert "--host=10.0.0.5" in router_argv(CHAT, "10.0.0.5", {})  # unguarded: as before
    assert internal_port(CHAT, {"internal_offset": 5}) == 30005


@pytest.mark.parametrize("offset", [0, 1000, 40000])
def test_internal_port_must_be_free_and_valid(offset: int) -> None:
    with pytest.raises(GpufleetError, match="internal router port"):
        internal_port(CHAT, {"internal_offset": offset})


def test_haproxy_config_passes_the_api_and_guards_the_rest() -> None:
    text = haproxy_config([CHAT, Router("embed", 30001, 31001)], "10.0.0.5", ["10.0.0.12", "10.0.0.11"], {})
    assert "bind 10.0.0.5:30000" in text and "server router 127.0.0.1:32000" in text
    assert "bind 10.0.0.5:30001" in text and "server router 127.0.0.1:32001" in text
    assert "acl client_path path_beg /v1/" in text and "acl client_path path /health" in text
    assert "acl fleet_host src 10.0.0.11 10.0.0.12 10.0.0.5 127.0.0.1 ::1" in text  # sorted, loopback and self in
    assert "http-request deny deny_status 403 if !client_path !fleet_host" in text
    assert "acl listing path /list_workers /workers" in text and "http-request allow if listing read_only" in text
    assert "timeout server 1860s" in text  # the router's request timeout + 60 s: long streams are not cut
    v6 = haproxy_config([CHAT], "fd00::5", [], {"request_timeout_secs": 60})
    assert "bind [fd00::5]:30000" in v6 and "timeout client 120s" in v6


@pytest.mark.parametrize(
    ("bind", "sources", "message"),
    [
        ("0.0.0.0", [], "refusing to bind"),
        ("", [], "refusing to bind"),
        ("10.0.0.5", ["10.0.0.1; rm"], "is not an IP address, network or host name"),
        ("10.0.0.5", ["a b"], "is not an IP address, network or host name"),
    ],
)
def test_haproxy_config_refuses(bind: str, sources: list[str], message: str) -> None:
    with pytest.raises(GpufleetError, match=message):
        haproxy_config([CHAT], bind, sources, {})


def test_filters_give_the_role_what_it_needs() -> None:
    out = gateway_routers(
        [{"deployment": "chat", "replica": 0, "host": "gpu-a", "port": 8000}],
        names=["chat"],
        addresses={"gpu-a": "10.0.0.11"},
        bind="10.0.0.5",
        settings=GUARD,
    )
    assert out[0]["admin_url"] == "http://127.0.0.1:32000" and "--host=127.0.0.1" in out[0]["argv"]
    text = gateway_haproxy_config(out, bind="10.0.0.5", admin_sources=["10.0.0.11"], settings=GUARD)
    assert "bind 10.0.0.5:30000" in text and "server router 127.0.0.1:32000" in text


def test_filter_warns_of_ports_named_nowhere_in_the_inventory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ports entry of an absent deployment is quiet; one whose name is nowhere in the inventory's deployments (a
    typo, or a deployment removed from it) gives one warning, and neither stops the run."""
    warnings: list[str] = []
    monkeypatch.setattr(Display, "warning", lambda self, msg, *a, **k: warnings.append(msg))
    plan = [{"deployment": "chat", "replica": 0, "host": "gpu-a", "port": 8000}]
    kwargs = {"addresses": {"gpu-a": "10.0.0.11"}, "bind": "10.0.0.5", "ports": {"chat": 9000, "old": 9001}}
    out = gateway_routers(plan, names=["chat"], known=["chat", "old"], **kwargs)
    assert [(r["deployment"], r["port"]) for r in out] == [("chat", 9000)] and warnings == []
    out = gateway_routers(plan, names=["chat"], known=["chat"], **kwargs)
    assert [(r["deployment"], r["port"]) for r in out] == [("chat", 9000)]
    assert len(warnings) == 1 and "old" in warnings[0] and "gpufleet_gateway_ports" in warnings[0]
    gateway_routers(plan, names=["chat"], **kwargs)  # the filter's callers that do not pass known: no warning
    assert len(warnings) == 1


def test_status_reports_the_clients_endpoint(tmp_path: Path) -> None:
    d = tmp_path / "routers" / "chat"
    d.mkdir(parents=True)
    (d / "router.args").write_text("--host=127.0.0.1\n--port=32000\n--prometheus-port=31000\n")
    assert status.configured_routers(str(tmp_path))[0]["port"] == 32000  # no endpoint file: the router itself
    (d / "endpoint").write_text("10.0.0.5 30000\n")
    assert status.configured_routers(str(tmp_path)) == [
        {"deployment": "chat", "address": "10.0.0.5", "port": 30000, "metrics_port": 31000}
    ]


def test_real_haproxy_refuses_the_worker_api_to_clients_and_passes_it_to_the_fleet(
    real_haproxy: Callable[[str], object], echo_server: Callable[[int], str]
) -> None:
    """HAProxy on 127.0.0.2 in front of a fake router, a client from 127.0.0.3 (not the fleet's): the OpenAI API,
    /health and the GET listings pass; /add_worker, /remove_worker, other methods and unknown paths get 403 - also
    written in other forms of the same path; a source the fleet lists (127.0.0.1) reaches /add_worker."""
    port = free_port(21000, 22999, offsets=(0, 1000, 2000))
    echo_server(port + 2000)  # the router, on its internal port
    real_haproxy(haproxy_config([Router("chat", port, port + 1000)], "127.0.0.2", [], {}))
    base = f"http://127.0.0.2:{port}"
    with httpx.Client(timeout=5) as client:
        # A client (source 127.0.0.1 is in the fleet list by default; go out from 127.0.0.3 instead).
        with httpx.Client(timeout=5, transport=httpx.HTTPTransport(local_address="127.0.0.3")) as outsider:
            assert outsider.post(base + "/v1/completions", json={"prompt": "x"}).text == "/v1/completions"
            assert outsider.get(base + "/v1/models").status_code == 200
            assert outsider.get(base + "/health").status_code == 200
            assert outsider.get(base + "/list_workers").text == "/list_workers"  # read-only listings pass
            assert outsider.get(base + "/workers").text == "/workers"
            for method, path in [
                ("POST", "/add_worker?url=http://evil:1"),
                ("POST", "/remove_worker?url=http://10.0.0.11:8000"),
                ("POST", "/workers"),  # an add in sglang-style routers
                ("DELETE", "/workers/http%3A%2F%2F10.0.0.11%3A8000"),
                ("POST", "/list_workers"),
                ("POST", "/flush_cache"),
                ("GET", "/get_loads"),
                ("POST", "//add_worker?url=http://evil:1"),
                ("POST", "/v1/../add_worker?url=http://evil:1"),
            ]:
                r = outsider.request(method, base + path)
                assert r.status_code == 403, (path, r.status_code)
        # The fleet's own updates (this source is in the list).
        assert client.post(base + "/add_worker?url=http://10.0.0.11:8000").text.startswith("/add_worker")
