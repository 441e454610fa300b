# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""hf_cache source for model sync: a snapshot already in a Hugging Face cache directory on the host
(``HF_HUB_CACHE`` layout: ``models--ORG--NAME/refs/REVISION``, ``snapshots/<sha>/...`` whose entries are relative
symlinks into ``blobs/``), installed without copying a byte.

How: every file of the snapshot is hard-linked into the staging directory (opened by its resolved path with no link
followed on the way, checked to lie inside the repo's cache folder: ``store.copy_tree``), then validated and renamed
into ``<models_root>/<name>/<sha>`` like any other revision.

Why hard links and not a read-only bind mount of the snapshot: the snapshot's entries are symlinks to
``../../blobs/<hash>``, which do not resolve in a container that mounts only the snapshot (mounting the whole cache
instead exposes every other model in it); the revision directory must be self-contained, validated and immutable
like the others; and a hard link keeps the weights alive when the cache is pruned (``hf cache delete``, an LRU sweep)
while a container still serves them. huggingface_hub never rewrites a blob in place (blobs are content-addressed and
replaced by rename), so sharing the inodes is safe. A hard link needs the cache and ``models_root`` on one
filesystem: otherwise this source fails with that reason (a ``sources`` order then tries the next one) instead of
silently copying gigabytes.

The identity is the hub's: the same repo, commit and patterns as ``source: hf`` (the revision id is the commit sha),
so a model served from the cache and one downloaded from the hub are the same revision and a switch between them
is a no-op.
"""

from __future__ import annotations

import os
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import store as fs
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.hub import COMMIT_RE, name_problem


def cache_dir(explicit: str | None) -> str:
    """The hub cache: ``explicit``, else ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if explicit:
        return explicit
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def _unusable(msg: str) -> GpufleetError:
    return GpufleetError(msg, failure_class="not_in_cache")


def find_snapshot(cache: str, repo_id: str, revision: str) -> tuple[str, str, str]:
    """(commit sha, snapshot dir, repo cache dir) of ``repo_id`` at ``revision`` (a commit sha, or a branch/tag the
    cache has a ref for). GpufleetError (not_in_cache) when the cache does not hold it."""
    repo_dir = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    if not os.path.isdir(repo_dir):
        raise _unusable(f"the HF cache {cache} holds no snapshot of {repo_id}")
    if COMMIT_RE.match(revision):
        sha = revision
    else:
        if name_problem(revision):  # a ref name becomes a path below refs/
            raise _unusable(f"revision {revision[:80]!r} cannot name a ref in the HF cache")
        try:
            with open(os.path.join(repo_dir, "refs", revision)) as f:
                sha = f.read(100).strip()
        except OSError:
            raise _unusable(f"the HF cache {cache} has no ref {revision!r} of {repo_id}") from None
        if not COMMIT_RE.match(sha):
            raise _unusable(f"the HF cache's ref {revision!r} of {repo_id} holds {sha[:60]!r}, not a commit sha")
    snap = os.path.join(repo_dir, "snapshots", sha)
    if not os.path.isdir(snap) or os.path.islink(snap):
        raise _unusable(f"the HF cache {cache} has no snapshot {sha[:12]} of {repo_id}")
    return sha, os.path.realpath(snap), os.path.realpath(repo_dir)


def snapshot_files(snap: str, repo_dir: str) -> dict[str, dict[str, int]]:
    """The snapshot's files (name -> size, mtime of the blob): links must resolve inside the repo's cache folder
    (store.local_files' rule), names must pass the hub's name rules."""
    files = fs.local_files(snap, [repo_dir])
    for rel in files:
        why = name_problem(rel)
        if why:
            raise GpufleetError(
                f"the HF cache snapshot {snap} holds {rel[:120]!r}, whose name {why}; refused",
                failure_class="bad_source",
            )
    return files


def check_same_filesystem(repo_dir: str, root: str) -> None:
    """Hard links need one filesystem: refuse (not_in_cache) rather than copy."""
    probe = root
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    if os.stat(os.path.join(repo_dir, "snapshots")).st_dev != os.stat(probe).st_dev:
        raise _unusable(
            f"the HF cache {os.path.dirname(repo_dir)} is on another filesystem than models_root {root}: it can only "
            "be used through hard links (no copy); put both on one filesystem or let another source serve"
        )


def link_into(snap: str, repo_dir: str, files: dict[str, Any], staging: str) -> dict[str, int]:
    """Hard-link every file of the snapshot into ``staging`` (from a descriptor opened without following links)."""
    return fs.copy_tree(snap, files, staging, hardlink=True, allowed_dirs=[repo_dir])
