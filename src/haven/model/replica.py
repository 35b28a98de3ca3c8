"""Replica states of a replicated (``drbd``) instance's disks (``replicas/<instance>``).

Per node and disk: ``UpToDate``, ``Inconsistent`` (initial sync or resync, with percent
done), ``Outdated`` (missed writes: the peer went away), ``Diskless``/``Unknown``.
``generation`` is the instance's generation the states were written at: a replica is
promoted (the instance started on it) only if it is ``UpToDate`` at the instance's
current generation.  Every write is a compare-and-swap, so marking a peer ``Outdated``
needs etcd quorum: a primary cut off from it cannot claim anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

UP_TO_DATE = "UpToDate"
INCONSISTENT = "Inconsistent"
OUTDATED = "Outdated"
DISKLESS = "Diskless"
UNKNOWN = "Unknown"


@dataclass(frozen=True)
class DiskReplica:
    state: str
    percent: float = 100.0
    updated: float = 0.0
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "percent": self.percent, "updated": self.updated,
                "message": self.message}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DiskReplica:
        return cls(str(d.get("state", UNKNOWN)), float(d.get("percent", 0.0)),
                   float(d.get("updated", 0.0)), str(d.get("message", "")))


@dataclass(frozen=True)
class Replicas:
    """``nodes[node][disk_index]``."""

    instance: str
    generation: int
    nodes: dict[str, dict[int, DiskReplica]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "generation": self.generation,
                "nodes": {n: {str(i): r.to_json() for i, r in disks.items()}
                          for n, disks in self.nodes.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Replicas:
        return cls(str(d["instance"]), int(d["generation"]),
                   {n: {int(i): DiskReplica.from_json(r) for i, r in disks.items()}
                    for n, disks in (d.get("nodes") or {}).items()})

    def state(self, node: str, disk: int) -> DiskReplica:
        return self.nodes.get(node, {}).get(disk, DiskReplica(UNKNOWN, 0.0))

    def node_up_to_date(self, node: str, disks: int, generation: int) -> bool:
        """Every disk of ``node`` is ``UpToDate`` at ``generation``."""
        return self.generation == generation and all(
            self.state(node, i).state == UP_TO_DATE for i in range(disks))

    def with_node(self, node: str, states: dict[int, DiskReplica]) -> Replicas:
        nodes = dict(self.nodes)
        nodes[node] = dict(states)
        return replace(self, nodes=nodes)

    def degraded(self, disks: int) -> list[str]:
        """One phrase per replica that is not ``UpToDate``."""
        out = []
        for node in sorted(self.nodes):
            for i in range(disks):
                r = self.state(node, i)
                if r.state != UP_TO_DATE:
                    pct = f" {r.percent:.0f}%" if r.state == INCONSISTENT else ""
                    out.append(f"disk/{i} on {node}: {r.state}{pct}")
        return out
