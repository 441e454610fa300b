# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One declaration per option: the argument spec, the vLLM argv, the normalized spec, its hash and the diff.

``OPTIONS`` is the single table of vllm_container's options. Each entry says its Ansible type and, for engine
options, the ``vllm serve`` flag and how it is rendered (``kind``). How an option takes part in the comparison is
decided by where ``normalized_spec`` puts it: rendered into the argv (compared as a list: engine options, model,
host, port, LoRA, sleep mode, extra_args), env keys with salted value hashes (env, secret_env, api_key, hf_token),
sorted lists (gpus, mounts and caches: order never causes a recreate), plain values (runtime, image id, network, ipc,
shm_size, restart_policy, labels, model_revision when given, the log driver and limits when not the defaults), or not
at all (wait, timeouts, smoke_test, state, serve_for, ...: never a recreate).

Idempotence is decided by one value only: the sha256 of the normalized spec, stored in the ``gpufleet.config-hash``
label. Engine fields are never re-read for comparison, so how an engine reports device requests, digests or env
order back can never cause a spurious change; an env var removed from the task changes the spec and recreates.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

SPEC_VERSION = 1
MASK = "********"
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
COMPILE_CACHE_IN_CONTAINER = "/root/.cache/vllm"
# The engine's log driver and its limits: the file drivers `docker logs`/`podman logs` (and the node agent) read.
LOG_DRIVERS = ("json-file", "local", "k8s-file")
DEFAULT_LOG_DRIVER = {"docker": "json-file", "podman": "k8s-file"}
DEFAULT_LOG_MAX_SIZE = "50m"
DEFAULT_LOG_MAX_FILES = 3


@dataclass(frozen=True)
class Option:
    name: str
    type: str  # Ansible type: str, int, float, bool, list, dict, path, raw
    flag: str | None = None  # vLLM flag (engine options only)
    kind: str = "container"  # container | value | store_true | boolean_optional | nargs
    default: Any = None
    elements: str | None = None
    choices: tuple[Any, ...] | None = None
    no_log: bool | None = None  # False = said explicitly (names that look secret but are not)
    required: bool = False
    suboptions: dict[str, dict[str, Any]] | None = None


def _e(name: str, type_: str, flag: str, kind: str = "value", **kw: Any) -> Option:
    return Option(name=name, type=type_, flag=flag, kind=kind, **kw)


# The smoke request's endpoints (auto: from the argv, readiness.smoke_plan) and the longest prompt it takes.
SMOKE_ENDPOINTS = ("auto", "completions", "chat", "embeddings")
SMOKE_PROMPT_MAX = 4096
_SMOKE_SUBOPTIONS: dict[str, dict[str, Any]] = {
    "endpoint": {"type": "str", "default": "auto", "choices": list(SMOKE_ENDPOINTS)},
    "prompt": {"type": "str", "no_log": False},
}


# Engine options, in argv order. Everything here is optional (None = vLLM's default, nothing rendered).
ENGINE_OPTIONS: tuple[Option, ...] = (
    _e("served_model_name", "list", "--served-model-name", "nargs", elements="str"),
    _e("tensor_parallel_size", "int", "--tensor-parallel-size"),
    _e("pipeline_parallel_size", "int", "--pipeline-parallel-size"),
    _e("gpu_memory_utilization", "float", "--gpu-memory-utilization"),
    _e("max_model_len", "int", "--max-model-len"),
    _e("dtype", "str", "--dtype", choices=("auto", "half", "float16", "bfloat16", "float", "float32")),
    _e("quantization", "str", "--quantization"),
    _e("max_num_seqs", "int", "--max-num-seqs"),
    _e("max_num_batched_tokens", "int", "--max-num-batched-tokens", no_log=False),
    _e("kv_cache_dtype", "str", "--kv-cache-dtype"),
    _e("swap_space", "float", "--swap-space"),
    _e("cpu_offload_gb", "float", "--cpu-offload-gb"),
    _e("enforce_eager", "bool", "--enforce-eager", "store_true"),
    _e("trust_remote_code", "bool", "--trust-remote-code", "store_true"),
    _e("revision", "str", "--revision"),
    _e("tokenizer", "str", "--tokenizer", no_log=False),
    _e("seed", "int", "--seed"),
    _e("enable_prefix_caching", "bool", "--enable-prefix-caching", "boolean_optional"),
    _e("enable_chunked_prefill", "bool", "--enable-chunked-prefill", "boolean_optional"),
    _e("enable_auto_tool_choice", "bool", "--enable-auto-tool-choice", "store_true"),
    _e("tool_call_parser", "str", "--tool-call-parser"),
    _e("reasoning_parser", "str", "--reasoning-parser"),
    _e("chat_template", "str", "--chat-template"),
    _e("generation_config", "str", "--generation-config"),
    _e("max_lora_rank", "int", "--max-lora-rank"),
    _e("max_loras", "int", "--max-loras"),
)

# path, or repo_id (+ revision) of an adapter model_sync synced beside the model: the module resolves it to its path
# (_model/lora.py, resolve_params) before anything else reads the entries, which are then {name, path} only.
_LORA_SUBOPTIONS = {
    "name": {"type": "str", "required": True},
    "path": {"type": "path"},
    "repo_id": {"type": "str"},
    "revision": {"type": "str", "default": "main"},
}

CONTAINER_OPTIONS: tuple[Option, ...] = (
    Option("name", "str"),  # required unless from_manifest gives it (deployment.Deployment)
    Option("state", "str", default="started", choices=("started", "stopped", "paused", "absent", "restarted")),
    Option("runtime", "str", default="docker", choices=("docker", "podman")),
    Option("docker_host", "str"),
    Option("image", "str"),
    Option("model", "str"),
    Option("model_revision", "str"),  # model_sync's revision_id: part of the config hash
    Option("host", "str", default="0.0.0.0"),
    Option("port", "int", default=8000),
    Option("gpus", "list", elements="str"),
    Option("extra_args", "list", elements="str", default=[]),
    Option("lora_modules", "list", elements="dict", suboptions=_LORA_SUBOPTIONS),
    Option("env", "dict", default={}),
    Option("secret_env", "dict", default={}, no_log=True),
    Option("api_key", "str", no_log=True),
    Option("hf_token", "str", no_log=True),
    Option("hf_cache_dir", "path", default="/var/lib/gpufleet/hf-cache"),
    Option("compile_cache_dir", "path", default="/var/lib/gpufleet/vllm-cache"),
    Option("mounts", "list", elements="str", default=[]),
    Option("network", "str", default="host"),
    Option("ipc", "str", default="host"),
    # Another container's PID namespace ("container:<name>"): the server of a multi-host replica shares its Ray
    # head's (docs/ray.md); None: its own. In the config hash only when given (other containers keep their hash).
    Option("pid", "str"),
    Option("shm_size", "str"),
    Option("restart_policy", "str", default="unless-stopped", choices=("no", "on-failure", "always", "unless-stopped")),
    Option("log_driver", "str", choices=LOG_DRIVERS),  # None: the runtime's (DEFAULT_LOG_DRIVER)
    Option("log_max_size", "str", default=DEFAULT_LOG_MAX_SIZE),
    Option("log_max_files", "int", default=DEFAULT_LOG_MAX_FILES),
    Option("labels", "dict", default={}),
    Option("wait", "bool", default=True),
    Option("wait_timeout", "int", default=1800),
    Option("smoke_test", "bool", default=True),
    # The smoke request itself (readiness.smoke_plan): which endpoint, which prompt. Never hashed, like smoke_test.
    Option("smoke_request", "dict", suboptions=_SMOKE_SUBOPTIONS),
    Option("stop_timeout", "int", default=30),
    Option("sleep_mode", "bool", default=False),
    Option("sleep_level", "int", default=1, choices=(1, 2)),
    Option("serve_for", "raw"),  # module_utils/_duration.py: a bare number is hours, 90m / 2h / 1d, infinite
    # The lifecycle record (_container/lifecycle.py), never hashed: the crash-loop budget the node agent applies, and
    # a converge that starts a replica the agent stopped for good (its configuration unchanged).
    Option("max_failed_restarts", "int", default=3),
    Option("start_timeout", "int", default=1800),
    Option("reset_failed", "bool", default=False),
    # The warm cache (_container/warm.py; the node agent's idle pause), never hashed either: seconds without a request
    # before the agent puts the server to sleep (needs sleep_mode), and pin (never put to sleep by the agent).
    Option("idle_pause_after", "int"),
    Option("pin", "bool", default=False),
    Option("manifest_dir", "path", default="/var/lib/gpufleet/manifests"),
    Option("validate_args", "bool", default=True),
    Option("vllm_version", "str"),
    Option("prechecks", "bool", default=True),
    Option("pull", "str", default="never", choices=("never", "missing")),
    Option("from_manifest", "raw"),  # a path on the target, or the manifest itself
)

OPTIONS: tuple[Option, ...] = CONTAINER_OPTIONS + ENGINE_OPTIONS
OPTION_BY_NAME = {o.name: o for o in OPTIONS}
SECRET_ENV = {"api_key": "VLLM_API_KEY", "hf_token": "HF_TOKEN"}


def argument_spec() -> dict[str, dict[str, Any]]:
    """The module's argument spec, generated from OPTIONS."""
    spec: dict[str, dict[str, Any]] = {}
    for o in OPTIONS:
        s: dict[str, Any] = {"type": o.type}
        if o.required:
            s["required"] = True
        if o.default is not None:
            s["default"] = o.default
        if o.elements:
            s["elements"] = o.elements
        if o.choices:
            s["choices"] = list(o.choices)
        if o.no_log is not None:
            s["no_log"] = o.no_log
        if o.suboptions:
            s["options"] = o.suboptions
        spec[o.name] = s
    return spec


# ---------------------------------------------------------------------------------------------------- argv
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value).rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    return str(value)


def model_mode(entrypoint: list[str] | None) -> str:
    """``positional`` for ``vllm serve`` images, ``option`` (``--model``) for the api_server module entrypoint."""
    joined = " ".join(entrypoint or [])
    return "option" if "api_server" in joined else "positional"


def entrypoint_of(mode: str) -> str:
    """The vllm_args entrypoint of a model mode: ``serve`` (positional model) or ``api_server`` (``--model``)."""
    return "api_server" if mode == "option" else "serve"


def engine_argv(
    params: dict[str, Any],
    *,
    check_version: bool = False,
    vllm_version: str | None = None,
    entrypoint: str = "serve",
) -> list[str]:
    """The typed engine options rendered as vLLM flags, in table order.

    With ``check_version`` each flag is the one of ``vllm_version``'s flag table (vllm_args.flag_for; an unknown
    version uses the newest table): an option that version does not have raises GpufleetError (failure class
    bad_args) naming the version, the releases that have it and the replacement. Without it (validate_args: false)
    the flags of ENGINE_OPTIONS are used as they are.
    """
    argv: list[str] = []
    flag_for = None
    if check_version:
        # Imported here: the flag tables are only needed when the argv is mapped (never on a no-op converge).
        from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm.args import flag_for
    for o in ENGINE_OPTIONS:
        v = params.get(o.name)
        if v is None:
            continue
        if not o.flag:  # internal invariant: every engine option declares its flag
            raise RuntimeError(f"engine option {o.name} has no vLLM flag in ENGINE_OPTIONS")
        flag = flag_for(o.name, vllm_version, entrypoint) if flag_for is not None else o.flag
        if o.kind == "store_true":
            if v:
                argv.append(flag)
        elif o.kind == "boolean_optional":
            argv.append(flag if v else "--no-" + flag[2:])
        elif o.kind == "nargs":
            if v:
                argv += [flag, *[str(x) for x in v]]
        else:
            argv += [flag, _fmt(v)]
    return argv


def build_argv(
    params: dict[str, Any],
    mode: str = "positional",
    *,
    check_version: bool = False,
    vllm_version: str | None = None,
) -> list[str]:
    """The container command: model, host/port, engine options, LoRA, sleep mode, then extra_args (they win).

    ``check_version``/``vllm_version``: map the typed options to the flags of that vLLM version (engine_argv).
    """
    model = normalize_model(params["model"])
    argv = [model] if mode == "positional" else ["--model", model]
    argv += ["--host", str(params.get("host") or "0.0.0.0"), "--port", str(params["port"])]
    argv += engine_argv(params, check_version=check_version, vllm_version=vllm_version, entrypoint=entrypoint_of(mode))
    loras = params.get("lora_modules") or []
    if loras:
        argv += ["--enable-lora", "--lora-modules"]
        argv += [f"{lo['name']}={posixpath.normpath(lo['path'])}" for lo in sorted(loras, key=lambda x: x["name"])]
    if params.get("sleep_mode"):
        argv.append("--enable-sleep-mode")
    argv += [str(a) for a in params.get("extra_args") or []]
    return argv


def normalize_model(model: str) -> str:
    return posixpath.normpath(model) if model.startswith("/") else model


def is_local_model(model: str) -> bool:
    return model.startswith("/")


# ---------------------------------------------------------------------------------------------------- env
def _env_str(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        raise GpufleetError(f"env {key} has no value; give a string (or remove the key)")
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def env_of(params: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """The container env (real values) and the set of keys whose values are secret."""
    env = {str(k): _env_str(k, v) for k, v in (params.get("env") or {}).items()}
    secret_keys: set[str] = set()
    for k, v in (params.get("secret_env") or {}).items():
        env[str(k)] = _env_str(k, v)
        secret_keys.add(str(k))
    for opt, key in SECRET_ENV.items():
        if params.get(opt):
            env[key] = str(params[opt])
            secret_keys.add(key)
    if params.get("sleep_mode"):
        env["VLLM_SERVER_DEV_MODE"] = "1"
    return dict(sorted(env.items())), secret_keys


def argv_check_env(env: dict[str, str], secret_keys: set[str]) -> dict[str, str]:
    """The part of the container env the argv check may look at (vllm_args rules such as --grpc-port needing
    VLLM_USE_RUST_FRONTEND=1): the VLLM_* variables, never a secret value (VLLM_API_KEY, secret_env)."""
    return {k: v for k, v in env.items() if k.startswith("VLLM_") and k not in secret_keys}


def value_hash(salt: str, key: str, value: str) -> str:
    """sha256 of an env value, salted with the deployment name and key (never the value itself in labels)."""
    return hashlib.sha256(f"gpufleet\0{salt}\0{key}\0{value}".encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------------- mounts, gpus
def parse_mount(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) == 2:
        parts.append("rw")
    if len(parts) != 3 or not parts[0].startswith("/") or not parts[1].startswith("/") or parts[2] not in ("ro", "rw"):
        raise GpufleetError(f"mount {text!r} is not SRC:DEST[:ro|rw] with absolute paths")
    return posixpath.normpath(parts[0]), posixpath.normpath(parts[1]), parts[2]


def mounts_of(params: dict[str, Any]) -> list[tuple[str, str, str]]:
    """All bind mounts (host, container, mode): model and LoRA dirs read-only at the same path, caches, extras."""
    m: dict[str, tuple[str, str, str]] = {}
    model = params.get("model") or ""
    if is_local_model(model):
        p = normalize_model(model)
        m[p] = (p, p, "ro")
    for lo in params.get("lora_modules") or []:
        p = posixpath.normpath(lo["path"])
        m[p] = (p, p, "ro")
    if params.get("hf_cache_dir"):
        m[HF_CACHE_IN_CONTAINER] = (posixpath.normpath(params["hf_cache_dir"]), HF_CACHE_IN_CONTAINER, "rw")
    if params.get("compile_cache_dir"):
        src = posixpath.join(posixpath.normpath(params["compile_cache_dir"]), params["name"])
        m[COMPILE_CACHE_IN_CONTAINER] = (src, COMPILE_CACHE_IN_CONTAINER, "rw")
    for text in params.get("mounts") or []:
        src, dst, mode = parse_mount(text)
        m[dst] = (src, dst, mode)
    return sorted(m.values(), key=lambda t: (t[1], t[0]))


def gpus_of(params: dict[str, Any]) -> list[str]:
    """GPU device ids (indices or UUIDs) as strings, sorted; ``["all"]`` for all; ``[]`` for none."""
    gpus = [str(g).strip() for g in params.get("gpus") or [] if str(g).strip()]
    if "all" in gpus:
        if len(gpus) > 1:
            raise GpufleetError("gpus: 'all' cannot be combined with other GPU ids")
        return ["all"]
    for g in gpus:
        if not (g.isdigit() or g.startswith(("GPU-", "MIG-"))):
            raise GpufleetError(f"gpus: {g!r} is neither a GPU index nor a GPU-/MIG- UUID")
    if len(set(gpus)) != len(gpus):
        raise GpufleetError(f"gpus: duplicate GPU ids in {gpus}")
    return sorted(gpus, key=lambda g: (not g.isdigit(), int(g) if g.isdigit() else 0, g))


# ---------------------------------------------------------------------------------------------------- logs
def log_config(params: dict[str, Any]) -> dict[str, Any]:
    """The container's log driver and limits: ``{driver, max_size, max_files}`` (``driver``: the runtime's file
    driver when log_driver is not given; ``max_files`` is docker's, podman's k8s-file has none)."""
    runtime = params.get("runtime") or "docker"
    return {
        "driver": params.get("log_driver") or DEFAULT_LOG_DRIVER.get(runtime, "json-file"),
        "max_size": str(params.get("log_max_size") or DEFAULT_LOG_MAX_SIZE).strip().lower(),
        "max_files": int(params.get("log_max_files") or DEFAULT_LOG_MAX_FILES),
    }


# ---------------------------------------------------------------------------------------------------- spec
def normalized_spec(
    params: dict[str, Any],
    image_id: str | None,
    mode: str = "positional",
    *,
    check_version: bool = False,
    vllm_version: str | None = None,
) -> tuple[dict[str, Any], dict[str, str], set[str]]:
    """(normalized spec, real env, secret keys). The spec holds no secret value: env values are salted hashes.

    ``check_version``/``vllm_version``: the typed options become the flags of that vLLM version (build_argv).
    """
    env, secret_keys = env_of(params)
    name = params["name"]
    spec = {
        "spec_version": SPEC_VERSION,
        "runtime": params.get("runtime") or "docker",
        "image_id": image_id,
        "argv": build_argv(params, mode, check_version=check_version, vllm_version=vllm_version),
        "env": {k: value_hash(name, k, v) for k, v in env.items()},
        "secret_env_keys": sorted(secret_keys),
        "mounts": [f"{s}:{d}:{m}" for s, d, m in mounts_of(params)],
        "gpus": gpus_of(params),
        "network": params.get("network") or "host",
        "ipc": params.get("ipc") or None,
        "shm_size": params.get("shm_size") or None,
        "restart_policy": params.get("restart_policy") or "no",
        "labels": {str(k): str(v) for k, v in sorted((params.get("labels") or {}).items())},
    }
    if params.get("pid"):
        spec["pid"] = str(params["pid"])
    if params.get("model_revision"):
        # The identity of the weights (model_sync's revision_id): new weights are a new container, even where the
        # model path stays the same (a local checkpoint served in place). Absent when not given: hashes of
        # containers created before this option exist stay as they were.
        spec["model_revision"] = str(params["model_revision"])
    log = log_config(params)
    if log != log_config({"runtime": spec["runtime"]}):
        # Compared when not the defaults only: containers created before the log options keep their hash (their
        # log stays as it was until they are recreated for another reason; redeploy.yml recreates).
        spec["log"] = log
    return spec, env, secret_keys


def engine_options_given(params: dict[str, Any]) -> list[str]:
    """Names of the typed engine options set (not None), in table order."""
    return [o.name for o in ENGINE_OPTIONS if params.get(o.name) is not None]


def argv_flags_marker(params: dict[str, Any], vllm_version: str | None) -> str:
    """The ``gpufleet.argv-flags`` label value: the vLLM version whose flag table mapped the typed options, and
    which options were given. When a container carries the same value, its argv was rendered from the same options
    with the same flags, so the default-flag argv hashes equal exactly when the mapped ones do (the rendering of each
    option takes the same number of tokens either way): a no-op converge can then skip the flag tables."""
    return f"{vllm_version or ''}|{','.join(engine_options_given(params))}"


def config_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def masked_spec(spec: dict[str, Any] | None) -> dict[str, Any]:
    """The spec for --diff and results: env hashes shortened, secret env values shown as ********."""
    if not spec:
        return {}
    out = json.loads(json.dumps(spec))
    secret = set(out.get("secret_env_keys") or [])
    out["env"] = {k: (MASK if k in secret else f"sha256:{v[:12]}") for k, v in sorted((out.get("env") or {}).items())}
    return out


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """Ansible diff dict (before/after masked specs) plus the names of the top-level keys that differ."""
    b, a = masked_spec(before), masked_spec(after)
    keys = sorted(set(b) | set(a))
    changed = [k for k in keys if b.get(k) != a.get(k)]
    if before and after:
        # A rotated secret shows as a difference without showing either value.
        for k in sorted(set(before.get("env", {})) | set(after.get("env", {}))):
            if before.get("env", {}).get(k) != after.get("env", {}).get(k) and "env" not in changed:
                changed.append("env")
    return {"before": b, "after": a, "changed_keys": sorted(changed)}


def changed_env_keys(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    be, ae = (before or {}).get("env") or {}, after.get("env") or {}
    return sorted(k for k in set(be) | set(ae) if be.get(k) != ae.get(k))


def host_dirs(params: dict[str, Any]) -> list[str]:
    """Host directories vllm_container creates when missing (the caches); model/LoRA dirs must already exist."""
    out = []
    if params.get("hf_cache_dir"):
        out.append(os.path.normpath(params["hf_cache_dir"]))
    if params.get("compile_cache_dir"):
        out.append(os.path.join(os.path.normpath(params["compile_cache_dir"]), params["name"]))
    return out
