"""Synchronous replication against real QEMU (TCG) and a real qemu-storage-daemon.

The primary VM is started by the driver from the test guest (``guest/build-guest.sh``)
with a raw, unformatted disk and ``haven.nomount``; the guest's ``diskw`` writes 4 KiB
O_DIRECT|O_DSYNC blocks holding ``SEQ <n>`` and prints ``A <n>`` on the serial console
once each write has returned (acknowledged).  A thread drains the console all the time:
an unread console socket fills after ~300 bytes and then stalls the guest writer.  The
replica is exported on 127.0.0.1 (a free high port).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from haven.daemon.mirror_watch import MirrorWatch
from haven.daemon.procs import pid_alive
from haven.hypervisor.base import DiskSpec, HypervisorError, VmSpec
from haven.hypervisor.qemu import QemuHypervisor
from haven.hypervisor.qemu import replication as repl
from haven.hypervisor.qemu.cmdline import EVENTS_QMP_SUFFIX
from haven.hypervisor.qemu.exports import ExportDisk, ExportManager, new_psk, write_psk_dir
from haven.hypervisor.qemu.qmp import qmp_call

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None
                       or shutil.which("qemu-storage-daemon") is None,
                       reason="qemu-system-x86_64 / qemu-storage-daemon are not installed"),
]

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = Path(os.environ.get("HAVEN_GUEST_DIR", "/var/cache/haven/guest"))
MIB = 1 << 20
DISK = 64 * MIB
BLOCKS = DISK // 4096
SEQ_RE = re.compile(rb"^SEQ (\d{12})\n")


@pytest.fixture(scope="module")
def guest() -> tuple[Path, Path]:
    """(vmlinuz, initrd.gz), built by guest/build-guest.sh when missing."""
    kernel, initrd = GUEST_DIR / "vmlinuz", GUEST_DIR / "initrd.gz"
    if not (kernel.exists() and initrd.exists()):
        proc = subprocess.run(["bash", str(REPO / "guest" / "build-guest.sh")],
                              capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            pytest.fail(f"build-guest.sh failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return kernel, initrd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Console:
    """The guest's serial shell, drained by a thread; ``A <n>`` lines are collected."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.buf = b""
        self.cond = threading.Condition()
        self.closed = False
        self.n = 0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            with self.cond:
                self.buf += chunk
                self.closed = not chunk
                self.cond.notify_all()
            if not chunk:
                return

    def wait_for(self, pattern: bytes, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: pattern in self.buf or self.closed, timeout) \
                    or pattern not in self.buf:
                raise AssertionError(f"no {pattern!r} on the console within {timeout} s: "
                                     f"{self.buf[-300:]!r}")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def run(self, command: str, timeout: float = 30) -> str:
        """Run a command line; its output."""
        self.n += 1
        end = f"__END{self.n}__".encode()
        with self.cond:
            start = len(self.buf)
        self.send(f"{command}; echo {end.decode()}")
        self.wait_for(end, timeout)
        with self.cond:
            return self.buf[start:self.buf.index(end, start)].decode(errors="replace")

    def acks(self) -> list[int]:
        with self.cond:
            return [int(n) for n in re.findall(rb"\bA (\d+)\r?\n", self.buf)]

    def wait_acks(self, count: int, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while (n := len(self.acks())) < count:
            assert time.monotonic() < deadline, f"only {n} acknowledged writes"
            time.sleep(0.02)
        return n

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@dataclass
class Rig:
    """One primary VM with disk ``prim`` and its replica ``sec`` exported on ``port``."""

    tmp: Path
    hv: QemuHypervisor
    exports: ExportManager
    guest: tuple[Path, Path]
    prim: Path
    sec: Path
    port: int
    name: str = "prim"

    @property
    def qmp(self) -> Path:
        return self.hv.qmp_path(self.name)

    def boot(self, name: str, disk: Path) -> Console:
        kernel, initrd = self.guest
        self.hv.start(VmSpec(name=name, uuid=str(uuid.uuid4()), memory=128, accel="tcg",
                             disks=(DiskSpec(0, str(disk)),), kernel_path=str(kernel),
                             initrd_path=str(initrd),
                             kernel_args="console=ttyS0 quiet haven.nomount"))
        console = Console(self.hv.console_path(name))
        console.wait_for(b"GUEST-READY", 60)
        return console

    def bare(self, name: str, disk: Path, fmt: Literal["raw", "qcow2"] = "raw") -> None:
        """A VM without kernel (SeaBIOS idles): enough where no guest has to write."""
        self.hv.start(VmSpec(name=name, uuid=str(uuid.uuid4()), memory=64, accel="tcg",
                             disks=(DiskSpec(0, str(disk), fmt),)))

    def export(self, port: int | None = None, psk: str | None = None) -> repl.NbdTarget:
        self.exports.ensure("prim", [ExportDisk("d0", str(self.sec))], "127.0.0.1",
                            port or self.port, psk)
        psk_dir = str(write_psk_dir(self.tmp / "client-tls", psk)) if psk else None
        return repl.NbdTarget("127.0.0.1", port or self.port, "d0", psk_dir)

    def identical(self) -> bool:
        """Both images equal, compared with the guest paused (drained)."""
        was_running = repl.freeze(self.qmp)
        try:
            return digest(self.prim) == digest(self.sec)
        finally:
            if was_running:
                repl.thaw(self.qmp)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def image(path: Path, random_mib: int = 0) -> Path:
    """A sparse raw image of DISK bytes whose first ``random_mib`` MiB are random."""
    with open(path, "wb") as f:
        f.write(os.urandom(random_mib * MIB))
        f.truncate(DISK)
    return path


def our_processes(tmp: Path) -> list[int]:
    """QEMU and storage-daemon processes whose command line mentions ``tmp``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "qemu" in cmd and str(tmp) in cmd and pid_alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


@pytest.fixture
def rig(tmp_path: Path, guest: tuple[Path, Path]) -> Iterator[Rig]:
    r = Rig(tmp_path, QemuHypervisor(tmp_path / "run"), ExportManager(tmp_path / "exports"),
            guest, image(tmp_path / "prim.raw", random_mib=16), image(tmp_path / "sec.raw"),
            free_port())
    yield r
    for name in list(r.hv.list()):
        r.hv.kill(name)
    for key in list(r.exports.list()):
        r.exports.stop(key)
    assert our_processes(tmp_path) == [], "a QEMU or storage daemon of this test survived"


def seqs_in(path: Path) -> set[int]:
    """Every ``SEQ <n>`` block of a diskw run found in the image."""
    found = set()
    with open(path, "rb") as f:
        for _ in range(BLOCKS):
            m = SEQ_RE.match(f.read(4096))
            if m:
                found.add(int(m.group(1)))
    return found


# -- (a) initial sync ------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls-psk"])
def test_initial_sync_becomes_ready_and_the_replica_equals_the_disk(rig: Rig, tls: bool) -> None:
    console = rig.boot(rig.name, rig.prim)
    target = rig.export(psk=new_psk() if tls else None)
    assert rig.exports.list()["prim"].tls is tls
    t0 = time.monotonic()
    repl.protect(rig.qmp, 0, target)
    state = repl.wait_ready(rig.qmp, 0, timeout=30)
    assert time.monotonic() - t0 < 10
    assert (state.phase, state.percent, state.offset) == ("ready", 100.0, state.length)
    assert repl.status(rig.qmp) == {0: state}
    # A write made while mirrored is on the replica; after a pause both are identical.
    assert "1+0 records out" in console.run(
        "dd if=/dev/urandom of=/dev/vda bs=1M count=1 seek=40 oflag=direct")
    assert rig.identical()
    assert repl.checkpoint(rig.qmp, 0) is True
    assert qmp_call(rig.qmp, "query-status")["status"] == "running"


# -- (b) primary crash -------------------------------------------------------------------------

def test_every_acknowledged_write_survives_a_primary_crash_and_the_replica_boots(
        rig: Rig) -> None:
    console = rig.boot(rig.name, rig.prim)
    repl.protect(rig.qmp, 0, rig.export())
    repl.wait_ready(rig.qmp, 0, timeout=30)
    console.send(f"diskw /dev/vda 0 {BLOCKS}")
    console.wait_acks(500)
    rig.hv.kill(rig.name)  # SIGKILL mid-write
    with console.cond:
        console.cond.wait_for(lambda: console.closed, 5)
    acked = console.acks()
    assert len(acked) >= 500 and acked == list(range(len(acked)))
    rig.exports.stop("prim")  # releases the replica's image lock

    found = seqs_in(rig.sec)
    assert set(acked) <= found, f"lost acknowledged writes: {sorted(set(acked) - found)[:10]}"
    # diskw writes one block at a time: the replica holds a prefix, at most the few
    # writes that were done but whose "A" had not reached the console yet beyond it.
    assert found == set(range(len(found))) and len(found) - len(acked) < 50

    survivor = rig.boot("survivor", rig.sec)
    last = acked[-1]
    out = survivor.run(f"dd if=/dev/vda bs=4096 skip={last} count=1 2>/dev/null | head -c 16")
    assert f"SEQ {last:012d}" in out


# -- (c) secondary failure and resync ----------------------------------------------------------

def watch_errors_into(monitor: Path, into: list[list[int]]) -> None:
    into.append(repl.watch_errors(monitor, 10))


def protected_writer(rig: Rig) -> Console:
    """The guest booted, its disk replicated and in sync (bitmap cleared), and writing
    4 KiB blocks every 2 ms: a steady writer that leaves most of the disk untouched."""
    console = rig.boot(rig.name, rig.prim)
    repl.protect(rig.qmp, 0, rig.export())
    repl.wait_ready(rig.qmp, 0, timeout=30)
    repl.checkpoint(rig.qmp, 0)
    console.send(f"diskw /dev/vda 0 {BLOCKS} 1000000 2 &")
    console.wait_acks(100)
    return console


def test_the_guest_keeps_writing_without_its_secondary_and_resyncs_only_what_changed(
        rig: Rig) -> None:
    console = protected_writer(rig)
    status_monitor = rig.hv.path(rig.name, ".qmp-status")

    for outage, port in enumerate((rig.port, free_port())):
        errors: list[list[int]] = []
        watcher = threading.Thread(target=watch_errors_into, args=(status_monitor, errors))
        watcher.start()
        time.sleep(0.2)  # the watcher is connected
        pid = rig.exports.list()["prim"].pid
        acks_at_kill = len(console.acks())
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while repl.status(rig.qmp)[0].phase != "failed":
            assert time.monotonic() - t_kill < 1.0, "the mirror did not notice the peer loss"
            time.sleep(0.005)
        watcher.join(5)
        assert errors == [[0]]
        console.wait_acks(acks_at_kill + 100, timeout=10)  # the guest keeps writing
        assert qmp_call(rig.qmp, "query-status")["status"] == "running"

        # The export comes back: on the same port (R1, resume), then on a new one (R2).
        rig.exports.stop("prim")
        result = repl.resync(rig.qmp, 0, rig.export(port))
        assert result.mode == ("resume" if outage == 0 else "bitmap")
        assert 0 < result.bytes_copied < DISK // 4, result
        assert repl.status(rig.qmp)[0].phase == "ready"
        if result.mode == "bitmap":
            assert result.pause_ms < 1000

    console.wait_acks(len(console.acks()) + 50)
    console.run("killall diskw")
    assert rig.identical()


def test_the_event_watcher_reports_a_lost_replica_and_follows_the_vm(rig: Rig) -> None:
    console = rig.boot(rig.name, rig.prim)
    repl.protect(rig.qmp, 0, rig.export())
    repl.wait_ready(rig.qmp, 0, timeout=30)
    heard: list[tuple[str, list[int], bool]] = []
    got = threading.Event()
    watch = MirrorWatch(lambda name, disks, frozen: (heard.append((name, disks, frozen)),
                                                     got.set()))
    events = rig.hv.path(rig.name, EVENTS_QMP_SUFFIX)
    watch.follow({rig.name: events, "not-running": rig.hv.path("not-running", ".qmp-events")})
    try:
        time.sleep(0.3)  # connected
        console.send(f"diskw /dev/vda 0 {BLOCKS} 1000000 2 &")
        console.wait_acks(50)
        assert not heard  # a healthy mirror reports nothing
        os.kill(rig.exports.list()["prim"].pid, signal.SIGKILL)
        assert got.wait(10), "no replication error was reported"
        assert heard[0] == (rig.name, [0], True)
        # Paused in the watcher's own session right after the error: no write the peer
        # missed is acknowledged until the caller (the agent, once the peer is Outdated
        # in etcd) thaws it.
        assert qmp_call(rig.qmp, "query-status")["status"] == "paused"
        acks = len(console.acks())
        time.sleep(0.5)
        assert len(console.acks()) == acks
        repl.thaw(rig.qmp)
        console.wait_acks(acks + 50)
        # One wake, not one per failing write, and no second freeze of the degraded
        # guest: the watcher re-arms only for a new mirror.
        assert len(heard) == 1
        assert qmp_call(rig.qmp, "query-status")["status"] == "running"
    finally:
        watch.stop()
    console.run("killall diskw")


def test_repeated_replica_losses_and_resyncs_never_take_the_guest_down(rig: Rig) -> None:
    # Each resync to a new export force-cancels the failed write-blocking mirror while the
    # guest writes.  Without the guest paused for it, QEMU (7.2 and 10.0.2) freed memory
    # that the guest's in-flight writes still used and aborted in about 1 round in 10.
    console = protected_writer(rig)
    for _ in range(12):
        acks = len(console.acks())
        os.kill(rig.exports.list()["prim"].pid, signal.SIGKILL)
        t_kill = time.monotonic()
        while repl.status(rig.qmp)[0].phase != "failed":
            assert time.monotonic() - t_kill < 5, "the mirror did not notice the peer loss"
            time.sleep(0.005)
        console.wait_acks(acks + 30, timeout=10)  # writing on, into the failed mirror
        rig.exports.stop("prim")
        result = repl.resync(rig.qmp, 0, rig.export(free_port()))
        assert result.mode == "bitmap"
        assert qmp_call(rig.qmp, "query-status")["status"] == "running"
    console.wait_acks(len(console.acks()) + 50)
    console.run("killall diskw")
    assert rig.identical()


def test_a_hung_secondary_is_detected_as_stalled_and_severed_so_the_guest_goes_on(
        rig: Rig) -> None:
    console = rig.boot(rig.name, rig.prim)
    repl.protect(rig.qmp, 0, rig.export())
    repl.wait_ready(rig.qmp, 0, timeout=30)
    console.send(f"diskw /dev/vda 0 {BLOCKS} 1000000 2 &")
    console.wait_acks(100)
    pid = rig.exports.list()["prim"].pid
    os.kill(pid, signal.SIGSTOP)  # a hung peer: TCP still up, no NBD replies
    try:
        time.sleep(0.5)
        before = repl.status(rig.qmp)[0]
        acks = len(console.acks())
        time.sleep(1.0)
        after = repl.status(rig.qmp)[0]
        # The job still looks healthy, but the guest's writes are blocked.
        assert after.phase == "ready" and len(console.acks()) == acks
        assert repl.stalled(before, after)
        assert repl.sever(rig.qmp, 0)
        console.wait_acks(acks + 100, timeout=10)
        assert repl.status(rig.qmp)[0].phase == "failed"
    finally:
        os.kill(pid, signal.SIGCONT)
    # Resynced like any failed mirror (the cancel is made safe by pausing the guest, see
    # test_repeated_replica_losses_and_resyncs_never_take_the_guest_down).
    result = repl.resync(rig.qmp, 0, rig.export(free_port()), resume_timeout=0)
    assert result.mode == "bitmap" and repl.status(rig.qmp)[0].phase == "ready"
    console.run("killall diskw")


def test_without_a_resync_bitmap_the_resync_is_full(rig: Rig) -> None:
    rig.bare(rig.name, rig.prim)
    repl.protect(rig.qmp, 0, rig.export())
    repl.wait_ready(rig.qmp, 0, timeout=30)
    rig.exports.stop("prim")
    qmp_call(rig.qmp, "block-dirty-bitmap-remove", {"node": "disk0", "name": "repl0-dirty"})
    result = repl.resync(rig.qmp, 0, rig.export(free_port()))
    assert result.mode == "full" and result.bytes_copied >= DISK
    assert rig.identical()


# -- (d) idempotence ---------------------------------------------------------------------------

def test_protect_and_unprotect_are_idempotent(rig: Rig) -> None:
    rig.bare(rig.name, rig.prim)
    target = rig.export()
    repl.protect(rig.qmp, 0, target)
    repl.protect(rig.qmp, 0, target)  # the same mirror: nothing happens
    assert [j["device"] for j in qmp_call(rig.qmp, "query-block-jobs")] == ["mirror0"]
    repl.wait_ready(rig.qmp, 0, timeout=30)
    with pytest.raises(HypervisorError, match="already replicated to another target"):
        repl.protect(rig.qmp, 0, repl.NbdTarget("127.0.0.1", free_port(), "d0"))

    assert repl.unprotect(rig.qmp, 0) is True  # graceful: ends in sync
    assert rig.identical()
    assert repl.unprotect(rig.qmp, 0) is False
    assert repl.status(rig.qmp, [0]) == {0: repl.MirrorState(0, "", "none")}
    nodes = {n["node-name"] for n in qmp_call(rig.qmp, "query-named-block-nodes")}
    assert "repl0" not in nodes

    repl.protect(rig.qmp, 0, target)
    assert repl.wait_ready(rig.qmp, 0, timeout=30).phase == "ready"
    assert rig.identical()


def test_hand_over_ends_ready_mirrors_in_sync_and_keeps_their_bitmaps(rig: Rig) -> None:
    rig.bare(rig.name, rig.prim)
    repl.protect(rig.qmp, 0, rig.export())
    repl.wait_ready(rig.qmp, 0, timeout=30)
    with pytest.raises(HypervisorError, match=r"disk\(s\) \[1\] .* not in sync"):
        repl.hand_over(rig.qmp, [0, 1])  # disk 1 has no mirror: nothing is ended
    assert repl.status(rig.qmp)[0].phase == "ready"
    repl.hand_over(rig.qmp, [0])
    assert repl.status(rig.qmp, [0]) == {0: repl.MirrorState(0, "", "none")}
    nodes = {n["node-name"]: n for n in qmp_call(rig.qmp, "query-named-block-nodes")}
    assert "repl0" not in nodes
    assert [b["name"] for b in nodes["disk0"]["dirty-bitmaps"]] == ["repl0-dirty"]
    assert rig.identical()


def test_protecting_an_unreachable_export_fails_without_touching_the_vm(rig: Rig) -> None:
    rig.bare(rig.name, rig.prim)
    with pytest.raises(HypervisorError, match="not reachable"):
        repl.protect(rig.qmp, 0, repl.NbdTarget("127.0.0.1", free_port(), "d0"))
    assert repl.status(rig.qmp, [0])[0].phase == "none"
    assert qmp_call(rig.qmp, "query-status")["status"] == "running"


def test_a_qcow2_disk_keeps_its_resync_bitmap_across_a_clean_restart_only(
        rig: Rig) -> None:
    prim = rig.tmp / "prim.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(prim), str(DISK)],
                   check=True)
    qmp = rig.hv.qmp_path("q")

    def bitmaps() -> list[dict[str, object]]:
        nodes = {n["node-name"]: n for n in qmp_call(qmp, "query-named-block-nodes")}
        return [b for b in nodes["disk0"].get("dirty-bitmaps", []) if b.get("name")]

    rig.bare("q", prim, "qcow2")
    target = rig.export()
    repl.protect(qmp, 0, target)
    repl.wait_ready(qmp, 0, timeout=30)
    assert [(b["name"], b["persistent"]) for b in bitmaps()] == [("repl0-dirty", True)]
    rig.hv.stop("q", timeout=0)  # QEMU quits cleanly and stores the bitmap
    rig.bare("q", prim, "qcow2")
    assert [b["name"] for b in bitmaps() if not b.get("inconsistent")] == ["repl0-dirty"]
    rig.hv.kill("q")  # a crash leaves it marked in use: unusable, and replaced
    rig.bare("q", prim, "qcow2")
    assert [b.get("inconsistent") for b in bitmaps()] == [True]
    repl.protect(qmp, 0, target)
    assert [b.get("inconsistent", False) for b in bitmaps()] == [False]


# -- the export daemon alone -------------------------------------------------------------------

def qemu_io(image_opts: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-io", *args, "--image-opts", image_opts, "-c", "read 0 4k"],
                          capture_output=True, text=True, timeout=30, check=False)


def test_export_is_idempotent_restarts_on_change_and_stop_releases_the_image(
        tmp_path: Path) -> None:
    exports = ExportManager(tmp_path / "exports")
    hv = QemuHypervisor(tmp_path / "run")
    sec = image(tmp_path / "sec.raw")
    vm = VmSpec(name="opener", uuid=str(uuid.uuid4()), memory=64, accel="tcg",
                disks=(DiskSpec(0, str(sec)),))  # no kernel: SeaBIOS idles
    port = free_port()
    try:
        info = exports.ensure("vm1", [ExportDisk("d0", str(sec))], "127.0.0.1", port)
        assert exports.ensure("vm1", [ExportDisk("d0", str(sec))], "127.0.0.1", port) == info
        assert exports.alive("vm1") and exports.list() == {"vm1": info}
        url = f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=d0"
        assert qemu_io(url).returncode == 0
        # While exported, no VM can open the image.
        with pytest.raises(HypervisorError, match='Failed to get shared "write" lock'):
            hv.start(vm)

        other = free_port()
        moved = exports.ensure("vm1", [ExportDisk("d0", str(sec))], "127.0.0.1", other)
        assert moved.pid != info.pid and moved.port == other and not pid_alive(info.pid)

        exports.stop("vm1")
        assert not exports.alive("vm1") and exports.list() == {}
        hv.start(vm)  # stop() returned only once the daemon was gone: the lock is free
        exports.stop("vm1")  # idempotent
        with pytest.raises(HypervisorError, match=r"qemu-storage-daemon exited: .*lock"):
            exports.ensure("vm1", [ExportDisk("d0", str(sec))], "127.0.0.1", port)
        assert not exports.alive("vm1")
    finally:
        hv.kill("opener")
        exports.stop("vm1")


def test_export_refuses_a_port_in_use_and_tls_refuses_clients_without_the_key(
        tmp_path: Path) -> None:
    exports = ExportManager(tmp_path / "exports")
    sec = image(tmp_path / "sec.raw")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(HypervisorError, match="already in use"):
            exports.ensure("vm1", [ExportDisk("d0", str(sec))], "127.0.0.1", port)
    assert not exports.alive("vm1")

    psk, port = new_psk(), free_port()
    try:
        exports.ensure("vm1", [ExportDisk("d0", str(sec))], "127.0.0.1", port, psk)
        url = f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=d0"

        def creds(key: str) -> str:
            d = write_psk_dir(tmp_path / key[:8], key)
            return f"tls-creds-psk,id=tls0,endpoint=client,dir={d},username=haven"

        assert qemu_io(url).returncode != 0  # no TLS
        assert qemu_io(url + ",tls-creds=tls0", "--object", creds(new_psk())).returncode != 0
        assert qemu_io(url + ",tls-creds=tls0", "--object", creds(psk)).returncode == 0
    finally:
        exports.stop("vm1")
