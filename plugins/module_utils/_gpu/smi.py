# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU facts from nvidia-smi (the fallback when NVML cannot answer): the query, its CSV, a bounded run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.record import (
    SourceUnavailable,
    empty_gpu,
    normalize_bus_id,
    select_gpus,
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
    "ecc_errors_uncorrected": "ecc.errors.uncorrected.volatile.total",
    "retired_pages_pending": "retired_pages.pending",
    "driver_version": "driver_version",
}
SMI_APP_FIELDS = ("gpu_uuid", "pid", "used_memory")
_INT_KEYS = {
    "index",
    "ecc_errors_uncorrected",
    "memory_total_mib",
    "memory_used_mib",
    "memory_free_mib",
    "temperature_c",
    "utilization_gpu_pct",
    "utilization_memory_pct",
}
_FLOAT_KEYS = {"power_draw_w", "power_limit_w"}


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
    if key == "retired_pages_pending":
        return value.lower() == "yes"
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
