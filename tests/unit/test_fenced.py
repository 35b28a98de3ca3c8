"""haven-fenced: kills exactly this node's QEMUs when the lease deadline passes unfed.

The "QEMUs" are real processes whose command line looks like Haven's QEMU (a shell
started under the name ``qemu-system-x86_64``): the fencer finds them as it finds real
ones, through the pid files and the run directory named in the command line.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.daemon.procs import pid_alive
from haven.fence.feeder import Feeder
from haven.fence.fenced import Fencer, qemu_pids


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def fake_qemu(procs: list[subprocess.Popen[bytes]], run_dir: Path, name: str,
              pid_file: bool = True) -> subprocess.Popen[bytes]:
    """A process whose command line reads like the QEMU of VM ``name`` in ``run_dir``."""
    p = subprocess.Popen(["qemu-system-x86_64", "-c", "read x", "-name",
                          f"guest={name},debug-threads=on", "-qmp", f"unix:{run_dir}/{name}.qmp"],
                         executable="/bin/sh", stdin=subprocess.PIPE)
    procs.append(p)
    deadline = time.monotonic() + 2
    while "guest=" not in Path(f"/proc/{p.pid}/cmdline").read_text(errors="replace"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    if pid_file:
        (run_dir / f"{name}.pid").write_text(f"{p.pid}\n")
    return p


def dead(p: subprocess.Popen[bytes], timeout: float = 3.0) -> bool:
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_the_deadline_passing_unfed_kills_this_nodes_qemus_and_only_them(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    run, other = tmp_path / "node1" / "run", tmp_path / "node2" / "run"
    run.mkdir(parents=True)
    other.mkdir(parents=True)
    vm1 = fake_qemu(procs, run, "vm1")
    launching = fake_qemu(procs, run, "vm2", pid_file=False)  # no pid file yet
    foreign = fake_qemu(procs, other, "vm3")
    (run / "vm4.pid").write_text(f"{foreign.pid}\n")  # a pid file naming another VM
    assert set(qemu_pids(run)) == {vm1.pid, launching.pid}

    clock = Clock()
    fencer = Fencer(run, clock, watchdog=None)
    fencer.handle({"op": "feed", "deadline": clock.now + 4, "lease": "abc"})
    clock.now += 3.9
    assert fencer.check() == [] and not fencer.fired
    fencer.handle({"op": "feed", "deadline": clock.now + 4, "lease": "abc"})
    clock.now += 4.0
    killed = fencer.check()
    assert sorted(killed) == sorted([f"vm1 (pid {vm1.pid})",
                                     f"qemu-system-x86_64 (pid {launching.pid})"])
    assert dead(vm1) and dead(launching) and foreign.poll() is None
    record = json.loads((run / "fenced.json").read_text())
    assert record["lease"] == "abc" and len(record["killed"]) == 2

    # Fired: a VM that appears now is killed too, until a future deadline is fed.
    late = fake_qemu(procs, run, "vm5")
    assert fencer.timeout() == pytest.approx(0.1)
    clock.now += 11  # long fired: slower sweeps
    assert fencer.timeout() == pytest.approx(0.5)
    assert fencer.check() == [f"vm5 (pid {late.pid})"] and dead(late)
    fencer.handle({"op": "feed", "deadline": clock.now - 1, "lease": "def"})  # stale
    assert fencer.fired
    fencer.handle({"op": "feed", "deadline": clock.now + 4, "lease": "def"})
    kept = fake_qemu(procs, run, "vm6")
    assert fencer.check() == [] and kept.poll() is None
    fencer.handle({"op": "disarm", "reason": "test"})
    clock.now += 100
    assert fencer.check() == [] and kept.poll() is None and fencer.timeout() == 5.0


def test_a_deadline_passed_unfed_fences_even_when_a_new_feed_is_waiting(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    # A node frozen whole (SIGSTOP) and resumed: its daemon may grant a new lease and
    # feed it before the fencer runs again; the feed is then the first thing the fencer
    # reads, after its deadline passed.  The VMs must die all the same: the cluster
    # counted the node lost and runs them elsewhere.
    run = tmp_path / "run"
    run.mkdir()
    vm1 = fake_qemu(procs, run, "vm1")
    clock = Clock()
    fencer = Fencer(run, clock, watchdog=None)
    fencer.handle({"op": "feed", "deadline": clock.now + 4, "lease": "abc"})
    clock.now += 10  # frozen
    fencer.handle({"op": "feed", "deadline": clock.now + 4, "lease": "def"})
    assert dead(vm1)
    assert json.loads((run / "fenced.json").read_text())["lease"] == "abc"
    assert not fencer.fired and fencer.lease == "def"  # armed again, on the new lease
    kept = fake_qemu(procs, run, "vm2")
    assert fencer.check() == [] and kept.poll() is None


def test_the_real_process_fences_when_the_daemon_stops_feeding_it(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    feeder = Feeder(run, tmp_path / "fenced.log")
    assert feeder.ensure_running()
    try:
        deadline = time.monotonic() + 5
        while not (run / "fenced.sock").exists():
            assert time.monotonic() < deadline, (tmp_path / "fenced.log").read_text()
            time.sleep(0.02)
        assert not feeder.ensure_running()  # one fencer per node
        vm = fake_qemu(procs, run, "vm1")
        for _ in range(5):  # fed every 0.2 s with a deadline 0.6 s ahead: never fires
            feeder.feed(time.monotonic() + 0.6, 0x1F)
            time.sleep(0.2)
        assert vm.poll() is None and feeder.fed_until() > time.monotonic()
        stopped_feeding = time.monotonic()
        assert dead(vm, timeout=3)
        took = time.monotonic() - stopped_feeding
        assert took < 2.0, took
        record = feeder.take_record()
        assert record is not None and record["killed"] == [f"vm1 (pid {vm.pid})"]
        assert feeder.take_record() is None  # reported once
        log = (tmp_path / "fenced.log").read_text()
        assert "No /dev/watchdog" in log and "was not renewed in time" in log
    finally:
        pid = feeder.running()
        assert pid is not None
        subprocess.run(["kill", str(pid)], check=True)
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not pid_alive(pid)
