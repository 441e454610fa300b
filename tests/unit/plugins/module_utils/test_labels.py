from __future__ import annotations

import json

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb


def _build(**kw):
    args = dict(
        name="llama",
        port=18000,
        host="0.0.0.0",
        config_hash="abc",
        vllm_version="0.10.2",
        model="/m",
        gpus=["0", "1"],
        manifest={"env_keys": ["A"]},
        spec={"argv": ["/m"]},
    )
    args.update(kw)
    return lb.build(**args)


def test_round_trip():
    labels = _build(serve_until="2026-01-01T00:00:00Z", sleep_mode=True, api_key=True)
    assert labels[lb.MANAGED] == "true"
    assert all(isinstance(v, str) for v in labels.values())
    p = lb.parse(labels)
    assert p["name"] == "llama" and p["port"] == 18000 and p["gpus"] == ["0", "1"]
    assert p["manifest"] == {"env_keys": ["A"]} and p["spec"] == {"argv": ["/m"]}
    assert p["serve_until"] == "2026-01-01T00:00:00Z" and p["sleep_mode"] and p["api_key"]
    assert json.loads(labels[lb.MANIFEST]) == {"env_keys": ["A"]}


def test_user_labels_cannot_fake_gpufleet_keys():
    labels = _build(extra={"team": "nlp", lb.CONFIG_HASH: "forged", "gpufleet.other": "x"})
    assert labels["team"] == "nlp"
    assert labels[lb.CONFIG_HASH] == "abc"
    assert "gpufleet.other" not in labels


def test_names_and_managed():
    assert lb.container_name("x") == "gpufleet-x"
    assert lb.previous_name("x") == "gpufleet-x-previous"
    assert lb.is_managed(_build())
    assert not lb.is_managed({"gpufleet.managed": "true"})
    assert not lb.is_managed(None)
    assert lb.parse({})["port"] is None and lb.parse({lb.MANIFEST: "{broken"})["manifest"] is None


@pytest.mark.parametrize(
    ("names", "chosen"),
    [
        (None, ["chat", "chat-0", "chat-1", "chat-x", "chatbot-0", "tp-model-0"]),
        ([], ["chat", "chat-0", "chat-1", "chat-x", "chatbot-0", "tp-model-0"]),
        (["chat"], ["chat", "chat-0", "chat-1"]),  # the deployment: itself and every replica <name>-<N>
        (["chat-1"], ["chat-1"]),  # one replica
        (["chat-1", "tp-model"], ["chat-1", "tp-model-0"]),
        (["tp"], []),  # a prefix is not a deployment name
        (["chat.", "c.*"], []),  # no pattern matching
    ],
)
def test_selected_by_deployment_or_replica_name(names, chosen):
    keys = ["chat", "chat-0", "chat-1", "chat-x", "chatbot-0", "tp-model-0"]
    assert [k for k in keys if lb.selected(k, names)] == chosen
