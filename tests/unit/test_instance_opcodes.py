"""Instance opcodes' checks on an in-memory store: what is refused before anything is
done, with one sentence naming the object and the fix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import haven.master.opcodes  # noqa: F401  (registers the opcodes)
from haven.errors import HavenError, InsufficientResources, InvalidInput, OpPrereqError
from haven.master.lu import MasterContext, lu_class
from haven.model.instance import Disk, Instance
from haven.model.keys import Keys
from haven.model.node import Node, NodeFacts
from haven.model.replica import OUTDATED, UP_TO_DATE, DiskReplica, Replicas
from haven.store import Guard, MemoryStore
from tests.unit.support import NoRpc

NODES = ("node01", "node02", "node03")


def dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


@pytest.fixture
def ctx() -> Iterator[MasterContext]:
    store = MemoryStore("/haven/ops/")
    rev = store.create("master", b'{"node": "node01"}')
    assert rev is not None
    token = store.get("master").create_revision  # type: ignore[union-attr]
    from haven.model.cluster import Cluster

    store.put(Keys.cluster, dumps(Cluster("c", "u", 0, 0, True, (), "", "").to_json()))
    for i, name in enumerate(NODES, 1):
        store.put(Keys.node(name), dumps(Node(name, f"u{i}", f"10.0.0.{i}", f"10.0.0.{i}",
                                              5080).to_json()))
        store.put(Keys.alive(name), dumps({"node": name}))
        store.put(Keys.facts(name), dumps(NodeFacts(name, 4096, 2048, 100, 2, 10000, 8000,
                                                    ("kvm",), "tcg", "0", "x86_64", "",
                                                    0.0).to_json()))
    yield MasterContext(store=store, guard=lambda: Guard("master", token),
                        master_node="node01", rpc=NoRpc())
    store.close()


def run_prereq(ctx: MasterContext, op: dict[str, Any]) -> Any:
    lu = lu_class(op)(ctx, op, lambda _m: None)
    lu.check_arguments()
    lu.check_prereq()
    return lu


def add_drbd(ctx: MasterContext, secondary_state: str, generation: int = 3) -> None:
    inst = Instance("vm2", "u-vm2", "busybox", "kvm", "drbd", "node01", ("node02",),
                    (Disk("d0", 0, 64, "x/disk0"),), admin_state="up",
                    generation=generation, beparams={"memory": 128})
    ctx.store.put(Keys.instance("vm2"), dumps(inst.to_json()))
    reps = Replicas("vm2", generation, {"node01": {0: DiskReplica(UP_TO_DATE)},
                                        "node02": {0: DiskReplica(secondary_state)}})
    ctx.store.put(Keys.replicas("vm2"), dumps(reps.to_json()))


def create(**kw: Any) -> dict[str, Any]:
    op = {"OP_ID": "OP_INSTANCE_CREATE", "instance_name": "vm9", "os_type": "busybox",
          "disk_template": "file", "disks": [{"size": "64m"}], "beparams": {"memory": 128}}
    op.update(kw)
    return op


def test_failover_to_an_outdated_replica_is_refused_without_ignore_consistency(
        ctx: MasterContext) -> None:
    add_drbd(ctx, OUTDATED)
    with pytest.raises(OpPrereqError, match="--ignore-consistency"):
        run_prereq(ctx, {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "vm2"})
    run_prereq(ctx, {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "vm2",
                     "ignore_consistency": True})


def test_failover_needs_the_states_of_the_current_generation(ctx: MasterContext) -> None:
    add_drbd(ctx, UP_TO_DATE)
    run_prereq(ctx, {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "vm2"})
    inst = json.loads(ctx.store.get(Keys.instance("vm2")).value)  # type: ignore[union-attr]
    inst["generation"] = 4  # the primary changed since the states were written
    ctx.store.put(Keys.instance("vm2"), dumps(inst))
    with pytest.raises(OpPrereqError, match="not UpToDate"):
        run_prereq(ctx, {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "vm2"})


def test_failover_of_a_file_instance_points_to_move(ctx: MasterContext) -> None:
    inst = Instance("vm1", "u1", "busybox", "kvm", "file", "node01")
    ctx.store.put(Keys.instance("vm1"), dumps(inst.to_json()))
    with pytest.raises(OpPrereqError, match="gnt-instance move"):
        run_prereq(ctx, {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "vm1"})


def test_drbd_with_the_same_primary_and_secondary_is_refused(ctx: MasterContext) -> None:
    with pytest.raises(OpPrereqError, match="both node01"):
        run_prereq(ctx, create(disk_template="drbd", pnode="node01", snode="node01"))


def test_drbd_picks_a_secondary_other_than_the_primary(ctx: MasterContext) -> None:
    lu = run_prereq(ctx, create(disk_template="drbd", pnode="node02"))
    assert lu.snode in ("node01", "node03")


def test_drbd_on_a_one_node_cluster_is_refused(ctx: MasterContext) -> None:
    for name in ("node02", "node03"):
        ctx.store.delete(Keys.alive(name))
    with pytest.raises(OpPrereqError, match="needs a second node"):
        run_prereq(ctx, create(disk_template="drbd", pnode="node01"))


def test_memory_larger_than_any_node_is_refused(ctx: MasterContext) -> None:
    with pytest.raises(InsufficientResources, match="lower -B memory"):
        run_prereq(ctx, create(beparams={"memory": "64g"}))


@pytest.mark.parametrize(("kw", "err", "needle"), [
    ({"disks": [{"size": "lots"}]}, InvalidInput, "Invalid size"),
    ({"disks": [{"size": "0"}]}, InvalidInput, "must be positive"),
    ({"instance_name": "Bad_Name"}, InvalidInput, "not valid"),
    ({"beparams": {"memroy": 1}}, InvalidInput, "Unknown backend parameter"),
    ({"hvparams": {"accel": "xen"}}, InvalidInput, "accel"),
    ({"nics": [{"mode": "bridged"}]}, InvalidInput, "link=BRIDGE"),
    ({"disk_template": "diskless"}, InvalidInput, "drop --disk"),
    ({"os_type": ""}, InvalidInput, "needs an OS"),
])
def test_bad_create_arguments(ctx: MasterContext, kw: dict[str, Any],
                              err: type[HavenError], needle: str) -> None:
    with pytest.raises(err, match=needle):
        run_prereq(ctx, create(**kw))


def test_grow_to_a_smaller_size_is_refused(ctx: MasterContext) -> None:
    add_drbd(ctx, UP_TO_DATE)
    with pytest.raises(OpPrereqError, match="only grow"):
        run_prereq(ctx, {"OP_ID": "OP_INSTANCE_GROW_DISK", "instance_name": "vm2",
                         "disk": 0, "amount": "32m", "absolute": True})
