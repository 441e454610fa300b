# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the node agent may do, and its pure decisions: the restart budget and back-off, which failures a restart
cannot fix, when failed health probes count, a hung start, the crash-loop end state, serve-for expiry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.state import DeploymentState
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, parse_time

# Failure classes a restart cannot fix: the same arguments, model, credentials and GPUs fail the same way again.
NO_RESTART = frozenset({"bad_args", "model_not_found", "hf_auth", "no_gpu", "kv_cache_too_small"})
# Exit codes of a server stopped on purpose (vLLM exits 0 on SIGTERM; 143 = killed by SIGTERM): never restarted.
CLEAN_EXIT_CODES = frozenset({0, 143})


@dataclass(frozen=True)
class Policy:
    """What the agent may do (the command-line options; the role's gpufleet_agent_* variables)."""

    max_restarts: int = 5  # restarts of one container allowed within window_s
    window_s: float = 3600.0
    backoff_base_s: float = 10.0  # wait before the n-th restart of the window: base * 2**(n-1), at most backoff_max_s
    backoff_max_s: float = 600.0
    health_failures: int = 3  # consecutive failed /health probes of a running server before it is restarted
    start_grace_s: float = 1800.0  # a server that never answered /health since its start gets this long to load
    health_timeout_s: float = 2.0
    # The crash-loop end state (a deployment's lifecycle record overrides both: max_failed_restarts, start_timeout):
    # after more than max_failed_restarts failures in a row the agent stops the replica for good, with the cause.
    max_failed_restarts: int = 3
    stable_after_s: float = 600.0  # a server healthy this long since its start is no longer in a loop
    stop_timeout: int = 30
    event_tail_lines: int = 40
    no_restart: frozenset[str] = NO_RESTART


class Verdict(NamedTuple):
    """Whether a failed container may be restarted now: ``kind`` is "restart", "backoff" or "budget";
    ``not_before`` is when the next restart may happen (None for "restart")."""

    kind: str
    not_before: float | None


def seconds_until(serve_until: str | None, now: float) -> float | None:
    """Seconds left until ``gpufleet.serve-until`` (negative once past); None when there is no (valid) expiry."""
    until = parse_time(serve_until)
    return None if until is None else until - now


def is_expired(serve_until: str | None, now: float) -> bool:
    left = seconds_until(serve_until, now)
    return left is not None and left <= 0


def backoff_s(restarts_in_window: int, policy: Policy) -> float:
    """The wait after the ``restarts_in_window``-th restart of the window before the next one (0 before the first)."""
    if restarts_in_window <= 0:
        return 0.0
    return min(policy.backoff_base_s * 2 ** (restarts_in_window - 1), policy.backoff_max_s)


def restart_decision(restarts: Iterable[float], now: float, policy: Policy) -> Verdict:
    """Whether a failed container may be restarted now: ``("restart", None)``, ``("backoff", not_before)`` or
    ``("budget", not_before)`` (``max_restarts`` already used in the window; not_before = when the oldest leaves)."""
    recent = sorted(t for t in restarts if now - t < policy.window_s)
    if len(recent) >= policy.max_restarts:
        return Verdict("budget", recent[0] + policy.window_s)
    if recent:
        not_before = recent[-1] + backoff_s(len(recent), policy)
        if now < not_before:
            return Verdict("backoff", not_before)
    return Verdict("restart", None)


def health_counts(st: DeploymentState) -> bool:
    """Whether a failed /health probe counts: once the server answered since its start (before that, a server that
    never answers is caught by ``start_timed_out``)."""
    return st.healthy_since_start


def start_timed_out(st: DeploymentState, now: float, start_timeout_s: float) -> bool:
    """A running server that never answered /health within ``start_timeout_s`` of its start: a hung start."""
    return not st.healthy_since_start and st.running_since is not None and now - st.running_since >= start_timeout_s


class Limits(NamedTuple):
    """A deployment's crash-loop budget: its lifecycle record's values, else the agent's defaults."""

    max_failed_restarts: int
    start_timeout_s: float


def limits_of(record: dict[str, Any], policy: Policy) -> Limits:
    mfr = record.get("max_failed_restarts")
    sto = record.get("start_timeout_s")
    return Limits(
        int(mfr) if isinstance(mfr, int) and mfr >= 0 else policy.max_failed_restarts,
        float(sto) if isinstance(sto, (int, float)) and sto > 0 else policy.start_grace_s,
    )


def over_budget(failures_in_row: int, limits: Limits) -> bool:
    """The failure that ends the loop: more failures in a row than restarts allowed (0 = the first failure)."""
    return failures_in_row > limits.max_failed_restarts


def is_stable(st: DeploymentState, now: float, policy: Policy) -> bool:
    """Healthy since its start for ``stable_after_s``: earlier failures no longer count as a loop."""
    return st.healthy_since_start and st.running_since is not None and now - st.running_since >= policy.stable_after_s


def is_clean_exit(c: ContainerState) -> bool:
    return c.exit_code in CLEAN_EXIT_CODES and not c.oom_killed
