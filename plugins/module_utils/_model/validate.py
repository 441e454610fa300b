# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation of a model directory before it is swapped in: what vLLM needs to load it.

`validate_model_dir(path)` returns a report dict; `check_model_dir(path)` raises GpufleetError listing every missing
or broken file. Checks: config.json parses (unless the model is a single .gguf file); tokenizer files present
(tokenizer.json, tokenizer.model, or vocab files) unless require_tokenizer=False; every shard named in
model.safetensors.index.json / pytorch_model.bin.index.json exists (and, for safetensors, has the size its header
declares); -0000N-of-0000M shard sets are complete; every safetensors header parses and its data fits the file.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tiktoken.model", "spiece.model")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})(?P<suffix>\.[A-Za-z0-9.]+)$")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors caps headers at 100 MB
_ST_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def safetensors_header(path: str) -> tuple[dict[str, Any], int]:
    """Parse a safetensors header; return (header, expected file size). Raises ValueError on a broken file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("file is shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as err:
            raise ValueError(f"header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            a, b = t["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"tensor {name!r} has no data_offsets") from None
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a <= b):
            raise ValueError(f"tensor {name!r} has bad data_offsets {t['data_offsets']}")
        width = _ST_DTYPE_BYTES.get(t.get("dtype", ""))
        if width is not None and isinstance(t.get("shape"), list):
            count = 1
            for d in t["shape"]:
                count *= int(d)
            if count * width != b - a:
                raise ValueError(f"tensor {name!r}: shape {t['shape']} x {t['dtype']} != {b - a} bytes")
        end = max(end, b)
    return header, 8 + n + end


def _list_files(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        for fn in filenames:
            if fn.startswith("."):
                continue
            out.append(fn if rel == "." else os.path.join(rel, fn))
    return sorted(out)


def validate_model_dir(
    path: str, require_tokenizer: bool = True, files: list[str] | None = None, check_headers: bool = True
) -> dict[str, Any]:
    """Check a model directory; return {ok, format, problems, files_checked, weight_bytes}."""
    problems: list[str] = []
    if not os.path.isdir(path):
        return {"ok": False, "format": None, "problems": [f"{path} is not a directory"], "files_checked": 0}
    names = files if files is not None else _list_files(path)
    present = set(names)
    top = {n for n in names if "/" not in n}
    ggufs = sorted(n for n in top if n.endswith(".gguf"))
    safetensors = sorted(n for n in top if n.endswith(".safetensors"))
    bins = sorted(n for n in top if n.endswith((".bin", ".pt", ".pth")))
    fmt = "safetensors" if safetensors else "pytorch" if bins else "gguf" if ggufs else None
    checked = 0
    weight_bytes = 0

    if fmt == "gguf" and not safetensors and not bins:
        # A .gguf file carries its own config and tokenizer; one file (or a -of- split set) is enough.
        for g in ggufs:
            with open(os.path.join(path, g), "rb") as f:
                if f.read(4) != b"GGUF":
                    problems.append(f"{g}: not a GGUF file (bad magic)")
            checked += 1
            weight_bytes += os.path.getsize(os.path.join(path, g))
        problems += _shard_sets(ggufs, present)
        return _report(problems, fmt, checked, weight_bytes)

    if "config.json" not in present:
        problems.append("config.json is missing")
    else:
        try:
            with open(os.path.join(path, "config.json"), "rb") as f:
                cfg = json.load(f)
            if not isinstance(cfg, dict):
                problems.append("config.json is not a JSON object")
        except (OSError, ValueError) as err:
            problems.append(f"config.json does not parse: {err}")
        checked += 1

    if require_tokenizer and not any(t in present for t in TOKENIZER_FILES):
        problems.append(
            "no tokenizer files (tokenizer.json, tokenizer.model or vocab files); pass require_tokenizer=false if "
            "the tokenizer comes from elsewhere"
        )

    if fmt is None:
        problems.append("no weight files (*.safetensors, *.bin, *.pt, *.gguf) at the top level")

    for index_name in INDEX_FILES:
        if index_name not in present:
            continue
        checked += 1
        try:
            with open(os.path.join(path, index_name), "rb") as f:
                index = json.load(f)
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            problems.append(f"{index_name} does not parse or has no weight_map: {err}")
            continue
        missing = [s for s in shards if s not in present]
        if missing:
            problems.append(f"{index_name} lists missing shards: {', '.join(missing)}")

    problems += _shard_sets(safetensors + bins, present)

    for st in safetensors:
        full = os.path.join(path, st)
        size = os.path.getsize(full)
        weight_bytes += size
        checked += 1
        if not check_headers:
            continue
        try:
            _header, expected = safetensors_header(full)
        except (OSError, ValueError) as err:
            problems.append(f"{st}: safetensors header does not parse: {err}")
            continue
        if expected != size:
            problems.append(f"{st}: size {size} bytes, header says {expected} (truncated or corrupt)")
    for b in bins:
        weight_bytes += os.path.getsize(os.path.join(path, b))
        checked += 1
    return _report(problems, fmt, checked, weight_bytes)


def _shard_sets(names: list[str], present: set[str]) -> list[str]:
    problems = []
    sets: dict[tuple[str, str, int], set[int]] = {}
    for n in names:
        m = _SHARD_RE.match(n)
        if m:
            sets.setdefault((m["prefix"], m["suffix"], int(m["n"])), set()).add(int(m["i"]))
    for (prefix, suffix, total), have in sorted(sets.items()):
        missing = [f"{prefix}-{i:05d}-of-{total:05d}{suffix}" for i in range(1, total + 1) if i not in have]
        missing = [m for m in missing if m not in present]
        if missing:
            problems.append(f"incomplete shard set {prefix}-*-of-{total:05d}{suffix}: missing {', '.join(missing)}")
    return problems


def _report(problems: list[str], fmt: str | None, checked: int, weight_bytes: int) -> dict[str, Any]:
    return {
        "ok": not problems,
        "format": fmt,
        "problems": problems,
        "files_checked": checked,
        "weight_bytes": weight_bytes,
    }


def check_model_dir(path: str, require_tokenizer: bool = True, what: str = "model") -> dict[str, Any]:
    """validate_model_dir, raising GpufleetError(failure_class="invalid_model") when anything is wrong."""
    report = validate_model_dir(path, require_tokenizer=require_tokenizer)
    if not report["ok"]:
        raise GpufleetError(
            f"{what} failed validation: " + "; ".join(report["problems"]),
            failure_class="invalid_model",
            validation=report,
        )
    return report


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def validate_adapter_dir(path: str) -> dict[str, Any]:
    """What vLLM needs to load a LoRA adapter directory: adapter_config.json (a JSON object) and its weights
    (adapter_model.safetensors, whose header must parse and fit the file, or adapter_model.bin). Same report shape as
    validate_model_dir."""
    problems: list[str] = []
    checked: list[str] = []
    try:
        with open(os.path.join(path, "adapter_config.json")) as f:
            cfg = json.load(f)
        checked.append("adapter_config.json")
        if not isinstance(cfg, dict):
            problems.append("adapter_config.json is not a JSON object")
    except FileNotFoundError:
        problems.append("adapter_config.json is missing: not a LoRA adapter")
    except (OSError, ValueError) as err:
        problems.append(f"adapter_config.json does not parse ({err})")
    weights = [w for w in ADAPTER_WEIGHTS if os.path.isfile(os.path.join(path, w))]
    if not weights:
        problems.append(f"no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    weight_bytes = 0
    for w in weights:
        full = os.path.join(path, w)
        weight_bytes += os.path.getsize(full)
        checked.append(w)
        if w.endswith(".safetensors"):
            try:
                _header, expected = safetensors_header(full)
                if expected != os.path.getsize(full):
                    problems.append(f"{w}: {os.path.getsize(full)} bytes, its header declares {expected}")
            except ValueError as err:
                problems.append(f"{w}: {err}")
    return {
        "ok": not problems,
        "format": "lora",
        "problems": problems,
        "files_checked": len(checked),
        "weight_bytes": weight_bytes,
    }
