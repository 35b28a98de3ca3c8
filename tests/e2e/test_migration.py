"""Live migration, move and maintenance on a real local cluster."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Sim, make_sim
from tests.e2e.test_drbd import wait_replica
from tests.e2e.test_instances import console_until, status

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    yield from make_sim(tmp_path_factory.mktemp("mig"), 3)


def pnode(sim: Sim, name: str) -> str:
    return sim.run("gnt-instance", "list", "--no-headers", "-o", "pnode", name,
                   check=True).stdout.strip()


def test_shared_instance_migrates_live_and_keeps_running(mig: Sim) -> None:
    # 16 MiB/s: the ~90 MiB a booted busybox guest sends take ~6 s instead of 0.4 s,
    # time for two or three progress lines.
    p = mig.run("gnt-instance", "add", "-t", "sharedfile", "--disk", "0:size=32m", "-B",
                "memory=128", "-H", "migration_bandwidth=16", "-o", "busybox", "-n",
                "node01", "shared1", timeout=180)
    assert p.returncode == 0, p.stderr
    console_until(mig, "shared1", "echo boot-$((1+1))", "boot-2")
    p = mig.run("gnt-instance", "migrate", "-n", "node03", "shared1", timeout=180)
    assert p.returncode == 0, p.stderr
    print(p.stdout)  # for -s: what a user sees
    m = re.search(r"downtime ([\d.]+) ms", p.stdout)
    assert m is not None, p.stdout
    # The memory copy's progress while it runs (the source publishes it every second,
    # the job logs it every 2 s), then its end before the switchover.
    assert re.search(r"\* memory: \d+% \([\d.]+ of [\d.]+ MiB\)", p.stdout), p.stdout
    assert p.stdout.index("* memory: copy finished") < p.stdout.index("* migrated in")
    assert pnode(mig, "shared1") == "node03" and status(mig, "shared1") == "running"
    # The same guest, not a reboot: its uptime kept counting.
    out = console_until(mig, "shared1", "cut -d. -f1 /proc/uptime", "\n")
    assert int(out.strip().split()[-1]) >= 1
    assert not (mig.base / "node01" / "run" / "shared1.pid").exists()


def test_drbd_instance_migrates_to_its_secondary_with_its_data(mig: Sim) -> None:
    p = mig.run("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=64m", "-B",
                "memory=128", "-o", "busybox", "-n", "node01:node02", "rep1", timeout=180)
    assert p.returncode == 0, p.stderr
    wait_replica(mig, "rep1", "secondary", "UpToDate")
    console_until(mig, "rep1", "echo kept-$((2*21)) > /mnt/k; sync; cat /mnt/k", "kept-42")
    p = mig.run("gnt-instance", "migrate", "rep1", timeout=180)
    assert p.returncode == 0, p.stderr
    assert pnode(mig, "rep1") == "node02"
    assert "kept-42" in console_until(mig, "rep1", "cat /mnt/k", "kept-42")
    # Protected again, the other way.
    line = wait_replica(mig, "rep1", "secondary", "UpToDate")
    assert "node01" in line


@pytest.mark.parametrize(("argv", "needle"), [
    (["migrate", "rep1", "-n", "node03"], "its secondary"),
    (["migrate", "-n", "node03", "shared1"], "already runs on node03"),
])
def test_bad_migrations_are_refused(mig: Sim, argv: list[str], needle: str) -> None:
    p = mig.run("gnt-instance", *argv)
    assert p.returncode == 1 and needle in p.stderr, p.stderr


def test_node_migrate_logs_each_instances_progress_in_its_job(mig: Sim) -> None:
    """``gnt-node migrate`` submits one migrate job per instance: each job's log has
    that instance's memory progress, and the CLI prints it as it comes, after the
    instance's name, then one summary line per instance."""
    p = mig.run("gnt-node", "migrate", "node03", timeout=180)
    assert p.returncode == 0, p.stderr
    assert "shared1: migrated live to node0" in p.stdout, p.stdout
    assert re.search(r"shared1: \* memory: \d+% ", p.stdout), p.stdout
    last = mig.run("gnt-job", "list", "--no-headers", "-o", "id",
                   check=True).stdout.split()[-1]
    info = mig.run("gnt-job", "info", last, check=True).stdout
    assert "instance_name: shared1" in info, info
    assert re.search(r"\* memory: \d+% \([\d.]+ of [\d.]+ MiB\)", info), info
    assert "* memory: copy finished" in info, info


def test_file_and_stopped_instances_are_refused_and_move_works(mig: Sim) -> None:
    p = mig.run("gnt-instance", "add", "-t", "file", "--disk", "0:size=32m", "-B",
                "memory=128", "-o", "busybox", "-n", "node01", "local1", timeout=180)
    assert p.returncode == 0, p.stderr
    p = mig.run("gnt-instance", "migrate", "local1")
    assert p.returncode == 1 and "gnt-instance move" in p.stderr
    out = console_until(mig, "local1", "echo moved-$((4+4)) > /mnt/m; sync; cat /mnt/m",
                        "moved-8")
    assert "moved-8" in out, out
    p = mig.run("gnt-instance", "move", "-n", "node02", "local1", timeout=180)
    assert p.returncode == 0, p.stderr
    assert pnode(mig, "local1") == "node02"
    assert "moved-8" in console_until(mig, "local1", "cat /mnt/m", "moved-8")
    mig.run("gnt-instance", "shutdown", "--timeout", "20", "local1", check=True)
    p = mig.run("gnt-instance", "migrate", "-n", "node03", "local1")
    assert p.returncode == 1


def test_maintenance_moves_everything_and_the_master_role(mig: Sim) -> None:
    mig.run("gnt-cluster", "master-failover", "--target", "node02", check=True)
    wait_replica(mig, "rep1", "secondary", "UpToDate")
    p = mig.run("haven", "node", "maintenance", "node02", timeout=300)
    assert p.returncode == 0, p.stderr
    assert "master role handed to" in p.stdout
    assert mig.master() != "node02"
    rows = mig.run("gnt-instance", "list", "--no-headers", "-o", "name,pnode,status",
                   "--separator=|", check=True).stdout.splitlines()
    for row in rows:
        name, node, st = row.split("|")
        assert node != "node02", row
        if name != "local1":
            assert st == "running", row
    role = mig.run("gnt-node", "list", "--no-headers", "-o", "offline", "node02").stdout
    assert role.strip() == "Y"
    p = mig.run("haven", "node", "maintenance", "--end", "node02", check=True)
    role = mig.run("gnt-node", "list", "--no-headers", "-o", "role", "node02").stdout
    assert role.strip() == "C"
