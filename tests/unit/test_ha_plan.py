"""The HA manager's pure plan (haven.master.ha), case by case.  The virtual-time
simulator (test_ha_sim.py) runs it together with the agents, leases and fencers."""

from __future__ import annotations

from dataclasses import replace

from haven.master.ha import HAView, plan
from haven.model import ha as H
from haven.model.ha import InstanceHA, NodeHA
from haven.model.instance import Disk, Instance
from haven.model.node import Node
from haven.model.replica import OUTDATED, UP_TO_DATE, DiskReplica, Replicas

NODES = {n: Node(n, n, "", "", 1811) for n in ("node01", "node02", "node03")}


def inst(name: str, pnode: str, snode: str = "", template: str = "drbd", **kw: object
         ) -> Instance:
    return Instance(name, name, "busybox", "kvm", template, pnode,
                    (snode,) if snode else (), (Disk("d-" + name, 0, 64),),
                    beparams={"memory": 128}, admin_state="up", generation=3,
                    **kw)  # type: ignore[arg-type]


def reps(i: Instance, state: str = UP_TO_DATE, generation: int = 3) -> Replicas:
    return Replicas(i.name, generation, {i.primary_node: {0: DiskReplica(UP_TO_DATE)},
                                         i.secondary_nodes[0]: {0: DiskReplica(state)}})


def view(instances: list[Instance], replicas: list[Replicas] | None = None,
         alive: tuple[str, ...] = ("node01", "node03"), now: float = 100.0,
         node_ha: list[NodeHA] | None = None, inst_ha: list[InstanceHA] | None = None,
         jobs: dict[int, str] | None = None, locks: dict[str, int] | None = None,
         free: int = 4096) -> HAView:
    return HAView(now, "node01", NODES, frozenset(alive),
                  {r.node: r for r in node_ha or []}, {i.name: i for i in instances},
                  {r.instance: r for r in replicas or []}, {r.name: r for r in inst_ha or []},
                  jobs or {}, {}, locks or {}, {n: free for n in NODES}, frozenset())


def kinds(actions: list) -> list[tuple[str, str, str]]:  # type: ignore[type-arg]
    return [(a.kind, a.target, a.state or a.node) for a in actions]


def test_a_lost_lease_makes_a_node_unreachable_then_fenced_after_the_grace() -> None:
    vm1 = inst("vm1", "node02", "node03")
    acts = plan(view([vm1], [reps(vm1)]))
    assert kinds(acts) == [("node", "node02", H.UNREACHABLE)]
    unreachable = acts[0].node_record
    assert unreachable is not None and unreachable.lost_at == 100.0
    # Within the grace: nothing more.
    assert plan(view([vm1], [reps(vm1)], now=100.9, node_ha=[unreachable])) == []
    acts = plan(view([vm1], [reps(vm1)], now=101.0, node_ha=[unreachable]))
    assert kinds(acts) == [("node", "node02", H.FENCED), ("node", "node02", H.RECOVERING),
                           ("recover", "vm1", "node03")]
    rec = acts[2].record
    assert rec is not None and rec.attempts == 1 and rec.lost_at == 100.0


def test_a_node_that_renews_before_the_grace_is_online_and_nothing_moves() -> None:
    vm1 = inst("vm1", "node02", "node03")
    unreachable = NodeHA("node02", H.UNREACHABLE, 100.0, 100.0)
    acts = plan(view([vm1], [reps(vm1)], alive=("node01", "node02", "node03"), now=100.5,
                     node_ha=[unreachable]))
    assert kinds(acts) == [("node", "node02", H.ONLINE)]


def fenced(node: str = "node02") -> NodeHA:
    return NodeHA(node, H.FENCED, 101.0, 100.0)


def test_a_stale_replica_file_disks_and_ha_off_are_refused_with_their_reason() -> None:
    stale = inst("vm1", "node02", "node03")
    local = inst("vm2", "node02", template="file")
    off = inst("vm3", "node02", "node03", ha="off")
    down_sec = inst("vm4", "node02", "node03")
    acts = plan(view([stale, local, off, down_sec],
                     [reps(stale, OUTDATED), reps(off), reps(down_sec)],
                     alive=("node01",), node_ha=[fenced(), NodeHA("node03", H.ONLINE)]))
    reasons = {a.target: a.reason for a in acts if a.kind == "refuse"}
    assert "not UpToDate" in reasons["vm1"] and "lose acknowledged writes" in reasons["vm1"]
    assert "live on node02 only" in reasons["vm2"]
    assert "HA is off" in reasons["vm3"]
    assert "down too" in reasons["vm4"]
    assert not [a for a in acts if a.kind == "recover"]
    # Told once: the same refusal is not repeated.
    again = plan(view([stale], [reps(stale, OUTDATED)], alive=("node01", "node03"),
                      node_ha=[fenced()],
                      inst_ha=[a.record for a in acts if a.target == "vm1" and a.record]))
    assert again == []


def test_a_replica_up_to_date_at_an_older_generation_is_stale() -> None:
    vm1 = inst("vm1", "node02", "node03")
    acts = plan(view([vm1], [reps(vm1, generation=2)], node_ha=[fenced()]))
    assert [a.kind for a in acts] == ["refuse"]


def test_recoveries_go_by_priority_and_capacity_and_take_a_user_jobs_lock() -> None:
    a = inst("a", "node02", "node03")
    b = inst("b", "node02", "node03", ha_priority=10)
    c = inst("c", "node02", "node03")
    acts = plan(view([a, b, c], [reps(a), reps(b), reps(c)], node_ha=[fenced()],
                     locks={"c": 77}, free=300))
    recover = [(x.target, x.job) for x in acts if x.kind == "recover"]
    assert recover == [("b", 0), ("a", 0)]  # 300 MiB: two of 128 MiB
    refused = [x for x in acts if x.kind == "refuse"]
    assert [x.target for x in refused] == ["c"] and "not enough memory" in refused[0].reason
    acts = plan(view([c], [reps(c)], node_ha=[fenced()], locks={"c": 77}))
    assert [(x.kind, x.target, x.job) for x in acts if x.kind == "recover"] == \
        [("recover", "c", 77)]


def test_shared_storage_goes_to_the_live_node_with_most_memory() -> None:
    vm = inst("vm", "node02", template="sharedfile")
    v = view([vm], node_ha=[fenced()])
    v = replace(v, free_memory={"node01": 1000, "node02": 9000, "node03": 2000})
    assert [(x.kind, x.node) for x in plan(v) if x.kind == "recover"] == \
        [("recover", "node03")]


def test_outcomes_retries_and_max_relocate() -> None:
    vm1 = inst("vm1", "node02", "node03")
    running = InstanceHA("vm1", "recovering", "node02", "node03", 5, 1, 100.0, 101.0)
    v = view([vm1], [reps(vm1)], node_ha=[NodeHA("node02", H.RECOVERING, 101, 100.0)],
             inst_ha=[running], jobs={5: "running"})
    assert plan(v) == []
    failed = plan(replace(v, jobs={5: "error"}, job_errors={5: "boom"}))
    assert [(x.kind, x.state) for x in failed] == [("outcome", "failed"),
                                                   ("recover", "")]
    assert failed[1].record is not None and failed[1].record.attempts == 2
    second = InstanceHA("vm1", "recovering", "node02", "node03", 6, 2, 100.0, 102.0)
    exhausted = plan(replace(v, inst_ha={"vm1": second}, jobs={6: "error"}))
    assert [(x.kind, x.state) for x in exhausted] == [("outcome", "failed"),
                                                      ("refuse", "")]
    assert "max_relocate 2" in exhausted[1].reason
    # Success: recorded, even though the instance has moved away since.
    moved = replace(vm1, primary_node="node03", secondary_nodes=("node02",), generation=4)
    done = plan(replace(v, instances={"vm1": moved}, jobs={5: "success"}))
    assert [(x.kind, x.state) for x in done] == [("outcome", "recovered")]
    assert done[0].reason == "recovered on node03 0.0 s after the loss"


def test_a_returning_node_stays_back_until_its_recoveries_end_then_is_online() -> None:
    vm1 = inst("vm1", "node02", "node03")
    running = InstanceHA("vm1", "recovering", "node02", "node03", 5, 1, 100.0, 101.0)
    v = view([vm1], [reps(vm1)], alive=("node01", "node02", "node03"),
             node_ha=[NodeHA("node02", H.RECOVERING, 101, 100.0)], inst_ha=[running],
             jobs={5: "running"})
    acts = plan(v)
    assert kinds(acts) == [("node", "node02", H.BACK)]
    assert "vm1" in acts[0].reason
    back = acts[0].node_record
    assert back is not None
    assert plan(replace(v, node_ha={"node02": back})) == []
    acts = plan(replace(v, node_ha={"node02": back}, jobs={5: "success"}))
    assert ("node", "node02", H.ONLINE) in kinds(acts)


def test_manual_and_offline_nodes_are_never_recovered_automatically() -> None:
    vm1 = inst("vm1", "node02", "node03")
    manual = NodeHA("node02", H.MANUAL, 100, 100)
    assert plan(view([vm1], [reps(vm1)], node_ha=[manual], now=500)) == []
    offline = dict(NODES, node02=replace(NODES["node02"], offline=True))
    assert plan(replace(view([vm1], [reps(vm1)]), nodes=offline)) == []
    acts = plan(view([vm1], [reps(vm1)], node_ha=[manual],
                     alive=("node01", "node02", "node03")))
    assert kinds(acts) == [("node", "node02", H.ONLINE)]


def test_an_admin_down_instance_is_not_started_elsewhere() -> None:
    vm1 = replace(inst("vm1", "node02", "node03"), admin_state="down")
    assert plan(view([vm1], [reps(vm1)], node_ha=[fenced()])) == []


def test_a_node_whose_heartbeats_stop_is_lost_although_etcd_keeps_its_lease() -> None:
    """A new etcd leader renews every lease on taking office: the master times silence
    from the heartbeat writes it saw instead."""
    vm1 = inst("vm1", "node02", "node03")
    v = replace(view([vm1], [reps(vm1)], alive=("node01", "node02", "node03")),
                silent={"node02": 3.9, "node03": 0.2}, silent_limit=4.0)
    assert plan(v) == []
    acts = plan(replace(v, silent={"node02": 4.0, "node03": 0.2}))
    assert kinds(acts) == [("node", "node02", H.UNREACHABLE)]
    assert "no lease renewal seen for 4.0 s" in acts[0].reason
    # A silent secondary is no recovery target either.
    fenced02 = NodeHA("node02", H.FENCED, 101.0, 100.0)
    acts = plan(replace(v, node_ha={"node02": fenced02},
                        silent={"node02": 9.0, "node03": 9.0}))
    assert [a.kind for a in acts if a.target == "vm1"] == ["refuse"]


def test_the_grace_is_timed_on_this_masters_own_clock_when_it_has_one() -> None:
    """A wall clock stepped back (or a new master behind the old one) must not stretch
    the grace: with ``state_age`` the plan ignores ``NodeHA.since``."""
    vm1 = inst("vm1", "node02", "node03")
    unreachable = NodeHA("node02", H.UNREACHABLE, since=5000.0, lost_at=5000.0)
    v = view([vm1], [reps(vm1)], now=100.0, node_ha=[unreachable])
    assert plan(replace(v, state_age={"node02": 0.4})) == []
    acts = plan(replace(v, state_age={"node02": 1.0}))
    assert kinds(acts)[0] == ("node", "node02", H.FENCED)


def test_memory_of_vms_started_since_the_facts_and_of_running_recoveries_counts() -> None:
    from haven.model.instance import Observed

    a = inst("a", "node02", "node03")
    b = inst("b", "node03", "node01")
    # b started on node03 after its facts were taken: those 300 MiB free are 172.
    v = view([a, b], [reps(a)], node_ha=[fenced()], free=300)
    v = replace(v, observed={"b": Observed("b", "node03", "running", since=50.0)},
                facts_updated={"node03": 40.0})
    assert [x.kind for x in plan(v) if x.target == "a"] == ["recover"]  # 172 >= 128
    c = inst("c", "node04", "node03")
    running = InstanceHA("c", "recovering", "node04", "node03", 9, 1, 100.0, 100.5)
    v2 = replace(v, inst_ha={"c": running}, jobs={9: "running"},
                 instances={**v.instances, "c": c})
    refused = [x for x in plan(v2) if x.target == "a"]
    assert [x.kind for x in refused] == ["refuse"]
    assert "not enough memory" in refused[0].reason


def test_a_guest_that_powered_itself_off_is_not_started_elsewhere() -> None:
    from haven.model.instance import Observed

    vm1 = inst("vm1", "node02", "node03")
    v = replace(view([vm1], [reps(vm1)], node_ha=[fenced()]),
                observed={"vm1": Observed("vm1", "node02", "user_down", generation=3)})
    acts = plan(v)
    assert [(x.kind, x.target) for x in acts] == [("refuse", "vm1")]
    assert "USER_down" in acts[0].reason and "gnt-instance startup vm1" in acts[0].reason


def test_a_node_being_added_is_joining_not_lost_until_it_has_reported() -> None:
    from haven.master.ha_loop import _joining
    from haven.model.node import NodeFacts

    new = replace(NODES["node02"], ctime=95.0)
    nodes = dict(NODES, node02=new)
    joining = _joining(nodes, {}, frozenset({"node01", "node03"}), {}, now=100.0)
    assert joining == frozenset({"node02"})
    v = replace(view([]), nodes=nodes, joining=joining)
    assert plan(v) == []  # no unreachable mark, no alarm, nothing to fence
    # Once it has reported (facts after its add), or an HA record exists, or the join
    # has taken longer than the grace, losing it is a loss again.
    facts = {"node02": NodeFacts("node02", 1, 1, 1, 1, 1, 1, ("kvm",), "tcg", "", "", "",
                                 updated=96.0)}
    assert _joining(nodes, {}, frozenset(), facts, now=100.0) == frozenset()
    assert _joining(nodes, {"node02": NodeHA("node02", H.ONLINE)}, frozenset(), {},
                    now=100.0) == frozenset()
    assert _joining(nodes, {}, frozenset(), {}, now=95.0 + 61) == frozenset()
    assert kinds(plan(view([]))) == [("node", "node02", H.UNREACHABLE)]
