"""The agent's decisions: a pure function from one observation to actions.

Level-triggered: every cycle recomputes from what the store says and what runs here,
so a missed event or a daemon restart changes nothing.  Safety first: a VM that runs
here but whose primary node is another is killed (one that no longer exists is
stopped); an instance a job holds the lock of, or whose interrupted migration awaits
its cleanup (``locked`` covers both), is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from haven.hypervisor.base import VmInfo
from haven.model.instance import MAX_RESTARTS, Instance, Observed

ActionKind = Literal["start", "stop", "give_up", "publish"]


@dataclass(frozen=True)
class AgentView:
    """One observation of this node: the store's view and the local VM processes."""

    node: str
    node_offline: bool
    instances: dict[str, Instance]
    observed: dict[str, Observed]
    locked: frozenset[str]
    vms: dict[str, VmInfo]
    # Why this node may not start VMs now ("" if it may): its lease is not valid, its
    # fencer is not fed, or the HA manager fenced it and recovers its instances.
    start_blocked: str = ""
    # Wall-clock time of the observation (0: unknown, as in the simulator's unit views).
    now: float = 0.0
    # Wall-clock time this node's daemon started (0: unknown).  A VM last seen running
    # before then may have gone down with its node rather than crashed on its own.
    started: float = 0.0


# A VM that ran this long since its last automatic restart has its count cleared, as
# Ganeti's watcher forgets an instance it finds running: five failures over months
# must not exhaust the budget meant for a crash loop (found by the fault campaign).
STABLE_AFTER = 300.0
# After a start that failed, the next automatic one waits this long (by the number of
# attempts so far): a storage server or a network out for a few seconds must not use
# up the whole budget in as many agent cycles (found by the fault campaign: an iSCSI
# instance given up on while its target restarted).
RETRY_DELAYS = (0.0, 2.0, 4.0, 8.0, 16.0)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    name: str
    reason: str
    generation: int = 0
    restarts: int = 0
    state: str = ""  # for publish
    pid: int = 0
    force: bool = False  # for stop: kill at once, no power button
    kw: dict[str, str] = field(default_factory=dict)


def plan(v: AgentView) -> list[Action]:
    actions: list[Action] = []
    names = sorted({n for n, i in v.instances.items() if i.primary_node == v.node}
                   | set(v.vms))
    for name in names:
        if name in v.locked:
            continue  # a job is working on it
        act = _plan_one(v, name)
        if act is not None:
            actions.append(act)
    return actions


def _plan_one(v: AgentView, name: str) -> Action | None:
    inst = v.instances.get(name)
    vm = v.vms.get(name)
    obs = v.observed.get(name)
    if inst is None:
        return Action("stop", name, "not in the cluster configuration") if vm else None
    if inst.primary_node != v.node:
        # Never two copies: the primary node is the only place it may run.  Killed at
        # once: a graceful power-off lets this copy run (and write to shared disks) for
        # as long as its guest takes to shut down, while the primary runs its own
        # (found by the fault campaign: 7 s of two running copies).
        return Action("stop", name, f"its primary node is {inst.primary_node}",
                      force=True) if vm else None
    if v.node_offline:
        return None
    mine = obs is not None and obs.node == v.node and obs.generation == inst.generation
    if inst.admin_state != "up":
        if vm is not None:
            return Action("stop", name, "it is administratively down")
        if mine and obs is not None and obs.state not in ("stopped",):
            return Action("publish", name, "not running", inst.generation, state="stopped")
        return None
    if vm is not None and vm.status in ("running", "paused", "incoming"):
        if not mine or obs is None or obs.state != "running" or obs.pid != vm.pid:
            return Action("publish", name, "running", inst.generation,
                          obs.restarts if mine and obs else 0, "running", vm.pid)
        if obs.restarts and v.now and v.now - obs.since >= STABLE_AFTER:
            return Action("publish", name, f"running for {STABLE_AFTER / 60:g} min since "
                          f"its last automatic restart: its restart count starts again",
                          inst.generation, 0, "running", vm.pid)
        return None
    if vm is not None and vm.status == "shutdown":
        if not mine or obs is None or obs.state != "user_down":
            return Action("publish", name, "the guest powered itself off",
                          inst.generation, obs.restarts if mine and obs else 0,
                          "user_down", vm.pid)
        return None
    if vm is not None:
        return None  # status unknown for now (monitor busy): look again next cycle
    # Should run here and does not.
    if v.start_blocked:
        return None
    if mine and obs is not None and obs.state in ("failed", "user_down"):
        return None  # gave up, or shut down from inside: the administrator decides
    restarts = obs.restarts if mine and obs is not None else 0
    crashed = mine and obs is not None and obs.state == "running"
    # Last seen running before this daemon started: the node went down (or its daemon
    # with the VM), not the VM alone.  That restart is not counted against the budget
    # meant for a VM that crashes again and again.
    with_node = crashed and obs is not None and 0 < obs.since < v.started
    # Or its record was taken back when this node's lease came back (fencing.put_alive):
    # the node fenced itself, which killed the VM (found by the fault campaign: a
    # partitioned master's self-fence spent the last of an instance's five restarts).
    with_node = with_node or (mine and obs is not None and obs.state == "stopped"
                              and obs.with_node)
    if restarts >= (inst.ha_max_restart or MAX_RESTARTS) and not with_node:
        return Action("give_up", name, f"it failed {restarts} automatic restarts",
                      inst.generation, restarts)
    if mine and obs is not None and obs.state == "stopped" and restarts and v.now \
            and not with_node:
        wait = RETRY_DELAYS[min(restarts, len(RETRY_DELAYS) - 1)]
        if v.now - obs.since < wait:
            return None  # its last start failed: the next one a little later
    reason = "went down with its node" if with_node else "crashed" if crashed \
        else "not running"
    return Action("start", name, reason, inst.generation,
                  restarts if with_node else restarts + 1)


def summary(actions: list[Action], n_instances: int) -> str:
    if not actions:
        return f"{n_instances} instance(s) as they should be"
    return "; ".join(f"{a.kind} {a.name} ({a.reason})" for a in actions)
