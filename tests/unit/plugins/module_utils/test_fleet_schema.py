"""Inventory schema: one error listing every problem (deployment, field, what is allowed); defaults filled."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import (
    parse_port_range,
    parse_serve_for,
    validate_deployments,
    validate_host_vars,
)


def one(**fields):
    dep = {"name": "chat", "model": "org/chat"}
    dep.update(fields)
    return validate_deployments([dep])[0]


def problems_of(deployments) -> list[str]:
    with pytest.raises(GpufleetError) as info:
        validate_deployments(deployments)
    return info.value.details["problems"]


def test_defaults():
    dep = one()
    assert dep == {
        "name": "chat",
        "state": "present",
        "model": {"source": "hf", "repo_id": "org/chat", "revision": "main", "path": None, "url": None},
        "model_size_bytes": None,
        "num_parameters": None,
        "vram_mib": None,
        "model_dtype": None,
        "vllm_version": "latest",
        "image": None,
        "engine_options": {},
        "extra_args": [],
        "lora_modules": [],
        "env": {},
        "secret_env": {},
        "api_key": None,
        "hf_token": None,
        "s3_credentials": None,
        "served_model_name": None,
        "replicas": 1,
        "gpus_per_replica": 1,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "host": None,
        "gpus": None,
        "gpu_memory_utilization": 0.9,
        "gpu_sharing": False,
        "move_from_unreachable": None,
        "placement": "spread",
        "distributed": "none",
        "selector": {},
        "port": 8000,
        "port_range": None,
        "serve_for": "infinite",
        "max_failed_restarts": 3,
        "start_timeout": 1800,
        "owner": None,
        "idle_pause_after": None,
        "pin": False,
        "log_max_size": None,
        "log_max_files": None,
        "max_unavailable": None,
        "max_surge": 1,
        "smoke_test": True,
        "keep_revisions": 2,
        "extra_pip_packages": [],
        "plugins": [],
        "pip_find_links": [],
        "pip_index_url": None,
        "pip_no_index": False,
    }


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("org/chat", {"source": "hf", "repo_id": "org/chat", "revision": "main"}),
        ({"repo_id": "org/chat", "revision": "v1"}, {"source": "hf", "repo_id": "org/chat", "revision": "v1"}),
        ("/srv/models/chat/", {"source": "local", "path": "/srv/models/chat"}),
        ({"path": "/srv/m"}, {"source": "local", "path": "/srv/m"}),
        ("https://example.org/m.tar", {"source": "url", "url": "https://example.org/m.tar"}),
        ({"url": "http://x/m"}, {"source": "url", "url": "http://x/m"}),
    ],
)
def test_model_sources(model, expected):
    out = one(model=model)["model"]
    for key, value in expected.items():
        assert out[key] == value


def test_normalized_input_validates_to_itself():
    deps = validate_deployments(
        [
            {"name": "a", "model": {"repo_id": "o/a", "revision": "r"}, "port_range": "9000-9010", "serve_for": "12h"},
            {"name": "b", "model": "/m/b", "host": "gpu-a", "gpus": [0, "GPU-1"], "replicas": 2},
            {"name": "c", "model": "https://x/c", "lora_modules": ["sql=/l/sql"], "selector": {"zone": "eu1"}},
        ]
    )
    assert validate_deployments(deps) == deps


def test_every_problem_in_one_error_naming_deployment_field_and_allowed():
    problems = problems_of(
        [
            {"name": "chat", "model": "org/chat", "replicas": "two", "placement": "random", "state": "gone"},
            {"name": "big", "model": 42, "port": 70000, "gpu_memory_utilization": 1.5, "colour": "red"},
        ]
    )
    assert "chat: replicas: must be an integer >= 0, got 'two'" in problems
    assert "chat: placement: must be one of spread, binpack, got 'random'" in problems
    assert "chat: state: must be one of present, absent, got 'gone'" in problems
    assert any(p.startswith("big: model: must be a hub id") for p in problems)
    assert "big: port: must be an integer in 1..65535, got 70000" in problems
    assert "big: gpu_memory_utilization: must be a number in (0, 1], e.g. 0.9, got 1.5" in problems
    assert any(p.startswith("big: colour: unknown field; allowed: name, model") for p in problems)
    assert len(problems) == 7


def test_message_lists_the_problems():
    with pytest.raises(GpufleetError) as info:
        validate_deployments([{"name": "chat"}])
    assert str(info.value) == (
        "gpufleet_deployments is invalid: 1 problem\n"
        "  - chat: model: is required: a hub id (org/name), an absolute path or a URL"
    )


def test_deployment_without_a_name_is_named_by_position():
    problems = problems_of([{"name": "ok", "model": "o/m"}, {"model": "o/m"}, "text"])
    assert problems[0].startswith("gpufleet_deployments[1]: name: is required")
    assert problems[1].startswith("gpufleet_deployments[2]: (entry): must be a mapping")


@pytest.mark.parametrize("value", ["nope", {"a": 1}, 3])
def test_list_required(value):
    with pytest.raises(GpufleetError, match="must be a list of deployments"):
        validate_deployments(value)


def test_none_is_empty():
    assert validate_deployments(None) == []


def test_duplicate_names():
    problems = problems_of([{"name": "a", "model": "o/m"}, {"name": "a", "model": "o/n"}])
    assert problems == ["a: name: is used twice (entries 0 and 1); names must be unique"]


def test_secret_values_are_never_echoed():
    canary = "sk-CANARY-12345"
    with pytest.raises(GpufleetError) as info:
        validate_deployments(
            [
                {
                    "name": "chat",
                    "model": "o/m",
                    "api_key": [canary],
                    "hf_token": {"t": canary},
                    "secret_env": {"TOKEN": [canary]},
                    "replicas": "x",
                }
            ]
        )
    text = str(info.value) + repr(info.value.details)
    assert canary not in text
    assert "chat: api_key: must be a non-empty string (use a vault variable), got a list" in text
    assert "chat: secret_env.TOKEN: must be a string or a number, got a list" in text


def test_absent_needs_only_a_name():
    dep = validate_deployments([{"name": "old", "state": "absent"}])[0]
    assert dep["state"] == "absent"
    assert dep["model"] is None


def test_version_or_image_not_both():
    assert "chat: vllm_version: set either vllm_version or image, not both" in problems_of(
        [{"name": "chat", "model": "o/m", "vllm_version": "0.10.2", "image": "vllm/vllm-openai:v0.10.2"}]
    )
    assert one(image="vllm/vllm-openai:v0.8.5")["vllm_version"] is None
    assert one(vllm_version=0.9)["vllm_version"] == "0.9"


@pytest.mark.parametrize(
    ("fields", "gpr", "tp", "pp"),
    [
        ({}, 1, 1, 1),
        ({"tensor_parallel_size": 2}, 2, 2, 1),
        ({"gpus_per_replica": 4}, 4, 4, 1),
        ({"gpus_per_replica": 4, "pipeline_parallel_size": 2}, 4, 2, 2),
        ({"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, 4, 2, 2),
        ({"host": "gpu-a", "gpus": [0, 1, 2, 3], "replicas": 2}, 2, 2, 1),
    ],
)
def test_gpus_per_replica(fields, gpr, tp, pp):
    dep = one(**fields)
    assert (dep["gpus_per_replica"], dep["tensor_parallel_size"], dep["pipeline_parallel_size"]) == (gpr, tp, pp)


def test_inconsistent_parallelism():
    problems = problems_of([{"name": "chat", "model": "o/m", "gpus_per_replica": 4, "tensor_parallel_size": 2}])
    assert problems == [
        "chat: gpus_per_replica: must equal tensor_parallel_size x pipeline_parallel_size = 2 x 1 = 2, got 4"
    ]


def test_pinning_rules():
    problems = problems_of(
        [
            {"name": "a", "model": "o/m", "gpus": [0]},
            {"name": "b", "model": "o/m", "host": "h", "gpus": [0, 0]},
            {"name": "c", "model": "o/m", "host": "h", "gpus": ["x"]},
            {"name": "d", "model": "o/m", "host": "h", "gpus": [0, 1, 2], "tensor_parallel_size": 2},
        ]
    )
    assert "a: gpus: pins GPUs on one host: set host as well" in problems
    assert "b: gpus: lists a GPU twice, got [0, 0]" in problems
    assert any(p.startswith("c: gpus: must be a list of GPU indices") for p in problems)
    assert "d: gpus: must list replicas x gpus_per_replica = 1 x 2 = 2 GPUs, got [0, 1, 2]" in problems
    assert one(host="gpu-a", gpus=["GPU-abc", "1"])["gpus"] == ["GPU-abc", 1]


@pytest.mark.parametrize(
    ("value", "expected"),
    [([8000, 8099], (8000, 8099)), ("8000-8099", (8000, 8099)), ({"start": 1, "end": 1}, (1, 1))],
)
def test_port_range_forms(value, expected):
    assert parse_port_range(value) == expected
    assert one(port_range=value)["port_range"] == list(expected)
    assert one(port_range=value)["port"] is None


@pytest.mark.parametrize("value", ["8099-8000", [0, 10], [1, 2, 3], "a-b", 8000, [1, 70000]])
def test_bad_port_ranges(value):
    assert parse_port_range(value) is None
    assert any(
        p.startswith("chat: port_range: must be [first, last]") for p in problems_of([one_raw(port_range=value)])
    )


def one_raw(**fields):
    dep = {"name": "chat", "model": "o/m"}
    dep.update(fields)
    return dep


def test_port_and_range_exclusive():
    assert "chat: port: set either port or port_range, not both" in problems_of(
        [one_raw(port=8000, port_range=[9000, 9001])]
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "infinite"),
        ("infinite", "infinite"),
        ("Infinite", "infinite"),
        (12, 12.0),
        ("1.5", 1.5),
        ("24h", 24.0),
        ("90m", 1.5),
        ("1d", 24.0),
    ],
)
def test_serve_for(value, expected):
    assert parse_serve_for(value) == expected


@pytest.mark.parametrize("value", [0, -1, "soon", [1], True, "inf", "30s"])
def test_bad_serve_for(value):
    assert any(
        "serve_for: must be a positive number of hours (12, 1.5), a number with a unit m, h or d (90m, 2h, 1d), "
        "or 'infinite'" in p
        for p in problems_of([one_raw(serve_for=value)])
    )


def test_engine_options_stay_a_dict_but_not_placement_fields():
    assert one(engine_options={"max_model_len": 4096, "enforce_eager": True})["engine_options"] == {
        "max_model_len": 4096,
        "enforce_eager": True,
    }
    problems = problems_of([one_raw(engine_options={"tensor_parallel_size": 2, "port": 1})])
    assert "chat: engine_options.tensor_parallel_size: is set by the deployment field tensor_parallel_size" in problems
    assert "chat: engine_options.port: is set by the deployment field port" in problems


def test_env_and_secret_env():
    dep = one(env={"A": 1, "B": True}, secret_env={"TOKEN": "s"})
    assert dep["env"] == {"A": "1", "B": "true"}
    assert dep["secret_env"] == {"TOKEN": "s"}
    problems = problems_of([one_raw(env={"1BAD": "x", "A": "1"}, secret_env={"A": "2"})])
    assert "chat: env.1BAD: names must match [A-Za-z_][A-Za-z0-9_]*" in problems
    assert "chat: secret_env: A also set in env; set each variable in one of them" in problems


def test_lora_modules():
    dep = one(lora_modules=["sql=/loras/sql", {"name": "chat", "path": "/loras/chat", "size_bytes": 100}])
    assert dep["lora_modules"] == [
        {"name": "sql", "path": "/loras/sql", "size_bytes": None},
        {"name": "chat", "path": "/loras/chat", "size_bytes": 100},
    ]
    problems = problems_of([one_raw(lora_modules=[{"name": "a", "path": "rel"}, {"name": "a", "path": "/x"}])])
    assert "chat: lora_modules[0].path: must be an absolute path on the host, got 'rel'" in problems
    assert "chat: lora_modules[1].name: duplicate LoRA name 'a'" in problems


def test_selector_values_become_lists_of_strings():
    assert one(selector={"zone": "eu1", "gpu": ["a100", "h100"], "tier": 1})["selector"] == {
        "zone": ["eu1"],
        "gpu": ["a100", "h100"],
        "tier": ["1"],
    }
    assert any(p.startswith("chat: selector: must be a mapping") for p in problems_of([one_raw(selector=["zone"])]))


def test_templated_strings_are_accepted():
    dep = one(replicas="2", port="8080", gpu_memory_utilization="0.8", gpu_sharing="yes")
    assert (dep["replicas"], dep["port"], dep["gpu_memory_utilization"], dep["gpu_sharing"]) == (2, 8080, 0.8, True)


def test_bools_are_not_integers():
    assert "chat: replicas: must be an integer >= 0, got True" in problems_of([one_raw(replicas=True)])


def test_output_sorted_by_name():
    assert [d["name"] for d in validate_deployments([one_raw(name="b"), one_raw(name="a")])] == ["a", "b"]


# -- host vars -------------------------------------------------------------------------------------------------


def test_host_var_defaults():
    assert validate_host_vars({"gpu-a": {}}) == {
        "gpu-a": {
            "used_ports": [],
            "runtime": "docker",
            "models_root": "/var/lib/gpufleet/models",
            "allowed_model_dirs": ["/var/lib/gpufleet/models"],
            "labels": {},
            "reservations": [],
        }
    }


def test_host_vars_normalized():
    out = validate_host_vars(
        {
            "gpu-a": {
                "gpufleet_runtime": "podman",
                "gpufleet_models_root": "/srv/models/",
                "gpufleet_allowed_model_dirs": ["/srv/models", "/data/"],
                "gpufleet_labels": {"zone": "eu1", "nvlink": True, "rack": 3},
                "gpufleet_gpu_reservations": [0, "GPU-x", {"gpu": 2, "memory_mib": 4096, "reason": "monitoring"}],
                "gpufleet_used_ports": ["9100", 22, 22],
            }
        }
    )["gpu-a"]
    assert out["runtime"] == "podman"
    assert out["used_ports"] == [22, 9100]
    assert out["models_root"] == "/srv/models"
    assert out["allowed_model_dirs"] == ["/data", "/srv/models"]
    assert out["labels"] == {"zone": "eu1", "nvlink": "true", "rack": "3"}
    assert out["reservations"] == [
        {"gpu": 0, "memory_mib": None, "reason": ""},
        {"gpu": "GPU-x", "memory_mib": None, "reason": ""},
        {"gpu": 2, "memory_mib": 4096, "reason": "monitoring"},
    ]


def test_reservations_as_mapping():
    out = validate_host_vars({"h": {"gpufleet_gpu_reservations": {1: "training"}}})["h"]
    assert out["reservations"] == [{"gpu": 1, "memory_mib": None, "reason": "training"}]


def test_host_var_problems_in_one_error():
    with pytest.raises(GpufleetError) as info:
        validate_host_vars(
            {
                "gpu-b": {"gpufleet_runtime": "lxc", "gpufleet_models_root": "models"},
                "gpu-a": {
                    "gpufleet_labels": ["zone"],
                    "gpufleet_gpu_reservations": [{"gpu": "x"}],
                    "gpufleet_used_ports": [22, 0],
                },
            }
        )
    assert info.value.details["problems"] == [
        "gpu-a: gpufleet_labels: must be a mapping of label: value, got ['zone']",
        "gpu-a: gpufleet_used_ports: must be a list of port numbers (1..65535), got [22, 0]",
        "gpu-a: gpufleet_gpu_reservations[0].gpu: must be a GPU index or UUID, got 'x'",
        "gpu-b: gpufleet_runtime: must be one of docker, podman, got 'lxc'",
        "gpu-b: gpufleet_models_root: must be an absolute path, got 'models'",
    ]
    assert str(info.value).startswith("gpufleet host vars are invalid: 5 problems")


def test_engine_options_must_be_vllm_container_options():
    problems = problems_of(
        [one_raw(engine_options={"max_model_len": 4096, "max_modle_len": 1, "api_key": "x", "runtime": "podman"})]
    )
    assert any(
        p.startswith("chat: engine_options.max_modle_len: is not an option of gpufleet.vllm.vllm_container")
        and "extra_args" in p
        and "max_model_len" in p
        for p in problems
    )
    assert "chat: engine_options.api_key: is set by the deployment field api_key" in problems
    assert "chat: engine_options.runtime: is set by the deployment field the host var gpufleet_runtime" in problems
    assert not any("engine_options.max_model_len" in p for p in problems)


def test_engine_option_names_follow_the_container_options_table():
    from ansible_collections.gpufleet.vllm.plugins.module_utils._container.spec import argument_spec
    from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import (
        OWN_FIELDS,
        PLACEMENT_OWNED,
        engine_option_names,
    )

    names = engine_option_names()
    assert {"max_model_len", "enforce_eager", "hf_cache_dir"} <= names
    assert names <= set(argument_spec())
    assert not names & (set(PLACEMENT_OWNED) | set(OWN_FIELDS))
    # fleet_apply sets these for every replica: in engine_options they were silently replaced, now refused
    assert not names & {"env", "extra_args", "lora_modules", "wait", "wait_timeout", "manifest_dir", "from_manifest"}


@pytest.mark.parametrize(
    "field,value,want",
    [
        ("max_failed_restarts", 0, 0),
        ("max_failed_restarts", "5", 5),
        ("start_timeout", 90, 90),
        ("start_timeout", "30m", 1800),
        ("start_timeout", "2h", 7200),
        ("owner", "team-a@example.org", "team-a@example.org"),
        ("log_max_size", "100M", "100m"),
        ("log_max_size", 1048576, "1048576"),
        ("log_max_files", "5", 5),
    ],
)
def test_lifecycle_fields(field, value, want):
    dep = one(**{field: value})
    assert dep[field] == want


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_failed_restarts", -1),
        ("max_failed_restarts", True),
        ("start_timeout", 0),
        ("start_timeout", "1d"),
        ("owner", "a b"),
        ("owner", 3),
        ("log_max_size", "50 MB"),
        ("log_max_size", True),
        ("log_max_files", 0),
        ("log_max_files", "x"),
    ],
)
def test_lifecycle_fields_refused(field, value):
    assert any(field in p for p in problems_of([{"name": "chat", "model": "org/chat", field: value}]))


def test_gpus_all_takes_the_hosts_count_and_validates_to_itself():
    dep = one(gpus="all")
    assert (dep["gpus"], dep["tensor_parallel_size"], dep["gpus_per_replica"], dep["host"]) == ("all", None, None, None)
    assert one(gpus=["all"], tensor_parallel_size=4)["tensor_parallel_size"] == 4
    assert validate_deployments([dep]) == [dep]
    assert problems_of([{"name": "x", "model": "o/x", "gpus": "all", "gpus_per_replica": 2, "gpu_sharing": True}]) == [
        "x: gpus_per_replica: is the host's GPU count with gpus: all; set tensor_parallel_size",
        "x: gpu_sharing: gpus: all reserves whole hosts; it cannot share them",
    ]


def test_derived_image_fields():
    dep = one(
        extra_pip_packages=["b==1", "a>=2", "b==1"], plugins=["/p/x.py"], pip_find_links=["/w"], pip_no_index=True
    )
    assert dep["extra_pip_packages"] == ["a>=2", "b==1"]  # normalized, sorted, once each
    assert (dep["plugins"], dep["pip_find_links"], dep["pip_index_url"], dep["pip_no_index"]) == (
        ["/p/x.py"],
        ["/w"],
        None,
        True,
    )
    assert validate_deployments([dep]) == [dep]
    problems = problems_of(
        [
            {"name": "a", "model": "o/a", "extra_pip_packages": ["bad pkg =="], "plugins": ["rel.py"]},
            {"name": "b", "model": "o/b", "pip_index_url": "ftp://x"},
            {"name": "c", "model": "o/c", "pip_no_index": True},
        ]
    )
    assert any(p.startswith("a: extra_pip_packages") and "bad pkg" in p for p in problems)
    assert any(p.startswith("a: plugins") and "absolute" in p for p in problems)
    assert any(p.startswith("b: pip_index_url") for p in problems)
    assert any(p.startswith("c: pip_no_index") and "extra_pip_packages or plugins" in p for p in problems)


def test_lora_from_the_hub():
    dep = one(
        lora_modules=[
            {"name": "sql", "repo_id": "org/sql-lora"},
            "local=/l/x",
            {"name": "v", "repo_id": "o/v", "revision": "v2"},
        ]
    )
    assert dep["lora_modules"] == [
        {"name": "sql", "repo_id": "org/sql-lora", "revision": "main", "size_bytes": None},
        {"name": "local", "path": "/l/x", "size_bytes": None},
        {"name": "v", "repo_id": "o/v", "revision": "v2", "size_bytes": None},
    ]
    assert validate_deployments([dep]) == [dep]
    problems = problems_of(
        [
            {"name": "a", "model": "o/a", "lora_modules": [{"name": "x", "repo_id": "o/x", "path": "/l/x"}]},
            {"name": "b", "model": "o/b", "lora_modules": [{"name": "x", "repo_id": "../etc"}]},
            {"name": "c", "model": "/m/c", "lora_modules": [{"name": "x", "repo_id": "o/x"}]},
        ]
    )
    assert any(p.startswith("a: lora_modules[0]: give path") for p in problems), problems
    assert any(p.startswith("b: lora_modules[0].repo_id") and "not a hub repo id" in p for p in problems), problems
    assert any(p.startswith("c: lora_modules: hub adapters") for p in problems), problems
