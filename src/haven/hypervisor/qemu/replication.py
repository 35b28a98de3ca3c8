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
:mod:`.mirror_spec`, the primitives that read and end them in :mod:`.blockjobs`, both
re-exported here).  A ``drbd`` disk is started as a quorum (:mod:`.quorum`): the mirror
and backup jobs only copy, and the replica then takes the quorum's slot.

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
    checkpoint,
    freeze,
    has_bitmap,
    peer_connected,
    probe,
    status,
    thaw,
    wait_ready,
)
from haven.hypervisor.qemu.blockjobs import _bitmap as _bitmap
from haven.hypervisor.qemu.blockjobs import _connect as _connect
from haven.hypervisor.qemu.blockjobs import _end_job as _end_job
from haven.hypervisor.qemu.blockjobs import _job as _job
from haven.hypervisor.qemu.blockjobs import _new_bitmap as _new_bitmap
from haven.hypervisor.qemu.blockjobs import _nodes as _nodes
from haven.hypervisor.qemu.blockjobs import _paused as _paused
from haven.hypervisor.qemu.blockjobs import _slot as _slot
from haven.hypervisor.qemu.blockjobs import _source as _source
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

# The names of mirror_spec are part of this module's interface, as before the split.
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

RESUME_EVERY = 0.25  # R1: each resume makes the NBD client retry its lazy reconnect
PASS_LIMIT = 1 << 20  # R2: another live pass while more than this is dirty (max 3)


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


# -- a connection lost without a write ---------------------------------------------------



def refresh(qmp: Qmp, targets: dict[int, NbdTarget], pid: int | None,
            timeout: float = 60.0) -> list[int]:
    """Make sure the ready mirrors of ``targets`` (disk -> its replica's export) write
    through a live connection; the disks whose connection had to be made again.

    Why: a secondary whose storage daemon was restarted (its node killed and started
    again) while the guest wrote nothing leaves the primary's mirror ``ready`` on a dead
    NBD connection.  The first request QEMU's NBD client then gets finds it dead: a
    guest write fails the job (and the agent resyncs), but a migration's completion
    first flushes every node, that flush fails with EIO and QEMU fails the migration
    ("Error in migration completion: Input/output error"), again at the next try.  Even
    a graceful end of such a mirror fails (its final flush does), so a dead connection
    is replaced the way a lost peer is resynced: the mirror is dropped with the guest
    paused, a new connection made, and the resync bitmap -- every write since the last
    :func:`checkpoint`, a superset of what the replica could lack, since the mirror was
    ``ready`` -- copied before a ``sync: none`` mirror takes over (:func:`resync`'s
    ``bitmap`` mode; two pauses of a few ms).  Connections found established
    (:func:`peer_connected`) are left alone: no pause at all in the usual case.

    A quorum disk (:mod:`.quorum`) with the replica in its slot is reconnected in place
    with the guest paused: every write it acknowledged is on the replica, and a paused
    guest writes nothing meanwhile, so nothing needs copying.

    Raises :class:`HypervisorError` when a mirror is not ``ready`` (or has no resync
    bitmap) -- nothing is changed then -- or the export does not answer."""
    stale = {d: t for d, t in sorted(targets.items())
             if pid is None or not peer_connected(pid, t.port)}
    if not stale:
        return []
    nodes = _nodes(qmp)
    states = status(qmp, stale)
    held = {d: t for d, t in stale.items() if states[d].slot == "replica"
            and states[d].phase == "ready" and states[d].job_id != JOB.format(d)}
    for target in held.values():
        probe(target)
    if held:
        with qmp_session(qmp) as s, quorum.paused(s):
            for d, target in held.items():
                log.warning("Disk %d of %s: the replica connection is dead; reconnecting "
                            "with the guest paused", d, qmp)
                quorum.set_slot(s, d, "lost")
                quorum.add_connection(s, d, target)
                quorum.set_slot(s, d, "replica")
    stale = {d: t for d, t in stale.items() if d not in held}
    for d, target in stale.items():
        job = _job(qmp, JOB.format(d))
        if job is None or phase_of(job) != "ready" or _bitmap(nodes, d) is None:
            raise HypervisorError(f"The replica of disk {d} ({qmp}) is not in sync; "
                                  "resync it first.")
        probe(target)  # before dropping anything: the export must answer
    for d, target in stale.items():
        log.warning("Disk %d of %s: the replica connection is dead although the mirror "
                    "is ready (its storage daemon restarted while the guest wrote "
                    "nothing); reconnecting", d, qmp)
        _end_job(qmp, JOB.format(d))  # forced, guest paused: see _force_cancel
        # No job and a trusted bitmap: choose_mode says "bitmap".
        resync(qmp, d, target, trust_bitmap=True, timeout=timeout, resume_timeout=0)
    return sorted(stale | held)


# -- resync -------------------------------------------------------------------------------

def resync(qmp: Qmp, disk: int, target: NbdTarget, *, trust_bitmap: bool = True,
           timeout: float = 600.0, resume_timeout: float = 5.0) -> ResyncResult:
    """Bring the replica of ``disk`` back in sync after its peer returned; returns once
    the mirror is ``ready`` again.  ``target`` must serve the *same replica image* as
    before, at the same or a new address (a fresh replica needs unprotect + protect).

    ``resume`` (R1): the job still exists and the address is unchanged: resume it until
    its NBD client has reconnected; it copies what its own bitmap says.  After
    ``resume_timeout`` without reconnecting (the client backs off up to 16 s) it falls
    back to: ``bitmap`` (R2): the resync bitmap covers what the replica lacks (see
    :func:`choose_mode`; pass ``trust_bitmap=False`` when the job is gone and the store
    says the replica never completed a sync): copy its blocks while the guest runs,
    pause the guest for a last pass and the start of a ``sync: none`` mirror.
    ``full`` otherwise: a new full mirror.  Never skips.  Afterwards the bitmap is
    cleared as by :func:`checkpoint`.
    """
    result = _resync(qmp, disk, target, trust_bitmap, timeout, resume_timeout)
    log.info("Disk %d of %s: resynced by %s: %d bytes in %.2f s, guest paused %.1f ms",
             disk, qmp, result.mode, result.bytes_copied, result.seconds, result.pause_ms)
    return result


def _resync(qmp: Qmp, disk: int, target: NbdTarget, trust_bitmap: bool, timeout: float,
            resume_timeout: float) -> ResyncResult:
    t0 = time.monotonic()
    _take_out_replica(qmp, disk)
    nodes = _nodes(qmp)
    job = _job(qmp, JOB.format(disk))
    same = target_of(nodes.get(NODE.format(disk))) == (target.host, target.port, target.export)
    has_bitmap = _bitmap(nodes, disk) is not None
    mode = choose_mode(job, same, has_bitmap, trust_bitmap)
    if mode == "resume":
        copied = _resume(qmp, disk, int(job.get("offset", 0)) if job else 0,
                         resume_timeout, timeout)
        if copied is not None:
            promote(qmp, disk)
            checkpoint(qmp, disk)
            return ResyncResult("resume", copied, time.monotonic() - t0)
        mode = choose_mode(_job(qmp, JOB.format(disk)), False, has_bitmap, trust_bitmap)
        log.warning("Disk %d of %s: the mirror did not reconnect within %g s; resync by %s",
                    disk, qmp, resume_timeout, mode)
    # The old job goes only once the peer answers: a failed job still holds its bitmap
    # (and its "ready" says a bitmap resync suffices), no job would mean a full sync.
    probe(target)
    _end_job(qmp, JOB.format(disk))
    _end_job(qmp, RESYNC_JOB.format(disk))
    _connect(qmp, disk, target)
    if mode == "bitmap":
        copied, pause_ms = _bitmap_resync(qmp, disk, timeout)
        return ResyncResult("bitmap", copied, time.monotonic() - t0, pause_ms)
    with qmp_session(qmp) as s:
        _new_bitmap(s, nodes, disk)  # valid once this full sync is ready
        slot = quorum.slots(s).get(disk)
        s.execute("blockdev-mirror",
                  mirror_args(disk, "full", _source(slot[0] if slot else None, disk)))
    state = wait_ready(qmp, disk, timeout)
    promote(qmp, disk)
    checkpoint(qmp, disk)
    return ResyncResult("full", state.offset, time.monotonic() - t0)


def _take_out_replica(qmp: Qmp, disk: int) -> None:
    """Before a resync of a quorum disk: a replica still in its slot (its failure was
    not handled) is taken out.  The guest stays paused: the resync copies with it
    paused and leaves it so, for its owner to resume once the peer's state is known
    (the node daemon's watcher does that: ``daemon.replication``)."""
    with qmp_session(qmp) as s:
        if quorum.degrade(s, disk):
            log.warning("Disk %d of %s: its replica was still in the slot at a resync; "
                        "taken out, guest paused", disk, qmp)


def promote(qmp: Qmp, disk: int, timeout: float = 10.0) -> bool:
    """Make a quorum disk whose sync mirror is ``ready`` protected: with the guest
    paused (a few ms), end the mirror in sync (a graceful cancel of a ready mirror
    completes it without a pivot) and put the replica connection into the slot
    (:mod:`.quorum`).  False if there was nothing to do (no quorum, the replica is in
    the slot already, or no ready mirror).  Raises :class:`HypervisorError` if the
    mirror did not end in sync (the slot keeps its placeholder: sync again)."""
    jid = JOB.format(disk)
    with qmp_session(qmp, timeout=timeout) as s:
        slot = quorum.slots(s).get(disk)
        job = next((j for j in s.execute("query-block-jobs") if j.get("device") == jid), None)
        if slot is None or slot[0] == "replica" or job is None or phase_of(job) != "ready":
            return False
        t0 = time.monotonic()
        with quorum.paused(s):
            s.execute("block-job-cancel", {"device": jid, "force": False})
            ev = s.wait_event(("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"), timeout,
                              match=lambda ev: ev["data"].get("device") == jid)
            with contextlib.suppress(QmpCommandError):  # already gone
                s.execute("job-dismiss", {"id": jid})
            if ev["event"] != "BLOCK_JOB_COMPLETED" or ev["data"].get("error"):
                raise HypervisorError(f"The mirror of disk {disk} ({qmp}) was not in sync "
                                      "when it ended; sync it again.")
            quorum.set_slot(s, disk, "replica")
    log.info("Disk %d of %s: in sync, the replica is now written with every guest write "
             "(guest paused %.1f ms)", disk, qmp, (time.monotonic() - t0) * 1000)
    return True


def _resume(qmp: Qmp, disk: int, offset0: int, resume_timeout: float,
            timeout: float) -> int | None:
    """R1: resume until the job runs without error, then wait until ready; the bytes it
    copied, or None if it did not reconnect within ``resume_timeout`` or failed again."""
    deadline = time.monotonic() + resume_timeout
    while (phase := status(qmp, [disk])[disk].phase) not in ("ready", "syncing"):
        if phase == "none" or time.monotonic() > deadline:
            return None
        with contextlib.suppress(QmpCommandError):  # "not paused" just after an error
            qmp_call(qmp, "block-job-resume", {"device": JOB.format(disk)})
        time.sleep(RESUME_EVERY)
    try:
        return wait_ready(qmp, disk, timeout).offset - offset0
    except HypervisorError:
        if status(qmp, [disk])[disk].phase == "failed":
            return None
        raise


def _backup_pass(qmp: Qmp, disk: int, timeout: float) -> int:
    """One ``sync: bitmap`` backup into the replica; the bytes it copied."""
    jid = RESYNC_JOB.format(disk)
    qmp_call(qmp, "blockdev-backup", backup_args(disk))
    deadline = time.monotonic() + timeout
    while (job := _job(qmp, jid)) is not None and job["status"] != "concluded":
        if time.monotonic() > deadline:
            _end_job(qmp, jid)
            raise HypervisorError(f"The resync of disk {disk} ({qmp}) did not finish within "
                                  f"{timeout:g} s.")
        time.sleep(POLL)
    if job is None:
        raise HypervisorError(f"The resync job {jid} of {qmp} vanished.")
    qmp_call(qmp, "job-dismiss", {"id": jid})
    if job.get("error"):
        raise HypervisorError(f"The resync of disk {disk} ({qmp}) failed: {job['error']}; "
                              "its bitmap still holds what the replica lacks.")
    return int(job.get("offset", 0))


def _bitmap_resync(qmp: Qmp, disk: int, timeout: float) -> tuple[int, float]:
    """R2 into a connected ``repl<i>``: live passes (each leaves in the bitmap only what
    was written during it), then a pass with the guest paused and the ``sync: none``
    mirror started before it resumes: 7.2 allows one job per node, so the mirror cannot
    start while a backup runs.  The bytes copied and the pause in ms."""
    copied = _backup_pass(qmp, disk, timeout)
    for _ in range(3):
        dirty = _bitmap(_nodes(qmp), disk)
        if dirty is None or int(dirty.get("count", 0)) < PASS_LIMIT:
            break
        copied += _backup_pass(qmp, disk, timeout)
    # The paused part in one session, driven by events: every ms here is guest pause.
    t_pause = time.monotonic()
    with qmp_session(qmp) as s, _paused(s):
        s.execute("blockdev-backup", backup_args(disk))
        done = s.wait_event("BLOCK_JOB_COMPLETED", timeout,
                            match=lambda ev: ev["data"]["device"] == RESYNC_JOB.format(disk))
        s.execute("job-dismiss", {"id": RESYNC_JOB.format(disk)})
        if done["data"].get("error"):
            raise HypervisorError(f"The resync of disk {disk} ({qmp}) failed: "
                                  f"{done['data']['error']}.")
        if disk in quorum.slots(s):
            quorum.set_slot(s, disk, "replica")  # in sync: the replica takes the slot
        else:
            s.execute("blockdev-mirror", mirror_args(disk, "none"))
            s.wait_event("BLOCK_JOB_READY", timeout,
                         match=lambda ev: ev["data"]["device"] == JOB.format(disk))
    return copied + int(done["data"].get("offset", 0)), (time.monotonic() - t_pause) * 1000
