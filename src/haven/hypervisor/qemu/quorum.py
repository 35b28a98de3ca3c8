"""The steady state of a replicated disk: a QEMU ``quorum`` node of the local image and
the replica, so that a guest write completes only when both have it, and a write that
fails on either side fails for the guest, which QEMU pauses (``werror=stop``) before
anything is acknowledged.

Why not the ``write-blocking`` mirror alone: when a mirror's write to the peer fails,
QEMU still completes the guest's write (block/mirror.c only reports a target error to
the job), so a guest could be told "written" for a block the replica never got, and a
failover to the replica then lost it.  A fault campaign found exactly that (a frozen
primary whose peer's storage daemon died meanwhile).  With quorum's ``vote-threshold``
2 there is no such write: measured, 5 of 5 peer kills ended with ``BLOCK_IO_ERROR
action=stop`` 2-7 ms later and every acknowledged write on the replica
(``notes/storage-browser-guest-recipes.md``).

A replicated disk ``i`` is started as (see :func:`.cmdline.disk_args`)::

    vblk<i> (werror=stop) -> q<i> quorum(vote-threshold 2, read-pattern fifo)
                               children: disk<i> (the local image), <slot>

and the second child, the *slot*, says the replication state:

    null<i>   a placeholder (:func:`.cmdline.placeholder_args`): not protected (just started, or
              unprotected)
    repl<i>   the ``nbd`` connection to the peer's export: protected, every acknowledged
              write is on both nodes
    lost<i>   a placeholder put in place of a failed ``repl<i>``: the peer missed writes
              from here on; they are recorded in the resync bitmap

Reads go to ``disk<i>`` first (``fifo``); one that fails there is read from the
replica when it is in the slot (as DRBD reads from its peer), and fails for the guest
otherwise.  The initial sync and every resync still copy
with a mirror or backup job into ``repl<i>`` while the slot holds a placeholder; the
connection becomes the slot with the guest paused, once the copy is complete
(:func:`promote`, or the last pass of a bitmap resync).

The cost, measured: a synced 4 KiB write takes about twice as long as with the mirror
(quorum flushes its children one after the other); large writes are no slower.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Collection, Iterator
from typing import Any, Literal

from haven.hypervisor.base import HypervisorError
from haven.hypervisor.qemu.cmdline import placeholder_args
from haven.hypervisor.qemu.mirror_spec import NODE as REPLICA
from haven.hypervisor.qemu.mirror_spec import (
    TLS,
    MirrorState,
    NbdTarget,
    Phase,
    nbd_node_args,
    parse_block_jobs,
    tls_object_args,
)
from haven.hypervisor.qemu.qmp import QmpCommandError, QmpSession

log = logging.getLogger(__name__)

QUORUM, UNPROTECTED, LOST = "q{}", "null{}", "lost{}"  # REPLICA: the mirror's target
Slot = Literal["replica", "unprotected", "lost"]
_SLOT_NODE: dict[Slot, str] = {"replica": REPLICA, "unprotected": UNPROTECTED, "lost": LOST}


def slot_of(disk: int, child: str) -> Slot | None:
    """The slot state a second child's node name stands for (pure)."""
    for slot, template in _SLOT_NODE.items():
        if child == template.format(disk):
            return slot
    return None


def slots(s: QmpSession) -> dict[int, tuple[Slot, str]]:
    """Every quorum disk of the VM: disk -> (its slot state, the slot's child name in
    the quorum, such as ``children.2``), from the block graph (one command, ~1 ms)."""
    graph = s.execute("x-debug-query-block-graph")
    return parse_slots(graph)


def parse_slots(graph: Any) -> dict[int, tuple[Slot, str]]:
    """:func:`slots` from an ``x-debug-query-block-graph`` answer (pure)."""
    if not isinstance(graph, dict):
        return {}
    names = {n.get("id"): str(n.get("name", "")) for n in graph.get("nodes", ())
             if isinstance(n, dict)}
    found: dict[int, tuple[Slot, str]] = {}
    for edge in graph.get("edges", ()):
        if not isinstance(edge, dict):
            continue
        parent, child = names.get(edge.get("parent"), ""), names.get(edge.get("child"), "")
        disk = disk_of(parent)
        slot = slot_of(disk, child) if disk is not None else None
        if disk is not None and slot is not None:
            found[disk] = (slot, str(edge.get("name", "")))
    return found


def states(slots_found: dict[int, tuple[Slot, str]], jobs: Any, failed: Collection[int] = (),
           idle: dict[int, float] | None = None) -> dict[int, MirrorState]:
    """The replication state of each disk with a quorum or a job (pure).  A quorum disk
    is ``ready`` while the replica is in its slot and its device has not stopped on an
    I/O error, ``failed`` once the replica was lost, ``none`` while unprotected; a job
    on it (a sync under way) says more and wins."""
    found: dict[int, MirrorState] = {}
    for i, (slot, _) in slots_found.items():
        phase: Phase = ("failed" if slot == "lost" or (slot == "replica" and i in failed)
                        else "ready" if slot == "replica" else "none")
        found[i] = MirrorState(i, QUORUM.format(i) if phase != "none" else "", phase,
                               io_status="failed" if i in failed else "ok", slot=slot,
                               idle_s=(idle or {}).get(i, 0.0))
    for i, m in parse_block_jobs(jobs).items():
        if m.phase != "none" or i not in found:
            found[i] = dataclasses.replace(m, slot=found[i].slot) if i in found else m
    return found


def io_failed(s: QmpSession) -> set[int]:
    """The quorum disks whose device stopped the guest on an I/O error (``query-block``
    io-status ``failed`` while the guest is in ``io-error``): a write failed on a child
    and nothing after it was acknowledged.  (QEMU 10 keeps a device's ``failed`` after
    ``cont``, so the status alone does not say the guest is stopped on it.)"""
    if s.execute("query-status").get("status") != "io-error":
        return set()
    failed = set()
    for dev in s.execute("query-block"):
        disk = disk_of(str(dev.get("inserted", {}).get("node-name", "")))
        if disk is not None and dev.get("io-status") == "failed":
            failed.add(disk)
    return failed


def _size(s: QmpSession, disk: int) -> int:
    for node in s.execute("query-named-block-nodes", {"flat": True}):
        if node.get("node-name") == f"disk{disk}":
            return int(node["image"]["virtual-size"])
    raise HypervisorError(f"Disk {disk} has no block node disk{disk}; is it replicated?")


def set_slot(s: QmpSession, disk: int, to: Slot) -> Slot | None:
    """Put ``to`` into disk ``disk``'s slot; the slot state it replaced (None if it
    already held it).  The guest must be paused (or stopped on an I/O error): nothing
    may be in flight while the children change.  ``replica`` needs ``repl<i>``
    connected; placeholders are made here, and a placeholder taken out is deleted.  A
    connection taken out stays, for the caller to drop.

    Quorum refuses fewer children than its threshold, so the new child is added
    first and the old one removed after (measured 20 ms with an nbd connection)."""
    current = slots(s).get(disk)
    if current is None:
        raise HypervisorError(f"Disk {disk} has no quorum node q{disk}; it was not "
                              "started as a replicated disk.")
    old, child = current
    if old == to:
        return None
    node = _SLOT_NODE[to].format(disk)
    if to != "replica":
        with contextlib.suppress(QmpCommandError):  # a leftover of an interrupted swap
            s.execute("blockdev-del", {"node-name": node})
        s.execute("blockdev-add", placeholder_args(node, _size(s, disk)))
    s.execute("x-blockdev-change", {"parent": QUORUM.format(disk), "node": node})
    s.execute("x-blockdev-change", {"parent": QUORUM.format(disk), "child": child})
    if old != "replica":
        with contextlib.suppress(QmpCommandError):
            s.execute("blockdev-del", {"node-name": _SLOT_NODE[old].format(disk)})
    log.info("Disk %d: replication slot %s -> %s", disk, old, to)
    return old


@contextlib.contextmanager
def paused(s: QmpSession) -> Iterator[bool]:
    """The guest paused for the block (``stop`` drains its I/O); resumed after it
    unless it was not running before (a guest stopped on an I/O error, or paused by
    its owner, stays so).  Yields whether it was running."""
    was_running = s.execute("query-status").get("status") == "running"
    if was_running:
        s.execute("stop")
    try:
        yield was_running
    finally:
        if was_running:
            s.execute("cont")


def yank(s: QmpSession, disk: int) -> bool:
    """Cut ``repl<i>``'s connection at once (QMP ``yank``): writes waiting on a hung
    peer fail, which fails them for the guest (paused by ``werror=stop``).  False if
    there is no connection to cut."""
    try:
        s.execute("yank", {"instances": [{"type": "block-node",
                                          "node-name": REPLICA.format(disk)}]})
    except QmpCommandError:
        return False
    return True


def drop_connection(s: QmpSession, disk: int) -> None:
    """Remove ``repl<i>`` (closing its connection) and its TLS object, if there and not
    in use (a connection in the slot is taken out by :func:`set_slot` first)."""
    for cmd, args in (("blockdev-del", {"node-name": REPLICA.format(disk)}),
                      ("object-del", {"id": TLS.format(disk)})):
        with contextlib.suppress(QmpCommandError):  # not there: fine
            s.execute(cmd, args)


def add_connection(s: QmpSession, disk: int, target: NbdTarget) -> None:
    """Create ``repl<i>`` (and its TLS object) connected to ``target``, replacing a
    connection that is not in use.  Probe the export first (``replication.probe``):
    QEMU connects in its main loop, and an unreachable host would freeze the VM."""
    drop_connection(s, disk)
    try:
        if target.psk_dir is not None:
            s.execute("object-add", tls_object_args(disk, target))
        s.execute("blockdev-add", nbd_node_args(disk, target))
    except QmpCommandError as exc:
        raise HypervisorError(f"Cannot connect disk {disk} to its replica {target.export} at "
                              f"{target.host}:{target.port}: {exc}") from exc


def degrade(s: QmpSession, disk: int) -> bool:
    """Take a failed or hung replica out of disk ``disk``'s slot: its connection is cut
    (writes waiting on a hung peer fail, and the guest stops on them), the guest is
    paused if it still runs, ``lost<i>`` takes the slot and the connection is dropped.
    The guest is left paused: the caller resumes it once the peer is recorded
    ``Outdated``, because from now on its writes reach only this node.  True if the
    slot held the replica (False: nothing to do)."""
    current = slots(s).get(disk)
    if current is None or current[0] != "replica":
        return False
    yank(s, disk)
    if s.execute("query-status").get("status") == "running":
        s.execute("stop")
    set_slot(s, disk, "lost")
    drop_connection(s, disk)
    return True


def disk_of(node: str) -> int | None:
    """The disk of a quorum node name (``q3`` -> 3), else None."""
    return int(node[1:]) if node.startswith("q") and node[1:].isdigit() else None
