"""Replication of a disk started as a quorum (``haven.hypervisor.qemu.quorum``), the way
``drbd`` instances run: against real QEMU (TCG), a real qemu-storage-daemon and the test
guest's ``diskw`` writer (see test_replication.py for the rig).

The property the quorum exists for: no write is acknowledged to the guest that the
replica lacks, even when the peer dies in the middle of a stream of synced writes.
``test_the_mirror_alone_acknowledges_writes_the_replica_lacks`` shows the same fault
breaking it for a disk replicated by the mirror alone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest
from test_replication import (  # type: ignore[import-not-found]
    BLOCKS,
    DISK,
    Console,
    Rig,
    free_port,
    guest,
    rig,
    seqs_in,
)

from haven.daemon.mirror_watch import MirrorWatch
from haven.hypervisor.base import DiskSpec, HypervisorError, VmSpec
from haven.hypervisor.qemu import replication as repl
from haven.hypervisor.qemu.cmdline import EVENTS_QMP_SUFFIX
from haven.hypervisor.qemu.qmp import qmp_call

__all__ = ["guest", "rig"]  # fixtures, used by name

pytestmark = pytest.mark.integration


def boot_replicated(r: Rig) -> Console:
    kernel, initrd = r.guest
    r.hv.start(VmSpec(name=r.name, uuid=str(uuid.uuid4()), memory=128, accel="tcg",
                      disks=(DiskSpec(0, str(r.prim), replicated=True, size=DISK),),
                      kernel_path=str(kernel), initrd_path=str(initrd),
                      kernel_args="console=ttyS0 quiet haven.nomount"))
    console = Console(r.hv.console_path(r.name))
    console.wait_for(b"GUEST-READY", 60)
    return console


def protect_and_promote(r: Rig) -> repl.NbdTarget:
    target = r.export()
    repl.protect(r.qmp, 0, target)
    repl.wait_ready(r.qmp, 0, timeout=30)
    assert repl.promote(r.qmp, 0) is True
    return target


def wait_status(r: Rig, wanted: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := qmp_call(r.qmp, "query-status")["status"]) != wanted:
        assert time.monotonic() < deadline, f"the guest is {got}, not {wanted}"
        time.sleep(0.005)


def test_a_replicated_disk_starts_unprotected_and_is_protected_through_its_quorum(
        rig: Rig) -> None:
    console = boot_replicated(rig)
    st = repl.status(rig.qmp)
    assert list(st) == [0] and (st[0].phase, st[0].slot, st[0].job_id) == (
        "none", "unprotected", "")
    protect_and_promote(rig)
    st = repl.status(rig.qmp)[0]
    assert (st.phase, st.slot, st.job_id) == ("ready", "replica", "q0")
    assert qmp_call(rig.qmp, "query-block-jobs") == []  # the mirror ended in sync
    assert repl.promote(rig.qmp, 0) is False  # nothing left to do
    assert "1+0 records out" in console.run(
        "dd if=/dev/urandom of=/dev/vda bs=1M count=1 seek=40 oflag=direct")
    assert rig.identical()
    assert repl.checkpoint(rig.qmp, 0) is True
    ready = repl.wait_ready(rig.qmp, 0, timeout=1)
    assert ready.job_id == "q0"


def kill_the_peer_under_a_writer(r: Rig, console: Console) -> list[int]:
    """SIGKILL the replica's storage daemon while the guest streams synced writes;
    the writes acknowledged once the guest stopped writing (or 3 s passed)."""
    console.send(f"diskw /dev/vda 0 {BLOCKS}")
    console.wait_acks(300)
    os.kill(r.exports.list()["prim"].pid, signal.SIGKILL)
    n, deadline = -1, time.monotonic() + 3.0
    while time.monotonic() < deadline and n != (n := len(console.acks())):
        time.sleep(0.5)
    r.exports.stop("prim")  # reaped: its image is free to read
    acked: list[int] = console.acks()
    return acked


def test_no_write_is_acknowledged_that_the_replica_lacks(rig: Rig) -> None:
    console = boot_replicated(rig)
    protect_and_promote(rig)
    acked = kill_the_peer_under_a_writer(rig, console)
    # QEMU stopped the guest on the failed write, before acknowledging it.
    assert qmp_call(rig.qmp, "query-status")["status"] == "io-error"
    st = repl.status(rig.qmp)[0]
    assert (st.phase, st.slot, st.io_status) == ("failed", "replica", "failed")
    found = seqs_in(rig.sec)
    assert acked and set(acked) <= found, \
        f"acknowledged but not on the replica: {sorted(set(acked) - found)[:10]}"


def test_the_mirror_alone_acknowledges_writes_the_replica_lacks(rig: Rig) -> None:
    # The gap the quorum closes: the same fault on a disk replicated by the mirror job
    # alone.  The guest is told "written" for blocks its replica never got.
    console = rig.boot(rig.name, rig.prim)
    repl.protect(rig.qmp, 0, rig.export())
    repl.wait_ready(rig.qmp, 0, timeout=30)
    acked = kill_the_peer_under_a_writer(rig, console)
    assert qmp_call(rig.qmp, "query-status")["status"] == "running"
    assert set(acked) - seqs_in(rig.sec)


def test_the_watcher_takes_a_lost_replica_out_and_a_bitmap_resync_puts_it_back(
        rig: Rig) -> None:
    console = boot_replicated(rig)
    protect_and_promote(rig)
    repl.checkpoint(rig.qmp, 0)
    heard: list[tuple[str, list[int], bool]] = []
    got = threading.Event()

    def on_error(name: str, disks: list[int], frozen: bool) -> None:
        heard.append((name, disks, frozen))
        got.set()

    watch = MirrorWatch(on_error)
    watch.follow({rig.name: rig.hv.path(rig.name, EVENTS_QMP_SUFFIX)})
    try:
        time.sleep(0.3)  # connected
        console.send(f"diskw /dev/vda 0 {BLOCKS} 1000000 2 &")
        console.wait_acks(50)
        os.kill(rig.exports.list()["prim"].pid, signal.SIGKILL)
        assert got.wait(10), "no replication error was reported"
        assert heard[0] == (rig.name, [0], True)
        st = repl.status(rig.qmp)[0]
        assert (st.phase, st.slot) == ("failed", "lost")
        # Paused until the caller (the agent, once etcd says Outdated) resumes it.
        acks = len(console.acks())
        time.sleep(0.5)
        assert len(console.acks()) == acks
        assert qmp_call(rig.qmp, "query-status")["status"] != "running"
        repl.thaw(rig.qmp)
        console.wait_acks(acks + 50)  # degraded: writes go on, into the bitmap
        assert len(heard) == 1
    finally:
        watch.stop()
    rig.exports.stop("prim")
    result = repl.resync(rig.qmp, 0, rig.export(free_port()))
    assert result.mode == "bitmap" and 0 < result.bytes_copied < DISK // 4, result
    st = repl.status(rig.qmp)[0]
    assert (st.phase, st.slot) == ("ready", "replica")
    assert qmp_call(rig.qmp, "query-block-jobs") == []
    console.wait_acks(len(console.acks()) + 50)
    console.run("killall diskw")
    assert rig.identical()


def test_a_hung_peer_blocks_the_writes_until_severed_which_pauses_the_guest(
        rig: Rig) -> None:
    console = boot_replicated(rig)
    target = protect_and_promote(rig)
    console.send(f"diskw /dev/vda 0 {BLOCKS} 1000000 2 &")
    console.wait_acks(100)
    pid = rig.exports.list()["prim"].pid
    os.kill(pid, signal.SIGSTOP)  # TCP still up, no NBD replies
    try:
        time.sleep(1.5)
        acks = len(console.acks())
        st = repl.status(rig.qmp)[0]
        # Nothing in QEMU calls it failed; the disk just stopped completing I/O.
        assert st.phase == "ready" and st.idle_s >= 1.0
        time.sleep(0.5)
        assert len(console.acks()) == acks
        with pytest.raises(HypervisorError, match="not reachable"):
            repl.probe(target, timeout=1.0)
        assert repl.sever(rig.qmp, 0)
        st = repl.status(rig.qmp)[0]
        assert (st.phase, st.slot) == ("failed", "lost")
        assert qmp_call(rig.qmp, "query-status")["status"] != "running"
    finally:
        os.kill(pid, signal.SIGCONT)
    repl.thaw(rig.qmp)
    console.wait_acks(acks + 50)
    rig.exports.stop("prim")
    result = repl.resync(rig.qmp, 0, rig.export(free_port()), resume_timeout=0)
    assert result.mode == "bitmap" and repl.status(rig.qmp)[0].phase == "ready"
    console.run("killall diskw")
    assert rig.identical()


def test_hand_over_unprotect_and_a_dead_connection_on_a_quorum_disk(rig: Rig) -> None:
    console = boot_replicated(rig)
    target = protect_and_promote(rig)
    # The peer's daemon restarts while the guest writes nothing: the connection is dead
    # although the slot holds it; refresh reconnects in place, nothing to copy.
    rig.exports.stop("prim")
    target = rig.export()
    vm = rig.hv.list()[rig.name]
    assert repl.refresh(rig.qmp, {0: target}, vm.pid) == [0]
    assert repl.refresh(rig.qmp, {0: target}, vm.pid) == []  # established now
    assert "1+0 records out" in console.run(
        "dd if=/dev/urandom of=/dev/vda bs=1M count=1 seek=20 oflag=direct")
    assert repl.status(rig.qmp)[0].phase == "ready"
    assert rig.identical()

    repl.freeze(rig.qmp)  # a migration's pre-switchover: the guest is paused
    repl.hand_over(rig.qmp, [0])
    st = repl.status(rig.qmp, [0])[0]
    assert (st.phase, st.slot) == ("none", "unprotected")
    nodes = {n["node-name"] for n in qmp_call(rig.qmp, "query-named-block-nodes")}
    assert "repl0" not in nodes
    repl.thaw(rig.qmp)
    assert repl.unprotect(rig.qmp, 0) is False  # already unprotected
    protect_and_promote(rig)
    assert repl.unprotect(rig.qmp, 0) is True
    assert repl.status(rig.qmp, [0])[0].slot == "unprotected"
    assert rig.identical()
