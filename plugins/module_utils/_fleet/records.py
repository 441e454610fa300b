# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What ``fleet_apply`` reports per removal and per replica: one type, built by ``apply.py`` on the host and read by
``summary.py`` on the controller. Between the two they travel as the module result's ``records`` (plain dicts:
``to_dict()`` there, ``from_dict()`` back), so the shape is written once here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

REPLICA = "replica"
REMOVE = "remove"


@dataclass
class RemovalRecord:
    """One managed container the plan removes from the host."""

    name: str
    changed: bool = False
    failed: bool = False
    failure_class: str | None = None
    hint: str | None = None
    actions: list[str] = field(default_factory=list)  # the gateway drain before the stop (drain.py)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": REMOVE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RemovalRecord:
        return cls(
            name=str(data.get("name")),
            changed=bool(data.get("changed")),
            failed=bool(data.get("failed")),
            failure_class=data.get("failure_class"),
            hint=data.get("hint"),
            actions=list(data.get("actions") or []),
        )


@dataclass
class ReplicaRecord:
    """One replica the plan runs on the host: what its steps did, and the first failure (step, class, hint)."""

    name: str
    deployment: str | None = None
    changed: bool = False
    failed: bool = False
    failure_class: str | None = None
    failed_step: str | None = None  # preflight, model_sync, vllm_image or vllm_container
    hint: str | None = None
    rolled_back: bool | None = None
    phase: str | None = None
    endpoint: str | None = None
    actions: list[str] = field(default_factory=list)
    model_source: str | None = None  # which of the model's sources served (a model with sources only)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": REPLICA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplicaRecord:
        return cls(
            name=str(data.get("name")),
            deployment=data.get("deployment"),
            changed=bool(data.get("changed")),
            failed=bool(data.get("failed")),
            failure_class=data.get("failure_class"),
            failed_step=data.get("failed_step"),
            hint=data.get("hint"),
            rolled_back=data.get("rolled_back"),
            phase=data.get("phase"),
            endpoint=data.get("endpoint"),
            actions=list(data.get("actions") or []),
            model_source=data.get("model_source"),
        )


def from_dict(data: Any) -> ReplicaRecord | RemovalRecord | None:
    """A record from a module result (``kind`` defaults to replica); None for anything without a name."""
    if not isinstance(data, Mapping) or data.get("name") is None:
        return None
    return RemovalRecord.from_dict(data) if data.get("kind") == REMOVE else ReplicaRecord.from_dict(data)


def by_key(records: Iterable[Any]) -> dict[tuple[str, str], ReplicaRecord | RemovalRecord]:
    """Records keyed by ``(kind, name)`` (the last one wins, as a host reports each once)."""
    out: dict[tuple[str, str], ReplicaRecord | RemovalRecord] = {}
    for data in records or []:
        rec = from_dict(data)
        if rec is not None:
            out[(REMOVE if isinstance(rec, RemovalRecord) else REPLICA, rec.name)] = rec
    return out
