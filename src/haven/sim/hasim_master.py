"""The master's side of the HA simulator: election, the HA manager, the recovery jobs.

Real code used as is: :func:`haven.daemon.role.plan` and
:class:`~haven.store.election.Election` for the master role;
:func:`haven.master.ha_loop.observe`, :func:`haven.master.ha.plan` and
:meth:`haven.master.ha_loop.HaManager.execute` for the HA cycle; the lock functions of
:mod:`haven.master.locks`; and the recovery job's own logical unit,
:class:`~haven.master.opcodes.instance_drbd.InstanceFailover` (re-checks ``from_node``,
moves the primary, bumps the generation, swaps the replica states, starts the VM on
the target through the target's start gate), reached over a simulated node RPC.

What is simulated: the job runner (a queued recovery takes its locks, runs for
``recovery_time``, then its LU runs at once) and a new master's takeover (jobs the old
master was running are failed, their locks freed, as ``JobRunner`` does).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from haven.daemon import role
from haven.errors import HavenError, OpExecError
from haven.master import ha as ha_mod
from haven.master import ha_loop, jobqueue, locks
from haven.master.lu import MasterContext
from haven.master.opcodes.instance_drbd import InstanceFailover
from haven.model import ha as H
from haven.model.job import JobStatus, OpStatus
from haven.model.keys import MASTER, Keys
from haven.model.node import Node
from haven.noderpc import NodeRpc
from haven.sim.hasim_model import Fault
from haven.sim.hasim_world import FROZEN, SimNode
from haven.store.errors import StoreError

if TYPE_CHECKING:
    from haven.sim.hasim import Simulation

FAILOVER = "OP_INSTANCE_FAILOVER"
_ACTIVE = (JobStatus.RUNNING, JobStatus.WAITING, JobStatus.CANCELING)


class SimRpc(NodeRpc):
    """Node RPC from ``caller`` to the simulated daemons: ``start``/``stop``/``unexport``
    of an instance.  A node that does not run, is on the other side of a partition or
    has ``rpc_fail`` set does not answer (at once: timeouts are not simulated)."""

    def __init__(self, sim: Simulation, caller: str) -> None:
        self.sim = sim
        self.caller = caller

    def call(self, address: str, port: int, method: str, path: str,
             body: Any = None, timeout: float = 10.0, verify: bool | str = True) -> Any:
        node = self.sim.by_ip[address]
        parts = path.strip("/").split("/")  # haven/node/instance/<name>/<action>
        name, action = parts[3], parts[4]
        if not self.sim.linked(self.caller, node.name) or node.rpc_fail:
            raise OpExecError(f"Node {node.name} does not answer ({action} {name}).")
        body = body or {}
        if action == "start":
            return {"pid": self.sim.start_vm(node, name, body.get("generation"), 0,
                                             bool(body.get("force")))}
        if action == "stop":
            self.sim.stop_vm(node, name, "stopped by a job")
        return {}


class SimHaManager(ha_loop.HaManager):
    """The real HA manager, but a fence agent runs in virtual time instead of on a
    thread: it takes ``fence_time``, turns the node off (a kill) unless the scenario
    made it fail (``fence_fail``), and its outcome is recorded by the manager's own
    ``_run_agent``."""

    def __init__(self, ctx: MasterContext, grace: float, sim: Simulation) -> None:
        super().__init__(ctx, grace)
        self.sim = sim

    def execute(self, a: ha_mod.Action, view: ha_mod.HAView) -> bool:
        if a.kind != "fence":
            return super().execute(a, view)
        assert a.node_record is not None
        if a.target in self._fencing:
            return True
        self.ctx.store.put(H.node_key(a.target), json.dumps(a.node_record.to_json()).encode(),
                           guard=self._guard())
        self._fencing.add(a.target)
        node = view.nodes[a.target]
        self.sim.after(self.sim.settings.fence_time, lambda: self._agent_done(node))
        return True

    def _agent_done(self, node: Node) -> None:
        if self.ctx.guard() is None:
            self._fencing.discard(node.name)
            return  # this master is gone: its agent's outcome is lost with it
        from haven.fence import agents

        def sim_fence(name: str, agent: str, _params: dict[str, Any],
                      _base: Any = None) -> tuple[bool, str]:
            if name in self.sim.fence_fail:
                return False, f"{agent} timed out"
            self.sim.apply(Fault(self.sim.clock(), "kill", name))
            return True, f"turned off by {agent}"

        real = agents.fence
        agents.fence = sim_fence  # type: ignore[assignment]
        try:
            self._run_agent(node)
        finally:
            agents.fence = real
        self.sim.log(f"{node.name} fence agent "
                     f"{'failed' if node.name in self.sim.fence_fail else 'confirmed'}")


class Master:
    """The master role of every candidate node, and what the elected one runs."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.managers: dict[str, SimHaManager] = {}
        self.running: dict[int, tuple[str, int]] = {}  # job -> (master node, token)
        # What HaManager keeps from cycle to cycle, per master node: the heartbeats
        # and the HA states seen, timed on the virtual monotonic clock.
        self.beats: dict[str, dict[str, tuple[int, float]]] = {}
        self.ages: dict[str, dict[str, tuple[str, float]]] = {}

    def context(self, node: SimNode) -> MasterContext:
        def guard() -> Any:
            return node.election.guard if node.election is not None and node.running \
                else None

        return MasterContext(store=node.store, guard=guard, master_node=node.name,
                             rpc=SimRpc(self.sim, node.name),
                             clock=lambda: self.sim.wall(node.name))

    # -- election ----------------------------------------------------------------------
    def role_cycle(self, node: SimNode) -> None:
        """``MasterRole.cycle``: observe, :func:`haven.daemon.role.plan`, execute."""
        if not node.running or node.lease is None or node.election is None:
            return
        try:
            leader = node.store.get(MASTER)
            kv = node.store.get(Keys.node(node.name))
        except StoreError:
            return
        rec = Node.from_json(json.loads(kv.value)) if kv else None
        view = role.RoleView(node.name, node.lease.valid(),
                             bool(rec and rec.master_candidate and not rec.offline),
                             leader, None, node.election.token)
        action, _why = role.plan(view)
        try:
            if action is role.RoleAction.CAMPAIGN:
                if node.election.campaign_once() is not None:
                    self.sim.log(f"{node.name} master")
                    self.takeover(node)
            elif action is role.RoleAction.STEP_DOWN:
                self.sim.log(f"{node.name} stepped down")
                node.election.resign()
        except HavenError:
            return

    def takeover(self, node: SimNode) -> None:
        """``JobRunner``'s takeover: jobs nobody runs any more are failed (a failover
        is not safe to repeat), their locks freed."""
        ctx = self.context(node)
        guard = ctx.guard()
        if guard is None:
            return
        self.managers[node.name] = SimHaManager(ctx, self.sim.settings.grace, self.sim)
        self.beats[node.name] = {}
        self.ages[node.name] = {}
        mine = (node.name, guard.create_revision)
        for job in jobqueue.list_jobs(node.store):
            if job.status not in _ACTIVE or self.running.get(job.id) == mine:
                continue
            final = JobStatus.CANCELED if job.status == JobStatus.CANCELING \
                else JobStatus.ERROR
            why = (f"The master node {job.master or 'the previous master'} stopped while "
                   f"this job was running; it was not resumed")
            jobqueue.update(node.store, job.id, lambda j, f=final, w=why:  # type: ignore
                            jobqueue.finish(j, f, w, ctx.clock()) if not j.status.finalized
                            else j, guard)
            for name, holder in locks.held(node.store).items():
                if holder == job.id:
                    locks.release(node.store, job.id, [name], guard)

    # -- the HA manager and the job runner ---------------------------------------------
    def ha_cycle(self, node: SimNode) -> None:
        """``HaManager.cycle`` with the simulated job runner first."""
        mgr = self.managers.get(node.name)
        if not node.running or mgr is None or mgr.ctx.guard() is None:
            return
        try:
            self.run_jobs(node, mgr.ctx)
            view = ha_loop.observe(mgr.ctx, self.sim.settings.grace,
                                   self.beats.setdefault(node.name, {}), self.sim.clock,
                                   ages=self.ages.setdefault(node.name, {}))
            for a in ha_mod.plan(view):
                if not mgr.execute(a, view):
                    break  # the world changed under the plan (HaManager.cycle)
                self._log(a)
        except HavenError:
            return

    def _log(self, a: ha_mod.Action) -> None:
        log = self.sim.log
        if a.kind == "node":
            log(f"{a.target} {a.state}")
        elif a.kind == "recover":
            if a.job:
                log(f"job {a.job} bypassed for {a.target}")
            log(f"{a.target} recovering on {a.node}")
        elif a.kind == "refuse":
            log(f"{a.target} refused: {a.reason}")
        elif a.kind == "outcome" and a.record is not None:
            if a.state == "recovered":
                log(f"{a.target} recovered on {a.record.target}")
            else:
                log(f"{a.target} recovery failed: {a.reason}")

    def run_jobs(self, node: SimNode, ctx: MasterContext) -> None:
        store = node.store
        for job in jobqueue.list_jobs(store):
            if job.status != JobStatus.QUEUED or job.ops[0].get("OP_ID") != FAILOVER:
                continue
            guard = ctx.guard()
            if guard is None:
                return
            lu = InstanceFailover(ctx, job.ops[0], lambda _m: None)
            lu.check_arguments()
            names = lu.lock_names()
            if lu.steals_locks:
                locks.take_over(store, job.id, names, guard)
            elif not locks.try_acquire(store, job.id, names, guard):
                continue
            now = ctx.clock()
            jobqueue.update(store, job.id, lambda j, n=now: replace(  # type: ignore
                j, status=JobStatus.RUNNING, master=node.name, start_ts=n,
                opstatus=(OpStatus.RUNNING,) * len(j.ops)), guard)
            self.running[job.id] = (node.name, guard.create_revision)
            self.sim.after(self.sim.settings.recovery_time,
                           lambda i=job.id: self.finish_job(i))  # type: ignore[misc]
            self.sim.recovery_started(lu.op["instance_name"], lu.op.get("target_node", ""))

    def finish_job(self, job_id: int) -> None:
        owner = self.running.get(job_id)
        if owner is None:
            return
        node = self.sim.nodes[owner[0]]
        if node.state == FROZEN:
            # A stopped master's job thread goes on where it was once resumed.
            self.sim.after(0.1, lambda: self.finish_job(job_id))
            return
        del self.running[job_id]
        mgr = self.managers.get(node.name)
        if mgr is None:
            return
        ctx = mgr.ctx
        guard = ctx.guard()
        if guard is None or guard.create_revision != owner[1]:
            return  # its master is gone: the next one's takeover fails the job
        try:
            job, _ = jobqueue.read(node.store, job_id)
            lu = InstanceFailover(ctx, job.ops[0], lambda _m: None)
            try:
                lu.check_arguments()
                lu.check_prereq()
                lu.exec()
                status, msg = JobStatus.SUCCESS, "done"
            except HavenError as exc:
                if isinstance(exc, StoreError) and ctx.guard() is None:
                    return
                status, msg = JobStatus.ERROR, exc.message
                self.sim.log(f"job {job_id} failed: {msg}")
            jobqueue.update(node.store, job_id, lambda j: jobqueue.finish(
                j, status, msg, ctx.clock()), guard)
            locks.release(node.store, job_id, lu.lock_names(), guard)
        except HavenError:
            return
        self.sim.wake_ha()

    def user_job(self, instance: str, duration: float) -> None:
        """A user job (as the runner would run it) that holds ``instance``'s lock."""
        store = self.sim.truth
        now = self.sim.clock()
        job_id = jobqueue.submit(store, [{"OP_ID": "OP_INSTANCE_SHUTDOWN",
                                          "instance_name": instance}], now)
        master = next((n for n, m in self.managers.items()
                       if m.ctx.guard() is not None), "")
        jobqueue.update(store, job_id, lambda j: replace(
            j, status=JobStatus.RUNNING, master=master, start_ts=now,
            opstatus=(OpStatus.RUNNING,)))
        store.put(Keys.lock(f"instance/{instance}"), str(job_id).encode())
        self.sim.log(f"job {job_id} holds {instance}")

        def end() -> None:
            job, _ = jobqueue.read(store, job_id)
            if job.status.finalized:
                return
            final = JobStatus.CANCELED if job.status == JobStatus.CANCELING \
                else JobStatus.SUCCESS
            jobqueue.update(store, job_id, lambda j: jobqueue.finish(
                j, final, "ended", self.sim.clock()))
            locks.release(store, job_id, [f"instance/{instance}"], None)
            self.sim.log(f"job {job_id} {final}")

        self.sim.after(duration, end)


__all__ = ["Master", "SimRpc"]
