# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Schema of the fleet inventory: ``gpufleet_deployments`` (group vars) and the ``gpufleet_*`` host vars.

``validate_deployments()`` and ``validate_host_vars()`` check everything first and raise ONE ``GpufleetError`` that
lists every problem (deployment or host, field, what is allowed), then return the input normalized: defaults
filled, shorthands expanded, so the placement and the roles read one shape. Secret values are never echoed.
docs/inventory.md documents the same schema for people.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import validate as container_validate
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.spec import SMOKE_ENDPOINTS, SMOKE_PROMPT_MAX
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.spec import argument_spec as _container_spec
from ansible_collections.gpufleet.vllm.plugins.module_utils._duration import FORMAT as DURATION_FORMAT
from ansible_collections.gpufleet.vllm.plugins.module_utils._duration import INFINITE, duration_hours
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.fit import (
    DEFAULT_UTILIZATION,
    DTYPE_BYTES,
    gpus_per_replica,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._image.build import parse_requirements
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import hub, s3
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.layout import DEFAULT_MODELS_ROOT
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.revisions import DEFAULT_KEEP
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.url import parse_checksum

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
GPU_UUID_RE = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]+$")

DEFAULT_PORT = 8000
DEFAULT_GPU_MEMORY_UTILIZATION = DEFAULT_UTILIZATION  # vLLM's, from _gpu/fit.py
RUNTIMES = ("docker", "podman")
PLACEMENTS = ("spread", "binpack")
DISTRIBUTED = ("none", "ray")  # ray: a replica larger than any one host's free GPUs spans hosts (docs/ray.md)
STATES = ("present", "absent")

# Options the placement owns: setting them inside engine_options would fight the plan.
PLACEMENT_OWNED = {
    "tensor_parallel_size": "tensor_parallel_size",
    "pipeline_parallel_size": "pipeline_parallel_size",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "port": "port",
    "gpus": "gpus (with host)",
    "model": "model",
    "name": "name",
    "image": "image",
    "served_model_name": "served_model_name",
}

# vllm_container options that have a deployment field (or host var) of their own: not engine options either.
OWN_FIELDS = {
    "api_key": "api_key",
    "hf_token": "hf_token",
    "secret_env": "secret_env",
    "serve_for": "serve_for",
    "max_failed_restarts": "max_failed_restarts",
    "start_timeout": "start_timeout",
    "idle_pause_after": "idle_pause_after",
    "pin": "pin",
    "smoke_test": "smoke_test",
    "state": "state",
    "runtime": "the host var gpufleet_runtime",
    # fleet_apply sets these itself for every replica: an engine_options value would be silently replaced
    "env": "env",
    "extra_args": "extra_args",
    "lora_modules": "lora_modules",
}
# vllm_container options that fleet_apply sets for every replica from its own parameters (role variables).
APPLY_OWNED = {
    "wait": "the role (fleet_apply always waits for readiness)",
    "wait_timeout": "the role variable gpufleet_wait_timeout (fleet_apply's wait_timeout)",
    "manifest_dir": "fleet_apply's manifest_dir",
    "from_manifest": "nothing: a fleet deployment is declared in gpufleet_deployments",
    "docker_host": "the host's engine settings (fleet_apply's docker_host)",
    "reset_failed": "the variable gpufleet_reset_failed (fleet_apply's reset_failed)",
}


def engine_option_names() -> frozenset[str]:
    """The gpufleet.vllm.vllm_container options a deployment may set in engine_options (from the module's own
    options table, so the two cannot drift)."""
    return frozenset(_container_spec()) - set(PLACEMENT_OWNED) - set(OWN_FIELDS) - set(APPLY_OWNED)


# A derived image (gpufleet.vllm.vllm_image's options of the same names): built on each host from the resolved image.
IMAGE_BUILD_FIELDS = ("extra_pip_packages", "plugins", "pip_find_links", "pip_index_url", "pip_no_index")

DEPLOYMENT_FIELDS = (
    "name",
    "model",
    "model_size_bytes",
    "num_parameters",
    "model_dtype",
    "vram_mib",
    "vllm_version",
    "image",
    "engine_options",
    "extra_args",
    "lora_modules",
    "env",
    "secret_env",
    "api_key",
    "hf_token",
    "s3_credentials",
    "served_model_name",
    "replicas",
    "gpus_per_replica",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "gpu_memory_utilization",
    "gpu_sharing",
    "host",
    "gpus",
    "placement",
    "selector",
    "port",
    "port_range",
    "state",
    "serve_for",
    "max_failed_restarts",
    "start_timeout",
    "owner",
    "idle_pause_after",
    "pin",
    "log_max_size",
    "log_max_files",
    "move_from_unreachable",
    "max_unavailable",
    "max_surge",
    "smoke_test",
    "keep_revisions",
    "distributed",
    *IMAGE_BUILD_FIELDS,
)
SECRET_FIELDS = ("secret_env", "api_key", "hf_token", "s3_credentials")
# A model's S3 credentials (model_sync's options of the same names), for a model with s3 in its sources.
S3_CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")

HOST_FIELDS = (
    "gpufleet_runtime",
    "gpufleet_models_root",
    "gpufleet_allowed_model_dirs",
    "gpufleet_labels",
    "gpufleet_gpu_reservations",
    "gpufleet_used_ports",
)

_MISSING = object()
_OWNER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}")
_TIMEOUT_RE = re.compile(r"(\d+)\s*([smh]?)")
KEEP_REVISIONS_MAX = 100  # model_sync's bound (MAX_KEEP in _model/sync.py; a unit test keeps them equal)


def _lifecycle_fields(dep: Mapping[str, Any], out: dict[str, Any], problems: Any, who: str) -> None:
    """max_failed_restarts (>= 0, default 3), start_timeout (seconds, or 90s/30m/2h; default 30 min) and owner (a
    label value): the replica lifecycle on the host (docs/node_agent.md)."""
    mfr = dep.get("max_failed_restarts", 3)
    if isinstance(mfr, bool) or _as_int(mfr) is None or _as_int(mfr) < 0:
        problems.add(who, "max_failed_restarts", "must be an integer >= 0", mfr)
        mfr = 3
    out["max_failed_restarts"] = _as_int(mfr)
    raw = dep.get("start_timeout", 1800)
    m = _TIMEOUT_RE.fullmatch(str(raw).strip().lower()) if not isinstance(raw, bool) else None
    seconds = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)] if m else 0
    if seconds <= 0:
        problems.add(who, "start_timeout", "must be a positive number of seconds, or 90s, 30m, 2h", raw)
        seconds = 1800
    out["start_timeout"] = seconds
    owner = dep.get("owner")
    if owner is not None and not (isinstance(owner, str) and _OWNER_RE.fullmatch(owner)):
        problems.add(who, "owner", "must be a name of letters, digits, '_', '.', '@' or '-' (at most 63)", owner)
        owner = None
    out["owner"] = owner
    _warm_cache_fields(dep, out, problems, who)


def _warm_cache_fields(dep: Mapping[str, Any], out: dict[str, Any], problems: Any, who: str) -> None:
    """idle_pause_after (seconds, or 90s/30m/2h; None = never paused for idleness; needs engine_options.sleep_mode)
    and pin (never put to sleep by the node agent's idle pause or warm cache): docs/node_agent.md 'Idle pause'."""
    raw = dep.get("idle_pause_after")
    seconds = None
    if raw is not None:
        m = _TIMEOUT_RE.fullmatch(str(raw).strip().lower()) if not isinstance(raw, bool) else None
        seconds = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)] if m else 0
        if seconds <= 0:
            problems.add(who, "idle_pause_after", "must be a positive number of seconds, or 90s, 30m, 2h", raw)
            seconds = None
        elif not (dep.get("engine_options") or {}).get("sleep_mode"):
            problems.add(who, "idle_pause_after", "needs engine_options.sleep_mode: true (sleep level 1)", raw)
    out["idle_pause_after"] = seconds
    pin = dep.get("pin", False)
    if not isinstance(pin, bool):
        problems.add(who, "pin", "must be true or false", pin)
        pin = False
    out["pin"] = pin


def _gate_and_revision_fields(dep: Mapping[str, Any], out: dict[str, Any], problems: Problems, who: str) -> None:
    """smoke_test (the readiness gate's real request, vllm_container's option; default on) and keep_revisions (how many
    of the newest model revisions model_sync keeps on each host, 1..100, default 2). Neither rolls a replica."""
    smoke = dep.get("smoke_test")
    if isinstance(smoke, Mapping):  # on, with its request chosen: {endpoint, prompt} (only what is not a default)
        out["smoke_test"] = _smoke_request(smoke, problems, who) or True
    else:
        as_bool = True if smoke is None else _as_bool(smoke)
        if as_bool is None:
            problems.add(who, "smoke_test", "must be true, false or a mapping with endpoint and/or prompt", smoke)
            as_bool = True
        out["smoke_test"] = as_bool
    keep = dep.get("keep_revisions")
    keep_i = DEFAULT_KEEP if keep is None else _as_int(keep)
    if isinstance(keep, bool) or keep_i is None or not 1 <= keep_i <= KEEP_REVISIONS_MAX:
        problems.add(who, "keep_revisions", f"must be an integer in 1..{KEEP_REVISIONS_MAX}", keep)
        keep_i = DEFAULT_KEEP
    out["keep_revisions"] = keep_i


def _smoke_request(smoke: Mapping[str, Any], problems: Problems, who: str) -> dict[str, Any] | None:
    """``smoke_test: {endpoint, prompt}``: the gate is on, with vllm_container's ``smoke_request`` (endpoint one of
    SMOKE_ENDPOINTS, a prompt of 1..SMOKE_PROMPT_MAX characters); None when it says nothing beyond the defaults."""
    out: dict[str, Any] = {}
    for key in sorted(set(smoke) - {"endpoint", "prompt"}):
        problems.add(who, f"smoke_test.{key}", "unknown key (smoke_test takes endpoint and prompt)", smoke[key])
    endpoint = smoke.get("endpoint")
    if endpoint is not None:
        if endpoint not in SMOKE_ENDPOINTS:
            problems.add(who, "smoke_test.endpoint", f"must be one of {', '.join(SMOKE_ENDPOINTS)}", endpoint)
        elif endpoint != "auto":
            out["endpoint"] = endpoint
    prompt = smoke.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > SMOKE_PROMPT_MAX:
            problems.add(
                who,
                "smoke_test.prompt",
                f"must be a non-empty string of at most {SMOKE_PROMPT_MAX} characters",
                prompt if not isinstance(prompt, str) else f"{len(prompt)} characters",
            )
        else:
            out["prompt"] = prompt
    return out or None


_KIND = {"hf": "repo_id", "local": "path", "url": "url"}


def _log_fields(dep: Mapping[str, Any], out: dict[str, Any], problems: Any, who: str) -> None:
    """log_max_size (50m: bytes, or with k, m or g) and log_max_files (>= 1): the engine's log limits of each
    replica, as vllm_container takes them; None = vllm_container's defaults (docs/node_agent.md)."""
    size, files = dep.get("log_max_size"), dep.get("log_max_files")
    text = str(size).strip().lower()
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, (str, int)) or not container_validate.LOG_SIZE_RE.fullmatch(text)
    ):
        problems.add(who, "log_max_size", "must be a size such as 50m (bytes, or with k, m or g)", size)
        size = None
    if files is not None and (isinstance(files, bool) or _as_int(files) is None or _as_int(files) < 1):
        problems.add(who, "log_max_files", "must be an integer >= 1", files)
        files = None
    out["log_max_size"] = None if size is None else text
    out["log_max_files"] = None if files is None else _as_int(files)


class Problems:
    """Collects ``<who>: <field>: <what is allowed>`` lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, who: str, field: str, allowed: str, value: Any = _MISSING, secret: bool = False) -> None:
        line = f"{who}: {field}: {allowed}"
        if value is not _MISSING:
            line += f", got a {type(value).__name__}" if secret else f", got {_show(value)}"
        self.lines.append(line)


def _engine_option_problems(engine: Mapping[str, Any], who: str, problems: Problems) -> None:
    """The engine_options values checked as vllm_container will check them (its argument spec's types, then
    _container/validate.py's ranges, paths and secret flags), so a wrong value fails the plan, not the apply after
    removals and syncs already ran."""
    allowed = engine_option_names()
    given = {k: v for k, v in engine.items() if isinstance(k, str) and k in allowed and v is not None}
    if not given:
        return
    spec = _container_spec()
    result = ArgumentSpecValidator({k: spec[k] for k in given}).validate(dict(given))
    for message in result.error_messages:
        problems.add(who, "engine_options", message)
    if result.error_messages:
        return
    for message in container_validate.option_problems(result.validated_parameters):
        problems.add(who, "engine_options", message)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value: Any) -> int | None:
    """An int, or a string of digits (templated values may arrive as strings); None if neither."""
    if _is_int(value):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            out = float(value)
        except ValueError:
            return None
        return out if math.isfinite(out) else None
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    return None


def _str_map(value: Any, who: str, field: str, problems: Problems, secret: bool = False) -> dict[str, str]:
    """An environment-style mapping: keys are variable names, values scalars (rendered as strings)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(who, field, "must be a mapping of NAME: value", value, secret=secret)
        return {}
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            problems.add(who, f"{field}.{key}", "names must match [A-Za-z_][A-Za-z0-9_]*")
            continue
        if isinstance(val, bool):
            out[key] = "true" if val else "false"
        elif isinstance(val, (str, int, float)):
            out[key] = str(val)
        else:
            problems.add(who, f"{field}.{key}", "must be a string or a number", val, secret=secret)
    return out


def parse_port_range(value: Any) -> tuple[int, int] | None:
    """``[8000, 8099]``, ``{"start": 8000, "end": 8099}`` or ``"8000-8099"`` → (8000, 8099); None if malformed."""
    lo: Any
    hi: Any
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*[-:]\s*\d+\s*", value):
        lo, hi = re.split(r"[-:]", value)
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = value
    elif isinstance(value, Mapping) and set(value) == {"start", "end"}:
        lo, hi = value["start"], value["end"]
    else:
        return None
    lo_i, hi_i = _as_int(lo), _as_int(hi)
    if lo_i is None or hi_i is None or not (1 <= lo_i <= hi_i <= 65535):
        return None
    return lo_i, hi_i


ROLLOUT_AMOUNT = "a whole number >= 0 or a percentage of replicas such as '25%'"


def parse_rollout_amount(value: Any) -> int | str | None:
    """``max_unavailable`` / ``max_surge``: an int >= 0 or ``"N%"`` (0..100) as given; None when invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        if text.endswith("%") and text[:-1].strip().isdigit() and int(text[:-1]) <= 100:
            return f"{int(text[:-1])}%"
    return None


def parse_serve_for(value: Any) -> float | str | None:
    """Hours (float) or ``"infinite"`` (also for null); None if malformed. The format is the one of
    plugins/module_utils/_duration.py, shared with vllm_container: a bare number is hours, ``90m``/``2h``/``1d``.
    The normalised value is what the plan hands to vllm_container, unchanged."""
    try:
        hours = duration_hours(value)
    except GpufleetError:
        return None
    return INFINITE if hours is None else hours


def parse_model_source(value: Any, who: str, problems: Problems) -> dict[str, Any] | None:
    """A deployment's ``model`` field (where the weights come from) → ``{"source": "hf"|"local"|"url", "repo_id",
    "revision", "path", "url"}``, plus ``checksum`` (``sha256:<hex>``, lower case) for a URL that gives one (only
    then: the normalized model is part of the replicas' plan digest). Not the container's model argument
    (``_container/spec.py`` normalises that).

    Shorthands: ``/abs/path`` (local), ``https://…`` (url), ``s3://bucket/prefix`` (s3), ``org/name`` (Hugging Face
    hub, revision main). A model with ``sources`` (or an ``s3_url``) is an *ordered* one: ``_parse_ordered``.
    """
    allowed = (
        "must be a hub id (org/name), an absolute path, an http(s) URL, an s3:// URL, or a mapping with repo_id "
        "(+ revision), path, url or s3_url (+ sources, an order to try)"
    )
    if isinstance(value, str):
        if value.startswith("/"):
            value = {"path": value}
        elif re.match(r"^https?://", value):
            value = {"url": value}
        elif value.startswith("s3://"):
            value = {"s3_url": value}
        else:
            value = {"repo_id": value}
    if not isinstance(value, Mapping):
        problems.add(who, "model", allowed, value)
        return None
    if (
        value.get("sources") is not None
        or value.get("source") == ORDERED
        or _ORDERED_ONLY & {k for k, v in value.items() if v is not None}
    ):
        return _parse_ordered(value, who, problems)
    kinds = [k for k in ("repo_id", "path", "url") if value.get(k) is not None]
    source = value.get("source")
    if source is not None and (source not in ("hf", "local", "url") or [_KIND[source]] != kinds):
        problems.add(who, "model.source", "must be hf (with repo_id), local (with path) or url (with url)", source)
    # "source" is what normalization adds: normalized input validates again unchanged.
    unknown = sorted(set(value) - {"repo_id", "revision", "path", "url", "checksum", "source"})
    if unknown:
        problems.add(
            who,
            "model",
            f"unknown key(s) {', '.join(map(str, unknown))}; allowed: repo_id, revision, path, url, checksum",
        )
    if len(kinds) != 1:
        problems.add(who, "model", "needs exactly one of repo_id, path, url", dict(value))
        return None
    kind = kinds[0]
    out: dict[str, Any] = {"source": None, "repo_id": None, "revision": None, "path": None, "url": None}
    text = value[kind]
    if not isinstance(text, str) or not text:
        problems.add(who, f"model.{kind}", "must be a non-empty string", text)
        return None
    if kind == "repo_id":
        if not REPO_ID_RE.match(text):
            problems.add(who, "model.repo_id", "must look like org/name", text)
        revision = value.get("revision", "main")
        if not isinstance(revision, str) or not revision:
            problems.add(who, "model.revision", "must be a branch, tag or commit (string)", revision)
            revision = "main"
        out.update(source="hf", repo_id=text, revision=revision)
    elif kind == "path":
        if not text.startswith("/"):
            problems.add(who, "model.path", "must be an absolute path on the host", text)
        if value.get("revision") is not None:
            problems.add(who, "model.revision", "only applies to repo_id (hub) models")
        out.update(source="local", path=text.rstrip("/") or "/")
    else:
        if not re.match(r"^https?://", text):
            problems.add(who, "model.url", "must be an http:// or https:// URL", text)
        out.update(source="url", url=text)
    checksum = value.get("checksum")
    if checksum is not None:
        if kind != "url":
            problems.add(who, "model.checksum", "only applies to url models")
        else:
            try:
                digest = parse_checksum(checksum) if isinstance(checksum, str) else None
            except GpufleetError:
                digest = None
            if digest is None:
                problems.add(who, "model.checksum", "must be sha256:<64 hex digits>", checksum)
            else:
                out["checksum"] = f"sha256:{digest.lower()}"
    return out


# A model with ``sources``: model_sync tries them in this order on each host (_model/sync.py) and reports which one
# served. Each source and the key it needs; the keys only an ordered model has; model_sync's own alias (hub -> hf).
ORDERED = "ordered"
ORDERED_SOURCES = {"local": "path", "hf_cache": "repo_id", "s3": "s3_url", "hf": "repo_id", "url": "url"}
_ORDERED_ONLY = {"sources", "s3_url", "endpoint_url", "region", "hf_cache_dir"}
_ORDERED_KEYS = ("repo_id", "revision", "path", "url", "checksum", "s3_url", "endpoint_url", "region", "hf_cache_dir")
_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")


def _parse_ordered(value: Mapping[str, Any], who: str, problems: Problems) -> dict[str, Any] | None:
    """A model that model_sync brings onto each host from the first of ``sources`` that can serve it (``local``,
    ``hf_cache``, ``s3``, ``hub``/``hf``, ``url``; an ``s3_url`` alone means ``[s3]``) → ``{"source": "ordered",
    "sources": [...], ...}`` with every key of ``_ORDERED_KEYS`` (None when not given). Each listed source needs its
    key, and a key no listed source uses is refused (it would be silently ignored otherwise)."""
    unknown = sorted(set(value) - {*_ORDERED_KEYS, "sources", "source"})
    if unknown:
        problems.add(
            who, "model", f"unknown key(s) {', '.join(map(str, unknown))}; allowed: sources, {', '.join(_ORDERED_KEYS)}"
        )
    if value.get("source") not in (None, ORDERED):
        problems.add(who, "model.source", f"must be {ORDERED} (or left out) with sources", value.get("source"))
    raw = value.get("sources")
    if raw is None:
        raw = ["s3"]
    order: list[str] = []
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        problems.add(who, "model.sources", "must be a non-empty list such as [local, hf_cache, s3, hub]", raw)
        return None
    for name in raw:
        canon = "hf" if name == "hub" else name
        if canon not in ORDERED_SOURCES:
            problems.add(who, "model.sources", f"{name!r} is not one of local, hf_cache, s3, hub, url", raw)
        elif canon in order:
            problems.add(who, "model.sources", f"names {name!r} twice (hub and hf are the same source)", raw)
        else:
            order.append(canon)
    out: dict[str, Any] = {"source": ORDERED, "sources": order, **{k: value.get(k) for k in _ORDERED_KEYS}}
    for source in order:
        if out[ORDERED_SOURCES[source]] in (None, ""):
            problems.add(who, f"model.{ORDERED_SOURCES[source]}", f"is required by source {source} in sources")
    used = {ORDERED_SOURCES[s] for s in order}
    used |= {"revision"} if "repo_id" in used else set()
    used |= {"checksum"} if "url" in used else set()
    used |= {"endpoint_url", "region"} if "s3" in order else set()
    used |= {"hf_cache_dir"} if "hf_cache" in order else set()
    for key in _ORDERED_KEYS:
        if out[key] is not None and key not in used:
            problems.add(who, f"model.{key}", f"is used by no source in sources {raw}: add its source or drop it")
    for key in _ORDERED_KEYS:
        if out[key] is not None and not isinstance(out[key], str):
            problems.add(who, f"model.{key}", "must be a string", out[key])
            return None
    if out["repo_id"] is not None:
        if not REPO_ID_RE.match(out["repo_id"]):
            problems.add(who, "model.repo_id", "must look like org/name", out["repo_id"])
        out["revision"] = out["revision"] or "main"
    if out["path"] is not None:
        if not out["path"].startswith("/"):
            problems.add(who, "model.path", "must be an absolute path on the host", out["path"])
        out["path"] = out["path"].rstrip("/") or "/"
    if out["url"] is not None and not re.match(r"^https?://", out["url"]):
        problems.add(who, "model.url", "must be an http:// or https:// URL", out["url"])
    if out["checksum"] is not None:
        try:
            digest = parse_checksum(out["checksum"])
        except GpufleetError:
            digest = None
        if digest is None:
            problems.add(who, "model.checksum", "must be sha256:<64 hex digits>", out["checksum"])
        else:
            out["checksum"] = f"sha256:{digest.lower()}"
    for key, check in (("s3_url", s3.parse_url), ("endpoint_url", s3.check_endpoint)):
        if out[key] is not None:
            try:
                check(out[key])
            except GpufleetError as err:
                problems.add(who, f"model.{key}", err.msg)
    if out["region"] is not None and not _REGION_RE.match(out["region"]):
        problems.add(who, "model.region", "must be a region name such as us-east-1 or auto (R2)", out["region"])
    if out["hf_cache_dir"] is not None and not out["hf_cache_dir"].startswith("/"):
        problems.add(
            who, "model.hf_cache_dir", "must be the absolute path of a Hugging Face hub cache", out["hf_cache_dir"]
        )
    return out


def _s3_credentials(value: Any, model: Mapping[str, Any] | None, who: str, problems: Problems) -> dict[str, str] | None:
    """``s3_credentials`` (a secret: values never in a message): ``aws_access_key_id`` and ``aws_secret_access_key``
    (+ ``aws_session_token``) for model_sync's s3 source; only with a model whose sources hold s3. Without it the
    host's own credentials serve (boto3's chain: AWS_* environment, ~/.aws files, an instance role)."""
    if value is None:
        return None
    what = "must be a mapping with aws_access_key_id and aws_secret_access_key (+ aws_session_token): vault variables"
    if not isinstance(value, Mapping):
        problems.add(who, "s3_credentials", what, value, secret=True)
        return None
    unknown = sorted(str(k) for k in set(value) - set(S3_CREDENTIAL_KEYS))
    if unknown:
        problems.add(
            who, "s3_credentials", f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(S3_CREDENTIAL_KEYS)}"
        )
    out: dict[str, str] = {}
    for key in S3_CREDENTIAL_KEYS:
        v = value.get(key)
        if v is None and key != "aws_session_token":
            problems.add(who, f"s3_credentials.{key}", "is required (use a vault variable)")
        elif v is not None and (not isinstance(v, str) or not v):
            problems.add(
                who, f"s3_credentials.{key}", "must be a non-empty string (use a vault variable)", v, secret=True
            )
        elif v is not None:
            out[key] = v
    if "s3" not in ((model or {}).get("sources") or []):
        problems.add(who, "s3_credentials", "only applies to a model with s3 in its sources (model.s3_url)")
    return out or None


def _normalize_lora(value: Any, who: str, problems: Problems) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(
            who, "lora_modules", "must be a list of {name, path} or {name, repo_id[, revision]} (or 'name=path')", value
        )
        return []
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        field = f"lora_modules[{i}]"
        if isinstance(item, str) and "=" in item:
            name, path = item.split("=", 1)
            item = {"name": name, "path": path}
        if not isinstance(item, Mapping):
            problems.add(
                who, field, "must be {name, path[, size_bytes]}, {name, repo_id[, revision]} or 'name=path'", item
            )
            continue
        unknown = sorted(set(item) - set(LORA_KEYS))
        if unknown:
            problems.add(who, field, f"unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(LORA_KEYS)}")
        name, path = item.get("name"), item.get("path")
        if not isinstance(name, str) or not NAME_RE.match(name):
            problems.add(who, f"{field}.name", "must be a name of letters, digits, '.', '_' or '-'", name)
        elif name in seen:
            problems.add(who, f"{field}.name", f"duplicate LoRA name {name!r}")
        else:
            seen.add(name)
        hub_entry = _hub_lora(item, who, field, problems)
        if hub_entry is None and (not isinstance(path, str) or not path.startswith("/")):
            problems.add(who, f"{field}.path", "must be an absolute path on the host", path)
        size = item.get("size_bytes")
        if size is not None and (_as_int(size) is None or _as_int(size) < 0):  # type: ignore[operator]
            problems.add(who, f"{field}.size_bytes", "must be an integer >= 0", size)
            size = None
        size = _as_int(size) if size is not None else None
        out.append({"name": name, **(hub_entry or {"path": path}), "size_bytes": size})
    return out


# A LoRA adapter is a directory on the host (path) or a hub repo (repo_id, revision) that model_sync syncs beside the
# model (_model/lora.py) and vllm_container resolves to the revision it installed.
LORA_KEYS = ("name", "path", "repo_id", "revision", "size_bytes")


def _hub_lora(item: Mapping[str, Any], who: str, field: str, problems: Problems) -> dict[str, Any] | None:
    """``{repo_id, revision}`` of a hub adapter entry (revision default main), None for a path entry."""
    if item.get("repo_id") is None and item.get("revision") is None:
        return None
    if item.get("path") is not None:
        problems.add(who, field, "give path (a directory on the host) or repo_id (a hub adapter), not both")
    repo_id, revision = item.get("repo_id"), item.get("revision", "main")
    try:
        hub.check_repo_id(repo_id)
        hub.check_revision(revision)
    except GpufleetError as err:
        problems.add(who, f"{field}.repo_id", err.msg)
    return {"repo_id": repo_id, "revision": revision}


def image_build(dep: Mapping[str, Any]) -> dict[str, Any] | None:
    """A validated deployment's derived image (vllm_image's build options), None when it asks for none."""
    if not dep.get("extra_pip_packages") and not dep.get("plugins"):
        return None
    return {k: dep.get(k) for k in IMAGE_BUILD_FIELDS}


def _normalize_image_build(dep: Mapping[str, Any], who: str, problems: Problems) -> dict[str, Any]:
    """The derived image a deployment asks for (issue #19): vllm_image's build options, packages normalized and
    sorted (the same declaration gives the same plan digest)."""
    out: dict[str, Any] = {}
    for field in ("extra_pip_packages", "plugins", "pip_find_links"):
        value = dep.get(field)
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.add(who, field, "must be a list of strings", value)
            value = []
        if field != "extra_pip_packages":
            for path in value:
                if not path.startswith("/"):
                    problems.add(who, field, "must list absolute paths on the host", path)
        out[field] = list(value)
    try:
        out["extra_pip_packages"] = parse_requirements(out["extra_pip_packages"])
    except GpufleetError as err:
        problems.add(who, "extra_pip_packages", str(err))
    index_url = dep.get("pip_index_url")
    if index_url is not None and (not isinstance(index_url, str) or not index_url.startswith(("http://", "https://"))):
        problems.add(who, "pip_index_url", "must be an http(s) URL of a pip index", index_url)
        index_url = None
    no_index = _as_bool(dep.get("pip_no_index", False))
    if no_index is None:
        problems.add(who, "pip_no_index", "must be a boolean", dep.get("pip_no_index"))
    out.update(pip_index_url=index_url, pip_no_index=bool(no_index))
    if not out["extra_pip_packages"] and not out["plugins"]:
        given = [f for f in IMAGE_BUILD_FIELDS[2:] if out[f]]
        if given:
            problems.add(who, given[0], "is a pip option of a derived image: set extra_pip_packages or plugins too")
    return out


def _int_field(
    dep: Mapping[str, Any], field: str, who: str, problems: Problems, minimum: int, default: int | None
) -> int | None:
    value = dep.get(field)
    if value is None:
        return default
    out = _as_int(value)
    if out is None or out < minimum:
        problems.add(who, field, f"must be an integer >= {minimum}", value)
        return default
    return out


def gpu_ref(value: Any) -> int | str | None:
    """A GPU reference: an index (int or digits) or a UUID string (GPU-…/MIG-…)."""
    as_int = _as_int(value)
    if as_int is not None:
        return as_int if as_int >= 0 else None
    if isinstance(value, str) and GPU_UUID_RE.match(value.strip()):
        return value.strip()
    return None


def validate_deployment(dep: Any, position: int, problems: Problems) -> dict[str, Any] | None:
    """Check and normalize one deployment; problems are appended, never raised."""
    if not isinstance(dep, Mapping):
        problems.add(
            f"gpufleet_deployments[{position}]", "(entry)", "must be a mapping with at least name and model", dep
        )
        return None
    name = dep.get("name")
    if isinstance(name, str) and NAME_RE.match(name):
        who = name
    else:
        who = f"gpufleet_deployments[{position}]"
        problems.add(
            who, "name", "is required: letters, digits, '.', '_' or '-' (at most 63, first a letter or digit)", name
        )
    unknown = sorted(str(k) for k in dep if k not in DEPLOYMENT_FIELDS)
    for key in unknown:
        problems.add(who, key, f"unknown field; allowed: {', '.join(DEPLOYMENT_FIELDS)}")

    out: dict[str, Any] = {"name": name}

    # State first: an absent deployment only needs its name.
    state = dep.get("state", "present")
    if state not in STATES:
        problems.add(who, "state", "must be one of present, absent", state)
        state = "present"
    out["state"] = state

    if "model" not in dep or dep.get("model") is None:
        if state == "present":
            problems.add(who, "model", "is required: a hub id (org/name), an absolute path or a URL")
        out["model"] = None
    else:
        out["model"] = parse_model_source(dep["model"], who, problems)

    out["model_size_bytes"] = _int_field(dep, "model_size_bytes", who, problems, 0, None)
    out["num_parameters"] = _int_field(dep, "num_parameters", who, problems, 0, None)
    out["vram_mib"] = _int_field(dep, "vram_mib", who, problems, 1, None)
    model_dtype = dep.get("model_dtype")
    if model_dtype is not None and str(model_dtype).lower().removeprefix("torch.") not in DTYPE_BYTES:
        problems.add(who, "model_dtype", f"must be one of {', '.join(sorted(DTYPE_BYTES))}", model_dtype)
        model_dtype = None
    out["model_dtype"] = model_dtype

    # Image: a vLLM version (resolved by vllm_image) or an explicit image, not both.
    version, image = dep.get("vllm_version"), dep.get("image")
    if version is not None and image is not None:
        problems.add(who, "vllm_version", "set either vllm_version or image, not both")
    if version is not None and (not isinstance(version, (str, int, float)) or isinstance(version, bool)):
        problems.add(who, "vllm_version", "must be a version string like 0.10.2 or latest", version)
        version = None
    if image is not None and (not isinstance(image, str) or not image or " " in image):
        problems.add(who, "image", "must be an image reference like vllm/vllm-openai:v0.10.2", image)
        image = None
    out["vllm_version"] = str(version) if version is not None else (None if image else "latest")
    out["image"] = image

    engine = dep.get("engine_options")
    if engine is None:
        engine = {}
    if not isinstance(engine, Mapping):
        problems.add(who, "engine_options", "must be a mapping of vllm_container engine options", engine)
        engine = {}
    for key in engine:
        if not isinstance(key, str):
            problems.add(who, f"engine_options.{key}", "option names must be strings")
        elif key in PLACEMENT_OWNED:
            problems.add(who, f"engine_options.{key}", f"is set by the deployment field {PLACEMENT_OWNED[key]}")
        elif key in OWN_FIELDS:
            problems.add(who, f"engine_options.{key}", f"is set by the deployment field {OWN_FIELDS[key]}")
        elif key in APPLY_OWNED:
            problems.add(who, f"engine_options.{key}", f"is set by {APPLY_OWNED[key]}")
        elif key not in engine_option_names():
            problems.add(
                who,
                f"engine_options.{key}",
                "is not an option of gpufleet.vllm.vllm_container (put other vLLM flags in extra_args); allowed: "
                + ", ".join(sorted(engine_option_names())),
            )
    _engine_option_problems(engine, who, problems)
    out["engine_options"] = dict(engine)

    extra = dep.get("extra_args")
    if extra is None:
        extra = []
    if not isinstance(extra, list) or not all(
        isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in extra
    ):
        problems.add(who, "extra_args", "must be a list of strings (appended last to the vllm serve command)", extra)
        extra = []
    out["extra_args"] = [str(a) for a in extra]
    for message in container_validate.secret_flag_problems(out["extra_args"]):
        problems.add(who, "extra_args", message)

    out["lora_modules"] = _normalize_lora(dep.get("lora_modules"), who, problems)
    source = (out["model"] or {}).get("source")
    if source == "local" and any(m.get("repo_id") for m in out["lora_modules"]):
        problems.add(
            who,
            "lora_modules",
            "hub adapters (repo_id) are synced beside a model that model_sync installs (a hub or URL model); "
            "for a local model give each adapter's path",
        )
    out.update(_normalize_image_build(dep, who, problems))
    out["env"] = _str_map(dep.get("env"), who, "env", problems)
    out["secret_env"] = _str_map(dep.get("secret_env"), who, "secret_env", problems, secret=True)
    for field in ("api_key", "hf_token"):
        value = dep.get(field)
        if value is not None and (not isinstance(value, str) or not value):
            problems.add(who, field, "must be a non-empty string (use a vault variable)", value, secret=True)
            value = None
        out[field] = value
    out["s3_credentials"] = _s3_credentials(dep.get("s3_credentials"), out["model"], who, problems)
    overlap = sorted(set(out["env"]) & set(out["secret_env"]))
    if overlap:
        problems.add(who, "secret_env", f"{', '.join(overlap)} also set in env; set each variable in one of them")

    served = dep.get("served_model_name")
    if isinstance(served, str):
        served = [served]
    if served is not None and (
        not isinstance(served, list) or not served or not all(isinstance(s, str) and s for s in served)
    ):
        problems.add(who, "served_model_name", "must be a string or a non-empty list of strings", served)
        served = None
    out["served_model_name"] = served

    # GPUs per replica = tensor x pipeline parallel size.
    replicas = _int_field(dep, "replicas", who, problems, 0, 1)
    tp = _int_field(dep, "tensor_parallel_size", who, problems, 1, None)
    pp = _int_field(dep, "pipeline_parallel_size", who, problems, 1, 1)
    gpr = _int_field(dep, "gpus_per_replica", who, problems, 1, None)

    host = dep.get("host")
    gpus_pin = dep.get("gpus")
    gpus_all = gpus_pin in ("all", ["all"])  # every GPU of the host each replica gets (a whole host per replica)
    if gpus_all:
        gpus_pin = None
    tp_given = tp
    if host is not None and (not isinstance(host, str) or not host):
        problems.add(who, "host", "must be an inventory host name", host)
        host = None
    pinned_gpus: list[int | str] | None = None
    if gpus_pin is not None:
        if host is None:
            problems.add(who, "gpus", "pins GPUs on one host: set host as well")
        if not isinstance(gpus_pin, list) or not gpus_pin:
            problems.add(who, "gpus", "must be all or a non-empty list of GPU indices or UUIDs", gpus_pin)
        else:
            refs = [gpu_ref(g) for g in gpus_pin]
            if any(r is None for r in refs):
                problems.add(who, "gpus", "must be a list of GPU indices (0, 1, …) or UUIDs (GPU-…)", gpus_pin)
            elif len(set(refs)) != len(refs):
                problems.add(who, "gpus", "lists a GPU twice", gpus_pin)
            else:
                pinned_gpus = refs  # type: ignore[assignment]
    if pinned_gpus is not None and gpr is None and tp is None and replicas:
        if len(pinned_gpus) % replicas:
            problems.add(who, "gpus", f"{len(pinned_gpus)} GPUs do not split evenly over {replicas} replicas")
        else:
            gpr = len(pinned_gpus) // replicas
    if gpr is None:
        gpr = gpus_per_replica(tp, pp)
    if tp is None:
        if gpr % (pp or 1):
            problems.add(who, "gpus_per_replica", f"must be a multiple of pipeline_parallel_size ({pp})", gpr)
            tp = 1
        else:
            tp = gpr // (pp or 1)
    if gpus_per_replica(tp, pp) != gpr:
        problems.add(
            who,
            "gpus_per_replica",
            f"must equal tensor_parallel_size x pipeline_parallel_size = {tp} x {pp} = {gpus_per_replica(tp, pp)}",
            gpr,
        )
    if pinned_gpus is not None and replicas is not None and len(pinned_gpus) != gpr * replicas:
        problems.add(
            who,
            "gpus",
            f"must list replicas x gpus_per_replica = {replicas} x {gpr} = {replicas * gpr} GPUs",
            gpus_pin,
        )
    out.update(
        replicas=replicas,
        gpus_per_replica=gpr,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        host=host,
        gpus="all" if gpus_all else pinned_gpus,
    )
    if gpus_all:  # GPUs per replica: the host's count (placement), tensor parallel = that / pipeline unless set
        if dep.get("gpus_per_replica") is not None:
            problems.add(who, "gpus_per_replica", "is the host's GPU count with gpus: all; set tensor_parallel_size")
        if _as_bool(dep.get("gpu_sharing")):
            problems.add(who, "gpu_sharing", "gpus: all reserves whole hosts; it cannot share them")
        out.update(tensor_parallel_size=tp_given, gpus_per_replica=None)

    util = dep.get("gpu_memory_utilization", DEFAULT_GPU_MEMORY_UTILIZATION)
    util_f = _as_float(util)
    if util_f is None or not (0 < util_f <= 1):
        problems.add(who, "gpu_memory_utilization", "must be a number in (0, 1], e.g. 0.9", util)
        util_f = DEFAULT_GPU_MEMORY_UTILIZATION
    out["gpu_memory_utilization"] = util_f

    for field in ("gpu_sharing", "move_from_unreachable"):
        value = dep.get(field)
        if value is None:
            out[field] = False if field == "gpu_sharing" else None
            continue
        as_bool = _as_bool(value)
        if as_bool is None:
            problems.add(who, field, "must be true or false", value)
        out[field] = bool(as_bool)

    placement = dep.get("placement", "spread")
    if placement not in PLACEMENTS:
        problems.add(who, "placement", "must be one of spread, binpack", placement)
        placement = "spread"
    out["placement"] = placement

    distributed = dep.get("distributed", "none")
    if distributed not in DISTRIBUTED:
        problems.add(who, "distributed", "must be one of none, ray", distributed)
        distributed = "none"
    if distributed == "ray":
        for field, why in (("host", "pins one host"), ("gpus", "pins GPUs"), ("gpu_sharing", "shares GPUs")):
            if out.get(field):
                problems.add(who, "distributed", f"ray spans hosts with whole GPUs; {field} {why}: drop one of them")
    out["distributed"] = distributed

    selector = dep.get("selector")
    norm_selector: dict[str, list[str]] = {}
    if selector is not None:
        if not isinstance(selector, Mapping):
            problems.add(who, "selector", "must be a mapping of label: value (or list of accepted values)", selector)
        else:
            for key, val in selector.items():
                vals = val if isinstance(val, list) else [val]
                if not isinstance(key, str) or not vals or not all(_label_value(v) is not None for v in vals):
                    problems.add(
                        who, f"selector.{key}", "must be a label value (string or number) or a list of them", val
                    )
                    continue
                norm_selector[key] = sorted({_label_value(v) for v in vals})  # type: ignore[arg-type]
    out["selector"] = norm_selector

    port, port_range = dep.get("port"), dep.get("port_range")
    if port is not None and port_range is not None:
        problems.add(who, "port", "set either port or port_range, not both")
    out["port"] = None
    out["port_range"] = None
    if port_range is not None:
        parsed = parse_port_range(port_range)
        if parsed is None:
            problems.add(
                who, "port_range", "must be [first, last] or 'first-last' with 1 <= first <= last <= 65535", port_range
            )
        else:
            out["port_range"] = list(parsed)
    elif port is not None:
        port_i = _as_int(port)
        if port_i is None or not (1 <= port_i <= 65535):
            problems.add(who, "port", "must be an integer in 1..65535", port)
        else:
            out["port"] = port_i
    else:
        out["port"] = DEFAULT_PORT

    _log_fields(dep, out, problems, who)
    serve_for = parse_serve_for(dep.get("serve_for"))
    if serve_for is None:
        problems.add(who, "serve_for", f"must be {DURATION_FORMAT}", dep.get("serve_for"))
        serve_for = "infinite"
    out["serve_for"] = serve_for
    _lifecycle_fields(dep, out, problems, who)
    _gate_and_revision_fields(dep, out, problems, who)

    # Rolling update (docs/rollouts.md): Kubernetes' meaning. max_surge defaults to 1; max_unavailable None = "auto"
    # (0 when every rolling replica can surge on its host, else 1), resolved by _fleet/rollout.py with the GPUs.
    for field, default in (("max_unavailable", None), ("max_surge", 1)):
        raw = dep.get(field)
        amount = default if raw is None else parse_rollout_amount(raw)
        if raw is not None and amount is None:
            problems.add(who, field, f"must be {ROLLOUT_AMOUNT}", raw)
            amount = default
        out[field] = amount
    if out["max_unavailable"] in (0, "0%") and out["max_surge"] in (0, "0%"):
        problems.add(
            who, "max_surge", "and max_unavailable are both 0: a rollout could never replace a replica; set one above 0"
        )
    return out


def _label_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def _raise(problems: Problems, what: str) -> None:
    if problems.lines:
        count = len(problems.lines)
        head = f"{what}: {count} problem{'s' if count > 1 else ''}"
        raise GpufleetError(head + "\n  - " + "\n  - ".join(problems.lines), problems=list(problems.lines))


def validate_deployments(deployments: Any) -> list[dict[str, Any]]:
    """Validate and normalize ``gpufleet_deployments``; one GpufleetError lists every problem."""
    problems = Problems()
    if deployments is None:
        return []
    if not isinstance(deployments, list):
        problems.add("gpufleet_deployments", "(value)", "must be a list of deployments", deployments)
        _raise(problems, "gpufleet_deployments is invalid")
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, dep in enumerate(deployments):
        norm = validate_deployment(dep, i, problems)
        if norm is None:
            continue
        name = norm["name"]
        if isinstance(name, str):
            if name in seen:
                problems.add(name, "name", f"is used twice (entries {seen[name]} and {i}); names must be unique")
            seen.setdefault(name, i)
        out.append(norm)
    _raise(problems, "gpufleet_deployments is invalid")
    return sorted(out, key=lambda d: d["name"])


def normalize_reservations(value: Any, who: str, problems: Problems) -> list[dict[str, Any]]:
    """GPU reservations → ``[{"gpu": index|uuid, "memory_mib": int|None (whole GPU), "reason": str}]``.

    Accepted: a list of GPU indices/UUIDs (whole GPUs), or of ``{gpu, memory_mib, reason}`` mappings, or a mapping
    ``{gpu: reason}``.
    """
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = [{"gpu": k, "reason": v if isinstance(v, str) else ""} for k, v in value.items()]
    if not isinstance(value, list):
        problems.add(
            who, "gpufleet_gpu_reservations", "must be a list of GPU indices/UUIDs or {gpu, memory_mib, reason}", value
        )
        return []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        field = f"gpufleet_gpu_reservations[{i}]"
        if not isinstance(item, Mapping):
            item = {"gpu": item}
        unknown = sorted(set(item) - {"gpu", "memory_mib", "reason"})
        if unknown:
            problems.add(who, field, f"unknown key(s) {', '.join(map(str, unknown))}; allowed: gpu, memory_mib, reason")
        ref = gpu_ref(item.get("gpu"))
        if ref is None:
            problems.add(who, f"{field}.gpu", "must be a GPU index or UUID", item.get("gpu"))
            continue
        mem = item.get("memory_mib")
        mem_i = None
        if mem is not None:
            mem_i = _as_int(mem)
            if mem_i is None or mem_i < 0:
                problems.add(who, f"{field}.memory_mib", "must be an integer >= 0 (omit to reserve the whole GPU)", mem)
                continue
        reason = item.get("reason") or ""
        out.append({"gpu": ref, "memory_mib": mem_i, "reason": str(reason)})
    return out


def validate_host_vars(hostvars: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate the ``gpufleet_*`` vars of each host; returns ``{host: {used_ports, runtime, models_root,
    allowed_model_dirs, labels, reservations}}`` and raises one GpufleetError listing every problem."""
    problems = Problems()
    out: dict[str, dict[str, Any]] = {}
    for host in sorted(hostvars):
        hv = hostvars[host] or {}
        runtime = hv.get("gpufleet_runtime", "docker") or "docker"
        if runtime not in RUNTIMES:
            problems.add(host, "gpufleet_runtime", "must be one of docker, podman", runtime)
            runtime = "docker"
        root = hv.get("gpufleet_models_root", DEFAULT_MODELS_ROOT) or DEFAULT_MODELS_ROOT
        if not isinstance(root, str) or not root.startswith("/"):
            problems.add(host, "gpufleet_models_root", "must be an absolute path", root)
            root = DEFAULT_MODELS_ROOT
        root = root.rstrip("/") or "/"
        dirs = hv.get("gpufleet_allowed_model_dirs")
        if dirs is None:
            dirs = [root]
        if not isinstance(dirs, list) or not all(isinstance(d, str) and d.startswith("/") for d in dirs):
            problems.add(host, "gpufleet_allowed_model_dirs", "must be a list of absolute paths", dirs)
            dirs = [root]
        labels = hv.get("gpufleet_labels") or {}
        norm_labels: dict[str, str] = {}
        if not isinstance(labels, Mapping):
            problems.add(host, "gpufleet_labels", "must be a mapping of label: value", labels)
        else:
            for key, val in labels.items():
                text = _label_value(val)
                if not isinstance(key, str) or text is None:
                    problems.add(host, f"gpufleet_labels.{key}", "must be a string or number", val)
                    continue
                norm_labels[key] = text
        ports = hv.get("gpufleet_used_ports") or []
        if not isinstance(ports, list) or not all(1 <= (_as_int(p) or 0) <= 65535 for p in ports):
            problems.add(host, "gpufleet_used_ports", "must be a list of port numbers (1..65535)", ports)
            ports = []
        out[host] = {
            "used_ports": sorted({_as_int(p) for p in ports}),  # type: ignore[type-var]
            "runtime": runtime,
            "models_root": root,
            "allowed_model_dirs": sorted({d.rstrip("/") or "/" for d in dirs}),
            "labels": norm_labels,
            "reservations": normalize_reservations(hv.get("gpufleet_gpu_reservations"), host, problems),
        }
    _raise(problems, "gpufleet host vars are invalid")
    return out


def deployment_secrets(deployments: Any) -> dict[str, dict[str, Any]]:
    """The secret fields (``api_key``, ``hf_token``, ``secret_env``, ``s3_credentials``) of each declared deployment, by name: what
    ``fleet_apply`` needs next to a plan that never holds them. Deployments without a secret are left out; the
    schema itself is checked by ``validate_deployments`` (the preflight), not here."""
    out: dict[str, dict[str, Any]] = {}
    for dep in deployments if isinstance(deployments, list) else []:
        if not isinstance(dep, Mapping) or not isinstance(dep.get("name"), str):
            continue
        found = {k: dep[k] for k in SECRET_FIELDS if dep.get(k) not in (None, "", {})}
        if found:
            out[dep["name"]] = found
    return out
