"""The rollout tests' load generator (tests/fixtures/loadgen.py) against a local server: it counts a 500, a stream
without [DONE] and a refused connection as failures, sends both kinds, and stops by itself at its bounds."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fixtures.loadgen import Load


class Server:
    """Answers /v1/completions as vLLM does; ``bad`` says how the n-th request (1-based) goes wrong."""

    def __init__(self, bad: dict[int, str]) -> None:
        self.n = 0
        self.auth: set[str] = set()
        lock = threading.Lock()
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with lock:
                    srv.n += 1
                    how = bad.get(srv.n)
                    srv.auth.add(self.headers.get("Authorization", ""))
                if how == "500":
                    data = b'{"error": "boom"}'
                    self.send_response(500)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    self.wfile.write(b'data: {"choices": [{"text": " hi"}]}\n\n')
                    if how != "cut":
                        self.wfile.write(b"data: [DONE]\n\n")
                    return
                data = json.dumps({"choices": [{"text": " hi"}]}).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server({3: "500"})
    yield s
    s.close()


def test_counts_every_request_and_the_failed_ones(server: Server) -> None:
    load = Load([server.url, server.url + "/"], "m", api_key="k", clients=4, max_requests=40)
    with load:
        assert load.wait_for(40)
    assert len(load.results) == 40 == server.n  # bounded by max_requests: it stopped by itself
    assert {r.stream for r in load.results} == {True, False}
    assert [r.status for r in load.failures] == [500] and load.ok == 39
    kinds = load.ok_kinds(server.url)
    assert kinds[True] > 0 and kinds[False] > 0 and kinds[True] + kinds[False] == 39
    assert server.auth == {"Bearer k"}
    assert "1 failed" in load.report()


def test_a_stream_cut_short_fails() -> None:
    s = Server({n: "cut" for n in range(1, 100)})
    try:
        load = Load(s.url, "m", clients=2, max_requests=10)
        with load:
            load.wait_for(10)
        assert all((r.error is not None) == r.stream for r in load.results)
        assert all("[DONE] missing" in r.error for r in load.failures)
    finally:
        s.close()


def test_refused_connections_fail_and_time_bound_stops_it() -> None:
    s = Server({})
    url = s.url
    s.close()  # nothing listens any more
    load = Load(url, "m", clients=2, max_s=0.5, max_requests=10**6)
    load.start()
    assert not load.wait_for(10**6, limit_s=30)  # the clients ended on their own (max_s)
    load.stop()
    assert load.results and all(r.status == 0 and r.error for r in load.results)
