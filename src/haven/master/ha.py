"""The HA manager's decisions: a pure function from one observation to actions.

Level-triggered, as the agent: every cycle recomputes from the store, so a new master
finishes what the old one started.  The rules (ARCHITECTURE.md, "Fencing"):

- A node whose lease key is gone, or whose key this master has not seen rewritten for
  ``silent_limit`` (TTL - margin) seconds, is ``unreachable``; after ``grace`` more
  seconds it is ``fenced``: its fencer killed its VMs by then (its local deadline is
  TTL - margin after the send time of its last renewal, whose heartbeat write this
  master saw later), and the grace covers the kill itself.  A node that renews before
  that is ``online`` again; its agent restarts whatever the fencer killed.
- The instances of a fenced node are recovered by jobs, highest ``ha_priority`` first:
  a ``drbd`` instance to its secondary only if that replica is ``UpToDate`` at the
  instance's generation; a shared-storage one to the live node with the most free
  memory.  Anything else stays down with the reason recorded and told once.
- A recovery that fails is retried up to ``max_relocate`` attempts, then refused.
- When the node holds a lease again it stays ``back`` (its agent starts nothing) until
  no recovery from it runs, then ``online``.  Nothing moves back by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from haven.master.allocator import InstLoad, Model, NodeCap, recovery_target
from haven.model import ha as H
from haven.model.ha import InstanceHA, NodeHA
from haven.model.instance import Instance, Observed
from haven.model.node import Node
from haven.model.replica import Replicas

ActionKind = Literal["node", "recover", "refuse", "outcome", "cancel", "fence"]


@dataclass(frozen=True)
class HAView:
    now: float
    master: str
    nodes: dict[str, Node]
    alive: frozenset[str]
    node_ha: dict[str, NodeHA]
    instances: dict[str, Instance]
    replicas: dict[str, Replicas]
    inst_ha: dict[str, InstanceHA]
    # Status of the jobs the HA records name ("success", "error", "running"...).
    jobs: dict[int, str]
    job_errors: dict[int, str]
    locks: dict[str, int]  # instance name -> job id holding its lock
    free_memory: dict[str, int]  # MiB, per node (facts)
    running: frozenset[str]  # instances observed running on their primary node
    grace: float = 1.0
    # Seconds since this master last saw each node's alive key rewritten (a heartbeat
    # at every lease renewal), and the key's mod revision then.  A node silent for
    # ``silent_limit`` counts as lost although etcd still holds its lease: a new etcd
    # leader renews every lease on taking office, which would delay the expiry by a
    # whole TTL when the dead node held the raft leadership.
    silent: dict[str, float] = field(default_factory=dict)
    alive_rev: dict[str, int] = field(default_factory=dict)
    silent_limit: float = float("inf")
    # Seconds since this master saw each node enter its current HA state, on its own
    # monotonic clock (None: the wall-clock ``NodeHA.since``, which a stepped clock or a
    # new master whose clock is behind would stretch or shrink).
    state_age: dict[str, float] | None = None
    # What the agents observe (by instance), and when each node's facts were taken
    # (wall clock): memory taken by VMs started since is not in ``free_memory`` yet.
    observed: dict[str, Observed] = field(default_factory=dict)
    facts_updated: dict[str, float] = field(default_factory=dict)
    # A node with a fence agent is suspected after this much silence (two missed
    # renewals) and turned off by its agent, instead of waiting for ``silent_limit``.
    suspect_limit: float = float("inf")
    # Instances with an interrupted migration: its cleanup job decides first which
    # copy lives (it counts a fenced node's copy as dead), then they are recovered.
    migrating: frozenset[str] = frozenset()
    # Nodes being added: never seen alive since ``gnt-node add`` (see ha_loop.observe).
    joining: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: str  # node name for "node", instance name otherwise
    reason: str
    state: str = ""
    node: str = ""  # "recover": where to; "node": -
    job: int = 0
    record: InstanceHA | None = None
    node_record: NodeHA | None = None
    priority: int = 0
    extra: dict[str, str] = field(default_factory=dict)


def plan(v: HAView) -> list[Action]:
    out: list[Action] = []
    states = {n: _node_state(v, n) for n in v.nodes}
    for name, node in sorted(v.nodes.items()):
        act = _plan_node(v, node, states)
        if act is not None:
            out.append(act)
            states[name] = act.node_record or states[name]
    out.extend(_plan_instances(v, states))
    return out


def _node_state(v: HAView, name: str) -> NodeHA:
    return v.node_ha.get(name) or NodeHA(name, H.ONLINE)


def _pending_from(v: HAView, node: str) -> list[str]:
    """Instances of ``node`` whose recovery job has not finished."""
    return sorted(r.name for r in v.inst_ha.values()
                  if r.node == node and r.state == "recovering"
                  and not _final(v.jobs.get(r.job, "")))


def _final(status: str) -> bool:
    return status in ("success", "error", "canceled", "gone")


def _plan_node(v: HAView, node: Node, states: dict[str, NodeHA]) -> Action | None:
    cur = states[node.name]
    alive = _alive(v, node.name)

    def to(state: str, reason: str, lost_at: float | None = None) -> Action:
        rec = NodeHA(node.name, state, v.now, cur.lost_at if lost_at is None else lost_at,
                     reason)
        return Action("node", node.name, reason, state=state, node_record=rec)

    if alive:
        if cur.state == H.UNREACHABLE:
            return to(H.ONLINE, "its lease was renewed before it was fenced", 0.0)
        if cur.state in (H.FENCED, H.RECOVERING):
            pending = _pending_from(v, node.name)
            if pending:
                return to(H.BACK, f"it is back; starts held until the recovery of "
                          f"{', '.join(pending)} ends")
            return to(H.ONLINE, "it is back", 0.0)
        if cur.state == H.BACK and not _pending_from(v, node.name):
            return to(H.ONLINE, "its recoveries ended", 0.0)
        if cur.state == H.MANUAL:
            return to(H.ONLINE, "it is back", 0.0)
        return None
    if node.offline:
        return None  # declared offline by the administrator: nothing is automatic
    if node.name in v.joining:
        # Its daemon has not taken a lease yet.  It runs nothing (no VM starts without
        # a lease), so there is nothing to fence, and calling it lost would only raise
        # a false alarm.
        return None
    if cur.state in (H.ONLINE, H.BACK):
        if node.name in v.alive:
            return to(H.UNREACHABLE, f"no lease renewal seen for "
                      f"{v.silent.get(node.name, 0.0):.1f} s", v.now)
        return to(H.UNREACHABLE, "its lease expired", v.now)
    if cur.state != H.UNREACHABLE:
        return None
    if node.fence_agent and cur.fence == "":
        rec = replace(cur, fence="running", fence_msg="")
        return Action("fence", node.name, f"turning it off with {node.fence_agent}",
                      state=H.UNREACHABLE, node_record=rec)
    if cur.fence == "confirmed":
        return to(H.FENCED, f"{cur.fence_msg} (its fence agent)")
    # The lease rule: silent past the fencer's deadline for the grace, and its key gone
    # for the grace (or still there).  A key gone early does not shorten the wait: an
    # etcd leader that resumes after a freeze may revoke a live lease (etcd issue
    # 15247), while the node's fencer still waits for the deadline of its last renewal;
    # the node renews under a new lease well before then.  A key gone in the usual way
    # (etcd expired it, TTL after the last renewal) is silent long enough by then.  A
    # node whose heartbeats this master never saw (it took over after the key went) has
    # an unknown silence: the key's absence alone decides, as it must after a master's
    # death, when the new master cannot know more.
    age = v.state_age.get(node.name, 0.0) if v.state_age is not None else v.now - cur.since
    silent = v.silent.get(node.name, 0.0 if node.name in v.alive else float("inf"))
    if (node.name not in v.alive and age >= v.grace and silent >= v.silent_limit + v.grace) \
            or (node.name in v.alive and silent >= v.silent_limit + v.grace):
        return to(H.FENCED, f"lost {v.now - cur.lost_at:.1f} s ago; its fencer has "
                  f"stopped its VMs")
    return None


def _plan_instances(v: HAView, states: dict[str, NodeHA]) -> list[Action]:
    out: list[Action] = []
    records = dict(v.inst_ha)
    # Outcomes first: a finished recovery job is recorded whatever happened since.
    for name, done in sorted(records.items()):
        status = v.jobs.get(done.job, "") if done.state == "recovering" else ""
        if not _final(status):
            continue
        if status == "success":
            new = _rec(done, "recovered", v.now, "")
            reason = f"recovered on {done.target} {v.now - done.lost_at:.1f} s after the loss"
        else:
            reason = v.job_errors.get(done.job) or f"its job {done.job} ended {status}"
            new = _rec(done, "failed", v.now, reason)
        records[name] = new
        out.append(Action("outcome", name, reason, state=new.state, record=new))
    planned_memory = _taken_since_facts(v)
    candidates = sorted((i for i in v.instances.values()
                         if i.primary_node in states
                         and states[i.primary_node].state in (H.FENCED, H.RECOVERING)),
                        key=lambda i: (-i.ha_priority, i.name))
    recovering_nodes: set[str] = set()
    for inst in candidates:
        node = inst.primary_node
        lost_at = states[node].lost_at
        rec = records.get(inst.name)
        if rec is not None and not (rec.node == node and rec.lost_at == lost_at):
            rec = None  # an earlier incident's
        if rec is not None and rec.state == "recovering":
            recovering_nodes.add(node)
            continue
        if rec is not None and rec.state == "recovered":
            continue
        if inst.name in v.migrating:
            recovering_nodes.add(node)
            continue
        if inst.admin_state != "up":
            continue  # nothing to recover: it was not meant to run
        attempts = rec.attempts if rec else 0
        refusal = _refusal(v, inst, states, attempts) or _stopped_inside(v, inst)
        target = "" if refusal else _target(v, inst, states, planned_memory)
        if not refusal and not target:
            refusal = _no_capacity(v, inst, states)
        if refusal:
            if rec is None or rec.state != "refused" or rec.reason != refusal:
                new = InstanceHA(inst.name, "refused", node, attempts=attempts,
                                 lost_at=lost_at, finished=v.now, reason=refusal)
                out.append(Action("refuse", inst.name, refusal, record=new))
            continue
        planned_memory[target] = planned_memory.get(target, 0) + inst.memory
        holder = v.locks.get(inst.name, 0)
        new = InstanceHA(inst.name, "recovering", node, target, 0, attempts + 1, lost_at,
                         v.now)
        out.append(Action("recover", inst.name, f"its node {node} was fenced",
                          node=target, job=holder, record=new, priority=inst.ha_priority))
        recovering_nodes.add(node)
    for node in sorted(recovering_nodes):
        if states[node].state == H.FENCED:
            rec_n = NodeHA(node, H.RECOVERING, v.now, states[node].lost_at,
                           "restarting its instances elsewhere")
            out.insert(0, Action("node", node, rec_n.reason, state=H.RECOVERING,
                                 node_record=rec_n))
    return out


def _stopped_inside(v: HAView, inst: Instance) -> str:
    """Not running when its node died, by its own doing: the agent would not have
    restarted it either (Ganeti's watcher leaves USER_down and given-up instances)."""
    obs = v.observed.get(inst.name)
    if obs is None or obs.node != inst.primary_node or obs.generation != inst.generation:
        return ""
    if obs.state == "user_down":
        return (f"its guest had powered itself off (USER_down) before {inst.primary_node} "
                f"was lost; start it with gnt-instance startup {inst.name}")
    if obs.state == "failed":
        return (f"it had failed its automatic restarts on {inst.primary_node}; start it "
                f"with gnt-instance startup {inst.name}")
    return ""


def _rec(rec: InstanceHA, state: str, now: float, reason: str) -> InstanceHA:
    return InstanceHA(rec.name, state, rec.node, rec.target, rec.job, rec.attempts,
                      rec.lost_at, rec.started, now, reason)


def _refusal(v: HAView, inst: Instance, states: dict[str, NodeHA], attempts: int) -> str:
    if not H.ha_enabled(inst):
        if inst.disk_template not in H.RECOVERABLE_TEMPLATES and inst.ha != "off":
            return (f"its {inst.disk_template} disks live on {inst.primary_node} only; it "
                    f"starts again when that node returns")
        return "HA is off for it (gnt-instance modify --ha on to change that)"
    if inst.disk_template not in H.RECOVERABLE_TEMPLATES:
        return (f"its {inst.disk_template} disks live on {inst.primary_node} only; it "
                f"starts again when that node returns")
    if attempts >= H.max_relocate(inst):
        return (f"{attempts} recovery attempt(s) failed (max_relocate "
                f"{H.max_relocate(inst)}); start it by hand once the cause is fixed")
    if inst.disk_template == "drbd":
        snode = inst.secondary_nodes[0] if inst.secondary_nodes else ""
        if not snode:
            return "it has no secondary node"
        reps = v.replicas.get(inst.name)
        if reps is None or not reps.node_up_to_date(snode, len(inst.disks),
                                                     inst.generation):
            what = ", ".join(reps.degraded(len(inst.disks))) if reps else "unknown"
            return (f"its replica on {snode} is not UpToDate ({what}); starting it there "
                    f"could lose acknowledged writes, so it waits for {inst.primary_node}")
        if not _usable(v, snode, states):
            return f"its secondary {snode} is {_why_unusable(v, snode, states)}"
    return ""


def _alive(v: HAView, node: str) -> bool:
    n = v.nodes.get(node)
    limit = v.suspect_limit if n is not None and n.fence_agent else v.silent_limit
    return node == v.master or (node in v.alive
                                and v.silent.get(node, 0.0) < min(limit, v.silent_limit))


def _usable(v: HAView, node: str, states: dict[str, NodeHA]) -> bool:
    n = v.nodes.get(node)
    return (n is not None and _alive(v, node) and not n.offline
            and n.vm_capable and states.get(node, NodeHA(node)).state == H.ONLINE)


def _why_unusable(v: HAView, node: str, states: dict[str, NodeHA]) -> str:
    n = v.nodes.get(node)
    if n is None:
        return "not in the cluster"
    if n.offline:
        return "offline"
    if not n.vm_capable:
        return "not vm_capable"
    if not _alive(v, node):
        return "down too"
    return states.get(node, NodeHA(node)).state


def _taken_since_facts(v: HAView) -> dict[str, int]:
    """Memory (MiB) per node of VMs its facts do not count yet: started after the facts
    were taken, or being started there by a recovery job."""
    taken: dict[str, int] = {}
    counted: set[str] = set()
    for name, obs in v.observed.items():
        inst = v.instances.get(name)
        if inst is not None and obs.state == "running" and \
                obs.since > v.facts_updated.get(obs.node, 0.0):
            taken[obs.node] = taken.get(obs.node, 0) + inst.memory
            counted.add(name)
    for rec in v.inst_ha.values():
        inst = v.instances.get(rec.name)
        if inst is not None and rec.state == "recovering" and rec.name not in counted \
                and not _final(v.jobs.get(rec.job, "")):
            taken[rec.target] = taken.get(rec.target, 0) + inst.memory
    return taken


def _target(v: HAView, inst: Instance, states: dict[str, NodeHA],
            planned: dict[str, int]) -> str:
    def room(node: str) -> int:
        return v.free_memory.get(node, 0) - planned.get(node, 0)

    if inst.disk_template == "drbd":
        snode = inst.secondary_nodes[0]
        return snode if room(snode) >= inst.memory else ""
    model = Model.of((NodeCap(n, 0, v.free_memory.get(n, 0), node.vm_capable, node.offline,
                              node.drained, _usable(v, n, states))
                      for n, node in v.nodes.items()),
                     (InstLoad(i.name, i.primary_node, i.memory, i.admin_state == "up",
                               i.disk_template) for i in v.instances.values()))
    return recovery_target(model, inst.name, inst.memory, inst.primary_node, planned)


def _no_capacity(v: HAView, inst: Instance, states: dict[str, NodeHA]) -> str:
    if inst.disk_template == "drbd":
        snode = inst.secondary_nodes[0]
        return (f"not enough memory on its secondary {snode} "
                f"({v.free_memory.get(snode, 0)} MiB free, {inst.memory} MiB needed)")
    return f"no live node has {inst.memory} MiB of memory free for it"


def summary(actions: list[Action]) -> str:
    if not actions:
        return "nothing to do"
    parts = []
    for a in actions:
        if a.kind == "node":
            parts.append(f"{a.target} {a.state} ({a.reason})")
        elif a.kind == "recover":
            parts.append(f"recover {a.target} on {a.node}")
        else:
            parts.append(f"{a.kind} {a.target}: {a.reason}")
    return "; ".join(parts)
