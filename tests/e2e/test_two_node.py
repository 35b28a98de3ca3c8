"""The reference deployment, as its administrator types it (issue 10): two nodes, three
`drbd` instances, Ganeti's own commands back to back with no waiting between them.

1. Move an instance: create vm1..vm3 on node01 with node02 as secondary (vm3 with
   ``--no-start``, then ``gnt-instance startup``), open vm1's console, migrate vm2.
2. Planned shutdown of the primary node: fail node01's instances over to node02, hand
   the master role to node02 (run on node02), shut node01 down; the cluster is managed
   from node02; node01 comes back.
3. Unplanned loss of the master node (node02, with vm1 and vm3; vm2 migrated back to
   node01): on node01 ``master-failover --no-voting --yes-do-it`` and at once
   ``gnt-node failover --ignore-consistency node02``; node02 returns; redist-conf.

After each scenario: where every instance runs, exactly one QEMU per instance, every
console answers, and every write the guest writer saw acknowledged is on the disk of
the instance's new primary.  Node shutdowns are a SIGKILL of every process of the node
(``haven kill``) or a clean stop (``haven stop``).

Each step's duration is printed (``pytest -s``) and, with ``HAVEN_TIMINGS=FILE``,
written as JSON: ``bench/two_node.py`` runs this and reports them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Sim, make_sim
from tests.e2e.test_instances import console_until

pytestmark = pytest.mark.e2e

INSTANCES = ("vm1", "vm2", "vm3")
REGION = 512  # 4 KiB blocks per writer run on vm1's disk 1 (8 MiB: four runs)


class Scenario:
    """Runs commands as a user would and records how long each took."""

    def __init__(self, sim: Sim, label: str) -> None:
        self.sim = sim
        self.label = label
        self.steps: list[dict[str, object]] = []

    def step(self, *argv: str, on: str | None = None, timeout: float = 300,
             ok: bool = True) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        p = self.sim.run(*argv, timeout=timeout, data_dir=on)
        took = time.monotonic() - t0
        words = " ".join(argv) + (f"  (on {on})" if on else "")
        self.steps.append({"command": words, "seconds": round(took, 2),
                           "rc": p.returncode})
        print(f"{took:7.2f}s  {words}  -> {p.returncode}")
        if ok:
            assert p.returncode == 0, f"{words} failed:\n{p.stdout}\n{p.stderr}"
            assert "Traceback" not in p.stderr, p.stderr
        return p

    def save(self) -> None:
        path = os.environ.get("HAVEN_TIMINGS")
        if not path:
            return
        out = Path(path)
        runs = json.loads(out.read_text()) if out.exists() else []
        runs.append({"variant": self.label, "steps": self.steps})
        out.write_text(json.dumps(runs, indent=1))


def placement(sim: Sim) -> dict[str, tuple[str, str]]:
    p = sim.run("gnt-instance", "list", "--no-headers", "--separator=|", "-o",
                "name,status,pnode", check=True)
    rows = [ln.split("|") for ln in p.stdout.splitlines() if ln.strip()]
    return {r[0]: (r[1], r[2]) for r in rows}


def qemus(sim: Sim, name: str) -> list[int]:
    """Every live QEMU of instance ``name`` in this cluster, whatever node runs it."""
    found = []
    marker = f"guest={name},".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in argv.split(b"\0")[0] and marker in argv \
                and str(sim.base).encode() in argv:
            found.append(int(entry.name))
    return found


def check_cluster(sim: Sim, where: dict[str, str], settle: float = 0.0) -> None:
    """Every instance runs where expected, with exactly one QEMU, and answers.  With
    ``settle``, keep checking that no second copy appears for that long (a node that
    has just returned runs its agent's first cycles)."""
    deadline = time.monotonic() + settle
    while True:
        assert {n: placement(sim)[n] for n in INSTANCES} == \
            {n: ("running", node) for n, node in where.items()}
        for name in INSTANCES:
            pids = qemus(sim, name)
            assert len(pids) == 1, f"{name} runs {len(pids)} QEMU processes: {pids}"
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for name in INSTANCES:
        out = console_until(sim, name, "echo alive-$((40+2))", "alive-42")
        assert "alive-42" in out


def start_writer(sim: Sim, run: int) -> None:
    """vm1 writes 4 KiB blocks with O_DIRECT|O_DSYNC on disk 1 (region ``run``) and
    prints ``A <seq>`` on its console after each acknowledged write."""
    console_until(sim, "vm1", f"diskw /dev/vdb {run * REGION} {REGION} 100000000 20 "
                  f"& echo writer-$((40+{run}))", f"writer-{40 + run}")


def acked(sim: Sim, node: str) -> int:
    """The last sequence number vm1's writer saw acknowledged on ``node`` (read from
    that node's console log of vm1 before anything restarts vm1 there)."""
    text = (sim.base / node / "run" / "vm1.console.log").read_text(errors="replace")
    seqs = [int(m) for m in re.findall(r"^A (\d+)\r?$", text, re.M)]
    assert seqs, f"vm1's writer acknowledged nothing on {node}"
    return max(seqs)


def check_write_kept(sim: Sim, run: int, seq: int) -> None:
    """The block of write ``seq`` holds ``seq`` or a later write of the same block."""
    block = run * REGION + seq % REGION
    deadline = time.monotonic() + 30
    while True:
        # A guest that has just booted may not have probed its second disk yet: say so
        # rather than read nothing, and look again.
        out = console_until(sim, "vm1", f"[ -b /dev/vdb ] || echo NO-''VDB; dd if=/dev/vdb "
                            f"bs=4096 skip={block} count=1 2>/dev/null | head -c 17; echo; "
                            f"echo read-$((40+2))", "read-42")
        if "NO-VDB" not in out or time.monotonic() > deadline:
            break
        time.sleep(1)
    found = re.findall(r"SEQ (\d{12})", out)
    assert found, f"block {block} of vm1's disk 1 holds no write: {out!r}"
    got = int(found[-1])
    assert got >= seq and got % REGION == seq % REGION, \
        f"acknowledged write {seq} is lost: block {block} holds {got}"


@pytest.fixture()
def two(tmp_path: Path) -> Iterator[Sim]:
    yield from make_sim(tmp_path, 2)


# "stop" is long (3.5 min) and its steps are covered by the kill variant and by
# test_demo.py (which shuts node01 down with haven stop): make test-all runs it.
@pytest.mark.parametrize("shutdown", ["kill", pytest.param("stop", marks=pytest.mark.long)])
def test_reference_scenarios_on_two_nodes(two: Sim, shutdown: str) -> None:
    sim = two
    s = Scenario(sim, f"shutdown by haven {shutdown}")
    try:
        # -- 1. move an instance ------------------------------------------------------
        s.step("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=64m", "--disk",
               "1:size=8m", "-B", "memory=128", "-o", "busybox", "-n", "node01:node02",
               "vm1")
        s.step("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=64m", "-B",
               "memory=128", "-o", "busybox", "-n", "node01:node02", "vm2")
        s.step("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=64m", "-B",
               "memory=128", "-o", "busybox", "-n", "node01:node02", "--no-start", "vm3")
        s.step("gnt-instance", "startup", "vm3")
        t0 = time.monotonic()
        console_until(sim, "vm1", "echo hello-$((6*7))", "hello-42")
        s.steps.append({"command": "gnt-instance console vm1",
                        "seconds": round(time.monotonic() - t0, 2), "rc": 0})
        start_writer(sim, 0)
        s.step("gnt-instance", "migrate", "-f", "vm2")
        check_cluster(sim, {"vm1": "node01", "vm2": "node02", "vm3": "node01"})

        # -- 2. planned shutdown of the primary node ------------------------------------
        s.step("gnt-instance", "failover", "-f", "vm1")
        check_write_kept(sim, 0, acked(sim, "node01"))
        s.step("gnt-instance", "failover", "-f", "vm3")
        s.step("gnt-cluster", "master-failover", on="node02")
        s.step("haven", shutdown, "node01")
        assert s.step("gnt-cluster", "getmaster").stdout.strip() == "node02"
        s.step("gnt-node", "list")
        s.step("gnt-instance", "reboot", "vm2")  # a write through the job queue
        check_cluster(sim, {"vm1": "node02", "vm2": "node02", "vm3": "node02"})
        s.step("haven", "start", "node01")
        assert s.step("gnt-cluster", "getmaster").stdout.strip() == "node02", \
            "the master role went back to node01 on its return"

        # -- 3. unplanned loss of the master node ----------------------------------------
        # At once after node01's return: its replica of vm2 must be taken back in sync
        # (the migration waits for it) rather than the migration fail.
        s.step("gnt-instance", "migrate", "-f", "vm2")
        start_writer(sim, 1)
        check_cluster(sim, {"vm1": "node02", "vm2": "node01", "vm3": "node02"}, settle=4)
        s.step("haven", shutdown, "node02")
        seq = acked(sim, "node02")
        s.step("gnt-cluster", "master-failover", "--no-voting", "--yes-do-it",
               on="node01")
        s.step("gnt-node", "failover", "--ignore-consistency", "node02")
        check_cluster(sim, {"vm1": "node01", "vm2": "node01", "vm3": "node01"})
        check_write_kept(sim, 1, seq)
        s.step("haven", "start", "node02")
        s.step("gnt-cluster", "master-failover", on="node01")  # as needed: a no-op
        s.step("gnt-cluster", "redist-conf")
        assert s.step("gnt-cluster", "getmaster").stdout.strip() == "node01"
        check_cluster(sim, {"vm1": "node01", "vm2": "node01", "vm3": "node01"}, settle=6)
        s.step("gnt-cluster", "verify", timeout=120)
    finally:
        s.save()


@pytest.fixture()
def witnessed(tmp_path: Path) -> Iterator[Sim]:
    yield from make_sim(tmp_path, 3, witness=True)


def test_a_witness_keeps_two_vm_nodes_writable_through_either_loss(
        witnessed: Sim) -> None:
    sim = witnessed
    s = Scenario(sim, "witness")
    verify = s.step("gnt-cluster", "verify").stdout
    assert "majority of 3 etcd voters, 1 of them vote-only witness" in verify
    p = s.step("gnt-instance", "add", "-t", "file", "--disk", "0:size=64m", "-B",
               "memory=128", "-o", "busybox", "-n", "node03", "vmw", ok=False)
    assert p.returncode != 0 and "node03" in (p.stdout + p.stderr)
    for lost, other in (("node01", "node02"), ("node02", "node01")):
        s.step("haven", "kill", lost)
        # Writable at once through the two survivors: a job runs (after a new master
        # is elected when the master was lost) and its result is stored.
        s.step("gnt-debug", "delay", "0.1")
        s.step("gnt-instance", "add", "-t", "file", "--disk", "0:size=16m", "-B",
               "memory=64", "-o", "busybox", "-n", other, "--no-start", f"w{lost}")
        s.step("gnt-instance", "remove", "-f", f"w{lost}")
        s.step("haven", "start", lost)
    s.step("gnt-cluster", "verify")
    s.save()
