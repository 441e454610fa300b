"""The fleet_apply record (plugins/module_utils/_fleet/records.py): one type for apply.py and summary.py."""

from __future__ import annotations

from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import records


def test_replica_record_serialises_to_the_module_result_shape():
    rec = records.ReplicaRecord(name="chat-0", deployment="chat", failed=True, failed_step="vllm_container")
    assert list(rec.to_dict().items()) == [
        ("kind", "replica"),
        ("name", "chat-0"),
        ("deployment", "chat"),
        ("changed", False),
        ("failed", True),
        ("failure_class", None),
        ("failed_step", "vllm_container"),
        ("hint", None),
        ("rolled_back", None),
        ("phase", None),
        ("endpoint", None),
        ("actions", []),
        ("model_source", None),  # which of a model's sources served (a model with sources only)
    ]
    assert records.from_dict(rec.to_dict()) == rec
    served = records.ReplicaRecord(name="chat-0", model_source="s3")
    assert records.from_dict(served.to_dict()) == served


def test_removal_record_serialises_to_the_module_result_shape():
    rec = records.RemovalRecord(name="old-0", changed=True)
    assert list(rec.to_dict().items()) == [
        ("kind", "remove"),
        ("name", "old-0"),
        ("changed", True),
        ("failed", False),
        ("failure_class", None),
        ("hint", None),
        ("actions", []),  # the gateway drain before the stop, then vllm_container's
    ]
    assert records.from_dict(rec.to_dict()) == rec
    drained = records.RemovalRecord(name="old-0", actions=["gateway: http://h:8000 left http://gw:30000"])
    assert records.from_dict(drained.to_dict()) == drained


def test_reading_back_is_lenient_and_keyed_by_kind_and_name():
    found = records.by_key(
        [
            {"name": "chat-0", "changed": 1, "phase": "ready"},  # no kind: a replica; truthy values become bools
            {"kind": "remove", "name": "chat-0", "failed": True, "failure_class": "engine_error"},
            {"kind": "replica"},  # no name: not a record
            "junk",
        ]
    )
    assert found == {
        ("replica", "chat-0"): records.ReplicaRecord(name="chat-0", changed=True, phase="ready"),
        ("remove", "chat-0"): records.RemovalRecord(name="chat-0", failed=True, failure_class="engine_error"),
    }
