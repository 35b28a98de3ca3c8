"""The HA manager's loop on the master: observe -> :func:`haven.master.ha.plan` ->
execute, one summary line per change.

Woken at once when an ``alive/`` key goes or comes, and every ``PERIOD`` anyway (the
grace period is timed by the cycles).  Every write is guarded by the master's token: a
deposed master's HA manager changes nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from haven.errors import HavenError
from haven.master import jobqueue, state
from haven.master.ha import Action, HAView, plan, summary
from haven.master.lu import MasterContext
from haven.master.periodic import CycleLoop
from haven.model import event
from haven.model import ha as H
from haven.model.ha import InstanceHA, NodeHA
from haven.model.keys import ALIVE, LOCKS, MIGRATIONS, REPLICAS, Keys
from haven.model.node import Node, NodeFacts
from haven.model.replica import Replicas
from haven.store.base import Compare, Guard, Put, WatchEvent
from haven.store.errors import FencedOut, StoreError

JOIN_GRACE = 60.0  # seconds a node that has never reported counts as joining

log = logging.getLogger(__name__)

# Seconds between cycles when nothing wakes the loop: a node's silence is timed by
# them (a cycle is ~8 reads of the store).
PERIOD = 0.25
# Seconds after a node counts as lost (its fencer's deadline passed by then: see
# master/ha.py) before it counts as fenced: the fencer's SIGKILL and clock-rate slack.
GRACE = 0.5
# Recoveries outrank user jobs: Ganeti's highest priority.
RECOVERY_PRIORITY = -20


def observe(ctx: MasterContext, grace: float = GRACE,
            beats: dict[str, tuple[int, float]] | None = None,
            monotonic: Callable[[], float] = time.monotonic,
            ages: dict[str, tuple[str, float]] | None = None) -> HAView:
    """One snapshot of everything the plan needs (the store only).  ``beats`` (node ->
    alive key's mod revision, when this master first saw it) and ``ages`` (node -> HA
    state, when this master first saw it in that state) are updated in place: the
    caller keeps them from cycle to cycle to time silences and the grace period on its
    own monotonic clock."""
    store = ctx.store
    nodes = {n.name: n for n in state.nodes(store)}
    kvs, _ = store.list(ALIVE)
    alive_rev = {kv.key[len(ALIVE):]: kv.mod_revision for kv in kvs}
    alive = frozenset(alive_rev)
    beats = {} if beats is None else beats
    now_m = monotonic()
    cluster = state.cluster(store)
    for kv in kvs:
        name, rev = kv.key[len(ALIVE):], kv.mod_revision
        if name not in beats and kv.lease:
            # First sight (a new master): the lease's time left says when it was last
            # renewed, 1 s earlier for etcd's rounding down, so that silence is never
            # underestimated.
            try:
                left = store.lease_ttl(kv.lease)
            except HavenError:
                left = float(cluster.lease_ttl)
            beats[name] = (rev, now_m - max(cluster.lease_ttl - left - 1.0, 0.0))
        elif beats.get(name, (0, 0.0))[0] != rev:
            beats[name] = (rev, now_m)
    # A node's last heartbeat is remembered after its key is gone: the lease rule in
    # master/ha.py needs it (an etcd leader that resumes after a freeze may revoke a
    # live lease early, etcd issue 15247).  A node whose key this master never saw has
    # no entry: its silence is unknown.
    for name in set(beats) - set(alive_rev) - set(nodes):
        del beats[name]
    silent = {name: now_m - seen for name, (_rev, seen) in beats.items()}
    kvs, _ = store.list(H.HA_NODES)
    node_ha = {r.node: r for r in (NodeHA.from_json(json.loads(kv.value)) for kv in kvs)}
    instances = state.instances(store)
    kvs, _ = store.list(REPLICAS)
    replicas = {r.instance: r for r in (Replicas.from_json(json.loads(kv.value))
                                        for kv in kvs)}
    kvs, _ = store.list(H.HA_INSTANCES)
    inst_ha = {r.name: r for r in (InstanceHA.from_json(json.loads(kv.value)) for kv in kvs)}
    jobs: dict[int, str] = {}
    errors: dict[int, str] = {}
    for rec in inst_ha.values():
        if rec.job and rec.state == "recovering":
            try:
                job, _rev = jobqueue.read(store, rec.job)
            except HavenError:
                jobs[rec.job] = "gone"
                continue
            jobs[rec.job] = str(job.status)
            if str(job.status) == "error":
                errors[rec.job] = _job_error(job.opresult)
    kvs, _ = store.list(LOCKS + "instance/")
    locks = {kv.key[len(LOCKS + "instance/"):]: int(kv.value) for kv in kvs}
    facts = state.facts(store)
    free = {name: f.memory_free for name, f in facts.items()}
    observed = state.all_observed(store)
    running = frozenset(o.name for o in observed.values()
                        if o.state == "running" and o.name in instances
                        and instances[o.name].primary_node == o.node)
    kvs, _ = store.list(MIGRATIONS)
    migrating = frozenset(kv.key[len(MIGRATIONS):] for kv in kvs)
    state_age = None
    if ages is not None:
        state_age = {}
        for name in nodes:
            current = node_ha[name].state if name in node_ha else H.ONLINE
            if ages.get(name, ("", 0.0))[0] != current:
                ages[name] = (current, now_m)
            state_age[name] = now_m - ages[name][1]
    return HAView(ctx.clock(), ctx.master_node, nodes, alive, node_ha, instances, replicas,
                  inst_ha, jobs, errors, locks, free, running, grace, silent, alive_rev,
                  max(cluster.lease_ttl - H.LEASE_MARGIN, 1.0), state_age, observed,
                  {name: f.updated for name, f in facts.items()},
                  # Two missed renewals (every TTL/5) and some slack.
                  2 * cluster.lease_ttl / 5 + 0.5, migrating,
                  _joining(nodes, node_ha, alive, facts, ctx.clock()))


def _joining(nodes: dict[str, Node], node_ha: dict[str, NodeHA], alive: frozenset[str],
             facts: dict[str, NodeFacts], now: float) -> frozenset[str]:
    """Nodes added less than JOIN_GRACE ago that have never reported: no HA record, no
    lease, no facts since they were added (a join takes 1 to 7 s here, etcd admitting
    one new member at a time)."""
    return frozenset(
        name for name, n in nodes.items()
        if name not in node_ha and name not in alive and 0 <= now - n.ctime < JOIN_GRACE
        and (name not in facts or facts[name].updated < n.ctime))


def _job_error(opresult: tuple[Any, ...]) -> str:
    for res in opresult:
        if isinstance(res, list) and len(res) == 2 and isinstance(res[1], list) and res[1]:
            return str(res[1][0])
    return "its job failed"


class HaManager(CycleLoop):
    def __init__(self, ctx: MasterContext, grace: float = GRACE) -> None:
        self.ctx = ctx
        self.grace = grace
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watcher: Any = None
        self._beats: dict[str, tuple[int, float]] = {}
        self._ages: dict[str, tuple[str, float]] = {}
        self._fencing: set[str] = set()  # nodes whose fence agent runs now
        self.last_summary = ""

    def start(self) -> None:
        from haven.store.watcher import Watcher

        # Woken when a lease key goes; heartbeats (its rewrites) are read every cycle.
        self._watcher = Watcher(self.ctx.store, ALIVE, self._on_alive,
                                lambda _kvs, _rev: self.wake.set())
        self._watcher.start()
        self._thread = threading.Thread(target=self._loop, name="ha-manager", daemon=True)
        self._thread.start()

    def _on_alive(self, ev: WatchEvent) -> None:
        if ev.type != "PUT" or ev.kv.version == 1:
            self.wake.set()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._watcher is not None:
            self._watcher.stop()

    def _loop(self) -> None:
        self.run_cycles(self.cycle, PERIOD, "ha", log)

    def cycle(self) -> str:
        if self.ctx.guard() is None:
            return "not master"
        view = observe(self.ctx, self.grace, self._beats, ages=self._ages)
        actions = plan(view)
        for i, a in enumerate(actions):
            if not self.execute(a, view):
                # The world changed under the plan: what follows rests on it.
                return summary(actions[:i]) + f"; stopped before {a.target} ({a.state})"
        return summary(actions)

    # -- actions -----------------------------------------------------------------------
    def _guard(self) -> Guard:
        guard = self.ctx.guard()
        if guard is None:
            raise FencedOut("This node is no longer master.")
        return guard

    def execute(self, a: Action, view: HAView) -> bool:
        """Carry out ``a``; False if it no longer applies (the rest of the plan then
        waits for the next cycle)."""
        store = self.ctx.store
        if a.kind == "node":
            assert a.node_record is not None
            value = state.dumps(a.node_record.to_json())
            if a.state in (H.UNREACHABLE, H.FENCED):
                # Only while its lease key is as seen (gone, or not rewritten): a node
                # that renewed meanwhile may be starting VMs, and must not be recovered.
                guard = self._guard()
                res = store.txn([Compare(Keys.alive(a.target), "mod", "=",
                                         view.alive_rev.get(a.target, 0)),
                                 Compare(guard.key, "create", "=", guard.create_revision)],
                                [Put(H.node_key(a.target), value)])
                if not res.succeeded:
                    log.info("ha: %s is back (or this node is no longer master): not "
                             "marking it %s", a.target, a.state)
                    self.wake.set()
                    return False
            else:
                store.put(H.node_key(a.target), value, guard=self._guard())
            level = "warning" if a.state in (H.UNREACHABLE, H.FENCED) else "info"
            self._event(f"node-{a.state}", f"node/{a.target}",
                        f"Node {a.target}: {a.state} ({a.reason})", level)
        elif a.kind == "fence":
            assert a.node_record is not None
            node = view.nodes[a.target]
            if a.target in self._fencing:
                return True
            store.put(H.node_key(a.target), state.dumps(a.node_record.to_json()),
                      guard=self._guard())
            self._event("fencing", f"node/{a.target}", f"Node {a.target}: unreachable; "
                        f"turning it off with its fence agent {node.fence_agent}", "warning")
            self._fencing.add(a.target)
            threading.Thread(target=self._run_agent, args=(node,), daemon=True,
                             name=f"fence-{a.target}").start()
        elif a.kind == "recover":
            assert a.record is not None
            inst = view.instances[a.target]
            if a.job:
                self._bypass(a.job, a.target, inst.primary_node)
            op: dict[str, Any] = {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": a.target,
                                  "ha_recovery": True, "from_node": inst.primary_node,
                                  "priority": RECOVERY_PRIORITY}
            if inst.disk_template != "drbd":
                op["target_node"] = a.node
            job_id = jobqueue.submit(store, [op], self.ctx.clock())
            started = InstanceHA(**{**a.record.to_json(), "job": job_id})
            store.put(H.instance_key(a.target), state.dumps(started.to_json()),
                      guard=self._guard())
            self._event("recovering", f"instance/{a.target}",
                        f"Instance {a.target}: restarting on {a.node} ({a.reason}; "
                        f"attempt {started.attempts}, job {job_id})", "warning")
        elif a.kind in ("refuse", "outcome"):
            assert a.record is not None
            store.put(H.instance_key(a.target), state.dumps(a.record.to_json()),
                      guard=self._guard())
            if a.kind == "refuse":
                self._event("recovery-refused", f"instance/{a.target}",
                            f"Instance {a.target} stays down: {a.reason}", "error")
            elif a.state == "recovered":
                self._event("recovered", f"instance/{a.target}",
                            f"Instance {a.target}: {a.reason}")
            else:
                self._event("recovery-failed", f"instance/{a.target}",
                            f"Instance {a.target}: recovery failed: {a.reason}", "error")
        return True

    def _run_agent(self, node: Node) -> None:
        """Run ``node``'s fence agent (up to its timeout) and record the outcome on its
        HA record, if it is still the unreachable one the agent was started for."""
        from haven.fence import agents

        try:
            ok, msg = agents.fence(node.name, node.fence_agent, node.fence_params,
                                   agents.local_base(self.ctx.extras.get("daemon")))
        except Exception as exc:  # an agent's bug must not end the HA manager
            log.exception("fence agent of %s", node.name)
            ok, msg = False, f"{type(exc).__name__}: {exc}"
        try:
            kv = self.ctx.store.get(H.node_key(node.name))
            rec = NodeHA.from_json(json.loads(kv.value)) if kv else None
            if rec is not None and rec.state == H.UNREACHABLE and rec.fence == "running":
                new = replace(rec, fence="confirmed" if ok else "failed", fence_msg=msg)
                self.ctx.store.cas(H.node_key(node.name), state.dumps(new.to_json()),
                                   kv.mod_revision if kv else 0, guard=self._guard())
            if ok:
                self._event("fenced-by-agent", f"node/{node.name}",
                            f"Node {node.name}: {msg}", "warning")
            else:
                self._event("fence-failed", f"node/{node.name}",
                            f"Node {node.name}: its fence agent failed ({msg}); waiting "
                            f"for the lease rule instead", "error")
        except (HavenError, StoreError) as exc:
            log.warning("ha: recording the fence of %s: %s", node.name, exc)
        finally:
            self._fencing.discard(node.name)
            self.wake.set()

    def _bypass(self, job_id: int, name: str, node: str) -> None:
        """A user job holds the lock of an instance to recover (stuck on the dead node,
        most likely): ask it to stop; the recovery job takes the lock over."""
        try:
            jobqueue.cancel(self.ctx.store, job_id, self.ctx.clock())
        except HavenError as exc:
            log.info("ha: job %d holding %s: %s", job_id, name, exc.message)
        self._event("job-bypassed", f"instance/{name}",
                    f"Job {job_id} held instance {name} when its node {node} was fenced: "
                    f"canceled, the recovery takes its lock", "warning")

    def _event(self, kind: str, obj: str, message: str, level: str = "info") -> None:
        ev = event.new(kind, obj, self.ctx.master_node, message, level)
        self.ctx.store.put(ev.key(), ev.encode())
