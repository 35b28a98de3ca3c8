"""Migrating onto a replica holder whose storage daemon restarted while the guest was
idle (issue 10: "Migrating back fails every time").

The primary's mirror stays ``ready`` on a dead NBD connection (QEMU's client notices
only at its next request); a migration's completion flushes every node first, that
flush fails with EIO and QEMU fails the migration: "Error in migration completion:
Input/output error".  ``replication.refresh`` reconnects such a mirror in sync first.
Helpers and fixtures come from test_migration (same directory).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal

from test_migration import (  # type: ignore[import-not-found]
    LO,
    NAME,
    Nodes,
    boot,
    free_port,
    guest,
    incoming,
    nodes,
    spec,
    status,
)

from haven.daemon.procs import pid_alive
from haven.hypervisor.base import DiskSpec
from haven.hypervisor.qemu import replication
from haven.hypervisor.qemu.exports import ExportDisk, wait_exited
from haven.hypervisor.qemu.migration import (
    drbd_switchover,
    finish_source,
    migrate,
)
from haven.hypervisor.qemu.migration_destination import wait_destination

__all__ = ["guest", "nodes"]  # fixtures


def test_a_mirror_left_on_a_dead_connection_is_reconnected_and_the_migration_works(
        nodes: Nodes, guest: tuple[object, object]) -> None:
    prim, sec = nodes.tmp / "prim.raw", nodes.tmp / "sec.raw"
    for p in (prim, sec):
        p.write_bytes(b"")
        os.truncate(p, 32 << 20)
    vm_a = spec(guest, prim)  # type: ignore[arg-type]
    console_a, _ = boot(nodes.a, vm_a)
    port = free_port()
    export = [ExportDisk("d0", str(sec))]
    nodes.exports_b.ensure(NAME, export, LO, port)
    qmp_a = nodes.a.qmp_path(NAME)
    target = replication.NbdTarget(LO, port, "d0")
    replication.protect(qmp_a, 0, target)
    replication.wait_ready(qmp_a, 0, 60)
    pid_a = nodes.a.list()[NAME].pid
    assert replication.peer_connected(pid_a, port)
    assert replication.refresh(qmp_a, {0: target}, pid_a) == []  # live: left alone
    console_a.send("diskw /dev/vda 0 4096 200 0; echo WROTE-$((1+1))")
    console_a.wait("^WROTE-2$", 60)

    # The secondary's storage daemon dies and comes back while the guest is idle.
    qsd = nodes.exports_b.list()[NAME].pid
    os.kill(qsd, signal.SIGKILL)
    assert wait_exited(qsd, 5)
    nodes.exports_b.ensure(NAME, export, LO, port)
    assert replication.status(qmp_a, [0])[0].phase == "ready"  # QEMU has not noticed
    assert not replication.peer_connected(pid_a, port)

    assert replication.refresh(qmp_a, {0: target}, pid_a) == [0]
    assert replication.peer_connected(pid_a, port)
    assert replication.wait_ready(qmp_a, 0, 10).job_id == "mirror0"
    before = len(console_a.lines)
    console_a.send("diskw /dev/vda 4096 4096 200 0; echo AGAIN-$((1+1))")
    console_a.wait("^AGAIN-2$", 60)  # mirrored through the new connection

    uri, console_b, _ = incoming(nodes, dataclasses.replace(vm_a, disks=(
        DiskSpec(0, str(sec)),)), bitmaps=(0,))
    switch = drbd_switchover(qmp_a, [0], lambda: nodes.exports_b.stop(NAME))
    migrate(qmp_a, uri, before_switchover=switch)  # raised EIO without the refresh
    assert wait_destination(nodes.b, NAME) == "running"
    finish_source(qmp_a)
    nodes.a.stop(NAME, timeout=10)
    assert status(nodes.a) == "gone" and not pid_alive(qsd)
    console_b.send("echo ON-B-$((6*7))")
    console_b.wait("^ON-B-42$", 30)
    nodes.b.stop(NAME, timeout=60)
    # Every write acknowledged on a, before the loss and after the reconnection, is in
    # the replica that b now runs on.
    acked = [(block0 + int(t.split()[1]), int(t.split()[1]))
             for block0, lines in ((0, console_a.lines[:before]),
                                   (4096, console_a.lines[before:]))
             for _, t in lines if re.fullmatch(r"A \d+", t)]
    data = sec.read_bytes()
    missing = [(b, s) for b, s in acked
               if data[b * 4096:b * 4096 + 16] != f"SEQ {s:012d}".encode()]
    assert len(acked) == 400 and missing == []
