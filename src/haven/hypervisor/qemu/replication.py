"""The primary side of replication: QEMU mirrors a running VM's disk into an NBD export.

For disk ``i`` of a VM started by the driver (format node ``disk<i>``) this module keeps::

    repl<i>          an ``nbd`` block node connected to the peer's export (:mod:`.exports`)
    mirror<i>        a ``blockdev-mirror`` job disk<i> -> repl<i>, ``copy-mode:
                     write-blocking``, ``on-target-error: stop``, never auto-dismissed
    repl<i>-dirty    a dirty bitmap on disk<i> (persistent on qcow2): every write since
                     protection started or the last :func:`checkpoint` (incremental resync)
    resync<i>        a ``blockdev-backup`` job, only during a bitmap resync
    repl<i>-tls      the TLS-PSK client credentials when the export requires them

The contract (QEMU 7.2, measured in the project's notes and the integration tests): once
the mirror is ``ready`` every acknowledged guest write is on both sides; when the peer
fails the job pauses (``BLOCK_JOB_ERROR action=stop``, ~30 ms) while the guest keeps
running on the local copy, and what the peer missed is in the job's own bitmap (lost
with the QEMU process) and in ``repl<i>-dirty``.  The caller (the node agent) records
replica states in the store; nothing here decides whether a replica is up to date.

All calls are short QMP exchanges on the monitor path given by the caller (one client at
a time: no session is held longer than one step, except :func:`watch_errors`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from haven.hypervisor.base import HypervisorError
from haven.hypervisor.qemu.exports import PSK_USER, TLS_PRIORITY
from haven.hypervisor.qemu.qmp import QmpCommandError, QmpTimeout, qmp_call, qmp_session

log = logging.getLogger(__name__)

Phase = Literal["syncing", "ready", "failed", "none"]
ResyncMode = Literal["resume", "bitmap", "full"]

# -- names and QMP arguments (pure) -------------------------------------------------------


def job_id(disk: int) -> str:
    """The mirror job of ``disk``."""
    return f"mirror{disk}"


def resync_job_id(disk: int) -> str:
    """The backup job of a bitmap resync of ``disk``."""
    return f"resync{disk}"


def node_name(disk: int) -> str:
    """The nbd block node of ``disk``'s replica."""
    return f"repl{disk}"


def bitmap_name(disk: int) -> str:
    """The resync bitmap on ``disk<i>``."""
    return f"repl{disk}-dirty"


def tls_id(disk: int) -> str:
    """The TLS credentials object of ``disk``'s nbd node."""
    return f"repl{disk}-tls"


def disk_of_job(jid: str) -> int | None:
    """The disk index of a replication job id (``mirror3`` -> 3), else None."""
    for prefix in ("mirror", "resync"):
        if jid.startswith(prefix) and jid[len(prefix):].isdigit():
            return int(jid[len(prefix):])
    return None


def nbd_node_args(disk: int, host: str, port: int, export: str, tls: bool) -> dict[str, Any]:
    """``blockdev-add`` of the replica's nbd node.  ``reconnect-delay`` 0: with a delay
    a guest write stalls that long when the peer dies (2.1 s measured with 2)."""
    args: dict[str, Any] = {"driver": "nbd", "node-name": node_name(disk),
                            "server": {"type": "inet", "host": host, "port": str(port)},
                            "export": export, "reconnect-delay": 0}
    if tls:
        args["tls-creds"] = tls_id(disk)
    return args


def tls_object_args(disk: int, psk_dir: str, user: str) -> dict[str, Any]:
    """``object-add`` of the client's TLS-PSK credentials."""
    return {"qom-type": "tls-creds-psk", "id": tls_id(disk), "endpoint": "client",
            "dir": psk_dir, "username": user, "priority": TLS_PRIORITY}


def mirror_args(disk: int, sync: Literal["full", "none"]) -> dict[str, Any]:
    """``blockdev-mirror`` disk<i> -> repl<i>: synchronous (``write-blocking``: a guest
    write completes once both sides have it), pausing on a target error instead of
    failing the job or the guest, kept after it ends so its outcome can be read."""
    return {"job-id": job_id(disk), "device": f"disk{disk}", "target": node_name(disk),
            "sync": sync, "copy-mode": "write-blocking", "on-target-error": "stop",
            "auto-dismiss": False}


def backup_args(disk: int) -> dict[str, Any]:
    """``blockdev-backup`` of the blocks in the resync bitmap (``on-success``: copied
    bits are cleared, writes made meanwhile stay; on failure nothing is cleared)."""
    return {"job-id": resync_job_id(disk), "device": f"disk{disk}",
            "target": node_name(disk), "sync": "bitmap", "bitmap": bitmap_name(disk),
            "bitmap-mode": "on-success", "auto-dismiss": False}


def phase_of(job: dict[str, Any]) -> Phase:
    """The phase of a ``query-block-jobs`` entry.  A paused job or one with an I/O
    error has lost its peer (``on-target-error: stop``); QEMU's ``ready`` stays true
    while a ready job is paused, so it is ready only when also running cleanly."""
    if job.get("status") in ("concluded", "null", "aborting", "pending", "waiting"):
        return "failed" if job.get("error") else "none"
    if job.get("io-status", "ok") != "ok" or job.get("paused"):
        return "failed"
    if job.get("type") == "mirror" and job.get("ready") and job.get("status") == "ready":
        return "ready"
    return "syncing"


def choose_mode(job: dict[str, Any] | None, same_target: bool, has_bitmap: bool,
                trust_bitmap: bool) -> ResyncMode:
    """The resync mode (see :func:`resync`).  The bitmap is a superset of what the
    replica lacks only if the mirror finished a full sync after the bitmap was created:
    a job's ``ready`` (which survives a pause) says so; without a job the caller does."""
    if job is not None and same_target and phase_of(job) != "none":
        return "resume"
    synced_once = bool(job.get("ready")) if job is not None else trust_bitmap
    return "bitmap" if has_bitmap and synced_once else "full"

POLL = 0.02  # seconds between job polls; a poll is one ~1 ms QMP call
RESUME_EVERY = 0.25  # R1: the NBD client reconnects lazily, each resume retries it


@dataclass(frozen=True)
class NbdTarget:
    """Where the replica is exported: ``export`` is the NBD export name (disk uuid);
    ``psk_dir`` a directory with ``keys.psk`` (see :func:`.exports.write_psk_dir`) when
    the export requires TLS, else None."""

    host: str
    port: int
    export: str
    psk_dir: str | None = None
    psk_user: str = PSK_USER


@dataclass(frozen=True)
class MirrorState:
    """One disk's replication job.  ``phase``: ``syncing`` (initial sync or resync),
    ``ready`` (in sync: every write reaches both sides), ``failed`` (paused or I/O error:
    the peer is lost), ``none`` (no job).  ``offset``/``length`` are the job's progress
    in bytes."""

    disk: int
    job_id: str
    phase: Phase
    offset: int = 0
    length: int = 0
    io_status: str = "ok"
    paused: bool = False

    @property
    def percent(self) -> float:
        """Progress of the sync in percent (100 when ready)."""
        if self.phase == "ready":
            return 100.0
        return 100.0 * self.offset / self.length if self.length else 0.0


@dataclass(frozen=True)
class ResyncResult:
    """How a resync went: ``bytes_copied`` from the jobs' progress counters (including
    guest writes mirrored meanwhile); ``pause_ms`` the VM pause of a bitmap resync."""

    mode: ResyncMode
    bytes_copied: int
    seconds: float
    pause_ms: float = 0.0


# -- observing ----------------------------------------------------------------------------

def _jobs(qmp_path: Path | str) -> list[dict[str, Any]]:
    return list(qmp_call(qmp_path, "query-block-jobs"))


def _job(qmp_path: Path | str, jid: str) -> dict[str, Any] | None:
    return next((j for j in _jobs(qmp_path) if j.get("device") == jid), None)


def status(qmp_path: Path | str, disks: Iterable[int] = ()) -> dict[int, MirrorState]:
    """Every disk with a replication job (plus ``disks``, as ``none`` when they have
    none), from one ``query-block-jobs`` (~1 ms): cheap enough for every agent cycle.
    ``ready`` means QEMU reported the job ready and its I/O status is ok."""
    found: dict[int, MirrorState] = {i: MirrorState(i, "", "none") for i in disks}
    for job in _jobs(qmp_path):
        jid = str(job.get("device", ""))
        disk = disk_of_job(jid)
        if disk is None:
            continue
        state = MirrorState(disk, jid, phase_of(job), int(job.get("offset", 0)),
                            int(job.get("len", 0)), str(job.get("io-status", "ok")),
                            bool(job.get("paused", False)))
        # A resync's backup job and a leftover mirror never coexist (one job per node),
        # but prefer a live job over a concluded one if they ever do.
        if disk not in found or found[disk].phase == "none":
            found[disk] = state
    return found


def wait_ready(qmp_path: Path | str, disk: int, timeout: float) -> MirrorState:
    """Wait until the mirror of ``disk`` is ``ready``; raise :class:`HypervisorError` if
    it fails, disappears, or is not ready within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        state = status(qmp_path, [disk])[disk]
        if state.phase == "ready" and state.job_id == job_id(disk):
            return state
        if state.phase in ("failed", "none"):
            raise HypervisorError(f"The replication of disk {disk} ({qmp_path}) is "
                                  f"{state.phase} (I/O status {state.io_status}): the "
                                  "replica is unreachable; resync it when it is back.")
        if time.monotonic() >= deadline:
            raise HypervisorError(f"The replication of disk {disk} ({qmp_path}) was not in "
                                  f"sync within {timeout:g} s ({state.percent:.0f}% done).")
        time.sleep(POLL)


def watch_errors(qmp_path: Path | str, timeout: float) -> list[int]:
    """Block until a ``BLOCK_JOB_ERROR`` of a replication job arrives (or ``timeout``);
    the disks that reported one, sorted ([] on timeout).  Returns within a few ms of the
    event.  Holds the monitor for the whole wait: give it a monitor nobody else needs.
    An error that happens while nobody watches is only seen by :func:`status`."""
    with qmp_session(qmp_path, timeout=min(timeout, 5.0)) as session:
        try:
            first = session.wait_event(
                "BLOCK_JOB_ERROR", timeout,
                match=lambda ev: disk_of_job(str(ev.get("data", {}).get("device"))) is not None)
        except QmpTimeout:
            return []
        events = [first, *session.events()]
    return sorted({d for ev in events if ev.get("event") == "BLOCK_JOB_ERROR"
                   if (d := disk_of_job(str(ev.get("data", {}).get("device")))) is not None})


def freeze(qmp_path: Path | str) -> bool:
    """Pause the guest (QMP ``stop``; in-flight I/O is drained first); True if it was
    running, False if it was already paused (then do not ``thaw`` on its behalf)."""
    if qmp_call(qmp_path, "query-status").get("status") != "running":
        return False
    qmp_call(qmp_path, "stop")
    return True


def thaw(qmp_path: Path | str) -> None:
    """Resume the guest (QMP ``cont``)."""
    qmp_call(qmp_path, "cont")


# -- protecting ---------------------------------------------------------------------------

def probe(target: NbdTarget, timeout: float = 2.0) -> None:
    """Raise unless a TCP connection to the export can be opened.  QEMU 7.2 opens an NBD
    node synchronously in its main loop: an unreachable host would freeze the VM for the
    whole TCP connect timeout, so this is checked from here first."""
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            pass
    except OSError as exc:
        raise HypervisorError(f"The replica export {target.export} at {target.host}:"
                              f"{target.port} is not reachable ({exc.strerror or exc}); "
                              "is its storage daemon running?") from exc


def _nodes(qmp_path: Path | str) -> dict[str, dict[str, Any]]:
    return {n["node-name"]: n for n in
            qmp_call(qmp_path, "query-named-block-nodes", {"flat": True})}


def _bitmaps(node: dict[str, Any] | None) -> set[str]:
    return {b.get("name", "") for b in (node or {}).get("dirty-bitmaps", [])}


def _connect(qmp_path: Path | str, disk: int, target: NbdTarget) -> None:
    """(Re)create ``repl<i>`` (and its TLS object) pointing at ``target``."""
    probe(target)
    with qmp_session(qmp_path) as s:
        with contextlib.suppress(QmpCommandError):  # absent is fine
            s.execute("blockdev-del", {"node-name": node_name(disk)})
        with contextlib.suppress(QmpCommandError):
            s.execute("object-del", {"id": tls_id(disk)})
        if target.psk_dir is not None:
            s.execute("object-add", tls_object_args(disk, target.psk_dir, target.psk_user))
        try:
            s.execute("blockdev-add", nbd_node_args(disk, target.host, target.port,
                                                    target.export, target.psk_dir is not None))
        except QmpCommandError as exc:
            raise HypervisorError(f"Cannot connect disk {disk} to its replica "
                                  f"{target.export} at {target.host}:{target.port}: "
                                  f"{exc}") from exc


def _target_of(node: dict[str, Any] | None) -> tuple[str, int, str] | None:
    """(host, port, export) of an nbd node from query-named-block-nodes."""
    if node is None or node.get("drv") != "nbd":
        return None
    # The node's filename is "nbd://host:port/export" (or nbd+tls://).
    name = str(node.get("file", ""))
    _, _, rest = name.partition("://")
    hostport, _, export = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    return (host.strip("[]"), int(port), export) if port.isdigit() else None


def protect(qmp_path: Path | str, disk: int, target: NbdTarget, bitmap: bool = True) -> None:
    """Start mirroring ``disk`` into ``target`` (a full initial sync); returns once the
    job exists, before it is ready (see :func:`wait_ready`, :func:`status`).

    After protect + ``ready`` every acknowledged guest write is on both sides.  With
    ``bitmap`` the resync bitmap is added first if missing, so that a later
    :func:`resync` copies only what changed.  Idempotent: a mirror of ``disk`` into the
    same target is left alone; one into another target is an error (use
    :func:`resync` or :func:`unprotect` first).
    """
    nodes = _nodes(qmp_path)
    job = _job(qmp_path, job_id(disk))
    if job is not None and phase_of(job) != "none":
        if _target_of(nodes.get(node_name(disk))) == (target.host, target.port,
                                                      target.export):
            return
        raise HypervisorError(f"Disk {disk} is already replicated elsewhere; resync or "
                              "unprotect it before protecting it again.")
    if job is not None:
        _dismiss(qmp_path, job_id(disk))
    disk_node = nodes.get(f"disk{disk}")
    if disk_node is None:
        raise HypervisorError(f"The VM of {qmp_path} has no disk {disk} (node disk{disk}).")
    _connect(qmp_path, disk, target)
    with qmp_session(qmp_path) as s:
        if bitmap and bitmap_name(disk) not in _bitmaps(disk_node):
            s.execute("block-dirty-bitmap-add", {
                "node": f"disk{disk}", "name": bitmap_name(disk), "granularity": 65536,
                "persistent": disk_node.get("drv") == "qcow2"})
        s.execute("blockdev-mirror", mirror_args(disk, "full"))
    log.info("Disk %d of %s: mirroring to %s:%d/%s", disk, qmp_path, target.host,
             target.port, target.export)


def checkpoint(qmp_path: Path | str, disk: int) -> bool:
    """If the mirror is ready and healthy, clear the resync bitmap so that it records
    only writes from now on (bounding the next bitmap resync); False if not ready.  The
    guest is paused for the clear (a few ms): a pause drains in-flight writes, so none
    can fail on the peer between the health check and the clear unrecorded."""
    was_running = freeze(qmp_path)
    try:
        state = status(qmp_path, [disk])[disk]
        if state.phase != "ready":
            return False
        qmp_call(qmp_path, "block-dirty-bitmap-clear",
                 {"node": f"disk{disk}", "name": bitmap_name(disk)})
        return True
    finally:
        if was_running:
            thaw(qmp_path)


# -- ending -------------------------------------------------------------------------------

def _dismiss(qmp_path: Path | str, jid: str, graceful: bool = False,
             timeout: float = 10.0) -> bool:
    """Cancel job ``jid`` if it still runs, wait until it concluded, dismiss it.  True
    if it ended without error (a graceful cancel of a ready mirror ends in sync)."""
    job = _job(qmp_path, jid)
    if job is None:
        return False
    if job["status"] not in ("concluded", "null"):
        with contextlib.suppress(QmpCommandError):  # it may conclude meanwhile
            qmp_call(qmp_path, "block-job-cancel", {"device": jid, "force": not graceful})
    deadline = time.monotonic() + timeout
    while job is not None and job["status"] not in ("concluded", "null"):
        if time.monotonic() > deadline:
            if not graceful:
                raise HypervisorError(f"Block job {jid} of {qmp_path} did not end within "
                                      f"{timeout:g} s of its cancellation.")
            graceful = False  # a graceful cancel that hangs is forced
            qmp_call(qmp_path, "block-job-cancel", {"device": jid, "force": True})
            deadline = time.monotonic() + timeout
        time.sleep(POLL / 4)
        job = _job(qmp_path, jid)
    ok = job is not None and not job.get("error")
    with contextlib.suppress(QmpCommandError):
        qmp_call(qmp_path, "job-dismiss", {"id": jid})
    return ok


def unprotect(qmp_path: Path | str, disk: int, keep_bitmap: bool = False) -> bool:
    """Stop replicating ``disk``; idempotent.  A ready, healthy mirror is cancelled
    gracefully, which completes it in sync (no pivot): True means the replica equals
    the disk at this moment.  A failed or syncing one is force-cancelled (False).  Then
    the nbd node (closing the connection) and, unless ``keep_bitmap``, the bitmap go."""
    state = status(qmp_path, [disk])[disk]
    in_sync = False
    if state.phase != "none" or state.job_id:
        in_sync = _dismiss(qmp_path, state.job_id, graceful=state.phase == "ready")
        in_sync = in_sync and state.phase == "ready"
    with qmp_session(qmp_path) as s:
        with contextlib.suppress(QmpCommandError):
            s.execute("blockdev-del", {"node-name": node_name(disk)})
        with contextlib.suppress(QmpCommandError):
            s.execute("object-del", {"id": tls_id(disk)})
        if not keep_bitmap:
            with contextlib.suppress(QmpCommandError):
                s.execute("block-dirty-bitmap-remove",
                          {"node": f"disk{disk}", "name": bitmap_name(disk)})
    log.info("Disk %d of %s: replication stopped (%s)", disk, qmp_path,
             "in sync" if in_sync else "not in sync")
    return in_sync


# -- resync -------------------------------------------------------------------------------

def resync(qmp_path: Path | str, disk: int, target: NbdTarget, *, trust_bitmap: bool = True,
           timeout: float = 600.0, resume_timeout: float = 10.0) -> ResyncResult:
    """Bring the replica of ``disk`` back in sync after its peer returned, and return
    once the mirror is ``ready`` again.  ``target`` must serve the *same replica image*
    as before (same or new address); a fresh replica needs unprotect + protect.

    Mode, chosen by :func:`.replication_args.choose_mode`:
    ``resume`` (R1) the old job still exists and the address is unchanged: resume it
    until its NBD client reconnected; it copies what its own bitmap says.  Falls back
    to a bitmap resync after ``resume_timeout``.
    ``bitmap`` (R2) the job is gone or the address changed, and ``repl<i>-dirty`` is a
    superset of what the replica lacks (it exists and the mirror reached ready since it
    was created; without a job that is what ``trust_bitmap`` asserts: pass False when
    the store says the replica never finished its sync): copy the dirty blocks while the
    guest runs, pause it for a final pass and to start a ``sync: none`` mirror.
    ``full`` otherwise: a new full mirror.  Never skips.
    """
    t0 = time.monotonic()
    job = _job(qmp_path, job_id(disk))
    same = _target_of(_nodes(qmp_path).get(node_name(disk))) == (
        target.host, target.port, target.export)
    disk_node = _nodes(qmp_path).get(f"disk{disk}")
    mode = choose_mode(job, same, bitmap_name(disk) in _bitmaps(disk_node), trust_bitmap)
    log.info("Disk %d of %s: resync mode %s", disk, qmp_path, mode)
    if mode == "resume":
        assert job is not None
        copied = _resume(qmp_path, disk, int(job.get("offset", 0)), resume_timeout, timeout)
        if copied is not None:
            return ResyncResult("resume", copied, time.monotonic() - t0)
        job = _job(qmp_path, job_id(disk))
        mode = choose_mode(job, False, bitmap_name(disk) in _bitmaps(disk_node),
                           trust_bitmap)
        log.info("Disk %d of %s: resume did not reconnect; resync mode %s", disk,
                 qmp_path, mode)
    _dismiss(qmp_path, job_id(disk))
    _dismiss(qmp_path, resync_job_id(disk))
    _connect(qmp_path, disk, target)
    if mode == "bitmap":
        copied, pause_ms = _bitmap_resync(qmp_path, disk, timeout)
        return ResyncResult("bitmap", copied, time.monotonic() - t0, pause_ms)
    with qmp_session(qmp_path) as s:
        # The new full sync makes a fresh bitmap valid once it is ready.
        name = {"node": f"disk{disk}", "name": bitmap_name(disk)}
        if bitmap_name(disk) in _bitmaps(disk_node):
            s.execute("block-dirty-bitmap-clear", name)
        else:
            s.execute("block-dirty-bitmap-add", {
                **name, "granularity": 65536,
                "persistent": (disk_node or {}).get("drv") == "qcow2"})
        s.execute("blockdev-mirror", mirror_args(disk, "full"))
    state = wait_ready(qmp_path, disk, timeout)
    return ResyncResult("full", state.offset, time.monotonic() - t0)


def _resume(qmp_path: Path | str, disk: int, offset0: int, resume_timeout: float,
            timeout: float) -> int | None:
    """R1: resume until the job runs without error, then wait for ready; the bytes it
    copied, or None if it never reconnected within ``resume_timeout``."""
    jid = job_id(disk)
    deadline = time.monotonic() + resume_timeout
    while True:
        state = status(qmp_path, [disk])[disk]
        if state.phase in ("ready", "syncing"):
            break
        if state.phase == "none" or time.monotonic() > deadline:
            return None
        with contextlib.suppress(QmpCommandError):  # "not paused" right after an error
            qmp_call(qmp_path, "block-job-resume", {"device": jid})
        time.sleep(RESUME_EVERY)
    try:
        state = wait_ready(qmp_path, disk, timeout)
    except HypervisorError:
        if status(qmp_path, [disk])[disk].phase == "failed":
            return None  # it reconnected and failed again: let the caller fall back
        raise
    return state.offset - offset0


def _run_backup(qmp_path: Path | str, disk: int, timeout: float) -> int:
    """One ``sync: bitmap`` pass to the replica; the bytes it copied."""
    jid = resync_job_id(disk)
    qmp_call(qmp_path, "blockdev-backup", backup_args(disk))
    deadline = time.monotonic() + timeout
    while True:
        job = _job(qmp_path, jid)
        if job is None:
            raise HypervisorError(f"The resync job {jid} of {qmp_path} vanished.")
        if job["status"] == "concluded":
            qmp_call(qmp_path, "job-dismiss", {"id": jid})
            if job.get("error"):
                raise HypervisorError(f"The resync of disk {disk} ({qmp_path}) failed: "
                                      f"{job['error']}; the bitmap keeps what is missing.")
            return int(job.get("offset", 0))
        if time.monotonic() > deadline:
            _dismiss(qmp_path, jid)
            raise HypervisorError(f"The resync of disk {disk} ({qmp_path}) did not finish "
                                  f"within {timeout:g} s.")
        time.sleep(POLL / 4)


def _bitmap_resync(qmp_path: Path | str, disk: int, timeout: float) -> tuple[int, float]:
    """R2 on a connected ``repl<i>``: passes while the guest runs (with ``on-success``
    the bitmap then holds only writes made during the pass), a last one with the guest
    paused, and the new ``sync: none`` mirror started before it resumes.  Returns the
    bytes copied and the pause in ms."""
    copied = _run_backup(qmp_path, disk, timeout)
    # Further passes while the guest writes fast, so that the paused pass is short.
    for _ in range(3):
        if _dirty_bytes(qmp_path, disk) < 16 << 20:
            break
        copied += _run_backup(qmp_path, disk, timeout)
    t_pause = time.monotonic()
    was_running = freeze(qmp_path)
    try:
        copied += _run_backup(qmp_path, disk, timeout)
        qmp_call(qmp_path, "blockdev-mirror", mirror_args(disk, "none"))
        wait_ready(qmp_path, disk, timeout)
    finally:
        if was_running:
            thaw(qmp_path)
    return copied, (time.monotonic() - t_pause) * 1000


def _dirty_bytes(qmp_path: Path | str, disk: int) -> int:
    node = _nodes(qmp_path).get(f"disk{disk}") or {}
    return sum(int(b.get("count", 0)) for b in node.get("dirty-bitmaps", [])
               if b.get("name") == bitmap_name(disk))


__all__ = [
    "MirrorState",
    "NbdTarget",
    "ResyncResult",
    "checkpoint",
    "freeze",
    "probe",
    "protect",
    "resync",
    "status",
    "thaw",
    "unprotect",
    "wait_ready",
    "watch_errors",
]
