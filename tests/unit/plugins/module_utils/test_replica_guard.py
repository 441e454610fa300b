"""The replica guard (docs/node_agent.md, "A request to a paused replica"): HAProxy on the GPU host's address in front
of a sleep-mode vLLM server on 127.0.0.1, on the same port, passing the OpenAI API, /health and /metrics only. The
configuration is checked by the real haproxy -c when HAProxy is installed, and one HAProxy in front of a fake server
on the same port number shows that both bind and that the dev endpoints are refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.gpufleet.vllm.plugins.filter.replica_guard_config import replica_guard_config
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.replica_guard import (
    GuardedReplica,
    guarded,
    haproxy_config,
)
from fixtures.container import free_port


def spec(name: str, port: int, sleep_mode: bool = True, host: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": port, "container": {"sleep_mode": sleep_mode, "host": host}, **extra}


def test_guarded_picks_the_sleep_mode_replicas_and_their_surges() -> None:
    specs = [
        spec("chat-1", 8001),
        spec("plain-0", 8100, sleep_mode=False),  # listens on the host's address itself
        spec("local-0", 8200, host="127.0.0.1"),  # asked for loopback only: stays private
        spec("chat-0", 8000, host="0.0.0.0", rollout={"wave": 0, "mode": "surge", "surge_port": 8500}),
        spec("chat-2", 8002, rollout={"wave": 1, "mode": "in_place", "surge_port": None}),
    ]
    assert guarded(specs) == [
        GuardedReplica("chat-0", 8000),
        GuardedReplica("chat-1", 8001),
        GuardedReplica("chat-2", 8002),
        GuardedReplica("chat-0-surge", 8500),
    ]
    assert guarded([spec("plain-0", 8100, sleep_mode=False)]) == []


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([spec("a", 8000), spec("b", 8000)], "both on port 8000"),
        ([spec("a", None)], "has no port"),
        ([spec("a", 70000)], "not in 1..65535"),
    ],
)
def test_guarded_refuses_a_broken_plan(specs: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(GpufleetError, match=message):
        guarded(specs)


def test_config_passes_the_client_paths_and_denies_the_rest() -> None:
    text = haproxy_config([GuardedReplica("chat-0", 8000), GuardedReplica("chat-0-surge", 8500)], "10.0.0.11")
    assert "bind 10.0.0.11:8000" in text and "server vllm 127.0.0.1:8000" in text
    assert "bind 10.0.0.11:8500" in text and "server vllm 127.0.0.1:8500" in text
    assert "acl client_path path_beg /v1/" in text
    assert "acl client_path path /health /metrics /version /ping /tokenize /detokenize" in text
    assert "http-request deny deny_status 403 if !client_path" in text
    assert "http-request deny deny_status 403 if odd_path" in text
    assert "timeout server 1860s" in text  # above the gateway's request timeout: a held first request is not cut
    v6 = haproxy_config([GuardedReplica("chat-0", 8000)], "fd00::11", timeout=90)
    assert "bind [fd00::11]:8000" in v6 and "timeout client 90s" in v6


@pytest.mark.parametrize("bind", ["", "0.0.0.0", "::", "127.0.0.1", "localhost", "10.0.0.1; rm -rf /"])
def test_config_refuses_a_bind_address_that_guards_nothing(bind: str) -> None:
    with pytest.raises(GpufleetError, match="bind address"):
        haproxy_config([GuardedReplica("chat-0", 8000)], bind)


def test_filter_is_empty_without_sleep_mode_and_names_the_problem() -> None:
    assert replica_guard_config([spec("plain-0", 8100, sleep_mode=False)], bind="10.0.0.11") == ""
    assert "bind 10.0.0.11:8000" in replica_guard_config([spec("chat-0", 8000)], bind="10.0.0.11", timeout=60)
    with pytest.raises(AnsibleFilterError, match="replica_guard_config: replica guard: bind address"):
        replica_guard_config([spec("chat-0", 8000)], bind="0.0.0.0")


def test_real_haproxy_on_the_same_port_refuses_the_dev_endpoints(
    real_haproxy: Callable[[str], object], echo_server: Callable[[int], str]
) -> None:
    """A fake sleep-mode server on 127.0.0.1:P, HAProxy on 127.0.0.2:P (the same port on another address, as on a GPU
    host): both bind; the OpenAI API, /health and /metrics pass; /sleep, /wake_up, /collective_rpc, /is_sleeping
    and the same paths written another way get 403."""
    port = free_port(23000, 23999)
    echo_server(port)
    real_haproxy(replica_guard_config([spec("chat-0", port)], bind="127.0.0.2"))
    base = f"http://127.0.0.2:{port}"
    with httpx.Client(timeout=5) as client:
        assert client.post(base + "/v1/completions", json={"prompt": "x"}).text == "/v1/completions"
        assert client.get(base + "/v1/models").text == "/v1/models"
        assert client.get(base + "/health").status_code == 200
        assert client.get(base + "/metrics").text == "/metrics"
        for method, path in [
            ("POST", "/sleep?level=1"),
            ("POST", "/wake_up"),
            ("GET", "/is_sleeping"),
            ("POST", "/collective_rpc"),
            ("POST", "/reset_prefix_cache"),
            ("POST", "//sleep"),
            ("POST", "/v1/%2e%2e/sleep"),
            ("POST", "/v1%2F..%2Fsleep"),
            ("GET", "/"),
        ]:
            r = client.request(method, base + path)
            assert r.status_code == 403, (path, r.status_code, r.text[:100])
        # The server itself still answers its own host on loopback (the agent's and the module's calls).
        assert client.post(f"http://127.0.0.1:{port}/wake_up").text == "/wake_up"
