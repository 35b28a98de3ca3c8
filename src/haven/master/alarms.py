"""The alarm rules: a pure function from one observation to the alarms that should be
active, and the raises and clears that get there.

:func:`conditions` evaluates the built-in definitions (see ``model/alarm.py``); each
true condition names the alarm it would raise and how long it must hold first.
:func:`plan` compares them with the stored active alarms:

- a condition that has held for its ``hold`` seconds (on the loop's monotonic clock,
  counted from the first cycle that saw it) and has no active alarm is **raised**;
- an active alarm whose condition no longer holds is **cleared** at once;
- an active alarm whose condition still holds keeps its raise time and its
  acknowledgement; a change of message or severity is an **update**;
- an active alarm of a kind this cycle could not evaluate (``unknown``: the etcd
  members did not answer the probe, the job watch has not listed yet) is left as it is.

Level-triggered: a new master reads the stored alarms and carries on; nothing here
reads a clock or the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from haven.master.ha_loop import JOIN_GRACE
from haven.master.quorum import MemberView
from haven.model import alarm as A
from haven.model import ha as H
from haven.model.alarm import Alarm, AlarmSettings
from haven.model.instance import Instance, Observed, ganeti_status
from haven.model.node import Node, NodeFacts
from haven.model.replica import DISKLESS, INCONSISTENT, OUTDATED, UNKNOWN, Replicas

#: Node HA states in which a node counts as lost (see model/ha.py).
LOST_STATES = frozenset({H.UNREACHABLE, H.FENCED, H.RECOVERING, H.MANUAL})
#: Below this many voters a member's loss is the two-node design, not a risk to report.
QUORUM_RISK_FROM = 3
#: Seconds an etcd member may stay added but not started before its alarm.
UNSTARTED_HOLD = 30.0


@dataclass(frozen=True)
class FailedJob:
    id: int
    ended: float  # wall clock
    summary: str
    error: str


@dataclass(frozen=True)
class AlarmView:
    """One observation.  ``now`` is the wall clock (alarm times), ``mono`` the loop's
    monotonic clock (holding times); ``pending`` maps each condition seen true by an
    earlier cycle, and not raised yet, to the ``mono`` it was first seen at."""

    now: float
    mono: float
    settings: AlarmSettings
    master: str
    nodes: dict[str, Node]
    alive: frozenset[str]
    node_ha: dict[str, H.NodeHA] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    observed: dict[str, Observed] = field(default_factory=dict)
    replicas: dict[str, Replicas] = field(default_factory=dict)
    migrating: frozenset[str] = frozenset()
    facts: dict[str, NodeFacts] = field(default_factory=dict)
    failed_jobs: tuple[FailedJob, ...] | None = None  # None: not known this cycle
    members: tuple[MemberView, ...] | None = None  # None: not known (or not managed)
    active: dict[str, Alarm] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Condition:
    """A definition that holds now: the alarm it raises after ``hold`` seconds."""

    kind: str
    name: str  # the object's name: node, instance, job id, "cluster"
    object: str  # "node/node02", "instance/vm1", "job/12", "cluster"
    severity: str
    message: str
    hold: float

    @property
    def id(self) -> str:
        return A.alarm_id(self.kind, self.name)


@dataclass(frozen=True)
class AlarmPlan:
    raise_: tuple[Alarm, ...] = ()
    clear: tuple[Alarm, ...] = ()  # as they were, with ``cleared`` set
    update: tuple[Alarm, ...] = ()  # new message or severity, same raise
    pending: dict[str, float] = field(default_factory=dict)  # the next cycle's

    def summary(self) -> str:
        parts = []
        if self.raise_:
            parts.append("raised " + ", ".join(a.id for a in self.raise_))
        if self.clear:
            parts.append("cleared " + ", ".join(a.id for a in self.clear))
        if self.update:
            parts.append("updated " + ", ".join(a.id for a in self.update))
        if not parts:
            return "nothing to do"
        return "; ".join(parts)


def plan(v: AlarmView) -> AlarmPlan:
    """Raises, clears and updates that make the active alarms match the conditions."""
    conds, unknown = conditions(v)
    raises: list[Alarm] = []
    updates: list[Alarm] = []
    pending: dict[str, float] = {}
    for cid, c in sorted(conds.items()):
        cur = v.active.get(cid)
        if cur is not None:
            if (cur.message, cur.severity) != (c.message, c.severity):
                updates.append(replace(cur, message=c.message, severity=c.severity,
                                       updated=v.now))
            continue
        first = v.pending.get(cid, v.mono)
        if v.mono - first >= c.hold:
            raises.append(Alarm(cid, c.kind, c.object, c.severity, c.message, v.now,
                                updated=v.now, node=v.master))
        else:
            pending[cid] = first
    clears = tuple(replace(a, cleared=v.now) for aid, a in sorted(v.active.items())
                   if aid not in conds and a.kind not in unknown)
    return AlarmPlan(tuple(raises), clears, tuple(updates), pending)


def conditions(v: AlarmView) -> tuple[dict[str, Condition], frozenset[str]]:
    """Every condition that holds, by alarm id, and the kinds not evaluated."""
    out: list[Condition] = []
    unknown: set[str] = set()
    out += _nodes(v)
    out += _instances(v)
    out += _replicas(v)
    out += _n_plus_one(v)
    out += _resources(v)
    if v.members is None:
        unknown |= {A.ETCD_MEMBER_DOWN, A.QUORUM_AT_RISK}
    else:
        out += _etcd(v, v.members)
    if v.failed_jobs is None:
        unknown.add(A.JOB_FAILED)
    else:
        out += _jobs(v, v.failed_jobs)
    return {c.id: c for c in out}, frozenset(unknown)


def _live(v: AlarmView, name: str) -> bool:
    """Holds its lease and is not being handled as lost by the HA manager."""
    rec = v.node_ha.get(name)
    return name in v.alive and (rec is None or rec.state not in LOST_STATES)


# -- the definitions -------------------------------------------------------------------
def _nodes(v: AlarmView) -> list[Condition]:
    out = []
    for name, node in sorted(v.nodes.items()):
        if node.offline:
            continue  # declared offline by the administrator: expected to be away
        rec = v.node_ha.get(name)
        if rec is not None and rec.state in LOST_STATES:
            why = f" ({rec.reason})" if rec.reason else ""
            msg = f"Node {name} is {rec.state}{why}."
        elif name not in v.alive and not _joining(v, node):
            msg = f"Node {name} holds no lease: its daemon is down or cannot reach etcd."
        else:
            continue
        out.append(Condition(A.NODE_UNREACHABLE, name, f"node/{name}", A.CRITICAL, msg,
                             v.settings.debounce_seconds))
    return out


def _joining(v: AlarmView, node: Node) -> bool:
    """Being added: no HA record, no lease and no facts since ``gnt-node add``, for
    less than ``JOIN_GRACE`` (the HA manager's rule, ``ha_loop._joining``)."""
    f = v.facts.get(node.name)
    return (node.name not in v.node_ha and 0 <= v.now - node.ctime < JOIN_GRACE
            and (f is None or f.updated < node.ctime))


def _instances(v: AlarmView) -> list[Condition]:
    out = []
    offline = {n for n, node in v.nodes.items() if node.offline}
    hold = max(v.settings.instance_down_seconds, v.settings.debounce_seconds)
    for name, inst in sorted(v.instances.items()):
        if name in v.migrating:
            continue  # a migration moves it between nodes: its job reports the outcome
        obs = v.observed.get(name)
        elsewhere = obs.node if obs is not None and obs.state == "running" and \
            obs.node != inst.primary_node else None
        status = ganeti_status(inst, obs, _live(v, inst.primary_node),
                               inst.primary_node in offline, elsewhere)
        if status.startswith("ERROR_"):
            severity = A.WARNING if status == "ERROR_up" else A.CRITICAL
            detail = _status_text(status, inst, obs, elsewhere)
        elif status == "USER_down":
            severity, detail = A.WARNING, "its guest shut itself down"
        else:
            continue
        out.append(Condition(A.INSTANCE_DOWN, name, f"instance/{name}", severity,
                             f"Instance {name} is {status}: {detail}.", hold))
    return out


def _status_text(status: str, inst: Instance, obs: Observed | None,
                 elsewhere: str | None) -> str:
    if status == "ERROR_nodedown":
        return f"its node {inst.primary_node} is down"
    if status == "ERROR_nodeoffline":
        return f"its node {inst.primary_node} is offline"
    if status == "ERROR_wrongnode":
        return f"it runs on {elsewhere}, not on its primary node {inst.primary_node}"
    if status == "ERROR_up":
        return "it runs although it is marked down"
    if obs is not None and obs.state == "failed":
        return f"its node gave up restarting it ({obs.message or 'too many restarts'})"
    return f"it should run on {inst.primary_node} but does not" + \
        (f" ({obs.message})" if obs is not None and obs.message else "")


def _replicas(v: AlarmView) -> list[Condition]:
    out = []
    hold = max(v.settings.replica_degraded_seconds, v.settings.debounce_seconds)
    for name, inst in sorted(v.instances.items()):
        reps = v.replicas.get(name)
        if inst.disk_template != "drbd" or inst.admin_state != "up" or reps is None \
                or name in v.migrating:
            continue
        bad: list[str] = []
        severe = False
        if reps.generation != inst.generation:
            bad.append(f"the replica states are from generation {reps.generation}, the "
                       f"instance is at {inst.generation}")
            severe = True
        else:
            for node in (inst.primary_node, *inst.secondary_nodes):
                for disk in inst.disks:
                    r = reps.state(node, disk.index)
                    if r.state == INCONSISTENT:
                        bad.append(f"disk/{disk.index} on {node}: resyncing, "
                                   f"{r.percent:.0f}%")
                    elif r.state != "UpToDate":
                        bad.append(f"disk/{disk.index} on {node}: {r.state}")
                        severe = severe or r.state in (OUTDATED, DISKLESS, UNKNOWN)
        if bad:
            out.append(Condition(A.REPLICA_DEGRADED, name, f"instance/{name}",
                                 A.CRITICAL if severe else A.WARNING,
                                 f"Instance {name} is not fully replicated: "
                                 f"{'; '.join(bad)}.", hold))
    return out


def _n_plus_one(v: AlarmView) -> list[Condition]:
    """For each live node: could the others restart its instances after its loss?

    A ``drbd`` instance restarts on its secondary only; one on shared storage on the
    live node with the most free memory left (as the HA manager picks).  Instances on
    node-local storage cannot move and do not count.
    """
    targets = {n: v.facts[n].memory_free for n, node in v.nodes.items()
               if node.vm_capable and not node.offline and _live(v, n) and n in v.facts}
    out = []
    for lost in sorted(targets):
        free = {n: mib for n, mib in targets.items() if n != lost}
        insts = [i for i in v.instances.values() if i.primary_node == lost
                 and i.admin_state == "up" and i.disk_template in H.RECOVERABLE_TEMPLATES]
        misses: list[str] = []
        for inst in sorted((i for i in insts if i.disk_template == "drbd"),
                           key=lambda i: i.name):
            sec = inst.secondary_nodes[0] if inst.secondary_nodes else ""
            if sec not in free:
                misses.append(f"{inst.name}'s secondary {sec or '(none)'} is not available")
            elif free[sec] < inst.memory:
                misses.append(f"{inst.name} ({inst.memory} MiB) does not fit on {sec} "
                              f"({free[sec]} MiB free)")
            else:
                free[sec] -= inst.memory
        for inst in sorted((i for i in insts if i.disk_template != "drbd"),
                           key=lambda i: (-i.memory, i.name)):
            best = max(sorted(free), key=lambda n: free[n], default="")
            if not best or free[best] < inst.memory:
                misses.append(f"{inst.name} ({inst.memory} MiB) fits on no other node")
            else:
                free[best] -= inst.memory
        if misses:
            out.append(Condition(A.N1_LOST, lost, f"node/{lost}", A.WARNING,
                                 f"The loss of node {lost} could not be absorbed: "
                                 f"{'; '.join(misses)}.", v.settings.debounce_seconds))
    return out


def _resources(v: AlarmView) -> list[Condition]:
    out = []
    s = v.settings
    for name in sorted(v.nodes):
        f = v.facts.get(name)
        if f is None or not _live(v, name):
            continue  # a lost node's facts are stale
        for kind, what, total, free, limit in (
                (A.NODE_MEMORY, "memory", f.memory_total, f.memory_free, s.memory_percent),
                (A.NODE_DISK, "instance storage", f.storage_size, f.storage_free,
                 s.disk_percent)):
            if total <= 0:
                continue
            used = 100.0 * (total - free) / total
            if used > limit:
                out.append(Condition(kind, name, f"node/{name}", A.WARNING,
                                     f"Node {name} uses {used:.0f}% of its {what} "
                                     f"({free} MiB free of {total} MiB; the threshold is "
                                     f"{limit:g}%).", s.debounce_seconds))
    return out


def _etcd(v: AlarmView, members: tuple[MemberView, ...]) -> list[Condition]:
    out = []
    hold = v.settings.debounce_seconds
    for m in sorted(members, key=lambda m: m.node):
        if m.healthy:
            continue
        role = "voter" if m.voter else "learner"
        why = "has not started" if not m.started else "does not answer"
        out.append(Condition(A.ETCD_MEMBER_DOWN, m.node, f"node/{m.node}",
                             A.CRITICAL if m.voter else A.WARNING,
                             f"The etcd member of {m.node} ({role}) {why}.",
                             # A member just added starts within seconds (a join, a
                             # master-failover's re-added learner): only one that
                             # stays unstarted is news.
                             hold if m.started else max(hold, UNSTARTED_HOLD)))
    voters = [m for m in members if m.voter]
    up = sum(1 for m in voters if m.healthy)
    majority = len(voters) // 2 + 1
    if len(voters) >= QUORUM_RISK_FROM and up - 1 < majority:
        down = ", ".join(sorted(m.node for m in voters if not m.healthy))
        state = "lost" if up < majority else "at risk: one more loss loses it"
        out.append(Condition(A.QUORUM_AT_RISK, "cluster", "cluster", A.CRITICAL,
                             f"etcd quorum is {state} ({up} of {len(voters)} voters "
                             f"answer; down: {down}).", hold))
    return out


def _jobs(v: AlarmView, failed: tuple[FailedJob, ...]) -> list[Condition]:
    out = []
    for job in failed:
        if v.now - job.ended > v.settings.job_failed_seconds:
            continue
        out.append(Condition(A.JOB_FAILED, str(job.id), f"job/{job.id}", A.WARNING,
                             f"Job {job.id} ({job.summary}) failed: {job.error}", 0.0))
    return out
