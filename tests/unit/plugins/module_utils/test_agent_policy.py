"""The node agent's pure decisions (plugins/module_utils/_agent/policy.py): the restart budget and back-off, serve-for
expiry, when failed health probes count, clean exits. The decisions applied to containers: test_node_agent.py."""

from __future__ import annotations

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.policy import (
    Limits,
    Policy,
    Verdict,
    health_counts,
    is_clean_exit,
    is_expired,
    is_stable,
    limits_of,
    over_budget,
    restart_decision,
    seconds_until,
    start_timed_out,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.state import DeploymentState
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import ContainerState, parse_time

NOW = 1_800_000_000.0


def test_restart_decision_pure():
    p = Policy(max_restarts=3, window_s=60, backoff_base_s=5)
    assert restart_decision([], NOW, p) == ("restart", None)
    assert restart_decision([NOW - 2], NOW, p) == ("backoff", NOW + 3)
    assert restart_decision([NOW - 70, NOW - 6], NOW, p) == ("restart", None)  # the old one is out of the window
    assert restart_decision([NOW - 50, NOW - 40, NOW - 30], NOW, p) == ("budget", NOW + 10)
    assert restart_decision([NOW - 2], NOW, p) == Verdict(kind="backoff", not_before=NOW + 3)


def test_expiry_and_seconds_left():
    assert seconds_until(None, NOW) is None and seconds_until("soon", NOW) is None and not is_expired(None, NOW)
    assert seconds_until("2027-01-15T08:00:00Z", 1_800_000_000.0) == pytest.approx(0.0)
    assert is_expired("2027-01-15T08:00:00Z", NOW) and not is_expired("2027-01-15T08:00:00Z", NOW - 0.5)


def test_health_failures_count_after_first_health_start_timeout_before():
    assert not health_counts(DeploymentState(running_since=NOW - 10_000))  # never answered: start_timed_out's case
    assert health_counts(DeploymentState(running_since=NOW, healthy_since_start=True))
    assert not start_timed_out(DeploymentState(running_since=NOW - 99), NOW, 100)
    assert start_timed_out(DeploymentState(running_since=NOW - 100), NOW, 100)
    assert not start_timed_out(DeploymentState(running_since=NOW - 100, healthy_since_start=True), NOW, 100)
    assert not start_timed_out(DeploymentState(), NOW, 100)  # not running


def test_limits_come_from_the_lifecycle_record_else_the_policy():
    p = Policy(max_failed_restarts=3, start_grace_s=1800)
    assert limits_of({}, p) == Limits(3, 1800.0)
    assert limits_of({"max_failed_restarts": 0, "start_timeout_s": 60}, p) == Limits(0, 60.0)
    assert limits_of({"max_failed_restarts": -1, "start_timeout_s": "x"}, p) == Limits(3, 1800.0)


def test_over_budget_is_the_failure_after_the_allowed_restarts():
    assert [over_budget(n, Limits(3, 1)) for n in range(1, 6)] == [False, False, False, True, True]
    assert over_budget(1, Limits(0, 1))  # 0: the first failure ends it


def test_stable_after_healthy_long_enough():
    p = Policy(stable_after_s=600)
    assert is_stable(DeploymentState(running_since=NOW - 600, healthy_since_start=True), NOW, p)
    assert not is_stable(DeploymentState(running_since=NOW - 599, healthy_since_start=True), NOW, p)
    assert not is_stable(DeploymentState(running_since=NOW - 6000), NOW, p)


@pytest.mark.parametrize("code,oom,clean", [(0, False, True), (143, False, True), (0, True, False), (1, False, False)])
def test_clean_exit(code, oom, clean):
    c = ContainerState("x", "x", "exited", False, exit_code=code, restart_count=0, labels={}, oom_killed=oom)
    assert is_clean_exit(c) is clean


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2026-11-23T10:00:00Z", 1795428000.0),
        ("2026-11-23T10:00:00.5Z", 1795428000.5),
        ("2026-11-23T10:00:00.123456789Z", 1795428000.123456789),
        ("2026-11-23T11:00:00+01:00", 1795428000.0),
        ("2026-11-23 10:00:00.25 +0000 UTC", 1795428000.25),
        ("2026-11-23 10:00:00.25 +0000 UTC m=+12.5", 1795428000.25),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        ("soon", None),
    ],
)
def test_parse_time(text, expected):
    got = parse_time(text)
    assert got == pytest.approx(expected) if expected is not None else got is None
