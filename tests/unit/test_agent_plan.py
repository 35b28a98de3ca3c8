"""The agent's pure plan: what a node does with each instance, from one observation."""

from __future__ import annotations

from haven.agent.plan import AgentView, plan, summary
from haven.hypervisor.base import VmInfo
from haven.model.instance import Instance, Observed


def inst(name: str = "vm1", node: str = "node01", admin: str = "up", gen: int = 1
         ) -> Instance:
    return Instance(name=name, uuid=f"u-{name}", os="busybox", hypervisor="kvm",
                    disk_template="file", primary_node=node, admin_state=admin,
                    generation=gen)


def obs(state: str, restarts: int = 0, node: str = "node01", gen: int = 1, pid: int = 10,
        name: str = "vm1") -> Observed:
    return Observed(name=name, node=node, state=state, pid=pid, generation=gen,
                    restarts=restarts)


def vm(status: str = "running", pid: int = 10, name: str = "vm1") -> VmInfo:
    return VmInfo(name=name, pid=pid, status=status)  # type: ignore[arg-type]


def view(instances: list[Instance], observed: list[Observed] = (),  # type: ignore[assignment]
         vms: list[VmInfo] = (), locked: set[str] = frozenset(),  # type: ignore[assignment]
         offline: bool = False) -> AgentView:
    return AgentView("node01", offline, {i.name: i for i in instances},
                     {o.name: o for o in observed}, frozenset(locked),
                     {v.name: v for v in vms})


def kinds(v: AgentView) -> list[tuple[str, str, str]]:
    return [(a.kind, a.name, a.reason) for a in plan(v)]


def test_a_running_instance_that_is_reported_needs_nothing() -> None:
    v = view([inst()], [obs("running")], [vm()])
    assert plan(v) == []
    assert summary(plan(v), 1) == "1 instance(s) as they should be"


def test_an_instance_that_should_run_and_does_not_is_started() -> None:
    [a] = plan(view([inst()]))
    assert (a.kind, a.reason, a.restarts, a.generation) == ("start", "not running", 1, 1)


def test_a_crashed_instance_is_restarted_and_counted() -> None:
    [a] = plan(view([inst()], [obs("running", restarts=2)]))
    assert (a.kind, a.reason, a.restarts) == ("start", "crashed", 3)


def test_after_five_restarts_the_agent_gives_up() -> None:
    [a] = plan(view([inst()], [obs("stopped", restarts=5)]))
    assert (a.kind, a.restarts) == ("give_up", 5)
    assert plan(view([inst()], [obs("failed", restarts=5)])) == []


def test_restart_counts_of_an_older_generation_do_not_count() -> None:
    [a] = plan(view([inst(gen=2)], [obs("running", restarts=5, gen=1)]))
    assert (a.kind, a.restarts) == ("start", 1)


def test_an_administratively_down_instance_is_stopped() -> None:
    assert kinds(view([inst(admin="down")], [obs("running")], [vm()])) == [
        ("stop", "vm1", "it is administratively down")]


def test_a_vm_whose_primary_is_another_node_is_killed_never_two_copies() -> None:
    """Killed, not powered off: the seed-3006 campaign round saw a stray copy run on
    for the 7 s its guest took to hear the power button."""
    [a] = plan(view([inst(node="node02")], [], [vm()]))
    assert (a.kind, a.name, a.reason, a.force) == (
        "stop", "vm1", "its primary node is node02", True)


def test_only_a_stray_copy_is_killed_an_administrative_stop_is_graceful() -> None:
    [a] = plan(view([inst(admin="down")], [obs("running")], [vm()]))
    assert (a.kind, a.force) == ("stop", False)


def test_a_vm_unknown_to_the_cluster_is_stopped() -> None:
    assert kinds(view([], [], [vm(name="ghost")])) == [
        ("stop", "ghost", "not in the cluster configuration")]


def test_a_locked_instance_is_never_touched() -> None:
    assert plan(view([inst()], locked={"vm1"})) == []
    assert plan(view([inst(node="node02")], [], [vm()], locked={"vm1"})) == []


def test_a_guest_that_powered_off_is_reported_user_down_not_restarted() -> None:
    [a] = plan(view([inst()], [obs("running")], [vm("shutdown")]))
    assert (a.kind, a.state) == ("publish", "user_down")
    assert plan(view([inst()], [obs("user_down")], [vm("shutdown")])) == []
    assert plan(view([inst()], [obs("user_down")])) == []


def test_a_new_pid_is_published() -> None:
    [a] = plan(view([inst()], [obs("running", pid=10)], [vm(pid=11)]))
    assert (a.kind, a.state, a.pid) == ("publish", "running", 11)


def test_an_offline_node_starts_nothing() -> None:
    assert plan(view([inst()], offline=True)) == []


def test_a_restart_count_is_cleared_once_the_vm_ran_stably() -> None:
    """Found by the fault campaign: five successful restarts spread over an instance's
    life made the agent give up on the sixth failure, minutes later."""
    from dataclasses import replace

    from haven.agent.plan import STABLE_AFTER

    running = replace(obs("running", restarts=4), since=1000.0, pid=10)
    young = replace(view([inst()], [running], [vm()]), now=1000.0 + STABLE_AFTER - 1)
    assert plan(young) == []
    old = replace(young, now=1000.0 + STABLE_AFTER)
    (a,) = plan(old)
    assert (a.kind, a.restarts, a.state) == ("publish", 0, "running")
    # Without a clock (the simulator's views) nothing changes.
    assert plan(replace(young, now=0.0)) == []
    # A crash loop still gives up: restarts within the window keep counting.
    crashed = replace(obs("running", restarts=5), since=1000.0)
    (g,) = plan(replace(view([inst()], [crashed], []), now=1000.0 + STABLE_AFTER))
    assert g.kind == "give_up"


def test_a_vm_that_went_down_with_its_node_is_restarted_uncounted() -> None:
    """Found by the fault campaign: node kills and the QEMU kills between them used up
    an instance's five restarts in minutes, and it was given up on.  A VM last seen
    running before this node's daemon started went down with the node: restarted, not
    counted (even with the budget spent); one that crashed since is counted."""
    from dataclasses import replace

    seen = replace(obs("running", restarts=5), since=1000.0)
    (a,) = plan(replace(view([inst()], [seen]), now=1100.0, started=1050.0))
    assert (a.kind, a.reason, a.restarts) == ("start", "went down with its node", 5)
    (g,) = plan(replace(view([inst()], [seen]), now=1100.0, started=900.0))
    assert g.kind == "give_up"
    counted = replace(obs("running", restarts=2), since=1000.0)
    (c,) = plan(replace(view([inst()], [counted]), now=1100.0, started=900.0))
    assert (c.reason, c.restarts) == ("crashed", 3)


def test_a_vm_its_node_fenced_is_restarted_uncounted_and_at_once() -> None:
    """Found by the fault campaign (seed 3015, round 11): a master partitioned for 3.8 s
    lost its lease and its fencer killed its VM; the record taken back when the lease
    returned said "stopped", and that restart was counted as the VM's own failure, the
    sixth in four minutes of faults: the instance was given up on.  A VM its node
    stopped is restarted at once, not counted; a start that fails after it is."""
    from dataclasses import replace

    fenced = replace(obs("stopped", restarts=5), since=1000.0, with_node=True)
    (a,) = plan(replace(view([inst()], [fenced]), now=1000.5, started=500.0))
    assert (a.kind, a.reason, a.restarts) == ("start", "went down with its node", 5)
    failed = replace(obs("stopped", restarts=5), since=1000.0)  # its own start failed
    (g,) = plan(replace(view([inst()], [failed]), now=1000.5, started=500.0))
    assert g.kind == "give_up"
    # The record the daemon takes back says so.
    from haven.model.instance import Observed

    assert Observed.from_json(fenced.to_json()).with_node
    assert not Observed.from_json({"name": "vm1", "node": "n", "state": "stopped"}
                                  ).with_node


def test_after_a_failed_start_the_next_waits_longer_each_time() -> None:
    """A storage server out for a few seconds must not use up the five attempts in as
    many agent cycles."""
    from dataclasses import replace

    from haven.agent.plan import RETRY_DELAYS

    for restarts in range(1, 5):
        failed = replace(obs("stopped", restarts=restarts), since=1000.0)
        wait = RETRY_DELAYS[restarts]
        early = replace(view([inst()], [failed]), now=1000.0 + wait - 0.1)
        assert plan(early) == [], restarts
        (a,) = plan(replace(early, now=1000.0 + wait))
        assert (a.kind, a.restarts) == ("start", restarts + 1)
    assert sum(RETRY_DELAYS) >= 20  # five attempts span a storage restart
