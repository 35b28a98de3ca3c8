"""Central storage on a real 3-node cluster with a real iSCSI target (issue 13).

``haven up --storage iscsi`` starts Debian's tgtd on its own address; instances with
``-t ext --disk ...,provider=iscsi`` have their disks on LUNs that QEMU opens itself
(libiscsi, CHAP).  Checked: they run, migrate and fail over to any node, HA restarts
them on the node the allocator picks after fencing the dead node at the storage, a
frozen node is refused by the target, a storage outage pauses the guest instead of
corrupting it and it goes on when the target returns, node evacuation, removal; a
third-party ExtStorage provider (``tests/extstorage/shareddir``) works unchanged; bad
input is one sentence and leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Sim, make_sim
from tests.e2e.test_ha import node_pids
from tests.e2e.test_instances import console_until
from tests.e2e.test_two_node import acked, check_write_kept, placement, qemus
from tests.e2e.test_two_node import start_writer as _start_writer

pytestmark = pytest.mark.e2e

PROVIDERS = Path(__file__).resolve().parent.parent / "extstorage"
NODES = ("node01", "node02", "node03")


@pytest.fixture(scope="module")
def san(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    os.environ["HAVEN_EXTSTORAGE_PATH"] = str(PROVIDERS)
    try:
        yield from make_sim(tmp_path_factory.mktemp("san"), 3, extra=("--storage", "iscsi"))
    finally:
        os.environ.pop("HAVEN_EXTSTORAGE_PATH", None)


def add(sim: Sim, name: str, node: str, *disks: str) -> None:
    args = [a for i, d in enumerate(disks or ("64m",))
            for a in ("--disk", f"{i}:size={d},provider=iscsi")]
    p = sim.run("gnt-instance", "add", "-t", "ext", *args, "-B", "memory=128",
                "-o", "busybox", "-n", node, name, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr


def start_writer(sim: Sim, run: int) -> None:
    """The shared writer, once vm1's shell answers: a command typed while the guest
    still boots loses its first characters (the writer never ran, its echo did)."""
    console_until(sim, "vm1", "echo shell-$((40+2))", "shell-42")
    _start_writer(sim, run)


def targets(sim: Sim) -> dict[str, list[str]]:
    """Every target of the storage server and the initiators its ACL admits."""
    from haven.sim import san as san_mod
    from haven.storage.tgt import Tgtadm

    srv = san_mod.load(sim.base)
    assert srv is not None
    return {t.name: list(t.acl) for t in Tgtadm(control=srv.control).targets()}


def initiator(node: str) -> str:
    from haven.storage.extstorage import initiator_name

    return initiator_name("haven-local", node)


def test_an_iscsi_instance_runs_moves_and_is_recovered_on_any_node(san: Sim) -> None:
    sim = san
    add(sim, "vm1", "node01", "64m", "32m")
    acl = [a for t, a in targets(sim).items() if "ext.disk" in t]
    assert len(acl) == 2 and all(a == [initiator("node01")] for a in acl), acl
    console_until(sim, "vm1", "echo first > /mnt/f; sync; echo ok-$((1+1))", "ok-2")
    # To a third node, live: not a secondary, any node reaches the LUN.
    p = sim.run("gnt-instance", "migrate", "-f", "-n", "node03", "vm1", timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert placement(sim)["vm1"] == ("running", "node03")
    acl = [a for t, a in targets(sim).items() if "ext.disk" in t]
    assert all(a == [initiator("node03")] for a in acl), acl  # the source was detached
    assert "first" in console_until(sim, "vm1", "cat /mnt/f; echo end-$((3+4))", "end-7")
    p = sim.run("gnt-instance", "failover", "-f", "-n", "node02", "vm1", timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert placement(sim)["vm1"] == ("running", "node02")
    # The primary dies under a writing guest: HA fences it at the storage and restarts
    # the instance on the node the allocator picks; every acknowledged write is kept.
    start_writer(sim, 0)
    time.sleep(2)
    sim.run("haven", "kill", "node02", check=True)
    seq = acked(sim, "node02")
    t0 = time.monotonic()
    while True:  # on the node the allocator picks: either survivor may be it
        assert len(qemus(sim, "vm1")) <= 1
        st, where = placement(sim)["vm1"]
        if st == "running" and where != "node02":
            break
        assert time.monotonic() - t0 < 90, (st, where)
        time.sleep(0.2)
    print(f"vm1 restarted on {where} {time.monotonic() - t0:.1f} s after the kill of node02")
    check_write_kept(sim, 0, seq)
    events = sim.run("haven", "events", check=True).stdout
    assert "the storage now refuses node02" in events, events[-3000:]
    assert all(initiator("node02") not in a for a in targets(sim).values())
    sim.run("haven", "start", "node02", check=True)
    new = placement(sim)["vm1"][1]
    # Evacuation moves it off live, to a node the allocator picks.
    p = sim.run("gnt-node", "evacuate", "-f", "--primary-only", new, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert placement(sim)["vm1"][1] != new
    assert "first" in console_until(sim, "vm1", "cat /mnt/f; echo end-$((3+4))", "end-7")
    sim.run("gnt-instance", "remove", "-f", "vm1", check=True, timeout=180)
    assert not [t for t in targets(sim) if "ext.disk" in t]
    assert not list((sim.base / "san" / "pool").glob("*.ext.disk*"))


def test_a_frozen_node_is_refused_by_the_storage_and_the_guest_is_intact(
        san: Sim) -> None:
    sim = san
    master = sim.master()
    victim = next(n for n in NODES if n != master)
    add(sim, "vm1", victim, "64m", "32m")
    start_writer(sim, 1)
    time.sleep(2)
    pids = node_pids(sim, victim)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 90
        while placement(sim)["vm1"][1] == victim or placement(sim)["vm1"][0] != "running":
            assert time.monotonic() < deadline, placement(sim)
            time.sleep(0.3)
        # Before the frozen node wakes up, the target already refuses it.
        assert all(initiator(victim) not in a for a in targets(sim).values())
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    seq = acked(sim, victim)
    resumed = time.monotonic()
    while len(qemus(sim, "vm1")) > 1:
        assert time.monotonic() - resumed < 5.0, "the old QEMU was not stopped"
        time.sleep(0.01)
    check_write_kept(sim, 1, seq)
    sim.run("gnt-instance", "remove", "-f", "vm1", check=True, timeout=180)


def test_a_storage_outage_pauses_the_guest_and_it_goes_on_when_the_target_returns(
        san: Sim) -> None:
    sim = san
    add(sim, "vm1", "node01", "64m", "32m")
    start_writer(sim, 2)
    time.sleep(2)
    node = placement(sim)["vm1"][1]
    sim.run("haven", "kill", "san", check=True)
    # No write completes while the target is gone, and none fails into the guest:
    # libiscsi keeps logging in again, the guest's requests wait (a QEMU that does see
    # an error stops the guest, werror=stop, and the agent continues it afterwards).
    time.sleep(3)
    before = acked(sim, node)
    time.sleep(4)
    assert acked(sim, node) == before, "writes were acknowledged with the target gone"
    text = (sim.base / node / "run" / "vm1.console.log").read_text(errors="replace")
    assert "\nE " not in text and "pwrite" not in text, text[-500:]
    assert _qmp_status(sim, node, "vm1") in ("running", "io-error")
    sim.run("haven", "start", "san", check=True)
    deadline = time.monotonic() + 60
    while acked(sim, node) <= before + 5:
        assert time.monotonic() < deadline, f"the writer did not go on after {before}"
        time.sleep(0.5)
    check_write_kept(sim, 2, before)
    sim.run("gnt-instance", "remove", "-f", "vm1", check=True, timeout=180)


def _qmp_status(sim: Sim, node: str, name: str) -> str:
    from haven.hypervisor.qemu.qmp import qmp_call

    try:
        return str(qmp_call(sim.base / node / "run" / f"{name}.qmp-status",
                            "query-status")["status"])
    except Exception as exc:  # a test probe: say what it saw
        return f"no answer ({exc})"


def test_a_third_party_provider_and_bad_input(san: Sim) -> None:
    sim = san
    shared = sim.base / "shared"
    p = sim.run("gnt-instance", "add", "-t", "ext", "--disk",
                f"0:size=32m,provider=shareddir,dir={shared}", "-B", "memory=128",
                "-o", "busybox", "-n", "node01", "vm2", timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(list(shared.glob("*.ext.disk0"))) == 1
    assert "hi-42" in console_until(sim, "vm2", "echo hi-$((40+2))", "hi-42")
    p = sim.run("gnt-instance", "migrate", "-f", "-n", "node02", "vm2", timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    assert placement(sim)["vm2"] == ("running", "node02")
    sim.run("gnt-instance", "remove", "-f", "vm2", check=True, timeout=180)
    assert not list(shared.glob("*.ext.disk0*"))
    # A provider that is not installed, a parameter it does not take, no provider.
    for disk, want in (("0:size=32m,provider=nosuch", "provider nosuch is not installed"),
                       ("0:size=32m,provider=iscsi,colour=red",
                        "does not take the parameter(s) colour"),
                       ("0:size=32m", "needs a provider")):
        p = sim.run("gnt-instance", "add", "-t", "ext", "--disk", disk, "-o", "busybox",
                    "-n", "node01", "bad1", timeout=120)
        assert p.returncode != 0 and want in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert sim.run("gnt-instance", "list", "--no-headers", "-o", "name").stdout.split() \
        == [], "a refused add left an instance behind"
    assert not [t for t in targets(sim) if "ext.disk" in t]
