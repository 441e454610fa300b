from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

ROOT = Path(__file__).resolve().parents[4]


def params(**kw):
    p = {o.name: o.default for o in cs.OPTIONS}
    p.update(name="t", image="img", model="/models/m", port=18000)
    p.update(kw)
    return p


def spec_hash(**kw):
    spec = cs.normalized_spec(params(**kw), "sha256:1")[0]
    return cs.config_hash(spec)


def test_argv_positional_and_option_modes():
    p = params(served_model_name=["a", "b"], tensor_parallel_size=2, gpu_memory_utilization=0.85)
    argv = cs.build_argv(p, "positional")
    assert argv[:5] == ["/models/m", "--host", "0.0.0.0", "--port", "18000"]
    assert argv[5:] == ["--served-model-name", "a", "b", "--tensor-parallel-size", "2",
                        "--gpu-memory-utilization", "0.85"]  # fmt: skip
    assert cs.build_argv(p, "option")[:2] == ["--model", "/models/m"]
    assert cs.model_mode(["python3", "-m", "vllm.entrypoints.openai.api_server"]) == "option"
    assert cs.model_mode(["vllm", "serve"]) == "positional"


def test_argv_booleans_lora_sleep_and_extra_args_last():
    p = params(
        enforce_eager=True,
        trust_remote_code=False,
        enable_prefix_caching=False,
        enable_chunked_prefill=True,
        lora_modules=[{"name": "z", "path": "/l/z/"}, {"name": "a", "path": "/l/a"}],
        sleep_mode=True,
        extra_args=["--max-model-len", "99"],
    )
    argv = cs.build_argv(p)
    assert "--enforce-eager" in argv and "--trust-remote-code" not in argv
    assert "--no-enable-prefix-caching" in argv and "--enable-chunked-prefill" in argv
    i = argv.index("--lora-modules")
    assert argv[i - 1] == "--enable-lora" and argv[i + 1 : i + 3] == ["a=/l/a", "z=/l/z"]
    assert "--enable-sleep-mode" in argv
    assert argv[-2:] == ["--max-model-len", "99"]


def test_hash_stable_against_order_and_trailing_slash():
    a = spec_hash(env={"A": "1", "B": "2"}, gpus=["1", "0"], mounts=["/x:/x:ro", "/y:/y"], model="/models/m/")
    b = spec_hash(env={"B": "2", "A": "1"}, gpus=[0, 1], mounts=["/y:/y:rw", "/x:/x:ro"], model="/models/m")
    assert a == b


@pytest.mark.parametrize(
    "change",
    [
        {"env": {}},  # a removed env var recreates
        {"env": {"A": "2"}},
        {"api_key": "other"},
        {"secret_env": {"S": "y"}},
        {"gpus": ["0", "2"]},
        {"max_model_len": 4096},
        {"extra_args": ["--seed", "1"]},
        {"mounts": []},
        {"ipc": "private", "shm_size": "8g"},
        {"restart_policy": "no"},
        {"port": 18001},
        {"log_max_size": "10m"},
        {"log_max_files": 5},
        {"log_driver": "local"},
    ],
)
def test_each_relevant_change_changes_hash(change):
    base = dict(env={"A": "1"}, api_key="k", secret_env={"S": "x"}, gpus=["0", "1"], mounts=["/x:/x:ro"])
    assert spec_hash(**base) != spec_hash(**{**base, **change})


def test_ignored_options_do_not_change_hash():
    base = spec_hash()
    assert base == spec_hash(wait=False, wait_timeout=5, state="stopped", serve_for="2h", stop_timeout=1)


def test_log_options_at_their_defaults_keep_older_hashes():
    # A container created before the log options has the hash of a spec without them: the defaults (and the runtime's
    # own file driver said explicitly) hash the same, so upgrading the collection recreates nothing.
    plain = cs.normalized_spec(params(), "sha256:1")[0]
    assert "log" not in plain
    assert spec_hash() == spec_hash(log_driver="json-file", log_max_size="50M", log_max_files=3)
    podman = cs.normalized_spec(params(runtime="podman", log_driver="k8s-file"), "sha256:1")[0]
    assert "log" not in podman
    changed = cs.normalized_spec(params(log_max_size="10m"), "sha256:1")[0]
    assert changed["log"] == {"driver": "json-file", "max_size": "10m", "max_files": 3}


def test_log_options_reach_both_engines():
    from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import CreateSpec
    from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.podman import create_args

    log = cs.log_config(params(runtime="podman", log_max_size="20m", log_max_files=4))
    assert log == {"driver": "k8s-file", "max_size": "20m", "max_files": 4}
    spec = CreateSpec(name="gpufleet-t", image="img", command=[], env={}, mounts=[], gpus=[], network="host", ipc=None,
                      shm_size=None, restart_policy="no", labels={}, port=1, host="127.0.0.1",
                      log_driver=log["driver"], log_max_size=log["max_size"], log_max_files=log["max_files"])  # fmt: skip
    args = create_args(spec)
    assert args[args.index("--log-driver") + 1] == "k8s-file"
    assert args[args.index("--log-opt") + 1] == "max-size=20m" and args.count("--log-opt") == 1  # no max-file


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"log_max_size": "50 MB"}, "log_max_size: '50 MB' must be a size such as 50m"),
        ({"log_max_size": "0m"}, "log_max_size: '0m' must be a size"),
        ({"log_max_files": 0}, "log_max_files: 0 must be >= 1"),
        (
            {"runtime": "podman", "log_driver": "json-file"},
            "log_driver: json-file is not a podman log driver; use k8s-file",
        ),
        ({"runtime": "docker", "log_driver": "k8s-file"}, "log_driver: k8s-file is not a docker log driver"),
    ],
)
def test_log_option_problems(given, problem):
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container.validate import option_problems

    found = option_problems(given)
    assert len(found) == 1 and found[0].startswith(problem), found
    assert option_problems({"runtime": "docker", "log_driver": "local", "log_max_size": "1g", "log_max_files": 1}) == []


def test_image_compared_by_id_not_reference():
    p = params()
    s1 = cs.normalized_spec(p, "sha256:1")[0]
    s2 = cs.normalized_spec({**p, "image": "registry/x@sha256:ffff"}, "sha256:1")[0]
    assert cs.config_hash(s1) == cs.config_hash(s2)


def test_secrets_only_in_env_never_in_spec_or_argv():
    p = params(api_key="canary-key-1", hf_token="canary-hf-2", secret_env={"DB_PASS": "canary-db-3"}, env={"X": "1"})
    spec, env, secret = cs.normalized_spec(p, "sha256:1")
    assert env["VLLM_API_KEY"] == "canary-key-1" and env["HF_TOKEN"] == "canary-hf-2"
    assert secret == {"VLLM_API_KEY", "HF_TOKEN", "DB_PASS"}
    dumped = json.dumps(spec) + json.dumps(cs.masked_spec(spec)) + json.dumps(cs.diff(None, spec))
    assert "canary" not in dumped
    assert cs.masked_spec(spec)["env"]["DB_PASS"] == cs.MASK


def test_hash_is_salted_with_deployment_name():
    assert cs.value_hash("a", "K", "v") != cs.value_hash("b", "K", "v")


def test_diff_sorted_masked_and_names_changed_keys():
    s1 = cs.normalized_spec(params(api_key="one", env={"B": "1", "A": "1"}), "sha256:1")[0]
    s2 = cs.normalized_spec(params(api_key="two", env={"A": "1"}, max_model_len=5), "sha256:1")[0]
    d = cs.diff(s1, s2)
    assert d["changed_keys"] == ["argv", "env"]
    assert list(d["before"]["env"]) == ["A", "B", "VLLM_API_KEY"]
    assert d["before"]["env"]["VLLM_API_KEY"] == d["after"]["env"]["VLLM_API_KEY"] == cs.MASK
    assert cs.changed_env_keys(s1, s2) == ["B", "VLLM_API_KEY"]


def test_bad_input_is_refused():
    with pytest.raises(GpufleetError):
        cs.gpus_of({"gpus": ["all", "0"]})
    with pytest.raises(GpufleetError):
        cs.gpus_of({"gpus": ["gpu0"]})
    with pytest.raises(GpufleetError):
        cs.parse_mount("relative:/x")
    with pytest.raises(GpufleetError):
        cs.env_of({"env": {"A": None}})
    assert cs.env_of({"env": {"B": True, "N": 3}})[0] == {"B": "true", "N": "3"}


def test_mounts_model_lora_caches():
    m = cs.mounts_of(params(lora_modules=[{"name": "a", "path": "/l/a"}], model="hub/id"))
    assert ("/l/a", "/l/a", "ro") in m
    assert ("/var/lib/gpufleet/vllm-cache/t", cs.COMPILE_CACHE_IN_CONTAINER, "rw") in m
    assert not any(d == "hub/id" for _src, d, _mode in m)


def test_typed_options_map_to_the_flags_of_the_chosen_version():
    """Per-version mapping (issue 9): the same flags where the version has them, so hashes do not move; an option
    the version lacks is a bad_args error naming the version, the releases that have it and the replacement."""
    p = params(swap_space=4, max_model_len=2048, enforce_eager=True, enable_prefix_caching=False)
    static = cs.build_argv(p)
    assert cs.build_argv(p, check_version=True, vllm_version="0.10.2") == static
    assert cs.build_argv(p, "option", check_version=True, vllm_version="0.8.5") == cs.build_argv(p, "option")
    assert "--swap-space" in static and "--no-enable-prefix-caching" in static
    with pytest.raises(GpufleetError) as e:
        cs.normalized_spec(p, "sha256:1", check_version=True, vllm_version="0.33.0")
    msg = str(e.value)
    assert msg.startswith("option swap_space (--swap-space) does not exist in vLLM 0.33.0"), msg
    assert "vLLM 0.8.5, 0.10.2 have it" in msg and "--gpu-memory-utilization" in msg  # where it went
    assert e.value.details["failure_class"] == "bad_args" and e.value.details["vllm_version"] == "0.33.0"
    # validate_args: false renders the declared flags without looking at the version
    assert cs.build_argv(p, vllm_version="0.33.0") == static
    # an unknown version (nightly) is mapped with the newest table
    with pytest.raises(GpufleetError, match=r"checked against the table of vLLM 0\.33\.0"):
        cs.build_argv(p, check_version=True, vllm_version="nightly")
    ok = params(max_model_len=2048)
    assert cs.build_argv(ok, check_version=True, vllm_version="0.33.0") == cs.build_argv(ok)


def test_argv_check_env_never_holds_secrets():
    env, secret = cs.env_of(
        params(env={"VLLM_USE_RUST_FRONTEND": "1", "OTHER": "x"}, secret_env={"VLLM_SECRET": "s"}, api_key="k")
    )
    assert env["VLLM_API_KEY"] == "k" and env["VLLM_SECRET"] == "s"
    assert cs.argv_check_env(env, secret) == {"VLLM_USE_RUST_FRONTEND": "1"}
    assert cs.entrypoint_of("option") == "api_server" and cs.entrypoint_of("positional") == "serve"


def _doc_options(module: str) -> dict:
    text = (ROOT / "plugins" / "modules" / f"{module}.py").read_text()
    doc = text.split('DOCUMENTATION = r"""', 1)[1].split('"""', 1)[0]
    return yaml.safe_load(doc)["options"]


def test_module_documentation_matches_argument_spec():
    """One table: the module's documented options are exactly the argument spec (names, types, defaults...)."""
    doc = _doc_options("vllm_container")
    spec = cs.argument_spec()
    assert set(doc) == set(spec)
    for name, s in spec.items():
        d = doc[name]
        assert d["type"] == s["type"], name
        assert d.get("default") == s.get("default"), name
        assert d.get("elements") == s.get("elements"), name
        assert d.get("choices") == s.get("choices"), name
        assert d.get("required", False) == s.get("required", False), name
    for secret in ("api_key", "hf_token", "secret_env"):
        assert spec[secret]["no_log"] is True
