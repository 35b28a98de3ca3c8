"""Live migration between two "nodes" (two run dirs) of real QEMU under TCG, 127.0.0.1.

The guest is the busybox image of ``guest/build-guest.sh`` with ``tick=10``: a ticker
on its second serial port, read on the host from the source's and then the
destination's ticker socket, gives the guest-visible pause.  Figures are printed (run
with ``-s``); the asserted bounds are generous because TCG on 2 shared cores jitters.
"""

from __future__ import annotations

import dataclasses
import itertools
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
from pathlib import Path

import pytest

from haven.daemon.procs import pid_alive
from haven.hypervisor.base import DiskSpec, HypervisorError, VmSpec
from haven.hypervisor.qemu import QemuHypervisor, replication
from haven.hypervisor.qemu.exports import ExportDisk, ExportManager
from haven.hypervisor.qemu.migration import (
    drbd_switchover,
    finish_source,
    migrate,
    resume_source,
)
from haven.hypervisor.qemu.migration_destination import (
    abort_incoming,
    accept,
    wait_destination,
)
from haven.hypervisor.qemu.qmp import qmp_call

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None
                       or shutil.which("qemu-storage-daemon") is None,
                       reason="qemu-system-x86_64 / qemu-storage-daemon are not installed"),
]

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = Path(os.environ.get("HAVEN_GUEST_DIR", "/var/cache/haven/guest"))
NAME = "migvm"
LO = "127.0.0.1"
SLOW = 3_000_000  # bytes/s: a 128 MiB guest then takes > 10 s, time to inject a fault
# Ticker lines lost across a live switchover.  None in many runs, but one (in two tests
# of one full-suite run on QEMU 7.2, 2026-11-23): live migration under TCG in QEMU before
# 10.0 can lose what the guest writes during the copy
# (../shared/notes/tcg-live-migration-integrity.md), which is why Haven then migrates
# non-live under TCG by default.
MAX_LOST_TICKS = 1


@pytest.fixture(scope="module")
def guest() -> tuple[Path, Path]:
    kernel, initrd = GUEST_DIR / "vmlinuz", GUEST_DIR / "initrd.gz"
    if not (kernel.exists() and initrd.exists()):
        proc = subprocess.run(["bash", str(REPO / "guest" / "build-guest.sh")],
                              capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            pytest.fail(f"build-guest.sh failed: {proc.stderr[-2000:]}")
    return kernel, initrd


@dataclasses.dataclass
class Nodes:
    a: QemuHypervisor  # the source
    b: QemuHypervisor  # the destination
    exports_b: ExportManager
    tmp: Path


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    n = Nodes(QemuHypervisor(tmp_path / "a"), QemuHypervisor(tmp_path / "b"),
              ExportManager(tmp_path / "b" / "exports"), tmp_path)
    yield n
    for hv in (n.a, n.b):
        for name in list(hv.list()):
            hv.kill(name)
    for key in list(n.exports_b.list()):
        n.exports_b.stop(key)
    assert not _processes(tmp_path), "a QEMU of this test survived"


def _processes(tmp: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "qemu" in cmd and str(tmp) in cmd and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LO, 0))
        return int(s.getsockname()[1])


class Lines:
    """A serial port's unix socket, read in a thread: every line with its host
    arrival time, until EOF (the QEMU behind it quit)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            now = time.monotonic()
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            with self.cond:
                self.lines += [(now, ln.decode(errors="replace").strip()) for ln in done]
                self.cond.notify_all()

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def wait(self, pattern: str, timeout: float, count: int = 1) -> list[str]:
        """Wait until ``count`` lines match ``pattern``; the matching lines."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(hits := [t for _, t in self.lines if re.search(pattern, t)]) < count:
                if not self.cond.wait(deadline - time.monotonic()):
                    tail = [t for _, t in self.lines[-5:]]
                    raise AssertionError(f"no {count}x {pattern!r} within {timeout} s: {tail}")
        return hits

    def close(self) -> None:
        self.sock.close()


def spec(guest: tuple[Path, Path], disk: Path | None = None, memory: int = 128) -> VmSpec:
    return VmSpec(name=NAME, uuid=str(uuid.uuid4()), memory=memory, accel="tcg",
                  disks=(DiskSpec(0, str(disk)),) if disk else (),
                  kernel_path=str(guest[0]), initrd_path=str(guest[1]),
                  kernel_args="console=ttyS0 quiet haven.nomount tick=10")


def boot(hv: QemuHypervisor, vm: VmSpec) -> tuple[Lines, Lines]:
    """Start and boot the source; its (console, ticker)."""
    hv.start(vm)
    console = Lines(hv.console_path(NAME))
    console.wait("GUEST-READY", 90)
    ticker = Lines(hv.path(NAME, ".ticker"))
    ticker.wait(r"^T \d+", 10, count=20)
    return console, ticker


def incoming(n: Nodes, vm: VmSpec, bitmaps: tuple[int, ...] = ()) -> tuple[str, Lines, Lines]:
    """Start the destination waiting; its URI, (console, ticker)."""
    assert n.b.start(dataclasses.replace(vm, incoming=True)).status == "incoming"
    uri = accept(n.b.qmp_path(NAME), LO, free_port(), bitmaps)
    return uri, Lines(n.b.console_path(NAME)), Lines(n.b.path(NAME, ".ticker"))


def largest_gap_ms(*tickers: Lines) -> tuple[float, int]:
    """The largest host-time gap between consecutive ticker lines of all ``tickers``
    (by sequence number: the UART state moves with the guest), and how many sequence
    numbers never arrived."""
    first: dict[int, float] = {}
    for t in tickers:
        for when, text in list(t.lines):
            if m := re.match(r"^T (\d+) ", text):
                first.setdefault(int(m.group(1)), when)
    seqs = sorted(first)
    gaps = [first[b] - first[a] for a, b in itertools.pairwise(seqs)]
    return max(gaps) * 1000, (seqs[-1] - seqs[0] + 1) - len(seqs)


def answers(console: Lines, tag: str) -> None:
    console.send(f"echo {tag}-$((6*7))")
    console.wait(f"^{tag}-42$", 30)


def status(hv: QemuHypervisor) -> str:
    info = hv.list().get(NAME)
    return info.status if info else "gone"


# -- the happy paths --------------------------------------------------------------------------

def test_shared_disk_migration_moves_the_running_guest_with_a_short_pause(
        nodes: Nodes, guest: tuple[Path, Path]) -> None:
    disk = nodes.tmp / "shared.raw"
    disk.write_bytes(b"")
    os.truncate(disk, 16 << 20)
    vm = spec(guest, disk)
    _, tick_a = boot(nodes.a, vm)
    uri, console_b, tick_b = incoming(nodes, vm)
    time.sleep(0.5)
    t0 = time.monotonic()
    stats = migrate(nodes.a.qmp_path(NAME), uri)
    wall = (time.monotonic() - t0) * 1000
    assert wait_destination(nodes.b, NAME) == "running"
    took_over = (time.monotonic() - t0) * 1000 - wall
    assert status(nodes.b) == "running"
    assert status(nodes.a) == "paused"  # postmigrate: stopped, its disk released
    finish_source(nodes.a.qmp_path(NAME))
    nodes.a.stop(NAME, timeout=10)
    assert status(nodes.a) == "gone"
    answers(console_b, "on-b")
    tick_b.wait(r"^T \d+", 10, count=50)
    gap, lost = largest_gap_ms(tick_a, tick_b)
    print(f"\nshared: total {stats.total_ms:.0f} ms (wall {wall:.0f}), downtime "
          f"{stats.downtime_ms:.0f} ms, setup {stats.setup_ms:.0f} ms, "
          f"{stats.transferred / 2**20:.1f} MiB, destination running {took_over:.0f} ms "
          f"after the source completed; guest gap {gap:.0f} ms, {lost} ticks lost")
    assert stats.total_ms > 0 and stats.transferred > 0
    assert gap < 1000 and lost <= MAX_LOST_TICKS


def test_migration_onto_the_replica_holder_keeps_every_acknowledged_write(
        nodes: Nodes, guest: tuple[Path, Path]) -> None:
    prim, sec = nodes.tmp / "prim.raw", nodes.tmp / "sec.raw"
    for p in (prim, sec):
        p.write_bytes(b"")
        os.truncate(p, 32 << 20)
    vm_a = spec(guest, prim)
    console_a, tick_a = boot(nodes.a, vm_a)
    nbd_port = free_port()
    nodes.exports_b.ensure(NAME, [ExportDisk("d0", str(sec))], LO, nbd_port)
    qmp_a = nodes.a.qmp_path(NAME)
    replication.protect(qmp_a, 0, replication.NbdTarget(LO, nbd_port, "d0"))
    replication.wait_ready(qmp_a, 0, 60)
    # The destination opens the replica while the storage daemon still exports it:
    # an incoming QEMU keeps its images inactive and unlocked.
    uri, console_b, tick_b = incoming(nodes, dataclasses.replace(vm_a, disks=(
        DiskSpec(0, str(sec)),)), bitmaps=(0,))
    qsd_pid = nodes.exports_b.list()[NAME].pid
    console_a.send("diskw /dev/vda 0 8192 8000 2 &")  # 4 KiB O_DSYNC writes, no wrap
    console_a.wait(r"^A \d+$", 30, count=100)

    exited_at: list[float] = []

    def stop_export() -> None:
        nodes.exports_b.stop(NAME)
        exited_at.append(time.monotonic())

    switch = drbd_switchover(qmp_a, [0], stop_export)
    stats = migrate(qmp_a, uri, before_switchover=switch)
    assert wait_destination(nodes.b, NAME) == "running"
    assert status(nodes.b) == "running" and not pid_alive(qsd_pid) and exited_at
    finish_source(qmp_a)
    nodes.a.stop(NAME, timeout=10)
    console_b.wait(r"^A \d+$", 30, count=100)  # the guest keeps writing on b
    log_b = nodes.b.path(NAME, ".log").read_text()
    assert "lock" not in log_b, log_b  # "Failed to get shared "write" lock": two writers
    # b holds the image's write lock: a second writer is refused.
    locked = subprocess.run(["qemu-io", "-f", "raw", "-c", "quit", str(sec)],
                            capture_output=True, text=True, check=False)
    assert locked.returncode != 0 and "lock" in locked.stderr + locked.stdout, locked
    nodes_b = qmp_call(nodes.b.qmp_path(NAME), "query-named-block-nodes", {"flat": True})
    dirty = [b for n in nodes_b if n["node-name"] == "disk0" for b in n["dirty-bitmaps"]]
    assert [b["name"] for b in dirty] == ["repl0-dirty"] and dirty[0]["count"] > 0
    console_b.send("killall diskw; echo STOPPED-$((1+1))")
    console_b.wait("^STOPPED-2$", 30)
    nodes.b.stop(NAME, timeout=60)
    acked = {int(t.split()[1]) for c in (console_a, console_b) for _, t in c.lines
             if re.fullmatch(r"A \d+", t)}
    data = sec.read_bytes()
    missing = [s for s in sorted(acked)
               if data[s * 4096:s * 4096 + 16] != f"SEQ {s:012d}".encode()]
    on_b = len({int(t.split()[1]) for _, t in console_b.lines if re.fullmatch(r"A \d+", t)})
    gap, lost = largest_gap_ms(tick_a, tick_b)
    print(f"\ndrbd: total {stats.total_ms:.0f} ms, downtime {stats.downtime_ms:.0f} ms, "
          f"pre-switchover window {stats.pre_switchover_ms:.1f} ms (mirror end "
          f"{switch.unprotect_ms:.1f} ms, export stop {switch.stop_export_ms:.1f} ms); "
          f"guest gap {gap:.0f} ms; {len(acked)} acknowledged writes ({on_b} on b), "
          f"{len(missing)} missing; resync bitmap {dirty[0]['count']} bytes")
    assert acked and missing == []
    assert gap < 1000 and lost <= MAX_LOST_TICKS


# -- failures: exactly one copy keeps running ---------------------------------------------------

def _migrate_in_thread(qmp: Path, uri: str, **kw: object) -> tuple[threading.Thread,
                                                                     list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(qmp, uri, **kw)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _wait_active(hv: QemuHypervisor) -> None:
    """Until the source's migration sends RAM (asked on the status monitor: migrate()
    holds the command monitor)."""
    deadline = time.monotonic() + 10
    while qmp_call(hv.path(NAME, ".qmp-status"), "query-migrate").get("status") != "active":
        assert time.monotonic() < deadline, "the migration never became active"
        time.sleep(0.02)
    time.sleep(0.5)


def dest_outcome(hv: QemuHypervisor, wait: float = 3.0) -> tuple[str, float]:
    """Whether the destination exits by itself after a failed migration, and when."""
    t0 = time.monotonic()
    while (state := status(hv)) != "gone" and time.monotonic() - t0 < wait:
        time.sleep(0.01)
    return state, (time.monotonic() - t0) * 1000


def last_line(hv: QemuHypervisor) -> str:
    lines = hv.path(NAME, ".log").read_text().strip().splitlines()
    return lines[-1] if lines else ""


def test_destination_killed_mid_migration_leaves_the_source_running(
        nodes: Nodes, guest: tuple[Path, Path]) -> None:
    vm = spec(guest)
    console_a, _ = boot(nodes.a, vm)
    uri, _, _ = incoming(nodes, vm)
    thread, errors = _migrate_in_thread(nodes.a.qmp_path(NAME), uri, bandwidth_bytes=SLOW)
    _wait_active(nodes.a)
    t_kill = time.monotonic()
    nodes.b.kill(NAME)
    thread.join(30)
    reaction = (time.monotonic() - t_kill) * 1000
    assert len(errors) == 1 and isinstance(errors[0], HypervisorError), errors
    print(f"\ndestination killed: migrate() raised after {reaction:.0f} ms: {errors[0]}")
    assert f"'{NAME}'" in str(errors[0]) and "keeps running on the source" in str(errors[0])
    assert status(nodes.a) == "running"
    answers(console_a, "still-a")


def test_a_failing_pre_switchover_step_cancels_and_resumes_the_source(
        nodes: Nodes, guest: tuple[Path, Path]) -> None:
    vm = spec(guest)
    console_a, tick_a = boot(nodes.a, vm)
    uri, _, _ = incoming(nodes, vm)
    seen: list[str] = []

    def fail() -> None:
        seen.append(qmp_call(nodes.a.qmp_path(NAME), "query-status")["status"])
        raise RuntimeError("injected failure")

    t0 = time.monotonic()
    with pytest.raises(HypervisorError, match=f"'{NAME}'.*injected failure.*keeps running"):
        migrate(nodes.a.qmp_path(NAME), uri, before_switchover=fail)
    elapsed = (time.monotonic() - t0) * 1000
    assert seen == ["finish-migrate"]  # the callback ran with the source paused
    assert status(nodes.a) == "running"
    answers(console_a, "resumed-a")
    dest, after = dest_outcome(nodes.b)
    gap, _ = largest_gap_ms(tick_a)
    print(f"\ncallback raised: migrate() failed after {elapsed:.0f} ms, source running "
          f"(largest ticker gap {gap:.0f} ms); destination: {dest} after {after:.0f} ms "
          f"({last_line(nodes.b)})")
    abort_incoming(nodes.b, NAME)
    assert status(nodes.b) == "gone"


def test_source_killed_mid_migration_leaves_the_destination_to_abort(
        nodes: Nodes, guest: tuple[Path, Path]) -> None:
    vm = spec(guest)
    boot(nodes.a, vm)
    uri, _, _ = incoming(nodes, vm)
    thread, errors = _migrate_in_thread(nodes.a.qmp_path(NAME), uri, bandwidth_bytes=SLOW)
    _wait_active(nodes.a)
    pid = nodes.a.list()[NAME].pid
    os.kill(pid, signal.SIGKILL)
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], HypervisorError), errors
    assert "source QEMU exited" in str(errors[0])
    dest, after = dest_outcome(nodes.b)
    print(f"\nsource killed: {errors[0]}\ndestination: {dest} after {after:.0f} ms "
          f"({last_line(nodes.b)})")
    assert dest in ("incoming", "gone")
    assert abort_incoming(nodes.b, NAME) == (dest == "incoming")
    assert status(nodes.b) == "gone"


def test_a_stalled_destination_times_out_and_the_source_resumes(
        nodes: Nodes, guest: tuple[Path, Path]) -> None:
    """SIGSTOP on the destination: the source's socket fills up, as with a cut network
    (no RST); the stall watchdog (no byte sent for ``stall_timeout``) ends it long
    before TCP would, and migrate_cancel must unblock the sender."""
    vm = spec(guest)
    console_a, _ = boot(nodes.a, vm)
    uri, _, _ = incoming(nodes, vm)
    pid_b = nodes.b.list()[NAME].pid
    os.kill(pid_b, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(HypervisorError,
                           match=r"no data went through for 2 s.*network is cut.*keeps running"):
            migrate(nodes.a.qmp_path(NAME), uri, timeout=60, stall_timeout=2)
        elapsed = time.monotonic() - t0
    finally:
        os.kill(pid_b, signal.SIGCONT)
    print(f"\nstalled destination: migrate() gave up after {elapsed:.2f} s")
    assert elapsed < 10
    assert status(nodes.a) == "running"
    answers(console_a, "alive-a")
    dest, _ = dest_outcome(nodes.b, 1.0)
    assert abort_incoming(nodes.b, NAME) == (dest == "incoming")


def test_a_destination_stalled_in_the_switchover_blocks_the_source_until_killed(
        nodes: Nodes, guest: tuple[Path, Path]) -> None:
    """The destination stops reading in the pre-switchover window (SIGSTOP: like a
    network cut without a reset).  QEMU sends the final state with its main loop locked, so the
    source's monitor hangs; migrate() says so.  Killing the destination makes the send
    fail and the source resume by itself, with its disk writable again."""
    disk = nodes.tmp / "shared.raw"
    disk.write_bytes(b"")
    os.truncate(disk, 16 << 20)
    vm = spec(guest, disk)
    console_a, _ = boot(nodes.a, vm)
    uri, _, _ = incoming(nodes, vm)
    pid_b = nodes.b.list()[NAME].pid
    t0 = time.monotonic()
    # A 10 s downtime limit switches over after the first ~100 ms: most of the RAM is
    # still to be sent in the final, locked phase, far more than the socket buffers.
    with pytest.raises(HypervisorError, match=r"does not answer.*kill the destination"):
        migrate(nodes.a.qmp_path(NAME), uri, downtime_ms=10_000, timeout=3,
                before_switchover=lambda: os.kill(pid_b, signal.SIGSTOP))
    raised = time.monotonic() - t0
    t_kill = time.monotonic()
    os.kill(pid_b, signal.SIGKILL)
    while status(nodes.a) != "running":
        assert time.monotonic() - t_kill < 10, "the source did not resume"
        time.sleep(0.01)
    resumed = (time.monotonic() - t_kill) * 1000
    print(f"\nstalled in the switchover: migrate() raised after {raised:.1f} s; source "
          f"running {resumed:.0f} ms after the destination was killed")
    console_a.send("diskw /dev/vda 0 16 5 | tail -1")  # its disk is active again
    console_a.wait("^DISKW DONE$", 30)
    answers(console_a, "back-on-a")


def test_completed_only_means_sent_and_a_postmigrate_source_can_be_resumed(
        nodes: Nodes, guest: tuple[Path, Path]) -> None:
    """A sink that reads and drops the stream: the source reports completed although
    no destination will ever run.  The caller must see the destination run before
    finish_source; otherwise resume_source rolls back."""
    vm = spec(guest)
    console_a, _ = boot(nodes.a, vm)
    server = socket.create_server((LO, 0))
    port = server.getsockname()[1]

    def sink() -> None:
        conn, _ = server.accept()
        with conn:
            while conn.recv(1 << 20):
                pass

    threading.Thread(target=sink, daemon=True).start()
    try:
        stats = migrate(nodes.a.qmp_path(NAME), f"tcp:{LO}:{port}", timeout=60)
    finally:
        server.close()
    assert status(nodes.a) == "paused" and stats.total_ms > 0  # postmigrate
    t0 = time.monotonic()
    resume_source(nodes.a.qmp_path(NAME))
    print(f"\nsink: completed in {stats.total_ms:.0f} ms; rolled back in "
          f"{(time.monotonic() - t0) * 1000:.0f} ms")
    assert status(nodes.a) == "running"
    answers(console_a, "back-on-a")
    with pytest.raises(HypervisorError, match="is running"):
        finish_source(nodes.a.qmp_path(NAME))  # never quit the only copy


# -- a busy guest (TCG) -------------------------------------------------------------------------

def busy_guest(nodes: Nodes, guest: tuple[Path, Path]) -> tuple[VmSpec, Lines]:
    """A guest re-dirtying 96 MiB of random data at 20 MB/s: the load under which QEMU
    7.2's TCG live migration lost memory writes (``bench/migration_integrity.py``)."""
    vm = dataclasses.replace(spec(guest, memory=192),
                             kernel_args="console=ttyS0 quiet haven.nomount hog=96 "
                                         "hograte=20")
    nodes.a.start(vm)
    console = Lines(nodes.a.console_path(NAME))
    console.wait("GUEST-READY", 90)
    console.wait("MEMHOG READY", 120)
    time.sleep(1)
    return vm, console


def test_a_non_live_migration_moves_a_busy_guest_intact(
        nodes: Nodes, guest: tuple[Path, Path]) -> None:
    vm, _ = busy_guest(nodes, guest)
    uri, console_b, _ = incoming(nodes, vm)
    stats = migrate(nodes.a.qmp_path(NAME), uri, live=False)
    assert status(nodes.b) in ("paused", "unknown")  # it arrives paused
    assert wait_destination(nodes.b, NAME, resume=True) == "running"
    finish_source(nodes.a.qmp_path(NAME))
    nodes.a.stop(NAME, timeout=10)
    answers(console_b, "intact")
    time.sleep(2)  # a corrupted kernel oopses within a second or two of resuming
    answers(console_b, "still")
    text = "\n".join(t for _, t in console_b.lines)
    print(f"\nnon-live, busy guest: total {stats.total_ms:.0f} ms (the pause), "
          f"{stats.transferred / 2**20:.1f} MiB")
    assert "BUG" not in text and "Oops" not in text and "panic" not in text, text[-2000:]


def test_a_failed_non_live_migration_resumes_the_paused_source(
        nodes: Nodes, guest: tuple[Path, Path]) -> None:
    vm = spec(guest)
    console_a, _ = boot(nodes.a, vm)
    uri, _, _ = incoming(nodes, vm)
    nodes.b.kill(NAME)  # the destination is gone before the copy starts
    with pytest.raises(HypervisorError, match="keeps running on the source"):
        migrate(nodes.a.qmp_path(NAME), uri, live=False)
    assert status(nodes.a) == "running"
    answers(console_a, "resumed")
