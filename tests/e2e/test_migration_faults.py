"""Failures in the middle of a live migration, on a real cluster (issue 5): the
destination QEMU killed, the source QEMU killed, the migration network cut.

Each guest fills 48 MiB with random data and migrates at 1 MiB/s, so the failure lands
in the middle of the copy.  Afterwards exactly one copy of the instance runs (on the
source: the migration never reached its switchover), no process of it is left on the
destination, every write the guest had acknowledged - before and during the migration
- is on its disk, the replica is UpToDate again and ``gnt-cluster verify`` is clean.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from haven.daemon.procs import pid_alive
from tests.e2e.conftest import BIN, Sim, make_sim
from tests.e2e.test_drbd import wait_replica
from tests.e2e.test_instances import console_until, qemu_pid, wait_status

pytestmark = pytest.mark.e2e

SLOW = "kernel_args=console=ttyS0 hog=48,migration_bandwidth=1"


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    yield from make_sim(tmp_path_factory.mktemp("faults"), 2)


def add_slow(sim: Sim, name: str) -> None:
    p = sim.run("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=64m", "-B",
                "memory=128", "-o", "busybox", "-H", SLOW, "-n", "node01:node02", name,
                timeout=180)
    assert p.returncode == 0, p.stderr
    wait_replica(sim, name, "secondary", "UpToDate")
    # The expected answer is not in the command's text: a command mangled while the guest
    # still boots (it can drop the first characters typed) cannot pass for it.
    out = console_until(sim, name, 'echo before > /mnt/a; sync; echo "a=$(cat /mnt/a)"',
                        "a=before")
    assert "a=before" in out, out


def start_migration(sim: Sim, name: str) -> subprocess.Popen[str]:
    """``gnt-instance migrate`` in the background; returns once the destination QEMU
    exists and the copy has run for a while."""
    # Live (an explicit choice under TCG): the guest keeps running, and writing, while its
    # memory is copied; the migration fails before any switchover, so the TCG caveat
    # (README) does not apply.
    job = subprocess.Popen([str(BIN / "gnt-instance"), "migrate", "--migration-mode",
                            "live", name], env=sim.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = sim.base / "node02" / "run" / f"{name}.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the destination QEMU never started"
        time.sleep(0.1)
    time.sleep(3)  # well into the copy (48 MiB at 1 MiB/s)
    assert job.poll() is None, f"the migration ended too early: {job.communicate()}"
    return job


def write_during(sim: Sim, name: str) -> None:
    """A write the guest acknowledges (sync returned) while its memory is copied."""
    out = console_until(sim, name, 'echo during > /mnt/b; sync; echo "b=$(cat /mnt/b)"',
                        "b=during")
    assert "b=during" in out, out


def finish(job: subprocess.Popen[str]) -> str:
    _, err = job.communicate(timeout=180)
    assert job.returncode != 0, "the migration should have failed"
    return err


def assert_one_copy_on_node01(sim: Sim, name: str) -> None:
    wait_status(sim, name, "running", timeout=90)
    pnode = sim.run("gnt-instance", "list", "--no-headers", "-o", "pnode", name,
                    check=True).stdout.strip()
    assert pnode == "node01"
    assert pid_alive(qemu_pid(sim, "node01", name))
    dest = sim.base / "node02" / "run" / f"{name}.pid"
    deadline = time.monotonic() + 30  # the destination node's agent or the job ends it
    while dest.exists() and pid_alive(int(dest.read_text() or 0)):
        assert time.monotonic() < deadline, "a second copy still runs on node02"
        time.sleep(0.2)
    # One line holding both files: a late tail of an earlier answer cannot pass for it.
    out = console_until(sim, name, 'echo "files:$(cat /mnt/a)+$(cat /mnt/b)"',
                        "files:before+during")
    assert "files:before+during" in out, out
    wait_replica(sim, name, "secondary", "UpToDate")
    sim.wait_verify_ok()


# make test-all only: tests/integration/test_migration.py kills the destination QEMU
# mid-migration too (test_destination_killed_mid_migration_leaves_the_source_running).
@pytest.mark.long
def test_destination_killed_mid_migration(faults: Sim) -> None:
    add_slow(faults, "fdst")
    job = start_migration(faults, "fdst")
    write_during(faults, "fdst")
    os.kill(qemu_pid(faults, "node02", "fdst"), signal.SIGKILL)
    err = finish(job)
    assert "fdst to node02 failed" in err and "It stays on node01" in err, err
    assert_one_copy_on_node01(faults, "fdst")


# make test-all only: tests/integration/test_migration.py covers the source's death
# (test_source_killed_mid_migration_leaves_the_destination_to_abort).
@pytest.mark.long
def test_source_killed_mid_migration(faults: Sim) -> None:
    add_slow(faults, "fsrc")
    job = start_migration(faults, "fsrc")
    write_during(faults, "fsrc")
    os.kill(qemu_pid(faults, "node01", "fsrc"), signal.SIGKILL)
    err = finish(job)
    assert "source QEMU exited" in err and "It stays on node01" in err, err
    # Its agent restarts the crashed instance where it belongs, from its own disk.
    assert_one_copy_on_node01(faults, "fsrc")


def test_migration_network_cut_mid_migration(faults: Sim) -> None:
    """Packets to the destination's migration ports are dropped silently, as by a
    pulled cable: no reset, only the stall watchdog notices."""
    add_slow(faults, "fnet")
    job = start_migration(faults, "fnet")
    write_during(faults, "fnet")
    rule = ["INPUT", "-d", faults.address("node02"), "-p", "tcp", "--dport", "12000:12999",
            "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
    try:
        t0 = time.monotonic()
        err = finish(job)
        print(f"\nnetwork cut: the job failed after {time.monotonic() - t0:.1f} s")
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True, capture_output=True)
    assert "no data went through" in err and "It stays on node01" in err, err
    assert_one_copy_on_node01(faults, "fnet")


def test_the_cut_network_leaves_nothing_to_clean_up(faults: Sim) -> None:
    p = faults.run("gnt-instance", "migrate", "--cleanup", "fnet", check=True)
    assert "nothing to clean up" in p.stdout, p.stdout



# make test-all only: a master lost mid-job is covered by test_foundation's master
# kill (jobs resumed) and the migration record by test_migrate_back.
@pytest.mark.long
def test_a_master_dying_mid_migration_leaves_its_cleanup_to_the_next(faults: Sim) -> None:
    """node01 is the master and the source: its daemon dies and is not restarted in
    time, so its fencer kills its VMs (the migration's source among them) before the
    lease runs out.  node02 takes over, fails the job and fences node01; the cleanup job
    counts the fenced source as dead and rolls the migration back, and the HA manager
    restarts the instance on its secondary with every acknowledged write.  When node01
    returns, nothing runs twice."""
    assert faults.master() == "node01"
    add_slow(faults, "fmas")
    job = start_migration(faults, "fmas")
    write_during(faults, "fmas")
    os.kill(int((faults.base / "node01" / "noded.pid").read_text()), signal.SIGKILL)
    assert faults.wait_master(not_node="node01") == "node02"
    job.communicate(timeout=120)
    assert job.returncode != 0
    wait_status(faults, "fmas", "running", timeout=120)
    pnode = faults.run("gnt-instance", "list", "--no-headers", "-o", "pnode", "fmas",
                       check=True).stdout.strip()
    assert pnode == "node02"
    assert "fmas: a migration from" not in faults.run("gnt-cluster", "verify").stdout
    jobs = faults.run("gnt-job", "list", "--no-headers", check=True).stdout
    assert re.search(r"success\s+INSTANCE_MIGRATE\(fmas", jobs, re.I), jobs
    events = faults.run("haven", "events", "--object", "instance/fmas", check=True).stdout
    assert "rolled back" in events and "recovered on node02" in events, events
    faults.run("haven", "start", "node01", check=True)
    old = faults.base / "node01" / "run" / "fmas.pid"
    assert not old.exists() or not pid_alive(int(old.read_text() or 0))
    out = console_until(faults, "fmas", 'echo "files:$(cat /mnt/a)+$(cat /mnt/b)"',
                        "files:before+during")
    assert "files:before+during" in out, out
    assert len([p for p in faults.base.glob("node0*/run/fmas.pid")
                if pid_alive(int(p.read_text() or 0))]) == 1
