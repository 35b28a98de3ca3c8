"""Replicated disks on a real local cluster: create on two nodes, sync, fail over and
back with the data, degrade when the secondary dies, refuse an unsafe failover, resync."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Sim, make_sim
from tests.e2e.test_instances import console_until, status, wait_status

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def drbd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    yield from make_sim(tmp_path_factory.mktemp("drbd"), 3)


def replica_line(sim: Sim, name: str, role: str) -> str:
    info = sim.run("gnt-instance", "info", name, check=True).stdout
    lines = [ln.strip() for ln in info.splitlines() if ln.strip().startswith(role + " ")]
    return lines[0] if lines else ""


def wait_replica(sim: Sim, name: str, role: str, want: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while True:
        line = replica_line(sim, name, role)
        if want in line:
            return line
        if time.monotonic() > deadline:
            raise AssertionError(f"{role} replica of {name}: {line!r}, not {want!r}")
        time.sleep(0.5)


def test_create_replicated_instance_and_sync(drbd: Sim) -> None:
    p = drbd.run("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=64m", "-B",
                 "memory=128", "-o", "busybox", "-n", "node01:node02", "vm2", timeout=180)
    assert p.returncode == 0, p.stderr
    assert status(drbd, "vm2") == "running"
    line = wait_replica(drbd, "vm2", "secondary", "UpToDate")
    assert "node02" in line
    snodes = drbd.run("gnt-instance", "list", "--no-headers", "-o", "snodes", "vm2").stdout
    assert snodes.strip() == "node02"
    vols = drbd.run("gnt-node", "volumes", "--no-headers", "--separator=|",
                    check=True).stdout.splitlines()
    assert sorted(v.split("|")[0] for v in vols if v.endswith("|vm2")) == ["node01", "node02"]


# make test-all only (CI time): tests/e2e/test_two_node.py's reference scenarios fail
# drbd instances over and back with their data checked.
@pytest.mark.long
def test_failover_keeps_the_data_and_back(drbd: Sim) -> None:
    out = console_until(drbd, "vm2", "echo precious-$((40+2)) > /mnt/marker; sync; "
                        "cat /mnt/marker", "precious-42")
    assert "precious-42" in out
    p = drbd.run("gnt-instance", "failover", "-f", "vm2", timeout=180)
    assert p.returncode == 0, p.stderr
    assert "from node01 to node02" in p.stdout
    wait_status(drbd, "vm2", "running")
    pnode = drbd.run("gnt-instance", "list", "--no-headers", "-o", "pnode", "vm2").stdout
    assert pnode.strip() == "node02"
    assert "precious-42" in console_until(drbd, "vm2", "cat /mnt/marker", "precious-42")
    # The old primary becomes the secondary and is brought up to date again.
    wait_replica(drbd, "vm2", "secondary", "UpToDate")
    p = drbd.run("gnt-instance", "failover", "-f", "vm2", timeout=180)
    assert p.returncode == 0, p.stderr
    wait_status(drbd, "vm2", "running")
    assert "precious-42" in console_until(drbd, "vm2", "cat /mnt/marker", "precious-42")


def test_bad_drbd_input_is_refused(drbd: Sim) -> None:
    p = drbd.run("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=16m", "-o",
                 "busybox", "-n", "node01:node01", "vmsame")
    assert p.returncode == 1 and "both node01" in p.stderr
    p = drbd.run("gnt-instance", "grow-disk", "vm2", "0", "8m", "--absolute")
    assert p.returncode == 1 and "only grow" in p.stderr


def test_secondary_loss_degrades_refuses_unsafe_failover_and_resyncs(drbd: Sim) -> None:
    wait_replica(drbd, "vm2", "secondary", "UpToDate")
    drbd.run("haven", "kill", "node02", check=True)
    # The guest keeps running and writing on its local replica.
    out = console_until(drbd, "vm2", "echo after-$((1+1)) > /mnt/after; sync; cat /mnt/after",
                        "after-2")
    assert "after-2" in out
    wait_replica(drbd, "vm2", "secondary", "Outdated", timeout=60)
    assert status(drbd, "vm2") == "running"
    listing = drbd.run("gnt-instance", "list", "vm2")
    assert "degraded" in listing.stderr
    drbd.run("haven", "start", "node02", check=True)
    drbd.wait_master()
    # Outdated: a failover now would lose "after"; it is refused until the resync.
    deadline = time.monotonic() + 30
    while "node02" not in drbd.run("gnt-node", "list", "-o", "name,alive", "--no-headers",
                                   "--separator=|").stdout.replace("node02|Y", "node02"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    wait_replica(drbd, "vm2", "secondary", "UpToDate", timeout=120)
    events = drbd.run("haven", "events", "--object", "instance/vm2", check=True).stdout
    assert "replica marked Outdated" in events and "resynced" in events
    p = drbd.run("gnt-instance", "failover", "-f", "vm2", timeout=180)
    assert p.returncode == 0, p.stderr
    assert "after-2" in console_until(drbd, "vm2", "cat /mnt/after", "after-2")


# make test-all only: tests/integration/test_replication.py hangs a secondary too
# (test_a_hung_secondary_is_detected_as_stalled_and_severed_so_the_guest_goes_on).
@pytest.mark.long
def test_a_hung_secondary_is_cut_off_and_the_guest_writes_on(drbd: Sim) -> None:
    wait_replica(drbd, "vm2", "secondary", "UpToDate")
    nodes = drbd.run("gnt-instance", "list", "--no-headers", "-o", "pnode,snodes",
                     "--separator=|", "vm2", check=True).stdout.strip().split("|")
    secondary = nodes[1]
    qsd = int((drbd.base / secondary / "run" / "exports" / "vm2.qsd.pid").read_text())
    os.kill(qsd, signal.SIGSTOP)  # a hung peer: TCP up, no NBD replies, no lease lost
    try:
        # The write waits for the hung replica until the primary cuts it off.
        out = console_until(drbd, "vm2", "echo hung-$((2+3)) > /mnt/hung; sync; "
                            "cat /mnt/hung", "hung-5", timeout=90)
        assert "hung-5" in out
        wait_replica(drbd, "vm2", "secondary", "Outdated", timeout=30)
        events = drbd.run("haven", "events", "--object", "instance/vm2", check=True).stdout
        assert "replication connection cut" in events
        assert status(drbd, "vm2") == "running"
    finally:
        os.kill(qsd, signal.SIGCONT)
    # Once the peer answers again the replica is resynced, "hung" included: it is there
    # after a failover onto it.
    wait_replica(drbd, "vm2", "secondary", "UpToDate", timeout=120)
    p = drbd.run("gnt-instance", "failover", "-f", "vm2", timeout=180)
    assert p.returncode == 0, p.stderr
    assert "hung-5" in console_until(drbd, "vm2", "cat /mnt/hung", "hung-5")


def test_replace_disks_moves_the_secondary_while_running(drbd: Sim) -> None:
    pnode = drbd.run("gnt-instance", "list", "--no-headers", "-o", "pnode,snodes",
                     "--separator=|", "vm2", check=True).stdout.strip().split("|")
    primary, old = pnode
    new = next(n for n in ("node01", "node02", "node03") if n not in (primary, old))
    p = drbd.run("gnt-instance", "replace-disks", "-n", new, "vm2", timeout=120)
    assert p.returncode == 0, p.stderr
    assert status(drbd, "vm2") == "running"
    line = wait_replica(drbd, "vm2", "secondary", "UpToDate", timeout=120)
    assert new in line
    vols = drbd.run("gnt-node", "volumes", "--no-headers", "--separator=|",
                    check=True).stdout.splitlines()
    holders = sorted(v.split("|")[0] for v in vols if v.endswith("|vm2"))
    assert holders == sorted([primary, new])
    p = drbd.run("gnt-instance", "failover", "-f", "vm2", timeout=180)
    assert p.returncode == 0, p.stderr
    assert "after-2" in console_until(drbd, "vm2", "cat /mnt/after", "after-2")
