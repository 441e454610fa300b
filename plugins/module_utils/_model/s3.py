# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""S3 source for model sync: every object under ``s3://BUCKET/PREFIX/`` (AWS, or any S3-compatible store such as
Cloudflare R2 or MinIO through ``endpoint_url``), through boto3.

boto3 is imported lazily (an optional host requirement: only this source needs it) and its absence is one clear
error. Credentials come from the module's no_log options (``aws_access_key_id`` / ``aws_secret_access_key`` /
``aws_session_token``) or, when those are not given, boto3's own chain (``AWS_*`` environment, shared config and
credentials files, instance roles). They are handed to boto3's client and go nowhere else: not into results,
messages or the manifest.

Identity: the listing. The revision of an S3 model is the set of (key, ETag, size) under the prefix, digested
(``objects_digest``): a changed object (new ETag or size), a new or a removed one is a new revision, and a re-sync
whose listing is unchanged is a no-op (one ListObjectsV2 request). Multipart ETags (``"<md5>-<parts>"``) are not
an MD5 of the content, so the content is never hashed; what is checked instead:

- every key below the prefix with the hub's name rules (``hub.name_problem``): an absolute key, ``..``, a backslash or
  a control character is refused before anything is written;
- every ranged GET carries ``If-Match: <the listed ETag>``: an object replaced between the listing and its download
  fails (HTTP 412) instead of mixing two versions;
- every range must return exactly the bytes asked for, and every file its listed size: a short body is refused.

Transfer: each object is split into ``PART_SIZE`` ranges fetched by a pool of ``max_workers`` threads on one boto3
client (its connection pool sized to match) and written in place with ``pwrite`` into a file preallocated to its size
(no reassembly, no temporary parts). A file complete at its listed size in the staging directory is kept by the next
run (its staging directory is per revision: same ETags).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import urllib.parse
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.hub import name_problem
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.url import mask

# The range size (bench/s3_sync.py measures others through GPUFLEET_S3_PART_MB; docs/modules/model_sync.md).
PART_SIZE = 16 * 1024 * 1024
_READ = 1024 * 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PARTIAL = ".gpufleet-partial"


def _bad(msg: str) -> GpufleetError:
    return GpufleetError(msg, failure_class="bad_args")


def parse_url(url: Any) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://BUCKET[/PREFIX]``; the prefix without its leading and trailing '/' (empty: the
    whole bucket). GpufleetError (bad_args) when the URL is not one, the bucket name breaks S3's rules, or the
    prefix has an empty, '.' or '..' part or a control character."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise _bad(f"s3_url {str(url)[:120]!r} must look like s3://BUCKET/PREFIX")
    rest = url[len("s3://") :]
    bucket, prefix = rest.partition("/")[::2]
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise _bad(
            f"s3_url {url[:120]!r}: {bucket!r} is not an S3 bucket name (3-63 lowercase letters, digits, '.' or '-')"
        )
    prefix = prefix.strip("/")
    if prefix:
        if any(ord(c) < 32 or ord(c) == 127 for c in prefix) or "\\" in prefix:
            raise _bad(f"s3_url {url[:120]!r}: the prefix holds a control character or a backslash")
        if any(p in ("", ".", "..") for p in prefix.split("/")):
            raise _bad(f"s3_url {url[:120]!r}: the prefix has an empty, '.' or '..' part")
    return bucket, prefix


def check_endpoint(endpoint_url: str | None) -> str | None:
    """``endpoint_url`` (an S3-compatible store: R2, MinIO) when it is an http(s) URL with a host and no secret."""
    if endpoint_url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(str(endpoint_url))
    except ValueError:  # e.g. an unbalanced '[': not a URL at all
        parts = urllib.parse.urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or parts.query:
        raise _bad(
            f"endpoint_url {mask(str(endpoint_url))[:120]!r} must be http(s)://HOST[:PORT] of an S3-compatible store (no "
            "user, password or query: credentials go in aws_access_key_id / aws_secret_access_key), e.g. "
            "https://ACCOUNT.r2.cloudflarestorage.com"
        )
    return str(endpoint_url).rstrip("/")


def client(p: dict[str, Any], max_workers: int = 8) -> Any:
    """A boto3 S3 client from the module options (endpoint_url, region, the aws_* credentials; boto3's chain when
    they are not given). GpufleetError (missing_dependency) when boto3 is not installed."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise GpufleetError(
            "source s3 needs the boto3 Python package on the host: install it in the interpreter Ansible uses there "
            "(pip install boto3; requirements-host.txt lists it)",
            failure_class="missing_dependency",
        ) from None
    key, secret, token = p.get("aws_access_key_id"), p.get("aws_secret_access_key"), p.get("aws_session_token")
    if bool(key) != bool(secret):
        raise _bad("aws_access_key_id and aws_secret_access_key go together: give both, or neither (AWS_* environment)")
    config = Config(
        max_pool_connections=max(10, max_workers + 2),
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path"} if p.get("endpoint_url") else None,
    )
    session = boto3.session.Session(
        aws_access_key_id=key or None, aws_secret_access_key=secret or None, aws_session_token=token or None
    )
    return session.client(
        "s3", endpoint_url=check_endpoint(p.get("endpoint_url")), region_name=p.get("region") or None, config=config
    )


def shown(bucket: str, prefix: str) -> str:
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def map_error(err: BaseException, where: str) -> GpufleetError:
    """A boto3/botocore error as one clear GpufleetError (no credential in it)."""
    from botocore import exceptions as bce

    if isinstance(err, bce.NoCredentialsError):
        return GpufleetError(
            f"no S3 credentials for {where}: give aws_access_key_id and aws_secret_access_key (no_log), or set "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile) for the module",
            failure_class="s3_auth",
        )
    if isinstance(err, bce.ClientError):
        code = str(err.response.get("Error", {}).get("Code") or "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken"):
            return GpufleetError(
                f"S3 refused the credentials for {where} ({code}): check aws_access_key_id / aws_secret_access_key "
                "(and aws_session_token), and that they may read the bucket",
                failure_class="s3_auth",
            )
        if code in ("NoSuchBucket",):
            return GpufleetError(f"S3 bucket of {where} does not exist ({code})", failure_class="s3_not_found")
        if code in ("NoSuchKey", "404") or status == 404:
            return GpufleetError(
                f"{where} is gone (it was listed, then not found: deleted while syncing?); nothing was installed, "
                "run again",
                failure_class="s3_not_found",
            )
        if code in ("PreconditionFailed", "412") or status == 412:
            return GpufleetError(
                f"{where} changed between the listing and its download (its ETag no longer matches); nothing was "
                "installed, run again once the upload is finished",
                failure_class="s3_changed",
            )
        return GpufleetError(f"S3 request for {where} failed ({code or status})", failure_class="s3_error")
    if isinstance(err, getattr(bce, "FlexibleChecksumError", ())):
        return GpufleetError(
            f"{where} came back corrupted or short (its checksum does not match: {err}); nothing was installed, "
            "run again",
            failure_class="s3_truncated",
        )
    if isinstance(err, (bce.EndpointConnectionError, bce.ConnectTimeoutError)):
        return GpufleetError(f"cannot reach the S3 endpoint for {where}: {err}", failure_class="s3_error")
    if isinstance(err, bce.BotoCoreError):
        return GpufleetError(f"S3 transfer of {where} failed ({type(err).__name__}: {err})", failure_class="s3_error")
    return GpufleetError(f"S3 transfer of {where} failed ({type(err).__name__}: {err})", failure_class="s3_error")


def list_objects(s3: Any, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Every object below the prefix: relative name -> {key, etag, size}. Directory markers (keys ending in '/')
    are skipped. Every relative name must pass the hub's name rules (GpufleetError bad_source otherwise), before
    anything is written."""
    from botocore import exceptions as bce

    base = prefix + "/" if prefix else ""
    out: dict[str, dict[str, Any]] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents") or []:
                key, size, etag = obj.get("Key"), obj.get("Size"), obj.get("ETag")
                if not isinstance(key, str) or (key.endswith("/") and size == 0):
                    continue
                rel = key[len(base) :]
                why = name_problem(rel)
                if why:
                    raise GpufleetError(
                        f"{shown(bucket, prefix)} holds the key {key[:120]!r}, whose name below the prefix {why}; "
                        "refused before anything was written (it would land outside the model)",
                        failure_class="bad_source",
                    )
                if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(etag, str):
                    raise GpufleetError(
                        f"{shown(bucket, prefix)} lists {key[:120]!r} with size {size!r} / ETag {etag!r}; refused",
                        failure_class="s3_error",
                    )
                out[rel] = {"key": key, "etag": etag, "size": size}
    except (bce.BotoCoreError, bce.ClientError) as err:
        raise map_error(err, shown(bucket, prefix)) from None
    if not out:
        raise GpufleetError(f"{shown(bucket, prefix)} holds no object", failure_class="s3_not_found")
    return out


def objects_digest(objects: dict[str, dict[str, Any]]) -> str:
    """sha256 of the sorted (name, ETag, size) triples: the identity of the weights under the prefix."""
    triples = sorted([rel, o["etag"], o["size"]] for rel, o in objects.items())
    return hashlib.sha256(json.dumps(triples, separators=(",", ":")).encode()).hexdigest()


def _get_range(s3: Any, bucket: str, obj: dict[str, Any], fd: int, start: int, end: int, stop: threading.Event) -> int:
    """Bytes ``start``..``end`` (inclusive) of the object into ``fd`` at the same offset; exactly that many, or
    GpufleetError."""
    resp = s3.get_object(Bucket=bucket, Key=obj["key"], Range=f"bytes={start}-{end}", IfMatch=obj["etag"])
    body = resp["Body"]
    want = end - start + 1
    got = 0
    buf = bytearray(min(_READ, want))
    view = memoryview(buf)
    try:
        while got < want and not stop.is_set():
            n = body.readinto(view[: min(len(buf), want - got)])
            if not n:
                break
            off = 0
            while off < n:
                off += os.pwrite(fd, view[off:n], start + got + off)
            got += n
    finally:
        body.close()
    if got != want and not stop.is_set():
        raise GpufleetError(
            f"s3://{bucket}/{obj['key']}: bytes {start}-{end} came back short ({got} of {want}: a truncated "
            "response); nothing was installed, run again",
            failure_class="s3_truncated",
        )
    return got


def download(
    s3: Any,
    bucket: str,
    objects: dict[str, dict[str, Any]],
    staging: str,
    max_workers: int = 8,
    part_size: int | None = None,
) -> int:
    """Every object into ``staging/<name>`` with ranged GETs in parallel; returns the bytes transferred. Files
    already complete at their listed size are kept. On any failure the partial files are removed and the first
    error is raised (GpufleetError)."""

    for rel in objects:  # again, right before writing: nothing outside the staging directory
        if name_problem(rel):
            raise GpufleetError(f"refused S3 key {objects[rel]['key'][:120]!r}", failure_class="bad_source")
    if part_size is None:
        part_size = int(os.environ.get("GPUFLEET_S3_PART_MB") or 0) << 20 or PART_SIZE
    partial = os.path.join(staging, _PARTIAL)
    todo = [
        r
        for r in sorted(objects, key=lambda r: -objects[r]["size"])
        if _size(os.path.join(staging, r)) != objects[r]["size"]
    ]
    if not todo:
        return 0
    stop = threading.Event()
    fds: dict[str, int] = {}
    remaining: dict[str, int] = {}
    lock = threading.Lock()
    moved = 0
    try:
        jobs = []
        for rel in todo:
            part = os.path.join(partial, rel)
            os.makedirs(os.path.dirname(part), exist_ok=True)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            fds[rel] = fd
            size = objects[rel]["size"]
            os.ftruncate(fd, size)
            ranges = [(s, min(s + part_size, size) - 1) for s in range(0, size, part_size)]
            remaining[rel] = len(ranges)
            jobs += [(rel, s, e) for s, e in ranges]
            if not ranges:
                remaining[rel] = 0

        def finish(rel: str) -> None:
            dest = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(os.path.join(partial, rel), dest)

        def one(job: tuple[str, int, int]) -> int:
            rel, s, e = job
            if stop.is_set():
                return 0
            try:
                n = _get_range(s3, bucket, objects[rel], fds[rel], s, e, stop)
            except GpufleetError:
                raise
            except Exception as err:  # botocore's, and urllib3's from a body read (a reset connection)
                raise map_error(err, f"s3://{bucket}/{objects[rel]['key']}") from None
            with lock:
                remaining[rel] -= 1
                done = remaining[rel] == 0
            if done:
                finish(rel)
            return n

        for rel in [r for r, n in remaining.items() if n == 0]:  # empty objects
            finish(rel)
        with ThreadPoolExecutor(
            max_workers=max(1, min(max_workers, len(jobs) or 1)), thread_name_prefix="gpufleet-s3"
        ) as ex:
            futures = [ex.submit(one, j) for j in jobs]
            wait(futures, return_when=FIRST_EXCEPTION)
            first = next(
                (f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None), None
            )
            if first is not None:
                stop.set()
                for f in futures:
                    f.cancel()
                wait(futures)
                raise first
            moved = sum(f.result() for f in futures)
    except BaseException:
        stop.set()
        for fd in fds.values():
            os.close(fd)
        fds.clear()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        for fd in fds.values():
            os.close(fd)
    for rel in todo:
        if _size(os.path.join(staging, rel)) != objects[rel]["size"]:
            raise GpufleetError(
                f"s3://{bucket}/{objects[rel]['key']}: the file has {_size(os.path.join(staging, rel))} bytes, the "
                f"listing said {objects[rel]['size']}; nothing was installed",
                failure_class="s3_truncated",
            )
    shutil.rmtree(partial, ignore_errors=True)
    return moved


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
