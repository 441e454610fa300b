# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The revisions of a model on a host: their manifests, which containers use them, and which may go.

Layout (``layout.py`` has the path rules)::

    <root>/<name>/<revision_id>/                     one installed revision (never changed once mounted)
    <root>/.gpufleet/revisions/<name>/<revision_id>.json   its manifest (identity, files, sizes, mtimes, synced_at)
    <root>/.gpufleet/manifests/<name>.json           the manifest of the current revision (the no-op check reads it)

The collection rule (``to_remove``): the current revision, every revision a managed container uses (docker or podman,
running or not: a stopped one may be started again, ``-previous`` may be rolled back to) and the ``keep`` newest stay;
the others are removed. When an engine cannot be asked, nothing is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Collection, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._model import store as fs
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.layout import LEGACY_REVISION, REVISION_ID_RE, uses

DEFAULT_KEEP = 2


def to_remove(revisions: Mapping[str, float], current: str | None, in_use: Collection[str], keep: int) -> list[str]:
    """The revisions to remove. ``revisions``: id -> synced_at (epoch seconds). Kept: ``current``, everything in
    ``in_use``, and the ``keep`` newest (``current`` counts as one of them; ``keep`` below 1 counts as 1)."""
    kept = {current} & set(revisions)
    for rev in sorted(revisions, key=lambda r: (revisions[r], r), reverse=True):
        if len(kept) >= max(1, keep):
            break
        kept.add(rev)
    kept |= set(in_use) & set(revisions)
    return sorted(r for r in revisions if r not in kept)


# ---------------------------------------------------------------- manifests of revisions


def _dir(root: str, name: str) -> str:
    return os.path.join(root, fs.META, "revisions", name)


def read_all(root: str, name: str) -> dict[str, dict[str, Any]]:
    """Every recorded revision of model ``name``: id -> manifest (with ``path``)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        entries = os.listdir(_dir(root, name))
    except OSError:
        return out
    for entry in entries:
        rev, ext = os.path.splitext(entry)
        if ext != ".json" or not (REVISION_ID_RE.match(rev)):
            continue
        try:
            with open(os.path.join(_dir(root, name), entry)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("path"):
            out[rev] = data
    return out


def count(root: str, name: str) -> int:
    """How many revisions of ``name`` are recorded (one directory listing: the no-op path's only cost here)."""
    try:
        return sum(1 for e in os.listdir(_dir(root, name)) if e.endswith(".json"))
    except OSError:
        return 0


def read(root: str, name: str, rev: str) -> dict[str, Any] | None:
    return read_all(root, name).get(rev) if REVISION_ID_RE.match(rev) else None


def write(root: str, name: str, rev: str, manifest: dict[str, Any]) -> None:
    os.makedirs(_dir(root, name), mode=0o755, exist_ok=True)
    fs.write_json(os.path.join(_dir(root, name), f"{rev}.json"), {**manifest, "revision_id": rev})


def forget(root: str, name: str, rev: str | None = None) -> None:
    """Drop the manifest of revision ``rev`` (every revision's when None)."""
    if rev is None:
        shutil.rmtree(_dir(root, name), ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(_dir(root, name), f"{rev}.json"))


# ---------------------------------------------------------------- who uses what


def _engine_present(kind: str) -> bool:
    if kind == "docker":
        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return not host.startswith("unix://") or os.path.exists(host[len("unix://") :])
    return shutil.which("podman") is not None


def container_mounts(running_only: bool = False) -> list[tuple[str, list[str]]] | None:
    """(``engine:container name``, host paths it mounts) of every gpufleet-managed container on this host, through
    the engine adapters (docker and podman, where installed). None when an installed engine could not be asked."""
    # Imported here: only a sync that installs or removes something asks the engines.
    from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime

    out: list[tuple[str, list[str]]] = []
    for kind in ("docker", "podman"):
        if not _engine_present(kind):
            continue
        try:
            rt = get_runtime(kind, timeout=30)
            try:
                states = rt.list_managed()
            finally:
                rt.close()
        except Exception:  # an engine that does not answer: we cannot know what it mounts
            return None
        for st in states:
            if running_only and not (st.running or st.status in ("paused", "restarting")):
                continue
            out.append((f"{kind}:{st.name}", list(st.mounts)))
    return out


def users_of(path: str, mounts: list[tuple[str, list[str]]]) -> list[str]:
    """The containers of ``mounts`` that use ``path`` (layout.uses; symlinks resolved on both sides)."""
    paths = {path.rstrip("/"), os.path.realpath(path).rstrip("/")}
    return sorted(
        {c for c, srcs in mounts for s in srcs for p in paths if s and (uses(s, p) or uses(os.path.realpath(s), p))}
    )


# ---------------------------------------------------------------- removal


def _remove_legacy(manifest: Mapping[str, Any]) -> None:
    """The files of a flat install (listed by its manifest) and the directories they leave empty; the revision
    directories beside them stay."""
    base = str(manifest["path"])
    if os.path.islink(base):
        os.unlink(base)
        return
    dirs = set()
    for rel in manifest.get("files") or {}:
        full = os.path.join(base, rel)
        if os.path.commonpath([base, os.path.normpath(full)]) != base:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(full)
        d = os.path.dirname(full)
        while d != base and d.startswith(base + "/"):
            dirs.add(d)
            d = os.path.dirname(d)
    for d in sorted(dirs, key=len, reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def remove(root: str, name: str, rev: str, manifest: Mapping[str, Any]) -> None:
    """Remove revision ``rev`` (its directory, or a flat install's files) and its manifest."""
    if rev == LEGACY_REVISION:
        _remove_legacy(manifest)
    else:
        path = str(manifest["path"])
        if os.path.lexists(path):
            trash = os.path.join(fs.meta_dir(root, "trash"), f"{name}.{os.getpid()}.{time.time_ns()}")
            os.rename(path, trash)
            fs.rmtree_any(trash)
    forget(root, name, rev)


def collect(root: str, name: str, keep: int, current: str | None, check_mode: bool = False) -> dict[str, Any]:
    """Remove the revisions of ``name`` the rule lets go (the caller holds the model's lock). Returns ``removed``,
    ``kept``, ``in_use`` (revision -> containers) and, when nothing could be decided, ``skipped`` (why)."""
    revs = read_all(root, name)
    out: dict[str, Any] = {"removed": [], "kept": sorted(revs), "in_use": {}}
    if len(revs) <= max(1, keep):  # nothing to remove whatever uses what: no engine is asked
        return out
    mounts = container_mounts()
    if mounts is None:
        out["skipped"] = "a container engine did not answer: nothing removed"
        return out
    in_use = {rev: users_of(str(m["path"]), mounts) for rev, m in revs.items()}
    out["in_use"] = {rev: users for rev, users in in_use.items() if users}
    synced = {rev: float(m.get("synced_at") or 0) for rev, m in revs.items()}
    gone = to_remove(synced, current, list(out["in_use"]), keep)
    if not check_mode:
        for rev in gone:
            remove(root, name, rev, revs[rev])
    out["removed"] = gone
    out["kept"] = sorted(set(revs) - set(gone))
    return out
