"""The collection builds into a tarball that ansible-galaxy installs offline, and the installed copy works."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import yaml


def test_build_and_offline_install(repo_root: Path, ansible_env: dict[str, str], tmp_path: Path) -> None:
    galaxy = yaml.safe_load((repo_root / "galaxy.yml").read_text())
    out = tmp_path / "dist"
    subprocess.run(
        ["ansible-galaxy", "collection", "build", "--output-path", str(out), str(repo_root)],
        check=True,
        env=ansible_env,
        capture_output=True,
        text=True,
    )
    tarballs = list(out.glob("gpufleet-vllm-*.tar.gz"))
    assert [t.name for t in tarballs] == [f"gpufleet-vllm-{galaxy['version']}.tar.gz"]

    with tarfile.open(tarballs[0]) as tar:
        names = tar.getnames()
    # build_ignore keeps caches, the venv, the test bed, the tests, benchmarks and maintainer tools out of the
    # artifact; what users need is in it.
    shipped = {
        "MANIFEST.json",
        "FILES.json",
        "README.md",
        "LICENSE",
        "meta/runtime.yml",
        "meta/execution-environment.yml",
        "requirements.txt",
        "requirements-host.txt",
        "bindep.txt",
        "changelogs/changelog.yaml",
        "changelogs/config.yaml",
        "docs/inventory.md",
        "playbooks/converge.yml",
        "roles/deployments/tasks/main.yml",
        "roles/deployments/meta/argument_specs.yml",
        "roles/node_agent/defaults/main.yml",
        "roles/monitoring/defaults/main.yml",
        "plugins/action/fleet_plan.py",
        "plugins/filter/deployment_secrets.py",
        "plugins/module_utils/_fleet/placement.py",
        "plugins/plugin_utils/controller_action.py",
        "inventories/example/hosts.yml",
        "extensions/awx/credential_types/hf_token.yml",
        "extensions/awx/credential_types/vllm_api_key.yml",
        "collections/requirements.yml",
    }
    shipped |= {f"plugins/modules/{p.name}" for p in (repo_root / "plugins/modules").glob("*.py")}
    shipped |= {f"tests/sanity/{p.name}" for p in (repo_root / "tests/sanity").glob("ignore-*.txt")}
    assert not shipped - set(names), sorted(shipped - set(names))
    left_out = (
        "sim/",
        "tests/unit/",
        "tests/integration/",
        "tests/fixtures/",
        "tests/realparser/",
        "bench/",
        "hack/",
        "tools/",
        "inventories/sim/",
        ".venv",
        ".build",
        ".git/",
        ".ci",
        ".ansible-lint",
        "pyproject.toml",
        "requirements-test.txt",
    )
    assert not [n for n in names if n.startswith(left_out) or "__pycache__" in n or n == "tests/conftest.py"]

    dest = tmp_path / "collections"
    # Only the target path is configured, so the checkout's own copy does not count as "already installed".
    env = dict(ansible_env, ANSIBLE_COLLECTIONS_PATH=str(dest))
    subprocess.run(
        ["ansible-galaxy", "collection", "install", "--offline", "-p", str(dest), str(tarballs[0])],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    manifest = json.loads((dest / "ansible_collections/gpufleet/vllm/MANIFEST.json").read_text())
    assert manifest["collection_info"]["namespace"] == "gpufleet"
    assert manifest["collection_info"]["name"] == "vllm"

    # The installed copy (not this checkout) is usable: ansible-doc finds its modules there.
    listing = subprocess.run(
        ["ansible-doc", "-t", "module", "-l", "gpufleet.vllm"], check=True, env=env, capture_output=True, text=True
    ).stdout
    modules = sorted(p.stem for p in (repo_root / "plugins/modules").glob("*.py") if p.stem != "__init__")
    for m in modules:
        assert f"gpufleet.vllm.{m}" in listing
