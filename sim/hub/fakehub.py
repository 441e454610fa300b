# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A loopback stand-in for the Hugging Face hub that the real huggingface_hub client talks to via HF_ENDPOINT.

Serves the repos that sim/hub/make_repo.py writes under a hub root (re-read on change, so tests can add commits
while it runs). Endpoints, as huggingface_hub 2.x calls them:

- GET  /api/models/<org>/<name>[/revision/<rev>]      model info: id, sha (the resolved commit), siblings (with size,
                                                      blobId, lfs when ?blobs=true), gated, safetensors (parameters
                                                      per dtype from the weight files' headers)
- GET  /api/models/<org>/<name>/tree/<rev>[/<path>]    tree listing (recursive=True|False), lfs info, no xetHash
- HEAD|GET /<org>/<name>/resolve/<rev>/<path>          file: ETag (git oid, or sha256 for LFS files), X-Repo-Commit,
                                                       X-Linked-Size / X-Linked-Etag for LFS files, Content-Length,
                                                       Accept-Ranges; Range: bytes=a-b → 206 + Content-Range
- errors with the X-Error-Code header huggingface_hub maps to exceptions: RepoNotFound (404, or 401 for a private
  repo without a valid token), RevisionNotFound (404), EntryNotFound (404), GatedRepo (401 without a token, 403 with
  a token not on the repo's list).
- GET  /_fakehub/stats   request counters and bytes served (for tests); POST /_fakehub/reset clears them.
- anything under /api/telemetry → 200 (huggingface_hub's telemetry, if not disabled).

No xet headers are ever sent, so an installed hf_xet stays unused. Per-repo `throttle_bps` (repo.json) slows bodies
down (for kill-during-download tests).

CLI: python sim/hub/fakehub.py --root DIR [--host 127.0.0.1] [--port 0] [--port-file F]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class _Repos:
    """repo.json files under the hub root, cached by mtime."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, repo_id: str) -> dict[str, Any] | None:
        p = self.root / repo_id / "repo.json"
        try:
            mtime = p.stat().st_mtime_ns
        except OSError:
            return None
        with self._lock:
            hit = self._cache.get(repo_id)
            if hit and hit[0] == mtime:
                return hit[1]
        data = json.loads(p.read_text())
        with self._lock:
            self._cache[repo_id] = (mtime, data)
        return data


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakehub/1.0"
    server: FakeHubServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    # ---- helpers
    def _count(self, key: str, n: int = 1) -> None:
        with self.server.stats_lock:
            self.server.stats[key] = self.server.stats.get(key, 0) + n

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, ctype: str = "") -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers, "application/json")

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        self._count(f"error_{code}")
        h = {"X-Error-Code": code, "X-Error-Message": message}
        if commit:
            h["X-Repo-Commit"] = commit
        self._json(status, {"error": message}, h)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _repo(self, repo_id: str, *, files: bool) -> dict[str, Any] | None:
        """The repo, or None after sending the error huggingface_hub expects (private/gated/unknown)."""
        repo = self.server.repos.get(repo_id)
        token = self._token()
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        allowed = token is not None and token in repo.get("tokens", [])
        if repo.get("private") and not allowed:
            self._error(401 if token is None else 404, "RepoNotFound", "Repository not found")
            return None
        if files and repo.get("gated") and not allowed:
            if token is None:
                msg = (
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to "
                    "access it. Please log in."
                )
                self._error(401, "GatedRepo", msg)
            else:
                msg = f"Access to model {repo_id} is restricted and you are not in the authorized list."
                self._error(403, "GatedRepo", msg)
            return None
        return repo

    def _commit(self, repo: dict[str, Any], rev: str) -> str | None:
        if rev in repo["refs"]:
            return repo["refs"][rev]
        if _COMMIT_RE.match(rev) and rev in repo["commits"]:
            return rev
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return None

    # ---- routes
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        if self.path.startswith("/_fakehub/reset"):
            with self.server.stats_lock:
                self.server.stats.clear()
            return self._json(200, {"ok": True})
        if self.path.startswith("/api/telemetry"):
            return self._json(200, {})
        self._error(404, "NotFound", "Not found")

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self._count(f"{self.command} {path.split('/')[1] if path.count('/') > 1 else path}")
        if path == "/_fakehub/stats":
            with self.server.stats_lock:
                return self._json(200, dict(self.server.stats))
        if path.startswith("/api/telemetry"):
            return self._json(200, {})
        m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", url.path)
        if m:
            return self._tree(urllib.parse.unquote(m[1]), urllib.parse.unquote(m[2]), m[3], query)
        m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$", url.path)
        if m:
            blobs = query.get("blobs", "").lower() in ("1", "true")
            return self._info(urllib.parse.unquote(m[1]), urllib.parse.unquote(m[2] or "main"), blobs)
        m = re.match(r"^/(?:models/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", url.path)
        if m:
            return self._resolve(urllib.parse.unquote(m[1]), urllib.parse.unquote(m[2]), urllib.parse.unquote(m[3]))
        self._error(404, "NotFound", f"Sorry, we can't find the page you are looking for: {path}")

    def _safetensors(self, repo_id: str, c: dict[str, Any]) -> dict[str, Any] | None:
        """The hub's ``safetensors`` summary: parameter count per dtype over the weight files' headers."""
        params: dict[str, int] = {}
        for path, f in c["files"].items():
            if not path.endswith(".safetensors") or "/" in path:
                continue
            try:
                with (self.server.root / repo_id / "blobs" / f["sha256"]).open("rb") as fh:
                    header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
            except (OSError, ValueError, struct.error):
                continue  # a truncated header: the real hub leaves such a file out too
            for name, t in header.items():
                if name != "__metadata__" and isinstance(t, dict):
                    count = 1
                    for dim in t.get("shape") or []:
                        count *= int(dim)
                    params[str(t.get("dtype"))] = params.get(str(t.get("dtype")), 0) + count
        return {"parameters": params, "total": sum(params.values())} if params else None

    def _info(self, repo_id: str, rev: str, blobs: bool = False) -> None:
        self._count("model_info")
        repo = self._repo(repo_id, files=False)
        if repo is None:
            return
        sha = self._commit(repo, rev)
        if sha is None:
            return
        c = repo["commits"][sha]
        siblings: list[dict[str, Any]] = []
        for p in sorted(c["files"]):
            entry: dict[str, Any] = {"rfilename": p}
            if blobs:  # ?blobs=true (huggingface_hub's files_metadata=True): size, blob id and LFS info per file
                f = c["files"][p]
                entry.update(blobId=f["oid"], size=f["size"])
                if f.get("lfs"):
                    entry["lfs"] = {"sha256": f["sha256"], "size": f["size"], "pointerSize": 134}
            siblings.append(entry)
        extra = {"safetensors": st} if (st := self._safetensors(repo_id, c)) else {}
        self._json(
            200,
            {
                "_id": sha[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "lastModified": c["date"],
                "private": bool(repo.get("private")),
                "gated": "manual" if repo.get("gated") else False,
                "disabled": False,
                "tags": ["safetensors", "text-generation"],
                "pipeline_tag": "text-generation",
                "library_name": "transformers",
                "siblings": siblings,
                "createdAt": c["date"],
                "usedStorage": sum(f["size"] for f in c["files"].values()),
                **extra,
            },
        )

    def _tree(self, repo_id: str, rev: str, sub: str | None, query: dict[str, str]) -> None:
        self._count("tree")
        repo = self._repo(repo_id, files=False)
        if repo is None:
            return
        sha = self._commit(repo, rev)
        if sha is None:
            return
        files = repo["commits"][sha]["files"]
        prefix = (urllib.parse.unquote(sub).strip("/") + "/") if sub else ""
        recursive = query.get("recursive", "false").lower() == "true"
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                if recursive or i == 1:
                    dirs.add(prefix + "/".join(parts[:i]))
            if len(parts) > 1 and not recursive:
                continue
            f = files[p]
            entry: dict[str, Any] = {"type": "file", "oid": f["oid"], "size": f["size"], "path": p}
            if f["lfs"]:
                entry["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": 134}
            out.append(entry)
        if prefix and not out and not dirs:
            return self._error(404, "EntryNotFound", f"{prefix} does not exist on {rev}")
        out += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
        self._json(200, out)

    def _resolve(self, repo_id: str, rev: str, fpath: str) -> None:
        repo = self._repo(repo_id, files=True)
        if repo is None:
            return
        sha = self._commit(repo, rev)
        if sha is None:
            return
        f = repo["commits"][sha]["files"].get(fpath)
        if f is None:
            return self._error(404, "EntryNotFound", f"{fpath} does not exist on {rev}", commit=sha)
        blob = self.server.root / repo_id / "blobs" / f["sha256"]
        size = f["size"]
        etag = f["sha256"] if f["lfs"] else f["oid"]
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if f["lfs"]:
            headers["X-Linked-Size"] = str(size)
            headers["X-Linked-Etag"] = f'"{etag}"'
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.match(r"^bytes=(\d*)-(\d*)$", rng.strip())
            if not m or (not m[1] and not m[2]):
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), size - 1) if m[2] else size - 1
            else:
                start = max(size - int(m[2]), 0)
            if start >= size or start > end:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        self._count("HEAD resolve" if self.command == "HEAD" else "GET resolve file")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        self.wfile.flush()
        throttle = int(repo.get("throttle_bps") or 0)
        sent = 0
        with blob.open("rb") as fh:
            sock = self.connection.fileno()
            offset = start
            while sent < length:
                n = min(length - sent, (throttle // 10 or 1) if throttle else 1 << 24)
                k = os.sendfile(sock, fh.fileno(), offset, n)
                if k <= 0:
                    break
                offset += k
                sent += k
                if throttle:
                    time.sleep(0.1)
        self._count("bytes_served", sent)


class FakeHubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, verbose: bool = False) -> None:
        super().__init__((host, port), HubHandler)
        self.root = Path(root)
        self.repos = _Repos(self.root)
        self.verbose = verbose
        self.stats: dict[str, int] = {}
        self.stats_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class FakeHub:
    """In-process fake hub on a background thread: `with FakeHub(root) as hub: os.environ["HF_ENDPOINT"] = hub.url`."""

    def __init__(self, root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0) -> None:
        Path(root).mkdir(parents=True, exist_ok=True)
        self.server = FakeHubServer(Path(root), host, port)
        self.url = self.server.url
        self._thread = threading.Thread(target=self.server.serve_forever, name="fakehub", daemon=True)

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description="Fake Hugging Face hub on loopback (see module docstring).")
    ap.add_argument("--root", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", help="write the chosen port here once listening")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    Path(a.root).mkdir(parents=True, exist_ok=True)
    srv = FakeHubServer(Path(a.root), a.host, a.port, a.verbose)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if a.port_file:
        tmp = f"{a.port_file}.tmp"
        Path(tmp).write_text(str(srv.server_address[1]))
        os.replace(tmp, a.port_file)
    print(f"fakehub serving {a.root} on {srv.url}", flush=True)
    try:
        srv.serve_forever()
    finally:
        srv.server_close()


if __name__ == "__main__":
    main()
