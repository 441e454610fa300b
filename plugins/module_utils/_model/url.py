# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""URL source for model sync: one http(s) file (e.g. a .gguf) or an archive (.tar, .tar.gz, .tgz, .zip), with an
optional `sha256:<hex>` checksum, resumed with a Range request after an interruption."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.store import archive_kind, extract_archive

_CHECKSUM_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_CHUNK = 1 << 20


def parse_checksum(checksum: str | None) -> str | None:
    if not checksum:
        return None
    m = _CHECKSUM_RE.match(checksum.strip())
    if not m:
        raise GpufleetError(f"checksum {checksum!r} must look like sha256:<64 hex digits>", failure_class="bad_args")
    return m[1].lower()


def file_name(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise GpufleetError(f"url {url!r} must be http:// or https://", failure_class="bad_args")
    name = os.path.basename(urllib.parse.unquote(parts.path))
    if not name or name in (".", ".."):
        raise GpufleetError(f"url {url!r} does not end in a file name", failure_class="bad_args")
    return name


_AGENT = "gpufleet.vllm model_sync"


def remote_size(url: str, timeout: float = 30) -> int | None:
    from ansible.module_utils.urls import open_url

    try:
        with open_url(url, method="HEAD", timeout=timeout, http_agent=_AGENT) as r:
            n = r.headers.get("Content-Length")
            return int(n) if n is not None else None
    except urllib.error.HTTPError as err:
        raise GpufleetError(f"url {url} answered HTTP {err.code} {err.reason}", failure_class="url_error") from None
    except (OSError, ValueError) as err:
        raise GpufleetError(f"cannot reach {url}: {err}", failure_class="url_error") from None


def fetch(url: str, dest: str, expected_sha256: str | None, timeout: float = 60) -> dict[str, Any]:
    """Download `url` to `dest`, resuming a partial `dest.part`; verify the checksum. Returns {size, sha256}."""
    part = dest + ".part"
    sha = hashlib.sha256()
    have = 0
    if os.path.exists(part):
        with open(part, "rb") as f:
            while chunk := f.read(_CHUNK * 8):
                sha.update(chunk)
                have += len(chunk)
    headers = {"Range": f"bytes={have}-"} if have else {}
    from ansible.module_utils.urls import open_url

    try:
        r = open_url(url, headers=headers, timeout=timeout, http_agent=_AGENT)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch
            r = None
        else:
            raise GpufleetError(f"url {url} answered HTTP {err.code} {err.reason}", failure_class="url_error") from None
    except (OSError, ValueError) as err:
        raise GpufleetError(f"cannot download {url}: {err}", failure_class="url_error") from None
    if r is not None:
        with r, open(part, "ab" if have and r.status == 206 else "wb") as out:
            if have and r.status != 206:  # the server ignored the Range: start over
                sha = hashlib.sha256()
                have = 0
            while chunk := r.read(_CHUNK):
                out.write(chunk)
                sha.update(chunk)
                have += len(chunk)
    digest = sha.hexdigest()
    if expected_sha256 and digest != expected_sha256:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        raise GpufleetError(
            f"checksum mismatch for {url}: expected sha256:{expected_sha256}, got sha256:{digest}; the download was "
            "discarded and the installed model left as it was",
            failure_class="checksum_mismatch",
        )
    os.replace(part, dest)
    return {"size": have, "sha256": digest}


def materialize(download: str, url: str, target: str) -> list[str]:
    """Put the downloaded file (or the archive's contents) into `target`. An archive holding one top-level
    directory is unwrapped. Returns the file names."""
    name = file_name(url)
    kind = archive_kind(name)
    os.makedirs(target, exist_ok=True)
    if kind is None:
        shutil.move(download, os.path.join(target, name))
        return [name]
    extract_archive(download, kind, target)
    os.unlink(download)
    entries = [e for e in os.listdir(target) if not e.startswith(".")]
    if (
        len(entries) == 1
        and os.path.isdir(os.path.join(target, entries[0]))
        and not os.path.islink(os.path.join(target, entries[0]))
    ):
        inner = os.path.join(target, entries[0])
        tmp = target + ".unwrap"
        os.rename(inner, tmp)
        shutil.rmtree(target)
        os.rename(tmp, target)
    names = []
    for dirpath, _dirs, filenames in os.walk(target):
        for fn in filenames:
            names.append(os.path.relpath(os.path.join(dirpath, fn), target))
    return sorted(names)
