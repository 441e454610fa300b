# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ports of one replica's Ray cluster: a block of ``BLOCK`` ports from its ``base`` on every host of the replica.

Ray runs on the host network (its workers and the head must reach each other's node manager, object manager and
worker ports), so two clusters on one host must not share a port. The planner gives each multi-host replica one base
(``FIRST``, ``FIRST + BLOCK``, … up to ``LAST``) free on all its hosts and claims the whole block there; every Ray
process of that replica is started with its ports pinned inside the block (``ports()``), none left to Ray's defaults.
"""

from __future__ import annotations

FIRST = 6379  # Ray's default GCS port: the first cluster of a host gets Ray's usual address
BLOCK = 40
LAST = FIRST + 50 * BLOCK  # 50 clusters per host at most

WORKER_PORTS = 20  # the last 20 ports of the block: Ray's worker processes (min/max worker port)


def bases() -> range:
    """The candidate bases, in the order the planner tries them."""
    return range(FIRST, LAST, BLOCK)


def block(base: int) -> range:
    """Every port of the cluster whose block starts at ``base``."""
    return range(base, base + BLOCK)


def ports(base: int) -> dict[str, int]:
    """The named Ray ports of the cluster at ``base`` (the ``ray start`` options of the same names). No Ray client
    server port: the image's minimal ``ray`` refuses one (it needs ``ray[client]``), and nothing here uses it."""
    return {
        "port": base,  # the head's GCS
        "node_manager_port": base + 1,
        "object_manager_port": base + 2,
        "dashboard_agent_grpc_port": base + 3,
        "dashboard_agent_listen_port": base + 4,
        "metrics_export_port": base + 5,
        "runtime_env_agent_port": base + 6,
        "dashboard_port": base + 7,
        "min_worker_port": base + BLOCK - WORKER_PORTS,
        "max_worker_port": base + BLOCK - 1,
    }
