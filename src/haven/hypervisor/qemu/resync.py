"""Bringing the replica of a disk back in sync on the primary side: :func:`resync` after
its peer returned (R1 resume the job, R2 copy the resync bitmap, or a full mirror),
:func:`promote` of a quorum disk whose sync mirror is ready, and :func:`refresh` of a
ready mirror left on a dead connection.  Built on the primitives of :mod:`.blockjobs`
and the decisions of :mod:`.mirror_spec`; the names are re-exported by
:mod:`.replication`, whose docstring describes the objects and the contract."""

from __future__ import annotations

import contextlib
import logging
import time

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
    _paused,
    _source,
    checkpoint,
    peer_connected,
    probe,
    status,
    wait_ready,
)
from haven.hypervisor.qemu.mirror_spec import (
    JOB,
    NODE,
    RESYNC_JOB,
    NbdTarget,
    ResyncResult,
    backup_args,
    choose_mode,
    mirror_args,
    phase_of,
    target_of,
)
from haven.hypervisor.qemu.qmp import QmpCommandError, qmp_call, qmp_session

log = logging.getLogger(__name__)

RESUME_EVERY = 0.25  # R1: each resume makes the NBD client retry its lazy reconnect
PASS_LIMIT = 1 << 20  # R2: another live pass while more than this is dirty (max 3)


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
