# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_container's option values beyond their Ansible types, checked before anything on the host is touched.

The argument spec checks types; this checks what a type cannot say: numeric ranges (``RANGES``), the deployment
name (it becomes a container name and a file name), env variable names, absolute host paths, and secrets in the
wrong place (a secret-carrying vLLM flag such as ``--api-key K`` in ``extra_args`` would land in the container's
argv, its labels, the manifest, the result and ``ps``). ``option_problems()`` checks only the options present (not
None), so the fleet schema runs the same checks on a deployment's ``engine_options``; ``check()`` raises one error
listing every problem.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

# docker's rule for container names (gpufleet-NAME) and the file names built from NAME (manifest, compile cache).
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
NAME_MAX = 128
NAME_RULE = "letters, digits, '_', '.' or '-', starting with a letter or digit (docker's container-name rule)"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_NAME_RULE = "letters, digits and '_', not starting with a digit (e.g. MY_TOKEN)"

# vLLM flags whose value is a secret, and the option that carries it safely (as environment). The unit tests check
# that this covers every flag of the flag tables whose name says it carries a secret (vllm_args.secret_flags());
# it is a constant so that a no-op converge never loads the flag tables.
SECRET_FLAGS: dict[str, str] = {
    "--api-key": "api_key",
    "--hf-token": "hf_token",
}
# Environment variables whose value is a secret: they belong in api_key / hf_token / secret_env, whose values are
# masked in logs, events and results (env values are not).
SECRET_ENV_NAMES: dict[str, str] = {
    "VLLM_API_KEY": "api_key",
    "HF_TOKEN": "hf_token",
    "HUGGING_FACE_HUB_TOKEN": "hf_token",
}
PATH_OPTIONS = ("hf_cache_dir", "compile_cache_dir", "manifest_dir")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
WILDCARD = ("", "0.0.0.0", "::")
SLEEP_MODE_HOST = "127.0.0.1"
LOG_DRIVERS_OF = {"docker": ("json-file", "local"), "podman": ("k8s-file",)}
LOG_SIZE_RE = re.compile(r"^[1-9][0-9]*[kmg]?$")  # docker's max-size and podman's log size alike


@dataclass(frozen=True)
class Range:
    """The values an int/float option accepts (``low_open``: ``low`` itself is refused) and how to pick one."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    fix: str = ""

    def problem(self, name: str, value: Any) -> str | None:
        """``<name> <value> must be ...; <how to fix it>``, or None when the value fits (or is not a number: the
        argument spec's type check reports that)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        ok = math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value <= self.high
        if ok:
            return None
        if self.low is not None and self.high is not None:
            allowed = f"must be in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}]"
        elif self.low is not None:
            allowed = f"must be {'>' if self.low_open else '>='} {_num(self.low)}"
        else:
            allowed = f"must be <= {_num(self.high)}"
        return f"{name}: {value!r} {allowed}" + (f"; {self.fix}" if self.fix else "")


def _num(value: float | None) -> str:
    return str(int(value)) if value is not None and value == int(value) else str(value)


# Every int/float option of vllm_container (spec.OPTIONS) has an entry here or in UNBOUNDED (a unit test keeps them
# in step).
RANGES: dict[str, Range] = {
    "port": Range(1, 65535, fix="pick a free TCP port, e.g. 8000"),
    "tensor_parallel_size": Range(1, fix="the number of GPUs each pipeline stage shards the model over (1 or more)"),
    "pipeline_parallel_size": Range(1, fix="the number of pipeline stages (1 or more)"),
    "gpu_memory_utilization": Range(
        0, 1, low_open=True, fix="the fraction of each GPU's memory vLLM may use, e.g. 0.9"
    ),
    "max_model_len": Range(1, fix="leave it unset to use the model's own limit"),
    "max_num_seqs": Range(1, fix="the number of sequences batched together, e.g. 256"),
    "max_num_batched_tokens": Range(1, fix="tokens per scheduler step, e.g. 8192"),
    "swap_space": Range(0, fix="GiB of CPU swap space per GPU (0 for none)"),
    "cpu_offload_gb": Range(0, fix="GiB of weights offloaded to CPU memory (0 for none)"),
    "max_lora_rank": Range(1, fix="the largest LoRA rank served, e.g. 16"),
    "max_loras": Range(1, fix="LoRA adapters in one batch, e.g. 1"),
    "wait_timeout": Range(1, fix="seconds to wait for /health and /v1/models (first starts download and compile)"),
    "stop_timeout": Range(0, fix="seconds the engine waits after SIGTERM before SIGKILL"),
    "log_max_files": Range(1, fix="log files the engine keeps per container (docker), e.g. 3"),
    "max_failed_restarts": Range(0, fix="failures in a row the node agent restarts before it stops the replica"),
    "start_timeout": Range(1, fix="seconds a started server may take to answer /health before it counts as hung"),
    "idle_pause_after": Range(1, fix="seconds without a request before the node agent puts the server to sleep"),
}
UNBOUNDED = frozenset({"seed", "sleep_level"})  # any int vLLM takes / choices already limit it


def name_problem(name: Any, what: str = "name") -> str | None:
    """The problem with a deployment name (vllm_container ``name``), or None. The name becomes the container name
    gpufleet-NAME and the file names NAME.json (manifest) and NAME/ (compile cache): no '/', no '..'."""
    if not isinstance(name, str) or not name:
        return f"{what} is required: {NAME_RULE}"
    if len(name) > NAME_MAX or not NAME_RE.match(name):
        return f"{what} {name[:80]!r} is not a valid deployment name: use {NAME_RULE}, at most {NAME_MAX} characters"
    return None


def env_name_problems(env: Any, option: str) -> list[str]:
    """Bad variable names in ``env`` / ``secret_env`` (docker would set ``A=B`` as ``A`` = ``B=...``, podman fails),
    and secrets given as plain env (their values would not be masked)."""
    if not isinstance(env, Mapping):
        return []
    out = []
    for key in env:
        if not isinstance(key, str) or not ENV_NAME_RE.match(key):
            out.append(f"{option}: variable name {str(key)[:80]!r} is not valid: use {ENV_NAME_RULE}")
        elif option == "env" and key in SECRET_ENV_NAMES:
            out.append(
                f"env: {key} holds a secret; give it as the {SECRET_ENV_NAMES[key]} option (or in secret_env), whose "
                "value is masked in logs, events and results"
            )
    return out


def secret_flag(token: str) -> str | None:
    """The secret-carrying vLLM flag that ``token`` names (``--api-key``, ``--api_key=K``, ``--api-k``: vLLM takes
    underscores and unique prefixes), or None."""
    if not token.startswith("--") or len(token) < 5:
        return None
    option = "--" + token[2:].split("=", 1)[0].split(".", 1)[0].replace("_", "-")
    for flag in SECRET_FLAGS:
        if option == flag or (len(option) > 5 and flag.startswith(option)):
            return flag
    return None


def secret_flag_problems(args: Iterable[Any], option: str = "extra_args") -> list[str]:
    """One line per secret-carrying flag in ``args``: what to use instead. The value itself is never echoed."""
    out = []
    for token in args or []:
        flag = secret_flag(str(token))
        if flag is not None:
            out.append(
                f"{option}: {flag} carries a secret, which would show in the container's argv and labels, the "
                f"manifest, the module result and ps; remove it and set the {SECRET_FLAGS[flag]} option instead "
                "(passed as environment, masked everywhere)"
            )
    return out


def with_sleep_mode_host(params: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(params, warning): sleep mode turns on vLLM's dev endpoints (/sleep, /wake_up, /collective_rpc, ...: no
    authentication, vLLM's api_key guards /v1 only), so a sleep-mode server listens on 127.0.0.1 unless ``host``
    names a loopback address; a specific non-loopback host is refused by ``option_problems``."""
    out = dict(params)
    if out.get("sleep_mode") and str(out.get("host") or "") in WILDCARD:
        out["host"] = SLEEP_MODE_HOST
        return out, (
            f"sleep_mode: vLLM listens on {SLEEP_MODE_HOST} only (sleep mode opens vLLM's unauthenticated dev "
            "endpoints); to serve other hosts, put a proxy that forwards /v1 only in front of it"
        )
    return out, None


def _sleep_mode_problems(params: Mapping[str, Any]) -> list[str]:
    if params.get("idle_pause_after") is not None and not params.get("sleep_mode"):
        return ["idle_pause_after needs sleep_mode: true (a paused replica sleeps at level 1: weights to RAM)"]
    host = str(params.get("host") or "")
    if not params.get("sleep_mode") or host in WILDCARD or host in LOOPBACK:
        return []
    return [
        f"sleep_mode with host {host!r} would open vLLM's dev endpoints (/sleep, /wake_up, /collective_rpc, "
        "/reset_prefix_cache, ...) to the network without authentication (vLLM's api_key guards /v1 only); leave "
        f"host unset (sleep mode then listens on {SLEEP_MODE_HOST}) and put a proxy that forwards /v1 only in front, "
        "or turn sleep_mode off"
    ]


def secret_values(params: Mapping[str, Any]) -> list[str]:
    """Secret values given in the wrong place (after a secret flag in extra_args, as a secret-named env variable),
    for the module to add to its no_log values: its error result echoes the arguments and must not show them."""
    out: list[str] = []
    args = [str(a) for a in params.get("extra_args") or []] if isinstance(params.get("extra_args"), list) else []
    for i, token in enumerate(args):
        if secret_flag(token) is None:
            continue
        if "=" in token:
            out.append(token.split("=", 1)[1])
            continue
        for value in args[i + 1 :]:  # newer vLLM takes several keys: --api-key K1 K2
            if value.startswith("-"):
                break
            out.append(value)
    env = params.get("env")
    if isinstance(env, Mapping):
        out += [str(v) for k, v in env.items() if k in SECRET_ENV_NAMES and v not in (None, "")]
    return [v for v in out if v]


def _gpu_problems(gpus: Any) -> list[str]:
    if not isinstance(gpus, list):
        return []
    ids = [str(g).strip() for g in gpus]
    bad = [g for g in ids if g != "all" and not (g.isdigit() or g.startswith(("GPU-", "MIG-")))]
    out = [
        f"gpus: {g!r} is neither a GPU index nor a GPU-/MIG- UUID; give indices (0, 1, ...) or UUIDs as gpu_facts "
        "reports them, or all"
        for g in bad
    ]
    if "all" in ids and len(ids) > 1:
        out.append("gpus: 'all' cannot be combined with other GPU ids; give either all or a list of GPUs")
    if len(set(ids)) != len(ids):
        out.append(f"gpus: {ids} lists a GPU twice; give each GPU once")
    return out


def _mount_problems(mounts: Any) -> list[str]:
    out = []
    for text in mounts if isinstance(mounts, list) else []:
        parts = str(text).split(":")
        if len(parts) == 2:
            parts.append("rw")
        if (
            len(parts) != 3
            or not parts[0].startswith("/")
            or not parts[1].startswith("/")
            or parts[2] not in ("ro", "rw")
        ):
            out.append(
                f"mounts: {str(text)[:120]!r} is not SRC:DEST[:ro|rw]; give absolute host and container paths, e.g. "
                "/data/prompts:/prompts:ro"
            )
    return out


def _path_problems(params: Mapping[str, Any]) -> list[str]:
    out = []
    for option in PATH_OPTIONS:
        value = params.get(option)
        if value is not None and (not isinstance(value, str) or not value.startswith("/")):
            out.append(f"{option}: {str(value)[:120]!r} is not an absolute path; give a path starting with /")
    for i, lora in enumerate(params.get("lora_modules") or []):
        path = lora.get("path") if isinstance(lora, Mapping) else None
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            out.append(
                f"lora_modules[{i}].path: {str(path)[:120]!r} is not an absolute path; give the adapter's directory "
                "on the host, starting with /"
            )
    return out


def _log_problems(params: Mapping[str, Any]) -> list[str]:
    """log_max_size as the engines take it (a number with k, m or g) and a log driver the runtime has."""
    out = []
    size = params.get("log_max_size")
    if size is not None and not LOG_SIZE_RE.fullmatch(str(size).strip().lower()):
        out.append(f"log_max_size: {size!r} must be a size such as 50m (a number of bytes, or with k, m or g)")
    driver, runtime = params.get("log_driver"), params.get("runtime")
    if driver and runtime and driver not in LOG_DRIVERS_OF.get(runtime, (driver,)):
        out.append(f"log_driver: {driver} is not a {runtime} log driver; use {' or '.join(LOG_DRIVERS_OF[runtime])}")
    return out


def option_problems(params: Mapping[str, Any], *, require_name: bool = False) -> list[str]:
    """Every problem with the vllm_container options in ``params`` (those not None), one line each: what is wrong
    and how to fix it. ``require_name``: a missing name is a problem too."""
    out: list[str] = []
    name = params.get("name")
    if name is not None or require_name:
        problem = name_problem(name)
        if problem:
            out.append(problem)
    for option, rng in RANGES.items():
        problem = rng.problem(option, params.get(option))
        if problem:
            out.append(problem)
    out += env_name_problems(params.get("env"), "env")
    out += env_name_problems(params.get("secret_env"), "secret_env")
    out += secret_flag_problems(params.get("extra_args") or [])
    out += _path_problems(params)
    out += _gpu_problems(params.get("gpus"))
    out += _mount_problems(params.get("mounts"))
    out += _sleep_mode_problems(params)
    out += _log_problems(params)
    pid = params.get("pid")
    if pid is not None and not re.match(r"^(host|container:[A-Za-z0-9][A-Za-z0-9_.-]*)$", str(pid)):
        out.append(f"pid: {pid!r} is neither host nor container:<name> (the PID namespace to share)")
    return out


def host_problems(params: Mapping[str, Any]) -> list[str]:
    """The checks that read the host: max_model_len against the config.json of a model whose weights are here."""
    # Imported here: only a run that converges a declared server needs it.
    from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm.model_limits import max_model_len_problem

    env = {**(params.get("env") or {}), **(params.get("secret_env") or {})}
    problem = max_model_len_problem(params, {str(k): str(v) for k, v in env.items()})
    return [problem] if problem else []


def check(params: Mapping[str, Any], what: str = "vllm_container") -> None:
    """Raise one GpufleetError (failure class bad_args) listing every problem of ``option_problems`` and, when
    the options are fine and a server is declared (state not absent), of ``host_problems``."""
    problems = option_problems(params)
    if not problems and params.get("state") != "absent":
        problems = host_problems(params)
    if problems:
        raise GpufleetError(
            f"{what}: {len(problems)} invalid option{'s' if len(problems) > 1 else ''}: " + "; ".join(problems),
            failure_class="bad_args",
            problems=problems,
        )
