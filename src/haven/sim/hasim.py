"""A deterministic, virtual-time HA simulator (issue 11; Proxmox's ``pve-ha-simulator``).

The master's HA manager, every node's lease keeping, fencer rule and agent, master
election and a simple replication model run together on the in-memory store, with a
fake clock and a fake hypervisor; a scenario (:mod:`haven.sim.hasim_model`) injects
faults at virtual seconds.  ``Simulation(scenario).run()`` returns the event log, the
final placement and every invariant violation seen:

- never two running copies of one instance at any virtual instant (a frozen node's VMs
  do not run; they count again if they are resumed unkilled);
- never a VM started on a node that is not the instance's primary, or (``drbd``) from
  a replica not ``UpToDate`` at the instance's generation, as the store says, nor from
  one that misses acknowledged writes, as the simulator's own bookkeeping says
  (:attr:`Simulation.current`: a replica misses writes from the moment it is marked
  ``Outdated`` while the guest runs elsewhere, or a new copy starts mirroring to it
  while it is not ``UpToDate``, until a resync).

Events run in time order (integer milliseconds, ties in scheduling order); the
invariants are checked after every event.  Loops run on their periods (lease renewal
and supervision 1 s, HA 0.5 s, agent 2 s, role 1 s, fencer rescan 0.1 s) and are woken
by the store changes their daemons watch (``wake_latency`` later).

Replication model (``drbd``): a running primary whose secondary it cannot reach marks
it ``Outdated`` after ``outdate_delay`` if the primary reaches the store (quorum);
until then the guest's I/O waits (DRBD's resource-and-stonith).  A reachable secondary
that is not ``UpToDate`` is resynced after ``resync_time``.

Simplifications: RPC timeouts are immediate; etcd does not extend leases on a leader
change; ``no_voting`` assumes the old master is dead (two diverged etcd copies are not
modelled).
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

from haven.model.cluster import Cluster
from haven.model.instance import Disk, Instance
from haven.model.keys import ALIVE, INSTANCES, MASTER, Keys
from haven.model.node import Node
from haven.model.replica import OUTDATED, UP_TO_DATE, DiskReplica, Replicas
from haven.sim import hasim_faults
from haven.sim.hasim_master import Master
from haven.sim.hasim_model import Fault, Result, Scenario, load
from haven.sim.hasim_world import UP, SimNode, World, up_to_date
from haven.store.errors import StoreError

MAX_EVENTS_PER_INSTANT = 5000


class Simulation(World):
    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario.nodes, scenario.settings)
        self.scenario = scenario
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self._woken: dict[str, int] = {}
        self.violations: list[str] = []
        self._seen: set[str] = set()
        self.master = Master(self)
        self.by_ip = {f"10.0.0.{i + 1}": n for i, n in enumerate(self.nodes.values())}
        self.broken: set[tuple[str, str]] = set()
        self.fence_fail: set[str] = set()
        # instance -> (action, node) to inject halfway through its next recovery job
        self.during: dict[str, tuple[str, str]] = {}
        self._repl: dict[str, list[float | None]] = {}
        self._alive: frozenset[str] = frozenset()
        self._master_rev = 0
        self._last_rev = 0
        self._seeding = True
        self._instances: tuple[int, list[Instance]] = (-1, [])
        # Which replicas hold every write the guest was told is done (the simulator's
        # own truth, whatever the store says): (instance, node) -> current.
        self.current: dict[tuple[str, str], bool] = {}
        self.on_vm_start = self._check_start

    # -- scheduling ----------------------------------------------------------------------
    def at_ms(self, t_ms: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t_ms, self._seq, fn))

    def after(self, seconds: float, fn: Callable[[], None]) -> None:
        self.at_ms(self.now_ms + round(seconds * 1000), fn)

    def every(self, period: float, phase_ms: int, fn: Callable[[], None]) -> None:
        step = round(period * 1000)

        def tick() -> None:
            fn()
            self.at_ms(self.now_ms + step, tick)

        self.at_ms(phase_ms, tick)

    def wake(self, key: str, fn: Callable[[], None]) -> None:
        t = self.now_ms + round(self.settings.wake_latency * 1000)
        if self._woken.get(key, -1) >= self.now_ms:
            return  # already due

        def run() -> None:
            self._woken.pop(key, None)
            fn()

        self._woken[key] = t
        self.at_ms(t, run)

    def wake_ha(self) -> None:
        self.wake("ha", self._ha_all)

    def _ha_all(self) -> None:
        for node in self.nodes.values():
            self.master.ha_cycle(node)

    # -- setup -------------------------------------------------------------------------
    def _seed(self) -> None:
        st = self.truth
        cluster = Cluster("sim", "sim", 0.0, 0.0, True, (), "", "",
                          lease_ttl=self.settings.ttl)
        st.put(Keys.cluster, json.dumps(cluster.to_json()).encode())
        for i, n in enumerate(self.scenario.nodes):
            rec = Node(n.name, n.name, f"10.0.0.{i + 1}", f"10.0.0.{i + 1}", 1811,
                       master_candidate=n.candidate, vm_capable=n.vm, offline=n.offline,
                       drained=n.drained, fence_agent=n.fence_agent)
            st.put(Keys.node(n.name), json.dumps(rec.to_json()).encode())
        for s in self.scenario.instances:
            disks = tuple(Disk(f"{s.name}-{d}", d, 1024) for d in range(s.disks))
            inst = Instance(s.name, s.name, "busybox", "kvm", s.template, s.primary,
                            (s.secondary,) if s.secondary else (), disks,
                            beparams={"memory": s.memory}, admin_state=s.admin, ha=s.ha,
                            ha_priority=s.priority, ha_max_restart=s.max_restart,
                            ha_max_relocate=s.max_relocate)
            st.put(Keys.instance(s.name), json.dumps(inst.to_json()).encode())
            if s.template == "drbd":
                ok = {d: DiskReplica(UP_TO_DATE) for d in range(s.disks)}
                reps = Replicas(s.name, 1, {s.primary: ok, s.secondary: ok})
                st.put(Keys.replicas(s.name), json.dumps(reps.to_json()).encode())
                self.current[(s.name, s.primary)] = self.current[(s.name, s.secondary)] = True
        for i, node in enumerate(self.nodes.values()):
            self.boot(node)
            for s in self.scenario.instances:
                if s.primary == node.name and s.admin == "up" and node.spec.vm:
                    self.start_vm(node, s.name, None, 0)
            p = i * 37
            self.every(self.settings.renew, p, lambda n=node: self.supervise(n))  # type: ignore[misc]
            self.every(self.settings.agent_period, p + 500,
                       lambda n=node: self.agent_cycle(n))  # type: ignore[misc]
            if node.spec.candidate:
                self.every(self.settings.role_period, p + 5,
                           lambda n=node: self.master.role_cycle(n))  # type: ignore[misc]
        self.every(self.settings.ha_period, 250, self._ha_all)
        self.every(0.1, 7, self._expire)
        self.every(0.25, 11, self.replicate)
        for node in self.nodes.values():
            if node.spec.candidate:
                self.master.role_cycle(node)  # the first candidate is the master
        self.log_lines.clear()  # the initial placement is not news
        self._seeding = False
        for f in self.scenario.timeline:
            self.at_ms(round(f.at * 1000), lambda f=f: self.apply(f))  # type: ignore[misc]

    # -- the run -------------------------------------------------------------------------
    def run(self) -> Result:
        # A lost lease is the simulator's daily bread, not a warning to print.
        quiet = logging.getLogger("haven.store.lease")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            return self._run()
        finally:
            quiet.setLevel(level)

    def _run(self) -> Result:
        self._seed()
        end = round(self.settings.duration * 1000)
        same, last = 0, -1
        while self._heap and self._heap[0][0] <= end:
            t, _, fn = heapq.heappop(self._heap)
            same = same + 1 if t == last else 0
            if same > MAX_EVENTS_PER_INSTANT:
                raise RuntimeError(f"more than {MAX_EVENTS_PER_INSTANT} events at t={t} ms")
            self.now_ms, last = t, t
            fn()
            self._after_event()
        res = Result(violations=list(self.violations))
        res.log = [line for _, line in self.log_lines]
        res.timed = [f"{t:7.2f} {line}" for t, line in self.log_lines]
        res.placement = self.placement()
        return res

    def _after_event(self) -> None:
        self._check_copies()
        if self._state.revision == self._last_rev:
            return  # the store did not change: nothing to wake
        self._last_rev = self._state.revision
        keys, self.dirty[:] = list(self.dirty), []
        if any(k.startswith(("instances/", "observed/", "locks/")) for k in keys):
            for name, node in self.nodes.items():
                if node.running:
                    self.wake(f"agent/{name}", lambda n=node: self.agent_cycle(n))  # type: ignore[misc]
        alive = frozenset(kv.key for kv in self.truth.list(ALIVE)[0])
        if alive != self._alive or any(k.startswith("jobs/") for k in keys):
            self._alive = alive
            self.wake_ha()
        kv = self.truth.get(MASTER)
        rev = kv.create_revision if kv else 0
        if rev != self._master_rev:
            self._master_rev = rev
            for name, node in self.nodes.items():
                if node.spec.candidate:
                    self.wake(f"role/{name}", lambda n=node: self.master.role_cycle(n))  # type: ignore[misc]

    def on_fed(self, node: SimNode) -> None:
        """The fencer's ``recv`` times out at its deadline: check then."""
        deadline = node.fencer.deadline
        if deadline is not None:
            self.at_ms(math.ceil(deadline * 1000), lambda f=node.fencer: self.fence_tick(node, f))  # type: ignore[misc]

    def on_renew_failed(self, node: SimNode) -> None:
        """``LeaseKeeper``'s thread retries a failed renewal after 0.5 s (then the
        daemon's next second renews or restarts it again)."""
        lease = node.lease

        def retry() -> None:
            if node.running and node.lease is lease and lease is not None and lease.valid():
                lease.renew_once()

        self.after(0.5, retry)

    def fence_tick(self, node: SimNode, fencer: object) -> None:
        if node.fencer is not fencer:
            return  # a fencer of an earlier boot
        self.fence_check(node)
        if node.running and node.fencer.fired:
            # Fired: it sweeps every RESCAN (0.1 s) until fed again.
            self.after(0.1, lambda: self.fence_tick(node, fencer))

    def _expire(self) -> None:
        if self.any_quorum():  # without an etcd leader no lease expires
            self.truth.expire_leases()

    # -- invariants --------------------------------------------------------------------
    def violate(self, key: str, message: str) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self.violations.append(f"t={self.clock():.2f}: {message}")

    def _check_copies(self) -> None:
        where: dict[str, list[str]] = {}
        for name, node in self.nodes.items():
            if node.state == UP:
                for vm in node.vms.values():
                    if vm.status == "running":
                        where.setdefault(vm.name, []).append(name)
        for inst, nodes in where.items():
            if len(nodes) > 1:
                self.violate(f"copies/{inst}/{nodes}",
                             f"two running copies of {inst}: on {' and '.join(nodes)}")

    def _check_start(self, node: SimNode, _inst: Instance) -> None:
        kv = self.truth.get(Keys.instance(_inst.name))
        assert kv is not None
        inst = Instance.from_json(json.loads(kv.value))
        if inst.primary_node != node.name:
            self.violate(f"start/{inst.name}/{self.now_ms}", f"{inst.name} started on "
                         f"{node.name}, its primary is {inst.primary_node}")
        if inst.disk_template == "drbd":
            rkv = self.truth.get(Keys.replicas(inst.name))
            reps = Replicas.from_json(json.loads(rkv.value)) if rkv else None
            if not up_to_date(reps, node.name, len(inst.disks), inst.generation):
                self.violate(f"stale/{inst.name}/{self.now_ms}",
                             f"{inst.name} started on {node.name} from a replica that is "
                             f"not UpToDate at generation {inst.generation}")
            if not self.current.get((inst.name, node.name), False):
                self.violate(f"lost/{inst.name}/{self.now_ms}",
                             f"{inst.name} started on {node.name} from a replica that "
                             f"misses acknowledged writes")
            for other in (inst.primary_node, *inst.secondary_nodes):
                # The new copy writes: a peer it mirrors to but that is not UpToDate
                # misses those writes until its resync.  (An unreachable peer gets
                # none acknowledged until it is marked Outdated: see replicate.)
                if other != node.name and self.linked(node.name, other) and \
                        not up_to_date(reps, other, len(inst.disks), inst.generation):
                    self.current[(inst.name, other)] = False
        pid = node.vms[inst.name].pid
        if self._seeding:
            return  # the initial placement: booted long ago
        if (inst.name, node.name) in self.broken:
            self.after(1.0, lambda: self.crash(node, inst.name, pid))
        else:
            self.after(self.settings.boot_time, lambda: self._booted(node, inst.name, pid))

    def placement(self) -> dict[str, str]:
        out = {}
        for s in self.scenario.instances:
            nodes = [n for n, node in self.nodes.items()
                     if node.state == UP and s.name in node.vms
                     and node.vms[s.name].status == "running"]
            out[s.name] = "+".join(nodes) or "down"
        return out

    # -- replication -------------------------------------------------------------------
    def truth_instances(self) -> list[Instance]:
        """Every instance as the store has it now (parsed once per revision)."""
        if self._instances[0] != self._state.revision:
            self._instances = (self._state.revision,
                               [Instance.from_json(json.loads(kv.value))
                                for kv in self.truth.list(INSTANCES)[0]])
        return self._instances[1]

    def replicate(self) -> None:
        for inst in self.truth_instances():
            if inst.disk_template != "drbd" or not inst.secondary_nodes:
                continue
            p, s = inst.primary_node, inst.secondary_nodes[0]
            pn = self.nodes[p]
            st = self._repl.setdefault(inst.name, [None, None])  # broken since, syncing
            vm = pn.vms.get(inst.name)
            if not pn.running or vm is None or vm.status != "running":
                st[0] = st[1] = None
                continue
            rkv = self.truth.get(Keys.replicas(inst.name))
            reps = Replicas.from_json(json.loads(rkv.value)) if rkv else None
            n, gen, now = len(inst.disks), inst.generation, self.clock()
            if not self.linked(p, s):
                broken = now if st[0] is None else st[0]
                st[0], st[1] = broken, None
                if now - broken >= self.settings.outdate_delay and \
                        up_to_date(reps, s, n, gen):
                    self._report(pn, inst, s, OUTDATED, f"{s} stopped answering")
                continue
            st[0] = None
            if up_to_date(reps, s, n, gen) and up_to_date(reps, p, n, gen):
                st[1] = None
                continue
            syncing = now if st[1] is None else st[1]
            st[1] = syncing
            if now - syncing >= self.settings.resync_time:
                self._report(pn, inst, s, UP_TO_DATE, "resynced")

    def _report(self, pn: SimNode, inst: Instance, s: str, state: str, msg: str) -> None:
        """The primary's agent writes the replica states (needs the store: quorum)."""
        n = range(len(inst.disks))
        reps = Replicas(inst.name, inst.generation,
                        {pn.name: {i: DiskReplica(UP_TO_DATE) for i in n},
                         s: {i: DiskReplica(state, message=msg) for i in n}})
        try:
            pn.store.put(Keys.replicas(inst.name), json.dumps(reps.to_json()).encode())
        except StoreError:
            return
        # Outdated: the guest's writes, held until now, are acknowledged on the primary
        # alone.  UpToDate: the resync copied the primary's data.
        self.current[(inst.name, s)] = state == UP_TO_DATE and \
            self.current.get((inst.name, pn.name), False)
        self.log(f"{inst.name} replica on {s} {state}")

    # -- faults --------------------------------------------------------------------------
    def apply(self, f: Fault) -> None:
        """Inject one timeline entry (see :mod:`haven.sim.hasim_faults`)."""
        hasim_faults.apply(self, f)

    def recovery_started(self, instance: str, target: str) -> None:
        """A recovery job took its lock: a ``during_recovery`` fault fires halfway
        through it (``"target"`` names the job's target node)."""
        action, victim = self.during.pop(instance, ("", ""))
        if victim == "target":
            kv = self.truth.get(Keys.instance(instance))
            assert kv is not None
            inst = Instance.from_json(json.loads(kv.value))
            victim = target or (inst.secondary_nodes[0] if inst.secondary_nodes else "")
        if victim in self.nodes:
            self.after(self.settings.recovery_time / 2,
                       lambda: self.apply(Fault(self.clock(), action, victim)))

    def _booted(self, node: SimNode, name: str, pid: int) -> None:
        vm = node.vms.get(name)
        if vm is not None and vm.pid == pid and node.running:
            self.log(f"{name} answering on {node.name}")

    def crash(self, node: SimNode, name: str, pid: int) -> None:
        vm = node.vms.get(name)
        if vm is not None and vm.pid == pid and node.running:
            del node.vms[name]
            self.log(f"{name} crashed on {node.name}")

def run_file(path: Path) -> Result:
    """Run one scenario file."""
    return Simulation(load(path)).run()


__all__ = ["Simulation", "run_file"]
