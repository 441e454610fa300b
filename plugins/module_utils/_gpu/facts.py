# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU inventory and health for gpufleet.vllm.gpu_facts: NVML (nvidia-ml-py), else nvidia-smi, else none.

``gather()`` returns the facts dict (names are part of the collection's interface, see the module's RETURN):
``gpu_count``, ``gpu_source``, ``gpu_source_reason``, ``gpu_driver_version``, ``gpu_cuda_version``, ``gpus``,
``gpu_healthy`` and, from :mod:`gpu_runtime`, ``gpu_container_runtime``. A value a device does not support is
``None``. Small pure functions (parsing, selection, health) are kept apart from the calls that touch the host.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

SOURCES = ("auto", "nvml", "nvidia_smi", "none")
MIB = 1024 * 1024

# Per GPU, in this order (the module's RETURN documents each).
GPU_KEYS = (
    "index",
    "uuid",
    "name",
    "memory_total_mib",
    "memory_used_mib",
    "memory_free_mib",
    "temperature_c",
    "utilization_gpu_pct",
    "utilization_memory_pct",
    "power_draw_w",
    "power_limit_w",
    "compute_capability",
    "pci_bus_id",
    "mig_mode",
    "processes",
    "healthy",
    "health_issues",
)

# nvidia-smi --query-gpu field for each GPU key it can fill.
SMI_FIELDS = {
    "index": "index",
    "uuid": "uuid",
    "name": "name",
    "memory_total_mib": "memory.total",
    "memory_used_mib": "memory.used",
    "memory_free_mib": "memory.free",
    "temperature_c": "temperature.gpu",
    "utilization_gpu_pct": "utilization.gpu",
    "utilization_memory_pct": "utilization.memory",
    "power_draw_w": "power.draw",
    "power_limit_w": "enforced.power.limit",
    "compute_capability": "compute_cap",
    "pci_bus_id": "pci.bus_id",
    "mig_mode": "mig.mode.current",
    "driver_version": "driver_version",
}
SMI_APP_FIELDS = ("gpu_uuid", "pid", "used_memory")
_INT_KEYS = {
    "index",
    "memory_total_mib",
    "memory_used_mib",
    "memory_free_mib",
    "temperature_c",
    "utilization_gpu_pct",
    "utilization_memory_pct",
}
_FLOAT_KEYS = {"power_draw_w", "power_limit_w"}

# NVML return codes (as in nvml.h / pynvml) that get a plain-words explanation.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25

NVML_INIT_REASONS = {
    NVML_ERROR_LIBRARY_NOT_FOUND: (
        "the NVML library libnvidia-ml.so.1 was not found: the NVIDIA driver is not installed here, or its "
        "library is not on the loader path (ldconfig / LD_LIBRARY_PATH)"
    ),
    NVML_ERROR_DRIVER_NOT_LOADED: (
        "the NVIDIA kernel driver is not loaded: install the driver or load it (modprobe nvidia), then check "
        "that nvidia-smi answers"
    ),
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: (
        "the NVML library and the loaded kernel driver are different versions (driver/library version "
        "mismatch, usually a driver upgrade without a reboot): reboot or reload the nvidia kernel modules"
    ),
    NVML_ERROR_NO_PERMISSION: (
        "no permission to open the NVIDIA devices (/dev/nvidia*): run as root (become: true) or as a user of "
        "the group that owns them"
    ),
    NVML_ERROR_FUNCTION_NOT_FOUND: (
        "the NVML library is older than nvidia-ml-py expects (a function is missing): upgrade the NVIDIA driver "
        "or pin an older nvidia-ml-py"
    ),
}


@dataclass(frozen=True)
class Thresholds:
    """Health limits; a GPU breaking one is ``healthy: false`` with a line in ``health_issues``."""

    max_temperature_c: int | None = 85
    min_free_memory_mib: int | None = 0
    max_utilization_pct: int | None = 100


class SourceUnavailable(Exception):
    """A source could not answer; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------------- pure helpers


def empty_gpu(index: int) -> dict[str, Any]:
    gpu: dict[str, Any] = dict.fromkeys(GPU_KEYS)
    gpu["index"] = index
    gpu["healthy"] = True
    gpu["health_issues"] = []
    return gpu


def cuda_version_str(value: int | None) -> str | None:
    """NVML's CUDA driver version integer (12040) as ``"12.4"``."""
    if not value:
        return None
    return f"{value // 1000}.{value % 1000 // 10}"


def normalize_bus_id(bus_id: str | None) -> str | None:
    """``00000000:07:00.0`` in the long, upper-case form both NVML and nvidia-smi print."""
    if not bus_id:
        return None
    bus_id = bus_id.strip()
    if bus_id.count(":") == 2:
        domain, rest = bus_id.split(":", 1)
        bus_id = f"{int(domain, 16):08X}:{rest}"
    elif bus_id.count(":") == 1:
        bus_id = f"00000000:{bus_id}"
    return bus_id.upper()


def smi_value(raw: str) -> str | None:
    """One nvidia-smi CSV cell: ``[N/A]``, ``[Not Supported]``, ``N/A``, ``[Unknown Error]``... → None."""
    raw = raw.strip()
    if not raw or raw.startswith("[") or raw.upper() in ("N/A", "NOT SUPPORTED", "ERR!"):
        return None
    return raw


def _smi_convert(key: str, raw: str) -> Any:
    value = smi_value(raw)
    if value is None:
        return None
    try:
        if key in _INT_KEYS:
            return int(float(value))
        if key in _FLOAT_KEYS:
            return round(float(value), 2)
    except ValueError:
        return None
    if key == "mig_mode":
        return value.lower() == "enabled"
    if key == "pci_bus_id":
        return normalize_bus_id(value)
    return value


def split_csv_line(line: str) -> list[str]:
    """nvidia-smi separates cells with ``", "``; GPU names contain no comma, so a plain split is exact."""
    return [cell.strip() for cell in line.split(",")]


def parse_smi_gpus(text: str, keys: Sequence[str]) -> tuple[list[dict[str, Any]], str | None]:
    """Parse ``--query-gpu=<SMI_FIELDS of keys> --format=csv,noheader,nounits`` output.

    Returns (gpus, driver_version); keys missing from ``keys`` stay None. A malformed line raises
    SourceUnavailable (the tool answered something we cannot read).
    """
    gpus: list[dict[str, Any]] = []
    driver: str | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = split_csv_line(line)
        if len(cells) != len(keys):
            raise SourceUnavailable(
                f"nvidia-smi answered a line with {len(cells)} values for {len(keys)} fields: {line.strip()!r}"
            )
        row = dict(zip(keys, cells, strict=True))
        index = _smi_convert("index", row.get("index", ""))
        gpu = empty_gpu(index if index is not None else len(gpus))
        for key, raw in row.items():
            if key == "driver_version":
                driver = driver or smi_value(raw)
            elif key != "index":
                gpu[key] = _smi_convert(key, raw)
        if (
            gpu["memory_free_mib"] is None
            and gpu["memory_total_mib"] is not None
            and gpu["memory_used_mib"] is not None
        ):
            gpu["memory_free_mib"] = gpu["memory_total_mib"] - gpu["memory_used_mib"]
        gpus.append(gpu)
    return gpus, driver


def parse_smi_apps(text: str) -> dict[str, list[dict[str, Any]]]:
    """``--query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits`` → processes by GPU UUID."""
    by_uuid: dict[str, list[dict[str, Any]]] = {}
    for line in text.splitlines():
        cells = split_csv_line(line)
        if len(cells) != len(SMI_APP_FIELDS) or not line.strip():
            continue
        uuid, pid, used = cells
        pid_value = smi_value(pid)
        if pid_value is None or not pid_value.isdigit():
            continue
        used_value = _smi_convert("memory_used_mib", used)
        by_uuid.setdefault(uuid, []).append({"pid": int(pid_value), "used_memory_mib": used_value})
    return by_uuid


def is_uuid_selector(ref: str) -> bool:
    return not ref.strip().isdigit()


def select_gpus(gpus: list[dict[str, Any]], selectors: Iterable[str | int] | None) -> list[dict[str, Any]]:
    """The GPUs named by index (``0``) or UUID (``GPU-...``), in the order of ``gpus``; None/empty = all.

    A selector that matches no GPU raises GpufleetError listing what the host has.
    """
    refs = [str(s).strip() for s in (selectors or [])]
    if not refs:
        return list(gpus)
    wanted: set[int] = set()
    for ref in refs:
        hits = [g["index"] for g in gpus if ref == str(g["index"]) or (g.get("uuid") and ref == g["uuid"])]
        if not hits:
            raise GpufleetError(
                f"GPU {ref!r} (option gpus) is not on this host; it has {describe_gpus(gpus)}. "
                "Name GPUs by index (0, 1, ...) or by UUID (GPU-...).",
                failure_class="gpu_not_found",
            )
        wanted.update(hits)
    return [g for g in gpus if g["index"] in wanted]


def describe_gpus(gpus: list[dict[str, Any]]) -> str:
    if not gpus:
        return "no GPU"
    return ", ".join(f"{g['index']} ({g.get('uuid') or 'no UUID'}, {g.get('name') or 'unknown'})" for g in gpus)


def evaluate_health(gpu: dict[str, Any], thresholds: Thresholds) -> list[str]:
    """Health issues of one GPU (read errors already in ``gpu['health_issues']`` are kept first).

    A value the device does not report (None) breaks no threshold: it cannot be judged.
    """
    issues = list(gpu.get("health_issues") or [])
    temp = gpu.get("temperature_c")
    if thresholds.max_temperature_c is not None and temp is not None and temp > thresholds.max_temperature_c:
        issues.append(f"temperature {temp} C is above max_temperature_c ({thresholds.max_temperature_c} C)")
    free = gpu.get("memory_free_mib")
    if thresholds.min_free_memory_mib and free is not None and free < thresholds.min_free_memory_mib:
        issues.append(f"free memory {free} MiB is below min_free_memory_mib ({thresholds.min_free_memory_mib} MiB)")
    util = gpu.get("utilization_gpu_pct")
    if thresholds.max_utilization_pct is not None and util is not None and util > thresholds.max_utilization_pct:
        issues.append(f"utilization {util}% is above max_utilization_pct ({thresholds.max_utilization_pct}%)")
    return issues


def apply_health(gpus: list[dict[str, Any]], thresholds: Thresholds) -> None:
    for gpu in gpus:
        gpu["health_issues"] = evaluate_health(gpu, thresholds)
        gpu["healthy"] = not gpu["health_issues"]


def unhealthy_summary(gpus: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"GPU {g['index']} ({g.get('uuid') or g.get('name')}): {', '.join(g['health_issues'])}"
        for g in gpus
        if not g["healthy"]
    )


def nvml_init_reason(code: int | None, text: str) -> str:
    """Why NVML did not initialise, in plain words, from its return code."""
    if code in NVML_INIT_REASONS:
        return NVML_INIT_REASONS[code]
    suffix = f" (NVML error {code})" if code is not None else ""
    return f"NVML failed to initialise: {text}{suffix}"


# ---------------------------------------------------------------------------------------------------- NVML


def _nvml_error_code(exc: BaseException) -> int | None:
    return getattr(exc, "value", None)


def _field_error(gpu: dict[str, Any], key: str, exc: BaseException) -> None:
    """A query failing other than 'not supported' is worth a health issue (e.g. GPU is lost).

    A function the driver's library lacks (older driver) says nothing about the GPU: null, no issue.
    """
    if _nvml_error_code(exc) not in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
        gpu["health_issues"].append(f"cannot read {key}: {exc}")


def collect_nvml(selectors: Sequence[str | int] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Query NVML through nvidia-ml-py. Returns (system info, gpus); raises SourceUnavailable when NVML cannot.

    ``selectors`` (indices / UUIDs) restrict the GPUs queried; an unknown one raises GpufleetError.
    """
    try:
        import pynvml
    except ImportError as exc:
        raise SourceUnavailable(
            f"the Python package nvidia-ml-py (module pynvml) is not installed for {_python()}: "
            "pip install nvidia-ml-py"
        ) from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise SourceUnavailable(nvml_init_reason(_nvml_error_code(exc), str(exc))) from exc
    try:
        return _collect_nvml(pynvml, selectors)
    except pynvml.NVMLError as exc:
        raise SourceUnavailable(f"NVML failed while listing the GPUs: {exc}") from exc
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _python() -> str:
    import sys

    return sys.executable or "the target's Python"


def _collect_nvml(nv: Any, selectors: Sequence[str | int] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    NVMLError = nv.NVMLError
    system: dict[str, Any] = {"driver_version": None, "cuda_version": None}
    try:
        system["driver_version"] = nv.nvmlSystemGetDriverVersion()
    except NVMLError:
        pass
    try:
        system["cuda_version"] = cuda_version_str(nv.nvmlSystemGetCudaDriverVersion_v2())
    except NVMLError:
        try:
            system["cuda_version"] = cuda_version_str(nv.nvmlSystemGetCudaDriverVersion())
        except NVMLError:
            pass
    count = nv.nvmlDeviceGetCount()
    handles: dict[int, Any] = {}
    refs = [str(s).strip() for s in (selectors or [])]
    if refs:
        for ref in refs:
            try:
                if is_uuid_selector(ref):
                    handle = nv.nvmlDeviceGetHandleByUUID(ref)
                    index = nv.nvmlDeviceGetIndex(handle)
                else:
                    index = int(ref)
                    if index >= count:
                        raise nv.NVMLError(NVML_ERROR_NOT_FOUND)
                    handle = nv.nvmlDeviceGetHandleByIndex(index)
            except NVMLError as exc:
                if _nvml_error_code(exc) not in (NVML_ERROR_NOT_FOUND, 2):  # 2: invalid argument (malformed UUID)
                    raise
                everything = [_nvml_gpu(nv, i, nv.nvmlDeviceGetHandleByIndex(i), brief=True) for i in range(count)]
                raise GpufleetError(
                    f"GPU {ref!r} (option gpus) is not on this host; it has {describe_gpus(everything)}. "
                    "Name GPUs by index (0, 1, ...) or by UUID (GPU-...).",
                    failure_class="gpu_not_found",
                ) from exc
            handles[index] = handle
    else:
        handles = {i: nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)}
    return system, [_nvml_gpu(nv, i, handles[i]) for i in sorted(handles)]


def _nvml_gpu(nv: Any, index: int, handle: Any, brief: bool = False) -> dict[str, Any]:
    NVMLError = nv.NVMLError
    Mismatch = getattr(nv, "NVMLLibraryMismatchError", NVMLError)  # an unversioned call the library lacks
    gpu = empty_gpu(index)

    def read(key: str, fn: Any, *args: Any, fallback: Any = None) -> Any:
        try:
            return fn(handle, *args)
        except Mismatch:
            return read(key, fallback, *args) if fallback is not None else None
        except NVMLError as exc:
            if fallback is not None and _nvml_error_code(exc) == NVML_ERROR_FUNCTION_NOT_FOUND:
                return read(key, fallback, *args)
            _field_error(gpu, key, exc)
            return None

    gpu["uuid"] = read("uuid", nv.nvmlDeviceGetUUID)
    gpu["name"] = read("name", nv.nvmlDeviceGetName)
    if brief:
        return gpu
    mem = _nvml_memory(nv, handle, gpu)
    if mem is not None:
        gpu["memory_total_mib"] = mem.total // MIB
        gpu["memory_used_mib"] = mem.used // MIB
        gpu["memory_free_mib"] = mem.free // MIB
    gpu["temperature_c"] = read(  # sensor 0 = NVML_TEMPERATURE_GPU; the unversioned call goes away in CUDA 14
        "temperature_c", nv.nvmlDeviceGetTemperature, 0, fallback=getattr(nv, "nvmlDeviceGetTemperatureV", None)
    )
    util = read("utilization_gpu_pct", nv.nvmlDeviceGetUtilizationRates)
    if util is not None:
        gpu["utilization_gpu_pct"] = util.gpu
        gpu["utilization_memory_pct"] = util.memory
    power = read("power_draw_w", nv.nvmlDeviceGetPowerUsage)
    gpu["power_draw_w"] = round(power / 1000.0, 2) if power is not None else None
    limit = read("power_limit_w", nv.nvmlDeviceGetEnforcedPowerLimit)
    gpu["power_limit_w"] = round(limit / 1000.0, 2) if limit is not None else None
    cc = read("compute_capability", nv.nvmlDeviceGetCudaComputeCapability)
    gpu["compute_capability"] = f"{cc[0]}.{cc[1]}" if cc is not None else None
    pci = read("pci_bus_id", nv.nvmlDeviceGetPciInfo)
    if pci is not None:
        bus = pci.busId.decode() if isinstance(pci.busId, bytes) else pci.busId
        gpu["pci_bus_id"] = normalize_bus_id(bus)
    mig = read("mig_mode", nv.nvmlDeviceGetMigMode)
    gpu["mig_mode"] = bool(mig[0]) if mig is not None else None
    procs = read(
        "processes",
        nv.nvmlDeviceGetComputeRunningProcesses,
        fallback=getattr(nv, "nvmlDeviceGetComputeRunningProcesses_v2", None),  # drivers before 510
    )
    if procs is not None:
        gpu["processes"] = [
            {
                "pid": int(p.pid),
                "used_memory_mib": int(p.usedGpuMemory) // MIB if p.usedGpuMemory is not None else None,
            }
            for p in procs
        ]
    return gpu


def _nvml_memory(nv: Any, handle: Any, gpu: dict[str, Any]) -> Any:
    """Memory info v2 (used excludes the driver-reserved part, as nvidia-smi shows it), else v1."""
    NVMLError = nv.NVMLError
    version = getattr(nv, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return nv.nvmlDeviceGetMemoryInfo(handle, version=version)
        except NVMLError as exc:
            if _nvml_error_code(exc) not in (NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_ARGUMENT_VERSION_MISMATCH):
                _field_error(gpu, "memory", exc)
                return None
    try:
        return nv.nvmlDeviceGetMemoryInfo(handle)
    except NVMLError as exc:
        _field_error(gpu, "memory", exc)
        return None


# ---------------------------------------------------------------------------------------------------- nvidia-smi


def find_nvidia_smi(path: str | None = None) -> str | None:
    """The nvidia-smi to run: ``path`` when given (must exist), else PATH, else the usual install places."""
    if path:
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    found = shutil.which("nvidia-smi")
    if found:
        return found
    for candidate in ("/usr/bin/nvidia-smi", "/usr/local/nvidia/bin/nvidia-smi", "/usr/local/bin/nvidia-smi"):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_bounded(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """Run a command, killing its whole process group at ``timeout``; raises TimeoutError then.

    After the kill we wait at most one more second: a tool stuck in the kernel (nvidia-smi on a wedged driver)
    cannot be reaped, and must not hang the module.
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=max(timeout, 0.01))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            proc.communicate(timeout=1)
        except subprocess.TimeoutExpired:
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        raise TimeoutError(f"{argv[0]} did not answer within {timeout:g} s") from None
    return proc.returncode, out, err


def collect_nvidia_smi(
    path: str | None = None, timeout: float = 10.0, selectors: Sequence[str | int] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Query ``nvidia-smi --query-gpu`` (and ``--query-compute-apps`` for processes) within ``timeout`` seconds."""
    exe = find_nvidia_smi(path)
    if exe is None:
        where = f"at {path}" if path else "on PATH, in /usr/bin or /usr/local/nvidia/bin"
        raise SourceUnavailable(f"nvidia-smi was not found {where}")
    deadline = time.monotonic() + timeout
    keys = list(SMI_FIELDS)
    for _attempt in range(3):
        query = ",".join(SMI_FIELDS[k] for k in keys)
        try:
            rc, out, err = run_bounded(
                [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"], deadline - time.monotonic()
            )
        except TimeoutError as exc:
            raise SourceUnavailable(
                f"nvidia-smi hung: {exe} did not answer within {timeout:g} s (option timeout); it is killed. "
                "A hanging nvidia-smi usually means a wedged driver or GPU: see dmesg for Xid errors"
            ) from exc
        except OSError as exc:
            raise SourceUnavailable(f"nvidia-smi could not be run: {exc}") from exc
        bad = _invalid_field(out + err) if rc != 0 else None
        if bad and bad in query.split(",") and bad not in ("index", "uuid"):
            # an older nvidia-smi lacks a field (compute_cap came with driver 510): ask again without it
            keys = [k for k in keys if SMI_FIELDS[k] != bad]
            continue
        break
    if rc != 0:
        text = " ".join((out + " " + err).split()) or "no output"
        raise SourceUnavailable(f"nvidia-smi failed (exit {rc}): {text}")
    gpus, driver = parse_smi_gpus(out, keys)
    procs_by_uuid: dict[str, list[dict[str, Any]]] | None = None
    try:
        rc, out, err = run_bounded(
            [exe, f"--query-compute-apps={','.join(SMI_APP_FIELDS)}", "--format=csv,noheader,nounits"],
            deadline - time.monotonic(),
        )
        if rc == 0:
            procs_by_uuid = parse_smi_apps(out)
    except (TimeoutError, OSError):
        procs_by_uuid = None
    for gpu in gpus:
        gpu["processes"] = list(procs_by_uuid.get(gpu["uuid"], [])) if procs_by_uuid is not None else None
    if selectors:
        gpus = select_gpus(gpus, selectors)
    return {"driver_version": driver, "cuda_version": None}, gpus


def _invalid_field(text: str) -> str | None:
    marker = "is not a valid field to query"
    for line in text.splitlines():
        if marker in line and '"' in line:
            return line.split('"')[1]
    return None


# ---------------------------------------------------------------------------------------------------- together


def gather_gpus(
    source: str = "auto",
    thresholds: Thresholds | None = None,
    selectors: Sequence[str | int] | None = None,
    nvidia_smi_path: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """The GPU part of the facts: tries the sources ``source`` allows, in order, and says why one was skipped."""
    if source not in SOURCES:
        raise GpufleetError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    thresholds = thresholds or Thresholds()
    reasons: list[str] = []
    system: dict[str, Any] = {"driver_version": None, "cuda_version": None}
    gpus: list[dict[str, Any]] = []
    answered = "none"
    order = {"auto": ("nvml", "nvidia_smi"), "nvml": ("nvml",), "nvidia_smi": ("nvidia_smi",), "none": ()}[source]
    if source == "none":
        reasons.append("source=none: GPUs were not queried")
    for name in order:
        try:
            if name == "nvml":
                system, gpus = collect_nvml(selectors)
            else:
                system, gpus = collect_nvidia_smi(nvidia_smi_path, timeout, selectors)
        except SourceUnavailable as exc:
            reasons.append(f"{'NVML' if name == 'nvml' else 'nvidia-smi'}: {exc.reason}")
            continue
        answered = name
        break
    if answered == "none" and selectors:
        raise GpufleetError(
            f"GPUs {', '.join(str(s) for s in selectors)} (option gpus) were asked for, but no GPU was found: "
            + "; ".join(reasons),
            failure_class="gpu_not_found",
        )
    apply_health(gpus, thresholds)
    return {
        "gpu_count": len(gpus),
        "gpu_source": answered,
        "gpu_source_reason": "; ".join(reasons) or None,
        "gpu_driver_version": system.get("driver_version"),
        "gpu_cuda_version": system.get("cuda_version"),
        "gpus": gpus,
        "gpu_healthy": all(g["healthy"] for g in gpus),
    }
