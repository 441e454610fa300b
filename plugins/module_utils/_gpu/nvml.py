# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU facts from NVML (nvidia-ml-py): what each GPU reports, and why NVML could not answer, in plain words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.record import (
    MIB,
    SourceUnavailable,
    cuda_version_str,
    describe_gpus,
    empty_gpu,
    is_uuid_selector,
    normalize_bus_id,
)

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


def nvml_init_reason(code: int | None, text: str) -> str:
    """Why NVML did not initialise, in plain words, from its return code."""
    if code in NVML_INIT_REASONS:
        return NVML_INIT_REASONS[code]
    suffix = f" (NVML error {code})" if code is not None else ""
    return f"NVML failed to initialise: {text}{suffix}"


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
    # Health: uncorrectable ECC errors since the driver loaded (NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1,
    # NVML_VOLATILE_ECC = 0) and memory pages waiting to be retired (a reset is due); None where not supported.
    ecc, retired = (
        getattr(nv, f, None) for f in ("nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRetiredPagesPendingStatus")
    )
    gpu["ecc_errors_uncorrected"] = read("ecc_errors_uncorrected", ecc, 1, 0) if ecc else None
    pending = read("retired_pages_pending", retired) if retired else None
    gpu["retired_pages_pending"] = bool(pending) if pending is not None else None
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
