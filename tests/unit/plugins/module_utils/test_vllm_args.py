"""vllm_args against the generated flag tables of vLLM 0.8.5, 0.10.2 and 0.33.0 (dumped from the real parsers)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import args as vllm_args
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm.flag_tables import MODULES

OLD, MID, NEW = "0.8.5", "0.10.2", "0.33.0"
M = "facebook/opt-125m"


def serve(version: str, *args: str) -> list[str]:
    return vllm_args.validate_argv([M, *args], version, "serve")


def kinds(argv: list[str], version: str, entrypoint: str = "serve") -> list[tuple[str, str]]:
    found, _warning = vllm_args.problems(argv, version, entrypoint)
    return [(p.kind, p.message) for p in found]


# ---------------------------------------------------------------------------------------------------------------
# the tables


def test_known_versions_are_the_generated_tables_oldest_first():
    assert vllm_args.known_versions() == [OLD, MID, NEW]
    assert vllm_args.newest_version() == NEW
    for version in vllm_args.known_versions():
        table = MODULES[version].TABLE
        assert table["version"] == version
        assert set(table["entrypoints"]) == {"serve", "api_server"}


@pytest.mark.parametrize(
    ("version", "present", "absent"),
    [
        (OLD, ["--swap-space", "--enable-reasoning", "--task"], ["--runner", "--structured-outputs-config"]),
        (MID, ["--swap-space", "--task", "--runner", "--guided-decoding-backend"], ["--enable-reasoning"]),
        (NEW, ["--runner", "--convert", "--structured-outputs-config"], ["--swap-space", "--task"]),
    ],
)
def test_tables_hold_the_real_release_differences(version, present, absent):
    options = {o for a in MODULES[version].TABLE["actions"] for o in a["option_strings"]}
    assert set(present) <= options
    assert not set(absent) & options


def test_newest_table_is_much_larger_and_drops_options_of_0_10_2():
    def opts(v):
        return {o for a in MODULES[v].TABLE["actions"] for o in a["option_strings"]}

    assert len(MODULES[NEW].TABLE["actions"]) > 300 > len(MODULES[MID].TABLE["actions"]) > 150
    assert len(opts(MID) - opts(NEW)) > 40


@pytest.mark.parametrize("dest", sorted(vllm_args.RENAMES))
def test_renames_are_real(dest):
    """Every hand-written rename: an older table has the option, the newest does not, and a flag it points to
    exists in the newest."""
    older = [v for v in vllm_args.known_versions()[:-1] if any(a["dest"] == dest for a in MODULES[v].TABLE["actions"])]
    assert older, f"{dest} is in no older table"
    newest = {o for a in MODULES[NEW].TABLE["actions"] for o in a["option_strings"]}
    assert "--" + dest.replace("_", "-") not in newest
    for flag in re.findall(r"--[a-z][a-z0-9-]+", vllm_args.RENAMES[dest]):
        assert flag in newest, f"RENAMES[{dest!r}] points to {flag}, which vLLM {NEW} lacks"


# ---------------------------------------------------------------------------------------------------------------
# valid argv


@pytest.mark.parametrize("version", [OLD, MID, NEW])
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--max-model-len", "4096", "--gpu-memory-utilization", "0.85", "--tensor-parallel-size", "2"],
        ["--max-model-len=4096", "--dtype=bfloat16"],
        ["--max_model_len", "4096"],  # FlexibleArgumentParser: _ == -
        ["--max-model-len", "32k"],  # human-readable ints
        ["--seed", "-1"],  # a negative number is a value, not an option
        ["--served-model-name", "a", "b", "--port", "8001"],  # nargs +
        ["--enforce-eager", "--trust-remote-code"],
        ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
        ["--hf-overrides", '{"max_position_embeddings": 4096}'],
        ["--lora-modules", "a=/models/a", '{"name": "b", "path": "/models/b"}'],
    ],
)
def test_valid_argv_passes(version, args):
    assert serve(version, *args) == []


def test_unique_prefix_is_accepted_and_ambiguous_one_refused():
    assert serve(MID, "--max-num-seq", "8") == []  # --max-num-seqs
    (problem,) = serve(MID, "--max-num", "8")
    assert "ambiguous option --max-num" in problem and "--max-num-seqs" in problem


def test_newest_release_on_off_flags_are_enable_disable_pairs():
    assert serve(NEW, "--disable-prefix-caching") == []
    assert serve(NEW, "--no-enable-prefix-caching") == []  # hidden from help, still accepted
    assert serve(MID, "--no-enable-prefix-caching") == []
    assert "--disable-prefix-caching is not a flag of vLLM 0.10.2" in serve(MID, "--disable-prefix-caching")[0]


def test_no_x_exists_from_0_10_on():
    assert serve(MID, "--no-enforce-eager") == []
    assert "did you mean --enforce-eager" in serve(OLD, "--no-enforce-eager")[0]


def test_version_specific_shorthands():
    assert serve(MID, "-O3") == []  # -O is --compilation-config in 0.10.2
    assert serve(MID, "--compilation-config.level", "3") == []  # dotted JSON keys
    assert serve(NEW, "-O3") == []  # rewritten to --optimization-level 3
    assert serve(NEW, "--moe-backend", "Deep-Gemm") == []  # lower-cased, - to _, before the choices
    assert serve(NEW, "--max-model-len", "auto") == []
    assert serve(MID, "--max-model-len", "auto") != []


# ---------------------------------------------------------------------------------------------------------------
# broken argv


@pytest.mark.parametrize("version", [OLD, MID, NEW])
@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("--max-model-length", "--max-model-len"),
        ("--gpu-memory-utilisation", "--gpu-memory-utilization"),
        ("--tensor-paralel-size", "--tensor-parallel-size"),
    ],
)
def test_typo_is_refused_with_did_you_mean(version, typo, meant):
    (problem,) = serve(version, typo, "1")
    assert problem.startswith(f"{typo} is not a flag of vLLM {version}")
    assert f"did you mean {meant}" in problem


@pytest.mark.parametrize(
    ("flag", "value", "have", "lack", "hint"),
    [
        ("--swap-space", "4", MID, NEW, "--gpu-memory-utilization"),
        ("--task", "embed", MID, NEW, "--runner"),
        ("--guided-decoding-backend", "xgrammar", MID, NEW, "--structured-outputs-config.backend"),
        ("--enable-reasoning", None, OLD, MID, "--reasoning-parser"),
    ],
)
def test_removed_flag_is_accepted_on_old_and_refused_on_new(flag, value, have, lack, hint):
    args = [flag] + ([value] if value else [])
    extra = ["--reasoning-parser", "deepseek_r1"] if flag == "--enable-reasoning" else []
    assert serve(have, *args, *extra) == []
    problems = serve(lack, *args, *extra)
    assert len(problems) == 1, problems
    assert f"{flag} is not a flag of vLLM {lack}" in problems[0]
    assert re.search(rf"it exists in vLLM [0-9., ]*{re.escape(have)}", problems[0])
    assert hint in problems[0]


@pytest.mark.parametrize("version", [OLD, MID, NEW])
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max-model-len"], "--max-model-len expects a value"),
        (["--max-model-len", "--enforce-eager"], "--max-model-len expects a value"),
        (["--served-model-name"], "--served-model-name expects one or more values"),
        (["--dtype", "fp16"], "--dtype: invalid choice 'fp16' (choose from auto,"),
        (["--tensor-parallel-size", "two"], "--tensor-parallel-size 'two': not an integer"),
        (["--gpu-memory-utilization", "high"], "--gpu-memory-utilization 'high': not a number"),
        (["--max-model-len", "1.5K"], "decimals are not allowed with the binary suffix K"),
        (["--enforce-eager=yes"], "--enforce-eager is an on/off flag and takes no value"),
        (["--hf-overrides", "{not json}"], "--hf-overrides '{not json}': not valid JSON"),
        (["--lora-modules", "adapter"], "--lora-modules 'adapter': not name=path nor a JSON object"),
        (["--help"], "--help makes vLLM print its help and exit"),
        ([M + "-2"], "unrecognized arguments: facebook/opt-125m-2"),
    ],
)
def test_broken_argv_is_refused_with_a_clear_message(version, args, expected):
    problems = serve(version, *args)
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_every_problem_is_reported_at_once():
    problems = serve(
        NEW, "--swap-space", "4", "--dtype", "fp16", "--max-model-len", "many", "--enable-auto-tool-choice"
    )
    assert len(problems) == 4


def test_optional_choice_none_is_refused_like_vllm_does():
    # vLLM converts "None" to None before the choices check, then refuses it ("invalid choice: None")
    assert "invalid choice None" in serve(MID, "--task", "None")[0]


@pytest.mark.parametrize("version", [OLD, MID, NEW])
@pytest.mark.parametrize("entrypoint", vllm_args.ENTRYPOINTS)
def test_auto_tool_choice_needs_a_parser(version, entrypoint):
    model = [M] if entrypoint == "serve" else ["--model", M]
    problems = vllm_args.validate_argv([*model, "--enable-auto-tool-choice"], version, entrypoint)
    assert problems == [
        f"--enable-auto-tool-choice requires --tool-call-parser (vLLM {version} refuses to start without it)"
    ]
    fixed = [*model, "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    assert vllm_args.validate_argv(fixed, version, entrypoint) == []


def test_newest_release_rules():
    assert "--enable-log-outputs requires --enable-log-requests" in serve(NEW, "--enable-log-outputs")[0]
    assert serve(NEW, "--enable-log-outputs", "--enable-log-requests") == []
    assert (
        "cannot be combined with --disable-log-stats"
        in serve(NEW, "--enable-per-request-metrics", "--disable-log-stats")[0]
    )
    # --grpc-port needs an env var of the container, and the api_server entrypoint never takes it
    assert "VLLM_USE_RUST_FRONTEND=1" in serve(NEW, "--grpc-port", "50051")[0]
    env = {"VLLM_USE_RUST_FRONTEND": "1"}
    assert vllm_args.validate_argv([M, "--grpc-port", "50051"], NEW, "serve", env=env) == []
    assert vllm_args.validate_argv(["--model", M, "--grpc-port", "50051"], NEW, "api_server", env=env) != []


# ---------------------------------------------------------------------------------------------------------------
# the model: positional for `vllm serve`, --model for the api_server entrypoint


@pytest.mark.parametrize(
    ("version", "entrypoint", "argv", "expected"),
    [
        (MID, "serve", [M], []),
        (MID, "serve", ["--model", M], [("start", "vllm serve of vLLM 0.10.2 refuses --model")]),
        (OLD, "serve", ["--model", M], [("start", "vllm serve of vLLM 0.8.5 refuses --model")]),
        (NEW, "serve", ["--model", M], []),  # 0.33 moves --model to the front (with a warning)
        (NEW, "serve", [M, "--model", M], [("parser", "the model is given twice")]),
        (MID, "serve", ["--port", "8001"], [("policy", "no model")]),
        (NEW, "serve", ["--port", "8001", M, "--served-model-name", "x"], [("start", "the FIRST argument")]),
        (MID, "serve", ["--port", "8001", M, "--served-model-name", "x"], []),
        (OLD, "api_server", ["--model", M], []),
        (MID, "api_server", ["--model", M], []),
        (NEW, "api_server", ["--model", M], []),
        (MID, "api_server", [M], [("policy", "the api_server entrypoint ignores the positional")]),
        (OLD, "api_server", [M], [("parser", "unrecognized arguments"), ("policy", "no model")]),
    ],
)
def test_model_positional_or_option_per_entrypoint(version, entrypoint, argv, expected):
    found = kinds(argv, version, entrypoint)
    assert len(found) == len(expected), found
    for (kind, message), (want_kind, want_text) in zip(found, expected, strict=True):
        assert kind == want_kind
        assert want_text in message


def test_unknown_entrypoint_is_an_error():
    with pytest.raises(GpufleetError, match="unknown vLLM entrypoint 'cli'"):
        vllm_args.validate_argv([M], MID, "cli")


# ---------------------------------------------------------------------------------------------------------------
# versions


@pytest.mark.parametrize(
    ("given", "table"),
    [("0.10.2", MID), ("v0.10.2", MID), ("0.10.2.post1", MID), ("0.10.2+cu128", MID), ("0.8.5", OLD)],
)
def test_release_numbers_use_their_table_without_warning(given, table):
    assert vllm_args.resolve_version(given) == (table, None)


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("nightly", "is not a release number"),
        ("latest", "is not a release number"),
        ("3f9c2a1b", "is not a release number"),
        ("0.11.0", "has no flag table"),
        ("", "no vLLM version given"),
        (None, "no vLLM version given"),
    ],
)
def test_unknown_versions_use_the_newest_table_with_a_warning(given, why):
    table, warning = vllm_args.table_for(given)
    assert table is MODULES[NEW].TABLE
    assert why in warning and "newest table, vLLM 0.33.0" in warning and "validate_args: false" in warning
    assert "--swap-space is not a flag of vLLM 0.33.0" in serve(given, "--swap-space", "4")[0]


def test_check_argv_raises_bad_args_and_returns_warnings():
    assert vllm_args.check_argv([M, "--max-model-len", "4096"], MID) == []
    (warning,) = vllm_args.check_argv([M], "nightly")
    assert "nightly" in warning
    with pytest.raises(GpufleetError) as err:
        vllm_args.check_argv([M, "--swap-space", "4", "--dtype", "fp16"], NEW)
    assert err.value.details["failure_class"] == "bad_args"
    assert len(err.value.details["problems"]) == 2
    assert err.value.details["table_version"] == NEW
    assert str(err.value).startswith("the vLLM serve argv does not fit vLLM 0.33.0: --swap-space")


# ---------------------------------------------------------------------------------------------------------------
# typed options -> flags


@pytest.mark.parametrize(
    ("option", "version", "flag"),
    [
        ("max_model_len", MID, "--max-model-len"),
        ("--max-model-len", NEW, "--max-model-len"),
        ("tensor_parallel_size", NEW, "--tensor-parallel-size"),
        ("enable_prefix_caching", NEW, "--enable-prefix-caching"),
        ("swap_space", MID, "--swap-space"),
    ],
)
def test_flag_for_maps_options(option, version, flag):
    assert vllm_args.flag_for(option, version) == flag


@pytest.mark.parametrize(
    ("option", "version", "expected"),
    [
        ("swap_space", NEW, "option swap_space (--swap-space) does not exist in vLLM 0.33.0; vLLM 0.8.5, 0.10.2 have"),
        ("task", NEW, "use --runner"),
        ("guided_decoding_backend", NEW, "use --structured-outputs-config.backend"),
        ("enable_reasoning", MID, "vLLM 0.8.5 has it; --reasoning-parser alone enables reasoning"),
        ("runner", OLD, "vLLM 0.10.2, 0.33.0 have it"),
        ("max_model_length", NEW, "did you mean --max-model-len?"),
    ],
)
def test_flag_for_names_version_and_replacement(option, version, expected):
    with pytest.raises(GpufleetError) as err:
        vllm_args.flag_for(option, version)
    assert expected in str(err.value)
    assert err.value.details["failure_class"] == "bad_args"


@pytest.mark.parametrize("version", [OLD, MID, NEW])
def test_argv_for_builds_an_argv_that_validates(version):
    options = {
        "max_model_len": 4096,
        "enforce_eager": True,
        "enable_prefix_caching": False,
        "served_model_name": ["a", "b"],
        "hf_overrides": {"rope_scaling": {"factor": 2}},
        "seed": None,
    }
    argv = vllm_args.argv_for(options, version)
    assert argv[:2] == ["--max-model-len", "4096"]
    assert "--enforce-eager" in argv and "--served-model-name" in argv and "--seed" not in argv
    off = "--disable-prefix-caching" if version == NEW else "--no-enable-prefix-caching"
    assert off in argv
    assert serve(version, *argv) == []


def test_argv_for_refuses_what_the_version_lacks():
    with pytest.raises(GpufleetError, match=r"does not exist in vLLM 0\.33\.0"):
        vllm_args.argv_for({"swap_space": 4}, NEW)
    with pytest.raises(GpufleetError, match="is on/off"):
        vllm_args.argv_for({"enforce_eager": "yes"}, NEW)


# ---------------------------------------------------------------------------------------------------------------
# the generator's output format (tools/vllm_flags/generate.py)


def _generator():
    path = Path(__file__).resolve().parents[4] / "tools" / "vllm_flags" / "generate.py"
    spec = importlib.util.spec_from_file_location("vllm_flags_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("version", [OLD, MID, NEW])
def test_table_modules_are_the_generators_untouched_output(version):
    gen = _generator()
    source = Path(MODULES[version].__file__).read_text(encoding="utf-8")
    assert source.startswith("# Generated by tools/vllm_flags/generate.py from the real parser of vLLM")
    assert f"# Regenerate: .venv/bin/python tools/vllm_flags/generate.py {version}\n" in source
    assert gen.render_json(MODULES[version].TABLE) in source
    assert max(len(line) for line in source.splitlines()) <= gen.WIDTH


@pytest.mark.parametrize(
    ("requirement", "pin"),
    [
        ("transformers>=4.55.2", "transformers==4.55.2"),
        ("fastapi[standard]>=0.115.0", "fastapi[standard]==0.115.0"),
        ("lark==1.2.2", "lark==1.2.2"),
        ("numpy", "numpy"),
        ("openai<2,>=1.99.1", "openai==1.99.1"),
    ],
)
def test_generator_pins_the_lowest_version_vllm_allows(requirement, pin):
    gen = _generator()
    req = gen.Requirement(requirement)
    assert gen.lowest_pin(req, gen.canonicalize_name(req.name)) == pin
