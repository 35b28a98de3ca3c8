"""The HA simulator's world: nodes, the network, the store views, and what runs on
every node (lease keeping, the fencer's rule, the agent and a fake hypervisor).

Time is virtual (integer milliseconds, :attr:`World.now_ms`); nothing sleeps or runs a
thread.  The store is one :class:`~haven.store.memory.MemoryStore` keyspace on the
virtual clock, with one view per node whose reachability follows the partition and the
quorum rules (:meth:`World.reachable`), and one always-reachable *truth* view the
simulator itself reads (for invariants and the log) without expiring leases.

Real code used as is: :class:`~haven.store.lease.LeaseKeeper` (without its thread) for
every node's lease, :func:`haven.agent.plan.plan` for every agent's decisions.  The
fencer follows ``haven.fence.fenced.Fencer``'s rule (fed a deadline; past it unfed,
every VM of the node dies, and so does any VM that appears until it is fed again); its
kills are simulated, so its ~10 lines of rule are restated here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from haven.agent import plan as agent_plan
from haven.errors import HavenError, OpPrereqError
from haven.hypervisor.base import VmInfo
from haven.master import quorum
from haven.model import ha as H
from haven.model.instance import Instance, Observed
from haven.model.keys import INSTANCES, LOCKS, MIGRATIONS, OBSERVED, Keys
from haven.model.node import Node, NodeFacts
from haven.model.replica import UP_TO_DATE, Replicas
from haven.sim.hasim_model import NodeSpec, Settings
from haven.store.base import Compare as _Compare
from haven.store.base import Delete, KeyValue, Op, Put, TxnResult
from haven.store.errors import StoreError
from haven.store.lease import LeaseKeeper
from haven.store.memory import MemoryStore, _State

UP, DEAD, FROZEN = "up", "dead", "frozen"


class SimStore(MemoryStore):
    """A store view that notes every key it writes (the simulator wakes loops from
    them, as the daemons' watches do); ``expire=False`` for the truth view."""

    def __init__(self, state: _State, dirty: list[str], expire: bool = True) -> None:
        super().__init__("", _state=state)
        self.dirty = dirty
        self.expire = expire

    def _rel(self, kv: KeyValue) -> KeyValue:
        return kv  # no prefix: the key is already relative (saves a copy per key read)

    def _enter(self) -> _State:
        if self.expire:
            return super()._enter()
        return self._state

    def txn(self, compares: Sequence[_Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        res = super().txn(compares, success, failure)
        branch = success if res.succeeded else failure
        self.dirty.extend(op.key for op in branch if isinstance(op, Put | Delete))
        return res


@dataclass
class SimVM:
    name: str
    pid: int
    started: float
    generation: int
    memory: int
    status: str = "running"  # "shutdown": the guest powered itself off


@dataclass
class SimFencer:
    """``Fencer``'s rule: ``deadline`` (None: disarmed), ``fired`` until fed again."""

    deadline: float | None = None
    fed: float = 0.0
    fired: bool = False

    def feed(self, deadline: float, now: float) -> None:
        if deadline <= now:
            return  # already past: feeding it changes nothing
        self.deadline, self.fed, self.fired = deadline, deadline, False

    def due(self, now: float) -> bool:
        """Whether it kills now: the deadline just passed, or it already fired."""
        if self.deadline is not None and not self.fired and now >= self.deadline:
            self.fired = True
        return self.fired


@dataclass
class SimNode:
    spec: NodeSpec
    store: SimStore
    state: str = UP
    lease: LeaseKeeper | None = None
    fencer: SimFencer = field(default_factory=SimFencer)
    vms: dict[str, SimVM] = field(default_factory=dict)
    alive_lease: int = 0
    wall: float = 0.0  # wall clock offset (a clock jump moves it)
    rpc_fail: bool = False
    published_free: int = -1
    election: Any = None  # haven.store.election.Election while the daemon runs

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.state == UP


class World:
    """Nodes, network and store; the node-side behaviours.  :class:`Simulation`
    (``hasim.py``) adds the master, the faults, the event loop and the invariants."""

    def __init__(self, nodes: Sequence[NodeSpec], settings: Settings) -> None:
        self.settings = settings
        self.now_ms = 0
        self.dirty: list[str] = []
        first = MemoryStore("", self.clock)
        self._state = first._state
        self.truth = SimStore(self._state, [], expire=False)
        self.nodes = {n.name: SimNode(n, SimStore(self._state, self.dirty), wall=n.clock)
                      for n in nodes}
        self.groups: list[frozenset[str]] = [frozenset(self.nodes)]
        candidates = [n.name for n in nodes if n.candidate]
        # Who votes in etcd (master/quorum.py): every candidate from three on, else
        # only the first master's member (the others are learners).
        self.voters = quorum.desired_voters(candidates[0] if candidates else "",
                                            frozenset(candidates))
        self.log_lines: list[tuple[float, str]] = []
        self.pids = 1000
        self.on_vm_start: Callable[[SimNode, Instance], None] = lambda _n, _i: None

    # -- time, log -------------------------------------------------------------------
    def clock(self) -> float:
        """etcd's and every node's monotonic clock (one rate for all)."""
        return self.now_ms / 1000.0

    def wall(self, node: str) -> float:
        return self.clock() + self.nodes[node].wall

    def log(self, line: str) -> None:
        self.log_lines.append((self.clock(), line))

    # -- network and quorum ----------------------------------------------------------
    def group_of(self, node: str) -> frozenset[str]:
        return next((g for g in self.groups if node in g), frozenset({node}))

    def quorate(self, group: frozenset[str]) -> bool:
        """Whether the etcd members in ``group`` are a majority of the voters."""
        live = [v for v in self.voters if v in group and self.nodes[v].running]
        return len(live) * 2 > len(self.voters)

    def any_quorum(self) -> bool:
        return any(self.quorate(g) for g in self.groups)

    def reachable(self, node: str) -> bool:
        n = self.nodes[node]
        return n.running and self.quorate(self.group_of(node))

    def linked(self, a: str, b: str) -> bool:
        """Whether node ``a``'s processes reach node ``b``'s (both run, same side)."""
        return self.nodes[a].running and self.nodes[b].running and \
            b in self.group_of(a)

    def update_reachability(self) -> None:
        for name, n in self.nodes.items():
            n.store.set_reachable(self.reachable(name))

    # -- the node daemon ---------------------------------------------------------------
    def boot(self, node: SimNode) -> None:
        """A fresh daemon (and fencer): a new lease, or retried every second."""
        node.state = UP
        node.fencer = SimFencer()
        node.lease = None
        node.alive_lease = 0
        node.election = None
        self.update_reachability()
        self.supervise(node)

    def kill(self, node: SimNode) -> None:
        node.state = DEAD
        node.vms.clear()
        node.lease = None
        node.election = None
        self.update_reachability()

    def _fed(self, node: SimNode) -> Callable[[float, int], None]:
        def feed(deadline: float, _lease: int) -> None:
            node.fencer.feed(deadline, self.clock())
            self.on_fed(node)

        return feed

    def on_fed(self, node: SimNode) -> None:
        """Called after every feed (the simulator schedules the fencer's check)."""

    def on_renew_failed(self, node: SimNode) -> None:
        """Called after a failed renewal (the keeper retries after 0.5 s)."""

    def _beat(self, node: SimNode) -> Callable[[int], None]:
        """``daemon.fencing.heartbeat``: the alive key is rewritten at every renewal."""
        def beat(lease_id: int) -> None:
            if node.alive_lease == lease_id:
                node.store.put(Keys.alive(node.name), _alive_value(node.name),
                               lease=lease_id)

        return beat

    def supervise(self, node: SimNode) -> None:
        """One second of the daemon: renew the lease (or get a new one), keep the
        alive key on it, publish the free memory."""
        if not node.running:
            return
        try:
            if node.lease is None:
                node.lease = LeaseKeeper(node.store, self.settings.ttl, self.settings.margin,
                                         self.clock, run_thread=False,
                                         on_renewed=self._fed(node), heartbeat=self._beat(node))
                if node.election is None:
                    from haven.store.election import Election

                    node.election = Election(node.store, Keys.master, lease=node.lease,
                                             value=json.dumps({"node": node.name}).encode())
            elif node.lease.valid() and not node.lease.renew_once():
                self.on_renew_failed(node)
            if not node.lease.valid() or node.lease.lease_id != node.alive_lease:
                node.lease.restart()
                node.store.put(Keys.alive(node.name), _alive_value(node.name),
                               lease=node.lease.lease_id)
                node.alive_lease = node.lease.lease_id
            free = node.spec.memory - sum(vm.memory for vm in node.vms.values())
            if free != node.published_free:
                node.store.put(Keys.facts(node.name), _facts(node.name, node.spec.memory,
                                                             free, self.clock()))
                node.published_free = free
        except StoreError:
            pass  # cannot reach etcd: the lease runs out, the fencer acts

    def fence_check(self, node: SimNode) -> None:
        if not node.running or not node.fencer.due(self.clock()):
            return
        if node.vms:
            killed = sorted(node.vms)
            node.vms.clear()
            self.log(f"{node.name} fencer killed {', '.join(killed)}")

    def start_blocked(self, node: SimNode) -> str:
        """``NodeDaemon.start_blocked``: a valid lease holding the alive key, a fed
        fencer, and not fenced/recovering/back for the HA manager."""
        if node.lease is None:
            return f"node {node.name} is not connected to the cluster"
        if not node.lease.valid():
            return f"node {node.name} holds no valid lease"
        if node.fencer.fed <= self.clock():
            return f"haven-fenced of node {node.name} is not running or not fed"
        try:
            kv = node.store.get(Keys.alive(node.name))
            if kv is None or kv.lease != node.lease.lease_id:
                return f"node {node.name}'s alive key is not held by its lease"
            kv = node.store.get(H.node_key(node.name))
        except StoreError as exc:
            return f"node {node.name} cannot read the store ({exc.message})"
        if kv is not None:
            rec = H.NodeHA.from_json(json.loads(kv.value))
            if rec.state in H.BLOCKED:
                return f"the HA manager has node {node.name} {rec.state}"
        return ""

    # -- the fake hypervisor and the node's instance manager ---------------------------
    def start_vm(self, node: SimNode, name: str, generation: int | None, restarts: int,
                 force: bool = False) -> int:
        """``NodeInstances.start``: primary here, same generation, a promotable replica,
        then the start gate; raises :class:`OpPrereqError` with the reason."""
        inst = _instance(node.store, name)
        if inst.primary_node != node.name:
            raise OpPrereqError(f"Instance {name} has primary node {inst.primary_node}")
        if generation is not None and inst.generation != generation:
            raise OpPrereqError(f"Instance {name} changed (generation {inst.generation})")
        if inst.disk_template == "drbd" and not force:
            kv = node.store.get(Keys.replicas(name))
            reps = Replicas.from_json(json.loads(kv.value)) if kv else None
            if reps is None or not reps.node_up_to_date(node.name, len(inst.disks),
                                                        inst.generation):
                raise OpPrereqError(f"The replica of {name} on {node.name} is not known "
                                    f"UpToDate at generation {inst.generation}")
        vm = node.vms.get(name)
        if vm is not None and vm.status == "running":
            self.publish(node, inst, "running", vm.pid, restarts)
            return vm.pid
        node.vms.pop(name, None)  # powered off from inside: cleared first
        used = sum(v.memory for v in node.vms.values())
        if used + inst.memory > node.spec.memory:
            raise OpPrereqError(f"Not enough memory on {node.name} for {name}")
        why = self.start_blocked(node)
        if why:
            raise OpPrereqError(f"Not starting {name} on {node.name}: {why}.")
        self.pids += 1
        node.vms[name] = SimVM(name, self.pids, self.clock(), inst.generation, inst.memory)
        self.log(f"{name} started on {node.name}")
        self.on_vm_start(node, inst)
        self.publish(node, inst, "running", self.pids, restarts)
        return self.pids

    def stop_vm(self, node: SimNode, name: str, why: str) -> None:
        if node.vms.pop(name, None) is not None:
            self.log(f"{name} stopped on {node.name} ({why})")
        kv = node.store.get(Keys.instance(name))
        if kv is not None:
            self.publish(node, Instance.from_json(json.loads(kv.value)), "stopped", 0, 0)

    def publish(self, node: SimNode, inst: Instance, state: str, pid: int, restarts: int,
                message: str = "") -> None:
        obs = Observed(inst.name, node.name, state, pid, inst.generation, restarts,
                       self.wall(node.name), self.wall(node.name), message)
        node.store.put(Keys.observed(inst.name), json.dumps(obs.to_json()).encode())

    # -- the agent ---------------------------------------------------------------------
    def agent_cycle(self, node: SimNode) -> None:
        """``Agent.cycle`` on this node: observe the store and the fake hypervisor,
        :func:`haven.agent.plan.plan`, execute."""
        if not node.running:
            return
        try:
            view = self._agent_view(node)
            for a in agent_plan.plan(view):
                if node.store.get(Keys.lock(f"instance/{a.name}")) is not None:
                    continue  # a job took it since we looked
                self._agent_execute(node, a, view)
        except StoreError:
            return

    def _agent_view(self, node: SimNode) -> agent_plan.AgentView:
        store = node.store
        kvs, _ = store.list(INSTANCES)
        instances = {i.name: i for i in (Instance.from_json(json.loads(kv.value))
                                         for kv in kvs)}
        kvs, _ = store.list(OBSERVED)
        observed = {o.name: o for o in (Observed.from_json(json.loads(kv.value))
                                        for kv in kvs)}
        kvs, _ = store.list(LOCKS + "instance/")
        locked = {kv.key[len(LOCKS + "instance/"):] for kv in kvs}
        kvs, _ = store.list(MIGRATIONS)
        locked |= {kv.key[len(MIGRATIONS):] for kv in kvs}
        kv = store.get(Keys.node(node.name))
        offline = bool(kv and Node.from_json(json.loads(kv.value)).offline)
        vms = {n: VmInfo(n, vm.pid, "shutdown" if vm.status == "shutdown" else "running",
                         started=vm.started, memory=vm.memory)
               for n, vm in node.vms.items()}
        return agent_plan.AgentView(node.name, offline, instances, observed,
                                    frozenset(locked), vms, self.start_blocked(node))

    def _agent_execute(self, node: SimNode, a: agent_plan.Action,
                       view: agent_plan.AgentView) -> None:
        inst = view.instances.get(a.name)
        if a.kind == "stop":
            self.stop_vm(node, a.name, a.reason)
        elif a.kind == "start" and inst is not None:
            try:
                self.start_vm(node, a.name, a.generation, a.restarts)
            except HavenError as exc:
                self.publish(node, inst, "stopped", 0, a.restarts, exc.message)
                self.log(f"{a.name} start failed on {node.name}: {exc.message}")
        elif a.kind == "give_up" and inst is not None:
            self.publish(node, inst, "failed", 0, a.restarts, "gave up")
            self.log(f"{a.name} gave up on {node.name} after {a.restarts} restarts")
        elif a.kind == "publish" and inst is not None:
            vm = node.vms.get(a.name)
            self.publish(node, inst, a.state, vm.pid if vm else 0, a.restarts)


def _instance(store: SimStore, name: str) -> Instance:
    kv = store.get(Keys.instance(name))
    if kv is None:
        raise OpPrereqError(f"Instance {name} does not exist")
    return Instance.from_json(json.loads(kv.value))


def _alive_value(name: str) -> bytes:
    return json.dumps({"node": name}).encode()


def _facts(name: str, total: int, free: int, now: float) -> bytes:
    f = NodeFacts(name, total, free, total - free, 4, 100_000, 100_000, ("kvm",), "tcg",
                  "sim", "x86_64", "sim", now)
    return json.dumps(f.to_json()).encode()


def up_to_date(reps: Replicas | None, node: str, disks: int, generation: int) -> bool:
    """The invariant's own reading of a replica state (not ``node_up_to_date``, so that a
    broken check in the code under test is caught)."""
    if reps is None or reps.generation != generation:
        return False
    states = reps.nodes.get(node, {})
    return all(i in states and states[i].state == UP_TO_DATE for i in range(disks))


__all__ = ["DEAD", "FROZEN", "UP", "SimNode", "SimStore", "SimVM", "World", "up_to_date"]
