"""``--distributed-executor-backend ray``: the stand-in joins the real Ray cluster as vLLM's engine does.

vLLM's Ray executor (``vllm/executor/ray_utils.py``) connects to the running cluster (``RAY_ADDRESS``), refuses when
the cluster has fewer GPUs than tensor x pipeline parallel size, and reserves one GPU bundle per rank in a placement
group; a node of that group lost while serving kills the engine. The stand-in does the same with real Ray (the
``gpufleet/bed-vllm-ray`` image, sim/images/ray.sh), only without running a model on the bundles.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

PKG = "/usr/local/lib/python3.12/dist-packages/vllm"
FRAMES = [(f"{PKG}/executor/ray_utils.py", 342, "initialize_ray_cluster", "raise ValueError(")]
_state: dict[str, Any] = {}


def join(world: int, info: Callable[[str, str], None]) -> str | None:
    """Connect, check the GPUs, reserve ``world`` GPU bundles. None when it holds; else vLLM's exception text."""
    try:
        import ray  # only images with Ray have it
        from ray.util.placement_group import placement_group
    except ImportError:
        return "ImportError: Failed to import Ray, please check if Ray is installed correctly."
    address = os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, namespace="vllm")
    except Exception as err:  # ray raises ConnectionError and others; vLLM shows them as they are
        return f"{type(err).__name__}: {err}"
    total = ray.cluster_resources().get("GPU", 0)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    info("ray_utils.py:300", f"Connected to Ray cluster at {address}: {len(nodes)} nodes, {total:g} GPUs")
    if total < world:
        return (
            "ValueError: The number of required GPUs exceeds the total number of available GPUs in the placement "
            f"group. Required: {world}, available in the Ray cluster: {total:g}."
        )
    pg = placement_group([{"GPU": 1.0}] * world, strategy="PACK", name="vllm-standin")
    try:
        ray.get(pg.ready(), timeout=float(os.environ.get("STANDIN_RAY_PG_TIMEOUT", "60")))
    except Exception:  # GetTimeoutError
        return (
            f"ValueError: Cannot provide a placement group of placement_group_specs=[{{'GPU': 1.0}}] x {world} "
            "within 60 seconds. See `ray status` and `ray list nodes` to make sure the cluster has enough resources."
        )
    table = ray.util.placement_group_table(pg)
    _state.update(ray=ray, nodes=sorted(set(table.get("bundles_to_node_id", {}).values())))
    info("ray_utils.py:361", f"Placement group of {world} GPUs on {len(_state['nodes'])} Ray nodes")
    return None


def watch(lost: Callable[[str], None], every: float = 0.5) -> None:
    """While serving: when a node that holds a bundle is gone, ``lost(exception text)`` (the engine dies)."""
    ray = _state.get("ray")
    if ray is None:
        return

    def loop() -> None:
        while True:
            time.sleep(every)
            try:
                alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
            except Exception as err:  # the head itself is gone
                lost(f"ray.exceptions.RaySystemError: System error: the Ray cluster is gone ({err})")
                return
            for node in _state["nodes"]:
                if node not in alive:
                    lost(
                        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task. "
                        f"The actor died because its node has died. Node Id: {node}"
                    )
                    return

    threading.Thread(target=loop, name="ray-watch", daemon=True).start()
