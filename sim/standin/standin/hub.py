"""Model resolution like vLLM + huggingface_hub: a local directory with config.json, the HF cache, or a download
of config.json from HF_ENDPOINT. Errors carry the wording of the real libraries."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ENDPOINT = "https://huggingface.co"


class HubError(Exception):
    """exc_type: the real exception class name; text: its message (multi-line)."""

    def __init__(self, exc_type: str, text: str) -> None:
        super().__init__(text)
        self.exc_type = exc_type
        self.text = text


@dataclass
class Resolved:
    model: str
    path: Path | None  # the directory holding config.json
    config: dict[str, Any] = field(default_factory=dict)
    downloaded: bool = False
    local: bool = False


def hub_cache_dir(download_dir: str | None = None) -> Path:
    if download_dir:
        return Path(download_dir)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def _token(explicit: str | None) -> str | None:
    if explicit and explicit is not True:
        return str(explicit)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return os.environ[var]
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    tok = Path(home) / "token"
    if tok.is_file():
        return tok.read_text().strip() or None
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def request_id() -> str:
    return "Root=1-" + uuid.uuid4().hex[:8] + "-" + uuid.uuid4().hex[:24]


def gated_error(repo: str, url: str) -> HubError:
    return HubError(
        "huggingface_hub.errors.GatedRepoError",
        f"401 Client Error. (Request ID: {request_id()})\n\n"
        f"Cannot access gated repo for url {url}.\n"
        f"Access to model {repo} is restricted. You must have access to it and be authenticated to access it. "
        "Please log in.",
    )


def not_found_error(url: str, status: int = 404) -> HubError:
    return HubError(
        "huggingface_hub.errors.RepositoryNotFoundError",
        f"{status} Client Error. (Request ID: {request_id()})\n\n"
        f"Repository Not Found for url: {url}.\n"
        "Please make sure you specified the correct `repo_id` and `repo_type`.\n"
        "If you are trying to access a private or gated repo, make sure you are authenticated. "
        "For more details, see https://huggingface.co/docs/huggingface_hub/authentication",
    )


def revision_error(url: str, revision: str) -> HubError:
    return HubError(
        "huggingface_hub.errors.RevisionNotFoundError",
        f"404 Client Error. (Request ID: {request_id()})\n\nRevision Not Found for url: {url}.\nInvalid rev id: {revision}",
    )


def invalid_model_error(model: str) -> HubError:
    return HubError(
        "ValueError",
        f"Invalid repository ID or local directory specified: '{model}'.\n"
        "Please verify the following requirements:\n"
        "1. Provide a valid Hugging Face repository ID.\n"
        "2. Specify a local directory that contains a recognized configuration file.\n"
        "   - For Hugging Face models: ensure the presence of a 'config.json'.\n"
        "   - For Mistral models: ensure the presence of a 'params.json'.",
    )


def offline_error() -> HubError:
    return HubError(
        "huggingface_hub.errors.LocalEntryNotFoundError",
        "Cannot find the requested files in the disk cache and outgoing traffic has been disabled. "
        "To enable hf.co look-ups and downloads online, set 'local_files_only' to False.",
    )


def connection_error() -> HubError:
    return HubError(
        "huggingface_hub.errors.LocalEntryNotFoundError",
        "An error happened while trying to locate the file on the Hub and we cannot find the requested files in "
        "the local cache. Please check your connection and try again or make sure your Internet connection is on.",
    )


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1


def _from_cache(cache: Path, repo: str, revision: str) -> Path | None:
    base = cache / ("models--" + repo.replace("/", "--"))
    ref = base / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snap = base / "snapshots" / commit
    if (snap / "config.json").is_file():
        return snap
    return None


def _download(cache: Path, repo: str, revision: str, token: str | None, timeout: float = 10.0) -> Path:
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    url = f"{endpoint}/{repo}/resolve/{revision}/config.json"
    req = urllib.request.Request(url, headers={"User-Agent": "vllm-standin; huggingface_hub"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read()
            commit = resp.headers.get("X-Repo-Commit") or hashlib.sha1(data).hexdigest()
            etag = (resp.headers.get("X-Linked-Etag") or resp.headers.get("ETag") or "").strip('"').removeprefix("W/")
    except urllib.error.HTTPError as e:
        code = (e.headers.get("X-Error-Code", "") if e.headers else "") or ""
        if code in ("RepoNotFound", "RepositoryNotFound"):
            raise not_found_error(url, e.code) from None
        if code == "GatedRepo" or e.code in (401, 403):
            raise gated_error(repo, url) from None
        if code == "RevisionNotFound":
            raise revision_error(url, revision) from None
        if code == "EntryNotFound":
            raise invalid_model_error(repo) from None
        if e.code == 404:
            raise not_found_error(url, e.code) from None
        raise HubError("requests.exceptions.HTTPError", f"{e.code} Server Error for url: {url}") from None
    except (urllib.error.URLError, OSError, TimeoutError):
        raise connection_error() from None
    try:
        json.loads(data)
    except ValueError:
        raise invalid_model_error(repo) from None
    base = cache / ("models--" + repo.replace("/", "--"))
    blob = base / "blobs" / (etag or hashlib.sha256(data).hexdigest())
    snap = base / "snapshots" / commit
    try:
        blob.parent.mkdir(parents=True, exist_ok=True)
        snap.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / "config.json"
        if not link.exists():
            link.symlink_to(os.path.relpath(blob, snap))
        (base / "refs").mkdir(exist_ok=True)
        if revision != commit:
            (base / "refs" / revision).write_text(commit)
        return snap
    except OSError:
        # A read-only cache: keep the file in a temp snapshot so startup still works.
        tmp = Path("/tmp/standin-hub") / repo / commit
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "config.json").write_bytes(data)
        return tmp


def resolve(
    model: str,
    revision: str | None = None,
    download_dir: str | None = None,
    hf_token: str | None = None,
) -> Resolved:
    """Resolve `model` like vLLM does; raises HubError with the real error's type and text."""
    revision = revision or "main"
    p = Path(os.path.expanduser(model))
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise invalid_model_error(model)
        return Resolved(model, p, _read_config(cfg), local=True)
    if _looks_like_path(model) or p.exists():
        raise invalid_model_error(model)
    cache = hub_cache_dir(download_dir)
    snap = _from_cache(cache, model, revision)
    if snap:
        return Resolved(model, snap, _read_config(snap / "config.json"))
    if _offline():
        raise offline_error()
    snap = _download(cache, model, revision, _token(hf_token))
    return Resolved(model, snap, _read_config(snap / "config.json"), downloaded=True)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
