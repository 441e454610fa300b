# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vLLM version -> image tag, the newest-release lookup (GitHub releases API, cached), image reference parsing.

Resolution table (``resolve_tag``):

=========================  ===============================================================
version                    tag
=========================  ===============================================================
(empty), ``latest``        the newest release's tag (``latest_release``), offline ``latest``
``0.8.5``, ``v0.8.5``      ``v0.8.5`` (also ``0.8.5.post1``, ``0.10.1.1``, ``0.11.0rc1``)
``nightly``                ``nightly``
40 hex digits (commit)     ``nightly-<commit>`` (lower case)
anything else              ``GpufleetError`` before anything is pulled
=========================  ===============================================================
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic

DEFAULT_REPOSITORY = "vllm/vllm-openai"
DEFAULT_RELEASES_URL = "https://api.github.com/repos/vllm-project/vllm/releases/latest"
DEFAULT_CACHE_TTL = 3600
DEFAULT_CACHE_PATH = "~/.cache/gpufleet/vllm-releases.json"

# vLLM's release tags: v0.8.5, v0.8.5.post1, v0.10.1.1, v0.11.0rc1.
_VERSION_RE = re.compile(r"^v?(?P<v>\d+\.\d+\.\d+(?:\.\d+)?(?:(?:a|b|rc)\d+)?(?:\.post\d+)?)$")
_COMMIT_RE = re.compile(r"^[0-9a-fA-F]{40}$")
# Docker's reference grammar, simplified: [host[:port]/]path[:tag][@digest].
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def resolve_tag(version: str | None, latest_lookup: Callable[[], tuple[str, str | None]]) -> tuple[str, str | None]:
    """Return ``(tag, warning)`` for a user's vLLM version; ``latest_lookup`` is only called for empty/latest."""
    v = (version or "").strip()
    if v in ("", "latest"):
        return latest_lookup()
    if v == "nightly":
        return "nightly", None
    if _COMMIT_RE.match(v):
        return f"nightly-{v.lower()}", None
    m = _VERSION_RE.match(v)
    if m:
        return f"v{m.group('v')}", None
    raise GpufleetError(
        f"version {version!r} is not a vLLM version: use latest (or leave it empty), nightly, a release such as "
        "0.10.2 or v0.10.2, a 40-hex vLLM commit for its nightly image, or set image: to an explicit reference",
        failure_class="bad_version",
    )


def version_of_tag(tag: str) -> str | None:
    """``v0.10.2`` -> ``0.10.2``; None for ``latest``, ``nightly``, ``nightly-<commit>`` and anything else."""
    m = _VERSION_RE.match(tag)
    return m.group("v") if m else None


def _read_cache(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: str, data: dict) -> None:
    try:
        write_atomic(path, json.dumps(data, indent=1, sort_keys=True), mode=0o600)
    except OSError:
        pass  # a cache that cannot be written only costs a lookup next time


def fetch_latest_tag(url: str, timeout: float = 5.0) -> str:
    """GET the releases API endpoint and return its ``tag_name`` (validated as a vLLM release tag)."""
    # Imported here: ~50 ms that a cached or pinned run does not need. open_url honours proxy env and CA settings.
    from ansible.module_utils.urls import open_url

    r = open_url(
        url,
        headers={"Accept": "application/vnd.github+json"},
        http_agent="gpufleet.vllm-vllm_image",
        timeout=timeout,
    )
    try:
        data = json.loads(r.read().decode("utf-8"))
    finally:
        r.close()
    tag = data.get("tag_name") if isinstance(data, dict) else None
    if not isinstance(tag, str) or not _VERSION_RE.match(tag):
        raise ValueError(f"no release tag_name in the answer (got {tag!r})")
    return tag if tag.startswith("v") else f"v{tag}"


def latest_release(
    url: str = DEFAULT_RELEASES_URL,
    cache_path: str | None = DEFAULT_CACHE_PATH,
    ttl: float = DEFAULT_CACHE_TTL,
    timeout: float = 5.0,
    now: Callable[[], float] = time.time,
) -> tuple[str, str | None]:
    """The newest vLLM release tag as ``(tag, warning)``.

    A cache file (JSON, by endpoint URL: ``{"<url>": {"tag": "v0.10.2", "fetched": <epoch>}}``) answers for
    ``ttl`` seconds. When the endpoint cannot be reached or answers nonsense, the result is the ``latest`` tag and
    a warning that says so (and why).
    """
    path = os.path.expanduser(cache_path) if cache_path else None
    t = now()
    cache = _read_cache(path) if path else {}
    entry = cache.get(url)
    if isinstance(entry, dict) and isinstance(entry.get("tag"), str) and isinstance(entry.get("fetched"), int | float):
        if 0 <= t - entry["fetched"] < ttl:
            return entry["tag"], None
    try:
        tag = fetch_latest_tag(url, timeout=timeout)
    except Exception as e:  # any failure of the lookup means: fall back to the latest tag and say why
        reason = getattr(e, "reason", None) or e
        return "latest", (
            f"could not look up the newest vLLM release at {url} ({reason}); using the 'latest' tag instead, "
            "which may be a different version than the newest release"
        )
    if path:
        cache[url] = {"tag": tag, "fetched": t}
        _write_cache(path, cache)
    return tag, None


def split_reference(ref: str) -> tuple[str, str | None, str | None]:
    """``[host[:port]/]path[:tag][@sha256:...]`` -> ``(repository, tag, digest)``; raises on a malformed one."""
    r = (ref or "").strip()
    digest = None
    if "@" in r:
        r, digest = r.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise GpufleetError(f"image reference {ref!r} has a malformed digest (expected sha256:<64 hex>)")
    tag = None
    slash = r.rfind("/")
    colon = r.rfind(":")
    if colon > slash:
        r, tag = r[:colon], r[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise GpufleetError(f"image reference {ref!r} has a malformed tag {tag!r}")
    check_repository(r, what=f"image reference {ref!r}")
    return r, tag, digest


def check_repository(repo: str, what: str = "repository") -> None:
    """Raise unless ``repo`` is ``[host[:port]/]name[/name...]`` with lower-case name components."""
    parts = repo.split("/") if repo else []
    if parts and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost") and len(parts) > 1:
        parts = parts[1:]
    if not parts or not all(_REPO_COMPONENT_RE.match(p) for p in parts):
        raise GpufleetError(
            f"{what}: {repo!r} is not a valid image repository (lower-case name components separated by '/', "
            "optionally prefixed by a registry host[:port], e.g. vllm/vllm-openai or 127.0.0.1:5000/vllm/vllm-openai)"
        )


def registry_of(repo: str) -> str:
    """The registry host of a repository (``docker.io`` when it has none)."""
    first = repo.split("/", 1)[0]
    if "/" in repo and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"
