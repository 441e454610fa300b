# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where models live: the one home of the model layout, read by the controller (the fleet schema, placement and
payload tell a container its model path before the model is synced) and by the hosts (model_sync puts it there).

``<models_root>/<name>`` is a model; the default models root is ``DEFAULT_MODELS_ROOT``; ``name`` must be usable as
one directory name. A local checkpoint is allowed when its path lies under an allowed directory (``is_under``).

Revisions: each identity of a model's weights (``revision_id``: the hub commit, the URL and its checksum, or a digest of
a local checkpoint's file list) is installed in its own directory ``<models_root>/<name>/<revision_id>``
(``revision_path``), never changed once a container mounts it. A model synced before revisions existed is *flat*: its
files lie in ``<models_root>/<name>`` itself (``LEGACY_REVISION`` names it in the revision list).
Pure: no filesystem access (``store.py`` and ``revisions.py`` are the filesystem side).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

DEFAULT_MODELS_ROOT = "/var/lib/gpufleet/models"


def check_name(name: str) -> str:
    """``name`` when it is usable as a directory name under the models root; GpufleetError (bad_args) if not."""
    if not name or name in (".", "..") or "/" in name or name.startswith(".") or "\0" in name:
        raise GpufleetError(
            f"model name {name!r} is not usable as a directory name: use letters, digits, '-', '_' or '.', "
            "not starting with '.' and without '/'",
            failure_class="bad_args",
        )
    return name


def model_path(models_root: str | None, name: str) -> str:
    """Where model_sync puts model ``name`` under ``models_root`` (its ``path`` result): ``<models_root>/<name>``."""
    return os.path.join(os.path.abspath(models_root or DEFAULT_MODELS_ROOT), check_name(name))


def is_under(path: str, base: str) -> bool:
    """Whether ``path`` is ``base`` or lies below it (compared as written: resolve symlinks first where they
    matter)."""
    return path == base or path.startswith(base.rstrip("/") + "/")


# A revision id is one directory name: letters, digits, '_' and '-' only (no dot: ``<name>.<key>`` staging and trash
# entries stay unambiguous), at most 64 characters.
REVISION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LEGACY_REVISION = "legacy"  # the files of a flat (pre-revision) install, at <models_root>/<name> itself
_PATTERN_KEYS = ("allow_patterns", "ignore_patterns")


def _digest(obj: Any, n: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:n]


def revision_id(identity: Mapping[str, Any]) -> str:
    """The id of the weights an identity (model_sync's manifest identity) describes, usable as a directory name.

    hub: the commit sha (plus a digest of allow/ignore patterns when given: another file selection is other weights);
    url: ``url-`` and the checksum's hex, else a digest of the masked URL (and of the whole URL when it held a secret);
    s3: ``s3-`` and a digest of the bucket/prefix, the endpoint and the digest of every object's (key, ETag, size);
    local: ``local-`` and a digest of the resolved path, ``link`` and every file's name, size and mtime (a changed
    checkpoint is a new revision)."""
    source = identity.get("source")
    if source == "hf":
        sha = str(identity.get("commit") or "")
        if not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise ValueError(f"hub revision without a 40-hex commit: {sha!r}")
        patterns = {k: identity.get(k) for k in _PATTERN_KEYS if identity.get(k)}
        return f"{sha}-{_digest(patterns, 8)}" if patterns else sha
    if source == "url":
        checksum = str(identity.get("checksum") or "")
        if checksum:
            return "url-" + checksum.split(":", 1)[-1].lower()[:40]
        return "url-" + _digest([identity.get("url"), identity.get("url_digest")], 16)
    if source == "s3":
        # the digest of every (key, ETag, size) under the prefix (s3.objects_digest), with where it was listed
        return "s3-" + _digest([identity.get("s3_url"), identity.get("endpoint_url"), identity.get("objects")], 24)
    if source == "local":
        return "local-" + _digest([identity.get("src"), bool(identity.get("link")), identity.get("source_files")], 16)
    raise ValueError(f"unknown model source {source!r}")


def check_revision_id(revision: str) -> str:
    """``revision`` when it is a usable revision directory name; ValueError if not."""
    if not REVISION_ID_RE.match(revision or "") or revision == LEGACY_REVISION:
        raise ValueError(f"revision id {revision!r} must be 1-64 letters, digits, '_' or '-'")
    return revision


def revision_path(models_root: str | None, name: str, revision: str) -> str:
    """Where model_sync installs revision ``revision`` of model ``name``: ``<models_root>/<name>/<revision>``."""
    return os.path.join(model_path(models_root, name), check_revision_id(revision))


LORAS_DIR = "loras"


def lora_root(models_root: str | None, model: str) -> str:
    """Where model_sync puts the LoRA adapters of model ``model``: ``<models_root>/<model>/loras``, itself a models
    root (``<lora_root>/<adapter>/<revision_id>``, with its own ``.gpufleet`` manifests). No revision id is ``loras``
    (hub commits are hex, the others carry a prefix), so it never collides with a revision directory."""
    return os.path.join(model_path(models_root, model), LORAS_DIR)


def lora_path(models_root: str | None, model: str, adapter: str, revision: str) -> str:
    """``<models_root>/<model>/loras/<adapter>/<revision>``: one revision of a LoRA adapter of ``model``."""
    return os.path.join(lora_root(models_root, model), check_name(adapter), check_revision_id(revision))


def uses(mount_source: str, path: str) -> bool:
    """Whether a container mounting ``mount_source`` uses ``path``: the same directory, one below it, or one above
    it (a container of a flat install mounts ``<models_root>/<name>``, which holds the revision directories)."""
    a, b = mount_source.rstrip("/") or "/", path.rstrip("/") or "/"
    return is_under(a, b) or is_under(b, a)
