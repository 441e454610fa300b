"""Issue #16 hardening pieces: option value checks, secret flags, masking of vLLM's argument dumps, vLLM's option
errors classified as bad_args, max_model_len against config.json, podman CLI timeouts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import validate as cv
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.podman import PodmanRuntime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import args as vllm_args
from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import model_limits

SECRET = "sk-CANARY-1234"


def test_every_number_option_has_a_range_and_ranges_name_real_options():
    numeric = {o.name for o in cs.OPTIONS if o.type in ("int", "float")}
    assert set(cv.RANGES) <= set(cs.OPTION_BY_NAME)
    assert numeric == set(cv.RANGES) | cv.UNBOUNDED


def test_secret_flags_cover_every_secret_flag_of_the_flag_tables():
    assert set(vllm_args.secret_flags()) <= set(cv.SECRET_FLAGS)
    assert set(cv.SECRET_FLAGS.values()) <= set(cs.OPTION_BY_NAME)


@pytest.mark.parametrize(
    "token", ["--api-key", "--api_key", f"--api-key={SECRET}", "--api-k", "--hf-token", f"--hf_token={SECRET}"]
)
def test_secret_flags_in_extra_args_are_refused_without_echoing_the_value(token):
    problems = cv.option_problems({"extra_args": ["--seed", "1", token, SECRET]})
    assert len(problems) == 1
    assert "carries a secret" in problems[0] and "instead" in problems[0] and SECRET not in problems[0]


def test_other_flags_are_not_secret():
    assert cv.option_problems({"extra_args": ["--api-server-count", "2", "--tokenizer", "x", "--ap"]}) == []


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"port": 0}, "port: 0 must be in [1, 65535]"),
        ({"port": 70000}, "port: 70000 must be in [1, 65535]"),
        ({"port": -1}, "port: -1"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size: 0 must be >= 1"),
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization: 0.0 must be in (0, 1]"),
        ({"gpu_memory_utilization": -0.5}, "gpu_memory_utilization: -0.5"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization: 1.5"),
        ({"gpu_memory_utilization": float("nan")}, "gpu_memory_utilization: nan"),
        ({"env": {"BAD-NAME": "x"}}, "env: variable name 'BAD-NAME' is not valid"),
        ({"env": {"A=B": "x"}}, "env: variable name 'A=B'"),
        ({"secret_env": {"MY TOKEN": "x"}}, "secret_env: variable name 'MY TOKEN'"),
        ({"env": {"": "x"}}, "env: variable name ''"),
        ({"env": {"VLLM_API_KEY": "x"}}, "env: VLLM_API_KEY holds a secret; give it as the api_key option"),
        ({"hf_cache_dir": "cache"}, "hf_cache_dir: 'cache' is not an absolute path"),
        ({"compile_cache_dir": "./c"}, "compile_cache_dir: './c' is not an absolute path"),
        ({"lora_modules": [{"name": "a", "path": "rel/a"}]}, "lora_modules[0].path: 'rel/a' is not an absolute"),
        ({"name": "../victim"}, "name '../victim' is not a valid deployment name"),
        ({"name": "a/b"}, "is not a valid deployment name"),
        ({"name": "-x"}, "is not a valid deployment name"),
    ],
)
def test_option_problems_say_what_and_how(params, fragment):
    problems = cv.option_problems(params)
    assert len(problems) == 1 and fragment in problems[0], problems
    with pytest.raises(GpufleetError) as err:
        cv.check(params)
    assert err.value.details["failure_class"] == "bad_args"


def test_good_values_pass():
    good = {
        "name": "chat-0.a_b",
        "port": 8000,
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 1.0,
        "env": {"_X": "1", "A1": "2"},
        "hf_cache_dir": "/var/cache",
        "extra_args": ["--max-num-seqs", "8"],
    }
    assert cv.option_problems(good) == []


def test_vllm_args_refuses_secret_flags_and_never_echoes_the_value():
    found = vllm_args.validate_argv(["m", "--api-key", SECRET, "--port", "8000"], "0.10.2")
    assert len(found) == 1 and "--api-key carries a secret" in found[0] and SECRET not in found[0]


@pytest.mark.parametrize(
    "line",
    [
        "non-default args: {'model_tag': '/m', 'api_key': ['" + SECRET + "'], 'port': 8000}",
        "Namespace(api_key=['" + SECRET + "', 'other'], hf_token=None)",
        "cmd: vllm serve m --api-key " + SECRET,
        "cmd: vllm serve m --hf-token=" + SECRET,
        "{'api_key': '" + SECRET + "'}",
    ],
)
def test_mask_catches_vllm_argument_dumps(line):
    (masked,) = failures.mask([line])
    assert SECRET not in masked and failures.MASK in masked


def test_mask_catches_short_list_items_and_leaves_numbers_alone():
    (masked,) = failures.mask(["'api_key': ['K']"])
    assert "'K'" not in masked
    assert failures.mask(["max_num_batched_tokens: 2048"]) == ["max_num_batched_tokens: 2048"]


MAX_LEN_LINE = (
    "(APIServer pid=1) ValueError: User-specified max_model_len (4096) is greater than the derived max_model_len "
    "(max_position_embeddings=2048 or model_max_length=None in model's config.json). To allow overriding this "
    "maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1."
)


@pytest.mark.parametrize(
    "line, fragments",
    [
        (MAX_LEN_LINE, ["max_model_len 4096", "limit 2048", "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1", "lower max_model_len"]),
        (
            "ValueError: Total number of attention heads (32) must be divisible by tensor parallel size (3).",
            ["tensor_parallel_size 3", "divides 32"],
        ),
        ("ValueError: GPU memory utilization must be within (0, 1]. Got 1.5.", ["gpu_memory_utilization 1.5"]),
    ],
)
def test_vllm_option_errors_are_bad_args_with_the_fix(line, fragments):
    cls, hint = failures.classify(["INFO starting", line, "Traceback (most recent call last):"], exit_code=1)
    assert cls == "bad_args"
    for f in fragments:
        assert f in hint


def _model(tmp_path: Path, config: dict) -> str:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return str(d)


def test_max_model_len_checked_against_config_json(tmp_path):
    model = _model(tmp_path, {"max_position_embeddings": 2048})
    problem = model_limits.max_model_len_problem({"model": model, "max_model_len": 4096})
    assert problem and "limit 2048" in problem and "max_position_embeddings" in problem
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in problem
    assert model_limits.max_model_len_problem({"model": model, "max_model_len": 2048}) is None
    assert model_limits.max_model_len_problem({"model": model}) is None
    allowed = {"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}
    assert model_limits.max_model_len_problem({"model": model, "max_model_len": 4096}, allowed) is None
    # hub ids and unreadable configs: vLLM decides
    assert model_limits.max_model_len_problem({"model": "org/name", "max_model_len": 10**9}) is None
    assert model_limits.max_model_len_problem({"model": str(tmp_path / "none"), "max_model_len": 10**9}) is None


def test_derived_max_len_like_vllm():
    assert model_limits.derived_max_len({"max_position_embeddings": 4096, "seq_length": 2048}) == (2048, "seq_length")
    assert model_limits.derived_max_len({"text_config": {"max_position_embeddings": 8192}}) == (
        8192,
        "max_position_embeddings",
    )
    rope = {"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 4.0}}
    assert model_limits.derived_max_len(rope) == (16384, "max_position_embeddings")
    assert model_limits.derived_max_len({"hidden_size": 1}) is None


def _fake_podman(tmp_path: Path, body: str) -> str:
    path = tmp_path / "podman"
    path.write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    return str(path)


def test_a_hung_podman_is_one_clear_error_not_a_hang(tmp_path):
    rt = PodmanRuntime(binary=_fake_podman(tmp_path, "exec sleep 30"), cli_timeout=0.5)
    started = time.monotonic()
    for call in (lambda: rt.container("x"), lambda: rt.start("x"), rt.list_managed, lambda: rt.logs("x")):
        with pytest.raises(GpufleetError) as err:
            call()
        assert "did not finish within" in str(err.value) and "podman ps" in str(err.value)
        assert err.value.details["failure_class"] == "engine_unreachable"
    assert time.monotonic() - started < 20


def test_podman_stop_gets_its_grace_period_on_top(tmp_path):
    rt = PodmanRuntime(binary=_fake_podman(tmp_path, "sleep 1; exit 0"), cli_timeout=0.5)
    rt.stop("x", 2)  # 1 s < 0.5 + 2 s: no timeout


def test_secret_values_are_found_for_the_modules_no_log_values():
    params = {"extra_args": ["--seed", "1", "--api-key", "k1", "k2", "--port", "1", "--hf_token=t1"], "env": {}}
    params["env"] = {"HF_TOKEN": "t2", "OTHER": "x"}
    assert sorted(cv.secret_values(params)) == ["k1", "k2", "t1", "t2"]


def test_sleep_mode_binds_loopback_unless_a_loopback_host_is_given():
    params, warning = cv.with_sleep_mode_host({"sleep_mode": True, "host": "0.0.0.0"})
    assert params["host"] == "127.0.0.1" and "127.0.0.1 only" in warning
    assert cv.with_sleep_mode_host({"sleep_mode": True, "host": "::1"}) == ({"sleep_mode": True, "host": "::1"}, None)
    assert cv.with_sleep_mode_host({"sleep_mode": False, "host": "0.0.0.0"})[0]["host"] == "0.0.0.0"
    assert cv.option_problems(params) == []


def test_sleep_mode_with_a_network_host_is_refused_with_the_way_out():
    (problem,) = cv.option_problems({"sleep_mode": True, "host": "10.0.0.5"})
    assert "dev endpoints" in problem and "leave host unset" in problem and "sleep_mode off" in problem
    assert cv.option_problems({"sleep_mode": False, "host": "10.0.0.5"}) == []


def test_converge_lock_refuses_a_second_converge_of_the_same_name(tmp_path):
    import subprocess
    import sys

    from ansible_collections.gpufleet.vllm.plugins.module_utils._container.lock import converge_lock, lock_path

    with converge_lock(str(tmp_path), "chat") as path:
        assert path == str(tmp_path / "locks" / "chat.lock")
        # another process (flock is per open file: a second open in this process would conflict the same way)
        code = (
            "import sys\n"
            "from ansible_collections.gpufleet.vllm.plugins.module_utils._container.lock import converge_lock\n"
            "try:\n"
            f"    with converge_lock({str(tmp_path)!r}, 'chat'):\n"
            "        print('got it')\n"
            "except Exception as e:\n"
            "    print(e)\n"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert "another converge of chat is running on this host" in out.stdout, out.stdout + out.stderr
        assert f"(pid {os.getpid()})" in out.stdout
        with converge_lock(str(tmp_path), "other"):  # other names are independent
            pass
    with converge_lock(str(tmp_path), "chat"):  # released
        pass
    with pytest.raises(GpufleetError, match="not a valid deployment name"):
        lock_path(str(tmp_path), "../victim")


def test_names_never_become_paths_outside_their_directory(tmp_path, fake_runtime):
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container import manifest as mf
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container.deployment import Deployment
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container.spec import argument_spec

    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    (tmp_path / "manifests").mkdir()
    params = {k: v.get("default") for k, v in argument_spec().items()}
    params.update(name="../victim", state="absent", manifest_dir=str(tmp_path / "manifests"))
    with pytest.raises(GpufleetError, match="not a valid deployment name"):
        Deployment(params, fake_runtime).run()
    for call in (
        lambda: mf.remove(str(tmp_path / "manifests"), "../victim"),
        lambda: mf.write(str(tmp_path), "a/b", {}),
    ):
        with pytest.raises(GpufleetError, match="not a valid deployment name"):
            call()
    assert victim.read_text() == "{}" and fake_runtime.calls == []
