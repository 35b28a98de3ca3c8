"""The agent's replication plan for drbd instances (pure)."""

from __future__ import annotations

from haven.agent.replan import Mirror, RepView, plan_replication
from haven.model.instance import Disk, Instance
from haven.model.replica import OUTDATED, UP_TO_DATE, DiskReplica, Replicas


def vm2(primary: str = "node01", secondary: str = "node02") -> Instance:
    return Instance("vm2", "u", "busybox", "kvm", "drbd", primary, (secondary,),
                    (Disk("d0", 0, 64),), admin_state="up", generation=2)


def reps(sec: str, gen: int = 2) -> dict[str, Replicas]:
    return {"vm2": Replicas("vm2", gen, {"node01": {0: DiskReplica(UP_TO_DATE)},
                                         "node02": {0: DiskReplica(sec)}})}


def view(node: str = "node01", mirror: str | None = "ready", exports: frozenset[str] =
         frozenset(), alive: tuple[str, ...] = ("node01", "node02"), sec: str = UP_TO_DATE,
         locked: frozenset[str] = frozenset(), inst: Instance | None = None) -> RepView:
    i = inst or vm2()
    mirrors = {"vm2": {0: Mirror(mirror)}} if mirror else {}  # type: ignore[arg-type]
    return RepView(node, {"vm2": i}, locked, frozenset({"vm2"}) if node == i.primary_node
                   else frozenset(), exports, mirrors, reps(sec), frozenset(alive))


def kinds(v: RepView) -> list[str]:
    return [a.kind for a in plan_replication(v)]


def test_in_sync_needs_nothing() -> None:
    assert kinds(view()) == []


def test_the_secondary_exports_and_only_the_secondary() -> None:
    assert kinds(view(node="node02")) == ["export"]
    assert kinds(view(node="node02", exports=frozenset({"vm2"}))) == []
    assert kinds(view(node="node03", exports=frozenset({"vm2"}))) == ["unexport"]


def test_a_lost_peer_is_reported_outdated_before_any_resync() -> None:
    acts = plan_replication(view(mirror="failed"))
    assert [a.kind for a in acts] == ["report", "resync"]
    assert acts[0].states["node02"][0].state == OUTDATED


def test_no_resync_while_the_peer_is_down_but_the_loss_is_reported() -> None:
    assert kinds(view(mirror="failed", alive=("node01",))) == ["report"]
    assert kinds(view(mirror="failed", alive=("node01",), sec=OUTDATED)) == []


def test_no_mirror_means_protect_and_never_claims_up_to_date() -> None:
    acts = plan_replication(view(mirror=None))
    assert [a.kind for a in acts] == ["report", "protect"]
    assert acts[0].states["node02"][0].state == OUTDATED


def test_syncing_reports_inconsistent_with_percent() -> None:
    v = view(sec=OUTDATED)
    v = RepView(v.node, v.instances, v.locked, v.running, v.exports,
                {"vm2": {0: Mirror("syncing", 42.0)}}, v.replicas, v.alive)
    [a] = plan_replication(v)
    assert (a.kind, a.states["node02"][0].state, a.states["node02"][0].percent) == (
        "report", "Inconsistent", 42.0)


def test_states_of_an_older_generation_are_rewritten() -> None:
    v = view()
    v = RepView(v.node, v.instances, v.locked, v.running, v.exports, v.mirrors,
                reps(UP_TO_DATE, gen=1), v.alive)
    assert kinds(v) == ["report"]


def test_a_locked_instance_is_left_to_its_job() -> None:
    assert kinds(view(mirror="failed", locked=frozenset({"vm2"}))) == []
    assert kinds(view(node="node03", exports=frozenset({"vm2"}),
                      locked=frozenset({"vm2"}))) == []
