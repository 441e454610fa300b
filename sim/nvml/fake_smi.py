# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fake nvidia-smi for the gpufleet test bed: reads the same JSON as the fake libnvidia-ml (env GPUFLEET_FAKE_GPUS).

Answers what gpufleet uses, in the real tool's format:
  nvidia-smi --query-gpu=index,uuid,name,... --format=csv[,noheader][,nounits] [-i 0,GPU-...]
  nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory,process_name --format=csv,...
  nvidia-smi -L
  nvidia-smi            (a short summary with the driver and CUDA versions)
Unsupported values print as [N/A] / [Not Supported] like the real one. Failures: the JSON's "init_error" (or
"nvidia_smi": {"init_error": ...}) makes it fail like the real tool; "nvidia_smi": {"hang_s": N} makes it sleep N
seconds before answering (timeout tests). Format: sim/nvml/README.md.
"""

from __future__ import annotations

import json
import os
import sys
import time

DRIVER_MSG = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)
ERROR_TEXT = {
    "NO_PERMISSION": (4, "Insufficient Permissions"),
    "DRIVER_NOT_LOADED": (9, None),
    "LIBRARY_NOT_FOUND": (12, "NVML Shared Library Not Found"),
    "GPU_IS_LOST": (15, "GPU is lost"),
    "LIB_RM_VERSION_MISMATCH": (18, "Driver/library version mismatch"),
    "UNKNOWN": (255, "Unknown Error"),
}
ERROR_CODES = {
    4: "NO_PERMISSION",
    9: "DRIVER_NOT_LOADED",
    12: "LIBRARY_NOT_FOUND",
    15: "GPU_IS_LOST",
    18: "LIB_RM_VERSION_MISMATCH",
}
NOT_SUPPORTED = "[Not Supported]"
NA = "[N/A]"
MIB = "MiB"

# query field → (config key, unit, formatter)
FIELDS: dict[str, tuple[str, str, object]] = {
    "index": ("index", "", str),
    "name": ("name", "", str),
    "gpu_name": ("name", "", str),
    "uuid": ("uuid", "", str),
    "gpu_uuid": ("uuid", "", str),
    "pci.bus_id": ("pci_bus_id", "", str),
    "gpu_bus_id": ("pci_bus_id", "", str),
    "driver_version": ("@driver_version", "", str),
    "memory.total": ("memory_total_mib", MIB, lambda v: str(int(v))),
    "memory.used": ("memory_used_mib", MIB, lambda v: str(int(v))),
    "memory.free": ("memory_free_mib", MIB, lambda v: str(int(v))),
    "memory.reserved": ("memory_reserved_mib", MIB, lambda v: str(int(v))),
    "temperature.gpu": ("temperature_c", "", lambda v: str(int(v))),
    "utilization.gpu": ("utilization_gpu_pct", "%", lambda v: str(int(v))),
    "utilization.memory": ("utilization_memory_pct", "%", lambda v: str(int(v))),
    "power.draw": ("power_draw_w", "W", lambda v: f"{float(v):.2f}"),
    "power.limit": ("power_limit_w", "W", lambda v: f"{float(v):.2f}"),
    "enforced.power.limit": ("power_limit_w", "W", lambda v: f"{float(v):.2f}"),
    "compute_cap": ("compute_capability", "", str),
    "mig.mode.current": ("mig_mode", "", lambda v: "Enabled" if v else "Disabled"),
    "mig.mode.pending": ("mig_mode", "", lambda v: "Enabled" if v else "Disabled"),
    "count": ("@count", "", str),
    "ecc.errors.uncorrected.volatile.total": ("ecc_errors_uncorrected", "", lambda v: str(int(v))),
    "retired_pages.pending": ("retired_pages_pending", "", lambda v: "Yes" if v else "No"),
}
APP_FIELDS = ("gpu_uuid", "gpu_bus_id", "gpu_name", "pid", "process_name", "used_memory", "used_gpu_memory")
FIELD_GROUPS = {  # the names "not_supported" / "errors" use in the JSON (one NVML query can serve several fields)
    "memory": ("memory_total_mib", "memory_used_mib", "memory_free_mib", "memory_reserved_mib"),
    "utilization": ("utilization_gpu_pct", "utilization_memory_pct"),
    "memory_total_mib": ("memory_total_mib", "memory_used_mib", "memory_free_mib", "memory_reserved_mib"),
    "memory_used_mib": ("memory_total_mib", "memory_used_mib", "memory_free_mib", "memory_reserved_mib"),
    "memory_free_mib": ("memory_total_mib", "memory_used_mib", "memory_free_mib", "memory_reserved_mib"),
    "utilization_gpu_pct": ("utilization_gpu_pct", "utilization_memory_pct"),
    "utilization_memory_pct": ("utilization_gpu_pct", "utilization_memory_pct"),
}


def fail(msg: str, code: int) -> None:
    sys.stdout.write(msg)
    sys.stdout.flush()
    sys.exit(code)


def init_failure(err: object, driver: str) -> None:
    if isinstance(err, int):
        err = ERROR_CODES.get(err, "UNKNOWN")
    name = str(err).upper().removeprefix("NVML_ERROR_")
    code, text = ERROR_TEXT.get(name, (255, name.replace("_", " ").title()))
    if text is None:
        fail(DRIVER_MSG, code)
    extra = f"NVML library version: {driver.rsplit('.', 1)[0]}\n" if name == "LIB_RM_VERSION_MISMATCH" else ""
    fail(f"Failed to initialize NVML: {text}\n{extra}", code)


def load() -> dict:
    path = os.environ.get("GPUFLEET_FAKE_GPUS")
    if not path:
        fail(DRIVER_MSG, 9)
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        fail(f"Failed to initialize NVML: Unknown Error ({exc})\n", 255)
    smi = cfg.get("nvidia_smi") or {}
    if smi.get("hang_s"):
        time.sleep(float(smi["hang_s"]))
    err = smi["init_error"] if "init_error" in smi else cfg.get("init_error")
    if err:
        init_failure(err, str(cfg.get("driver_version", "550.54.15")))
    return cfg


def gpu_values(cfg: dict, index: int, g: dict) -> dict[str, object]:
    """The fake GPU's values by config key; an unsupported one is the marker string it prints as."""
    vals: dict[str, object] = {
        "index": index,
        "name": g.get("name", "NVIDIA A100-SXM4-80GB"),
        "uuid": g.get("uuid", f"GPU-00000000-0000-4000-8000-{index:012x}"),
        "pci_bus_id": g.get("pci_bus_id", f"00000000:{0x07 + index * 8:02X}:00.0"),
        "@driver_version": cfg.get("driver_version", "550.54.15"),
        "@count": len(cfg.get("gpus") or []),
    }
    total = g.get("memory_total_mib", 81920)
    reserved = g.get("memory_reserved_mib", 0) or 0
    procs = g.get("processes") or []
    used = g.get("memory_used_mib", sum(p.get("used_memory_mib") or 0 for p in procs))
    vals["memory_total_mib"] = total
    vals["memory_reserved_mib"] = reserved
    vals["memory_used_mib"] = used
    vals["memory_free_mib"] = None if total is None or used is None else total - reserved - used
    defaults = {
        "temperature_c": 35,
        "utilization_gpu_pct": 0,
        "utilization_memory_pct": 0,
        "power_draw_w": 60,
        "power_limit_w": 400,
        "compute_capability": "8.0",
        "ecc_errors_uncorrected": 0,
        "retired_pages_pending": False,
    }
    for key, dflt in defaults.items():
        vals[key] = g.get(key, dflt)
    vals["mig_mode"] = g.get("mig_mode")  # absent/null: the GPU has no MIG → [N/A]
    if isinstance(vals["mig_mode"], str):
        vals["mig_mode"] = vals["mig_mode"].lower() == "enabled"
    for key, val in list(vals.items()):
        if val is None:
            vals[key] = NA if key == "mig_mode" else NOT_SUPPORTED
    for key in g.get("not_supported") or []:
        for k in FIELD_GROUPS.get(key, (key,)):
            vals[k] = NA if k == "mig_mode" else NOT_SUPPORTED
    for key in g.get("errors") or {}:
        for k in FIELD_GROUPS.get(key, (key,)):
            vals[k] = "[Unknown Error]"
    if g.get("lost"):
        for k in vals:
            if k not in ("index", "name", "uuid", "pci_bus_id", "@driver_version", "@count"):
                vals[k] = "[GPU requires reset]"
    return vals


def parse_args(argv: list[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    it = iter(argv)
    for arg in it:
        if arg.startswith("--") and "=" in arg:
            k, v = arg[2:].split("=", 1)
            opts[k] = v
        elif arg in ("-i", "--id"):
            opts["id"] = next(it, "")
        elif arg.startswith("-i") and len(arg) > 2:
            opts["id"] = arg[2:]
        elif arg in ("-L", "--list-gpus"):
            opts["list"] = "1"
        elif arg in ("--query-gpu", "--query-compute-apps", "--format"):
            opts[arg[2:]] = next(it, "")
        else:
            fail(f'Invalid combination of input arguments. Please run "nvidia-smi -h" for help.\n({arg})\n', 2)
    return opts


def selected(cfg: dict, ids: str | None) -> list[tuple[int, dict]]:
    gpus = list(enumerate(cfg.get("gpus") or []))
    if not ids:
        return gpus
    out = []
    for ref in ids.split(","):
        ref = ref.strip()
        hit = [
            (i, g)
            for i, g in gpus
            if ref == str(i) or ref == g.get("uuid") or ref.lower() == str(g.get("pci_bus_id", "")).lower()
        ]
        if not hit:
            fail(f"No devices were found matching the given ID: {ref}\n", 6)
        out.extend(hit)
    return out


def render(rows: list[list[str]], names: list[str], units: list[str], fmt: str) -> None:
    parts = {p.strip() for p in fmt.split(",")}
    if "csv" not in parts:
        fail('"--format" must be given as csv[,noheader][,nounits]\n', 2)
    lines = []
    if "noheader" not in parts:
        lines.append(
            ", ".join(f"{n} [{u}]" if u and "nounits" not in parts else n for n, u in zip(names, units, strict=True))
        )
    for row in rows:
        if "nounits" not in parts:
            row = [f"{v} {u}" if u and not v.startswith("[") else v for v, u in zip(row, units, strict=True)]
        lines.append(", ".join(row))
    sys.stdout.write("".join(line + "\n" for line in lines))


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    cfg = load()
    gpus = selected(cfg, opts.get("id"))
    if "query-gpu" in opts:
        names = [n.strip() for n in opts["query-gpu"].split(",") if n.strip()]
        for n in names:
            if n not in FIELDS:
                fail(f'Field "{n}" is not a valid field to query.\n\n', 2)
        rows = []
        for i, g in gpus:
            vals = gpu_values(cfg, i, g)
            row = []
            for n in names:
                key, _unit, form = FIELDS[n]
                v = vals[key]
                row.append(v if isinstance(v, str) and v.startswith("[") else form(v))  # type: ignore[operator]
            rows.append(row)
        render(rows, names, [FIELDS[n][1] for n in names], opts.get("format", "csv"))
        return 0
    if "query-compute-apps" in opts:
        names = [n.strip() for n in opts["query-compute-apps"].split(",") if n.strip()]
        for n in names:
            if n not in APP_FIELDS:
                fail(f'Field "{n}" is not a valid field to query.\n\n', 2)
        rows = []
        for i, g in gpus:
            vals = gpu_values(cfg, i, g)
            if isinstance(vals.get("processes"), str) or "processes" in (g.get("not_supported") or []):
                continue  # the real tool lists nothing for a GPU that cannot report processes
            for p in g.get("processes") or []:
                used = p.get("used_memory_mib")
                by = {
                    "gpu_uuid": vals["uuid"],
                    "gpu_bus_id": vals["pci_bus_id"],
                    "gpu_name": vals["name"],
                    "pid": str(p.get("pid")),
                    "process_name": p.get("name", "python3"),
                    "used_memory": NA if used is None else str(int(used)),
                    "used_gpu_memory": NA if used is None else str(int(used)),
                }
                rows.append([str(by[n]) for n in names])
        units = [MIB if n.startswith("used") else "" for n in names]
        render(rows, names, units, opts.get("format", "csv"))
        return 0
    if "list" in opts:
        for i, g in gpus:
            vals = gpu_values(cfg, i, g)
            print(f"GPU {i}: {vals['name']} (UUID: {vals['uuid']})")
        return 0
    cuda = cfg.get("cuda_version", "12.4")
    if isinstance(cuda, int):
        cuda = f"{cuda // 1000}.{cuda % 1000 // 10}"
    print(
        f"| NVIDIA-SMI {cfg.get('driver_version', '550.54.15')}   Driver Version: "
        f"{cfg.get('driver_version', '550.54.15')}   CUDA Version: {cuda} |"
    )
    for i, g in gpus:
        vals = gpu_values(cfg, i, g)
        print(f"|  {i}  {vals['name']}  {vals['memory_used_mib']}MiB / {vals['memory_total_mib']}MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
