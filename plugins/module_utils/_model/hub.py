# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hugging Face hub source for model sync, through huggingface_hub (HF_ENDPOINT, HF_HUB_OFFLINE, hf_xet honoured).

huggingface_hub is imported lazily: a no-op re-sync resolves the revision with one small stdlib request (or none
for a commit sha) and never pays for the import.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import json
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

DEFAULT_ENDPOINT = "https://huggingface.co"
_opener = urllib.request.build_opener()  # honours http(s)_proxy / no_proxy like huggingface_hub does
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# What vLLM never reads: the original/ consolidated checkpoints some repos carry beside the HF-format weights.
DEFAULT_IGNORE = ["original/*", ".gitattributes"]
# When a repo has safetensors weights, the other weight formats are duplicates (vLLM prefers safetensors).
DUPLICATE_FORMATS = ["*.bin", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.ot", "pytorch_model.bin.index.json"]


_REPO_PART_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_-])?$")
# Names a hub listing may not use: the downloaders' own bookkeeping inside the staging directory.
RESERVED_TOP = (".cache", ".gpufleet-partial", ".gpufleet-staging")


def endpoint_of(explicit: str | None) -> str:
    endpoint = (explicit or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        where = "hf_endpoint" if explicit else "HF_ENDPOINT"
        raise GpufleetError(
            f"{where} {endpoint!r} is not an http(s) URL of a hub: use e.g. {DEFAULT_ENDPOINT} or "
            "http://HOST:PORT of a mirror",
            failure_class="bad_args",
        )
    return endpoint


def check_repo_id(repo_id: str) -> str:
    """`repo_id` when it is NAME or ORG/NAME as the hub spells them; GpufleetError (bad_args) if not (it becomes
    part of every hub URL: a '..' or an extra '/' would address another path of the hub)."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if not 1 <= len(parts) <= 2 or not all(_REPO_PART_RE.match(p) and ".." not in p and "--" not in p for p in parts):
        raise GpufleetError(
            f"repo_id {repo_id!r} is not a hub repo id: use ORG/NAME (letters, digits, '-', '_', '.'; no '..' or "
            "'--'; at most 96 characters each), e.g. Qwen/Qwen2.5-0.5B-Instruct",
            failure_class="bad_args",
        )
    return repo_id


def check_revision(revision: str) -> str:
    """`revision` when it is a usable branch, tag or commit name; GpufleetError (bad_args) if not."""
    if (
        not isinstance(revision, str)
        or not revision.strip()
        or len(revision) > 256
        or any(ord(c) < 32 or ord(c) == 127 for c in revision)
    ):
        raise GpufleetError(
            f"revision {revision!r} is not a branch, tag or commit name: use e.g. main, v1.0 or a 40-hex commit sha",
            failure_class="bad_args",
        )
    return revision


def check_commit(sha: Any, repo_id: str, revision: str) -> str:
    """The commit id a hub answered, when it is a 40-hex sha (it becomes part of a directory name); GpufleetError
    (hub_error) if not."""
    if not isinstance(sha, str) or not COMMIT_RE.match(sha):
        raise GpufleetError(
            f"the hub answered the commit id {str(sha)[:80]!r} for {repo_id}@{revision}, which is not a 40-hex-digit "
            "sha; refused before anything was written: check that hf_endpoint points at a Hugging Face hub",
            failure_class="hub_error",
        )
    return sha


def name_problem(path: Any) -> str | None:
    """Why a remote file name (a hub listing's path, an S3 key below its prefix) is not a clean relative path that
    stays inside the staging directory, or None when it is: absolute, climbing with '..', empty parts, a backslash
    or a control character, the downloaders' own bookkeeping, too long."""
    why = None
    if not isinstance(path, str) or not path:
        why = "is empty"
    elif path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        why = "is absolute"
    elif "\\" in path:
        why = "holds a backslash"
    elif any(ord(c) < 32 or ord(c) == 127 for c in path):
        why = "holds a control character"
    elif any(p in ("", ".", "..") for p in path.split("/")):
        why = "has an empty, '.' or '..' part"
    elif path.split("/")[0] in RESERVED_TOP:
        why = "names the downloader's own bookkeeping"
    elif any(len(os.fsencode(p)) > 255 for p in path.split("/")) or len(os.fsencode(path)) > 4000:
        why = "is too long for a file name"
    return why


def check_repo_file(path: Any, repo_id: str) -> str:
    """A file name from a hub listing, when it is a clean relative path that stays inside the staging directory;
    GpufleetError (hub_error) if not (name_problem says why)."""
    why = name_problem(path)
    if why:
        raise GpufleetError(
            f"the hub lists a file {str(path)[:120]!r} in {repo_id} whose name {why}; refused before anything was "
            "written (it would land outside the model): check that hf_endpoint points at a trusted hub",
            failure_class="hub_error",
        )
    return path


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _prepare_env(endpoint: str) -> None:
    # huggingface_hub reads these at import time.
    os.environ["HF_ENDPOINT"] = endpoint
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")


def fast_resolve(endpoint: str, repo_id: str, revision: str, token: str | None, timeout: float = 10) -> str | None:
    """The commit sha of `revision` with one stdlib GET of the model-info API, or None on any problem (the caller
    then takes the full huggingface_hub path, which produces the proper error)."""
    if COMMIT_RE.match(revision):
        return revision
    if offline():
        return None
    url = f"{endpoint}/api/models/{repo_id}/revision/{urllib.parse.quote(revision, safe='')}"
    req = urllib.request.Request(url, headers={"User-Agent": "gpufleet.vllm model_sync"})
    if token:
        req.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        # plain urllib (proxies from the environment): ansible's open_url costs ~70 ms of imports on the no-op path
        with _opener.open(req, timeout=timeout) as r:
            sha = json.loads(r.read()).get("sha")
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return sha if isinstance(sha, str) and COMMIT_RE.match(sha) else None


def _map_error(err: Exception, repo_id: str, revision: str, endpoint: str) -> GpufleetError:
    from huggingface_hub import errors as hf_errors

    name = type(err).__name__
    if isinstance(err, hf_errors.GatedRepoError):
        return GpufleetError(
            f"repo {repo_id} is gated: accept its terms on the hub and pass a token (token option or HF_TOKEN) "
            "of an account that has access",
            failure_class="gated",
        )
    if isinstance(err, hf_errors.RevisionNotFoundError):
        return GpufleetError(
            f"revision {revision!r} not found in repo {repo_id} on {endpoint}: use an existing branch, tag or commit",
            failure_class="revision_not_found",
        )
    if isinstance(err, hf_errors.RepositoryNotFoundError):
        return GpufleetError(
            f"repo {repo_id} not found on {endpoint}: check repo_id (ORG/NAME); a private repo also needs a token",
            failure_class="repo_not_found",
        )
    if isinstance(err, hf_errors.OfflineModeIsEnabled):
        return GpufleetError(
            f"HF_HUB_OFFLINE is set and {repo_id}@{revision} is not on this host yet: unset it or sync online once",
            failure_class="offline",
        )
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return GpufleetError(f"hub request for {repo_id} failed ({name}: {first})", failure_class="hub_error")


def _api(endpoint: str, token: str | None) -> Any:
    _prepare_env(endpoint)
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token or False, library_name="gpufleet.vllm")


def resolve(
    endpoint: str, repo_id: str, revision: str, token: str | None
) -> tuple[str, dict[str, int], bool, set[str]]:
    """(commit sha, {path: size} of every file at that commit, gated, paths stored on xet) via huggingface_hub."""
    if offline():
        raise GpufleetError(
            f"HF_HUB_OFFLINE is set and {repo_id}@{revision} is not on this host yet: unset it or sync online once",
            failure_class="offline",
        )
    api = _api(endpoint, token)
    from huggingface_hub import errors as hf_errors
    from huggingface_hub.hf_api import RepoFile

    try:
        info = api.model_info(repo_id, revision=revision)
        sha = check_commit(info.sha, repo_id, revision)
        entries = [f for f in api.list_repo_tree(repo_id, recursive=True, revision=sha) if isinstance(f, RepoFile)]
    except (hf_errors.HfHubHTTPError, OSError, ValueError) as err:
        raise _map_error(err, repo_id, revision, endpoint) from None
    files: dict[str, int] = {}
    for f in entries:
        size = getattr(f, "size", None)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise GpufleetError(
                f"the hub lists {str(f.path)[:120]!r} in {repo_id} with the size {size!r}; refused: check that "
                "hf_endpoint points at a Hugging Face hub",
                failure_class="hub_error",
            )
        files[check_repo_file(f.path, repo_id)] = size
    xet = {f.path for f in entries if getattr(f, "xet_hash", None)}
    return sha, files, bool(info.gated), xet


def xet_available() -> bool:
    """hf_xet installed and not disabled (HF_HUB_DISABLE_XET): huggingface_hub then downloads xet files with it."""
    if os.environ.get("HF_HUB_DISABLE_XET", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    return importlib.util.find_spec("hf_xet") is not None


def choose_backend(requested: str, wanted: dict[str, int], xet: set[str]) -> str:
    """auto: huggingface_hub (snapshot_download, with hf_xet / hf_transfer when installed), the field's own client.
    The built-in parallel HTTP downloader (plain /resolve/ URLs, large reads, resumable) is used only when asked for
    by name, and never for files on xet storage it cannot read."""
    if requested == "builtin" and xet_available() and any(f in xet for f in wanted):
        return "huggingface_hub"
    if requested != "auto":
        return requested
    return "huggingface_hub"


def check_access(endpoint: str, repo_id: str, sha: str, filename: str, token: str | None) -> None:
    """One HEAD of a file: a gated repo without an accepted token fails here, before staging anything."""
    _prepare_env(endpoint)
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(
            hf_hub_url(repo_id, filename, revision=sha, endpoint=endpoint), token=token or False, endpoint=endpoint
        )
    except (hf_errors.HfHubHTTPError, OSError) as err:
        raise _map_error(err, repo_id, sha, endpoint) from None


def effective_patterns(
    files: dict[str, int], allow: list[str] | None, ignore: list[str] | None
) -> tuple[list[str] | None, list[str]]:
    """The allow/ignore patterns the download uses. Without user ignore_patterns: skip original/ and, when the repo
    has safetensors weights, duplicate weight formats."""
    if ignore is not None:
        return allow, list(ignore)
    eff = list(DEFAULT_IGNORE)
    if any(p.endswith(".safetensors") and "/" not in p for p in files):
        eff += DUPLICATE_FORMATS
    return allow, eff


def select(files: dict[str, int], allow: list[str] | None, ignore: list[str]) -> dict[str, int]:
    """The files snapshot_download fetches with these patterns (same rules as huggingface_hub's
    filter_repo_objects: a pattern ending in '/' means everything under it)."""

    def norm(ps: list[str]) -> list[str]:
        return [p + "*" if p.endswith("/") else p for p in ps]

    a = norm(allow) if allow is not None else None
    i = norm(ignore)
    out = {}
    for path, size in files.items():
        if a is not None and not any(fnmatch.fnmatch(path, p) for p in a):
            continue
        if any(fnmatch.fnmatch(path, p) for p in i):
            continue
        out[path] = size
    return out


def clean_partial(staging: str) -> None:
    """Remove huggingface_hub's *.incomplete leftovers of a killed run (their names are unique per process, so they
    are never resumed) and its lock files; completed files with their metadata are reused."""
    base = os.path.join(staging, ".cache", "huggingface", "download")
    for dirpath, _dirs, filenames in os.walk(base):
        for fn in filenames:
            if fn.endswith((".incomplete", ".lock")):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, fn))


# Transfer tuning of huggingface_hub's plain-HTTP path (measured on a 2-core host, 2 GB from a loopback hub, see
# bench/model_sync.py and docs/modules/model_sync.md). Its defaults reassemble 64 KiB socket reads into 10 MiB chunks
# (httpx's ByteChunker: two extra copies and a fresh 10 MiB buffer, i.e. ~2,500 page faults, per chunk) and ran at
# 0.35-0.7x curl, mostly in the kernel. Reading the socket 512 KiB at a time and handing each read on as it comes
# (no re-chunking) ran at 1.2-1.6x curl with about a quarter of the CPU; 512 KiB beat 1 MiB and 2 MiB slightly (h11 copies
# each read three times, which stays within the 2 MiB L2 cache). Downloads through hf_xet do not take this path.
HTTP_READ_BYTES = 512 * 1024


def tune_transfers(read_bytes: int = HTTP_READ_BYTES) -> dict[str, Any]:
    """Tune how huggingface_hub streams a file over plain HTTP, for this process only (a module run is its own
    process): the socket read size of the HTTP/1.1 connection, and DOWNLOAD_CHUNK_SIZE, the chunk size
    huggingface_hub asks the response iterator for.

    httpx-based huggingface_hub (>= 1.0: httpx2/httpcore2 or httpx/httpcore): DOWNLOAD_CHUNK_SIZE=None, so every
    socket read (<= `read_bytes`) is written out as it arrives. requests-based 0.x (where None would mean "read the
    whole file into memory"): chunks of `read_bytes`. Constants that do not exist in the installed versions are
    left alone. Returns what was set."""
    import importlib

    import huggingface_hub
    from huggingface_hub import constants

    done: dict[str, Any] = {}
    for modname in ("httpcore2._sync.http11", "httpcore._sync.http11"):
        try:
            conn = importlib.import_module(modname).HTTP11Connection
        except (ImportError, AttributeError):
            continue
        if isinstance(getattr(conn, "READ_NUM_BYTES", None), int):
            conn.READ_NUM_BYTES = max(conn.READ_NUM_BYTES, read_bytes)
            done[f"{modname}.HTTP11Connection.READ_NUM_BYTES"] = conn.READ_NUM_BYTES
    if "DOWNLOAD_CHUNK_SIZE" in vars(constants):
        httpx_based = not str(getattr(huggingface_hub, "__version__", "0")).startswith("0.")
        constants.DOWNLOAD_CHUNK_SIZE = None if httpx_based and done else read_bytes
        done["huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE"] = constants.DOWNLOAD_CHUNK_SIZE
    return done


def download(
    endpoint: str,
    repo_id: str,
    sha: str,
    token: str | None,
    staging: str,
    allow: list[str] | None,
    ignore: list[str],
    max_workers: int = 8,
) -> None:
    """snapshot_download of `sha` into `staging` (local_dir mode: files already there at this commit are kept)."""
    _prepare_env(endpoint)
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    tune_transfers()
    clean_partial(staging)
    try:
        snapshot_download(
            repo_id,
            revision=sha,
            local_dir=staging,
            token=token or False,
            allow_patterns=allow,
            ignore_patterns=ignore,
            endpoint=endpoint,
            max_workers=max_workers,
            library_name="gpufleet.vllm",
        )
    except (hf_errors.HfHubHTTPError, hf_errors.LocalEntryNotFoundError) as err:
        raise _map_error(err, repo_id, sha, endpoint) from None
    except ValueError as err:  # e.g. huggingface_hub refusing a listed name with '..' or an absolute path
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise GpufleetError(
            f"huggingface_hub refused the hub's answer for {repo_id}@{sha[:12]} ({first}); nothing was installed: "
            "check that hf_endpoint points at a trusted hub",
            failure_class="hub_error",
        ) from None


# ---------------------------------------------------------------- built-in downloader

_PARTIAL = ".gpufleet-partial"
_BUF = 1024 * 1024  # one readinto fills it: also how much a kill can lose per file


def resolve_url(endpoint: str, repo_id: str, sha: str, filename: str) -> str:
    """The file URL exactly as huggingface_hub's hf_hub_url builds it."""
    return f"{endpoint}/{repo_id}/resolve/{sha}/{urllib.parse.quote(filename)}"


def _http_error(err: urllib.error.HTTPError, repo_id: str, filename: str, sha: str) -> GpufleetError:
    code = err.headers.get("X-Error-Code") if err.headers else None
    if code == "GatedRepo":
        return GpufleetError(
            f"repo {repo_id} is gated: accept its terms on the hub and pass a token (token option or HF_TOKEN) "
            "of an account that has access",
            failure_class="gated",
        )
    if code == "RepoNotFound" or (err.code == 401 and code is None):
        return GpufleetError(
            f"repo {repo_id} not found or not accessible: check repo_id (ORG/NAME); a private repo also needs a token",
            failure_class="repo_not_found",
        )
    if code == "RevisionNotFound":
        return GpufleetError(f"revision {sha} not found in repo {repo_id}", failure_class="revision_not_found")
    return GpufleetError(
        f"download of {repo_id}/{filename}@{sha[:12]} failed: HTTP {err.code} {err.reason}",
        failure_class="download_error",
    )


def _fetch_one(url: str, dest: str, part: str, expected: int, token: str | None, timeout: float) -> int:
    """One file into `part` (resumed with a Range request when a previous run left some of it), then renamed to
    `dest`. Returns the bytes transferred."""
    os.makedirs(os.path.dirname(part), exist_ok=True)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if have > expected:
        os.unlink(part)
        have = 0
    moved = 0
    if have < expected or expected == 0:
        req = urllib.request.Request(
            url, headers={"User-Agent": "gpufleet.vllm model_sync", "Accept-Encoding": "identity"}
        )
        if token:
            # not forwarded on a redirect (e.g. to a CDN holding the LFS blob), like huggingface_hub
            req.add_unredirected_header("Authorization", f"Bearer {token}")
        if have:
            req.add_header("Range", f"bytes={have}-")
        with _opener.open(req, timeout=timeout) as r:
            flags = os.O_WRONLY | os.O_CREAT
            if have and r.status == 206:
                flags |= os.O_APPEND
            else:
                flags |= os.O_TRUNC
                have = 0
            fd = os.open(part, flags, 0o644)
            try:
                buf = bytearray(_BUF)
                view = memoryview(buf)
                while True:
                    n = r.readinto(view)
                    if not n:
                        break
                    off = 0
                    while off < n:
                        off += os.write(fd, view[off:n])
                    have += n
                    moved += n
            finally:
                os.close(fd)
    if have != expected:
        raise GpufleetError(
            f"{os.path.basename(dest)}: got {have} bytes, expected {expected}; run again to resume",
            failure_class="download_error",
        )
    os.replace(part, dest)
    return moved


def download_builtin(
    endpoint: str,
    repo_id: str,
    sha: str,
    token: str | None,
    staging: str,
    wanted: dict[str, int],
    max_workers: int = 8,
    timeout: float = 60,
) -> int:
    """Fetch the `wanted` files of commit `sha` into `staging` in parallel (largest first); files already there
    with the right size are kept, partial ones resumed. Returns the bytes transferred."""
    from concurrent.futures import ThreadPoolExecutor

    for f in wanted:  # before anything is written: every name stays inside the staging directory
        check_repo_file(f, repo_id)
    todo = sorted((f for f, n in wanted.items() if _size(os.path.join(staging, f)) != n), key=lambda f: -wanted[f])
    if not todo:
        return 0
    partial = os.path.join(staging, _PARTIAL)

    def one(f: str) -> int:
        try:
            return _fetch_one(
                resolve_url(endpoint, repo_id, sha, f),
                os.path.join(staging, f),
                os.path.join(partial, f + ".part"),
                wanted[f],
                token,
                timeout,
            )
        except urllib.error.HTTPError as err:
            raise _http_error(err, repo_id, f, sha) from None
        except urllib.error.URLError as err:
            raise GpufleetError(
                f"cannot download {repo_id}/{f} from {endpoint}: {err.reason}; run again to resume",
                failure_class="download_error",
            ) from None

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(todo))), thread_name_prefix="gpufleet-dl") as ex:
        futures = [ex.submit(one, f) for f in todo]
        moved = 0
        first_error: BaseException | None = None
        for fut in futures:
            try:
                moved += fut.result()
            except BaseException as err:  # keep the others going, report the first failure
                first_error = first_error or err
    if first_error is not None:
        raise first_error
    shutil.rmtree(partial, ignore_errors=True)
    return moved


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
