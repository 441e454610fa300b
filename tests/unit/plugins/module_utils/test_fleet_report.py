"""fleet_report.container_items: the replicas a host runs, with the image vllm_image resolved (kind=containers)."""

from __future__ import annotations

from ansible_collections.gpufleet.vllm.plugins.module_utils import fleet_report as fr

ARGS = {"wait": True, "wait_timeout": 600, "manifest_dir": "/m"}


def spec(name: str, deployment: str, image: str | None = None, version: str | None = "0.10.2") -> dict:
    return {
        "name": name,
        "deployment": deployment,
        "image": image,
        "vllm_version": version,
        "container": {"name": name, "port": 8000, "image": image},
    }


def loop(*results: dict) -> dict:
    return {"results": list(results), "changed": False}


def test_ready_replicas_get_the_resolved_image_and_the_common_args() -> None:
    specs = [spec("chat-0", "chat"), spec("chat-1", "chat"), spec("emb-0", "emb", image="my/emb:1", version=None)]
    synced = loop({"item": specs[0], "changed": False, "path": "/x"}, {"item": specs[2], "changed": True})
    images = loop(
        {"item": [None, "0.10.2"], "image": "vllm/vllm-openai:v0.10.2"},
        {"item": ["my/emb:1", None], "image": "my/emb@sha256:1"},
    )
    out = fr.container_items(specs, synced, images, ARGS)
    assert [r["name"] for r in out] == ["chat-0", "chat-1", "emb-0"]
    assert all(r["run"] for r in out)
    assert out[0]["args"] == {"name": "chat-0", "port": 8000, "image": "vllm/vllm-openai:v0.10.2", **ARGS}
    assert out[2]["args"]["image"] == "my/emb@sha256:1"
    # The plan spec is kept as is (the summary reads it back from the loop's items).
    assert {k: out[1][k] for k in specs[1]} == specs[1] and "args" not in specs[1]


def test_failed_sync_failed_image_missing_results_and_check_mode_pull_do_not_run() -> None:
    specs = [spec("a-0", "a"), spec("b-0", "b", version="0.11.0"), spec("c-0", "c", version="0.9.0"), spec("d-0", "d")]
    synced = loop(
        {"item": specs[0], "failed": True, "msg": "no config.json"},
        {"item": specs[1]},
        {"item": specs[2]},
    )
    images = loop(
        {"item": [None, "0.10.2"], "image": "v:0.10.2"},
        {"item": [None, "0.11.0"], "failed": True, "msg": "pull failed"},
        {"item": [None, "0.9.0"], "changed": True, "image": None},  # check mode: would be pulled first
    )
    runs = {r["name"]: r["run"] for r in fr.container_items(specs, synced, images, ARGS)}
    # a: model sync failed; b: image failed; c: no image reference yet; d: no model sync result at all.
    assert runs == {"a-0": False, "b-0": False, "c-0": False, "d-0": False}


def test_nothing_registered() -> None:
    assert fr.container_items([], {}, {}) == []
    out = fr.container_items([spec("a-0", "a")], {"skipped": True}, None)
    assert out[0]["run"] is False and out[0]["args"]["image"] is None


def test_run_report_kind_containers() -> None:
    specs = [spec("chat-0", "chat")]
    out = fr.run_report(
        {
            "kind": "containers",
            "specs": specs,
            "synced": loop({"item": specs[0]}),
            "images": loop({"item": [None, "0.10.2"], "image": "v"}),
            "container_args": ARGS,
            "dest": None,
        }
    )
    assert out["changed"] is False and out["replicas"][0]["run"] is True and out["replicas"][0]["args"]["image"] == "v"


def test_metrics_texts_from_the_registered_scrape_loop() -> None:
    text = 'vllm:request_success_total{finished_reason="stop"} 4.0\n'
    scraped = loop(
        {"item": {"name": "chat-0", "endpoint": "http://x:8000"}, "content": text, "status": 200},
        {"item": {"name": "chat-1", "endpoint": "http://x:8001"}, "failed": True, "msg": "Connection refused"},
        {"item": {"name": "emb-0"}, "skipped": True},  # gpufleet_status_metrics: false
    )
    assert fr.metrics_texts(scraped) == {"chat-0": text, "chat-1": None, "emb-0": None}
    assert fr.metrics_texts({"chat-0": text}) == {"chat-0": text}
    assert fr.metrics_texts({"results": [], "skipped": True}) == {} and fr.metrics_texts(None) == {}
    infos = {"h": [{"name": "chat-0", "state": "running", "uptime_s": 2.0}, {"name": "chat-1", "state": "running"}]}
    rows = {r["name"]: r for r in fr.status_report(infos, {"h": scraped})["rows"]}
    assert rows["chat-0"]["requests"] == 4 and rows["chat-1"]["requests"] is None
