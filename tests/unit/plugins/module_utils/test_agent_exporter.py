"""module_utils/_agent/exporter.py: the node agent's /metrics behind exporter-toolkit's web config (basic auth, TLS),
served for real on loopback."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import urllib.error
import urllib.request

import bcrypt
import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent import cli
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.exporter import (
    WebConfig,
    authorized,
    load_web_config,
    parse_web_config,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.metrics import serve_metrics
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.state import AgentState
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _get(url: str, header: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": header} if header else {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_default_address_is_loopback():
    assert cli.build_parser().parse_args([]).address == "127.0.0.1"


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ([], "must be a mapping"),
        ({"basic_auth": {}}, "unknown keys"),
        ({"tls_server_config": {"cert_file": "/c"}}, "both cert_file and key_file"),
        ({"tls_server_config": "x"}, "must be a mapping"),
        ({"basic_auth_users": {"prom": "plain-password"}}, "bcrypt hash"),
        ({"basic_auth_users": {"a:b": HASH}}, "has a ':'"),
        ({"basic_auth_users": ["prom"]}, "map user names"),
    ],
)
def test_bad_web_configs_are_one_clear_error(doc, words):
    with pytest.raises(GpufleetError, match=words):
        parse_web_config(doc)


def test_web_config_file_errors(tmp_path):
    with pytest.raises(GpufleetError, match="cannot read"):
        load_web_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "web.json"
    bad.write_text("basic_auth_users: {a: b}")
    with pytest.raises(GpufleetError, match="not JSON"):
        load_web_config(str(bad))
    assert load_web_config("") == WebConfig()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (_basic("prom", "s3cret"), True),
        (_basic("prom", "wrong"), False),
        (_basic("other", "s3cret"), False),
        ("Bearer s3cret", False),
        ("Basic !!!", False),
        (None, False),
    ],
)
def test_authorized(header, ok):
    assert authorized(header, {"prom": HASH}) is ok


def test_basic_auth_on_a_real_listener(tmp_path):
    web = tmp_path / "web.json"
    web.write_text(json.dumps({"basic_auth_users": {"prom": HASH}}))
    state = AgentState()
    state.ticks_total = 7
    httpd = serve_metrics(0, "127.0.0.1", lambda: state, str(web))
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/metrics"
        code, _ = _get(url)
        assert code == 401
        code, _ = _get(url, _basic("prom", "wrong"))
        assert code == 401
        code, body = _get(url, _basic("prom", "s3cret"))
        assert code == 200 and "gpufleet_agent_ticks_total 7.0" in body
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_tls_on_a_real_listener(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    web = tmp_path / "web.json"
    web.write_text(json.dumps({"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}}))
    httpd = serve_metrics(0, "127.0.0.1", AgentState, str(web))
    try:
        port = httpd.server_address[1]
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        code, body = _get(f"https://127.0.0.1:{port}/metrics", context=ctx)
        assert code == 200 and "gpufleet_agent_ticks_total" in body
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _get(f"http://127.0.0.1:{port}/metrics")  # plain http to a TLS listener gets no answer
    finally:
        httpd.shutdown()
        httpd.server_close()
