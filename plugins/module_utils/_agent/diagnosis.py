# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the node agent reads from the engine about one container: its secret values (never to be written), why it
failed (the collection's one failure classifier over the masked log tail) and whether ``/health`` answers (the
collection's one HTTP client)."""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, Runtime

# Env keys whose values are secret whatever the spec label says.
ALWAYS_SECRET = frozenset({"VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})


@dataclass(frozen=True)
class Diagnosis:
    """Why a container failed: its class, the hint, and the last lines of its log; all masked."""

    failure_class: str
    hint: str
    tail: list[str]


def secret_values(c: ContainerState) -> list[str]:
    """The values of the container's secret env keys (the spec label's ``secret_env_keys``, plus VLLM_API_KEY and
    HF_TOKEN): what must never be written."""
    spec = lb.parse(c.labels).get("spec") or {}
    keys = set(spec.get("secret_env_keys") or []) | ALWAYS_SECRET
    return [v for k, v in c.env.items() if k in keys and v]  # c.env: the adapters read it from the engine's inspect


def classify_tail(rt: Runtime, c: ContainerState, secrets: list[str], tail_lines: int) -> Diagnosis:
    """The failure class, hint and masked last ``tail_lines`` lines of a container's log. The tail is masked before
    it is classified, so the hint (which may quote a log line) never carries a secret either."""
    masked = failures.mask(rt.logs(c.id, failures.TAIL_LINES), secrets)
    if c.oom_killed:
        cls, hint = "unknown", "unknown: the container was OOM-killed (host memory); lower its memory use"
    else:
        cls, hint = failures.classify(masked, exit_code=c.exit_code)
    return Diagnosis(cls, failures.mask([hint], secrets)[0], masked[-tail_lines:])


def http_probe(base: str, timeout: float) -> bool:
    """``/health`` answers 200 (readiness.http: the collection's one HTTP client)."""
    return rd.http(base + "/health", timeout=timeout)[0] == 200
