"""Issue 10, on a real two-node cluster: migrate a ``drbd`` instance away, hand the
master role to its new primary, kill and restart its old primary, and migrate it
straight back.

Two bugs met this sequence: the restarted node refused the master's first call as
unauthenticated ("This request needs a user with write access", seen by the user), and
the migration failed at its completion, every try, with "Input/output error": the new
primary's mirror was still ``ready`` on the connection to the killed storage daemon,
and QEMU's flush at the switchover found it dead.  No sleeps between the steps.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.daemon.procs import pid_alive, read_pid
from tests.e2e.conftest import Sim, make_sim
from tests.e2e.test_drbd import wait_replica
from tests.e2e.test_instances import console_until, status

pytestmark = pytest.mark.e2e


@pytest.fixture()
def two(tmp_path: Path) -> Iterator[Sim]:
    yield from make_sim(tmp_path, 2)


def pnode(sim: Sim, name: str) -> str:
    return sim.run("gnt-instance", "list", "--no-headers", "-o", "pnode", name,
                   check=True).stdout.strip()


def qemu_runs(sim: Sim, node: str, name: str) -> bool:
    pid = read_pid(sim.base / node / "run" / f"{name}.pid")
    return pid is not None and pid_alive(pid)


def test_migrate_back_right_after_the_old_primary_was_killed_and_restarted(
        two: Sim) -> None:
    sim = two
    p = sim.run("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=64m", "-B",
                "memory=128", "-o", "busybox", "-n", "node01:node02", "vm2", timeout=180)
    assert p.returncode == 0, p.stderr
    wait_replica(sim, "vm2", "secondary", "UpToDate")
    console_until(sim, "vm2", "echo back-$((40+2)) > /mnt/b; sync; cat /mnt/b", "back-42")
    p = sim.run("gnt-instance", "migrate", "-f", "vm2", timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert pnode(sim, "vm2") == "node02"
    assert "node01" in wait_replica(sim, "vm2", "secondary", "UpToDate")
    # An idle guest, as in the report: with no write while node01 is away, nothing
    # tells vm2's mirror on node02 that its connection died.  (A write would fail the
    # mirror, and the resync that follows makes a new connection.)
    console_until(sim, "vm2", "umount /mnt; sync; echo idle-$((1+1))", "idle-2")
    # The planned way to take a master down on two nodes: its role (and the etcd vote)
    # first.  Killing the master itself would also stop node02's VMs whenever its etcd
    # is back later than node02's lease allows (README, Limits: node02 cannot tell a
    # dead master from a partition); CI met that under load, vm2 killed mid-migration.
    sim.run("gnt-cluster", "master-failover", data_dir="node02", check=True)

    sim.run("haven", "kill", "node01", check=True)
    sim.run("haven", "start", "node01", check=True)
    p = sim.run("gnt-instance", "migrate", "-f", "vm2", timeout=180)
    out = p.stdout + p.stderr
    assert "write access" not in out, out
    assert "Input/output error" not in out, out
    assert p.returncode == 0, out
    assert re.search(r"migrated in [\d.]+ ms", out), out

    assert pnode(sim, "vm2") == "node01" and status(sim, "vm2") == "running"
    assert qemu_runs(sim, "node01", "vm2") and not qemu_runs(sim, "node02", "vm2")
    assert "back-42" in console_until(sim, "vm2", "mount /dev/vda /mnt; cat /mnt/b",
                                      "back-42")
    assert "node02" in wait_replica(sim, "vm2", "secondary", "UpToDate")


def sha(sim: Sim, name: str, path: str, tag: str) -> str:
    """The sha256 of ``path`` read from the disk, not from the guest's page cache
    (which a live migration carries along)."""
    out = console_until(sim, name, f"sync; echo 3 > /proc/sys/vm/drop_caches; "
                        f"echo {tag}-$(sha256sum {path} | cut -c1-64)", f"{tag}-",
                        timeout=120)
    m = re.search(rf"{tag}-([0-9a-f]{{64}})", out)
    assert m is not None, out
    return m.group(1)


# make test-all only: the incremental resync after a migration is measured by
# tests/integration/test_replication.py (resyncs only what changed).
@pytest.mark.long
def test_after_a_migration_the_old_primary_gets_only_what_changed(two: Sim) -> None:
    """Issue 10: "After every migration ... Inconsistent 0% for a while": that was a full
    copy of every disk into the old primary.  Now only the blocks the guest wrote since
    the switchover are copied (the bitmap the destination started before activating its
    disks); a round trip proves the old primary's copy is complete."""
    sim = two
    p = sim.run("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=128m", "-B",
                "memory=128", "-o", "busybox", "-n", "node01:node02", "vm4", timeout=180)
    assert p.returncode == 0, p.stderr
    wait_replica(sim, "vm4", "secondary", "UpToDate")
    console_until(sim, "vm4", "dd if=/dev/urandom of=/mnt/a bs=1M count=8 2>/dev/null; "
                  "sync; echo a-$((1+1))", "a-2")
    sum_a = sha(sim, "vm4", "/mnt/a", "suma")
    wait_replica(sim, "vm4", "secondary", "UpToDate")
    sim.run("gnt-instance", "migrate", "-f", "vm4", check=True, timeout=180)
    # Written on node02 while node01's copy is being brought up to date.
    console_until(sim, "vm4", "dd if=/dev/urandom of=/mnt/b bs=1M count=8 2>/dev/null; "
                  "sync; echo b-$((1+1))", "b-2")
    sum_b = sha(sim, "vm4", "/mnt/b", "sumb")
    assert "node01" in wait_replica(sim, "vm4", "secondary", "UpToDate")
    log = (sim.base / "node02" / "logs" / "noded.log").read_text()
    used = [ln for ln in log.splitlines() if "vm4" in ln and "migration bitmap" in ln]
    assert used and "mode='bitmap'" in used[-1], used
    copied = int(re.search(r"bytes_copied=(\d+)", used[-1]).group(1))  # type: ignore[union-attr]
    assert copied < 64 << 20, used[-1]  # not the whole 128 MiB disk

    # Back onto node01's copy: both files read from its disk as they were written.
    sim.run("gnt-instance", "migrate", "-f", "vm4", check=True, timeout=180)
    assert pnode(sim, "vm4") == "node01"
    assert sha(sim, "vm4", "/mnt/a", "again") == sum_a
    assert sha(sim, "vm4", "/mnt/b", "again") == sum_b
