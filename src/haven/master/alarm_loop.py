"""The alarm loop on the master: observe -> :func:`haven.master.alarms.plan` -> execute,
one summary line per change.

Every ``PERIOD`` (and at once when a node's lease key goes or comes) it reads the
store into an :class:`AlarmView`, plans, and writes each raise (the active key and an
event), update, and clear (the active key deleted, a history entry and an event) in
one transaction guarded by the master's token and, for an existing alarm, by its mod
revision (an acknowledgement that lands first makes the write fail; the next cycle
plans again from it).  Each successful raise and clear is handed to the
:class:`~haven.master.alarm_notify.Notifier`, whose threads send it.

Two inputs are gathered off the cycle, so that a slow answer never delays it: failed
jobs come from a watch on ``jobs/``, and the etcd members' health from a prober thread
(managed etcd only) that asks each member for its status every ``PROBE_PERIOD``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from haven.errors import HavenError
from haven.master import alarm_store, state
from haven.master.alarm_notify import Notifier
from haven.master.alarms import AlarmPlan, AlarmView, FailedJob, plan
from haven.master.lu import MasterContext
from haven.master.periodic import CycleLoop
from haven.master.quorum import MemberView, view_of
from haven.model import alarm as A
from haven.model import event
from haven.model import ha as H
from haven.model.alarm import Alarm
from haven.model.job import Job, JobStatus
from haven.model.keys import (
    ALARMS_HISTORY,
    ALIVE,
    JOBS,
    MIGRATIONS,
    REPLICAS,
    Keys,
)
from haven.model.replica import Replicas
from haven.store.base import Compare, Delete, Get, Guard, KeyValue, Op, Put, WatchEvent
from haven.store.errors import FencedOut, StoreError

log = logging.getLogger(__name__)

PERIOD = 1.0  # seconds between cycles
PROBE_PERIOD = 2.0  # seconds between two probes of the etcd members
PROBE_STALE = 10.0  # a probe older than this is not used (the kinds count as unknown)
TRIM_CHUNK = 100  # history keys deleted per transaction (etcd allows 128 operations)
# Event severity of an alarm's raise, by alarm severity.
EVENT_SEVERITY = {A.CRITICAL: "error", A.WARNING: "warning", A.INFO: "info"}


def job_error(job: Job) -> str:
    """The first error message of a failed job's opcodes."""
    for res in job.opresult:
        if isinstance(res, list) and len(res) == 2 and isinstance(res[1], list) and res[1]:
            return str(res[1][0])
    return "no error message"


def failed_job(job: Job) -> FailedJob | None:
    if job.status != JobStatus.ERROR:
        return None
    return FailedJob(job.id, job.end_ts or job.received_ts, ",".join(job.summary),
                     job_error(job))


class AlarmManager(CycleLoop):
    """Runs the cycle in a thread while this node is master (see ``daemon/role.py``)."""

    def __init__(self, ctx: MasterContext, period: float = PERIOD,
                 notifier: Notifier | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.period = period
        self.monotonic = monotonic
        self.notifier = notifier or Notifier(self._cluster_name(), ctx.master_node)
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watchers: list[Any] = []
        self._pending: dict[str, float] = {}
        self._jobs_lock = threading.Lock()
        self._failed: dict[int, FailedJob] | None = None  # None until the watch lists
        self._members: tuple[float, tuple[MemberView, ...]] | None = None
        self.last_summary = ""

    def _cluster_name(self) -> str:
        try:
            return state.cluster(self.ctx.store).name
        except (HavenError, StoreError):
            return ""

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        from haven.store.watcher import Watcher

        self.notifier.start()
        self._watchers = [
            Watcher(self.ctx.store, JOBS, self._on_job, self._on_jobs, name="alarms:jobs"),
            Watcher(self.ctx.store, ALIVE, self._on_alive,
                    lambda _kvs, _rev: self.wake.set(), name="alarms:alive")]
        for w in self._watchers:
            w.start()
        self._spawn(self._loop, "alarm-loop")
        if self.ctx.etcd_admin is not None:
            self._spawn(self._probe_loop, "alarm-etcd-probe")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def stop(self) -> None:
        """Stop at once (the notices already queued still go out)."""
        self._stop.set()
        self.wake.set()
        for w in self._watchers:
            w.stop(timeout=0.5)
        self.notifier.stop()

    def _loop(self) -> None:
        self.run_cycles(self.cycle, self.period, "alarms", log)

    # -- inputs gathered off the cycle -------------------------------------------------
    def _on_jobs(self, kvs: list[KeyValue], _rev: int) -> None:
        failed = {}
        for kv in kvs:
            f = self._parse_job(kv.value)
            if f is not None:
                failed[f.id] = f
        with self._jobs_lock:
            self._failed = failed
        self.wake.set()

    def _on_job(self, ev: WatchEvent) -> None:
        with self._jobs_lock:
            if self._failed is None:
                return
            try:
                job_id = int(ev.kv.key[len(JOBS):])
            except ValueError:
                return  # not a job key
            f = self._parse_job(ev.kv.value) if ev.type == "PUT" else None
            if f is None:
                if self._failed.pop(job_id, None) is None:
                    return
            else:
                if job_id in self._failed:
                    return
                self._failed[job_id] = f
        self.wake.set()

    @staticmethod
    def _parse_job(raw: bytes) -> FailedJob | None:
        try:
            return failed_job(Job.from_json(json.loads(raw)))
        except (ValueError, KeyError, TypeError):
            return None  # a job this version cannot read is no alarm

    def _on_alive(self, ev: WatchEvent) -> None:
        if ev.type != "PUT" or ev.kv.version == 1:
            self.wake.set()  # a lease key went or came (renewals are not news)

    def _probe_loop(self) -> None:
        while not self._stop.is_set():
            try:
                members = self.probe_members()
                self._members = (self.monotonic(), members)
            except (HavenError, StoreError) as exc:
                log.debug("alarms: probing the etcd members: %s", exc)
            self._stop.wait(PROBE_PERIOD)

    def probe_members(self) -> tuple[MemberView, ...]:
        """Every etcd member with a node, voter or learner, and whether it answers."""
        admin = self.ctx.etcd_admin

        def answers(m: Any) -> bool:
            try:
                return bool(admin.status(m.client_urls[0])["leader"])
            except (HavenError, StoreError, OSError):
                return False

        view = view_of(self.ctx.master_node, state.nodes(self.ctx.store),
                       admin.member_list(), answers)
        return view.members

    # -- one cycle ---------------------------------------------------------------------
    def cycle(self) -> str:
        if self.ctx.guard() is None:
            return "not master"
        view, revs = self.observe()
        p = plan(view)
        self._pending = p.pending
        return self.execute(p, view, revs)

    def observe(self) -> tuple[AlarmView, dict[str, int]]:
        """One snapshot, and each active alarm's mod revision."""
        store = self.ctx.store
        mono = self.monotonic()
        nodes = {n.name: n for n in state.nodes(store)}
        kvs, _ = store.list(ALIVE)
        alive = frozenset(kv.key[len(ALIVE):] for kv in kvs)
        kvs, _ = store.list(H.HA_NODES)
        node_ha = {r.node: r for r in (H.NodeHA.from_json(json.loads(kv.value))
                                       for kv in kvs)}
        instances = state.instances(store)
        observed = state.all_observed(store)
        kvs, _ = store.list(REPLICAS)
        replicas = {r.instance: r for r in (Replicas.from_json(json.loads(kv.value))
                                            for kv in kvs)}
        kvs, _ = store.list(MIGRATIONS)
        migrating = frozenset(kv.key[len(MIGRATIONS):] for kv in kvs)
        active = alarm_store.active(store)
        with self._jobs_lock:
            failed = None if self._failed is None else tuple(self._failed.values())
        members = None
        if self._members is not None and mono - self._members[0] <= PROBE_STALE:
            members = self._members[1]
        view = AlarmView(
            now=self.ctx.clock(), mono=mono, settings=alarm_store.settings(store),
            master=self.ctx.master_node, nodes=nodes, alive=alive, node_ha=node_ha,
            instances=instances, observed=observed, replicas=replicas,
            migrating=migrating, facts=state.facts(store), failed_jobs=failed,
            members=members, active={k: a for k, (a, _rev) in active.items()},
            pending=dict(self._pending))
        return view, {k: rev for k, (_a, rev) in active.items()}

    def execute(self, p: AlarmPlan, view: AlarmView, revs: dict[str, int]) -> str:
        """Write the plan; the summary of what landed."""
        done_raise, done_clear, done_update = [], [], []
        for a in p.raise_:
            ev = self._event("alarm-raised", a, f"Alarm raised ({a.severity}): {a.message}",
                             EVENT_SEVERITY.get(a.severity, "warning"))
            if self._txn([Compare(Keys.alarm(a.id), "create", "=", 0)],
                         [Put(Keys.alarm(a.id), a.encode()), ev]):
                done_raise.append(a)
                self.notifier.send("raised", a, view.settings)
        for a in p.update:
            if self._txn([Compare(Keys.alarm(a.id), "mod", "=", revs.get(a.id, 0))],
                         [Put(Keys.alarm(a.id), a.encode())]):
                done_update.append(a)
                self.notifier.send("updated", a, view.settings)
        for a in p.clear:
            ev = self._event("alarm-cleared", a, f"Alarm cleared: {a.message}", "info")
            if self._txn([Compare(Keys.alarm(a.id), "mod", "=", revs.get(a.id, 0))],
                         [Delete(Keys.alarm(a.id)),
                          Put(Keys.alarm_history(a.raised, a.id), a.encode()), ev]):
                done_clear.append(a)
                self.notifier.send("cleared", a, view.settings)
        if done_clear:
            self._trim(view.settings.history_limit)
        missed = (len(p.raise_) + len(p.update) + len(p.clear)
                  - len(done_raise) - len(done_update) - len(done_clear))
        line = AlarmPlan(tuple(done_raise), tuple(done_clear), tuple(done_update)).summary()
        if missed:
            self.wake.set()  # an acknowledgement (or another writer) came first: again
            line += f" ({missed} write(s) lost a race; planning again)"
        return line

    def _event(self, kind: str, a: Alarm, message: str, severity: str) -> Put:
        ev = event.new(kind, a.object, self.ctx.master_node, message, severity)
        return Put(ev.key(), ev.encode())

    def _guard(self) -> Guard:
        guard = self.ctx.guard()
        if guard is None:
            raise FencedOut("This node is no longer master.")
        return guard

    def _txn(self, compares: list[Compare], ops: list[Op]) -> bool:
        """One guarded transaction; False if ``compares`` failed, :class:`FencedOut`
        if the master's token did."""
        guard = self._guard()
        res = self.ctx.store.txn(
            [*compares, Compare(guard.key, "create", "=", guard.create_revision)], ops,
            [Get(guard.key)])
        if res.succeeded:
            return True
        probe = res.responses[-1] if res.responses else None
        kvs = probe if isinstance(probe, list) else []
        if not kvs or kvs[0].create_revision != guard.create_revision:
            raise FencedOut("Refused an alarm write: another node is master now.")
        return False

    def _trim(self, limit: int) -> None:
        """Keep the newest ``limit`` history entries."""
        kvs, _ = self.ctx.store.list(ALARMS_HISTORY)
        old = [kv.key for kv in kvs[:max(len(kvs) - limit, 0)]]
        for i in range(0, len(old), TRIM_CHUNK):
            self._txn([], [Delete(k) for k in old[i:i + TRIM_CHUNK]])
