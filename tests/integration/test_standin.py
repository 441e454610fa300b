"""The vLLM stand-in image on the real dockerd (and podman): GPU requests, API, metrics, flags, failures, stop.

Containers are started once per module and shared; short-lived failure runs are started together and awaited.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from docker.types import DeviceRequest
from fixtures.container import free_port

pytestmark = pytest.mark.integration

API_KEY = "standin-test-key"
LORA = "sql-lora"


def gpu(n: str) -> list[DeviceRequest]:
    return [DeviceRequest(device_ids=[n], capabilities=[["gpu"]])]


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    c = docker.from_env()
    yield c
    c.close()


class Runs:
    """Containers this module started (removed at the end, only these)."""

    def __init__(self, client: docker.DockerClient, model_dir: Path) -> None:
        self.client = client
        self.model_dir = model_dir
        self.tag = uuid.uuid4().hex[:8]
        self.started: list = []

    def run(self, image: str, args: list[str], gpus: str | None = "0", env: dict | None = None, **kw):
        c = self.client.containers.run(
            image,
            args,
            detach=True,
            name=f"standin-test-{self.tag}-{len(self.started)}",
            device_requests=gpu(gpus) if gpus is not None else None,
            environment=env or {},
            volumes={str(self.model_dir): {"bind": "/models/tiny", "mode": "ro"}},
            labels={"gpufleet.test": "standin"},
            **kw,
        )
        self.started.append(c)
        return c


@pytest.fixture(scope="module")
def runs(client, standin_images, standin_model_dir) -> Iterator[Runs]:
    r = Runs(client, standin_model_dir)
    yield r
    for c in r.started:
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass


def wait_exit(c, timeout: float = 120) -> tuple[int, str]:
    status = c.wait(timeout=timeout)["StatusCode"]
    return status, c.logs().decode()


def wait_ready(url: str, c, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # refused while it starts, or slow to answer on a busy machine
            pass
        c.reload()
        if c.status == "exited":
            pytest.fail("stand-in exited during start-up:\n" + c.logs().decode()[-3000:])
        time.sleep(0.05)
    pytest.fail("stand-in not ready in time:\n" + c.logs().decode()[-3000:])


def host_url(c) -> str:
    c.reload()
    port = c.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served(runs, standin_images):
    """vLLM 0.10.2 stand-in on GPU 1 with a LoRA, an API key, sleep mode, and --swap-space (a 0.10.2-only flag)."""
    c = runs.run(
        standin_images["0.10.2"],
        ["/models/tiny", "--served-model-name", "tiny", "--lora-modules", f"{LORA}=/loras/sql",
         "--api-key", API_KEY, "--swap-space", "4", "--enable-sleep-mode", "--max-model-len", "2048"],
        gpus="1",
        env={"VLLM_SERVER_DEV_MODE": "1"},
        ports={"8000/tcp": ("127.0.0.1", None)},
    )  # fmt: skip
    url = host_url(c)
    wait_ready(url, c)
    return c, url


@pytest.fixture(scope="module")
def failures(runs, standin_images):
    """Short-lived runs started together (each exits by itself); awaited on first use."""
    v10, new, old = standin_images["0.10.2"], standin_images["latest"], standin_images["0.8.5"]
    started = {
        "unknown_flag": runs.run(v10, ["/models/tiny", "--no-such-flag", "3"]),
        "swap_space_new": runs.run(new, ["/models/tiny", "--swap-space", "4"]),
        "model_option_v10": runs.run(v10, ["--model", "/models/tiny"]),
        "oom": runs.run(v10, ["/models/tiny"], env={"STANDIN_FAIL": "oom"}),
        "kv_cache": runs.run(new, ["/models/tiny"], env={"STANDIN_FAIL": "kv_cache"}),
        "gated": runs.run(v10, ["meta-llama/Llama-3.1-8B"], env={"STANDIN_FAIL": "gated"}),
        "no_gpu": runs.run(v10, ["/models/tiny"], gpus=None),
        "no_config": runs.run(v10, ["/models"]),
        "crash": runs.run(old, ["--model", "/models/tiny"], env={"STANDIN_CRASH_AFTER": "0.3"}),
        "tool_choice": runs.run(new, ["/models/tiny", "--enable-auto-tool-choice"]),
    }
    return {k: wait_exit(c) for k, c in started.items()}


def _table_has(version: str, flag: str) -> bool:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sim" / "standin"))
    from standin import tables

    t = tables.load(version)
    return any(flag in a.get("option_strings", []) for a in t["actions"])


# --- the long-running stand-in


def test_gpu_request_reaches_the_container(served):
    c, _url = served
    environ = c.exec_run(["cat", "/proc/1/environ"]).output.decode()
    assert "NVIDIA_VISIBLE_DEVICES=1" in environ.split("\0")
    c.reload()
    assert c.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["1"]


def test_image_metadata(standin_images, client):
    for version in ("0.8.5", "0.10.2", "0.33.0"):
        img = client.images.get(standin_images[version])
        assert img.labels["org.opencontainers.image.version"] == version
        assert f"VLLM_VERSION={version}" in img.attrs["Config"]["Env"]
    assert client.images.get(standin_images["0.8.5"]).attrs["Config"]["Entrypoint"][:3] == [
        "python3", "-m", "vllm.entrypoints.openai.api_server"]  # fmt: skip
    assert client.images.get(standin_images["0.10.2"]).attrs["Config"]["Entrypoint"] == ["vllm", "serve"]


def test_health_and_startup_log(served):
    c, url = served
    assert requests.get(f"{url}/health", timeout=5).status_code == 200
    logs = c.logs().decode()
    for phase in ("vLLM API server version 0.10.2", "Loading weights took", "torch.compile takes",
                  "Capturing CUDA graphs", "Starting vLLM API server", "Application startup complete."):  # fmt: skip
        assert phase in logs
    assert API_KEY not in logs


def test_api_key_required_on_v1(served):
    _c, url = served
    r = requests.get(f"{url}/v1/models", timeout=5)
    assert r.status_code == 401
    assert r.json() == {"error": "Unauthorized"}
    assert requests.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    assert requests.get(f"{url}/metrics", timeout=5).status_code == 200  # only /v1/* is protected


def test_models_lists_lora_with_parent(served):
    _c, url = served
    data = requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5).json()["data"]
    by_id = {m["id"]: m for m in data}
    assert by_id["tiny"]["parent"] is None
    assert by_id["tiny"]["max_model_len"] == 2048
    assert by_id["tiny"]["root"] == "/models/tiny"
    assert by_id[LORA]["parent"] == "tiny"
    assert by_id[LORA]["root"] == "/loras/sql"


def test_completions_and_metrics(served):
    _c, url = served
    h = {"Authorization": f"Bearer {API_KEY}"}
    r1 = requests.post(
        f"{url}/v1/completions", headers=h, json={"model": "tiny", "prompt": "Hello there", "max_tokens": 7}
    )
    r2 = requests.post(
        f"{url}/v1/completions", headers=h, json={"model": "tiny", "prompt": "Hello there", "max_tokens": 7}
    )
    assert r1.status_code == 200, r1.text
    body = r1.json()
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["prompt_tokens"] > 0
    assert body["choices"][0]["text"] == r2.json()["choices"][0]["text"]  # deterministic
    chat = requests.post(f"{url}/v1/chat/completions", headers=h,
                         json={"model": LORA, "messages": [{"role": "user", "content": "hi"}]}).json()  # fmt: skip
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["model"] == LORA
    missing = requests.post(f"{url}/v1/completions", headers=h, json={"model": "nope", "prompt": "x"})
    assert missing.status_code == 404
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_bucket", "vllm:request_success_total"):  # fmt: skip
        assert name in metrics
    gen = [ln for ln in metrics.splitlines() if ln.startswith("vllm:generation_tokens_total{")]
    assert gen and 'model_name="tiny"' in gen[0]
    assert float(gen[0].rsplit(" ", 1)[1]) >= 14 + chat["usage"]["completion_tokens"]


def test_sleep_mode(served):
    _c, url = served
    assert requests.get(f"{url}/is_sleeping", timeout=5).json() == {"is_sleeping": False}
    assert requests.post(f"{url}/sleep?level=1", timeout=5).status_code == 200
    assert requests.get(f"{url}/is_sleeping", timeout=5).json() == {"is_sleeping": True}
    assert requests.post(f"{url}/wake_up", timeout=5).status_code == 200
    assert requests.get(f"{url}/is_sleeping", timeout=5).json() == {"is_sleeping": False}


def test_swap_space_accepted_by_0_10_2(served):
    c, _url = served
    if not _table_has("0.10.2", "--swap-space"):
        pytest.skip("the 0.10.2 table has no --swap-space")
    assert "'swap_space': 4.0" in c.logs().decode()


def test_sigterm_stops_cleanly(served):
    """Runs last among the `served` tests (file order): docker stop → graceful shutdown, exit 0, not killed."""
    c, _url = served
    c.stop(timeout=10)
    c.reload()
    assert c.status == "exited"
    assert c.attrs["State"]["ExitCode"] == 0  # 137 would mean SIGKILL after the timeout
    assert "Application shutdown complete." in c.logs().decode()


# --- exits


def test_unknown_flag_exits_2(failures):
    rc, logs = failures["unknown_flag"]
    assert rc == 2
    assert "vllm: error: unrecognized arguments: --no-such-flag 3" in logs  # the top-level parser reports it


def test_swap_space_refused_by_newest(failures):
    if _table_has("0.33.0", "--swap-space"):
        pytest.skip("the newest table still has --swap-space")
    rc, logs = failures["swap_space_new"]
    assert rc == 2
    assert "unrecognized arguments: --swap-space 4" in logs


def test_model_option_refused_by_0_10_2_serve(failures):
    rc, logs = failures["model_option_v10"]
    assert rc == 1
    assert "instead of via the `--model` option" in logs


def test_oom(failures):
    rc, logs = failures["oom"]
    assert rc == 1
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate" in logs
    assert "Engine core initialization failed" in logs
    assert "Application startup complete." not in logs


def test_kv_cache_too_small(failures):
    rc, logs = failures["kv_cache"]
    assert rc == 1
    assert "KV cache is needed, which is larger than the available KV cache memory" in logs


def test_gated_repo(failures):
    rc, logs = failures["gated"]
    assert rc == 1
    assert "401 Client Error" in logs and "Cannot access gated repo" in logs


def test_no_gpu(failures):
    rc, logs = failures["no_gpu"]
    assert rc == 1
    assert "RuntimeError: Failed to infer device type" in logs


def test_local_dir_without_config(failures):
    rc, logs = failures["no_config"]
    assert rc == 1
    assert "Invalid repository ID or local directory specified: '/models'" in logs


def test_crash_after_serving(failures):
    rc, logs = failures["crash"]
    assert rc == 1
    assert logs.index("Application startup complete.") < logs.index("EngineDeadError")


def test_tool_choice_needs_parser(failures):
    rc, logs = failures["tool_choice"]
    assert rc == 1
    assert "--enable-auto-tool-choice requires --tool-call-parser" in logs


@pytest.fixture(scope="module")
def flag_runs(runs, standin_images):
    """Argv per image, started together without a GPU: an argv the parser accepts gets past it and fails later for
    want of a GPU (exit 1), one it refuses exits 2 with argparse's message."""
    new, v10, old = standin_images["0.33.0"], standin_images["0.10.2"], standin_images["0.8.5"]
    m = "/models/tiny"
    cases = {
        # 0.33.0: --disable-x is listed under `negative`, --no-enable-x under `hidden_options`
        "new_on_off": (new, [m, "--disable-expert-parallel", "--no-enable-prefix-caching", "-ep"]),
        "new_types": (new, [m, "--moe-backend", "Deep-Gemm", "--max-model-len", "auto", "-O3"]),
        "new_no_disable": (new, [m, "--no-disable-expert-parallel"]),
        "new_model_not_first": (new, ["--port", "8001", m, "--served-model-name", "x"]),
        "v10_disable": (v10, [m, "--disable-prefix-caching"]),
        "v10_dotted": (v10, [m, "--compilation-config.level", "3", "--no-enable-prefix-caching"]),
        # 0.8.5's api_server entrypoint: no positional model (missing_dests), prompt adapters as name=path
        "old_positional": (old, [m]),
        "old_prompt_adapters": (old, ["--model", m, "--prompt-adapters", "a=/p", "--quantization", "None"]),
    }
    started = {k: runs.run(image, args, gpus=None) for k, (image, args) in cases.items()}
    return {k: wait_exit(c) for k, c in started.items()}


@pytest.mark.parametrize("case", ["new_on_off", "new_types", "v10_dotted", "old_prompt_adapters"])
def test_flags_the_table_accepts_pass_the_parser(flag_runs, case):
    rc, logs = flag_runs[case]
    assert rc == 1, logs[-2000:]
    assert "RuntimeError: Failed to infer device type" in logs


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("new_no_disable", "vllm: error: unrecognized arguments: --no-disable-expert-parallel"),
        ("v10_disable", "vllm: error: unrecognized arguments: --disable-prefix-caching"),
        ("old_positional", "api_server.py: error: unrecognized arguments: /models/tiny"),
    ],
)
def test_flags_the_table_lacks_exit_2(flag_runs, case, message):
    rc, logs = flag_runs[case]
    assert rc == 2, logs[-2000:]
    assert message in logs


def test_newest_wants_the_model_first_with_served_model_name(flag_runs):
    rc, logs = flag_runs["new_model_not_first"]
    assert rc == 1
    assert "ValueError: `model` should be provided as the first positional argument" in logs


def test_0_8_5_entrypoint_and_metric_names(runs, standin_images):
    c = runs.run(standin_images["0.8.5"], ["--model", "/models/tiny"], ports={"8000/tcp": ("127.0.0.1", None)})
    url = host_url(c)
    wait_ready(url, c)
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    assert "vllm:gpu_cache_usage_perc{" in metrics
    assert "vllm:kv_cache_usage_perc" not in metrics
    assert requests.get(f"{url}/v1/models", timeout=5).json()["data"][0]["id"] == "/models/tiny"
    c.stop(timeout=10)
    assert wait_exit(c)[0] == 0


# --- podman (CDI)


@pytest.mark.podman
def test_podman_cdi_gpu(podman_bed, standin_model_dir):  # podman_bed: the CDI spec of this checkout
    port = free_port()
    name = f"standin-podman-{uuid.uuid4().hex[:8]}"
    run = subprocess.run(
        ["podman", "run", "-d", "--name", name, "--device", "nvidia.com/gpu=1", "--network", "host",
         "-v", f"{standin_model_dir}:/models/tiny:ro", podman_bed["0.10.2"], "/models/tiny", "--port", str(port)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        if "cgroups in hybrid mode not supported" in run.stderr:
            pytest.fail("podman's default OCI runtime crun cannot run on this host's hybrid cgroups; the bed must "
                        'configure `[engine] runtime = "runc"` (sim/engine/podman.sh): ' + run.stderr)  # fmt: skip
        assert run.returncode == 0, run.stderr
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # refused while it starts, or slow to answer on a busy machine
                time.sleep(0.05)
        else:
            pytest.fail(
                subprocess.run(["podman", "logs", name], capture_output=True, text=True, check=False).stdout[-3000:]
            )
        env = subprocess.run(
            ["podman", "exec", name, "cat", "/proc/1/environ"], capture_output=True, text=True, check=False
        ).stdout
        assert "NVIDIA_VISIBLE_DEVICES=1" in env.split("\0")
        subprocess.run(["podman", "stop", "-t", "10", name], capture_output=True, check=True)
        state = subprocess.run(
            ["podman", "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True, text=True, check=False
        )
        assert state.stdout.strip() == "0"
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, check=False)


# --- hub ids through HF_ENDPOINT (the fake hub of sim/hub)


@pytest.fixture(scope="module")
def fake_hub_url(tmp_path_factory) -> Iterator[str]:
    import sys

    root = tmp_path_factory.mktemp("standin-hub")
    hub_dir = Path(__file__).resolve().parents[2] / "sim" / "hub"
    for extra in ([], ["--gated"]):
        name = "org/tiny" if not extra else "org/gated"
        subprocess.run([sys.executable, str(hub_dir / "make_repo.py"), str(root), name, "--shards", "1", *extra],
                       check=True, capture_output=True)  # fmt: skip
    port_file = root / "port"
    proc = subprocess.Popen([sys.executable, str(hub_dir / "fakehub.py"), "--root", str(root), "--port-file",
                             str(port_file)])  # fmt: skip
    end = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < end:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port_file.read_text().strip()}"
    proc.terminate()
    proc.wait(timeout=10)


def test_hub_model_download_gated_and_missing(runs, standin_images, fake_hub_url):
    port = free_port()
    env = {"HF_ENDPOINT": fake_hub_url, "HF_HOME": "/tmp/hf"}
    ok = runs.run(standin_images["0.10.2"], ["org/tiny", "--port", str(port)], env=env, network_mode="host")
    gated = runs.run(standin_images["0.10.2"], ["org/gated", "--port", str(free_port())], env=env, network_mode="host")
    missing = runs.run(standin_images["latest"], ["org/nope", "--port", str(free_port())], env=env, network_mode="host")
    wait_ready(f"http://127.0.0.1:{port}", ok)
    models = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["data"]
    assert [m["id"] for m in models] == ["org/tiny"]
    assert "Time spent downloading weights for org/tiny" in ok.logs().decode()
    cached = ok.exec_run(["sh", "-c", "ls /tmp/hf/hub/models--org--tiny/snapshots/*/config.json"])
    assert cached.exit_code == 0
    rc, logs = wait_exit(gated)
    assert rc == 1 and "Cannot access gated repo for url" in logs and "401 Client Error" in logs
    rc, logs = wait_exit(missing)
    assert rc == 1 and "Repository Not Found for url" in logs
