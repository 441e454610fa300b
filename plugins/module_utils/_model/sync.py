# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The state machine of gpufleet.vllm.model_sync: put validated model weights at
<models_root>/<name>/<revision_id>, atomically, and answer changed=false cheaply when they are already there.

present:  resolve the source (hf: revision → commit; local: allowlisted real path + its files; url: url + checksum)
          → the revision id of that identity (layout.revision_id)
          → no-op if the current manifest records the same source and every recorded file still has its size and
            mtime (a flat install of the same identity, synced before revisions existed, is kept as it is)
          → an installed revision of that identity becomes the current one again without a fetch
          → check mode stops here with what would be fetched and how many bytes
          → per-model flock → free-space check → fetch into a staging dir on the same filesystem (resumable)
          → validate → rename into its own revision directory (never one a container mounts) → manifests
          → remove the revisions no managed container uses beyond the newest keep_revisions (revisions.py).
absent:   refuse when a running gpufleet-managed container mounts the model (unless force), then remove it.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import fsync_dir
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import hf_cache, hub, s3
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import revisions as revs
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import store as fs
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import url as urlsrc
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.layout import (
    DEFAULT_MODELS_ROOT,
    LEGACY_REVISION,
    REVISION_ID_RE,
    check_name,
    model_path,
    revision_id,
    uses,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.validate import (
    validate_adapter_dir,
    validate_model_dir,
)

# How often the progress watcher starts the disk writeback of the files being written (fs.start_writeback).
WRITEBACK_INTERVAL = 0.25


def argument_spec() -> dict[str, Any]:
    """The model_sync module's argument spec (also used to validate the model_sync part of a host's plan)."""
    from ansible.module_utils.basic import env_fallback

    return dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        source=dict(type="str", choices=list(SOURCES)),
        sources=dict(type="list", elements="str"),
        models_root=dict(type="path", default=DEFAULT_MODELS_ROOT),
        repo_id=dict(type="str"),
        revision=dict(type="str", default="main"),
        token=dict(type="str", no_log=True, fallback=(env_fallback, ["HF_TOKEN"])),
        hf_endpoint=dict(type="str"),
        allow_patterns=dict(type="list", elements="str"),
        ignore_patterns=dict(type="list", elements="str"),
        max_workers=dict(type="int", default=8),
        download_backend=dict(type="str", default="auto", choices=["auto", "builtin", "huggingface_hub"]),
        src=dict(type="path"),
        allowed_dirs=dict(type="list", elements="path", default=[]),
        link=dict(type="bool", default=False),
        url=dict(type="str"),
        checksum=dict(type="str"),
        validate=dict(type="bool", default=True),
        require_tokenizer=dict(type="bool", default=True),
        force=dict(type="bool", default=False),
        lock_timeout=dict(type="int", default=600),
        keep_revisions=dict(type="int", default=revs.DEFAULT_KEEP),
        s3_url=dict(type="str"),
        endpoint_url=dict(type="str"),
        region=dict(type="str"),
        aws_access_key_id=dict(type="str", no_log=True),
        aws_secret_access_key=dict(type="str", no_log=True),
        aws_session_token=dict(type="str", no_log=True),
        hf_cache_dir=dict(type="path"),
        lora_modules=dict(
            type="list",
            elements="dict",
            options=dict(
                name=dict(type="str", required=True),
                repo_id=dict(type="str", required=True),
                revision=dict(type="str", default="main"),
            ),
        ),
    )


# The sources and what each needs; ``sources`` (an order to try) may also say ``hub`` for ``hf``.
SOURCES = {"hf": "repo_id", "local": "src", "url": "url", "s3": "s3_url", "hf_cache": "repo_id"}
SOURCE_ALIASES = {"hub": "hf"}


REQUIRED_IF: list[tuple[Any, ...]] = [
    ("state", "present", ["source", "sources"], True),
    ("source", "hf", ["repo_id"]),
    ("source", "local", ["src"]),
    ("source", "url", ["url"]),
    ("source", "s3", ["s3_url"]),
    ("source", "hf_cache", ["repo_id"]),
]


def _result(path: str, source: str, **kw: Any) -> dict[str, Any]:
    out = {
        "path": path,
        "source": source,
        "revision": None,
        "commit": None,
        "files": [],
        "size_bytes": 0,
        "changed": False,
        "validation": None,
        "revision_id": None,
    }
    out.update(kw)
    return out


def _identity(p: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What a manifest must match for a no-op (besides the files on disk)."""
    ident: dict[str, Any] = {"source": p["source"]}
    if p["source"] == "hf":
        ident.update(repo_id=p["repo_id"], allow_patterns=p.get("allow_patterns"))
        ident["ignore_patterns"] = p.get("ignore_patterns")
    elif p["source"] == "local":
        ident.update(src=extra["src"], link=bool(p.get("link")))
    else:
        # The manifest is world-readable: it keeps the masked URL, and a digest of the whole URL only where the
        # mask hid something and no checksum pins the content (a re-signed URL with the same checksum is a no-op).
        ident.update(url=urlsrc.mask(p["url"]), checksum=p.get("checksum"))
        if urlsrc.has_secret(p["url"]) and not p.get("checksum"):
            ident["url_digest"] = urlsrc.digest(p["url"])
    ident.update(extra)
    return ident


def installed_path(root: str, name: str, manifest: dict[str, Any] | None) -> str:
    """Where the files a manifest records lie: its revision directory, or <root>/<name> for a flat install."""
    rev = (manifest or {}).get("revision_id")
    if isinstance(rev, str) and REVISION_ID_RE.match(rev) and rev != LEGACY_REVISION:
        return os.path.join(root, name, rev)
    return os.path.join(root, name)


def _matches(manifest: dict[str, Any] | None, ident: dict[str, Any], path: str) -> bool:
    """The manifest records this identity and its files are on disk at ``path`` as recorded (a link install: the
    link still points at the source)."""
    if not manifest or any(manifest.get(k) != v for k, v in ident.items()):
        return False
    if os.path.islink(path) and ident.get("src") and os.path.realpath(path) != ident["src"]:
        return False
    return fs.manifest_matches_disk(manifest, path)


def _manifest_noop(manifest: dict[str, Any] | None, ident: dict[str, Any], root: str, name: str) -> bool:
    return _matches(manifest, ident, installed_path(root, name, manifest))


def _noop_result(root: str, name: str, p: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    res = _result(
        installed_path(root, name, manifest),
        p["source"],
        revision=p.get("revision") if p["source"] == "hf" else None,
        commit=manifest.get("commit"),
        files=sorted(manifest.get("files", {})),
        size_bytes=manifest.get("size_bytes", 0),
        validation=manifest.get("validation"),
        revision_id=manifest.get("revision_id"),
        msg="already in sync",
    )
    return res


def _diff(before: dict[str, Any] | None, rev: str | None, commit: str | None, files: list[str]) -> dict[str, Any]:
    b = {}
    if before:
        b = {"revision_id": before.get("revision_id"), "commit": before.get("commit")}
        b["files"] = sorted(before.get("files", {}))
    return {"before": b, "after": {"revision_id": rev, "commit": commit, "files": sorted(files)}}


def _reuse(
    p: dict[str, Any], root: str, name: str, rev: str, ident: dict[str, Any], manifest: dict[str, Any] | None
) -> dict[str, Any] | None:
    """An installed revision of this identity that is not the current one: it becomes current (no fetch)."""
    if p.get("force"):
        return None
    rec = revs.read(root, name, rev)
    path = os.path.join(root, name, rev)
    if rec is None or not _matches(rec, ident, path):
        return None
    res = _noop_result(root, name, p, rec)
    res.update(changed=True, msg=f"revision {rev} of {name} was installed already; it is the current one again")
    res["diff"] = _diff(manifest, rev, rec.get("commit"), list(rec.get("files") or {}))
    return res


def _make_current(p: dict[str, Any], root: str, name: str, res: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    if check_mode:
        return res
    with fs.model_lock(root, name, float(p.get("lock_timeout", 600))):
        rec = revs.read(root, name, str(res["revision_id"]))
        if rec is not None:
            fs.write_manifest(root, name, {k: v for k, v in rec.items() if k != "version"})
        _collect(p, root, name, res, check_mode, locked=True)
    return res


def _collect(
    p: dict[str, Any], root: str, name: str, res: dict[str, Any], check_mode: bool, locked: bool = False
) -> None:
    """Remove the revisions nobody uses beyond the newest keep_revisions (revisions.collect); reported as
    ``removed_revisions`` (and changed). No engine is asked while there are no more revisions than that."""
    keep = int(p.get("keep_revisions") or revs.DEFAULT_KEEP)
    if revs.count(root, name) <= keep:
        return
    if locked or check_mode:
        out = revs.collect(root, name, keep, res.get("revision_id") or LEGACY_REVISION, check_mode)
    else:
        with fs.model_lock(root, name, float(p.get("lock_timeout", 600))):
            out = revs.collect(root, name, keep, res.get("revision_id") or LEGACY_REVISION, check_mode)
    res["removed_revisions"] = out["removed"]
    if out.get("skipped"):
        res["collect_skipped"] = out["skipped"]
    if out["removed"]:
        res["changed"] = True
        verb = "would remove" if check_mode else "removed"
        res["msg"] = f"{res.get('msg') or ''}; {verb} unused revisions {', '.join(out['removed'])}".lstrip("; ")


def _prepare_model_dir(root: str, name: str, old: dict[str, Any] | None) -> None:
    """Make <root>/<name> a directory that can hold revision directories. A flat install (synced before revisions)
    stays where it is, recorded as revision ``legacy`` so that its files go once no container uses them; a link
    install's symlink (the checkpoint is not ours) is dropped unless a container mounts that very path."""
    flat = os.path.join(root, name)
    if os.path.islink(flat):
        mounts = revs.container_mounts() or []
        users = sorted({c for c, srcs in mounts for s in srcs if uses(s, flat)})
        if users:
            raise GpufleetError(
                f"model {name} is a link install mounted as {flat} by container(s) {', '.join(users)}: a new "
                "revision cannot be installed beside it; remove or redeploy those containers first",
                failure_class="in_use",
                mounted_by=users,
            )
        os.unlink(flat)
    elif os.path.isdir(flat):
        if old and not old.get("revision_id") and revs.read(root, name, LEGACY_REVISION) is None:
            revs.write(root, name, LEGACY_REVISION, {**old, "path": flat})
        return
    os.makedirs(flat, mode=0o755, exist_ok=True)
    fsync_dir(root)  # the new directory survives a power loss before the revision renamed into it


MAX_WORKERS = 64
MAX_LOCK_TIMEOUT = 24 * 3600
MAX_KEEP = 100
# Room left in a file name for the suffixes model_sync adds to a model name (".<key>", ".<pid>.<ns>", ".json").
MAX_NAME_BYTES = 200


def _bad(msg: str) -> GpufleetError:
    return GpufleetError(msg, failure_class="bad_args")


def _check_int(p: dict[str, Any], key: str, low: int, high: int, default: int, what: str) -> None:
    v = p.get(key, default)
    if v is None:
        return
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise _bad(f"{key} must be a whole number from {low} to {high} (got {v!r}): {what}")


def check_params(p: dict[str, Any]) -> None:
    """Refuse bad option values with one clear error (what is wrong, how to fix it) before anything on the host
    is read or changed. The module's argument spec checks types and choices; this checks ranges and shapes."""
    name = check_name(p.get("name") or "")
    if len(os.fsencode(name)) > MAX_NAME_BYTES or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise _bad(
            f"model name {name[:60]!r} is longer than {MAX_NAME_BYTES} bytes or holds a control character: use a "
            "shorter name of letters, digits, '-', '_' or '.'"
        )
    root = p.get("models_root")
    if root is not None:
        if not isinstance(root, str) or not os.path.isabs(root) or "\0" in root:
            raise _bad(
                f"models_root {root!r} is not an absolute path: give one such as {DEFAULT_MODELS_ROOT} (a relative "
                "one would depend on the directory the module happens to run in)"
            )
        if ".." in root.split("/"):
            raise _bad(f"models_root {root!r} has a '..' part: give the directory itself, e.g. {DEFAULT_MODELS_ROOT}")
    _check_int(p, "lock_timeout", 0, MAX_LOCK_TIMEOUT, 600, "seconds to wait for another run's lock on the model")
    _check_int(p, "keep_revisions", 1, MAX_KEEP, revs.DEFAULT_KEEP, "how many of the newest revisions to keep")
    if p.get("state", "present") == "absent":
        return
    _check_int(p, "max_workers", 1, MAX_WORKERS, 8, "how many files download in parallel")
    for source in _order(p):
        _check_source(p, source)


def _order(p: dict[str, Any]) -> list[str]:
    """The sources to try, in order: ``[source]``, or ``sources`` (aliases resolved); bad_args when neither or both
    are given, or ``sources`` repeats or names an unknown one."""
    if p.get("sources") and p.get("source"):
        raise _bad("give source (one) or sources (an order to try), not both")
    if not p.get("sources"):
        if p.get("source") not in SOURCES:
            raise _bad(
                f"source {p.get('source')!r} is not one of {', '.join(SOURCES)}: say where the weights come from"
            )
        return [p["source"]]
    order = [SOURCE_ALIASES.get(s, s) for s in p["sources"]]
    unknown = [s for s in order if s not in SOURCES]
    if unknown or len(set(order)) != len(order):
        raise _bad(
            f"sources {p['sources']!r}: each must be one of {', '.join([*SOURCES, *SOURCE_ALIASES])}, at most once "
            "(e.g. [local, hf_cache, s3, hub])"
        )
    return order


def _check_source(p: dict[str, Any], source: str) -> None:
    if not p.get(SOURCES[source]):
        raise _bad(f"source: {source} needs {SOURCES[source]}")
    if source in ("hf", "hf_cache"):
        hub.check_repo_id(p["repo_id"])
        hub.check_revision(p.get("revision") or "main")
        hub.endpoint_of(p.get("hf_endpoint"))
        for key in ("allow_patterns", "ignore_patterns"):
            for pat in p.get(key) or []:
                if not isinstance(pat, str) or not pat or "\0" in pat:
                    raise _bad(f"{key} holds {pat!r}: each pattern is a non-empty glob such as '*.safetensors'")
    elif source == "local":
        src = p["src"]
        if not os.path.isabs(src):
            raise _bad(f"src {src!r} is relative: give the absolute path of the checkpoint directory")
        for d in p.get("allowed_dirs") or []:
            if not isinstance(d, str) or not os.path.isabs(d) or d.rstrip("/") == "":
                raise _bad(
                    f"allowed_dirs entry {d!r} is not an absolute directory below '/': list the directories local "
                    "checkpoints may come from, e.g. /srv/checkpoints"
                )
    elif source == "s3":
        s3.parse_url(p["s3_url"])
        s3.check_endpoint(p.get("endpoint_url"))
    elif source == "url":
        urlsrc.file_name(p["url"])  # a usable http(s) URL that ends in a file name
        urlsrc.parse_checksum(p.get("checksum"))
    if source == "hf_cache" and p.get("hf_cache_dir") and not os.path.isabs(p["hf_cache_dir"]):
        raise _bad(f"hf_cache_dir {p['hf_cache_dir']!r} is relative: give the absolute path of the HF hub cache")


def sync(p: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """Run model_sync with module parameters `p`; return the module result (raises GpufleetError)."""
    check_params(p)
    name = check_name(p["name"])
    root = os.path.dirname(model_path(p.get("models_root"), name))
    if p.get("state", "present") == "absent":
        return absent(root, name, force=bool(p.get("force")), check_mode=check_mode)
    order = _order(p)
    tried: list[dict[str, str]] = []
    for source in order:
        try:
            res = _SYNC[source]({**p, "source": source}, root, name, check_mode)
        except GpufleetError as err:
            # one source alone, a mistake in the options, or another run holding the model: no other source
            if len(order) == 1 or err.details.get("failure_class") in ("bad_args", "locked"):
                raise
            tried.append(
                {"source": source, "failure_class": err.details.get("failure_class") or "error", "error": err.msg}
            )
            continue
        res["served_by"] = source
        if len(order) > 1:
            res["tried"] = tried
        break
    else:
        raise GpufleetError(
            f"no source could serve model {name}: " + "; ".join(f"{t['source']}: {t['error']}" for t in tried),
            failure_class="no_source",
            tried=tried,
        )
    if not res["changed"]:
        _collect(p, root, name, res, check_mode)  # a no-op run still lets the revisions nobody uses go
    return res


def _settle(
    p: dict[str, Any], root: str, name: str, rev: str, ident: dict[str, Any], manifest: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The answer when nothing needs fetching: the current manifest matches (no-op) or an installed revision of this
    identity becomes current again (changed, no fetch)."""
    if manifest and not p.get("force") and _manifest_noop(manifest, ident, root, name):
        return _noop_result(root, name, p, manifest)
    return _reuse(p, root, name, rev, ident, manifest)


# ---------------------------------------------------------------- hf


def _sync_hf(p: dict[str, Any], root: str, name: str, check_mode: bool) -> dict[str, Any]:
    repo_id, revision, token = p["repo_id"], p.get("revision") or "main", p.get("token") or None
    endpoint = hub.endpoint_of(p.get("hf_endpoint"))
    manifest = fs.read_manifest(root, name)
    force = bool(p.get("force"))

    # Fast no-op: one small request (none for a commit sha, none offline) and stat() calls.
    if manifest and not force:
        sha = hub.fast_resolve(endpoint, repo_id, revision, token)
        if sha is None and hub.offline() and manifest.get("revision") == revision:
            sha = manifest.get("commit")  # offline: trust what this host already has
        if sha and _manifest_noop(manifest, _identity(p, commit=sha), root, name):
            return _noop_result(root, name, p, manifest)

    sha, remote, gated, xet = hub.resolve(endpoint, repo_id, revision, token)
    allow, ignore = hub.effective_patterns(remote, p.get("allow_patterns"), p.get("ignore_patterns"))
    wanted = hub.select(remote, allow, ignore)
    if not wanted:
        raise GpufleetError(
            f"no file of {repo_id}@{revision} matches allow_patterns={allow} / ignore_patterns={ignore}",
            failure_class="bad_args",
        )
    ident = _identity(p, commit=sha)
    backend = hub.choose_backend(p.get("download_backend") or "auto", wanted, xet)
    workers = int(p.get("max_workers") or 8)  # 1..MAX_WORKERS (check_params)

    def check_access() -> None:  # gated/private content fails on the first file: find out before creating anything
        if gated:
            hub.check_access(endpoint, repo_id, sha, sorted(wanted, key=lambda f: wanted[f])[0], token)

    def fetch(staging: str) -> dict[str, Any]:
        if backend == "huggingface_hub":
            hub.download(endpoint, repo_id, sha, token, staging, allow, ignore, workers)
        else:
            hub.download_builtin(endpoint, repo_id, sha, token, staging, wanted, workers)
        for junk in (".cache", ".gpufleet-partial"):
            shutil.rmtree(os.path.join(staging, junk), ignore_errors=True)
        return {}

    return _sync_staged(
        p, root, name, check_mode, ident, wanted, f"{repo_id}@{sha[:12]}", fetch,
        extra={"revision": revision, "commit": sha},
        fetch_extra={"download_backend": backend},
        key=sha[:16],  # the staging directory of this commit: an interrupted download resumes there
        precheck=check_access,
        prepare=hub.clean_partial,
    )  # fmt: skip


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _staged_bytes(staging: str, wanted: dict[str, int]) -> int:
    return sum(s for f, s in wanted.items() if _size(os.path.join(staging, f)) == s)


def _finish(
    p: dict[str, Any],
    root: str,
    name: str,
    dest: str,
    staged: str,
    progress: fs.Progress,
    base: dict[str, Any],
    ident: dict[str, Any],
    old_manifest: dict[str, Any] | None,
    validate_path: str | None = None,
    cleanup_staged: bool = True,
) -> dict[str, Any]:
    """Validate the staged model, make it durable (fsync), swap it in, record the manifest."""
    report = None
    timings = base.setdefault("timings", {})
    if p.get("validate", True):
        progress.write(state="validating")
        t = time.monotonic()
        if p.get("adapter"):  # a LoRA adapter (lora.py): adapter_config.json and its weights, no config.json
            report = validate_adapter_dir(validate_path or staged)
        else:
            report = validate_model_dir(validate_path or staged, require_tokenizer=p.get("require_tokenizer", True))
        timings["validate"] = round(time.monotonic() - t, 3)
        if not report["ok"]:
            progress.stop("failed", error="validation failed")
            if cleanup_staged:
                fs.rmtree_any(staged)
            raise GpufleetError(
                f"model {name} failed validation, the installed one was left as it was: "
                + "; ".join(report["problems"]),
                failure_class="invalid_model",
                validation=report,
            )
    # Durable before visible: a power loss after the swap must not leave a model whose files are empty or
    # partly written (kill -9 alone cannot: the page cache survives it). The progress watcher started the
    # writeback while the bytes came in, so this mostly waits for the tail.
    progress.write(state="syncing")
    try:
        timings["fsync"] = fs.fsync_tree(staged)["seconds"]
    except OSError as err:
        progress.stop("failed", error=str(err))
        raise GpufleetError(f"could not flush {name} to disk: {err}", failure_class="swap_failed") from None
    t = time.monotonic()
    try:
        _prepare_model_dir(root, name, old_manifest)
        fs.drop_manifest(root, name)
        fs.swap_in(root, name, staged, dest)
    except GpufleetError as err:
        progress.stop("failed", error=err.msg)
        raise
    except OSError as err:
        progress.stop("failed", error=str(err))
        raise GpufleetError(f"could not swap {name} into place: {err}", failure_class="swap_failed") from None
    timings["swap"] = round(time.monotonic() - t, 3)
    files = fs.list_tree(dest)
    size = sum(f["size"] for f in files.values())
    rev = str(base["revision_id"])
    manifest = {
        **ident,
        "revision": base.get("revision"),
        "revision_id": rev,
        "path": dest,
        "files": files,
        "size_bytes": size,
        "validation": report,
        "synced_at": time.time(),
        "served_by": base.get("source"),
    }
    revs.write(root, name, rev, manifest)
    fs.write_manifest(root, name, manifest)
    progress.stop("done", bytes_done=size, bytes_total=size, commit=base.get("commit"))
    base.update(files=sorted(files), size_bytes=size, validation=report, changed=True)
    base["diff"] = _diff(old_manifest, rev, base.get("commit"), list(files))
    base["msg"] = f"synced {name} revision {rev} ({len(files)} files, {size} bytes)"
    _collect(p, root, name, base, check_mode=False, locked=True)
    return base


# ---------------------------------------------------------------- local


def _sync_local(p: dict[str, Any], root: str, name: str, check_mode: bool) -> dict[str, Any]:
    if not p.get("src"):
        raise GpufleetError("source: local needs src (the checkpoint directory)", failure_class="bad_args")
    src = fs.resolve_local_source(p["src"], p.get("allowed_dirs") or [])
    files = fs.local_files(src, p.get("allowed_dirs") or [])
    if not files:
        raise GpufleetError(f"local source {src} holds no files", failure_class="bad_source")
    total = sum(f["size"] for f in files.values())
    link = bool(p.get("link"))
    ident = _identity(p, src=src, source_files=files)
    rev = revision_id(ident)
    dest = os.path.join(root, name, rev)
    manifest = fs.read_manifest(root, name)
    settled = _settle(p, root, name, rev, ident, manifest)
    if settled is not None:
        return settled if not settled["changed"] else _make_current(p, root, name, settled, check_mode)
    base = _result(dest, "local", files=sorted(files), size_bytes=total, changed=True, src=src, link=link)
    base["revision_id"] = rev
    base["diff"] = _diff(manifest, rev, None, list(files))
    if check_mode:
        base["would_copy"] = [] if link else sorted(files)
        base["copy_bytes"] = 0 if link else total
        base["msg"] = f"would {'link' if link else 'copy'} {len(files)} files ({total} bytes) from {src}"
        return base
    os.makedirs(root, exist_ok=True)
    with fs.model_lock(root, name, float(p.get("lock_timeout", 600))):
        fs.recover(root, name)
        staging = fs.staging_dir(root, name, "local")
        shutil.rmtree(staging, ignore_errors=True)
        progress = fs.Progress(root, name)
        if link:
            os.makedirs(os.path.dirname(staging), exist_ok=True)
            os.symlink(src, staging)
            progress.write(state="linking", bytes_total=0, bytes_done=0)
            return _finish(p, root, name, dest, staging, progress, base, ident, manifest, validate_path=src)
        os.makedirs(staging)
        same_fs = os.stat(src).st_dev == os.stat(staging).st_dev
        if not same_fs:
            fs.check_free_space(staging, total, f"a copy of {src}")
        progress.watch(staging, total, writeback=WRITEBACK_INTERVAL)
        t = time.monotonic()
        try:
            counts = fs.copy_tree(src, files, staging, hardlink=same_fs, allowed_dirs=p.get("allowed_dirs") or [])
        except GpufleetError as err:
            progress.stop("failed", error=err.msg)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except OSError as err:
            progress.stop("failed", error=str(err))
            shutil.rmtree(staging, ignore_errors=True)
            raise GpufleetError(f"copy of {src} failed: {err}; the installed model was left as it was") from None
        base["copy"] = counts
        base["timings"] = {"copy": round(time.monotonic() - t, 3)}
        return _finish(p, root, name, dest, staging, progress, base, ident, manifest)


# ---------------------------------------------------------------- url


def _sync_url(p: dict[str, Any], root: str, name: str, check_mode: bool) -> dict[str, Any]:
    url = p["url"]
    shown = urlsrc.mask(url)  # what results, messages and the manifest show: no userinfo, no query string
    fname = urlsrc.file_name(url)
    expected = urlsrc.parse_checksum(p.get("checksum"))
    ident = _identity(p)
    rev = revision_id(ident)
    dest = os.path.join(root, name, rev)
    manifest = fs.read_manifest(root, name)
    settled = _settle(p, root, name, rev, ident, manifest)
    if settled is not None:
        return settled if not settled["changed"] else _make_current(p, root, name, settled, check_mode)
    size = urlsrc.remote_size(url)
    archive = urlsrc.archive_kind(fname) is not None
    base = _result(dest, "url", files=[fname], size_bytes=size or 0, changed=True, url=shown)
    base["revision_id"] = rev
    base["diff"] = _diff(manifest, rev, None, [fname])
    if check_mode:
        base["download_bytes"] = size
        base["msg"] = f"would download {shown} ({size if size is not None else 'unknown'} bytes)"
        return base
    os.makedirs(root, exist_ok=True)
    with fs.model_lock(root, name, float(p.get("lock_timeout", 600))):
        fs.recover(root, name)
        key = (expected or "nosum")[:16]
        staging = fs.staging_dir(root, name, key)
        target = os.path.join(staging, "model")
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(os.path.join(staging, "download"), exist_ok=True)
        download = os.path.join(staging, "download", fname)  # never the same path as `target`, whatever fname is
        have = _size(download + ".part") or 0
        if size is not None:
            # A first estimate (the archive and about as much again); extract_archive checks the real total of
            # the members against the free space before it writes any of them.
            fs.check_free_space(staging, (size - have) + (size if archive else 0), shown)
        progress = fs.Progress(root, name)
        progress.watch(staging, size or 0, writeback=WRITEBACK_INTERVAL)
        t = time.monotonic()
        try:
            got = urlsrc.fetch(url, download, expected, expected_size=size)
        except GpufleetError as err:  # a partial download is kept for the next run to resume
            progress.stop("failed", error=err.msg)
            raise
        except OSError as err:
            progress.stop("failed", error=str(err))
            shutil.rmtree(staging, ignore_errors=True)
            raise _fetch_failed(shown, err) from None
        try:
            names = urlsrc.materialize(download, url, target)
            base.update(sha256=got["sha256"], files=names)
            base["timings"] = {"download": round(time.monotonic() - t, 3)}
            return _finish(p, root, name, dest, target, progress, base, ident, manifest)
        except GpufleetError as err:
            progress.stop("failed", error=err.msg)
            raise
        except OSError as err:
            progress.stop("failed", error=str(err))
            raise _fetch_failed(shown, err) from None
        finally:  # installed or refused: nothing of this download stays behind
            shutil.rmtree(staging, ignore_errors=True)


def _fetch_failed(shown: str, err: OSError) -> GpufleetError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return GpufleetError(
            f"disk full while fetching {shown}: {err.strerror}; the installed model was left as it was",
            failure_class="disk_full",
        )
    return GpufleetError(
        f"fetching {shown} failed: {err.strerror or err}; the installed model was left as it was",
        failure_class="url_error",
    )


# ---------------------------------------------------------------- s3, hf_cache (s3.py, hf_cache.py)


def _sync_s3(p: dict[str, Any], root: str, name: str, check_mode: bool) -> dict[str, Any]:
    bucket, prefix = s3.parse_url(p["s3_url"])
    where = s3.shown(bucket, prefix)
    workers = int(p.get("max_workers") or 8)
    client = s3.client(p, workers)
    objects = s3.list_objects(client, bucket, prefix)  # one request per 1000 keys: also the no-op's cost
    ident = {"source": "s3", "s3_url": where, "endpoint_url": s3.check_endpoint(p.get("endpoint_url"))}
    ident["objects"] = s3.objects_digest(objects)
    files = {rel: o["size"] for rel, o in objects.items()}

    def fetch(staging: str) -> dict[str, Any]:
        return {"bytes_transferred": s3.download(client, bucket, objects, staging, workers)}

    return _sync_staged(p, root, name, check_mode, ident, files, where, fetch, extra={"s3_url": where})


def _sync_hf_cache(p: dict[str, Any], root: str, name: str, check_mode: bool) -> dict[str, Any]:
    cache = hf_cache.cache_dir(p.get("hf_cache_dir"))
    revision = p.get("revision") or "main"
    sha, snap, repo_dir = hf_cache.find_snapshot(cache, p["repo_id"], revision)
    found = hf_cache.snapshot_files(snap, repo_dir)
    allow, ignore = hub.effective_patterns(
        {f: v["size"] for f, v in found.items()}, p.get("allow_patterns"), p.get("ignore_patterns")
    )
    files = hub.select({f: v["size"] for f, v in found.items()}, allow, ignore)
    if not files:
        raise GpufleetError(f"the HF cache snapshot {snap} holds no wanted file", failure_class="not_in_cache")
    hf_cache.check_same_filesystem(repo_dir, root)
    ident = _identity({**p, "source": "hf"}, commit=sha)  # the hub's identity: the same commit is the same revision

    def fetch(staging: str) -> dict[str, Any]:
        return {"copy": hf_cache.link_into(snap, repo_dir, {f: found[f] for f in files}, staging)}

    extra = {"commit": sha, "revision": revision, "snapshot": snap}
    return _sync_staged(p, root, name, check_mode, ident, files, snap, fetch, extra=extra, need_space=False)


def _sync_staged(
    p: dict[str, Any],
    root: str,
    name: str,
    check_mode: bool,
    ident: dict[str, Any],
    files: dict[str, int],
    what: str,
    fetch: Any,
    extra: dict[str, Any],
    need_space: bool = True,
    fetch_extra: dict[str, Any] | None = None,
    key: str | None = None,
    precheck: Callable[[], None] | None = None,
    prepare: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The common path of a source that fills a staging directory (hf, s3, hf_cache): settle (no-op, reuse) →
    ``precheck()`` → check mode → lock → ``prepare(staging)`` → free space → ``fetch(staging)`` → sizes → validate,
    flush, swap (_finish). ``extra`` goes into every answer but a no-op's, ``fetch_extra`` into those that fetch (or
    would); ``key`` names the staging directory (default: from the revision id)."""
    rev = revision_id(ident)
    dest = os.path.join(root, name, rev)
    manifest = fs.read_manifest(root, name)
    settled = _settle(p, root, name, rev, ident, manifest)
    if settled is not None:
        settled.update({k: v for k, v in extra.items() if k != "snapshot"})
        return settled if not settled["changed"] else _make_current(p, root, name, settled, check_mode)
    if precheck is not None:
        precheck()
    total = sum(files.values())
    base = _result(dest, p["source"], files=sorted(files), size_bytes=total, changed=True, revision_id=rev, **extra)
    base.update(fetch_extra or {})
    base["diff"] = _diff(manifest, rev, extra.get("commit"), list(files))
    if check_mode:
        base["would_download"] = sorted(files)
        base["download_bytes"] = total if need_space else 0
        if need_space:
            base["free_bytes"] = fs.free_bytes(root)
        base["msg"] = f"would {'download' if need_space else 'hard-link'} {len(files)} files ({total} bytes) of {what}"
        return base
    os.makedirs(root, exist_ok=True)
    with fs.model_lock(root, name, float(p.get("lock_timeout", 600))):
        manifest = fs.read_manifest(root, name)  # another run may have finished while we waited
        if manifest and not p.get("force") and _manifest_noop(manifest, ident, root, name):
            return _noop_result(root, name, p, manifest)
        fs.recover(root, name)
        key = key or (rev[:64] if p["source"] != "hf_cache" else "hfc-" + rev[:40])
        path = fs.staging_path(root, name, key)
        if p.get("force") or not need_space:
            shutil.rmtree(path, ignore_errors=True)
        if prepare is not None:
            prepare(path)
        if need_space:
            already = _staged_bytes(path, files) if os.path.exists(os.path.join(path, fs.STAGING_MARKER)) else 0
            fs.check_free_space(root, total - already, what)  # before any byte is written
        staging = fs.staging_dir(root, name, key)
        progress = fs.Progress(root, name)
        progress.watch(staging, total, writeback=WRITEBACK_INTERVAL if need_space else 0.0)
        t = time.monotonic()
        try:
            base.update(fetch(staging))
            bad = sorted(f for f, size in files.items() if _size(os.path.join(staging, f)) != size)
            if bad:
                raise GpufleetError(
                    f"staged files of {what} have the wrong size: {', '.join(bad)}", failure_class="download_error"
                )
        except GpufleetError as err:
            progress.stop("failed", error=err.msg)
            raise
        except OSError as err:
            progress.stop("failed", error=str(err))
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                shutil.rmtree(staging, ignore_errors=True)
                raise GpufleetError(
                    f"disk full while fetching {what}: {err.strerror}; the installed model was left as it was",
                    failure_class="disk_full",
                ) from None
            raise GpufleetError(
                f"fetching {what} failed: {err}; the installed model was left as it was", failure_class="download_error"
            ) from None
        except BaseException:
            progress.stop("failed", error="interrupted")
            raise
        base.setdefault("timings", {})["download" if need_space else "link"] = round(time.monotonic() - t, 3)
        return _finish(p, root, name, dest, staging, progress, base, ident, manifest)


_SYNC = {"hf": _sync_hf, "local": _sync_local, "url": _sync_url, "s3": _sync_s3, "hf_cache": _sync_hf_cache}


# ---------------------------------------------------------------- absent


def mounted_by(path: str) -> list[str]:
    """Names of running (or paused) gpufleet-managed containers, docker or podman, that mount `path`, a revision
    below it, or a directory above it. Empty when no engine answers: nothing can be mounting it through them."""
    return revs.users_of(path, revs.container_mounts(running_only=True) or [])


def absent(root: str, name: str, force: bool, check_mode: bool) -> dict[str, Any]:
    dest = os.path.join(root, name)
    present = os.path.lexists(dest) or fs.read_manifest(root, name) is not None or revs.count(root, name) > 0
    res = _result(dest, "none", changed=present)
    if not present:
        res["msg"] = "not present"
        return res
    users = mounted_by(dest)
    res["mounted_by"] = users
    if users and not force:
        raise GpufleetError(
            f"model {name} is mounted by running container(s) {', '.join(users)}: stop them first or pass force=true",
            failure_class="in_use",
            mounted_by=users,
        )
    res["diff"] = {"before": {"path": dest}, "after": {}}
    if check_mode:
        res["msg"] = f"would remove {dest}"
        return res
    with fs.model_lock(root, name, 60.0):
        fs.remove_model(root, name)  # every revision: they all lie under <root>/<name>
        revs.forget(root, name)
        fs.clean_trash(root, name)
        fs.remove_staging(root, name)  # this model's staging only: not that of `qwen2.5` when removing `qwen2`
    res["msg"] = f"removed {dest}"
    return res
