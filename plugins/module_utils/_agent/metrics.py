# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node agent's Prometheus metrics (prometheus-client): per deployment up/health, restarts, failures and the last
failure class, seconds until serve-until; the agent's own tick duration, ticks and tick errors. Served on ``--port``
and written to ``<state_dir>/metrics.prom`` (node_exporter's textfile collector). Names, classes and numbers only:
never a secret."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.exporter import load_web_config, serve
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.policy import seconds_until
from ansible_collections.gpufleet.vllm.plugins.module_utils._agent.state import AgentState
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

METRICS_FILE = "metrics.prom"


class StateCollector:
    """A prometheus-client collector over the agent's state (read at each scrape)."""

    def __init__(self, get_state: Callable[[], AgentState], now: Callable[[], float] = time.time) -> None:
        self.get_state = get_state
        self.now = now

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = self.get_state()
        now = self.now()
        up = GaugeMetricFamily("gpufleet_agent_deployment_up", "1 if the container runs", labels=["deployment"])
        healthy = GaugeMetricFamily(
            "gpufleet_agent_deployment_healthy", "1 if /health answered 200 at the last tick", labels=["deployment"]
        )
        restarts = CounterMetricFamily(
            "gpufleet_agent_restarts", "Restarts done by the node agent", labels=["deployment"]
        )
        engine_restarts = CounterMetricFamily(
            "gpufleet_agent_engine_restarts", "Restarts by the engine's restart policy seen", labels=["deployment"]
        )
        fails = CounterMetricFamily(
            "gpufleet_agent_failures", "Failures seen, by class", labels=["deployment", "failure_class"]
        )
        last = GaugeMetricFamily(
            "gpufleet_agent_last_failure_timestamp_seconds",
            "When the last failure was seen; failure_class is its class",
            labels=["deployment", "failure_class"],
        )
        blocked = GaugeMetricFamily(
            "gpufleet_agent_restart_blocked",
            "1 while the agent will not restart the deployment (a class a restart cannot fix, or the budget)",
            labels=["deployment", "reason"],
        )
        until = GaugeMetricFamily(
            "gpufleet_agent_serve_until_seconds",
            "Seconds until gpufleet.serve-until (negative once past)",
            labels=["deployment"],
        )
        expired = GaugeMetricFamily(
            "gpufleet_agent_expired", "1 once stopped for serve-for expiry", labels=["deployment"]
        )
        failed = GaugeMetricFamily(
            "gpufleet_agent_deployment_failed",
            "1 once the agent stopped the deployment for good (reason: crash_loop, start_timeout, not_restartable; "
            "failure_class: the cause) until a converge with a changed configuration or reset_failed",
            labels=["deployment", "reason", "failure_class"],
        )
        in_row = GaugeMetricFamily(
            "gpufleet_agent_failures_in_row",
            "Failures since the server was last stable (the crash-loop count against max_failed_restarts)",
            labels=["deployment"],
        )
        paused = GaugeMetricFamily(
            "gpufleet_agent_deployment_paused_seconds",
            "How long the deployment has slept on purpose (reason: idle, warm_cache, manual); absent while awake",
            labels=["deployment", "reason"],
        )
        info = GaugeMetricFamily(
            "gpufleet_agent_deployment_info",
            "The deployment's owner (1 per deployment)",
            labels=["deployment", "owner"],
        )
        for name in sorted(state.deployments):
            st = state.deployments[name]
            up.add_metric([name], 1.0 if st.up else 0.0)
            healthy.add_metric([name], 1.0 if st.healthy else 0.0)
            restarts.add_metric([name], float(st.restarts_total))
            engine_restarts.add_metric([name], float(st.engine_restarts_total))
            for cls in sorted(st.failures_total):
                fails.add_metric([name, cls], float(st.failures_total[cls]))
            if st.last_failure_class:
                last.add_metric([name, st.last_failure_class], float(st.last_failure_at or 0.0))
            if st.blocked:
                blocked.add_metric([name, st.blocked], 1.0)
            left = seconds_until(st.serve_until, now)
            if left is not None:
                until.add_metric([name], round(left, 3))
            expired.add_metric([name], 1.0 if st.expired else 0.0)
            if st.final:
                failed.add_metric([name, st.final, st.final_class or "unknown"], 1.0)
            in_row.add_metric([name], float(st.failures_in_row))
            info.add_metric([name, st.owner or ""], 1.0)
            if st.paused and st.up and st.paused_at is not None:
                paused.add_metric([name, st.paused], round(max(0.0, now - float(st.paused_at)), 3))
        yield from (up, healthy, restarts, engine_restarts, fails, last, blocked, until, expired, failed, in_row, info)
        yield paused
        yield GaugeMetricFamily(
            "gpufleet_agent_tick_duration_seconds", "Duration of the last tick", value=state.last_tick_duration_s
        )
        yield GaugeMetricFamily(
            "gpufleet_agent_last_tick_timestamp_seconds", "When the last tick ran", value=state.last_tick_at
        )
        yield CounterMetricFamily("gpufleet_agent_ticks", "Ticks run", value=float(state.ticks_total))
        yield CounterMetricFamily(
            "gpufleet_agent_tick_errors",
            "Errors during ticks (engine unreachable, ...)",
            value=float(state.tick_errors_total),
        )


def prometheus() -> Any:
    """The prometheus_client module, or an error that says what to install."""
    try:
        import prometheus_client
    except ImportError as e:
        raise GpufleetError(
            f"the node agent needs prometheus-client on this host (pip install prometheus-client): {e}"
        ) from e
    return prometheus_client


def registry_for(get_state: Callable[[], AgentState], now: Callable[[], float] = time.time) -> Any:
    registry = prometheus().CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(get_state, now))
    return registry


def render_metrics(state: AgentState, now: float | None = None) -> str:
    """The Prometheus text exposition of ``state``."""
    registry = registry_for(lambda: state, (lambda: now) if now is not None else time.time)
    return prometheus().generate_latest(registry).decode()


def serve_metrics(port: int, address: str, get_state: Callable[[], AgentState], web_config: str | None = None) -> Any:
    """The ``/metrics`` endpoint, in a background thread of this process, with the exporter-toolkit web config's TLS
    and basic auth when ``web_config`` (a JSON file) names them. Returns the server (``shutdown()`` stops it)."""
    config = load_web_config(web_config)
    return serve(port, address, registry_for(get_state), config, prometheus().make_wsgi_app)
