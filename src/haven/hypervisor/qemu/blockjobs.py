"""Reading and ending a replicated disk's QEMU objects: the block jobs, the block nodes and
their resync bitmaps, the quorum's slot, the guest's run state, the peer's export.  The
primitives :mod:`.replication` builds on (split from it to keep modules small; the
public names are re-exported there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from haven.hypervisor.base import HypervisorError
from haven.hypervisor.qemu import quorum
from haven.hypervisor.qemu.mirror_spec import (
    BITMAP,
    JOB,
    NODE,
    MirrorState,
    NbdTarget,
    bitmap_args,
    phase_of,
)
from haven.hypervisor.qemu.qmp import QmpCommandError, QmpSession, qmp_call, qmp_session

log = logging.getLogger(__name__)

Qmp = Path | str
POLL = 0.005  # seconds between job polls (a poll is one ~1 ms QMP call)
# /proc/net/tcp socket states (include/net/tcp_states.h)
_TCP_ESTABLISHED = "01"


def _job(qmp: Qmp, jid: str) -> dict[str, Any] | None:
    return next((j for j in qmp_call(qmp, "query-block-jobs") if j.get("device") == jid), None)


def _nodes(qmp: Qmp) -> dict[str, dict[str, Any]]:
    return {n["node-name"]: n for n in qmp_call(qmp, "query-named-block-nodes", {"flat": True})}


def _bitmap(nodes: dict[str, dict[str, Any]], disk: int) -> dict[str, Any] | None:
    """The resync bitmap's entry (with its dirty ``count`` in bytes) if it is usable: a
    persistent one that QEMU found marked in-use at start (it crashed) is not."""
    return next((b for b in nodes.get(f"disk{disk}", {}).get("dirty-bitmaps", [])
                 if b.get("name") == BITMAP.format(disk) and not b.get("inconsistent")), None)


def has_bitmap(qmp: Qmp, disk: int) -> bool:
    """True if ``disk`` has a usable resync bitmap."""
    return _bitmap(_nodes(qmp), disk) is not None


def _new_bitmap(s: QmpSession, nodes: dict[str, dict[str, Any]], disk: int) -> None:
    """Replace the resync bitmap by an empty one."""
    with contextlib.suppress(QmpCommandError):
        s.execute("block-dirty-bitmap-remove", {"node": f"disk{disk}",
                                                "name": BITMAP.format(disk)})
    s.execute("block-dirty-bitmap-add", bitmap_args(disk, nodes[f"disk{disk}"]["drv"]))


def status(qmp: Qmp, disks: Iterable[int] = ()) -> dict[int, MirrorState]:
    """Every disk with a replication job or a quorum, plus ``disks`` (``none`` if they
    have neither), from one monitor session (~2 ms): cheap enough for every agent cycle.

    A quorum disk (:mod:`.quorum`) is ``ready`` while its slot holds the replica and
    its device has not stopped on an I/O error, ``failed`` once the replica was lost,
    ``none`` while unprotected; a job on it (a sync under way) says more and wins."""
    found = {i: MirrorState(i, "", "none") for i in disks}
    with qmp_session(qmp) as s:
        jobs = s.execute("query-block-jobs")
        slots = quorum.slots(s)
        failed = quorum.io_failed(s) if slots else set()
        idle = _idle(s) if slots else {}
    found.update(quorum.states(slots, jobs, failed, idle))
    return found


def _idle(s: QmpSession) -> dict[int, float]:
    """Seconds since each guest disk (``vblk<i>``) last completed an I/O, for those
    that did one (``query-blockstats``)."""
    out = {}
    for dev in s.execute("query-blockstats"):
        qdev = str(dev.get("qdev", ""))
        idle = dev.get("stats", {}).get("idle_time_ns")
        tail = qdev.rpartition("/vblk")[2].partition("/")[0]
        if idle is not None and tail.isdigit():
            out[int(tail)] = int(idle) / 1e9
    return out


def wait_ready(qmp: Qmp, disk: int, timeout: float) -> MirrorState:
    """Wait until the mirror of ``disk`` is ``ready``; raise :class:`HypervisorError`
    when it fails or vanishes, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        state = status(qmp, [disk])[disk]
        if state.phase == "ready" and state.job_id in (JOB.format(disk),
                                                        quorum.QUORUM.format(disk)):
            return state
        if state.phase in ("failed", "none"):
            raise HypervisorError(f"The replication of disk {disk} ({qmp}) is {state.phase} "
                                  f"(I/O status {state.io_status}): its replica is "
                                  "unreachable; resync it once it is back.")
        if time.monotonic() >= deadline:
            raise HypervisorError(f"The replication of disk {disk} ({qmp}) was not in sync "
                                  f"within {timeout:g} s ({state.percent:.0f}% done).")
        time.sleep(POLL)


def freeze(qmp: Qmp) -> bool:
    """Pause the guest (``stop``, which drains in-flight I/O first); True if it ran, False
    if it was already paused (then do not :func:`thaw` it on its owner's behalf)."""
    if qmp_call(qmp, "query-status").get("status") != "running":
        return False
    qmp_call(qmp, "stop")
    return True


def thaw(qmp: Qmp) -> None:
    """Resume the guest (``cont``)."""
    qmp_call(qmp, "cont")


# The guest paused for a block: one definition, shared with the quorum slot swaps.
_paused = quorum.paused


def _source(slot: quorum.Slot | None, disk: int) -> str:
    """The node a sync mirror copies from: a quorum disk's quorum (QEMU mirrors only
    from a root node), else the image's format node."""
    return quorum.QUORUM.format(disk) if slot is not None else f"disk{disk}"


def _slot(qmp: Qmp, disk: int) -> quorum.Slot | None:
    """The slot state of a quorum disk, None for a disk without a quorum."""
    with qmp_session(qmp) as s:
        found = quorum.slots(s).get(disk)
    return found[0] if found else None


def probe(target: NbdTarget, timeout: float = 2.0) -> None:
    """Raise unless an NBD server answers at the export's address.  QEMU 7.2 connects
    an nbd node synchronously in its main loop, so an unreachable host would freeze the
    VM for a whole TCP connect timeout: this checks from here first.  The probe ends the
    handshake with ``NBD_OPT_ABORT``, so the server logs nothing."""
    where = f"The replica export {target.export} at {target.host}:{target.port}"
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout) as conn:
            greeting = conn.recv(18, socket.MSG_WAITALL)
            if greeting[:16] != b"NBDMAGICIHAVEOPT":
                raise HypervisorError(f"{where} is not an NBD server (greeting "
                                      f"{greeting[:16]!r}); check the instance's port.")
            # Client flags FIXED_NEWSTYLE|NO_ZEROES, then option 2 (ABORT) of length 0.
            conn.sendall(struct.pack(">I8sII", 3, b"IHAVEOPT", 2, 0))
            with contextlib.suppress(OSError):
                conn.recv(64)  # the server's acknowledgement; then it hangs up
    except OSError as exc:
        raise HypervisorError(f"{where} is not reachable ({exc.strerror or exc}); is its "
                              "storage daemon running?") from exc


def _connect(qmp: Qmp, disk: int, target: NbdTarget) -> None:
    """(Re)create ``repl<i>`` (and its TLS object) connected to ``target``."""
    probe(target)
    with qmp_session(qmp) as s:
        quorum.add_connection(s, disk, target)


def checkpoint(qmp: Qmp, disk: int) -> bool:
    """If the mirror is ready, clear the resync bitmap so that it records only writes
    from now on (which bounds the next bitmap resync); False (nothing done) otherwise.
    The guest is paused for it (a few ms): the pause drains in-flight writes, so none
    can fail on the peer unrecorded between the health check and the clear."""
    was_running = freeze(qmp)
    try:
        if status(qmp, [disk])[disk].phase != "ready":
            return False
        qmp_call(qmp, "block-dirty-bitmap-clear",
                 {"node": f"disk{disk}", "name": BITMAP.format(disk)})
        return True
    finally:
        if was_running:
            thaw(qmp)


def _ended(job: dict[str, Any] | None) -> bool:
    return job is None or job["status"] in ("concluded", "null")


def _end_job(qmp: Qmp, jid: str, graceful: bool = False, timeout: float = 10.0) -> bool:
    """Cancel job ``jid`` unless it has ended, wait until it concluded, dismiss it.  True
    if it ended without error.  A graceful cancel that fails or hangs is forced."""
    job = _job(qmp, jid)
    if job is None:
        return False
    if graceful and not _ended(job):
        with contextlib.suppress(QmpCommandError):  # it may conclude meanwhile
            qmp_call(qmp, "block-job-cancel", {"device": jid, "force": False})
        deadline = time.monotonic() + timeout
        while not _ended(job := _job(qmp, jid)) and phase_of(job or {}) != "failed" \
                and time.monotonic() < deadline:
            time.sleep(POLL)
    if not _ended(job):
        job = _force_cancel(qmp, jid, timeout)
    with contextlib.suppress(QmpCommandError):
        qmp_call(qmp, "job-dismiss", {"id": jid})
    return job is not None and not job.get("error")


def _force_cancel(qmp: Qmp, jid: str, timeout: float) -> dict[str, Any] | None:
    """Force-cancel job ``jid`` with the guest paused until the job has ended; its last
    ``query-block-jobs`` entry.

    Why the pause: a force-cancelled ``write-blocking`` mirror frees its in-flight map
    before it drains the guest writes still waiting for the replica, and each of those
    then writes into freed memory.  QEMU 7.2 and 10.0.2 both abort on it ("malloc():
    unsorted double linked list corrupted"), killing the guest: about 1 resync in 10 after a
    replica loss (tests/integration/test_replication.py, the repeated outages).  ``stop``
    drains every guest request first, so none is in flight when the job ends.  The
    replica connection is yanked before, so that a hung peer cannot hold the drain (a
    dead one fails the requests at once anyway); the job is being dropped regardless.
    The pause lasts the cancel: a few ms."""
    node = NODE.format(jid.removeprefix("mirror").removeprefix("resync"))
    with qmp_session(qmp) as s:
        with contextlib.suppress(QmpCommandError):  # no connection left: nothing to cut
            s.execute("yank", {"instances": [{"type": "block-node", "node-name": node}]})
        t_stop = time.monotonic()
        with _paused(s):
            with contextlib.suppress(QmpCommandError):  # it may conclude meanwhile
                s.execute("block-job-cancel", {"device": jid, "force": True})
            deadline = time.monotonic() + timeout
            while not _ended(job := next((j for j in s.execute("query-block-jobs")
                                          if j.get("device") == jid), None)):
                if time.monotonic() > deadline:
                    raise HypervisorError(f"Block job {jid} of {qmp} did not end within "
                                          f"{timeout:g} s of its cancellation.")
                time.sleep(POLL)
    log.info("%s: job %s cancelled with the guest paused for %.1f ms", qmp, jid,
             (time.monotonic() - t_stop) * 1000)
    return job


def peer_connected(pid: int, port: int) -> bool:
    """True if process ``pid`` (the primary's QEMU) has an established TCP connection
    to remote ``port`` (the instance's replication port), read from the process's own
    network namespace in ``/proc``.  A storage daemon that died or restarted leaves the
    NBD client's socket in ``CLOSE_WAIT`` (or, after a failed request, no socket):
    QEMU's NBD client only notices on its next request, so with an idle guest the
    mirror stays ``ready`` on a dead connection.  False when it cannot tell."""
    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(FileNotFoundError):
                for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                    fields = line.split()
                    if len(fields) > 9 and fields[9] in inodes and \
                            int(fields[2].rpartition(":")[2], 16) == port and \
                            fields[3] == _TCP_ESTABLISHED:
                        return True
    except (OSError, ValueError):
        return False
    return False
