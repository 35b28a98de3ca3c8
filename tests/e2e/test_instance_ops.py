"""Instance operations as an administrator types them, back to back, on a two-node
cluster: a shutdown right after a start, a drbd instance migrated right after its
creation, and what `gnt-node list` and the node logs say meanwhile."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Sim, make_sim
from tests.e2e.test_instances import status

pytestmark = pytest.mark.e2e

# A guest that hears the power button powers off in well under a second; 30 s is far
# from the 120 s timeout a lost press used to cost.
SHUTDOWN_BOUND = 30.0


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    yield from make_sim(tmp_path_factory.mktemp("ops"), 2)


def timed(sim: Sim, *argv: str, timeout: float = 300) -> tuple[float, str]:
    t0 = time.monotonic()
    p = sim.run(*argv, timeout=timeout)
    took = time.monotonic() - t0
    assert p.returncode == 0, f"{argv}: {p.stdout}\n{p.stderr}"
    return took, p.stdout


def test_shutdown_right_after_a_start_takes_seconds(ops: Sim) -> None:
    timed(ops, "gnt-instance", "add", "-t", "file", "--disk", "0:size=32m", "-B",
          "memory=128", "-o", "busybox", "-n", "node01", "quick")
    took, out = timed(ops, "gnt-instance", "shutdown", "quick")
    assert took < SHUTDOWN_BOUND, f"shutdown right after add took {took:.1f} s:\n{out}"
    assert status(ops, "quick") == "ADMIN_down"
    timed(ops, "gnt-instance", "startup", "quick")
    took2, out2 = timed(ops, "gnt-instance", "shutdown", "quick")
    assert took2 < SHUTDOWN_BOUND, f"shutdown right after startup took {took2:.1f} s:\n{out2}"
    assert status(ops, "quick") == "ADMIN_down"
    print(f"shutdown right after add: {took:.1f} s; after startup: {took2:.1f} s")


def test_drbd_add_waits_for_the_sync_so_migrate_works_at_once(ops: Sim) -> None:
    took, out = timed(ops, "gnt-instance", "add", "-t", "drbd", "--disk", "0:size=32m",
                      "-B", "memory=128", "-o", "busybox", "-n", "node01:node02", "rep")
    timed(ops, "gnt-instance", "migrate", "-f", "rep")
    assert "Waiting for instance rep to sync disks" in out, out
    assert "rep's disks are in sync" in out, out
    pnode = ops.run("gnt-instance", "list", "--no-headers", "-o", "pnode", "rep",
                    check=True).stdout.strip()
    assert pnode == "node02" and status(ops, "rep") == "running"
    print(f"drbd add with its sync: {took:.1f} s")


def test_node_list_counts_primary_and_secondary_instances(ops: Sim) -> None:
    # After the tests above: quick (file) on node01; rep (drbd) on node02, node01 holds
    # its replica.
    out = ops.run("gnt-node", "list", "--no-headers", "--separator=|", "-o",
                  "name,pinst_cnt,sinst_cnt,pinst_list,sinst_list", check=True).stdout
    rows = sorted(ln.split("|") for ln in out.splitlines())
    assert rows == [["node01", "1", "1", "quick", "rep"], ["node02", "1", "0", "rep", ""]]


def test_no_wait_for_sync_and_no_start_say_why_they_do_not_wait(ops: Sim) -> None:
    _t, out = timed(ops, "gnt-instance", "add", "-t", "drbd", "--disk", "0:size=32m", "-B",
                    "memory=128", "-o", "busybox", "-n", "node02:node01",
                    "--no-wait-for-sync", "nowait")
    assert "--no-wait-for-sync" in out and "Waiting for instance" not in out, out
    _t, out = timed(ops, "gnt-instance", "add", "-t", "drbd", "--disk", "0:size=32m", "-B",
                    "memory=128", "-o", "busybox", "-n", "node02:node01", "--no-start",
                    "stopped")
    assert "copied once it runs" in out and "Waiting for instance" not in out, out
    for name in ("nowait", "stopped"):
        timed(ops, "gnt-instance", "remove", "-f", name)


def test_node_logs_carry_no_request_traces(ops: Sim) -> None:
    for node in ("node01", "node02"):
        text = (ops.base / node / "logs" / "noded.log").read_text(errors="replace")
        assert "HTTP Request:" not in text
        assert "joined cluster" in text
