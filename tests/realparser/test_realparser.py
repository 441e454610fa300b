"""Opt-in: the collection's argv checker agrees with the REAL vLLM parser of every table's version.

For each vLLM version with a table, tools/vllm_flags/generate.py builds (or reuses) its venv under
.cache/vllm-flags/<version>/venv; tools/vllm_flags/_dump.py then runs a few hundred argv through vLLM's own parser
and pre-start checks in one process. Every argv the collection would generate (typed options -> argv_for, one per
flag of the table with a valid value) must pass both; every broken argv (typo, removed flag, missing value, bad
choice, bad number, tool-choice rule, --model on `vllm serve`) must fail both. Problems of kind "policy" (vLLM
accepts the argv but ignores part of it) are not compared.

    GPUFLEET_REALPARSER=1 .venv/bin/pytest tests/realparser -v
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import args as vllm_args

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "vllm_flags"
CACHE = Path(os.environ.get("GPUFLEET_VLLM_FLAGS_CACHE", ROOT / ".cache" / "vllm-flags"))
MODEL = "facebook/opt-125m"
CHAT_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"


def _venv(version: str) -> Path:
    venv = CACHE / version / "venv"
    if not (venv / ".ready").exists():
        proc = subprocess.run(
            [sys.executable, str(TOOL / "generate.py"), "--venv-only", "--cache", str(CACHE), version],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    return venv


def _real(version: str, cases: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    venv = _venv(version)
    src, out = tmp_path / f"cases-{version}.json", tmp_path / f"results-{version}.json"
    src.write_text(json.dumps(cases))
    proc = subprocess.run(
        [str(venv / "bin" / "python"), str(TOOL / "_dump.py"), "parse", str(src), str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _sample(action: dict[str, Any]) -> list[str] | None:
    """A value the flag accepts, per the table (None: leave the flag out)."""
    if action["dest"] == "chat_template":
        return [CHAT_TEMPLATE]
    if action.get("type") in ("lora_modules", "name_path"):
        return ["adapter=/models/adapter"]
    choices = [c for c in action.get("choices") or [] if c not in ("None", None)]
    kind = action.get("type")
    if choices:
        one = str(choices[0])
    elif kind in ("int", "human_int", "human_int_or_auto", "port"):
        one = "2048" if kind == "port" else "1"
    elif kind == "float":
        one = "0.5"
    elif kind == "json":
        one = "{}"
    else:
        one = "x"
    nargs = action.get("nargs")
    if isinstance(nargs, int):
        return [one] * nargs
    return [one]


def _good_cases(version: str, entrypoint: str) -> list[list[str]]:
    table, _warning = vllm_args.table_for(version)
    model = [MODEL] if entrypoint == "serve" else ["--model", MODEL]
    cases = []
    skip = {"model", "config", "help", "version", "headless", "api_server_count", "served_model_name"}
    # flags that need another flag or an env var are checked by the rules (bad cases), not alone
    skip |= {r["if_set"] for r in table.get("rules", []) if "conflicts" not in r}
    for action in table["actions"]:
        if action["kind"] in ("positional", "help", "version") or action["dest"] in skip:
            continue
        for opt in action["option_strings"] + action.get("hidden_options", []):
            if action["kind"] in ("store_true", "store_false", "boolean_optional", "count", "store_const"):
                cases.append([*model, opt])
            else:
                cases.append([*model, opt, *_sample(action)])
    # the collection's typed options, turned into flags by argv_for
    typed = {
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.85,
        "tensor_parallel_size": 1,
        "dtype": "auto",
        "enforce_eager": True,
        "trust_remote_code": False,
        "enable_prefix_caching": True,
        "served_model_name": ["alias-a", "alias-b"],
        "port": 8000,
        "host": "0.0.0.0",
        "max_num_seqs": 64,
        "seed": 0,
        "hf_overrides": {"max_position_embeddings": 4096},
    }
    have = {a["dest"] for a in table["actions"]}
    argv = vllm_args.argv_for({k: v for k, v in typed.items() if k in have}, version, entrypoint)
    cases.append([*model, *argv])
    cases.append([*model, "--max_model_len=2k", "--seed", "-1", "--dtype=half"])
    if table.get("features", {}).get("dotted_json"):
        cases.append([*model, "--hf-overrides.max_position_embeddings", "4096"])
    cases.append([*model, "--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    return cases


def _bad_cases(version: str, entrypoint: str) -> list[list[str]]:
    table, _warning = vllm_args.table_for(version)
    model = [MODEL] if entrypoint == "serve" else ["--model", MODEL]
    have = {o for a in table["actions"] for o in a["option_strings"] + a.get("hidden_options", [])}
    cases = [
        [*model, "--max-model-length", "4096"],
        [*model, "--gpu-memory-utilisation", "0.9"],
        [*model, "--max-model-len"],
        [*model, "--dtype", "fp16"],
        [*model, "--tensor-parallel-size", "two"],
        [*model, "--gpu-memory-utilization", "high"],
        [*model, "--enforce-eager=yes"],
        [*model, "--enable-auto-tool-choice"],
        [*model, "--hf-overrides", "{not json}"],
    ]
    lora = {a["dest"]: a for a in table["actions"]}.get("lora_modules")
    if lora and lora.get("type") == "lora_modules":
        cases.append([*model, "--lora-modules", "adapter"])
        cases.append([*model, "--lora-modules", '{"name": "adapter"}'])
    if entrypoint == "serve":
        cases.append([*model, MODEL + "-second"])
    # flags other releases have and this one does not
    for other in vllm_args.known_versions():
        if other == version:
            continue
        other_table, _warning = vllm_args.table_for(other)
        for action in other_table["actions"]:
            for opt in action["option_strings"]:
                if opt.startswith("--") and opt not in have and not any(h.startswith(opt) for h in have):
                    sample = [] if action["nargs"] == 0 else _sample(action) or []
                    cases.append([*model, opt, *sample])
    if entrypoint == "serve" and table["entrypoints"]["serve"].get("model_option") == "refused":
        cases.append(["--model", MODEL])
    return cases


@pytest.mark.parametrize("version", vllm_args.known_versions())
@pytest.mark.parametrize("entrypoint", vllm_args.ENTRYPOINTS)
def test_checker_agrees_with_real_parser(version: str, entrypoint: str, tmp_path: Path) -> None:
    good = _good_cases(version, entrypoint)
    bad = _bad_cases(version, entrypoint)
    argvs = good + bad
    real = _real(version, [{"entrypoint": entrypoint, "argv": a} for a in argvs], tmp_path)
    disagreements = []
    for argv, result in zip(argvs, real, strict=True):
        found, _warning = vllm_args.problems(argv, version, entrypoint)
        ours = [p.message for p in found if p.kind != "policy"]
        if bool(ours) == result["ok"]:
            disagreements.append({"argv": argv, "ours": ours, "real": result["error"]})
    assert not disagreements, json.dumps(disagreements[:25], indent=1) + f"\n({len(disagreements)} in all)"
    # the cases mean something: the good ones pass the real parser, the bad ones fail it
    refused = [(a, r["error"]) for a, r in zip(good, real, strict=False) if not r["ok"]]
    assert not refused, f"generated argv refused by the real parser: {refused}"
    accepted = [a for a, r in zip(bad, real[len(good) :], strict=True) if r["ok"]]
    assert not accepted, f"broken argv accepted by the real parser: {accepted}"
