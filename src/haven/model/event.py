"""Events (``events/<time_ns>-<node>``): every state change, with time, object, message."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from haven.model.keys import EVENTS


@dataclass(frozen=True)
class Event:
    ts: float
    kind: str  # created, started, stopped, crashed, restarted, gave-up, removed, ...
    object: str  # "instance/vm1", "node/node02", "cluster"
    node: str
    message: str
    severity: str = "info"  # info, warning, error

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        return cls(**{k: data[k] for k in ("ts", "kind", "object", "node", "message")},
                   severity=str(data.get("severity", "info")))

    def key(self) -> str:
        # Time-ordered and unique per node: listing the prefix gives the history.
        return f"{EVENTS}{int(self.ts * 1e9):020d}-{self.node}"

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def new(kind: str, obj: str, node: str, message: str, severity: str = "info") -> Event:
    return Event(time.time(), kind, obj, node, message, severity)
