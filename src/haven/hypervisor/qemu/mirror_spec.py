"""What replication is made of, without I/O: the names of the QEMU objects of a
replicated disk, the QMP arguments that create them, and the decisions read from QEMU's
answers (a job's phase, the resync mode, a stall).  :mod:`.replication` acts on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from haven.hypervisor.qemu.exports import PSK_USER, TLS_PRIORITY

Phase = Literal["syncing", "ready", "failed", "none"]
ResyncMode = Literal["resume", "bitmap", "full"]

# Names of the QEMU objects of disk i (str.format templates).
JOB, RESYNC_JOB, NODE, BITMAP, TLS = "mirror{}", "resync{}", "repl{}", "repl{}-dirty", "repl{}-tls"
BITMAP_GRANULARITY = 65536


@dataclass(frozen=True)
class NbdTarget:
    """A replica's export: ``export`` is its NBD name (the disk uuid); ``psk_dir`` holds
    ``keys.psk`` (:func:`.exports.write_psk_dir`) when the export requires TLS."""

    host: str
    port: int
    export: str
    psk_dir: str | None = None
    psk_user: str = PSK_USER


@dataclass(frozen=True)
class MirrorState:
    """One disk's replication job.  ``phase``: ``syncing`` (initial sync or resync),
    ``ready`` (every write reaches both sides), ``failed`` (paused or I/O error: the peer
    is lost), ``none`` (no job).  ``offset``/``length``: the job's progress in bytes.
    ``slot``: for a disk started as a quorum (:mod:`.quorum`), what its second child is
    (``replica``, ``unprotected``, ``lost``); "" for a disk without one.  ``idle_s``:
    seconds since the disk last completed an I/O (0 when unknown): with a quorum, a
    hung peer shows as a disk that stopped completing anything."""

    disk: int
    job_id: str
    phase: Phase
    offset: int = 0
    length: int = 0
    io_status: str = "ok"
    paused: bool = False
    slot: str = ""
    idle_s: float = 0.0

    @property
    def pending(self) -> int:
        """Bytes the job has taken on but not yet written to the peer."""
        return max(self.length - self.offset, 0)

    @property
    def percent(self) -> float:
        """Progress of the sync, 0-100."""
        if self.phase == "ready":
            return 100.0
        return 100.0 * self.offset / self.length if self.length else 0.0


@dataclass(frozen=True)
class ResyncResult:
    """``bytes_copied`` comes from the jobs' progress counters (guest writes mirrored
    meanwhile included); ``pause_ms`` is the guest pause of a bitmap resync."""

    mode: ResyncMode
    bytes_copied: int
    seconds: float
    pause_ms: float = 0.0


# -- QMP arguments and decisions (pure) ---------------------------------------------------

def disk_of_job(jid: str) -> int | None:
    """The disk of a replication job id (``mirror3`` -> 3), else None."""
    for prefix in ("mirror", "resync"):
        if jid.startswith(prefix) and jid[len(prefix):].isdigit():
            return int(jid[len(prefix):])
    return None


def nbd_node_args(disk: int, target: NbdTarget) -> dict[str, Any]:
    """``blockdev-add`` of the replica's nbd node.  ``reconnect-delay`` 0: with a delay
    every guest write stalls that long when the peer dies (2.1 s measured with 2)."""
    args: dict[str, Any] = {
        "driver": "nbd", "node-name": NODE.format(disk), "export": target.export,
        "server": {"type": "inet", "host": target.host, "port": str(target.port)},
        "reconnect-delay": 0}
    if target.psk_dir is not None:
        args["tls-creds"] = TLS.format(disk)
    return args


def tls_object_args(disk: int, target: NbdTarget) -> dict[str, Any]:
    """``object-add`` of the client's TLS-PSK credentials for ``target``."""
    return {"qom-type": "tls-creds-psk", "id": TLS.format(disk), "endpoint": "client",
            "dir": target.psk_dir, "username": target.psk_user, "priority": TLS_PRIORITY}


def mirror_args(disk: int, sync: Literal["full", "none"], source: str = "") -> dict[str, Any]:
    """``blockdev-mirror`` disk<i> (or ``source``) -> repl<i>: a guest write completes
    once both sides have it (``write-blocking``); a target error pauses the job, not the
    guest; the ended job stays until dismissed so that its outcome can be read.  A
    quorum disk mirrors from its quorum node: QEMU mirrors only from a root node."""
    return {"job-id": JOB.format(disk), "device": source or f"disk{disk}",
            "target": NODE.format(disk),
            "sync": sync, "copy-mode": "write-blocking", "on-target-error": "stop",
            "auto-dismiss": False}


def backup_args(disk: int) -> dict[str, Any]:
    """``blockdev-backup`` of the blocks in the resync bitmap.  ``on-success``: the
    copied bits are cleared and writes made meanwhile stay; on failure nothing is."""
    return {"job-id": RESYNC_JOB.format(disk), "device": f"disk{disk}",
            "target": NODE.format(disk), "sync": "bitmap", "bitmap": BITMAP.format(disk),
            "bitmap-mode": "on-success", "auto-dismiss": False}


def bitmap_args(disk: int, fmt: str) -> dict[str, Any]:
    """``block-dirty-bitmap-add`` of the resync bitmap; persistent on qcow2, where it
    survives a clean QEMU restart (raw files cannot store one)."""
    return {"node": f"disk{disk}", "name": BITMAP.format(disk),
            "granularity": BITMAP_GRANULARITY, "persistent": fmt == "qcow2"}


def phase_of(job: dict[str, Any]) -> Phase:
    """The phase of a ``query-block-jobs`` entry.  QEMU's ``ready`` stays true while a
    ready job is paused after an error, so ready also needs running and io-status ok."""
    if job.get("status") in ("concluded", "null", "aborting", "pending", "waiting"):
        return "failed" if job.get("error") else "none"
    if job.get("io-status", "ok") != "ok" or job.get("paused"):
        return "failed"
    if job.get("type") == "mirror" and job.get("ready") and job.get("status") == "ready":
        return "ready"
    return "syncing"


def choose_mode(job: dict[str, Any] | None, same_target: bool, has_bitmap: bool,
                trust_bitmap: bool) -> ResyncMode:
    """The resync mode (see :func:`resync`).  The bitmap covers what the replica lacks
    only if a full sync completed after it was created: a job's ``ready`` (kept while
    paused) says so; without a job the caller does (``trust_bitmap``)."""
    if job is not None and same_target and phase_of(job) != "none":
        return "resume"
    synced_once = bool(job.get("ready")) if job is not None else trust_bitmap
    return "bitmap" if has_bitmap and synced_once else "full"


def stalled(before: MirrorState, after: MirrorState) -> bool:
    """True if the peer made no progress between two :func:`status` snapshots taken an
    interval apart (say 5 s): the same live job, the same offset, bytes pending.  A hung
    or silently partitioned peer does not fail the job (7.2's NBD client has no request
    timeout, TCP retransmits for ~15 min): it blocks every guest write.  :func:`sever`
    it.  An idle guest has nothing pending and is never stalled."""
    return (after.phase in ("ready", "syncing") and after.job_id == before.job_id != ""
            and after.offset == before.offset and before.pending > 0 and after.pending > 0)


def target_of(node: dict[str, Any] | None) -> tuple[str, int, str] | None:
    """(host, port, export) of an nbd node of ``query-named-block-nodes``, whose file
    name is ``nbd://host:port/export``."""
    if node is None or node.get("drv") != "nbd":
        return None
    hostport, _, export = str(node.get("file", "")).partition("://")[2].partition("/")
    host, _, port = hostport.rpartition(":")
    return (host.strip("[]"), int(port), export) if port.isdigit() else None


def parse_block_jobs(reply: Any) -> dict[int, MirrorState]:
    """The replication job of each disk in a ``query-block-jobs`` reply: the first job
    of a disk that is not ``none`` (used by ``replication.status`` and the metrics)."""
    found: dict[int, MirrorState] = {}
    for job in reply if isinstance(reply, list) else ():
        if not isinstance(job, dict):
            continue
        jid = str(job.get("device", ""))
        disk = disk_of_job(jid)
        if disk is not None and (disk not in found or found[disk].phase == "none"):
            found[disk] = MirrorState(disk, jid, phase_of(job), int(job.get("offset", 0)),
                                      int(job.get("len", 0)), str(job.get("io-status", "ok")),
                                      bool(job.get("paused", False)))
    return found
