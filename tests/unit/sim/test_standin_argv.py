"""The stand-in's argv parser (sim/standin/standin/argv.py) follows the generated flag tables exactly.

For every table's version and both entrypoints, a few thousand argv (the opt-in real-parser test's generated lists
plus the cases of the collection's validator tests) go through the stand-in's parser and through
``vllm_args.problems``: the stand-in refuses an argv (argparse, exit 2) exactly when the validator finds a problem
of kind ``parser``. Both follow the real vLLM parsers (the validator is checked against them by tests/realparser).
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import args as vllm_args

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "sim" / "standin"))

from standin import argv, tables  # noqa: E402

REAL = ROOT / "plugins" / "module_utils" / "_vllm" / "flag_tables"
OLD, MID, NEW = "0.8.5", "0.10.2", "0.33.0"
M = "facebook/opt-125m"

# argv after the model (from tests/unit/plugins/module_utils/test_vllm_args.py and the flags that differ between
# the table formats: on/off pairs, hidden aliases, the new types, entrypoint differences)
COMMON: list[list[str]] = [
    [],
    ["--max-model-len", "4096", "--gpu-memory-utilization", "0.85", "--tensor-parallel-size", "2"],
    ["--max-model-len=4096", "--dtype=bfloat16"],
    ["--max_model_len", "4096"],
    ["--max_num_seqs=4"],
    ["--max-model-len", "32k"],
    ["--max-model-len", "1M"],
    ["--max-model-len", "25.6k"],
    ["--seed", "-1"],
    ["--served-model-name", "a", "b", "--port", "8001"],
    ["--port=8001"],
    ["-tp", "2"],
    ["-tp2"],
    ["-tp=2"],
    ["-pp", "x"],
    ["--enforce-eager", "--trust-remote-code"],
    ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
    ["--hf-overrides", '{"max_position_embeddings": 4096}'],
    ["--lora-modules", "a=/models/a", '{"name": "b", "path": "/models/b"}'],
    ["--max-num-seq", "8"],
    ["--max-num", "8"],
    ["--enable-prefix-caching"],
    ["--disable-prefix-caching"],
    ["--no-enable-prefix-caching"],
    ["--enable-prefix-caching", "--no-enable-prefix-caching"],
    ["--no-disable-prefix-caching"],
    ["--no-enforce-eager"],
    ["--enable-expert-parallel"],
    ["--disable-expert-parallel"],
    ["--no-enable-expert-parallel"],
    ["--no-disable-expert-parallel"],
    ["-ep"],
    ["--enable-chunked-prefill"],
    ["--no-enable-chunked-prefill"],
    ["--disable-chunked-prefill"],
    ["-O3"],
    ["-O", "3"],
    ["--compilation-config.level", "3"],
    ["--compilation-config.cudagraph_mode=FULL"],
    ["--compilation-config", '{"level": 3}'],
    ["--hf-overrides.rope_scaling.factor", "2"],
    ["--moe-backend", "Deep-Gemm"],
    ["--moe-backend", "deep_gemm"],
    ["--moe-backend", "deep-gem"],
    ["--linear-backend", "FlashInfer-Cutlass"],
    ["--max-model-len", "auto"],
    ["--max-model-len", "-1"],
    ["--max-model-len", "1.5K"],
    ["--max-model-len", "lots"],
    ["--max-model-length", "1"],
    ["--gpu-memory-utilisation", "1"],
    ["--tensor-paralel-size", "1"],
    ["--swap-space", "4"],
    ["--task", "embed"],
    ["--task", "None"],
    ["--runner", "pooling"],
    ["--guided-decoding-backend", "xgrammar"],
    ["--enable-reasoning", "--reasoning-parser", "deepseek_r1"],
    ["--max-model-len"],
    ["--max-model-len", "--enforce-eager"],
    ["--served-model-name"],
    ["--dtype", "fp16"],
    ["--dtype", "None"],
    ["--quantization", "None"],
    ["--quantization", "awq"],
    ["--tensor-parallel-size", "two"],
    ["--gpu-memory-utilization", "high"],
    ["--enforce-eager=yes"],
    ["--hf-overrides", "{not json}"],
    ["--lora-modules", "adapter"],
    ["--lora-modules", '{"name": "adapter"}'],
    ["--lora-modules", ""],
    ["--prompt-adapters", "a=/p"],
    ["--prompt-adapters", "a"],
    ["--help"],
    ["--enable-auto-tool-choice", "--tool-call-parser"],
    ["--api-key", "k1", "k2"],
    ["--hf-token"],
    ["--hf-token", "hf_x"],
    ["--chat-template-content-format", "openai"],
    ["--middleware", "a.b", "--middleware", "c.d"],
    ["--no-such-flag", "3"],
    ["--enforce"],
    [M + "-2"],
    ["--", "x"],
]


@cache
def _realparser() -> ModuleType:
    """tests/realparser/test_realparser.py (opt-in there): its generators of good and broken argv per table."""
    path = ROOT / "tests" / "realparser" / "test_realparser.py"
    spec = importlib.util.spec_from_file_location("_standin_realparser_cases", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases(version: str, entrypoint: str) -> list[list[str]]:
    model = [M] if entrypoint == "serve" else ["--model", M]
    out = [[*model, *args] for args in COMMON]
    out += [["--model", M], [M, "--model", M], ["--model=" + M], ["--port", "8001", M, "--served-model-name", "x"]]
    out += [[M], ["--model", M, M], ["--port", "8001"], ["--model"]]
    rp = _realparser()
    out += rp._good_cases(version, entrypoint) + rp._bad_cases(version, entrypoint)
    return out


@cache
def table(version: str) -> dict:
    return tables.load(version, REAL)


def test_stand_in_uses_the_generated_tables_only():
    assert list(tables.available(REAL)) == vllm_args.known_versions() == [OLD, MID, NEW]
    assert tables.default_dirs() == [REAL] or tables.default_dirs() == [tables.IMAGE_DIR]
    assert not (ROOT / "sim" / "standin" / "dev_tables").exists()
    for version in (OLD, MID, NEW):
        assert table(version) == vllm_args.table_for(version)[0]


@pytest.mark.parametrize("entrypoint", vllm_args.ENTRYPOINTS)
@pytest.mark.parametrize("version", [OLD, MID, NEW])
def test_parser_verdict_agrees_with_the_validator(version, entrypoint):
    argvs = cases(version, entrypoint)
    assert len(argvs) > 250
    disagree = []
    refused = 0
    parser = argv.build_parser(table(version), entrypoint)
    for args in argvs:
        found, _warning = vllm_args.problems(args, version, entrypoint)
        theirs = [p.message for p in found if p.kind == "parser"]
        ours = argv.check(table(version), args, entrypoint, parser)
        refused += ours is not None
        if (ours is None) != (not theirs):
            disagree.append({"argv": args, "stand-in": ours, "validator": theirs})
    assert not disagree, f"{len(disagree)} of {len(argvs)} disagree: {disagree[:10]}"
    assert 0.1 * len(argvs) < refused < 0.9 * len(argvs)  # the sets hold both kinds


@pytest.mark.parametrize(
    ("version", "args"),
    [
        (NEW, ["--disable-expert-parallel"]),  # listed under `negative`
        (NEW, ["--no-enable-prefix-caching"]),  # hidden_options
        (NEW, ["--moe-backend", "Deep-Gemm"]),  # str_lower_underscore
        (NEW, ["--max-model-len", "auto"]),  # human_int_or_auto
        (NEW, ["--max-model-len", "1T"]),  # 0.3x knows tera
        (MID, ["--no-enable-prefix-caching"]),
        (MID, ["-O3"]),
        (OLD, ["--quantization", "None"]),
    ],
)
def test_flags_the_old_stand_in_refused_are_accepted(version, args):
    assert argv.check(table(version), [M, *args]) is None


def test_on_off_flags_switch_by_the_tables_negative_list():
    t = table(NEW)
    assert argv.parse(t, [M, "--enable-expert-parallel"])[0].enable_expert_parallel is True
    assert argv.parse(t, [M, "-ep"])[0].enable_expert_parallel is True
    assert argv.parse(t, [M, "--disable-expert-parallel"])[0].enable_expert_parallel is False
    assert argv.parse(t, [M, "--no-enable-expert-parallel"])[0].enable_expert_parallel is False
    assert argv.parse(t, [M])[0].enable_expert_parallel is None
    assert "--no-disable-expert-parallel" in argv.check(t, [M, "--no-disable-expert-parallel"])
    t10 = table(MID)
    assert argv.parse(t10, [M, "--no-enable-prefix-caching"])[0].enable_prefix_caching is False
    assert "--disable-prefix-caching" in argv.check(t10, [M, "--disable-prefix-caching"])


def test_new_types_convert_like_vllm():
    ns, _warnings = argv.parse(table(NEW), [M, "--moe-backend", "Deep-Gemm", "--max-model-len", "auto"])
    assert ns.moe_backend == "deep_gemm"
    assert ns.max_model_len == -1
    assert "invalid choice: 'deep_gem'" in argv.check(table(NEW), [M, "--moe-backend", "deep-gem"])
    ns, _warnings = argv.parse(table(OLD), ["--model", M, "--prompt-adapters", "a=/p"], "api_server")
    assert ns.prompt_adapters == ["a=/p"]
    assert "expected name=path" in argv.check(table(OLD), ["--model", M, "--prompt-adapters", "a"], "api_server")
    assert argv.human_readable_int("1T", tera=True) == 2**40
    with pytest.raises(ValueError):
        argv.human_readable_int("1T")
    assert argv.check_port("8000") == 8000
    with pytest.raises(argv.argparse.ArgumentTypeError, match="between 1024 and 65535"):
        argv.check_port("80")


def test_api_server_parser_follows_missing_dests():
    # 0.8.5's module entrypoint has no model_tag and no --config (missing_dests); 0.10.2's keeps both
    assert "unrecognized arguments: m" in argv.check(table(OLD), ["--model", M, "m"], "api_server")
    # (without --config, a unique prefix of --config-format)
    assert "--config-format: invalid choice: 'c.yaml'" in argv.check(
        table(OLD), ["--model", M, "--config", "c.yaml"], "api_server"
    )
    assert argv.check(table(OLD), [M, "--config", "c.yaml"], "serve") is None
    ns, _warnings = argv.parse(table(MID), ["--model", M, "other"], "api_server")
    assert ns.model == M  # the api_server entrypoint ignores a positional model


def test_extra_actions_replace_the_serve_action():
    t = {**table(MID), "entrypoints": {**table(MID)["entrypoints"]}}
    t["entrypoints"]["api_server"] = {
        **t["entrypoints"]["api_server"],
        "extra_actions": [{"dest": "port", "option_strings": ["--port"], "kind": "store", "nargs": None,
                           "type": "port", "choices": None}],
    }  # fmt: skip
    assert argv.check(t, ["--model", M, "--port", "80"], "serve") is None
    assert "between 1024 and 65535" in argv.check(t, ["--model", M, "--port", "80"], "api_server")


def test_model_option_per_version():
    with pytest.raises(argv.ModelOptionRefused):
        argv.parse(table(MID), ["--model", M])
    with pytest.raises(argv.ModelOptionRefused):
        argv.parse(table(OLD), ["--model", M])
    assert argv.parse(table(MID), ["--model=" + M])[0].model == M  # vLLM only looks for the exact token
    ns, warnings = argv.parse(table(NEW), ["--port", "8001", "--model", M])
    assert ns.model == M and "--model" in warnings[0]
    with pytest.raises(argv.ModelNotFirst):
        argv.parse(table(NEW), ["--port", "8001", M, "--served-model-name", "x"])
    assert argv.parse(table(MID), ["--port", "8001", M, "--served-model-name", "x"])[0].served_model_name == ["x"]
    assert argv.parse(table(OLD), ["--model", M], "api_server")[0].model == M


def test_default_model_per_version():
    assert argv.parse(table(OLD), [], "api_server")[0].model == "facebook/opt-125m"
    assert argv.parse(table(MID), [])[0].model == "Qwen/Qwen3-0.6B"


def test_dotted_json_and_o_shorthand_per_version():
    ns, _warnings = argv.parse(table(MID), [M, "--compilation-config.level", "3", "--compilation-config.mode=FULL"])
    assert ns.compilation_config == {"level": 3, "mode": "FULL"}
    assert argv.parse(table(MID), [M, "-O3"])[0].compilation_config == {"level": 3}  # -O3 -> -O.level=3
    assert argv.parse(table(NEW), [M, "-O3"])[0].optimization_level == "3"  # -> --optimization-level 3
    assert argv.parse(table(OLD), [M, "-O3"])[0].compilation_config == 3  # -O with an attached value
    assert "--compilation-config.level" in argv.check(table(OLD), [M, "--compilation-config.level", "3"])
    ns, _warnings = argv.parse(table(NEW), [M, "--hf-overrides.a+", "x,y", "--hf-overrides.a+=z"])
    assert ns.hf_overrides == {"a": ["x", "y", "z"]}


def test_rules_of_the_table(monkeypatch):
    t10, t33 = table(MID), table(NEW)
    ns, _warnings = argv.parse(t10, [M, "--enable-auto-tool-choice"])
    assert "--enable-auto-tool-choice requires --tool-call-parser" in argv.check_rules(t10, ns, "serve")
    ns, _warnings = argv.parse(t10, [M, "--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    assert argv.check_rules(t10, ns, "serve") is None
    # requires_min
    ns, _warnings = argv.parse(t33, [M, "--data-parallel-multi-port-external-lb", "-dp", "2", "-dpl", "1"])
    assert "--data-parallel-multi-port-external-lb requires" in argv.check_rules(t33, ns, "serve")
    ns, _warnings = argv.parse(t33, [M, "--data-parallel-multi-port-external-lb", "-dp", "2", "-dpl", "2"])
    assert argv.check_rules(t33, ns, "serve") is None
    # conflicts
    ns, _warnings = argv.parse(t33, [M, "--enable-per-request-metrics", "--disable-log-stats"])
    assert "--enable-per-request-metrics" in argv.check_rules(t33, ns, "serve")
    # requires_env, refused_on
    ns, _warnings = argv.parse(t33, [M, "--grpc-port", "50051"])
    assert "VLLM_USE_RUST_FRONTEND=1" in argv.check_rules(t33, ns, "serve", env={})
    assert argv.check_rules(t33, ns, "serve", env={"VLLM_USE_RUST_FRONTEND": "1"}) is None
    monkeypatch.setenv("VLLM_USE_RUST_FRONTEND", "1")
    assert argv.check_rules(t33, ns, "serve") is None
    ns, _warnings = argv.parse(t33, ["--model", M, "--grpc-port", "50051"], "api_server")
    assert argv.check_rules(t33, ns, "api_server") is not None


def test_parse_errors_exit_2_with_argparse_messages(capsys):
    t = table(MID)
    with pytest.raises(SystemExit) as e:
        argv.parse(t, [M, "--no-such-flag", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: vllm [-h] [-v]" in err and "vllm: error: unrecognized arguments: --no-such-flag 1" in err
    for bad in (["--dtype", "float7"], ["--port", "http"]):
        with pytest.raises(SystemExit) as e:
            argv.parse(t, [M, *bad])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "vllm serve: error: argument --dtype: invalid choice: 'float7'" in err
    assert "argument --port: invalid int value: 'http'" in err
    with pytest.raises(SystemExit):
        argv.parse(table(OLD), [M], "api_server")
    assert "api_server.py: error: unrecognized arguments: facebook/opt-125m" in capsys.readouterr().err


def test_deprecated_flags_warn():
    _ns, warnings = argv.parse(table(MID), [M, "--disable-log-requests"])
    assert "argument 'disable_log_requests' is deprecated" in warnings
