"""The simulated GPU hosts: Ansible over real SSH, one hostname, dockerd, GPU set and filesystem per host."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from fixtures.hosts import BASE_IMAGE, BUILD, HOSTS_SH, ROOT, SimHosts
from fixtures.paths import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

# Expected fake GPU sets (sim/nvml/examples/<set>.json) per host, as in the brief and inventories/sim.
GPU_SETS = {"gpu-a": "2x-a100-80gb", "gpu-b": "4x-l40s", "gpu-c": "1x-h100"}


def _docker(docker_host: str | None, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    else:
        env.pop("DOCKER_HOST", None)
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, check=False, timeout=60)


def test_ping_reaches_every_host_over_ssh(sim_hosts: SimHosts) -> None:
    assert sim_hosts.names == ["gpu-a", "gpu-b", "gpu-c"]
    results = sim_hosts.ansible("all", "ansible.builtin.ping")
    assert {h: r.get("ping") for h, r in results.items()} == dict.fromkeys(sim_hosts.names, "pong")
    # A real SSH session to the host's own address (not a local connection).
    results = sim_hosts.ansible("all", "ansible.builtin.shell", "echo $SSH_CONNECTION")
    for name, r in results.items():
        fields = r["stdout"].split()
        assert fields[2:] == [sim_hosts.address(name), "22"], (name, r["stdout"])


def test_each_host_reports_its_own_hostname(sim_hosts: SimHosts) -> None:
    results = sim_hosts.ansible("all", "ansible.builtin.setup", "filter=ansible_hostname")
    assert {h: r["ansible_facts"]["ansible_hostname"] for h, r in results.items()} == {n: n for n in sim_hosts.names}
    assert socket.gethostname() not in sim_hosts.names, "the main namespace's hostname was changed"


def test_each_host_has_its_own_dockerd(sim_hosts: SimHosts) -> None:
    ids = sim_hosts.ansible("all", "ansible.builtin.command", "docker info --format {% raw %}{{.ID}}{% endraw %}")
    daemon_ids = {h: r["stdout"].strip() for h, r in ids.items()}
    main = _docker(None, "info", "--format", "{{.ID}}")
    assert main.returncode == 0, main.stderr
    assert len(set(daemon_ids.values()) | {main.stdout.strip()}) == len(sim_hosts.names) + 1, daemon_ids


def _http_get(url: str) -> int:
    """The status of GET ``url`` once it answers: the container's server may still be starting (a busy machine takes
    its time), so wait for the answer; the limit only turns a hang into a failure."""

    def status() -> int | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as err:  # it answered: with an error status
            return err.code
        except OSError:
            return None

    return int(wait_for(f"{url} to answer", status, limit=180, every=0.2))


def test_container_on_one_host_is_invisible_elsewhere(sim_hosts: SimHosts, sim_hosts_image: str) -> None:
    name = f"gpufleet-test-hosts-{uuid.uuid4().hex[:8]}"
    port = 28000 + uuid.uuid4().int % 1000  # below the ephemeral range (32768-60999)
    try:
        sim_hosts.ansible(
            "gpu-a",
            "ansible.builtin.command",
            f"docker run -d --name {name} -p {port}:8000 {sim_hosts_image} python3 -m http.server 8000",
        )
        seen = sim_hosts.ansible("all", "ansible.builtin.command", f"docker ps -aq --filter name=^{name}$")
        assert seen["gpu-a"]["stdout"].strip(), "the container is not listed on the host that started it"
        assert not seen["gpu-b"]["stdout"].strip() and not seen["gpu-c"]["stdout"].strip(), seen
        main = _docker(None, "ps", "-aq", "--filter", f"name=^{name}$")
        assert main.returncode == 0 and not main.stdout.strip(), "the container leaked into the main dockerd"
        # Its published port is reachable at the host's address, from the controller (main namespace) ...
        assert _http_get(f"http://{sim_hosts.address('gpu-a')}:{port}/") == 200
        # ... and from another host, by name.
        client = f"import urllib.request; print(urllib.request.urlopen('http://gpu-a:{port}/', timeout=10).status)"
        out = sim_hosts.ansible(
            "gpu-b", "ansible.builtin.command", f'{{{{ ansible_python_interpreter }}}} -c "{client}"'
        )
        assert out["gpu-b"]["stdout"].strip() == "200"
    finally:
        _docker(sim_hosts.docker_host("gpu-a"), "rm", "-f", name)


def test_gpu_requests_are_accepted_by_a_hosts_dockerd(sim_hosts: SimHosts, sim_hosts_image: str) -> None:
    out = sim_hosts.ansible(
        "gpu-b",
        "ansible.builtin.command",
        f'docker run --rm --gpus device=1 {sim_hosts_image} sh -c \'tr "\\0" "\\n" </proc/1/environ\'',
    )
    assert "NVIDIA_VISIBLE_DEVICES=1" in out["gpu-b"]["stdout"].splitlines()


def test_host_to_host_tcp(sim_hosts: SimHosts) -> None:
    port = 27000 + uuid.uuid4().int % 1000  # below the ephemeral range (32768-60999)
    # A listener on gpu-a that answers two connections with "<its hostname> <the peer's address>", then exits
    # (at the latest after 60 s).
    server = (
        "import socket; s = socket.create_server(('0.0.0.0', PORT)); s.settimeout(60)\n"
        "for _ in range(2):\n"
        "    c, a = s.accept(); c.sendall(f'{socket.gethostname()} {a[0]}'.encode()); c.close()"
    ).replace("PORT", str(port))
    python = str(ROOT / ".venv" / "bin" / "python")
    Path(BUILD / "gpu-a" / "fs" / "tmp" / f"listener-{port}.py").write_text(server)  # gpu-a's own /tmp
    sim_hosts.ansible(
        "gpu-a",
        "ansible.builtin.shell",
        f"setsid {python} /tmp/listener-{port}.py </dev/null >/dev/null 2>&1 & "
        f"for i in $(seq 50); do ss -ltn | grep -q ':{port} ' && exit 0; sleep 0.1; done; exit 1",
    )
    try:
        # Not on the main namespace's loopback: the listener lives in gpu-a's network namespace.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        client = (
            f"import socket; c = socket.create_connection(('gpu-a', {port}), timeout=10); print(c.recv(100).decode())"
        )
        out = sim_hosts.ansible("gpu-b", "ansible.builtin.command", f'{python} -c "{client}"')
        # gpu-b reached gpu-a directly (gpu-a sees gpu-b's own address: no NAT between hosts).
        assert out["gpu-b"]["stdout"].split() == ["gpu-a", sim_hosts.address("gpu-b")]
        # The controller reaches it too, at the host's address, coming from the bridge's address.
        with socket.create_connection((sim_hosts.address("gpu-a"), port), timeout=10) as c:
            assert c.recv(100).decode().split() == ["gpu-a", sim_hosts.gateway]
    finally:
        (BUILD / "gpu-a" / "fs" / "tmp" / f"listener-{port}.py").unlink(missing_ok=True)


def test_each_host_sees_its_own_gpu_set(sim_hosts: SimHosts) -> None:
    out = sim_hosts.ansible(
        "all", "ansible.builtin.shell", "echo $GPUFLEET_FAKE_GPUS; echo $LD_LIBRARY_PATH; echo $PATH"
    )
    for name, r in out.items():
        gpus, ld_path, path = r["stdout"].splitlines()
        assert gpus == str(ROOT / "sim" / "nvml" / "examples" / f"{GPU_SETS[name]}.json")
        assert ld_path == str(ROOT / ".build" / "nvml")
        assert path.split(":")[0] == str(ROOT / "sim" / "nvml" / "bin")


def test_pynvml_on_each_host_lists_its_own_fake_gpus(sim_hosts: SimHosts) -> None:
    lib = ROOT / ".build" / "nvml" / "libnvidia-ml.so.1"
    build = ROOT / "sim" / "nvml" / "build.sh"
    if not lib.exists() and build.exists():
        subprocess.run([str(build)], check=False, capture_output=True, timeout=120)
    examples = {n: ROOT / "sim" / "nvml" / "examples" / f"{s}.json" for n, s in GPU_SETS.items()}
    if not lib.exists() or not all(p.exists() for p in examples.values()):
        pytest.skip("the fake NVML (sim/nvml) or its example GPU sets are not built yet")
    expected = {n: [g["uuid"] for g in json.loads(p.read_text())["gpus"]] for n, p in examples.items()}
    code = (
        "import pynvml; pynvml.nvmlInit(); "
        "print(' '.join(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)) "
        "for i in range(pynvml.nvmlDeviceGetCount())))"
    )
    out = sim_hosts.ansible("all", "ansible.builtin.command", f'{{{{ ansible_python_interpreter }}}} -c "{code}"')
    assert {h: r["stdout"].split() for h, r in out.items()} == expected
    assert len({len(v) for v in expected.values()}) == len(expected), "the example sets should differ in GPU count"


def test_nothing_leaks_between_hosts_or_to_the_main_namespace(sim_hosts: SimHosts) -> None:
    token = uuid.uuid4().hex[:12]
    sim_hosts.ansible(
        "gpu-a",
        "ansible.builtin.shell",
        f"touch /tmp/leak-{token} /var/lib/gpufleet/leak-{token} /etc/docker/leak-{token} /root/leak-{token}",
    )
    try:
        out = sim_hosts.ansible(
            "all",
            "ansible.builtin.shell",
            f"ls /tmp/leak-{token} /var/lib/gpufleet/leak-{token} /etc/docker/leak-{token} /root/leak-{token} "
            "2>/dev/null | wc -l; ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort | tr '\\n' ' '",
            check=True,
        )
        counts = {h: int(r["stdout"].splitlines()[0]) for h, r in out.items()}
        assert counts == {"gpu-a": 4, "gpu-b": 0, "gpu-c": 0}, counts
        for name, r in out.items():
            # Each host sees only its own interfaces: loopback, its veth end and its dockerd's bridge.
            links = set(r["stdout"].splitlines()[1].split())
            assert {"lo", "eth0", "gpufdk0"} <= links and not any(x.startswith("vgf-") for x in links), (name, links)
        for path in ("/tmp", "/var/lib/gpufleet", "/etc/docker", "/root"):
            assert not Path(path, f"leak-{token}").exists(), f"{path}/leak-{token} leaked into the main namespace"
        # Their files live in the host's own directory, seen from here as plain files.
        assert (BUILD / "gpu-a" / "fs" / "tmp" / f"leak-{token}").exists()
        main_mounts = Path("/proc/self/mounts").read_text()
        assert str(BUILD) not in main_mounts, "a host's bind mount is visible in the main mount namespace"
        main_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
        assert "gpufdk0" not in main_links and " eth0@" not in main_links
    finally:
        sim_hosts.ansible(
            "gpu-a",
            "ansible.builtin.shell",
            f"rm -f /tmp/leak-{token} /var/lib/gpufleet/leak-{token} /etc/docker/leak-{token} /root/leak-{token}",
            check=False,
        )


def test_up_again_keeps_what_runs(sim_hosts: SimHosts) -> None:
    def pids() -> dict[str, tuple[str, str, str]]:
        return {
            n: tuple((BUILD / n / f).read_text().strip() for f in ("holder.pid", "sshd.pid", "engine/dockerd.pid"))  # type: ignore[misc]
            for n in sim_hosts.names
        }

    before = pids()
    proc = subprocess.run([str(HOSTS_SH), "up"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert pids() == before
    status = subprocess.run([str(HOSTS_SH), "status"], capture_output=True, text=True, check=False)
    assert status.returncode == 0, status.stdout
    assert all("dockerd=up sshd=up" in line for line in status.stdout.splitlines()), status.stdout


def test_demo_inventory_works_from_any_directory(sim_hosts: SimHosts, tmp_path: Path) -> None:
    env = {k: v for k, v in sim_hosts.env.items() if k not in ("GPUFLEET_ROOT", "ANSIBLE_PYTHON_INTERPRETER")}
    env.update(ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree", ANSIBLE_CALLBACK_TREE_DIR=str(tmp_path / "tree"))
    proc = subprocess.run(
        ["ansible", "all", "-i", str(ROOT / "inventories" / "sim"), "-m", "ansible.builtin.setup", "-a",
         "filter=ansible_hostname,ansible_python"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    hosts = {p.name: json.loads(p.read_text()) for p in (tmp_path / "tree").iterdir()}
    assert {h: r["ansible_facts"]["ansible_hostname"] for h, r in hosts.items()} == {n: n for n in GPU_SETS}
    # The modules ran with the checkout's venv python (docker SDK, pynvml), found through the inventory's path.
    for r in hosts.values():
        assert r["ansible_facts"]["ansible_python"]["executable"] == str(ROOT / ".venv" / "bin" / "python")


def _image_ids(lines: str, strip: str = "") -> dict[str, str]:
    out = {}
    for line in lines.splitlines():
        ref, _sep, image_id = line.partition(" ")
        if ref.startswith(strip):
            out[ref.removeprefix(strip)] = image_id.removeprefix("sha256:")
    return out


@pytest.mark.podman
def test_gpu_c_has_the_images_in_podman_too(sim_hosts: SimHosts, sim_podman_host: str) -> None:
    fmt = "{{.Repository}}:{{.Tag}} {{.ID}}"
    main = _docker(None, "image", "ls", "--no-trunc", "--format", fmt)
    want = {r: i for r, i in _image_ids(main.stdout).items() if r.startswith(("vllm/vllm-openai:", BASE_IMAGE))}
    assert want, "no bed image in the main dockerd"
    podman = sim_hosts.podman(sim_podman_host, "images", "--no-trunc", "--format", fmt)
    assert podman.returncode == 0, podman.stderr
    # Same ids as in the main dockerd, under the names a pull would give them (docker.io/...), none left as localhost/.
    have = _image_ids(podman.stdout, "docker.io/")
    assert {r: have.get(r) for r in want} == want
    assert "localhost/" not in podman.stdout
    # The docker runtime of the host has them as well (its inventory runtime stays docker by default).
    docker = _docker(sim_hosts.docker_host(sim_podman_host), "image", "ls", "--no-trunc", "--format", fmt)
    assert {r: _image_ids(docker.stdout).get(r) for r in want} == want
    if not os.environ.get("GPUFLEET_HOSTS_PODMAN"):
        assert sim_hosts.hosts[sim_podman_host]["gpufleet_runtime"] == "docker"


@pytest.mark.podman
def test_podman_in_a_host_gets_that_hosts_gpus_through_cdi(sim_hosts: SimHosts, sim_podman_host: str) -> None:
    # gpu-c has one fake GPU: CDI knows nvidia.com/gpu=0 and =all there, not =1 (gpu-b, with four, has 0..3).
    for name, count in (("gpu-c", 1), ("gpu-b", 4)):
        spec = (BUILD / name / "fs" / "etc" / "cdi" / "nvidia.yaml").read_text()
        names = re.findall(r'^  - name: "?([^"\n]+)"?$', spec, re.M)
        assert names == [*map(str, range(count)), "all"], (name, names)
    image = f"docker.io/{BASE_IMAGE}"
    env = "tr '\\0' '\\n' </proc/1/environ; ls /dev"
    out = sim_hosts.ansible(
        sim_podman_host, "ansible.builtin.command", f'podman run --rm --device nvidia.com/gpu=0 {image} sh -c "{env}"'
    )[sim_podman_host]["stdout"].split()
    assert "NVIDIA_VISIBLE_DEVICES=0" in out and "nvidia0" in out
    bad = sim_hosts.ansible(
        sim_podman_host,
        "ansible.builtin.command",
        f"podman run --rm --device nvidia.com/gpu=1 {image} true",
        check=False,
    )[sim_podman_host]
    assert bad.get("rc") != 0 and "nvidia.com/gpu=1" in bad.get("stderr", ""), bad


@pytest.mark.podman
def test_podman_containers_stay_in_their_host(sim_hosts: SimHosts, sim_podman_host: str) -> None:
    name = f"gpufleet-test-hosts-pm-{uuid.uuid4().hex[:8]}"
    port = 26000 + uuid.uuid4().int % 1000  # below the ephemeral range (32768-60999)
    image = f"docker.io/{BASE_IMAGE}"
    try:
        sim_hosts.ansible(
            sim_podman_host,
            "ansible.builtin.command",
            f"podman run -d --name {name} -p {port}:8000 {image} python3 -m http.server 8000",
        )
        # Its published port answers at the host's address (podman's network lives in the host's namespace) ...
        assert _http_get(f"http://{sim_hosts.address(sim_podman_host)}:{port}/") == 200
        # ... and the container is listed only by that host's podman: not by another host's, nor the main one.
        assert sim_hosts.podman(sim_podman_host, "ps", "-q", "--filter", f"name=^{name}$").stdout.strip()
        assert not sim_hosts.podman("gpu-a", "ps", "-aq", "--filter", f"name=^{name}$").stdout.strip()
        main = subprocess.run(
            ["podman", "ps", "-aq", "--filter", f"name=^{name}$"], capture_output=True, text=True, check=False
        )
        assert main.returncode == 0 and not main.stdout.strip(), "the container leaked into the main podman"
    finally:
        sim_hosts.podman(sim_podman_host, "rm", "-f", "--time", "1", "--ignore", name)


def test_a_solo_host_started_under_a_callers_lock_does_not_keep_it(sim_solo_host: SimHosts, tmp_path: Path) -> None:
    """`flock LOCK hosts.sh solo gpu-e` (molecule's and the matrix's form): the host's daemons must not inherit the
    lock's descriptor, or the lock would be held as long as they run (every later molecule scenario and matrix converge
    on gpu-e waited for it). Also: the solo host is outside the shared inventory, with its own."""
    name = next(iter(sim_solo_host.hosts))
    assert name not in yaml_hosts(BUILD / "inventory.yml") and sim_solo_host.inventory == BUILD / name / "inventory.yml"
    down = subprocess.run([str(HOSTS_SH), "solo-down", name], capture_output=True, text=True, check=False, timeout=120)
    assert down.returncode == 0, down.stderr
    lock = tmp_path / "caller.lock"
    up = subprocess.run(
        ["flock", str(lock), str(HOSTS_SH), "solo", name], capture_output=True, text=True, check=False, timeout=600
    )
    assert up.returncode == 0, up.stderr
    assert subprocess.run(["flock", "-n", str(lock), "true"], check=False).returncode == 0, "the lock is still held"
    assert sim_solo_host.in_host(name, "hostname").stdout.strip() == name  # and the host is up again


def yaml_hosts(path: Path) -> list[str]:
    return list(yaml.safe_load(path.read_text())["all"]["children"]["gpu_hosts"]["hosts"])
