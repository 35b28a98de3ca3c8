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


def test_failover_waits_for_the_cleanup_of_an_interrupted_migration(
        ctx: MasterContext) -> None:
    """Seed 3006 of the fault campaign: a user's failover ran before the cleanup of the
    migration a killed master left, and the cleanup then undid it."""
    add_drbd(ctx, UP_TO_DATE)
    ctx.store.put("migrations/vm2", dumps({"step": "migrate", "source": "node01",
                                           "target": "node02", "generation": 3}))
    with pytest.raises(OpPrereqError, match=r"interrupted \(migrate\).*--cleanup vm2"):
        run_prereq(ctx, {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "vm2"})


def test_a_failover_typed_during_the_cleanup_waits_for_it(
        ctx: MasterContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before its lock, the failover waits for the master's own cleanup of the
    interrupted migration (here: done 0.3 s later), then passes its checks; a cleanup
    that never comes leaves the refusal above."""
    import threading

    from haven.master.opcodes import instance_util

    add_drbd(ctx, UP_TO_DATE)
    ctx.store.put("migrations/vm2", dumps({"step": "migrate", "source": "node01",
                                           "target": "node02", "generation": 3}))
    said: list[str] = []
    op = {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": "vm2"}
    lu = lu_class(op)(ctx, dict(op), said.append)
    lu.check_arguments()
    threading.Timer(0.3, lambda: ctx.store.delete("migrations/vm2")).start()
    lu.before_lock()
    assert ctx.store.get("migrations/vm2") is None
    assert said and "interrupted migration of vm2" in said[0], said
    lu.check_prereq()

    ctx.store.put("migrations/vm2", dumps({"step": "migrate", "source": "node01",
                                           "target": "node02", "generation": 3}))
    monkeypatch.setattr(instance_util, "MIGRATION_CLEANUP_WAIT", 0.2)
    lu = lu_class(op)(ctx, dict(op), said.append)
    lu.check_arguments()
    lu.before_lock()
    with pytest.raises(OpPrereqError, match="interrupted"):
        lu.check_prereq()


@pytest.mark.parametrize("step,source,target,rec_gen,primary,gen,stale", [
    ("migrate", "node01", "node02", 3, "node01", 3, False),  # not switched yet
    ("migrate", "node01", "node02", 3, "node02", 4, False),  # switched, not recorded
    ("finish", "node01", "node02", 4, "node02", 4, False),   # switched and recorded
    ("finish", "node01", "node02", 4, "node01", 5, True),    # then failed over back
    ("migrate", "node01", "node02", 3, "node01", 5, True),   # moved twice since
    ("accept", "node01", "node02", 3, "node02", 5, True),
    ("migrate", "node01", "node03", 3, "node02", 4, True),   # failed over elsewhere
])
def test_a_migration_record_is_stale_once_another_job_moved_the_instance(
        step: str, source: str, target: str, rec_gen: int, primary: str, gen: int,
        stale: bool) -> None:
    from haven.master.opcodes.instance_migrate import _stale

    inst = Instance("vm2", "u", "busybox", "kvm", "sharedfile", primary, generation=gen)
    rec = {"step": step, "source": source, "target": target, "generation": rec_gen}
    assert bool(_stale(rec, inst)) is stale


def run_cleanup(ctx: MasterContext, primary: str, gen: int, **record: Any) -> Any:
    """``gnt-instance migrate --cleanup vm2``: vm2 (sharedfile) on ``primary`` at
    generation ``gen``, with the record of a migration from node01 to node02."""
    inst = Instance("vm2", "u-vm2", "busybox", "kvm", "sharedfile", primary,
                    admin_state="up", generation=gen, beparams={"memory": 128})
    ctx.store.put(Keys.instance("vm2"), dumps(inst.to_json()))
    ctx.store.put("migrations/vm2", dumps({"source": "node01", "target": "node02",
                                           **record}))
    return run_prereq(ctx, {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "vm2",
                            "cleanup": True}).exec()


def test_the_cleanup_of_a_record_a_failover_overtook_moves_nothing(
        ctx: MasterContext) -> None:
    """The record says node01 -> node02 finished at generation 4; a failover has since
    moved the instance back to node01 (generation 5).  The cleanup used to "finish" the
    migration again, making node02 the primary while node01 ran the instance: two
    running copies.  Now it drops the record and calls no node (NoRpc would fail)."""
    out = run_cleanup(ctx, "node01", 5, step="finish", generation=4)
    assert "nothing to do" in out["cleanup"], out
    after = json.loads(ctx.store.get(Keys.instance("vm2")).value)  # type: ignore[union-attr]
    assert (after["primary_node"], after["generation"]) == ("node01", 5)
    assert ctx.store.get("migrations/vm2") is None


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


# -- migrate: refusals before anything starts -------------------------------------------

def running(ctx: MasterContext, name: str = "vm2", accel: str = "tcg",
            node: str = "node01") -> None:
    ctx.store.put(Keys.observed(name), dumps({"name": name, "node": node,
                                              "state": "running", "accel": accel}))


def set_facts(ctx: MasterContext, node: str, **changes: Any) -> None:
    kv = ctx.store.get(Keys.facts(node))
    assert kv is not None
    ctx.store.put(Keys.facts(node), dumps({**json.loads(kv.value), **changes}))


def migrate(**kw: Any) -> dict[str, Any]:
    return {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "vm2", **kw}


def test_migrate_onto_the_uptodate_replica_passes_its_checks(ctx: MasterContext) -> None:
    add_drbd(ctx, UP_TO_DATE)
    running(ctx)
    assert run_prereq(ctx, migrate()).target == "node02"


@pytest.mark.parametrize("case,pattern", [
    ("stopped", "not running; there is nothing to migrate"),
    ("degraded", "not UpToDate.*--allow-failover"),
    ("elsewhere", "can only migrate to its secondary node02"),
    ("memory", "node02 has .* MiB of free memory"),
])
def test_migrate_refusals_name_the_cause_and_the_fix(ctx: MasterContext, case: str,
                                                     pattern: str) -> None:
    add_drbd(ctx, OUTDATED if case == "degraded" else UP_TO_DATE)
    if case != "stopped":
        running(ctx)
    if case == "memory":
        set_facts(ctx, "node02", memory_free=64)
    op = migrate(target_node="node03") if case == "elsewhere" else migrate()
    with pytest.raises(HavenError, match=pattern):
        run_prereq(ctx, op)


def test_migrate_of_a_file_instance_points_to_move(ctx: MasterContext) -> None:
    inst = Instance("vm1", "u1", "busybox", "kvm", "file", "node01", admin_state="up")
    ctx.store.put(Keys.instance("vm1"), dumps(inst.to_json()))
    running(ctx, "vm1")
    with pytest.raises(OpPrereqError, match="use gnt-instance move"):
        run_prereq(ctx, migrate(instance_name="vm1"))


def test_migrate_to_its_own_node_is_refused(ctx: MasterContext) -> None:
    inst = Instance("vm1", "u1", "busybox", "kvm", "sharedfile", "node01",
                    admin_state="up", beparams={"memory": 128})
    ctx.store.put(Keys.instance("vm1"), dumps(inst.to_json()))
    running(ctx, "vm1")
    with pytest.raises(OpPrereqError, match="already runs on node01; name another node"):
        run_prereq(ctx, migrate(instance_name="vm1", target_node="node01"))


def test_migrate_between_different_qemu_versions_needs_ignore_hvversions(
        ctx: MasterContext) -> None:
    add_drbd(ctx, UP_TO_DATE)
    running(ctx)
    set_facts(ctx, "node01", hv_version="QEMU emulator version 7.2.15")
    set_facts(ctx, "node02", hv_version="QEMU emulator version 8.2.2")
    with pytest.raises(OpPrereqError, match=r"node01 runs QEMU emulator version 7\.2\.15 "
                                            r"and node02 runs .*--ignore-hvversions"):
        run_prereq(ctx, migrate())
    run_prereq(ctx, migrate(ignore_hvversions=True))


def test_migrate_of_a_guest_seeing_the_host_cpu_needs_the_same_cpu(
        ctx: MasterContext) -> None:
    add_drbd(ctx, UP_TO_DATE)
    set_facts(ctx, "node01", cpu_model="Intel(R) Xeon(R) Gold 6338")
    set_facts(ctx, "node02", cpu_model="AMD EPYC 7763")
    running(ctx, accel="tcg")  # TCG emulates its CPU: any host will do
    run_prereq(ctx, migrate())
    running(ctx, accel="kvm")  # the default model under KVM is the host's
    with pytest.raises(OpPrereqError, match=r"sees the host CPU \(Intel.*AMD EPYC.*"
                                            r"-H cpu_type="):
        run_prereq(ctx, migrate())
    inst = json.loads(ctx.store.get(Keys.instance("vm2")).value)  # type: ignore[union-attr]
    inst["hvparams"] = {"cpu_type": "Haswell"}
    ctx.store.put(Keys.instance("vm2"), dumps(inst))
    run_prereq(ctx, migrate())


@pytest.mark.parametrize(("accel", "op", "hv", "mode", "note"), [
    ("kvm", {}, {}, "live", ""),
    ("tcg", {}, {}, "non-live", "paused for the copy"),
    ("tcg", {"mode": "live"}, {}, "live", "Warning: live under TCG"),
    ("tcg", {}, {"migration_mode": "live"}, "live", "Warning: live under TCG"),
    ("kvm", {"live": False}, {}, "non-live", ""),
    ("kvm", {}, {"migration_mode": "non-live"}, "non-live", ""),
])
def test_migration_mode_is_the_ops_then_the_instances_then_safe_for_the_accelerator(
        ctx: MasterContext, accel: str, op: dict[str, Any], hv: dict[str, Any], mode: str,
        note: str) -> None:
    add_drbd(ctx, UP_TO_DATE)
    if hv:
        inst = json.loads(ctx.store.get(Keys.instance("vm2")).value)  # type: ignore[union-attr]
        inst["hvparams"] = hv
        ctx.store.put(Keys.instance("vm2"), dumps(inst))
    running(ctx, accel=accel)
    lu = run_prereq(ctx, migrate(**op))
    assert lu.mode == mode
    assert (note in lu.mode_note) if note else lu.mode_note == ""


def test_a_bad_migration_mode_is_refused(ctx: MasterContext) -> None:
    add_drbd(ctx, UP_TO_DATE)
    running(ctx)
    with pytest.raises(OpPrereqError, match="use live or non-live"):
        run_prereq(ctx, migrate(mode="fast"))
    with pytest.raises(InvalidInput, match="migration_mode=fast of vm9 is not valid"):
        run_prereq(ctx, create(hvparams={"migration_mode": "fast"}))


@pytest.mark.parametrize(("version", "mode"), [
    ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)", "non-live"),
    ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)", "live"),
    ("", "non-live"),  # unknown: assume the defect
])
def test_under_tcg_the_default_mode_follows_the_sources_qemu(
        ctx: MasterContext, version: str, mode: str) -> None:
    add_drbd(ctx, UP_TO_DATE)
    running(ctx, accel="tcg")
    set_facts(ctx, "node01", hv_version=version)
    set_facts(ctx, "node02", hv_version=version)
    assert run_prereq(ctx, migrate()).mode == mode


def test_a_cleanup_after_a_saved_switchover_never_resumes_the_source(
        ctx: MasterContext) -> None:
    """The master died after saving the target as primary (generation 4) but before
    recording ``finish``; the target then died.  Resuming the paused source would run
    a copy off the primary (its node refuses that now): the cleanup finishes instead,
    and the HA manager and the agents take it from there."""
    import dataclasses

    calls: list[str] = []

    class Rpc(NoRpc):
        def call(self, address: str, port: int, method: str, path: str,
                 body: Any = None, timeout: float = 10.0, verify: bool | str = True) -> Any:
            calls.append(f"{method} {path} {address}")
            if path == "/haven/node/vms":
                return {"vm2": {"status": "paused"}} if address == "10.0.0.1" else {}
            return super().call(address, port, method, path, body, timeout, verify)

    c = dataclasses.replace(ctx, rpc=Rpc())
    out = run_cleanup(c, "node02", 4, step="migrate", generation=3)
    assert out["cleanup"].startswith("finished: node02 is the primary"), out
    assert not [x for x in calls if "resume" in x], calls
    after = json.loads(c.store.get(Keys.instance("vm2")).value)  # type: ignore[union-attr]
    assert (after["primary_node"], after["generation"]) == ("node02", 4)
    assert c.store.get("migrations/vm2") is None
