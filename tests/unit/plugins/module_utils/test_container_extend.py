"""extend.yml's module logic (plugins/module_utils/_container/extend.py) against an in-memory engine (issue #17)."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.extend import extend_host
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

NOW = 1_800_000_000.0


class Rt:
    def __init__(self, *cs: ContainerState) -> None:
        self.cs = list(cs)
        self.started: list[str] = []

    def list_managed(self):
        return self.cs

    def start(self, cid):
        self.started.append(cid)


def container(name: str, running: bool = True) -> ContainerState:
    labels = lb.build(name=name, port=1, host="h", config_hash="x", vllm_version="v", model="m", gpus=[], manifest={},
                      spec={})  # fmt: skip
    return ContainerState(f"id-{name}", lb.container_name(name), "running" if running else "exited", running,
                          exit_code=None if running else 0, restart_count=0, labels=labels)  # fmt: skip


def seed(d, name, **kw):
    lc.update(d, name, lambda r: lc.converge(r, container_id=f"id-{name}", config_hash="x", serve_for_h=1.0,
                                             max_failed_restarts=3, start_timeout_s=60, now=NOW))  # fmt: skip
    if kw:
        lc.update(d, name, lambda r: r.update(kw))


def test_extends_every_replica_of_the_deployment_only(tmp_path):
    d = str(tmp_path)
    for n in ("chat-0", "chat-1", "chatter-0"):
        seed(d, n)
    rt = Rt(container("chat-0"), container("chat-1"), container("chatter-0"))
    params = {"deployment": "chat", "hours": "4", "state_dir": d}
    pred = extend_host(params, rt, check_mode=True, now=NOW + 60)
    assert pred["changed"] and lc.deadline(lc.load(d, "chat-0")) == NOW + 3600, "check mode writes nothing"
    res = extend_host(params, rt, check_mode=False, now=NOW + 60)
    assert [r["name"] for r in res["replicas"]] == ["chat-0", "chat-1"]
    assert lc.deadline(lc.load(d, "chat-1")) == NOW + 5 * 3600
    assert lc.deadline(lc.load(d, "chatter-0")) == NOW + 3600 and rt.started == []


def test_expired_replica_is_started_again_and_infinite_removes_the_deadline(tmp_path):
    d = str(tmp_path)
    seed(d, "chat", expired={"at": NOW + 3600})
    rt = Rt(container("chat", running=False))
    res = extend_host({"deployment": "chat", "hours": "infinite", "state_dir": d}, rt, False, now=NOW + 7200)
    assert res["replicas"][0]["started"] and rt.started == ["id-chat"]
    assert lc.deadline(lc.load(d, "chat")) is None


def test_bad_hours_refused(tmp_path):
    with pytest.raises(GpufleetError):
        extend_host({"deployment": "chat", "hours": "soon", "state_dir": str(tmp_path)}, Rt(), False)
