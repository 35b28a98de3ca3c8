"""Alarms: the pure rules (haven.master.alarms) case by case, in virtual time; the
settings' validation; the loop's writes against the in-memory store (raise, update,
acknowledge, clear, history, a deposed master); the notifier; the API and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from haven.errors import InvalidInput, NotFoundError
from haven.master import alarm_store
from haven.master.alarm_loop import AlarmManager, failed_job
from haven.master.alarm_notify import Notifier
from haven.master.alarms import AlarmView, FailedJob, conditions, plan
from haven.master.lu import MasterContext
from haven.master.quorum import MemberView
from haven.model import alarm as A
from haven.model import ha as H
from haven.model.alarm import Alarm, AlarmSettings
from haven.model.event import Event
from haven.model.instance import Disk, Instance, Observed
from haven.model.job import Job, JobStatus
from haven.model.keys import ALARMS_ACTIVE, ALARMS_HISTORY, EVENTS, Keys
from haven.model.node import Node, NodeFacts
from haven.model.replica import INCONSISTENT, OUTDATED, UP_TO_DATE, DiskReplica, Replicas
from haven.store.base import Guard
from haven.store.errors import FencedOut
from haven.store.memory import MemoryStore
from tests.unit.support import FakeClock, NoRpc, wait_for

NAMES = ("node01", "node02", "node03")
NODES = {n: Node(n, n, "", "", 1811) for n in NAMES}
S = AlarmSettings()  # debounce 2 s, instance 10 s, replica 60 s


def facts(name: str, mem_free: int = 8000, mem_total: int = 16000, disk_free: int = 500,
          disk_total: int = 1000) -> NodeFacts:
    return NodeFacts(name, mem_total, mem_free, 1000, 4, disk_total, disk_free, ("kvm",),
                     "kvm", "1", "x86_64", "Debian", 0.0)


FACTS = {n: facts(n) for n in NAMES}


def inst(name: str, pnode: str = "node01", snode: str = "node02", template: str = "drbd",
         memory: int = 512, admin: str = "up") -> Instance:
    return Instance(name, name, "busybox", "kvm", template, pnode,
                    (snode,) if snode and template == "drbd" else (),
                    (Disk("d-" + name, 0, 64),), beparams={"memory": memory},
                    admin_state=admin, generation=3)


def running(i: Instance, node: str | None = None, state: str = "running") -> Observed:
    return Observed(i.name, node or i.primary_node, state, generation=i.generation)


def reps(i: Instance, state: str = UP_TO_DATE, generation: int = 3,
         percent: float = 100.0) -> Replicas:
    return Replicas(i.name, generation, {i.primary_node: {0: DiskReplica(UP_TO_DATE)},
                                         i.secondary_nodes[0]: {0: DiskReplica(state,
                                                                               percent)}})


def view(now: float = 1000.0, mono: float = 50.0, settings: AlarmSettings = S,
         alive: tuple[str, ...] = NAMES, instances: tuple[Instance, ...] = (),
         observed: tuple[Observed, ...] | None = None,
         replicas: tuple[Replicas, ...] | None = None, **kw: Any) -> AlarmView:
    """A healthy three-node cluster unless told otherwise: every instance runs on its
    primary, every replica is UpToDate, no job failed, every etcd member answers."""
    if observed is None:
        observed = tuple(running(i) for i in instances if i.admin_state == "up")
    if replicas is None:
        replicas = tuple(reps(i) for i in instances if i.disk_template == "drbd")
    defaults: dict[str, Any] = {
        "master": "node01", "nodes": NODES, "facts": FACTS, "failed_jobs": (),
        "members": tuple(MemberView(n, i + 1, True, True) for i, n in enumerate(NAMES))}
    defaults.update(kw)
    return AlarmView(now, mono, settings, alive=frozenset(alive),
                     instances={i.name: i for i in instances},
                     observed={o.name: o for o in observed},
                     replicas={r.instance: r for r in replicas}, **defaults)


def ids(v: AlarmView) -> set[str]:
    return set(conditions(v)[0])


def settle(v: AlarmView, seconds: float, step: float = 0.5) -> tuple[AlarmView, list[Alarm]]:
    """Run the plan every ``step`` for ``seconds`` of virtual time as the loop would
    (its raises and clears applied to ``active``); the final view and every raise."""
    raised: list[Alarm] = []
    t = 0.0
    while t < seconds:
        p = plan(v)
        active = dict(v.active)
        for a in p.raise_:
            active[a.id] = a
            raised.append(a)
        for a in p.update:
            active[a.id] = a
        for a in p.clear:
            del active[a.id]
        t += step
        v = replace(v, now=v.now + step, mono=v.mono + step, active=active,
                    pending=p.pending)
    return v, raised


# -- a healthy cluster --------------------------------------------------------------------
def test_a_healthy_cluster_has_no_condition_and_plans_nothing() -> None:
    v = view(instances=(inst("vm1"), inst("vm2", "node02", "node03")))
    assert conditions(v) == ({}, frozenset())
    p = plan(v)
    assert (p.raise_, p.clear, p.update, p.pending) == ((), (), (), {})
    assert p.summary() == "nothing to do"


# -- debounce, identity, clearing -----------------------------------------------------------
def test_a_condition_is_raised_only_after_it_held_for_the_debounce() -> None:
    v = view(alive=("node01", "node03"))
    p = plan(v)
    assert p.raise_ == () and p.pending == {"node-unreachable:node02": 50.0}
    # 1.9 s later: still pending, with the first time it was seen.
    p = plan(replace(v, mono=51.9, now=1001.9, pending=p.pending))
    assert p.raise_ == () and p.pending == {"node-unreachable:node02": 50.0}
    p = plan(replace(v, mono=52.0, now=1002.0, pending=p.pending))
    (a,) = p.raise_
    assert (a.id, a.kind, a.object, a.severity) == (
        "node-unreachable:node02", A.NODE_UNREACHABLE, "node/node02", A.CRITICAL)
    assert a.raised == 1002.0 and a.active and not a.acked and a.node == "node01"
    assert p.pending == {}
    assert p.summary() == "raised node-unreachable:node02"


def test_a_flap_shorter_than_the_debounce_raises_nothing() -> None:
    v = view(alive=("node01", "node03"))
    p = plan(v)
    # Back after 1 s: the pending condition is forgotten, not carried over.
    p = plan(replace(v, alive=frozenset(NAMES), mono=51.0, pending=p.pending))
    assert p.pending == {} and p.raise_ == ()
    # Gone again: the debounce starts over.
    p = plan(replace(v, mono=51.5, pending=p.pending))
    assert p.pending == {"node-unreachable:node02": 51.5}
    p = plan(replace(v, mono=53.0, pending=p.pending))
    assert p.raise_ == ()


def test_an_active_alarm_is_one_alarm_while_its_condition_holds() -> None:
    v, raised = settle(view(alive=("node01", "node03")), 30.0)
    assert [a.id for a in raised] == ["node-unreachable:node02"]
    assert set(v.active) == {"node-unreachable:node02"}
    assert plan(v).summary() == "nothing to do"


def test_clearing_is_immediate_and_records_the_clear_time() -> None:
    v, _ = settle(view(alive=("node01", "node03")), 5.0)
    p = plan(replace(v, alive=frozenset(NAMES), now=2000.0))
    (c,) = p.clear
    assert c.id == "node-unreachable:node02" and c.cleared == 2000.0 and not c.active
    assert c.raised == v.active[c.id].raised
    assert p.summary() == "cleared node-unreachable:node02"


def test_an_acknowledgement_survives_while_the_condition_holds_and_does_not_clear() -> None:
    v, _ = settle(view(alive=("node01", "node03")), 5.0)
    acked = v.active["node-unreachable:node02"].acknowledged("alice", "haven-admin", 1003.0)
    v = replace(v, active={acked.id: acked})
    p = plan(v)
    assert p.clear == () and p.update == () and p.raise_ == ()
    p = plan(replace(v, alive=frozenset(NAMES)))
    assert p.clear[0].acked_by == "alice" and p.clear[0].acked_at == 1003.0


def test_a_cleared_alarm_that_comes_back_is_a_new_raise() -> None:
    v, first = settle(view(alive=("node01", "node03")), 5.0)
    v, _ = settle(replace(v, alive=frozenset(NAMES)), 1.0)
    assert v.active == {}
    v, second = settle(replace(v, alive=frozenset({"node01", "node03"})), 5.0)
    assert [a.id for a in first] == [a.id for a in second] == ["node-unreachable:node02"]
    assert second[0].raised > first[0].raised and not second[0].acked


def test_a_changed_message_or_severity_updates_the_alarm_in_place() -> None:
    unreachable = H.NodeHA("node02", H.UNREACHABLE, reason="its lease expired")
    v, raised = settle(view(alive=("node01", "node03"), node_ha={"node02": unreachable}),
                       3.0)
    assert "unreachable" in raised[0].message
    acked = raised[0].acknowledged("bob", "u", 1001.0)
    fenced = replace(unreachable, state=H.FENCED)
    p = plan(replace(v, node_ha={"node02": fenced}, active={acked.id: acked}, now=1010.0))
    (u,) = p.update
    assert "fenced" in u.message and u.raised == raised[0].raised and u.updated == 1010.0
    assert u.acked_by == "bob"  # an update keeps the acknowledgement
    assert p.summary() == "updated node-unreachable:node02"


def test_kinds_not_evaluated_this_cycle_keep_their_alarms() -> None:
    v, _ = settle(view(members=(MemberView("node01", 1, True, True),
                                MemberView("node02", 2, True, True, healthy=False),
                                MemberView("node03", 3, True, True))), 3.0)
    assert {"etcd-member-down:node02", "quorum-at-risk:cluster"} <= set(v.active)
    # The probe did not answer this time, and the job watch has not listed: unknown.
    p = plan(replace(v, members=None, failed_jobs=None))
    assert p.clear == ()
    assert conditions(replace(v, members=None, failed_jobs=None))[1] == frozenset(
        {A.ETCD_MEMBER_DOWN, A.QUORUM_AT_RISK, A.JOB_FAILED})
    # Known again and healthy: cleared.
    p = plan(replace(v, members=tuple(MemberView(n, 1, True, True) for n in NAMES)))
    assert {a.id for a in p.clear} == {"etcd-member-down:node02", "quorum-at-risk:cluster"}


def test_an_alarm_of_a_removed_object_is_cleared() -> None:
    v, _ = settle(view(alive=("node01", "node03")), 3.0)
    nodes = {n: NODES[n] for n in ("node01", "node03")}
    assert [a.id for a in plan(replace(v, nodes=nodes)).clear] == ["node-unreachable:node02"]


def test_an_alarm_raised_by_a_previous_master_is_kept_not_raised_again() -> None:
    old = Alarm("node-unreachable:node02", A.NODE_UNREACHABLE, "node/node02", A.CRITICAL,
                "Node node02 holds no lease: its daemon is down or cannot reach etcd.",
                900.0, node="node03")
    p = plan(view(alive=("node01", "node03"), active={old.id: old}))
    assert p.raise_ == () and p.clear == () and p.update == () and p.pending == {}


# -- nodes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("state", [H.UNREACHABLE, H.FENCED, H.RECOVERING, H.MANUAL])
def test_a_node_lost_to_the_ha_manager_is_unreachable_even_with_a_lease_key(
        state: str) -> None:
    rec = H.NodeHA("node02", state, reason="no lease renewal seen for 4.1 s")
    (c,) = conditions(view(node_ha={"node02": rec}))[0].values()
    assert c.id == "node-unreachable:node02"
    assert c.message == f"Node node02 is {state} (no lease renewal seen for 4.1 s)."


def test_a_node_back_in_the_cluster_is_not_unreachable() -> None:
    assert ids(view(node_ha={"node02": H.NodeHA("node02", H.BACK)})) == set()


def test_a_node_being_added_is_joining_not_unreachable_until_its_grace_ends() -> None:
    nodes = dict(NODES, node02=replace(NODES["node02"], ctime=990.0))
    f = dict(FACTS, node02=replace(FACTS["node02"], updated=0.0))
    assert ids(view(nodes=nodes, facts=f, alive=("node01", "node03"))) == set()
    # Never reported 60 s after its add: unreachable.
    assert ids(view(nodes=nodes, facts=f, alive=("node01", "node03"), now=1051.0)) == {
        "node-unreachable:node02"}
    # It reported once (facts after the add), then went: unreachable at once.
    f = dict(FACTS, node02=replace(FACTS["node02"], updated=995.0))
    assert ids(view(nodes=nodes, facts=f, alive=("node01", "node03"))) == {
        "node-unreachable:node02"}


def test_an_offline_node_raises_no_alarm() -> None:
    nodes = dict(NODES, node02=replace(NODES["node02"], offline=True))
    assert ids(view(nodes=nodes, alive=("node01", "node03"))) == set()


# -- instances --------------------------------------------------------------------------------
def test_an_instance_that_should_run_but_does_not_waits_its_own_threshold() -> None:
    vm1 = inst("vm1", template="file", snode="")
    v = view(instances=(vm1,), observed=(running(vm1, state="stopped"),))
    (c,) = conditions(v)[0].values()
    assert (c.id, c.severity, c.hold) == ("instance-down:vm1", A.CRITICAL, 10.0)
    assert c.message == "Instance vm1 is ERROR_down: it should run on node01 but does not."
    _, raised = settle(v, 9.5)
    assert raised == []
    _, raised = settle(v, 10.5)
    assert [a.id for a in raised] == ["instance-down:vm1"]


def test_instance_states_and_their_alarms() -> None:
    up = inst("up", template="file", snode="")
    gave_up = inst("gaveup", template="file", snode="")
    guest_off = inst("guestoff", template="file", snode="")
    stray = inst("stray", template="file", snode="", admin="down")
    wrong = inst("wrong", template="file", snode="")
    on_dead = inst("ondead", "node02", template="file", snode="")
    down = inst("down", template="file", snode="", admin="down")
    v = view(alive=("node01", "node03"), node_ha={}, instances=(
        up, gave_up, guest_off, stray, wrong, on_dead, down),
        observed=(running(up), replace(running(gave_up, state="failed"),
                                       message="crashed 5 times"),
                  running(guest_off, state="user_down"), running(stray),
                  running(wrong, "node03")))
    conds = {c.name: c for c in conditions(v)[0].values() if c.kind == A.INSTANCE_DOWN}
    assert set(conds) == {"gaveup", "guestoff", "stray", "wrong", "ondead"}
    assert "gave up restarting it (crashed 5 times)" in conds["gaveup"].message
    assert conds["guestoff"].severity == A.WARNING and "USER_down" in conds["guestoff"].message
    assert conds["stray"].severity == A.WARNING and "ERROR_up" in conds["stray"].message
    assert "runs on node03, not on its primary node node01" in conds["wrong"].message
    assert conds["ondead"].message == "Instance ondead is ERROR_nodedown: its node node02 " \
        "is down."


def test_an_instance_of_a_fenced_node_with_a_lease_key_still_counts_as_down() -> None:
    vm1 = inst("vm1", "node02", template="file", snode="")
    v = view(instances=(vm1,), node_ha={"node02": H.NodeHA("node02", H.FENCED)})
    assert "instance-down:vm1" in ids(v)


def test_a_migrating_instance_is_left_to_its_job() -> None:
    vm1 = inst("vm1")
    v = view(instances=(vm1,), observed=(running(vm1, "node02"),),
             replicas=(reps(vm1, OUTDATED),), migrating=frozenset({"vm1"}))
    assert ids(v) == set()


# -- replicas ---------------------------------------------------------------------------------
def test_an_outdated_replica_is_critical_after_its_threshold() -> None:
    vm1 = inst("vm1")
    v = view(instances=(vm1,), replicas=(reps(vm1, OUTDATED),))
    (c,) = conditions(v)[0].values()
    assert (c.id, c.severity, c.hold) == ("replica-degraded:vm1", A.CRITICAL, 60.0)
    assert c.message == "Instance vm1 is not fully replicated: disk/0 on node02: Outdated."
    assert settle(v, 59.5)[1] == []
    assert [a.id for a in settle(v, 60.5)[1]] == ["replica-degraded:vm1"]


def test_a_resync_is_a_warning_with_its_progress_and_clears_when_done() -> None:
    vm1 = inst("vm1")
    s = replace(S, replica_degraded_seconds=5.0)
    v, raised = settle(view(settings=s, instances=(vm1,),
                            replicas=(reps(vm1, INCONSISTENT, percent=42.0),)), 6.0)
    assert raised[0].severity == A.WARNING
    assert raised[0].message.endswith("disk/0 on node02: resyncing, 42%.")
    p = plan(replace(v, replicas={"vm1": reps(vm1, INCONSISTENT, percent=80.0)}))
    assert p.update[0].message.endswith("resyncing, 80%.")
    p = plan(replace(v, replicas={"vm1": reps(vm1)}))
    assert [a.id for a in p.clear] == ["replica-degraded:vm1"]


def test_replica_states_of_another_generation_count_as_degraded() -> None:
    vm1 = inst("vm1")
    (c,) = conditions(view(instances=(vm1,), replicas=(reps(vm1, generation=2),)))[0].values()
    assert c.severity == A.CRITICAL and "from generation 2, the instance is at 3" in c.message


def test_a_stopped_instance_or_one_without_replica_states_is_not_judged() -> None:
    a = inst("a", admin="down")
    b = inst("b")
    v = view(instances=(a, b), observed=(), replicas=(reps(a, OUTDATED),))
    assert "replica-degraded:a" not in ids(v) and "replica-degraded:b" not in ids(v)


# -- N+1 --------------------------------------------------------------------------------------
def test_n_plus_one_holds_when_each_secondary_can_take_its_primaries() -> None:
    vms = (inst("a", "node01", "node02", memory=3000), inst("b", "node01", "node02",
                                                             memory=3000))
    assert ids(view(instances=vms)) == set()


def test_n_plus_one_is_lost_when_a_secondary_lacks_the_memory() -> None:
    vms = (inst("a", "node01", "node02", memory=5000), inst("b", "node01", "node02",
                                                             memory=5000))
    (c,) = conditions(view(instances=vms))[0].values()
    assert (c.id, c.object, c.severity) == ("n1-lost:node01", "node/node01", A.WARNING)
    assert c.message == ("The loss of node node01 could not be absorbed: b (5000 MiB) "
                         "does not fit on node02 (3000 MiB free).")


def test_n_plus_one_places_shared_instances_on_the_node_with_most_free_memory() -> None:
    f = dict(FACTS, node02=facts("node02", 3000), node03=facts("node03", 2000))
    # 2500 on node02 (3000 free), then 1500 on node03 (2000 free, node02 has 500).
    ok = (inst("x", template="sharedfile", snode="", memory=2500),
          inst("y", template="sharedfile", snode="", memory=1500))
    assert ids(view(instances=ok, facts=f)) == set()
    tight = (*ok, inst("z", template="sharedfile", snode="", memory=1000))
    (c,) = conditions(view(instances=tight, facts=f))[0].values()
    assert c.message.endswith("z (1000 MiB) fits on no other node.")


def test_n_plus_one_counts_drbd_needs_before_shared_ones() -> None:
    f = dict(FACTS, node02=facts("node02", 3000), node03=facts("node03", 0))
    vms = (inst("d", "node01", "node02", memory=2000),
           inst("s", template="sharedfile", snode="", memory=1500))
    c = conditions(view(instances=vms, facts=f))[0]["n1-lost:node01"]
    assert "s (1500 MiB) fits on no other node" in c.message


def test_n_plus_one_ignores_local_storage_stopped_instances_and_lost_nodes() -> None:
    vms = (inst("f", template="file", snode="", memory=99999),
           inst("s", template="sharedfile", snode="", memory=99999, admin="down"))
    assert ids(view(instances=vms)) == set()
    # node02 is lost: it is no target, and its own loss is not judged.
    vm = inst("d", "node01", "node02", memory=100)
    v = view(instances=(vm,), alive=("node01", "node03"), observed=(running(vm),))
    assert "n1-lost:node01" in ids(v) and "n1-lost:node02" not in ids(v)
    assert "d's secondary node02 is not available" in conditions(v)[0]["n1-lost:node01"].message


def test_a_witness_is_no_target_for_n_plus_one() -> None:
    nodes = dict(NODES, node03=replace(NODES["node03"], vm_capable=False))
    f = dict(FACTS, node02=facts("node02", 100))
    vm = inst("s", template="sharedfile", snode="", memory=1000)
    assert "n1-lost:node01" in ids(view(nodes=nodes, facts=f, instances=(vm,)))


# -- etcd -------------------------------------------------------------------------------------
def test_a_voter_down_of_three_puts_the_quorum_at_risk() -> None:
    members = (MemberView("node01", 1, True, True),
               MemberView("node02", 2, True, True, healthy=False),
               MemberView("node03", 3, True, True))
    conds = conditions(view(members=members))[0]
    assert set(conds) == {"etcd-member-down:node02", "quorum-at-risk:cluster"}
    assert conds["etcd-member-down:node02"].severity == A.CRITICAL
    assert conds["etcd-member-down:node02"].message == \
        "The etcd member of node02 (voter) does not answer."
    assert conds["quorum-at-risk:cluster"].message == (
        "etcd quorum is at risk: one more loss loses it (2 of 3 voters answer; down: "
        "node02).")


def test_five_voters_with_one_down_are_not_at_risk_two_down_are() -> None:
    names = [f"n{i}" for i in range(5)]
    one = tuple(MemberView(n, i, True, True, n != "n0") for i, n in enumerate(names))
    assert "quorum-at-risk:cluster" not in ids(view(members=one))
    two = tuple(MemberView(n, i, True, True, n not in ("n0", "n1")) for i, n in enumerate(names))
    assert "quorum-at-risk:cluster" in ids(view(members=two))


def test_a_learner_down_is_a_warning_and_two_node_quorum_is_no_risk() -> None:
    # The two-node design: only the master's member votes.
    members = (MemberView("node01", 1, True, True),
               MemberView("node02", 2, False, True, healthy=False))
    conds = conditions(view(members=members))[0]
    assert set(conds) == {"etcd-member-down:node02"}
    assert conds["etcd-member-down:node02"].severity == A.WARNING
    assert "(learner)" in conds["etcd-member-down:node02"].message


def test_a_member_added_but_not_started_is_down() -> None:
    members = (MemberView("node01", 1, True, True), MemberView("node02", 2, False, False,
                                                                healthy=False))
    c = conditions(view(members=members))[0]["etcd-member-down:node02"]
    assert c.message.endswith("has not started.") and c.hold == 30.0


# -- memory and disk --------------------------------------------------------------------------
def test_memory_and_disk_above_their_thresholds() -> None:
    f = dict(FACTS, node02=facts("node02", mem_free=1000, disk_free=50))
    conds = conditions(view(facts=f))[0]
    assert set(conds) == {"node-memory:node02", "node-disk:node02"}
    assert conds["node-memory:node02"].message == (
        "Node node02 uses 94% of its memory (1000 MiB free of 16000 MiB; the threshold "
        "is 90%).")
    assert "95% of its instance storage" in conds["node-disk:node02"].message
    # Raised thresholds: no alarm.
    s = replace(S, memory_percent=95.0, disk_percent=96.0)
    assert ids(view(facts=f, settings=s)) == set()


def test_a_lost_nodes_stale_facts_raise_no_resource_alarm() -> None:
    f = dict(FACTS, node02=facts("node02", mem_free=10))
    assert ids(view(facts=f, alive=("node01", "node03"))) == {"node-unreachable:node02"}


# -- jobs -------------------------------------------------------------------------------------
def test_a_failed_job_raises_at_once_and_clears_after_its_window() -> None:
    job = FailedJob(12, 990.0, "INSTANCE_STARTUP(vm1)", "Could not start vm1: no memory")
    v = view(failed_jobs=(job,))
    p = plan(v)
    (a,) = p.raise_
    assert (a.id, a.object, a.severity) == ("job-failed:12", "job/12", A.WARNING)
    assert a.message == "Job 12 (INSTANCE_STARTUP(vm1)) failed: Could not start vm1: no memory"
    v = replace(v, active={a.id: a}, now=990.0 + S.job_failed_seconds + 1)
    assert [c.id for c in plan(v).clear] == ["job-failed:12"]


def test_failed_job_reads_the_error_of_a_failed_opcode() -> None:
    job = Job.new(7, [{"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": "vm1"}], 5.0)
    assert failed_job(job) is None
    job = replace(job, status=JobStatus.ERROR, end_ts=9.0,
                  opresult=(["OpExecError", ["Could not start vm1: boom"]],))
    assert failed_job(job) == FailedJob(7, 9.0, "INSTANCE_STARTUP(vm1)",
                                        "Could not start vm1: boom")


# -- settings ---------------------------------------------------------------------------------
def test_settings_parse_numbers_from_text_and_json() -> None:
    s = AlarmSettings().with_changes({"memory_percent": "85", "debounce_seconds": 0.5,
                                      "history_limit": "20", "webhook_url":
                                      " http://127.0.0.1:9/x "})
    assert (s.memory_percent, s.debounce_seconds, s.history_limit, s.webhook_url) == (
        85.0, 0.5, 20, "http://127.0.0.1:9/x")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("nope", "1", "Unknown alarm setting 'nope'; the settings are debounce_seconds, "),
    ("memory_percent", "lots", "Alarm setting 'memory_percent' must be a number from 1 to "
                               "100, not 'lots'."),
    ("memory_percent", "101", "Alarm setting 'memory_percent' must be from 1 to 100, not "
                              "101."),
    ("memory_percent", True, "must be a number"),
    ("history_limit", "2.5", "Alarm setting 'history_limit' must be a whole number"),
    ("webhook_url", "ftp://x", "Alarm setting 'webhook_url' must be an http:// or https:// "
                               "URL (or empty to send none), not 'ftp://x'."),
    ("command", "notify 'unclosed", "Alarm setting 'command' cannot be split into words"),
    ("command", 5, "Alarm setting 'command' must be a string, not 5."),
])
def test_bad_settings_are_refused_with_one_sentence(key: str, value: Any,
                                                    message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        AlarmSettings().with_changes({key: value})
    assert message in err.value.message
    assert err.value.message.count(". ") == 0 and err.value.message.endswith(".")


def test_a_bad_change_writes_nothing_and_stored_garbage_falls_back_to_defaults() -> None:
    store = MemoryStore()
    alarm_store.change_settings(store, {"disk_percent": 80})
    with pytest.raises(InvalidInput):
        alarm_store.change_settings(store, {"memory_percent": 50, "webhook_url": "x"})
    assert alarm_store.settings(store).memory_percent == 90.0
    assert alarm_store.settings(store).disk_percent == 80.0
    store.put("alarms/settings", b'{"memory_percent": "lots", "disk_percent": 70}')
    assert alarm_store.settings(store) == replace(AlarmSettings(), disk_percent=70.0)
    store.put("alarms/settings", b"not json")
    assert alarm_store.settings(store) == AlarmSettings()


def test_every_setting_has_help() -> None:
    assert set(A.HELP) == set(A.setting_names())


# -- the loop against the in-memory store -----------------------------------------------------
class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__("c", "node01")
        self.sent: list[tuple[str, str]] = []

    def start(self) -> None:
        pass

    def send(self, event: str, alarm: Alarm, settings: AlarmSettings) -> int:
        self.sent.append((event, alarm.id))
        return 1


class World:
    """A store with a master key held by node01, three nodes, and a manager."""

    def __init__(self, clock: FakeClock) -> None:
        self.store = MemoryStore()
        self.clock = clock
        self.mono = FakeClock(50.0)
        rev = self.store.put("master", b'{"node": "node01"}')
        self.guard: Guard | None = Guard("master", rev)
        for n in NAMES:
            self.store.put(Keys.node(n), json.dumps(NODES[n].to_json()).encode())
            self.store.put(Keys.facts(n), json.dumps(FACTS[n].to_json()).encode())
            self.store.put(Keys.alive(n), b"{}")
        ctx = MasterContext(self.store, lambda: self.guard, "node01", NoRpc(), clock=clock)
        self.notifier = RecordingNotifier()
        self.mgr = AlarmManager(ctx, notifier=self.notifier, monotonic=self.mono)
        self.mgr._failed = {}  # the job watch has listed: nothing failed

    def cycle(self, advance: float = 0.0) -> str:
        self.clock.advance(advance)
        self.mono.advance(advance)
        return self.mgr.cycle()

    def events(self) -> list[Event]:
        kvs, _ = self.store.list(EVENTS)
        return [Event.from_json(json.loads(kv.value)) for kv in kvs]

    def history(self) -> list[Alarm]:
        return alarm_store.history(self.store)


def test_the_loop_raises_with_an_event_and_clears_into_the_history(clock: FakeClock) -> None:
    w = World(clock)
    assert w.cycle() == "nothing to do"
    w.store.delete(Keys.alive("node02"))
    assert w.cycle() == "nothing to do"  # pending: the debounce runs
    assert w.cycle(2.0) == "raised node-unreachable:node02"
    (a,) = alarm_store.listing(w.store)
    assert a.raised == clock.now and a.severity == A.CRITICAL
    (ev,) = w.events()
    assert (ev.kind, ev.object, ev.severity) == ("alarm-raised", "node/node02", "error")
    assert ev.message == ("Alarm raised (critical): Node node02 holds no lease: its daemon "
                          "is down or cannot reach etcd.")
    assert w.cycle(1.0) == "nothing to do"
    w.store.put(Keys.alive("node02"), b"{}")
    assert w.cycle(1.0) == "cleared node-unreachable:node02"
    assert alarm_store.listing(w.store) == []
    (h,) = w.history()
    assert h.id == a.id and h.raised == a.raised and h.cleared == clock.now
    assert [e.kind for e in w.events()] == ["alarm-raised", "alarm-cleared"]
    assert w.notifier.sent == [("raised", a.id), ("cleared", a.id)]
    assert [x.id for x in alarm_store.listing(w.store, include_cleared=True)] == [a.id]


def test_an_acknowledgement_is_kept_and_the_alarm_clears_with_it(clock: FakeClock) -> None:
    w = World(clock)
    w.store.delete(Keys.alive("node03"))
    w.cycle()
    w.cycle(2.0)
    acked = alarm_store.acknowledge(w.store, "node-unreachable:node03", "alice",
                                    "haven-admin", 1234.0, "node02")
    assert (acked.acked_by, acked.acked_user, acked.acked_at) == ("alice", "haven-admin",
                                                                  1234.0)
    # A second acknowledgement keeps the first one.
    again = alarm_store.acknowledge(w.store, "node-unreachable:node03", "bob", "x", 9.0)
    assert again.acked_by == "alice"
    assert w.cycle(1.0) == "nothing to do"  # acknowledged: still active
    assert alarm_store.listing(w.store)[0].acked_by == "alice"
    w.store.put(Keys.alive("node03"), b"{}")
    w.cycle(1.0)
    assert w.history()[0].acked_by == "alice"
    assert "alarm-acknowledged" in [e.kind for e in w.events()]
    with pytest.raises(NotFoundError, match="Alarm 'node-unreachable:node03' is not active"):
        alarm_store.acknowledge(w.store, "node-unreachable:node03", "alice", "u", 1.0)


def test_a_clear_that_races_an_acknowledgement_is_planned_again(clock: FakeClock) -> None:
    w = World(clock)
    w.store.delete(Keys.alive("node03"))
    w.cycle()
    w.cycle(2.0)
    w.store.put(Keys.alive("node03"), b"{}")
    view, revs = w.mgr.observe()
    p = plan(view)
    alarm_store.acknowledge(w.store, "node-unreachable:node03", "alice", "u", 5.0)
    line = w.mgr.execute(p, view, revs)
    assert line == "nothing to do (1 write(s) lost a race; planning again)"
    assert w.mgr.wake.is_set()
    assert w.cycle() == "cleared node-unreachable:node03"
    assert w.history()[0].acked_by == "alice"


def test_a_deposed_master_writes_nothing(clock: FakeClock) -> None:
    w = World(clock)
    w.store.delete(Keys.alive("node02"))
    w.cycle()
    w.guard = None
    assert w.cycle(3.0) == "not master"
    # The token no longer matches (another node took the master key).
    w.guard = Guard("master", 10**6)
    with pytest.raises(FencedOut):
        w.cycle(1.0)
    assert alarm_store.listing(w.store) == [] and w.events() == []


def test_the_history_is_trimmed_to_its_limit(clock: FakeClock) -> None:
    w = World(clock)
    alarm_store.change_settings(w.store, {"history_limit": 3, "debounce_seconds": 0})
    for _ in range(5):
        w.store.delete(Keys.alive("node02"))
        assert w.cycle(1.0) == "raised node-unreachable:node02"
        w.store.put(Keys.alive("node02"), b"{}")
        assert w.cycle(1.0) == "cleared node-unreachable:node02"
    hist = w.history()
    assert len(hist) == 3
    assert [h.raised for h in hist] == sorted(h.raised for h in hist)
    assert hist[-1].cleared == clock.now  # the newest are kept


def test_failed_jobs_come_from_the_job_watch(clock: FakeClock) -> None:
    w = World(clock)
    w.mgr._failed = None
    job = Job.new(3, [{"OP_ID": "OP_TEST_DELAY", "duration": 1}], clock.now)
    w.store.put(Keys.job(3), json.dumps(job.to_json()).encode())
    kvs, rev = w.store.list("jobs/")
    w.mgr._on_jobs(kvs, rev)
    assert w.cycle() == "nothing to do"
    bad = replace(job, status=JobStatus.ERROR, end_ts=clock.now,
                  opresult=(["OpExecError", ["boom"]],))
    w.store.put(Keys.job(3), json.dumps(bad.to_json()).encode())
    from haven.store.base import WatchEvent

    w.mgr._on_job(WatchEvent("PUT", w.store.get(Keys.job(3))))  # type: ignore[arg-type]
    assert w.cycle() == "raised job-failed:3"
    assert alarm_store.listing(w.store)[0].message == "Job 3 (TEST_DELAY(1)) failed: boom"


def test_the_manager_runs_in_its_threads_and_stops(clock: FakeClock) -> None:
    w = World(clock)
    alarm_store.change_settings(w.store, {"debounce_seconds": 0})
    w.mgr = AlarmManager(w.mgr.ctx, period=0.05, notifier=w.notifier)
    w.mgr.start()
    try:
        w.store.delete(Keys.alive("node02"))
        wait_for(lambda: [a.id for a in alarm_store.listing(w.store)] ==
                 ["node-unreachable:node02"], what="the raise")
        wait_for(lambda: w.mgr.last_summary == "nothing to do", what="a quiet cycle")
    finally:
        w.mgr.stop()
    wait_for(lambda: not any(t.is_alive() for t in w.mgr._threads), what="threads end")


# -- the notifier -----------------------------------------------------------------------------
def test_the_notifier_sends_each_notice_to_each_target_in_order() -> None:
    got: list[tuple[str, str, dict[str, Any]]] = []
    done = threading.Event()

    def hook(url: str, body: bytes, timeout: float) -> None:
        got.append(("webhook", url, json.loads(body)))
        if len(got) == 2:
            done.set()

    def failing(command: str, body: bytes, timeout: float) -> None:
        raise OSError("no such command")

    n = Notifier("c1", "node01", webhook=hook, command=failing)
    n.start()
    s = replace(S, webhook_url="http://x/y", command="nothing")
    a = Alarm("node-unreachable:node02", A.NODE_UNREACHABLE, "node/node02", A.CRITICAL,
              "down", 1.0)
    assert n.send("raised", a, s) == 2
    assert n.send("cleared", replace(a, cleared=2.0), s) == 2
    assert done.wait(5)
    n.stop()
    assert [(g[0], g[1], g[2]["event"], g[2]["alarm"]["state"]) for g in got] == [
        ("webhook", "http://x/y", "raised", "active"),
        ("webhook", "http://x/y", "cleared", "cleared")]
    assert got[0][2]["cluster"] == "c1" and got[0][2]["master"] == "node01"
    assert n.send("raised", a, S) == 0  # no target set: nothing queued


def test_the_command_gets_the_notice_on_stdin(tmp_path: Path) -> None:
    from haven.master.alarm_notify import run_command

    out = tmp_path / "got.json"
    run_command(f"{sys.executable} -c 'import sys; open(\"{out}\", \"wb\")"
                f".write(sys.stdin.buffer.read())'", b'{"event": "raised"}', 10.0)
    assert json.loads(out.read_text()) == {"event": "raised"}
    with pytest.raises(subprocess.SubprocessError, match="exit status 3: oops"):
        run_command(f"{sys.executable} -c 'import sys; sys.stderr.write(\"oops\\n\"); "
                    f"sys.exit(3)'", b"{}", 10.0)
    with pytest.raises(subprocess.TimeoutExpired):
        run_command("sleep 5", b"{}", 0.2)


def test_a_webhook_that_fails_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    from haven.master.alarm_notify import post_webhook

    with pytest.raises(OSError):
        post_webhook("http://127.0.0.1:9/nothing-listens", b"{}", 1.0)
    n = Notifier("c1", "node01")
    n.start()
    s = replace(S, webhook_url="http://127.0.0.1:9/nothing-listens", webhook_timeout=1.0)
    a = Alarm("job-failed:1", A.JOB_FAILED, "job/1", A.WARNING, "x", 1.0)
    with caplog.at_level("WARNING"):
        n.send("raised", a, s)
        wait_for(lambda: "the webhook for raised job-failed:1 failed" in caplog.text,
                 what="the logged failure")
    n.stop()


# -- API and CLI ------------------------------------------------------------------------------
class FakeDaemon:
    name = "node02"

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def store(self) -> MemoryStore:
        return self._store


def call(store: MemoryStore, method: str, path: str, body: Any = None,
         query: dict[str, list[str]] | None = None, user: str | None = "haven-admin") -> Any:
    from haven.api import alarms_api
    from haven.api.http import Request, Router

    r = Router()
    alarms_api.install(r, FakeDaemon(store))  # type: ignore[arg-type]
    route, params, _other = r.match(method, path)
    assert route is not None, f"no route for {method} {path}"
    return route.handler(Request(method, path, query or {}, body, user, True, params))


def test_the_api_lists_acknowledges_and_sets(clock: FakeClock) -> None:
    w = World(clock)
    w.store.delete(Keys.alive("node02"))
    w.cycle()
    w.cycle(2.0)
    listed = call(w.store, "GET", "/haven/alarms")
    assert [(a["id"], a["state"]) for a in listed] == [("node-unreachable:node02", "active")]
    a = call(w.store, "POST", "/haven/alarms/node-unreachable:node02/ack", {"by": "carol"})
    assert (a["acked_by"], a["acked_user"]) == ("carol", "haven-admin")
    a = call(w.store, "POST", "/haven/alarms/node-unreachable:node02/ack", None)
    assert a["acked_by"] == "carol"
    with pytest.raises(NotFoundError):
        call(w.store, "POST", "/haven/alarms/nope:x/ack", {})
    with pytest.raises(InvalidInput, match="takes only 'by'"):
        call(w.store, "POST", "/haven/alarms/node-unreachable:node02/ack", {"who": "x"})
    w.store.put(Keys.alive("node02"), b"{}")
    w.cycle(1.0)
    assert call(w.store, "GET", "/haven/alarms") == []
    hist = call(w.store, "GET", "/haven/alarms", query={"all": ["1"]})
    assert [(h["id"], h["state"], h["acked_by"]) for h in hist] == [
        ("node-unreachable:node02", "cleared", "carol")]
    got = call(w.store, "PUT", "/haven/alarms/settings", {"memory_percent": "80"})
    assert got["settings"]["memory_percent"] == 80.0
    assert call(w.store, "GET", "/haven/alarms/settings")["settings"]["memory_percent"] == 80
    with pytest.raises(InvalidInput, match="must be from 1 to 100"):
        call(w.store, "PUT", "/haven/alarms/settings", {"memory_percent": 0})
    from haven.api.http import HttpError

    with pytest.raises(HttpError, match="at least one alarm setting"):
        call(w.store, "PUT", "/haven/alarms/settings", {})


def test_active_alarms_are_listed_most_severe_first_then_history() -> None:
    store = MemoryStore()
    warn = Alarm("node-memory:n1", A.NODE_MEMORY, "node/n1", A.WARNING, "m", 1.0)
    crit = Alarm("node-unreachable:n2", A.NODE_UNREACHABLE, "node/n2", A.CRITICAL, "u", 5.0)
    old = Alarm("job-failed:1", A.JOB_FAILED, "job/1", A.CRITICAL, "j", 0.5, cleared=2.0)
    newer = Alarm("job-failed:2", A.JOB_FAILED, "job/2", A.WARNING, "j", 0.6, cleared=3.0)
    for a in (warn, crit):
        store.put(ALARMS_ACTIVE + a.id, a.encode())
    for a in (old, newer):
        store.put(Keys.alarm_history(a.raised, a.id), a.encode())
    assert [a.id for a in alarm_store.listing(store, True)] == [
        crit.id, warn.id, newer.id, old.id]
    assert Keys.alarm_history(1.5, "x") < Keys.alarm_history(10.0, "x")
    assert Keys.alarm_history(1.5, "x").startswith(ALARMS_HISTORY)


def test_the_cli_parses_its_commands() -> None:
    from haven.cli import alarms as cli

    p = cli.build_parser()
    assert p.parse_args([]).fn is cli.cmd_list
    assert p.parse_args(["--all"]).all
    args = p.parse_args(["ack", "node-unreachable:node02", "--by", "dave"])
    assert (args.fn, args.ids, args.by) == (cli.cmd_ack, ["node-unreachable:node02"], "dave")
    args = p.parse_args(["set", "webhook_url", "http://x"])
    assert (args.fn, args.key, args.value) == (cli.cmd_set, "webhook_url", "http://x")
    assert p.parse_args(["settings"]).fn is cli.cmd_settings


def test_the_cli_prints_alarms_acknowledges_and_sets(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    from haven.cli import alarms as cli

    store = MemoryStore()
    a = Alarm("node-unreachable:node02", A.NODE_UNREACHABLE, "node/node02", A.CRITICAL,
              "Node node02 is fenced.", 1.0e9)
    store.put(Keys.alarm(a.id), a.encode())

    class FakeClient:
        def get(self, path: str) -> Any:
            p, _, q = path.partition("?")
            return call(store, "GET", p, query={"all": ["1"]} if q else None)

        def post(self, path: str, body: Any) -> Any:
            return call(store, "POST", path, body)

        def put(self, path: str, body: Any) -> Any:
            return call(store, "PUT", path, body)

    monkeypatch.setattr(cli.Client, "from_config", classmethod(lambda _cls: FakeClient()))
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["ID", "Severity", "State", "Raised", "Cleared",
                                           "Acknowledged", "Message"]
    assert "node-unreachable:node02 critical ACTIVE" in " ".join(out.split())
    assert cli.main(["ack", a.id, "--by", "erin"]) == 0
    assert capsys.readouterr().out.startswith(f"Alarm {a.id} acknowledged by erin at ")
    assert cli.main(["--all"]) == 0
    assert " acked " in capsys.readouterr().out
    assert cli.main(["set", "disk_percent", "75"]) == 0
    assert capsys.readouterr().out == "Alarm setting disk_percent is now 75.0.\n"
    assert cli.main(["set", "disk_percent", "0"]) == 1
    err = capsys.readouterr().err
    assert err.strip().endswith("\nAlarm setting 'disk_percent' must be from 1 to 100, "
                                "not 0.") and "Traceback" not in err
    assert cli.main(["settings"]) == 0
    assert "disk_percent" in capsys.readouterr().out
    assert cli.main(["ack", "nope:x"]) != 0
    assert "Alarm 'nope:x' is not active" in capsys.readouterr().err
