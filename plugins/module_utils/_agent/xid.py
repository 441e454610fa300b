# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The agent's Xid watch: a thread that waits on an NVML event set for the Xid errors of every GPU and records each
one (``_gpu/xid.py``: the record gpu_facts reads) with an event (``gpu_xid``) in the event log.

NVML only reports an Xid to a process that is waiting when it happens (no history), which is why the long-running
agent watches and the one-shot gpu_facts reads the record. Without NVML (no driver, no nvidia-ml-py) or without
event support the watch says so once in the event log and ends; the agent's other work goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu import xid as gpu_xid

WAIT_MS = 1000  # one wait on the event set; the stop flag is looked at between waits


class XidRecorder:
    """What happens to one Xid (pure apart from the file): added to the record at ``path``, one event logged."""

    def __init__(self, path: str, events: Callable[[dict[str, Any]], None], clock: Callable[[], float] = time.time):
        self.path, self.events, self.clock = path, events, clock

    def __call__(self, uuid: str, xid: int) -> None:
        at = self.clock()
        gpu_xid.write_record(self.path, gpu_xid.add(gpu_xid.read_record(self.path), uuid, xid, at))
        critical = xid in gpu_xid.CRITICAL
        event: dict[str, Any] = {"event": "gpu_xid", "gpu": uuid, "xid": int(xid), "critical": critical}
        if critical:
            event["meaning"] = gpu_xid.CRITICAL[xid]
        self.events(event)


class XidWatch(threading.Thread):
    """Registers every GPU for Xid events on one NVML event set and hands each Xid to ``record``."""

    def __init__(self, record: Callable[[str, int], None], events: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(name="gpufleet-xid-watch", daemon=True)
        self.record, self.events = record, events
        self.stop_event = threading.Event()
        self.watching: list[str] = []  # the UUIDs registered (once the set is ready)
        self.ready = threading.Event()

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        try:
            import pynvml  # nvidia-ml-py: a host requirement of gpu_facts already
        except ImportError:
            return self._give_up("nvidia-ml-py is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            return self._give_up(f"NVML did not initialise: {err}")
        try:
            self._watch(pynvml)
        except pynvml.NVMLError as err:  # the event set itself broke (not a timeout): say so, stop watching
            self.events({"event": "agent_error", "error": f"Xid watch: {err}"})
        finally:
            self.ready.set()
            pynvml.nvmlShutdown()

    def _give_up(self, why: str) -> None:
        self.events({"event": "xid_watch", "watching": [], "reason": f"{why}: Xid errors are not recorded"})
        self.ready.set()

    def _watch(self, nvml: Any) -> None:
        event_set = nvml.nvmlEventSetCreate()
        try:
            uuids: dict[int, str] = {}
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid = nvml.nvmlDeviceGetUUID(handle)
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                try:
                    nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, event_set)
                except nvml.NVMLError as err:
                    self.events({"event": "agent_error", "error": f"Xid watch: GPU {i} ({uuid}): {err}"})
                    continue
                uuids[_address(handle)] = uuid
            self.watching = sorted(uuids.values())
            self.events({"event": "xid_watch", "watching": self.watching})
            self.ready.set()
            while uuids and not self.stop_event.is_set():
                try:
                    data = nvml.nvmlEventSetWait(event_set, WAIT_MS)
                except nvml.NVMLError_Timeout:
                    continue
                if data.eventType & nvml.nvmlEventTypeXidCriticalError:
                    self.record(uuids.get(_address(data.device), "unknown"), int(data.eventData))
        finally:
            nvml.nvmlEventSetFree(event_set)


def _address(handle: Any) -> int:
    """A device handle as a number (the same GPU's handles compare equal by address, not as ctypes objects)."""
    import ctypes

    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)
