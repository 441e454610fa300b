#!/usr/bin/env python
# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Loopback image registries of the test bed (Debian's `docker-registry`, i.e. the distribution registry 2.8).

    registry.py up       start both registries (idempotent) and seed them with the stand-in images
    registry.py down     stop the registries this script started (by their pid files)
    registry.py status   print one line per registry

Two registries, plain HTTP on 127.0.0.1 (dockerd and podman treat loopback registries as insecure-allowed):
  - open:  127.0.0.1:$GPUFLEET_REGISTRY_PORT (default 5000), no auth;
  - auth:  127.0.0.1:$GPUFLEET_REGISTRY_AUTH_PORT (default 5001), htpasswd user `gpufleet` / password
    `gpufleet-test` (a test credential, not a secret).
State lives under .build/registry/<name>/ (config.yml, htpasswd, data/, registry.log, pid).

Seeding pushes `vllm/vllm-openai:<tag>` for every stand-in tag present in the local dockerd (v0.8.5, v0.10.2,
v0.33.0, latest; `nightly` = latest) with one extra layer: pip (copied from this venv), because derived images run
`python3 -m pip install` like on the real vLLM images, and the stand-ins have no pip. Until the stand-ins exist,
`gpufleet/bed-base:bookworm` stands in for every tag. A stamp per tag (source image id) makes a second `up` cheap.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / ".build" / "registry"
PORT = int(os.environ.get("GPUFLEET_REGISTRY_PORT", "5000"))
AUTH_PORT = int(os.environ.get("GPUFLEET_REGISTRY_AUTH_PORT", "5001"))
AUTH_USER = "gpufleet"
AUTH_PASSWORD = "gpufleet-test"
STANDIN_REPO = "vllm/vllm-openai"
BASE_IMAGE = "gpufleet/bed-base:bookworm"
TAGS = ("v0.8.5", "v0.10.2", "v0.33.0", "latest")
EXTRA_TAGS = {"nightly": "latest"}
SEED_LABEL = "gpufleet.registry.seed-source"
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"

REGISTRIES = {"open": PORT, "auth": AUTH_PORT}


def log(msg: str) -> None:
    print(f"[registry] {msg}", file=sys.stderr)


def _htpasswd_line() -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # bcrypt through libxcrypt; the only format the registry's htpasswd accepts

        return f"{AUTH_USER}:{crypt.crypt(AUTH_PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"


def _config(name: str, port: int) -> str:
    d = STATE / name
    auth = ""
    if name == "auth":
        auth = f"auth:\n  htpasswd:\n    realm: gpufleet-test\n    path: {d / 'htpasswd'}\n"
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {d / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  headers:\n    X-Content-Type-Options: [nosniff]\n"
        f"{auth}"
    )


def _answers(port: int, auth: bool = False) -> bool:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/")
    if auth:
        tok = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {tok}")
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        return e.code == 401 and not auth
    except OSError:
        return False


def _pid(name: str) -> int | None:
    try:
        pid = int((STATE / name / "pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start(name: str, port: int) -> None:
    d = STATE / name
    (d / "data").mkdir(parents=True, exist_ok=True)
    if name == "auth" and not (d / "htpasswd").exists():
        (d / "htpasswd").write_text(_htpasswd_line())
    cfg = _config(name, port)
    if not (d / "config.yml").exists() or (d / "config.yml").read_text() != cfg:
        (d / "config.yml").write_text(cfg)
    if _pid(name) and _answers(port, auth=name == "auth"):
        return
    if _answers(port):
        raise SystemExit(f"127.0.0.1:{port} is taken by another process; set GPUFLEET_REGISTRY_PORT/_AUTH_PORT")
    logf = open(d / "registry.log", "ab")
    p = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(d / "config.yml")],
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    (d / "pid").write_text(str(p.pid))
    for _attempt in range(100):
        if _answers(port, auth=name == "auth"):
            log(f"{name} registry on 127.0.0.1:{port} (pid {p.pid})")
            return
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"registry {name} did not start; see {d / 'registry.log'}")


def stop(name: str) -> None:
    pid = _pid(name)
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _attempt in range(50):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.05)
        log(f"stopped {name} registry (pid {pid})")
    (STATE / name / "pid").unlink(missing_ok=True)


def _docker():
    import docker

    return docker.from_env()


def _has_manifest(port: int, repo: str, tag: str) -> bool:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    if port == AUTH_PORT:
        tok = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {tok}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status == 200
    except (urllib.error.HTTPError, OSError):
        return False


def _seed_image(client, source: str) -> str:
    """`source` + pip; cached by the label recording the source image id. Returns the seeded image id."""
    import docker.errors

    src = client.images.get(source)
    tag = f"gpufleet/registry-seed:{src.id.split(':')[1][:16]}"
    try:
        img = client.images.get(tag)
        if img.labels.get(SEED_LABEL) == src.id:
            return img.id
    except docker.errors.ImageNotFound:
        pass
    pip_dir = Path(__import__("pip").__file__).parent
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copytree(pip_dir, Path(ctx) / "pip", ignore=shutil.ignore_patterns("__pycache__"))
        Path(ctx, "Dockerfile").write_text(
            f"FROM {source}\n"
            "COPY pip /usr/local/lib/python3.11/dist-packages/pip\n"
            "RUN python3 -m pip --version\n"
            f'LABEL {SEED_LABEL}="{src.id}"\n'
        )
        img, _build_log = client.images.build(path=ctx, tag=tag, rm=True, pull=False)
    return img.id


def seed() -> None:
    client = _docker()
    import docker.errors

    sources = {}
    for tag in TAGS:
        try:
            client.images.get(f"{STANDIN_REPO}:{tag}")
            sources[tag] = f"{STANDIN_REPO}:{tag}"
        except docker.errors.ImageNotFound:
            sources[tag] = BASE_IMAGE
    for extra, of in EXTRA_TAGS.items():
        sources[extra] = sources[of]
    stamps = STATE / "stamps"
    stamps.mkdir(parents=True, exist_ok=True)
    for name, port in REGISTRIES.items():
        auth = None
        if name == "auth":
            auth = {"username": AUTH_USER, "password": AUTH_PASSWORD}
        for tag, source in sources.items():
            src_id = client.images.get(source).id
            stamp = stamps / f"{name}-{tag}"
            if stamp.exists() and stamp.read_text() == src_id and _has_manifest(port, STANDIN_REPO, tag):
                continue
            seeded = _seed_image(client, source)
            ref = f"127.0.0.1:{port}/{STANDIN_REPO}"
            client.images.get(seeded).tag(ref, tag)
            for line in client.api.push(ref, tag, stream=True, decode=True, auth_config=auth):
                if "error" in line:
                    raise SystemExit(f"push {ref}:{tag} failed: {line['error']}")
            # The local tag is only the push handle: tests expect registry images to be absent until pulled.
            client.images.remove(f"{ref}:{tag}", noprune=True)
            stamp.write_text(src_id)
            log(f"pushed {ref}:{tag} (from {source})")
    # Seed images of stand-ins that were rebuilt since are only clutter (the registry keeps what was pushed).
    keep = {f"gpufleet/registry-seed:{client.images.get(src).id.split(':')[1][:16]}" for src in set(sources.values())}
    for img in client.images.list(name="gpufleet/registry-seed"):
        for t in img.tags:
            if t not in keep:
                client.images.remove(t, noprune=False)


PODMAN_DROPIN = Path("/etc/containers/registries.conf.d/60-gpufleet-registry.conf")


def podman_insecure_dropin() -> None:
    """podman (unlike dockerd) wants loopback plain-HTTP registries listed as insecure."""
    text = "# gpufleet test bed (sim/registry): the loopback registries speak plain HTTP.\n" + "".join(
        f'\n[[registry]]\nlocation = "127.0.0.1:{port}"\ninsecure = true\n' for port in REGISTRIES.values()
    )
    if not PODMAN_DROPIN.parent.is_dir():
        return  # no podman configuration on this host
    if not PODMAN_DROPIN.exists() or PODMAN_DROPIN.read_text() != text:
        PODMAN_DROPIN.write_text(text)
        log(f"wrote {PODMAN_DROPIN}")


def status() -> int:
    bad = 0
    for name, port in REGISTRIES.items():
        ok = _answers(port, auth=name == "auth")
        bad += not ok
        print(f"{name:5} 127.0.0.1:{port} {'up' if ok else 'down'} pid={_pid(name)}")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    action = argv[1] if len(argv) > 1 else "up"
    if action == "up":
        podman_insecure_dropin()
        for name, port in REGISTRIES.items():
            start(name, port)
        seed()
        return 0
    if action == "down":
        for name in REGISTRIES:
            stop(name)
        return 0
    if action == "status":
        return status()
    if action == "info":
        print(json.dumps({"open": f"127.0.0.1:{PORT}", "auth": f"127.0.0.1:{AUTH_PORT}", "user": AUTH_USER}))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
