"""What QEMU counts about its VMs' I/O, for monitoring: block device statistics and the
replication jobs' progress, read from every VM's *status* monitor (never the command
monitor, so that a scrape never waits behind a migration or a resync).

    io_stats(sockets, timeout)  -> {name: VmIo}    three QMP commands per VM, all VMs at once
    parse_blockstats(reply)     -> (DiskIo, ...)    pure
    quorum.states(slots, jobs)  -> {disk: MirrorState}  pure (shared with
                                                        replication.status)

A VM whose monitor does not answer within ``timeout`` is left out of the answer (the
caller counts it); nothing here raises for one VM.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haven.hypervisor.qemu.mirror_spec import MirrorState
from haven.hypervisor.qemu.qmp import QmpError, qmp_call_many
from haven.hypervisor.qemu.quorum import parse_slots, states

# The guest's disk i is the virtio-blk device ``vblk<i>`` on the format node ``disk<i>``
# (cmdline.disk_args).  The device's path is the stable key: while a mirror runs, the
# root node of its backend is the mirror's filter, and a replicated disk's is its
# quorum ``q<i>``, not ``disk<i>``.
_QDEV = re.compile(r"/vblk(\d+)(/|$)")
_NODE = re.compile(r"^disk(\d+)$")


@dataclass(frozen=True)
class DiskIo:
    """One guest disk's counters since its QEMU started (``query-blockstats``)."""

    disk: int
    read_bytes: int = 0
    written_bytes: int = 0
    reads: int = 0
    writes: int = 0
    flushes: int = 0
    read_seconds: float = 0.0
    write_seconds: float = 0.0
    flush_seconds: float = 0.0
    failed: int = 0  # failed reads, writes and flushes


@dataclass(frozen=True)
class VmIo:
    """One VM's disks and its replication jobs (disk index -> state)."""

    disks: tuple[DiskIo, ...] = ()
    mirrors: dict[int, MirrorState] = field(default_factory=dict)


def _disk_index(entry: Mapping[str, Any]) -> int | None:
    m = _QDEV.search(str(entry.get("qdev", "")))
    if m is None:
        m = _NODE.match(str(entry.get("node-name", "")))
    return int(m.group(1)) if m else None


def parse_blockstats(reply: Any) -> tuple[DiskIo, ...]:
    """The guest disks of a ``query-blockstats`` reply, by index (other devices, such
    as a CD-ROM without a ``vblk`` id, are left out)."""
    out: dict[int, DiskIo] = {}
    for entry in reply if isinstance(reply, list) else ():
        if not isinstance(entry, dict):
            continue
        disk = _disk_index(entry)
        st = entry.get("stats")
        if disk is None or not isinstance(st, dict) or disk in out:
            continue

        def n(key: str, st: dict[str, Any] = st) -> int:
            return int(st.get(key) or 0)

        out[disk] = DiskIo(
            disk=disk, read_bytes=n("rd_bytes"), written_bytes=n("wr_bytes"),
            reads=n("rd_operations"), writes=n("wr_operations"),
            flushes=n("flush_operations"), read_seconds=n("rd_total_time_ns") / 1e9,
            write_seconds=n("wr_total_time_ns") / 1e9,
            flush_seconds=n("flush_total_time_ns") / 1e9,
            failed=n("failed_rd_operations") + n("failed_wr_operations")
            + n("failed_flush_operations"))
    return tuple(out[i] for i in sorted(out))


def io_stats(sockets: Mapping[str, Path], timeout: float = 0.5) -> dict[str, VmIo]:
    """``query-blockstats`` and ``query-block-jobs`` on the status monitor of every VM
    (``sockets``: name -> its ``.qmp-status`` path), concurrently.  VMs that did not
    answer both are left out."""
    names = sorted(sockets)
    paths = [sockets[n] for n in names]
    blocks = qmp_call_many(paths, "query-blockstats", timeout=timeout)
    jobs = qmp_call_many(paths, "query-block-jobs", timeout=timeout)
    graphs = qmp_call_many(paths, "x-debug-query-block-graph", timeout=timeout)
    out: dict[str, VmIo] = {}
    for name, b, j, g in zip(names, blocks, jobs, graphs, strict=True):
        if isinstance(b, QmpError) or isinstance(j, QmpError):
            continue
        # A replicated disk in sync has no job: its quorum's slot says it is protected.
        slots = {} if isinstance(g, QmpError) else parse_slots(g)
        out[name] = VmIo(parse_blockstats(b), states(slots, j))
    return out
