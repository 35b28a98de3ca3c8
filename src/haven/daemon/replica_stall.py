"""A hung replication peer, seen from the primary: a mirror that makes no progress with
writes pending, or a protected quorum disk whose peer's export no longer answers, is cut
off after ``STALL_SECONDS`` (its connection severed, the replica taken out), so that the
report marks the replica ``Outdated`` and the VM runs degraded.

These work on :class:`~haven.daemon.replication.NodeReplication`'s state: the mirrors
seen still, the peers not answering, the connections cut and the guests held frozen.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from haven.errors import HavenError
from haven.model.instance import Instance
from haven.store.errors import StoreError

if TYPE_CHECKING:
    from haven.daemon.replication import NodeReplication
    from haven.hypervisor.qemu.mirror_spec import MirrorState

log = logging.getLogger(__name__)

# A mirror that has writes pending and makes no progress for this long has a hung peer
# (a partition, a stopped storage daemon): QEMU's NBD client has no request timeout, so
# every guest write would wait for TCP to give up, ~15 min.  Its connection is cut and
# the VM runs degraded, as DRBD does after ``timeout`` x ``ko-count``.
STALL_SECONDS = 6.0


def unless_stalled(rep: NodeReplication, inst: Instance, m: MirrorState) -> MirrorState:
    """``m``, or a failed state once the mirror has stalled for ``STALL_SECONDS``
    and its connection was cut (so the report marks the replica Outdated)."""
    from haven.hypervisor.qemu import replication

    if m.slot == "replica" and m.phase == "ready":
        return unless_unanswered(rep, inst, m)
    name, now = inst.name, time.monotonic()
    since = rep._still.get((name, m.disk))
    if since is None or not replication.stalled(since[1], m):
        rep._still[(name, m.disk)] = (now, m)
        return m
    if now - since[0] < STALL_SECONDS:
        return m
    del rep._still[(name, m.disk)]
    try:
        sever(rep, inst, m.disk)
    except HavenError as exc:
        log.warning("cutting the hung replica connection of %s: %s", name, exc.message)
        return m
    rep._severed.add((name, m.disk))
    msg = (f"disk/{m.disk}: its secondary made no progress for {STALL_SECONDS:g} s with "
           "writes pending; replication connection cut")
    log.warning("%s %s", name, msg)
    rep.d.instances.emit("replica-hung", inst, msg, "warning")
    return replace(m, phase="failed")


def unless_unanswered(rep: NodeReplication, inst: Instance, m: MirrorState
                      ) -> MirrorState:
    """For a protected quorum disk: a hung peer (stopped, or cut off without a reset)
    blocks every guest write, and nothing in QEMU says so.  When the disk has
    completed no I/O for a second, ask the export (an NBD greeting, 1 s); once it
    has not answered for ``STALL_SECONDS`` the connection is cut, the replica taken
    out and the guest paused until the peer is ``Outdated`` (DRBD's ping timeout)."""
    from haven.hypervisor.qemu import replication

    key, now = (inst.name, m.disk), time.monotonic()
    if m.idle_s < 1.0:
        rep._unanswered.pop(key, None)
        return m
    try:
        replication.probe(rep.targets(inst)[m.disk], timeout=1.0)
    except (HavenError, StoreError, KeyError):
        first = rep._unanswered.setdefault(key, now)
        if now - first < STALL_SECONDS:
            return m
    else:
        rep._unanswered.pop(key, None)
        return m
    del rep._unanswered[key]
    if sever(rep, inst, m.disk) is False:
        return m
    rep._frozen[inst.name] = now
    msg = (f"disk/{m.disk}: its secondary did not answer for {STALL_SECONDS:g} s while "
           "the disk was blocked or idle; replication connection cut, guest paused "
           "until the replica is recorded Outdated")
    log.warning("%s %s", inst.name, msg)
    rep.d.instances.emit("replica-hung", inst, msg, "warning")
    return replace(m, phase="failed")


def sever(rep: NodeReplication, inst: Instance, disk: int) -> bool | None:
    """``replication.sever``; None when QEMU's monitor did not answer in time.

    The monitor is slow when QEMU's main loop drains writes stuck on the hung peer
    (the ``stop`` of a quorum disk's degrade waits for them): the pause it was sent
    then still lands, later, with nobody left to undo it.  The guest is therefore
    held frozen like any cut replica, so :meth:`NodeReplication.release_frozen` resumes
    it once the peer is recorded ``Outdated`` (found by the fault campaign: a guest
    left paused for good after its peer came back from a partition)."""
    from haven.hypervisor.qemu import replication
    from haven.hypervisor.qemu.qmp import QmpTimeout

    try:
        return replication.sever(rep.qmp_path(inst.name), disk)
    except QmpTimeout as exc:
        rep._frozen[inst.name] = time.monotonic()
        log.warning("%s: cutting the replica of disk %d: %s; the guest is held frozen "
                    "until its peer is recorded Outdated", inst.name, disk, exc.message)
        return None
