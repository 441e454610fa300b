# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The monitoring files on the monitoring host: reading the current target files, checking the configuration and
rules with promtool, and writing what differs (content, mode, owner) atomically."""

from __future__ import annotations

import glob
import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._files import write_atomic

SECRET_DIFF = "<credentials file: content not shown>\n"
# The kinds of file: V(targets), V(rules), V(config_full), V(config_fragment), V(dashboard), V(credentials).
YAML_KINDS = ("rules", "config_full", "config_fragment")


@dataclass
class OutFile:
    """A file the module manages. A YAML file (``kind`` in YAML_KINDS) carries its ``document`` (data) and gets its
    ``content`` once rendered (on the controller); the others carry their content from the start."""

    path: str
    kind: str
    mode: str
    content: str | None = None
    document: Any = None


@dataclass
class Applied:
    """What apply_files did (or would do in check mode)."""

    changed: bool
    files: list[dict[str, Any]]  # {"path", "kind", "changed"}
    diff: list[dict[str, str]]
    reload_needed: bool
    validated: list[str] = field(default_factory=list)
    promtool: str | None = None


def read_target_files(targets_dir: str, job_name: str) -> dict[str, list[Any]]:
    """The entries of the current target files of ``job_name`` and its auth jobs, per job (unreadable or malformed
    files are left out: they are rewritten anyway)."""
    out: dict[str, list[Any]] = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(targets_dir), f"{glob.escape(job_name)}*.json"))):
        job = os.path.basename(path)[: -len(".json")]
        if job != job_name and not job.startswith(f"{job_name}-auth"):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                entries = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(entries, list):
            out[job] = entries
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise GpufleetError(f"{path}: cannot read it ({err})") from err


def _ids(owner: str | None, group: str | None) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(owner).pw_uid if owner else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError as err:
        raise GpufleetError(f"owner/group: {err.args[0]} does not exist on the monitoring host") from err
    return uid, gid


def _meta_changed(path: str, mode: int, uid: int, gid: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    return (st.st_mode & 0o7777) != mode or (uid >= 0 and st.st_uid != uid) or (gid >= 0 and st.st_gid != gid)


def _fix_meta(path: str, mode: int, uid: int, gid: int) -> None:
    os.chmod(path, mode)
    if uid >= 0 or gid >= 0:
        os.chown(path, uid, gid)


def promtool_check(promtool: str, what: str, kind: str, content: str, syntax_only: bool = False) -> None:
    """Run ``promtool check <what>`` on ``content`` (in a temporary file); GpufleetError with its output if bad."""
    fd, tmp = tempfile.mkstemp(prefix=".gpufleet-check-", suffix=".yml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        cmd = [promtool, "check", what] + (["--syntax-only"] if syntax_only else []) + [tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    finally:
        os.unlink(tmp)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).replace(tmp, f"<{kind}>").strip()
        raise GpufleetError(f"promtool check {what} refused the generated {kind}: {out}", promtool_output=out)


def find_promtool(path: str | None) -> str | None:
    """The promtool to use: ``path`` (an error when not found), else the one on PATH (None when none)."""
    if path:
        found = shutil.which(path)
        if not found:
            raise GpufleetError(f"promtool: {path} not found on the monitoring host")
        return found
    return shutil.which("promtool")


def _check_written_config(tool: str, path: str) -> None:
    proc = subprocess.run([tool, "check", "config", path], capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip()
        raise GpufleetError(
            f"promtool check config {path} failed after writing (a referenced file is missing or unreadable?): {out}",
            promtool_output=out,
        )


def apply_files(
    files: list[OutFile],
    *,
    check_mode: bool,
    validate: bool = True,
    promtool: str | None = None,
    owner: str | None = None,
    group: str | None = None,
    secret_files: Iterable[str] = (),
) -> Applied:
    """Write ``files`` (every one with its content) where their content, mode or owner differ; validate the
    Prometheus config and rules with promtool (when found and ``validate``) before anything is replaced.
    ``secret_files`` are paths whose content never shows in the diff."""
    missing = [f.path for f in files if f.content is None]
    if missing:
        raise GpufleetError(f"internal error: {', '.join(missing)} not rendered")
    uid, gid = _ids(owner, group)
    secret = set(secret_files)
    tool = find_promtool(promtool) if validate else None
    pending: list[tuple[OutFile, str, bool, bool]] = []
    before: dict[str, str] = {}
    for f in files:
        content = str(f.content)
        current = _read(f.path)
        before[f.path] = current or ""
        content_changed = current != content
        meta = _meta_changed(f.path, int(f.mode, 8), uid, gid) if not content_changed else False
        pending.append((f, content, content_changed, meta))
    validated: list[str] = []
    if tool:
        for f, content, content_changed, _meta in pending:
            if not content_changed:
                continue
            if f.kind == "rules":
                promtool_check(tool, "rules", "rules file", content)
                validated.append(f.path)
            elif f.kind.startswith("config"):
                promtool_check(tool, "config", "prometheus config", content, syntax_only=True)
                validated.append(f.path)
    out_files, diff = [], []
    reload_needed = False
    for f, content, content_changed, meta in pending:
        changed = content_changed or meta
        if changed and not check_mode:
            if content_changed:
                write_atomic(f.path, content, int(f.mode, 8), uid=uid, gid=gid)
            else:
                _fix_meta(f.path, int(f.mode, 8), uid, gid)
        if content_changed:
            hidden = f.path in secret
            diff.append(
                {
                    "before_header": f.path,
                    "after_header": f.path,
                    "before": SECRET_DIFF if hidden else before[f.path],
                    "after": SECRET_DIFF if hidden else content,
                }
            )
        if content_changed and (f.kind == "rules" or f.kind.startswith("config")):
            reload_needed = True
        out_files.append({"path": f.path, "kind": f.kind, "changed": changed})
    config = next((f for f, _t, _c, _m in pending if f.kind == "config_full"), None)
    if tool and not check_mode and config is not None and reload_needed:
        _check_written_config(tool, config.path)
    return Applied(
        changed=any(f["changed"] for f in out_files),
        files=out_files,
        diff=diff,
        reload_needed=reload_needed,
        validated=validated,
        promtool=tool,
    )
