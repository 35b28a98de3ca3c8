"""The agent's replication decisions for ``drbd`` instances: a pure function.

Secondary side: keep an NBD export of the replicas of every instance this node is the
secondary of, and no other.  Primary side, for a running VM: start protection (the
mirror) when there is none, report the replica states from the mirror's phase, and
resync after the peer came back.  Never promotes anything: that takes a job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from haven.model.instance import Instance
from haven.model.replica import INCONSISTENT, OUTDATED, UP_TO_DATE, DiskReplica, Replicas

RepKind = Literal["export", "unexport", "protect", "resync", "report"]


@dataclass(frozen=True)
class Mirror:
    """One disk's mirror as the primary's QEMU reports it."""

    phase: Literal["syncing", "ready", "failed", "none"]
    percent: float = 0.0


@dataclass(frozen=True)
class RepView:
    node: str
    instances: dict[str, Instance]
    locked: frozenset[str]
    running: frozenset[str]  # VMs running (or paused) on this node
    exports: frozenset[str]  # instances this node exports replicas of
    mirrors: dict[str, dict[int, Mirror]]  # by instance, for VMs running here
    replicas: dict[str, Replicas]
    alive: frozenset[str]  # nodes holding a lease


@dataclass(frozen=True)
class RepAction:
    kind: RepKind
    name: str
    reason: str
    disks: tuple[int, ...] = ()
    states: dict[str, dict[int, DiskReplica]] = field(default_factory=dict)


def plan_replication(v: RepView) -> list[RepAction]:
    out: list[RepAction] = []
    for name, inst in sorted(v.instances.items()):
        if inst.disk_template != "drbd" or name in v.locked:
            continue
        snode = inst.secondary_nodes[0] if inst.secondary_nodes else ""
        if snode == v.node and name not in v.exports:
            out.append(RepAction("export", name, "this node is its secondary"))
        if inst.primary_node == v.node and name in v.running:
            out.extend(_primary(v, inst, snode))
    for name in sorted(v.exports):
        exported = v.instances.get(name)
        if name in v.locked:
            continue
        if exported is None or exported.disk_template != "drbd" or \
                v.node not in exported.secondary_nodes:
            out.append(RepAction("unexport", name, "this node is no longer its secondary"))
    return out


def _primary(v: RepView, inst: Instance, snode: str) -> list[RepAction]:
    name = inst.name
    n = len(inst.disks)
    mirrors = v.mirrors.get(name, {})
    missing = tuple(i for i in range(n) if mirrors.get(i, Mirror("none")).phase == "none")
    failed = tuple(i for i in range(n) if mirrors.get(i, Mirror("none")).phase == "failed")
    states = {v.node: {i: DiskReplica(UP_TO_DATE) for i in range(n)}}
    if snode:
        sec: dict[int, DiskReplica] = {}
        current = v.replicas.get(name)
        for i in range(n):
            m = mirrors.get(i, Mirror("none"))
            if m.phase == "ready":
                sec[i] = DiskReplica(UP_TO_DATE)
            elif m.phase == "syncing":
                sec[i] = DiskReplica(INCONSISTENT, round(m.percent, 1))
            elif m.phase == "failed":
                sec[i] = DiskReplica(OUTDATED, 0.0, message=f"{snode} stopped answering")
            else:
                # No mirror: whatever was true is kept, unless it claimed to be current.
                old = current.state(snode, i) if current else DiskReplica(INCONSISTENT, 0)
                sec[i] = old if old.state != UP_TO_DATE else DiskReplica(
                    OUTDATED, 0.0, message="no mirror from the primary")
        states[snode] = sec
    out: list[RepAction] = []
    # Report first: a peer that stopped answering is marked Outdated before anything
    # else is tried (a resync can take seconds).
    if _changed(v.replicas.get(name), inst.generation, states):
        out.append(RepAction("report", name, "replica states changed", states=states))
    if snode and snode in v.alive and missing:
        out.append(RepAction("protect", name, f"no mirror to {snode}", missing))
    if snode and snode in v.alive and failed:
        out.append(RepAction("resync", name, f"{snode} is back", failed))
    return out


def _changed(current: Replicas | None, generation: int,
             states: dict[str, dict[int, DiskReplica]]) -> bool:
    if current is None or current.generation != generation:
        return True
    for node, disks in states.items():
        for i, r in disks.items():
            old = current.state(node, i)
            if old.state != r.state:
                return True
            if r.state == INCONSISTENT and round(old.percent) != round(r.percent):
                return True
    return False
