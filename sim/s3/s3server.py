# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A local S3 for tests and benches: moto's server on 127.0.0.1 (a random port), with request signing enforced
(moto's INITIAL_NO_AUTH_ACTION_COUNT: the first N requests, which create the IAM user and its key, go unsigned), and
a small fault proxy in front of it that serves some objects short (a Content-Length that is the truth for the bytes
sent, but less than the object: what a truncating middlebox or a broken server does).

    python sim/s3/s3server.py --port-file F [--no-auth-actions N] [--faults DIR]

Writes "<moto port> <proxy port>" to F once both listen. DIR/truncate holds BUCKET/KEY names (one a line, path-style requests) the proxy cuts
to half their length; it is read on every request.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _proxy(upstream_port: int, faults: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
            conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            r = conn.getresponse()
            data = r.read()
            key = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")  # BUCKET/KEY
            try:
                with open(os.path.join(faults, "truncate")) as f:
                    cut = {line.strip() for line in f if line.strip()}
            except OSError:
                cut = set()
            drop = {"content-length", "transfer-encoding", "connection", "server", "date"}
            if self.command == "GET" and r.status in (200, 206) and key in cut:
                data = data[: len(data) // 2]
                # no checksum header either (botocore would refuse on it): the body's length is all there is to check
                drop |= {k.lower() for k, _ in r.getheaders() if k.lower().startswith("x-amz-checksum-")}
            self.send_response(r.status, r.reason)
            for k, v in r.getheaders():
                if k.lower() not in drop:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    return srv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--no-auth-actions", type=int, default=-1, help="enforce signatures after N requests (-1: never)")
    ap.add_argument("--faults", default="")
    args = ap.parse_args()
    if args.no_auth_actions >= 0:
        os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(args.no_auth_actions)
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    port = moto.get_host_and_port()[1]
    proxy = _proxy(port, args.faults or os.devnull)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{port} {proxy.server_address[1]}\n")
    os.replace(tmp, args.port_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    proxy.shutdown()
    moto.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
