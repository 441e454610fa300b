# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""LoRA adapters from the hub, beside their base model (issue #19).

model_sync's ``lora_modules: [{name, repo_id, revision}]`` syncs each adapter with the hub source into
``<models_root>/<model>/loras/<name>/<commit>`` (``layout.lora_path``): ``<models_root>/<model>/loras`` is a models root
of its own, so every adapter gets what a model gets - revisions, the manifest no-op, staging, validation (for an
adapter: adapter_config.json and its weights), fsync and the atomic swap, the collection of unused revisions.

vllm_container's ``lora_modules`` entries may name an adapter the same way (``repo_id``, ``revision``) instead of a
``path``: ``resolve_params`` finds, on the host, the revision model_sync installed beside the container's model
(from its manifest) and turns the entry into ``{name, path}``; the path holds the commit, so a new adapter commit
changes the container's config hash and rolls it. Entries with a ``path`` stay exactly as they were (same hash).
"""

from __future__ import annotations

import os
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import hub
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import revisions as revs
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import store as fs
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import sync as model_sync
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.layout import (
    LORAS_DIR,
    REVISION_ID_RE,
    check_name,
    lora_root,
    model_path,
)

# What an adapter's sync takes over from the model's options (the hub connection and the run's limits).
_INHERITED = ("token", "hf_endpoint", "download_backend", "max_workers", "lock_timeout", "keep_revisions", "force")


def check_entries(entries: Any, who: str = "lora_modules") -> list[dict[str, Any]]:
    """The entries when each has a usable name, repo_id and revision and no name repeats; bad_args otherwise."""
    out, seen = [], set()
    for i, lo in enumerate(entries or []):
        if not isinstance(lo, dict) or not lo.get("name") or not lo.get("repo_id"):
            raise GpufleetError(
                f"{who}[{i}] needs name and repo_id (and revision, default main)", failure_class="bad_args"
            )
        try:
            check_name(str(lo["name"]))
        except GpufleetError as err:
            raise GpufleetError(f"{who}[{i}].name: {err.msg}", failure_class="bad_args") from None
        hub.check_repo_id(lo["repo_id"])
        hub.check_revision(lo.get("revision") or "main")
        if lo["name"] in seen:
            raise GpufleetError(f"{who}: the adapter name {lo['name']!r} is given twice", failure_class="bad_args")
        seen.add(lo["name"])
        out.append({"name": lo["name"], "repo_id": lo["repo_id"], "revision": lo.get("revision") or "main"})
    return out


def sync_adapters(p: dict[str, Any], check_mode: bool) -> list[dict[str, Any]]:
    """Sync every adapter of ``p["lora_modules"]`` beside model ``p["name"]``; one result per adapter."""
    entries = check_entries(p.get("lora_modules"))
    if not entries:
        return []
    base = model_path(p.get("models_root"), p["name"])
    if os.path.islink(base):
        raise GpufleetError(
            f"model {p['name']} is a link install of an older release ({base} is a symlink): adapters are not written "
            "into a checkpoint that is not ours; sync the model once more (a new revision) first",
            failure_class="bad_args",
        )
    root = lora_root(p.get("models_root"), p["name"])
    out = []
    for lo in entries:
        q = {k: p.get(k) for k in _INHERITED if p.get(k) is not None}
        q.update(name=lo["name"], source="hf", repo_id=lo["repo_id"], revision=lo["revision"], models_root=root)
        q.update(validate=True, adapter=True, state="present")
        res = model_sync.sync(q, check_mode=check_mode)
        out.append({**lo, "commit": res.get("commit"), "revision_id": res.get("revision_id"), "path": res["path"],
                    "changed": bool(res.get("changed"))})  # fmt: skip
    return out


def run(p: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """model_sync with its adapters: the model first, then each adapter beside it (state present)."""
    if p.get("state", "present") != "absent":
        check_entries(p.get("lora_modules"))  # before anything is fetched
    return add_adapters(p, model_sync.sync(p, check_mode=check_mode), check_mode)


def add_adapters(p: dict[str, Any], res: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """``res`` (model ``p["name"]``'s model_sync result) with its adapters synced beside it (fleet_apply's step)."""
    if p.get("lora_modules") and p.get("state", "present") != "absent":
        res["lora_modules"] = sync_adapters(p, check_mode)
        if any(lo["changed"] for lo in res["lora_modules"]):
            res["changed"] = True
            res["msg"] = f"{res.get('msg') or ''}; LoRA adapters synced".lstrip("; ")
    return res


# ---------------------------------------------------------------- vllm_container's side


def installed(model: str, name: str, repo_id: str, revision: str) -> str:
    """The directory of adapter ``name`` (from ``repo_id`` at ``revision``: a branch, tag or the commit) that
    model_sync installed beside the model directory ``model`` (a revision directory or a flat install)."""
    model = os.path.normpath(model)
    cands = [os.path.join(os.path.dirname(model), LORAS_DIR), os.path.join(model, LORAS_DIR)]
    for root in cands:
        # the current revision first (a branch or tag means the newest synced), then any still installed (a commit)
        current = fs.read_manifest(root, name)
        others = sorted(revs.read_all(root, name).values(), key=lambda m: -float(m.get("synced_at") or 0))
        for m in [current, *others] if current else others:
            if m.get("repo_id") != repo_id or revision not in (m.get("revision"), m.get("commit")):
                continue
            rev = m.get("revision_id")
            path = os.path.join(root, name, rev) if isinstance(rev, str) and REVISION_ID_RE.match(rev) else None
            if path and fs.manifest_matches_disk(m, path):
                return path
    raise GpufleetError(
        f"LoRA adapter {name} ({repo_id}@{revision}) is not synced beside the model {model}: run "
        f"gpufleet.vllm.model_sync with lora_modules [{{name: {name}, repo_id: {repo_id}, revision: {revision}}}] first",
        failure_class="lora_missing",
    )


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    """vllm_container's params with every ``lora_modules`` entry as ``{name, path}``: a ``repo_id`` entry is resolved
    to the adapter revision model_sync installed beside the model (``installed``)."""
    loras = params.get("lora_modules")
    if not loras:
        return params
    out = []
    for i, lo in enumerate(loras):
        if not isinstance(lo, dict):
            out.append(lo)
            continue
        if lo.get("path"):
            out.append({"name": lo.get("name"), "path": lo["path"]})
            continue
        if not lo.get("repo_id"):
            raise GpufleetError(
                f"lora_modules[{i}] needs path, or repo_id (synced by model_sync)", failure_class="bad_args"
            )
        model = params.get("model") or ""
        if not model.startswith("/"):
            raise GpufleetError(
                f"lora_modules[{i}] names a hub adapter ({lo['repo_id']}): the model must be a directory on the host "
                "(model_sync's path) for its adapters to be found beside it",
                failure_class="bad_args",
            )
        hub.check_repo_id(lo["repo_id"])
        path = installed(model, check_name(str(lo.get("name"))), lo["repo_id"], lo.get("revision") or "main")
        out.append({"name": lo["name"], "path": path})
    return {**params, "lora_modules": out}
