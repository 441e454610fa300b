# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""URL source for model sync: one http(s) file (e.g. a .gguf) or an archive (.tar, .tar.gz, .tgz, .zip), with an
optional `sha256:<hex>` checksum, resumed with a Range request after an interruption.

A URL may carry a secret (user:password@, or the signature of a pre-signed URL in its query): `mask` is what goes
into results, messages and manifests; `digest` (sha256 of the whole URL) is what a manifest compares.
A body shorter (or longer) than the server announced is refused, never installed."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.archive import archive_kind, extract_archive

_CHECKSUM_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_CHUNK = 1 << 20


def parse_checksum(checksum: str | None) -> str | None:
    if not checksum:
        return None
    m = _CHECKSUM_RE.match(checksum.strip())
    if not m:
        raise GpufleetError(f"checksum {checksum!r} must look like sha256:<64 hex digits>", failure_class="bad_args")
    return m[1].lower()


def check_url(url: str) -> str:
    """`url` when it is a usable http(s) URL with a host; GpufleetError (bad_args) if not."""
    if not isinstance(url, str) or not url or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise GpufleetError(
            f"url {mask(url)!r} is empty or holds whitespace or control characters: percent-encode them (%20)",
            failure_class="bad_args",
        )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as err:
        raise GpufleetError(f"url {mask(url)!r} does not parse ({err})", failure_class="bad_args") from None
    if parts.scheme not in ("http", "https"):
        raise GpufleetError(
            f"url {mask(url)!r} must be http:// or https:// (got {parts.scheme or 'no scheme'!r})",
            failure_class="bad_args",
        )
    if not parts.hostname:
        raise GpufleetError(f"url {mask(url)!r} has no host: use http(s)://HOST/PATH", failure_class="bad_args")
    return url


def mask(url: str) -> str:
    """`url` without its secrets: user:password and the query string replaced by '***', the fragment dropped."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def has_secret(url: str) -> bool:
    """Whether `mask` hides anything of `url` (userinfo, a query string or a fragment)."""
    return mask(url) != url


def digest(url: str) -> str:
    """sha256 of the whole URL: what a manifest keeps to tell a changed URL without storing its secret."""
    return "sha256:" + hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()


def file_name(url: str) -> str:
    """The file name the URL's path ends in (decoded): refused when empty, hidden (a leading '.'), too long, or
    holding a control character."""
    check_url(url)
    parts = urllib.parse.urlsplit(url)
    name = os.path.basename(urllib.parse.unquote(parts.path))
    if not name or name in (".", ".."):
        raise GpufleetError(
            f"url {mask(url)!r} does not end in a file name: point it at the file (…/model.gguf, …/model.tar.gz)",
            failure_class="bad_args",
        )
    if name.startswith(".") or "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise GpufleetError(
            f"url {mask(url)!r} ends in the file name {name!r}, which is hidden or holds a backslash or control "
            "character: serve the file under a plain name",
            failure_class="bad_args",
        )
    if len(os.fsencode(name)) > 200:
        raise GpufleetError(
            f"url {mask(url)!r} ends in a file name longer than 200 bytes: serve the file under a shorter name",
            failure_class="bad_args",
        )
    return name


_AGENT = "gpufleet.vllm model_sync"
_tls: Any = None


def _open(url: str, method: str, timeout: float, headers: dict[str, str] | None = None) -> Any:
    """ansible's open_url, with one TLS context per process (building one loads the CA store: ~0.25 s, paid once
    instead of for the HEAD and again for the GET). Bodies are never decompressed: their length is checked."""
    global _tls
    from ansible.module_utils.urls import Request, make_context

    if _tls is None:
        _tls = make_context()
    req = Request(http_agent=_AGENT, decompress=False, timeout=timeout)
    if "context" not in inspect.signature(req.open).parameters:  # ansible-core 2.16: no context (builds its own)
        return req.open(method, url, headers=headers)
    return req.open(method, url, headers=headers, context=_tls)


def remote_size(url: str, timeout: float = 30) -> int | None:
    try:
        with _open(url, "HEAD", timeout) as r:
            n = r.headers.get("Content-Length")
            size = int(n) if n is not None else None
    except urllib.error.HTTPError as err:
        raise GpufleetError(
            f"url {mask(url)} answered HTTP {err.code} {err.reason}", failure_class="url_error"
        ) from None
    except (OSError, ValueError) as err:
        raise GpufleetError(f"cannot reach {mask(url)}: {_no_url(err, url)}", failure_class="url_error") from None
    if size is not None and size < 0:
        raise GpufleetError(f"url {mask(url)} announced a negative Content-Length", failure_class="url_error")
    return size


def _no_url(err: BaseException, url: str) -> str:
    """The error's text with the URL (and so its secret) masked."""
    return str(err).replace(url, mask(url))


def _announced_total(r: Any, have: int) -> int | None:
    """The full size of the file as this response announces it (Content-Range of a 206, Content-Length of a
    200), or None when it does not say or the body is encoded (its length is not the file's)."""
    if (r.headers.get("Content-Encoding") or "identity").strip().lower() != "identity":
        return None
    if r.status == 206:
        m = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$", r.headers.get("Content-Range") or "")
        if m:
            return int(m[3])
        n = r.headers.get("Content-Length")
        return have + int(n) if n is not None and n.isdigit() else None
    n = r.headers.get("Content-Length")
    return int(n) if n is not None and n.isdigit() else None


def fetch(
    url: str, dest: str, expected_sha256: str | None, timeout: float = 60, expected_size: int | None = None
) -> dict[str, Any]:
    """Download `url` to `dest`, resuming a partial `dest.part`; verify the size the server announced (or
    `expected_size`, from HEAD) and the checksum. Returns {size, sha256}. A short body keeps `dest.part` for the
    next run to resume and raises; nothing is renamed to `dest` unless it is complete."""
    part = dest + ".part"
    sha = hashlib.sha256()
    have = 0
    if os.path.exists(part):
        with open(part, "rb") as f:
            while chunk := f.read(_CHUNK * 8):
                sha.update(chunk)
                have += len(chunk)
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    total = expected_size
    try:
        r = _open(url, "GET", timeout, headers)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch
            r = None
        else:
            raise GpufleetError(
                f"url {mask(url)} answered HTTP {err.code} {err.reason}", failure_class="url_error"
            ) from None
    except (OSError, ValueError) as err:
        raise GpufleetError(f"cannot download {mask(url)}: {_no_url(err, url)}", failure_class="url_error") from None
    if r is not None:
        try:
            with r, open(part, "ab" if have and r.status == 206 else "wb") as out:
                if have and r.status != 206:  # the server ignored the Range: start over
                    sha = hashlib.sha256()
                    have = 0
                announced = _announced_total(r, have)
                total = announced if announced is not None else total
                while chunk := r.read(_CHUNK):
                    out.write(chunk)
                    sha.update(chunk)
                    have += len(chunk)
        except (OSError, ValueError) as err:
            if isinstance(err, OSError) and err.errno in (28, 122):  # ENOSPC, EDQUOT: the caller says disk full
                raise
            raise GpufleetError(
                f"download of {mask(url)} broke off after {have} bytes ({type(err).__name__}: "
                f"{_no_url(err, url)}); run again to resume",
                failure_class="url_error",
            ) from None
    if total is not None and have < total:
        raise GpufleetError(
            f"download of {mask(url)} ended early: got {have} of the {total} bytes the server announced (connection "
            "closed?); nothing was installed, run again to resume",
            failure_class="url_error",
        )
    if total is not None and have > total:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        raise GpufleetError(
            f"download of {mask(url)} sent {have} bytes, more than the {total} it announced; the download was "
            "discarded and nothing was installed: check the server",
            failure_class="url_error",
        )
    got = sha.hexdigest()
    if expected_sha256 and got != expected_sha256:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        raise GpufleetError(
            f"checksum mismatch for {mask(url)}: expected sha256:{expected_sha256}, got sha256:{got}; the download "
            "was discarded and the installed model left as it was",
            failure_class="checksum_mismatch",
        )
    os.replace(part, dest)
    return {"size": have, "sha256": got}


def materialize(download: str, url: str, target: str) -> list[str]:
    """Put the downloaded file (or the archive's contents) into the empty directory `target`. An archive holding
    one top-level directory is unwrapped (extract_archive's strip_top). Returns the file names."""
    name = file_name(url)
    kind = archive_kind(name)
    os.makedirs(target, exist_ok=True)
    if kind is None:
        shutil.move(download, os.path.join(target, name))
        return [name]
    names = extract_archive(download, kind, target, strip_top=True)
    os.unlink(download)
    return names
