"""The built-in allocator: Ganeti's N+1 rule, placement, HA recovery targets, and how
instance creation and ``gnt-cluster verify`` use them (in-memory store)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import haven.master.opcodes  # noqa: F401  (registers the opcodes)
from haven.errors import HavenError, InsufficientResources
from haven.master.allocator import (
    InstLoad,
    Model,
    NodeCap,
    n1_failures,
    pick_node,
    place,
    recovery_target,
)
from haven.master.lu import MasterContext, lu_class
from haven.model.cluster import Cluster
from haven.model.instance import Instance
from haven.model.keys import Keys
from haven.model.node import Node, NodeFacts
from haven.store import Guard, MemoryStore
from tests.unit.support import NoRpc


def three(a: int, b: int, c: int, *insts: InstLoad) -> Model:
    return Model.of([NodeCap("a", 8192, a), NodeCap("b", 8192, b), NodeCap("c", 8192, c)],
                    insts)


# --- N+1 -----------------------------------------------------------------------------


def test_the_roomiest_node_is_skipped_when_it_would_break_n_plus_one() -> None:
    # x (2000 MiB, shared) on a can only be absorbed by b (3000 free) while c has 1900:
    # putting the new 1200 MiB instance on b leaves a's loss unabsorbable.
    m = three(500, 3000, 1900, InstLoad("x", "a", 2000))
    assert n1_failures(m) == []
    where = place(m, 1200, name="new")
    assert where == place(m, 1200, name="new") and where.node == "c"
    assert where.warning == ""
    assert n1_failures(m.placed(InstLoad("new", "b", 1200))) != []


def test_without_n_plus_one_at_stake_the_roomiest_node_wins() -> None:
    m = three(500, 3000, 1900)
    assert pick_node(m, 1200) == "b"


def test_a_placement_that_breaks_n_plus_one_is_made_with_a_warning_when_nothing_else_fits(
        ) -> None:
    m = Model.of([NodeCap("a", 4096, 500), NodeCap("b", 4096, 2500)],
                 [InstLoad("x", "a", 2000)])
    where = place(m, 1000, name="new")
    assert where.node == "b"
    assert where.warning.startswith("no node keeps the cluster N+1 redundant with new "
                                    "(1000 MiB) on it; placed on b")
    assert "should node a fail (2000MiB needed by x, 1500MiB available" in where.warning


def test_drbd_instances_count_against_their_secondary_only() -> None:
    # c has plenty of room but a drbd instance can only restart on its secondary b.
    m = three(0, 1500, 8000, InstLoad("d1", "a", 2000, disk_template="drbd",
                                      secondary="b"))
    assert n1_failures(m) == [
        "node b: not enough memory to accomodate instance failovers should node a fail "
        "(2000MiB needed, 1500MiB available)"]
    shared = three(0, 1500, 8000, InstLoad("s1", "a", 2000, disk_template="sharedfile"))
    assert n1_failures(shared) == []


def test_drbd_failovers_are_summed_per_secondary_and_primary_pair() -> None:
    m = three(0, 3000, 3000,
              InstLoad("d1", "a", 1000, disk_template="drbd", secondary="b"),
              InstLoad("d2", "a", 1000, disk_template="drbd", secondary="b"),
              InstLoad("d3", "a", 1000, disk_template="drbd", secondary="c"))
    assert n1_failures(m) == []
    tight = three(0, 1999, 3000,
                  InstLoad("d1", "a", 1000, disk_template="drbd", secondary="b"),
                  InstLoad("d2", "a", 1000, disk_template="drbd", secondary="b"))
    assert n1_failures(tight) == [
        "node b: not enough memory to accomodate instance failovers should node a fail "
        "(2000MiB needed, 1999MiB available)"]


def test_shared_instances_are_packed_largest_first_and_the_leftovers_named() -> None:
    m = three(0, 1500, 1500, InstLoad("big", "a", 1400), InstLoad("mid", "a", 1000),
              InstLoad("small", "a", 600))
    # big -> b (100 left), mid -> c (500 left), small fits nowhere.
    assert n1_failures(m) == [
        "cluster: not enough memory to accomodate instance failovers should node a fail "
        "(600MiB needed by small, 500MiB available on the roomiest other node)"]


def test_down_instances_local_disks_and_offline_nodes_do_not_count() -> None:
    m = Model.of([NodeCap("a", 4096, 0), NodeCap("b", 4096, 100),
                  NodeCap("off", 4096, 0, offline=True)],
                 [InstLoad("down", "a", 2000, up=False),
                  InstLoad("local", "a", 2000, disk_template="file"),
                  InstLoad("gone", "off", 2000)])
    assert n1_failures(m) == []


def test_a_dead_or_drained_node_absorbs_no_shared_instance() -> None:
    for other in (NodeCap("b", 4096, 4000, alive=False), NodeCap("b", 4096, 4000,
                                                                 drained=True)):
        m = Model.of([NodeCap("a", 4096, 0), other], [InstLoad("s", "a", 1000)])
        assert len(n1_failures(m)) == 1


def test_nothing_fits_names_the_roomiest_node() -> None:
    with pytest.raises(InsufficientResources, match=r"the most any node has free is 3000 "
                                                    r"MiB \(on b\)"):
        place(three(500, 3000, 1900), 4000, name="vm9")
    with pytest.raises(InsufficientResources, match="every node is down"):
        place(Model.of([NodeCap("a", 4096, 4000, drained=True)]), 10)


def test_ties_go_to_fewer_instances_then_the_name() -> None:
    m = three(2000, 2000, 2000, InstLoad("x", "a", 10, disk_template="file"))
    assert pick_node(m, 100) == "b"
    assert pick_node(m, 100, exclude=("b",)) == "c"
    assert pick_node(m, 100, prefer="c") == "c"


# --- HA recovery targets -------------------------------------------------------------


def test_recovery_goes_to_the_live_undrained_node_with_the_most_room() -> None:
    m = Model.of([NodeCap("dead", 0, 9000, alive=False), NodeCap("a", 0, 3000),
                  NodeCap("b", 0, 5000), NodeCap("d", 0, 9000, drained=True),
                  NodeCap("v", 0, 9000, vm_capable=False)],
                 [InstLoad("s", "dead", 1000)])
    assert recovery_target(m, "s", 1000, "dead", {}) == "b"
    assert recovery_target(m, "s", 1000, "dead", {"b": 3000}) == "a"
    assert recovery_target(m, "s", 4000, "dead", {"b": 3000}) == ""


def test_recovery_ties_go_to_fewer_instances_then_the_name() -> None:
    m = Model.of([NodeCap("dead", 0, 0, alive=False), NodeCap("a", 0, 3000),
                  NodeCap("b", 0, 3000), NodeCap("c", 0, 3000)],
                 [InstLoad("x", "a", 10), InstLoad("s", "dead", 100)])
    assert recovery_target(m, "s", 100, "dead", {}) == "b"


# --- wired into the opcodes ----------------------------------------------------------


def dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


@pytest.fixture
def ctx() -> Iterator[MasterContext]:
    """Nodes a (500 MiB free, runs x: 2000 MiB sharedfile), b (3000), c (1900)."""
    store = MemoryStore("/haven/ops/")
    assert store.create("master", b'{"node": "a"}') is not None
    token = store.get("master").create_revision  # type: ignore[union-attr]
    store.put(Keys.cluster, dumps(Cluster("c", "u", 0, 0, True, (), "", "").to_json()))
    for i, (name, free) in enumerate((("a", 500), ("b", 3000), ("c", 1900)), 1):
        store.put(Keys.node(name), dumps(Node(name, f"u{i}", f"10.0.0.{i}", f"10.0.0.{i}",
                                              5080).to_json()))
        store.put(Keys.alive(name), dumps({"node": name}))
        store.put(Keys.facts(name), dumps(NodeFacts(name, 4096, free, 4096 - free, 2, 10000,
                                                    8000, ("kvm",), "tcg", "0", "x86_64",
                                                    "", 0.0).to_json()))
    x = Instance("x", "ux", "busybox", "kvm", "sharedfile", "a", admin_state="up",
                 beparams={"memory": 2000})
    store.put(Keys.instance("x"), dumps(x.to_json()))
    store.put(Keys.observed("x"), dumps({"name": "x", "node": "a", "state": "running"}))
    yield MasterContext(store=store, guard=lambda: Guard("master", token),
                        master_node="a", rpc=NoRpc())
    store.close()


def prereq(ctx: MasterContext, op: dict[str, Any], said: list[str] | None = None) -> Any:
    lu = lu_class(op)(ctx, op, (said if said is not None else []).append)
    lu.check_arguments()
    lu.check_prereq()
    return lu


def create(**kw: Any) -> dict[str, Any]:
    op = {"OP_ID": "OP_INSTANCE_CREATE", "instance_name": "vm9", "os_type": "busybox",
          "disk_template": "sharedfile", "disks": [{"size": "64m"}],
          "beparams": {"memory": 1200}}
    op.update(kw)
    return op


def test_instance_create_without_a_node_keeps_n_plus_one(ctx: MasterContext) -> None:
    said: list[str] = []
    assert prereq(ctx, create(), said).pnode == "c"
    assert said == []
    # Taking b's memory breaks N+1 whatever the new instance's disks: x needs 2000 MiB.
    assert prereq(ctx, create(disk_template="file")).pnode == "c"


def test_instance_create_warns_when_only_an_n_plus_one_breaking_node_fits(
        ctx: MasterContext) -> None:
    said: list[str] = []
    assert prereq(ctx, create(beparams={"memory": 2500}), said).pnode == "b"
    assert len(said) == 1 and said[0].startswith("Warning: no node keeps the cluster N+1")


def test_cluster_verify_reports_enoden1_as_an_error(ctx: MasterContext) -> None:
    lu = lu_class({"OP_ID": "OP_CLUSTER_VERIFY"})(ctx, {"OP_ID": "OP_CLUSTER_VERIFY"},
                                                   lambda _m: None)
    lu.check_arguments()
    ok = lu.exec()
    assert not any("accomodate" in e for e in ok["errors"])
    y = Instance("y", "uy", "busybox", "kvm", "sharedfile", "b", admin_state="up",
                 beparams={"memory": 2500})
    ctx.store.put(Keys.instance("y"), dumps(y.to_json()))  # not running yet: b has 500
    res = lu.exec()
    assert res["ok"] is False
    assert ("cluster: not enough memory to accomodate instance failovers should node a "
            "fail (2000MiB needed by x, 1900MiB available on the roomiest other node)"
            in res["errors"])


@pytest.mark.parametrize("op_id", ["OP_INSTANCE_FAILOVER", "OP_INSTANCE_MIGRATE"])
def test_failover_and_migrate_without_a_target_use_the_allocator(
        ctx: MasterContext, op_id: str) -> None:
    # x (2000 MiB) fits on b only: c has 1900 MiB free.
    assert prereq(ctx, {"OP_ID": op_id, "instance_name": "x"}).target == "b"
    ctx.store.put(Keys.node("b"), dumps(Node("b", "u2", "10.0.0.2", "10.0.0.2", 5080,
                                             drained=True).to_json()))
    with pytest.raises(InsufficientResources, match="the most any node has free is 1900"):
        prereq(ctx, {"OP_ID": op_id, "instance_name": "x"})


def test_failover_with_an_unknown_iallocator_says_where_it_looked(
        ctx: MasterContext) -> None:
    with pytest.raises(HavenError, match="Can't compute nodes using iallocator 'nope': no "
                                         "such script in /usr/local/lib/ganeti/iallocators"):
        prereq(ctx, {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "x",
                     "iallocator": "nope"})


def test_cluster_verify_skips_or_downgrades_enoden1_as_ganeti_does(
        ctx: MasterContext) -> None:
    y = Instance("y", "uy", "busybox", "kvm", "sharedfile", "b", admin_state="up",
                 beparams={"memory": 2500})
    ctx.store.put(Keys.instance("y"), dumps(y.to_json()))

    def verify(**kw: Any) -> Any:
        op = {"OP_ID": "OP_CLUSTER_VERIFY", **kw}
        lu = lu_class(op)(ctx, op, lambda _m: None)
        lu.check_arguments()
        return lu.exec()

    assert not any("accomodate" in m for m in verify(skip_checks=["nplusone_mem"])["errors"])
    res = verify(ignore_errors=["ENODEN1"])
    assert not any("accomodate" in m for m in res["errors"])
    assert any("should node a fail" in m for m in res["warnings"])


def test_cluster_verify_reports_an_instance_that_should_run_and_does_not(
        ctx: MasterContext) -> None:
    """Ganeti's EINSTANCEDOWN.  Found by the fault campaign: an instance its agent gave
    up on stayed ERROR_down while verify said the cluster was fine."""
    import time

    def verify() -> list[str]:
        op = {"OP_ID": "OP_CLUSTER_VERIFY", "skip_checks": ["nplusone_mem"]}
        lu = lu_class(op)(ctx, op, lambda _m: None)
        return [e for e in lu.exec()["errors"] if e.startswith("instance x")]

    assert verify() == []  # running
    gave_up = {"name": "x", "node": "a", "state": "failed", "restarts": 5,
               "since": time.time()}
    ctx.store.put(Keys.observed("x"), dumps(gave_up))
    assert verify() == ["instance x: not running on a; its agent gave up after 5 automatic "
                        "restarts (see haven events); start it with 'gnt-instance startup "
                        "x'"]
    # Down a moment (a restart under way): not yet an error; a minute later it is.
    ctx.store.put(Keys.observed("x"), dumps({**gave_up, "state": "stopped",
                                             "since": time.time() - 5}))
    assert verify() == []
    ctx.store.put(Keys.observed("x"), dumps({**gave_up, "state": "stopped",
                                             "since": time.time() - 90}))
    [e] = verify()
    assert e.startswith("instance x: should run on a and has not for 9")
    ctx.store.put(Keys.lock("instance/x"), b"7")  # a job holds it: the job's business
    assert verify() == []
