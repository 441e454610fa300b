"""The AWX custom credential types (extensions/awx/credential_types/) inject what the deployments role reads: an
extra var that a deployment's secret field references, which the role's deployment_secrets filter then returns as
that deployment's ``api_key`` / ``hf_token``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.schema import deployment_secrets
from jinja2.sandbox import ImmutableSandboxedEnvironment

try:  # ansible-core 2.19+: only data marked trusted (as inventory files are) is templated
    from ansible.template import trust_as_template
except ImportError:  # older ansible-core templates any string

    def trust_as_template(value: str) -> str:
        return value


ROOT = Path(__file__).resolve().parents[3]
TYPES = ROOT / "extensions" / "awx" / "credential_types"
# credential type file -> (its input, the deployment field the injected var goes into)
EXPECTED = {"hf_token.yml": ("hf_token", "hf_token"), "vllm_api_key.yml": ("api_key", "api_key")}


def load(name: str) -> dict:
    return yaml.safe_load((TYPES / name).read_text())


def trusted(data: object) -> object:
    """``data`` as Ansible sees an inventory file: its strings trusted as templates."""
    if isinstance(data, dict):
        return {k: trusted(v) for k, v in data.items()}
    if isinstance(data, list):
        return [trusted(v) for v in data]
    return trust_as_template(data) if isinstance(data, str) else data


def inject(ctype: dict, inputs: dict[str, str]) -> dict[str, str]:
    """The extra vars AWX injects: each injector template rendered over the inputs (AWX renders them in a sandbox)."""
    env = ImmutableSandboxedEnvironment()
    return {k: env.from_string(v).render(**inputs) for k, v in ctype["injectors"]["extra_vars"].items()}


def test_every_type_is_checked() -> None:
    assert sorted(p.name for p in TYPES.glob("*.yml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inputs_are_secret_and_injected_as_one_public_extra_var(name: str) -> None:
    ctype = load(name)
    field, _ = EXPECTED[name]
    assert ctype["kind"] == "cloud" and ctype["name"] and ctype["description"]
    (spec,) = ctype["inputs"]["fields"]
    assert spec["id"] == field and spec["type"] == "string" and spec["secret"] is True
    assert ctype["inputs"]["required"] == [field]
    # Only extra vars: env and files would reach the controller's process, not the hosts' modules.
    assert set(ctype["injectors"]) == {"extra_vars"}
    (var,) = ctype["injectors"]["extra_vars"]
    assert re.fullmatch(r"gpufleet_[a-z_]+", var), var
    assert f"`{var}`" in (ROOT / "docs" / "awx.md").read_text()


def test_injected_vars_reach_the_secrets_the_role_hands_to_the_hosts() -> None:
    injected: dict[str, str] = {}
    for name, (field, _) in EXPECTED.items():
        injected |= inject(load(name), {field: f"canary-{field}-7f3a"})
    assert injected == {"gpufleet_hf_token": "canary-hf_token-7f3a", "gpufleet_api_key": "canary-api_key-7f3a"}

    # The deployments as docs/awx.md shows them, templated as the role sees them (extra vars win over inventory).
    doc = (ROOT / "docs" / "awx.md").read_text()
    block = re.search(r"```yaml\n(gpufleet_deployments:\n.*?)```", doc, re.S).group(1)
    inventory = yaml.safe_load(block)
    templar = Templar(loader=DataLoader(), variables=injected)
    deployments = templar.template(trusted(inventory["gpufleet_deployments"]))
    secrets = deployment_secrets(deployments)
    assert secrets == {"chat": {"api_key": "canary-api_key-7f3a", "hf_token": "canary-hf_token-7f3a"}}
    for name, (_, dep_field) in EXPECTED.items():
        assert secrets["chat"][dep_field] == f"canary-{EXPECTED[name][0]}-7f3a"

    # ... and that is what the role reads: the public gpufleet_deployments through the role's own variable, into
    # fleet_apply's secrets (and the redeploy's api_key / hf_token) by deployment_secrets.
    defaults = yaml.safe_load((ROOT / "roles" / "deployments" / "defaults" / "main.yml").read_text())
    assert defaults["deployments_declared"] == "{{ gpufleet_deployments | default([]) }}"
    apply = (ROOT / "roles" / "deployments" / "tasks" / "apply.yml").read_text()
    assert 'secrets: "{{ deployments_declared | gpufleet.vllm.deployment_secrets }}"' in apply
    redeploy = (ROOT / "roles" / "deployments" / "tasks" / "redeploy.yml").read_text()
    assert "_deployments_secrets.api_key" in redeploy and "_deployments_secrets.hf_token" in redeploy
