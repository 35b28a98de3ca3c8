"""The primary side of replication: QEMU mirrors a running VM's disk into an NBD export.

For disk ``i`` of a VM started by the driver (format node ``disk<i>``) this keeps::

    repl<i>          an ``nbd`` block node connected to the peer's export (:mod:`.exports`)
    mirror<i>        a ``blockdev-mirror`` job disk<i> -> repl<i>, ``copy-mode:
                     write-blocking``, ``on-target-error: stop``, never auto-dismissed
    repl<i>-dirty    a dirty bitmap on disk<i> (persistent on qcow2): every write since
                     protection started or the last :func:`checkpoint`
    resync<i>        a ``blockdev-backup`` job, only during a bitmap resync
    repl<i>-tls      TLS-PSK client credentials, when the export requires them

(their names, QMP arguments and the decisions read from QEMU's answers are in
:mod:`.mirror_spec`, the primitives that read and end them in :mod:`.blockjobs`, the
resync, promote and refresh of a replica in :mod:`.resync`, all re-exported here).  A
``drbd`` disk is started as a quorum (:mod:`.quorum`): the mirror and backup jobs only
copy, and the replica then takes the quorum's slot.

The contract of a disk without a quorum, replicated by the mirror alone (QEMU 7.2,
measured by tests/integration/test_replication.py): once the mirror is ``ready`` every
acknowledged guest write is on both sides. When the peer fails, the job pauses within
~10-60 ms (``BLOCK_JOB_ERROR action=stop``) while the guest keeps running on the local
copy; what the peer missed is in the job's own bitmap (lost with the QEMU process) and
in ``repl<i>-dirty``. Writes acknowledged between the failure and the caller's reaction
(:func:`watch_errors`, then :func:`freeze` until the store says ``Outdated``) are on the
primary only. Guest flushes are not forwarded to the
replica: its durability comes from the export's ``writethrough`` (see :mod:`.exports`).
``on-target-error: stop`` matters beyond keeping the job's bitmap: a job that *ends*
with guest writes in flight makes QEMU (7.2, 10.0.2) write into freed memory, so a job
is only ever ended on error by :func:`_force_cancel`, with the guest paused.
A quorum disk has no such window: the write that fails on the peer stops the guest
before it is acknowledged (tests/integration/test_quorum_replication.py).

The caller records replica states in the store; nothing here decides that a replica is
up to date.  Every call is a few short QMP exchanges on the monitor path given (QEMU
serves one client at a time), except :func:`watch_errors`, which holds it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from haven.hypervisor.base import HypervisorError
from haven.hypervisor.qemu import quorum
from haven.hypervisor.qemu.blockjobs import (
    POLL,
    Qmp,
    _bitmap,
    _connect,
    _end_job,
    _job,
    _new_bitmap,
    _nodes,
    _slot,
    _source,
    checkpoint,
    freeze,
    has_bitmap,
    peer_connected,
    probe,
    status,
    thaw,
    wait_ready,
)
from haven.hypervisor.qemu.mirror_spec import (
    BITMAP,
    BITMAP_GRANULARITY,
    JOB,
    NODE,
    RESYNC_JOB,
    TLS,
    MirrorState,
    NbdTarget,
    Phase,
    ResyncMode,
    ResyncResult,
    backup_args,
    bitmap_args,
    choose_mode,
    disk_of_job,
    mirror_args,
    nbd_node_args,
    phase_of,
    stalled,
    target_of,
    tls_object_args,
)
from haven.hypervisor.qemu.qmp import (
    QmpCommandError,
    QmpSession,
    QmpTimeout,
    qmp_call,
    qmp_session,
)
from haven.hypervisor.qemu.resync import PASS_LIMIT, RESUME_EVERY, promote, refresh, resync

# The names of mirror_spec are part of this module's interface, as before the split;
# so are those of resync (split from here later) and the public ones of blockjobs.
__all__ = [
    "BITMAP",
    "BITMAP_GRANULARITY",
    "JOB",
    "NODE",
    "PASS_LIMIT",
    "POLL",
    "RESUME_EVERY",
    "RESYNC_JOB",
    "TLS",
    "MirrorState",
    "NbdTarget",
    "Phase",
    "Qmp",
    "ResyncMode",
    "ResyncResult",
    "backup_args",
    "bitmap_args",
    "checkpoint",
    "choose_mode",
    "disk_of_job",
    "freeze",
    "hand_over",
    "has_bitmap",
    "mirror_args",
    "nbd_node_args",
    "peer_connected",
    "phase_of",
    "probe",
    "promote",
    "protect",
    "refresh",
    "resync",
    "sever",
    "stalled",
    "status",
    "target_of",
    "thaw",
    "tls_object_args",
    "unprotect",
    "wait_ready",
    "watch_errors",
]

log = logging.getLogger(__name__)


# -- observing ----------------------------------------------------------------------------

def watch_errors(qmp: Qmp, timeout: float, frozen: list[bool] | None = None,
                 freeze_if: Callable[[], bool] | None = None) -> list[int]:
    """Block until a replication job reports ``BLOCK_JOB_ERROR``, or a quorum disk's
    device stops the guest on a write error (``BLOCK_IO_ERROR``), or ``timeout``
    passes; the disks that reported one ([] on timeout), a few ms after the event.  It
    holds the monitor for the whole wait, so give it one nobody else needs; an error
    raised while nobody watches is still seen by :func:`status`.

    With ``frozen`` (a list), the guest is paused in the same session right after the
    event (``stop``: a millisecond, no new connection), if ``freeze_if()`` (asked then)
    allows it, and ``frozen`` gets True if this call paused it: writes the peer missed
    are not acknowledged from then on.  A quorum disk needs no freeze (QEMU stopped the
    guest before acknowledging anything): its failed replica is taken out of the slot
    (:func:`.quorum.degrade`) and ``frozen`` gets True, since the guest must stay
    paused until the peer is recorded ``Outdated``.  A quorum write that failed on the
    *local* image is not the peer's fault: the guest stays stopped on it, nothing is
    changed, and the disk is not reported."""
    def ours(ev: dict[str, Any]) -> bool:
        data = ev.get("data", {})
        if ev.get("event") == "BLOCK_IO_ERROR":
            return quorum.disk_of(str(data.get("node-name", ""))) is not None
        return disk_of_job(str(data.get("device"))) is not None

    with qmp_session(qmp, timeout=min(timeout, 5.0)) as session:
        try:
            first = session.wait_event(("BLOCK_JOB_ERROR", "BLOCK_IO_ERROR"), timeout,
                                       match=ours)
        except QmpTimeout:
            return []
        if first["event"] == "BLOCK_IO_ERROR":
            return _quorum_failed(session, first, frozen)
        events = [first]
        if frozen is not None and (freeze_if is None or freeze_if()):
            running = session.execute("query-status").get("status") == "running"
            if running:
                session.execute("stop")
            frozen.append(running)
        events += [ev for ev in session.events() if ev.get("event") == "BLOCK_JOB_ERROR"]
    return sorted({d for ev in events
                   if (d := disk_of_job(str(ev.get("data", {}).get("device")))) is not None})


def _quorum_failed(s: QmpSession, first: dict[str, Any], frozen: list[bool] | None
                   ) -> list[int]:
    """:func:`watch_errors` after a quorum disk's write error stopped the guest."""
    time.sleep(0.005)  # the events of the same failure arrive within a ms or two
    events = [first, *s.events()]
    disks = {d for ev in events if ev.get("event") == "BLOCK_IO_ERROR"
             and (d := quorum.disk_of(str(ev.get("data", {}).get("node-name", "")))) is not None}
    # QUORUM_REPORT_BAD names the child that failed: the local image is disk<i>.
    local = {int(node[4:]) for ev in events if ev.get("event") == "QUORUM_REPORT_BAD"
             and (node := str(ev.get("data", {}).get("node-name", ""))).startswith("disk")
             and node[4:].isdigit()}
    for d in sorted(local & disks):
        log.error("Disk %d of %s: an I/O failed on the local image; the guest stays "
                  "stopped on the error (check the node's storage)", d, s.path)
    degraded = [d for d in sorted(disks - local) if quorum.degrade(s, d)]
    if degraded and frozen is not None:
        frozen.append(True)
    if degraded:
        log.warning("Disk(s) %s of %s: a write failed on the replica; replica taken out, "
                    "guest paused until its peer is recorded Outdated", degraded, s.path)
    return degraded


def sever(qmp: Qmp, disk: int) -> bool:
    """Cut the replica connection of ``disk`` (QMP ``yank``) when its peer hangs (see
    :func:`stalled`): the blocked writes fail on the replica side, the job fails, the
    guest continues.  The connection never comes back, so resync with
    ``resume_timeout=0``.  False if there is no such connection.

    A quorum disk with the replica in its slot is degraded instead
    (:func:`.quorum.degrade`): the guest is left *paused*, for the caller to resume
    once the peer is recorded ``Outdated``."""
    with qmp_session(qmp) as s:
        if quorum.degrade(s, disk):
            log.warning("Disk %d of %s: replica connection severed, guest paused", disk, qmp)
            return True
    try:
        qmp_call(qmp, "yank", {"instances": [{"type": "block-node",
                                              "node-name": NODE.format(disk)}]})
    except QmpCommandError:
        return False
    log.warning("Disk %d of %s: replica connection severed", disk, qmp)
    return True


# -- protecting ---------------------------------------------------------------------------

def protect(qmp: Qmp, disk: int, target: NbdTarget, bitmap: bool = True) -> None:
    """Start mirroring ``disk`` into ``target`` with a full initial sync; returns once
    the job exists (see :func:`wait_ready`, :func:`status`).

    Once it is ready every acknowledged guest write is on both sides; then call
    :func:`checkpoint` and record the replica up to date.  ``bitmap``: add the resync
    bitmap first unless it exists, so that :func:`resync` can copy only what changed.
    Idempotent: a mirror of ``disk`` into the same target (even a failed one, for
    :func:`resync`) is left alone; one into another target is an error.
    """
    nodes = _nodes(qmp)
    job = _job(qmp, JOB.format(disk))
    slot = _slot(qmp, disk)
    if (job is not None and phase_of(job) != "none") or slot == "replica":
        if target_of(nodes.get(NODE.format(disk))) == (target.host, target.port,
                                                       target.export):
            return
        raise HypervisorError(f"Disk {disk} of {qmp} is already replicated to another "
                              "target; resync or unprotect it first.")
    if f"disk{disk}" not in nodes:
        raise HypervisorError(f"The VM of {qmp} has no disk {disk} (block node disk{disk}).")
    _end_job(qmp, JOB.format(disk))  # a concluded leftover
    _connect(qmp, disk, target)
    with qmp_session(qmp) as s:
        if bitmap and _bitmap(nodes, disk) is None:
            _new_bitmap(s, nodes, disk)
        s.execute("blockdev-mirror", mirror_args(disk, "full", _source(slot, disk)))
    log.info("Disk %d of %s: mirroring to %s:%d/%s", disk, qmp, target.host, target.port,
             target.export)


# -- ending -------------------------------------------------------------------------------

def unprotect(qmp: Qmp, disk: int, keep_bitmap: bool = False) -> bool:
    """Stop replicating ``disk``; idempotent.  A ready mirror is cancelled gracefully,
    which completes it in sync without a pivot: True means the replica equals the disk
    as of now.  A failed or syncing one is force-cancelled (False).  The nbd node (and
    its connection) and, unless ``keep_bitmap``, the resync bitmap are removed."""
    state = status(qmp, [disk])[disk]
    in_sync = False
    if state.job_id and state.job_id != quorum.QUORUM.format(disk):
        in_sync = _end_job(qmp, state.job_id, graceful=state.phase == "ready")
        in_sync = in_sync and state.phase == "ready"
    with qmp_session(qmp) as s:
        if state.slot:
            with quorum.paused(s):
                in_sync = in_sync or (state.slot == "replica" and state.phase == "ready")
                quorum.set_slot(s, disk, "unprotected")
        quorum.drop_connection(s, disk)
        if not keep_bitmap:
            with contextlib.suppress(QmpCommandError):  # already gone
                s.execute("block-dirty-bitmap-remove",
                          {"node": f"disk{disk}", "name": BITMAP.format(disk)})
    log.info("Disk %d of %s: replication stopped (%s)", disk, qmp,
             "in sync" if in_sync else "not in sync")
    return in_sync


def hand_over(qmp: Qmp, disks: Iterable[int], timeout: float = 10.0) -> None:
    """End the ready mirrors of ``disks`` in sync, in one monitor session: the step of a
    migration's pre-switchover, where every ms is guest pause (a graceful cancel of a
    ready mirror completes it without a pivot).  The nbd nodes go, the resync bitmaps
    stay (for a migration that fails after this).  Raises :class:`HypervisorError`
    naming the disks whose mirror was not ready or did not end in sync; disks already
    ended stay ended (the caller exports and resyncs again).

    One session with event waits instead of :func:`unprotect` per disk (fresh monitor
    connections and 5 ms polls): measured 16-25 ms for one disk that way."""
    disks = tuple(disks)
    with qmp_session(qmp, timeout=timeout) as s:
        jobs = {str(j.get("device")): j for j in s.execute("query-block-jobs")}
        slots = quorum.slots(s)
        failed = quorum.io_failed(s) if slots else set()
        # A quorum disk with the replica in its slot is in sync (and has no job).
        held = [d for d in disks if JOB.format(d) not in jobs
                and d in slots and slots[d][0] == "replica" and d not in failed]
        lagging = [d for d in disks if d not in held
                   and phase_of(jobs.get(JOB.format(d), {})) != "ready"]
        if lagging:
            raise HypervisorError(f"The replica of disk(s) {lagging} is not in sync; resync "
                                  "it first.")
        for d in held:  # the guest is paused (pre-switchover): nothing is in flight
            quorum.set_slot(s, d, "unprotected")
            quorum.drop_connection(s, d)
        mirrored = [d for d in disks if d not in held]
        for d in mirrored:
            s.execute("block-job-cancel", {"device": JOB.format(d), "force": False})
        not_in_sync = []
        for d in mirrored:
            jid = JOB.format(d)

            def of_job(ev: dict[str, Any], jid: str = jid) -> bool:
                return bool(ev["data"].get("device") == jid)

            ev = s.wait_event(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), timeout,
                              match=of_job)
            if ev["event"] != "BLOCK_JOB_COMPLETED" or ev["data"].get("error"):
                not_in_sync.append(d)
            with contextlib.suppress(QmpCommandError):  # already gone
                s.execute("job-dismiss", {"id": jid})
            quorum.drop_connection(s, d)
    if not_in_sync:
        raise HypervisorError(f"The mirror of disk(s) {not_in_sync} was not in sync when it "
                              "ended; export and resync it.")
