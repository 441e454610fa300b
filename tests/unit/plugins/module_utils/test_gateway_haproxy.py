"""The HAProxy configurations of the two guards (the gateway's admin guard, _gateway/config.py; the replica guard on a
GPU host, _gateway/replica_guard.py), rendered whole: one head (``global``/``defaults``) for both, and every line of
each configuration as the roles have written it so far (a change to either render shows here line by line)."""

from __future__ import annotations

from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway import haproxy
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.config import Router
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.config import haproxy_config as gateway_config
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.replica_guard import GuardedReplica
from ansible_collections.gpufleet.vllm.plugins.module_utils._gateway.replica_guard import (
    haproxy_config as replica_config,
)

REPLICA_GUARD = """\
# Managed by gpufleet.vllm (role deployments): HAProxy in front of the sleep-mode replicas (docs/node_agent.md)
global

defaults
    mode http
    timeout connect 5s
    timeout client 90s
    timeout server 90s
    timeout http-request 60s
    timeout http-keep-alive 60s

frontend replica_chat-0
    bind [fd00::11]:8000
    acl client_path path_beg /v1/
    acl client_path path /health /metrics /version /ping /tokenize /detokenize
    acl odd_path path_sub -i /../ /./ // %2e %2f %5c
    http-request deny deny_status 403 if odd_path
    http-request deny deny_status 403 if !client_path
    default_backend vllm_chat-0

backend vllm_chat-0
    server vllm 127.0.0.1:8000

frontend replica_chat_0-surge
    bind [fd00::11]:8500
    acl client_path path_beg /v1/
    acl client_path path /health /metrics /version /ping /tokenize /detokenize
    acl odd_path path_sub -i /../ /./ // %2e %2f %5c
    http-request deny deny_status 403 if odd_path
    http-request deny deny_status 403 if !client_path
    default_backend vllm_chat_0-surge

backend vllm_chat_0-surge
    server vllm 127.0.0.1:8500
"""

ADMIN_GUARD = """\
# Managed by gpufleet.vllm (role gateway): HAProxy in front of the deployments' vllm-routers (docs/gateway.md)
global

defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-request 60s
    timeout http-keep-alive 60s

frontend gw_chat
    bind 10.0.0.5:30000
    acl client_path path_beg /v1/
    acl client_path path /health
    acl fleet_host src 10.0.0.11 10.0.0.5 127.0.0.1 ::1
    acl listing path /list_workers /workers
    acl read_only method GET HEAD
    http-request allow if listing read_only
    http-request deny deny_status 403 if !client_path !fleet_host
    default_backend router_chat

backend router_chat
    server router 127.0.0.1:32000

frontend gw_em_bed
    bind 10.0.0.5:30001
    acl client_path path_beg /v1/
    acl client_path path /health
    acl fleet_host src 10.0.0.11 10.0.0.5 127.0.0.1 ::1
    acl listing path /list_workers /workers
    acl read_only method GET HEAD
    http-request allow if listing read_only
    http-request deny deny_status 403 if !client_path !fleet_host
    default_backend router_em_bed

backend router_em_bed
    server router 127.0.0.1:32001
"""


def test_replica_guard_renders_as_before() -> None:
    text = replica_config([GuardedReplica("chat-0", 8000), GuardedReplica("chat/0-surge", 8500)], "fd00::11", 90)
    assert text.splitlines() == REPLICA_GUARD.splitlines() and text == REPLICA_GUARD


def test_admin_guard_renders_as_before() -> None:
    routers = [Router("chat", 30000, 31000), Router("em bed", 30001, 31001)]
    text = gateway_config(routers, "10.0.0.5", ["10.0.0.11"], {"request_timeout_secs": 60, "admin_guard": True})
    assert text.splitlines() == ADMIN_GUARD.splitlines() and text == ADMIN_GUARD


def test_one_head_for_both_with_its_own_comment_and_timeout() -> None:
    lines = haproxy.head("Managed by the test", 1860)
    assert lines[:4] == ["# Managed by the test", "global", "", "defaults"] and lines[-1] == ""
    assert "    timeout client 1860s" in lines and "    timeout server 1860s" in lines
    assert REPLICA_GUARD.startswith("\n".join(haproxy.head(REPLICA_GUARD.splitlines()[0][2:], 90)))
    assert ADMIN_GUARD.startswith("\n".join(haproxy.head(ADMIN_GUARD.splitlines()[0][2:], 120)))


def test_bind_addresses_and_section_names() -> None:
    assert haproxy.listen_address("10.0.0.5") == "10.0.0.5" and haproxy.listen_address("fd00::5") == "[fd00::5]"
    assert haproxy.section_name("chat-0.v2") == "chat-0.v2" and haproxy.section_name("a b/c#d") == "a_b_c_d"
