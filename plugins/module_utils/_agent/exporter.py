# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node agent's ``/metrics`` endpoint: prometheus-client's WSGI app behind the Prometheus exporter-toolkit's web
configuration (``tls_server_config`` and ``basic_auth_users`` with bcrypt hashes), so an exposed exporter can ask for
credentials and speak TLS the way node_exporter does. The file is JSON (a YAML subset: the same keys as
exporter-toolkit's ``web-config.yml``), so the host needs no YAML parser; bcrypt is imported only when users are set.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

KNOWN_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}


@dataclass(frozen=True)
class WebConfig:
    """What the exporter asks of a client: TLS (certificate and key files) and/or basic auth (user → bcrypt hash)."""

    cert_file: str | None = None
    key_file: str | None = None
    users: Mapping[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return bool(self.cert_file)


def parse_web_config(doc: Any, where: str = "the web config") -> WebConfig:
    """A WebConfig from exporter-toolkit's keys; one clear error for anything it cannot honour."""
    if doc is None:
        return WebConfig()
    if not isinstance(doc, Mapping):
        raise GpufleetError(f"{where} must be a mapping with tls_server_config and/or basic_auth_users")
    unknown = sorted(set(doc) - KNOWN_KEYS)
    if unknown:
        raise GpufleetError(f"{where} has unknown keys {unknown}: use tls_server_config and basic_auth_users")
    tls = doc.get("tls_server_config") or {}
    if not isinstance(tls, Mapping):
        raise GpufleetError(f"{where}: tls_server_config must be a mapping with cert_file and key_file")
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if bool(cert) != bool(key):
        raise GpufleetError(f"{where}: tls_server_config needs both cert_file and key_file")
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in users.items()):
        raise GpufleetError(f"{where}: basic_auth_users must map user names to bcrypt hashes (strings)")
    for user, hashed in users.items():
        if not user or ":" in user:
            raise GpufleetError(f"{where}: user name {user!r} is empty or has a ':'")
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise GpufleetError(
                f"{where}: the password of {user!r} must be a bcrypt hash ($2b$...), never the password itself: "
                "make one with python3 -c 'import bcrypt; print(bcrypt.hashpw(b\"PASSWORD\", bcrypt.gensalt()).decode())'"
            )
    if users:
        _bcrypt()  # fail at start, not at the first scrape
    return WebConfig(cert_file=cert or None, key_file=key or None, users=dict(users))


def load_web_config(path: str | None) -> WebConfig:
    if not path:
        return WebConfig()
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as e:
        raise GpufleetError(f"cannot read the web config {path}: {e.strerror}") from e
    except ValueError as e:
        raise GpufleetError(f"the web config {path} is not JSON (exporter-toolkit's keys, as JSON): {e}") from e
    return parse_web_config(doc, where=f"the web config {path}")


def _bcrypt() -> Any:
    try:
        import bcrypt
    except ImportError as e:
        raise GpufleetError(
            "basic_auth_users in the web config needs the bcrypt package on this host (pip install bcrypt)"
        ) from e
    return bcrypt


def authorized(header: str | None, users: Mapping[str, str]) -> bool:
    """Whether an ``Authorization`` header carries a user of ``users`` with the password of its bcrypt hash."""
    if not users:
        return True
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    hashed = users.get(user)
    if hashed is None or not sep:
        return False
    try:
        return bool(_bcrypt().checkpw(password.encode(), hashed.encode()))
    except ValueError:
        return False


def guarded(app: Callable[..., Iterable[bytes]], users: Mapping[str, str]) -> Callable[..., Iterable[bytes]]:
    """``app`` behind basic auth: 401 with a ``WWW-Authenticate`` challenge unless the credentials match."""
    if not users:
        return app

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if authorized(environ.get("HTTP_AUTHORIZATION"), users):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Basic realm="gpufleet node agent"')],
        )
        return [b"Unauthorized\n"]

    return wrapped


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(port: int, address: str, registry: Any, config: WebConfig, make_app: Callable[[Any], Any]) -> WSGIServer:
    """Serve ``make_app(registry)`` on address:port in a daemon thread, with the web config's TLS and basic auth."""
    app = guarded(make_app(registry), config.users)
    try:
        httpd = make_server(address, port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as e:
        raise GpufleetError(f"the node agent cannot listen on {address}:{port}: {e.strerror}") from e
    if config.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(config.cert_file, config.key_file)
        except (OSError, ssl.SSLError) as e:
            httpd.server_close()
            raise GpufleetError(f"cannot load the exporter's TLS certificate/key: {e}") from e
        # the handshake happens in the request's thread (first read), not in accept(): a slow client stalls no one
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=httpd.serve_forever, name="gpufleet-agent-metrics", daemon=True).start()
    return httpd
