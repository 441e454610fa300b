"""Ray node containers of a multi-host replica: ray start argv (ports pinned in the block), env, mounts, labels, the
vLLM server's settings, and reading `ray status`."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as labels
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._ray import ports, spec

STATUS = """======== Autoscaler status: 2026-12-02 22:12:20 ========
Node status
---------------------------------------------------------------
Active:
 1 node_9c5d7f98216f2af4de8601f5931b569af80c42f859ca4a9322fd08f1
 1 node_1f0e7aa0c1d2b3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Total Usage:
 0.0/2.0 CPU
 0.0/4.0 GPU
 0B/22.66GiB memory
"""


def test_head_and_worker_argv_pin_every_port_inside_the_block():
    base = ports.FIRST + ports.BLOCK
    head = spec.start_argv("head", base, 2, "10.0.0.1")
    worker = spec.start_argv("worker", base, 2, "10.0.0.2", head_ip="10.0.0.1")
    assert head[:5] == ["start", "--block", "--disable-usage-stats", "--node-ip-address=10.0.0.1", "--num-gpus=2"]
    assert "--head" in head and f"--port={base}" in head and "--include-dashboard=false" in head
    assert "--head" not in worker and f"--address=10.0.0.1:{base}" in worker
    for argv in (head, worker):
        pinned = [int(a.split("=")[1]) for a in argv if a.split("=")[0].endswith("-port")]
        assert pinned and all(p in ports.block(base) for p in pinned)
        assert len(set(pinned)) == len(pinned)
        assert f"--temp-dir={spec.TEMP_DIR}" in argv
    assert not set(ports.block(base)) & set(ports.block(ports.FIRST))


def test_node_spec_host_network_gpus_env_and_labels_read_back():
    node = spec.node_spec(
        deployment="big",
        replica=0,
        role="worker",
        image="vllm/vllm-openai:v0.10.2-ray",
        base=ports.FIRST,
        gpus=["GPU-b-0", "GPU-b-1"],
        node_ip="10.0.0.2",
        host="gpu-b",
        head_ip="10.0.0.1",
        env={"NCCL_DEBUG": "INFO", "RAY_USAGE_STATS_ENABLED": "1"},
    )
    assert node.name == "gpufleet-big-0-ray-worker"
    assert (node.network, node.ipc, node.entrypoint, node.restart_policy) == ("host", "host", ["ray"], "on-failure")
    assert "--num-gpus=2" in node.command
    assert node.env["NCCL_DEBUG"] == "INFO" and node.env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert node.env["VLLM_HOST_IP"] == "10.0.0.2"
    assert node.mounts == [("/var/lib/gpufleet/ray/big-0-worker", spec.TEMP_DIR, "rw")]
    assert labels.MANAGED not in node.labels  # not a vLLM server: the server readers pass it by
    assert labels.ray_node(node.labels) == {
        "deployment": "big",
        "replica": 0,
        "role": "worker",
        "port": ports.FIRST,
        "gpus": ["GPU-b-0", "GPU-b-1"],
        "host": "gpu-b",
    }
    assert labels.ray_node({labels.DEPLOYMENT: "big"}) is None


def test_serve_settings_join_the_head_node():
    out = spec.serve_settings("big", 1, "10.0.0.1", 6419)
    assert out["extra_args"] == ["--distributed-executor-backend", "ray"]
    assert out["env"]["RAY_ADDRESS"] == "10.0.0.1:6419" and out["env"]["VLLM_HOST_IP"] == "10.0.0.1"
    assert out["mounts"] == [("/var/lib/gpufleet/ray/big-1-head", spec.TEMP_DIR, "rw")]
    assert (out["network"], out["ipc"], out["pid"]) == ("host", "host", "container:gpufleet-big-1-ray-head")
    assert spec.head_address("fd00::1", 6379) == "[fd00::1]:6379"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: spec.start_argv("driver", 6379, 1, "10.0.0.1"), "must be head or worker"),
        (lambda: spec.start_argv("worker", 6379, 0, "10.0.0.1", "10.0.0.2"), "at least one GPU"),
        (lambda: spec.start_argv("worker", 6379, 1, "10.0.0.1"), "needs the head's address"),
        (lambda: spec.head_address("10.0.0.1; rm -rf /", 6379), "must be the head host's IP"),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    with pytest.raises(GpufleetError, match=message):
        call()


def test_ray_status_read_and_cluster_ready():
    assert spec.parse_status(STATUS) == {"nodes": 2, "gpus": 4.0, "gpus_used": 0.0}
    assert spec.cluster_ready(STATUS, 2, 4) == (True, "2 Ray nodes, 4 GPUs")
    assert spec.cluster_ready(STATUS, 3, 4) == (False, "2/3 Ray nodes joined")
    assert spec.cluster_ready(STATUS, 2, 6) == (False, "the Ray cluster shows 4/6 GPUs")
    assert spec.cluster_ready("ConnectionError: GCS unavailable", 2, 4) == (False, "the Ray cluster shows no GPUs yet")
    # Ray 2.60 once the server's placement group holds the GPUs (seen on the bed in the second converge)
    held = STATUS.replace(" 0.0/4.0 GPU", " 4.0/4.0 GPU (4.0 used of 4.0 reserved in placement groups)")
    assert held != STATUS and spec.parse_status(held) == {"nodes": 2, "gpus": 4.0, "gpus_used": 4.0}
