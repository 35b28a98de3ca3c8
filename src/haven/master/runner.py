"""The master's job runner: picks queued jobs, runs their opcodes in phases.

Jobs with disjoint locks run in parallel threads.  Every status write is guarded by the
master's fencing token, so a deposed master's runner cannot change anything; it stops
at its next write.  A new master first adopts what the old one left (``takeover``).
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
from haven.master import jobqueue, locks
from haven.master.lu import MasterContext, lu_class
from haven.model.job import Job, JobStatus, OpStatus
from haven.model.keys import JOBS, Keys
from haven.store.base import Guard, Store, WatchEvent
from haven.store.errors import FencedOut, StoreError

log = logging.getLogger(__name__)

ARCHIVE_AFTER = 6 * 3600.0  # Ganeti's watcher archives jobs older than 6 hours
LOCK_POLL = 0.05
EVENTS_KEPT = 10000
# Retry delays for an interrupted migration's cleanup.  Under a minute at most: the
# instance's agent leaves it alone while the record stays, so a VM that crashes then
# is not restarted until a cleanup ends the record.
CLEANUP_FIRST, CLEANUP_MAX = 10.0, 60.0
QUORUM_PERIOD = 1.0  # seconds between checks of etcd's voters
STORE_PATIENCE = 30.0  # seconds a job's status write is retried through an etcd hiccup


class JobRunner:
    def __init__(self, ctx: MasterContext, max_parallel: int = 25) -> None:
        self.ctx = ctx
        self.store: Store = ctx.store
        self.max_parallel = max_parallel
        self._running: dict[int, threading.Thread] = {}
        # Jobs a thread of ours owns, from before it starts until after it ends: a
        # job in here is never "orphaned", however its stored status looks.
        self._handling: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watcher: Any = None
        self._last_archive = 0.0
        self._last_raft_check = -1e9
        self._last_quorum_check = -1e9
        self._quorum_summary = ""
        # instance -> (when to submit its next cleanup job, the delay after that one)
        self._cleanups: dict[str, tuple[float, float]] = {}
        self._cleanup_alive: frozenset[str] = frozenset()  # nodes alive at the last try

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        from haven.store.watcher import Watcher

        self.takeover()
        self._watcher = Watcher(self.store, JOBS, self._on_event,
                                lambda _kvs, _rev: self._wake.set())
        self._watcher.start()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._wake.set()  # a first scan at once: queued jobs, raft leader placement
        self._thread.start()

    def stop(self, wait: float = 0.0) -> None:
        """Take no new jobs; wait up to ``wait`` seconds for running ones to finish."""
        self._stopping.set()
        self._wake.set()
        if self._watcher is not None:
            self._watcher.stop()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.busy():
            time.sleep(0.05)

    def busy(self) -> bool:
        with self._lock:
            return any(t.is_alive() for t in self._running.values())

    # -- takeover --------------------------------------------------------------------
    def takeover(self) -> str:
        """Adopt the jobs a previous master left running; clear its locks."""
        guard = self.ctx.guard()
        if guard is None:
            return "not master"
        now = self.ctx.clock()
        requeued, failed = [], []
        for job in jobqueue.list_jobs(self.store):
            if job.status not in (JobStatus.RUNNING, JobStatus.WAITING, JobStatus.CANCELING):
                continue
            if job.master == self.ctx.master_node and self._alive(job.id):
                continue
            if self._adopt(job, guard, now):
                requeued.append(job.id)
            else:
                failed.append(job.id)
        for name, job_id in locks.held(self.store).items():
            locks.release(self.store, job_id, [name], guard)
        summary = f"takeover: requeued {requeued or 'none'}, failed {failed or 'none'}"
        log.info(summary)
        return summary

    def _adopt(self, job: Job, guard: Guard, now: float) -> bool:
        """Requeue a job nobody runs any more if it is safe to repeat (True), else
        finish it with a message that says why (False).  Frees its locks."""
        if job.status != JobStatus.CANCELING and _resumable(job):
            jobqueue.update(self.store, job.id, _unless_final(_requeue), guard)
            return True
        old = job.master or "the previous master"
        idx = next((i for i, s in enumerate(job.opstatus) if s != OpStatus.SUCCESS), 0)
        msg = (f"The master node {old} stopped while this job was running opcode {idx} "
               f"({job.ops[idx].get('OP_ID')}); it was not resumed because that opcode is "
               f"not safe to repeat. Check the cluster with 'gnt-cluster verify' and "
               f"resubmit.")
        if job.status == JobStatus.CANCELING:
            final, why = JobStatus.CANCELED, "Job canceled by request"
        else:
            final, why = JobStatus.ERROR, msg
        jobqueue.update(self.store, job.id, _unless_final(_finisher(final, why, now)), guard)
        for name, holder in locks.held(self.store).items():
            if holder == job.id:
                locks.release(self.store, job.id, [name], guard)
        return False

    # -- scheduling ------------------------------------------------------------------
    def _on_event(self, ev: WatchEvent) -> None:
        if ev.type != "PUT":
            return
        try:
            data = json.loads(ev.kv.value)
        except ValueError:
            return
        if data.get("status") == JobStatus.QUEUED:
            self._start_job(int(data["id"]))

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(2.0)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._scan()
            except HavenError as exc:
                log.warning("job scan failed: %s", exc)

    def _scan(self) -> None:
        now = self.ctx.clock()
        self._quorum_check(now)
        self._raft_leader_check(now)
        archive = now - self._last_archive > 600
        for job in jobqueue.list_jobs(self.store):
            if job.status == JobStatus.QUEUED:
                self._start_job(job.id)
            elif job.status in (JobStatus.RUNNING, JobStatus.WAITING, JobStatus.CANCELING) \
                    and not self._alive(job.id):
                # Its thread is gone (store outage mid-job) but we are still master:
                # adopt it as a new master would.
                self._adopt(job, self._guard(), now)
            elif archive and job.status.finalized and job.end_ts \
                    and now - job.end_ts > ARCHIVE_AFTER:
                self.store.delete(Keys.job(job.id), guard=self._guard())
        self._cleanup_migrations(now)
        if archive:
            self._last_archive = now
            self._prune_events()

    def _cleanup_migrations(self, now: float) -> None:
        """An interrupted migration whose job is gone (with the previous master, say) is
        finished or rolled back by a cleanup job, as ``gnt-instance migrate --cleanup``
        would; retried while its record stays (a node down), 10 s later, then doubling
        up to 10 minutes."""
        from haven.master.opcodes.instance_migrate import migrations_in_progress

        # Records first, then locks: a migration job that starts in between is then
        # seen holding its lock, not taken for an orphan.
        pending = migrations_in_progress(self.store)
        held = locks.held(self.store)
        for name in set(self._cleanups) - set(pending):
            del self._cleanups[name]
        if pending:
            # A cleanup fails while a node it must ask is down: when the nodes that
            # hold leases change, it is tried again at once.
            from haven.master import state

            alive = frozenset(state.alive(self.store))
            if alive != self._cleanup_alive:
                self._cleanup_alive = alive
                self._cleanups = {n: (now, CLEANUP_FIRST) for n in self._cleanups}
        for name in pending:
            due, delay = self._cleanups.get(name, (now, CLEANUP_FIRST))
            if f"instance/{name}" in held or now < due:
                continue
            self._cleanups[name] = (now + delay, min(delay * 2, CLEANUP_MAX))
            job_id = jobqueue.submit(self.store, [{"OP_ID": "OP_INSTANCE_MIGRATE",
                                                   "instance_name": name, "cleanup": True}],
                                     now)
            log.warning("interrupted migration of %s: cleanup job %d", name, job_id)

    def _prune_events(self) -> None:
        """Keep the newest ``EVENTS_KEPT`` events: etcd must never fill its quota."""
        from haven.model.keys import EVENTS

        kvs, _ = self.store.list(EVENTS)
        for kv in kvs[:-EVENTS_KEPT] if len(kvs) > EVENTS_KEPT else []:
            self.store.delete(kv.key, guard=self._guard())

    def _alive(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._handling

    def _quorum_check(self, now: float) -> None:
        """Keep etcd's voters as the quorum rules want (``master/quorum.py``)."""
        if self.ctx.etcd_admin is None or now - self._last_quorum_check < QUORUM_PERIOD:
            return
        from haven.master import quorum, state

        # A node job changing the members holds the votes: it promotes what it needs
        # itself (etcd allows one learner at a time), and this waits for the next pass.
        if not self.ctx.votes.acquire(blocking=False):
            return
        try:
            self._last_quorum_check = now
            # While a node add or remove holds its lock, no vote is taken away: a
            # demotion then (the cluster seen as two nodes mid-removal) raced the job
            # and once made a voter's etcd exit.  Read under the votes, so that a job
            # that takes its lock meanwhile waits for this pass to end.
            busy = "cluster-membership" in locks.held(self.store)
            step = quorum.reconcile(self.ctx.etcd_admin, self.ctx.master_node,
                                    state.nodes(self.store), demote=not busy)
        finally:
            self.ctx.votes.release()
        if step.summary != self._quorum_summary:
            log.info("quorum: %s", step.summary)
            self._quorum_summary = step.summary
        if step.changed:
            self._last_quorum_check = -1e9
            self._wake.set()  # the next step (a demotion after a promotion) at once

    def _raft_leader_check(self, now: float) -> None:
        if self.ctx.etcd_admin is None or now - self._last_raft_check < 10:
            return
        self._last_raft_check = now
        from haven.master import raftleader, state

        try:
            me = state.node(self.store, self.ctx.master_node)
        except HavenError:
            return
        summary = raftleader.keep_leader_away(self.ctx.etcd_admin, me)
        log.debug("raft leader: %s", summary)

    def _start_job(self, job_id: int) -> None:
        if self._stopping.is_set():
            return
        with self._lock:
            # _handling, not is_alive(): a thread registered by a concurrent caller (the
            # watcher and the scan both start queued jobs) is not alive until started,
            # and the job ran twice (NODE_ADD: "node02 is already in the cluster").
            if job_id in self._handling:
                return
            self._running = {k: t for k, t in self._running.items() if t.is_alive()}
            if len(self._running) >= self.max_parallel:
                return
            t = threading.Thread(target=self._run_job, args=(job_id,),
                                 name=f"job-{job_id}", daemon=True)
            self._running[job_id] = t
            self._handling.add(job_id)
        t.start()

    # -- execution -------------------------------------------------------------------
    def _run_job(self, job_id: int) -> None:
        try:
            self._execute(job_id)
        except FencedOut:
            log.warning("job %s: no longer master, leaving it to the next one", job_id)
        except StoreError as exc:
            log.warning("job %s: store unavailable (%s); adopted at the next scan",
                        job_id, exc)
        except Exception:
            log.exception("job %s: internal error", job_id)
        finally:
            with self._lock:
                self._handling.discard(job_id)

    def _execute(self, job_id: int) -> None:
        job, rev = jobqueue.read(self.store, job_id)
        if job.status != JobStatus.QUEUED:
            return
        tracked = _Tracked(self, job, rev)
        if not tracked.commit(lambda j: replace(
                j, master=self.ctx.master_node, start_ts=j.start_ts or self.ctx.clock())
                if j.status == JobStatus.QUEUED else j):
            return
        if tracked.status() != JobStatus.QUEUED:
            return  # canceled, or claimed by someone else, in the meantime
        log.info("job %s: started %s", job_id, ", ".join(tracked.job.summary))
        for idx, op in enumerate(tracked.job.ops):
            if tracked.job.opstatus[idx] == OpStatus.SUCCESS:
                continue  # done before a takeover
            last = idx == len(tracked.job.ops) - 1
            self._run_op(tracked, idx, op, last)
            if tracked.status().finalized:
                log.info("job %s: %s", job_id, tracked.status())
                return
            if tracked.status() in _STOPPING:
                tracked.commit(lambda j: jobqueue.finish(
                    j, JobStatus.CANCELED, "Job canceled by request", self.ctx.clock()))
                return

    def _run_op(self, t: _Tracked, idx: int, op: dict[str, Any], last: bool) -> None:
        now = self.ctx.clock
        job_id = t.job.id

        def feedback(msg: str) -> None:
            t.commit(lambda j: j.with_log(idx, msg, now()))

        names: list[str] = []
        try:
            lu = lu_class(op)(self.ctx, op, feedback)
            lu.check_arguments()
            lu.before_lock()
            names = sorted(set(lu.lock_names()))
            if names and getattr(lu, "steals_locks", False):
                taken = locks.take_over(self.store, job_id, names, self._guard())
                if taken:
                    feedback(f"took the lock(s) of {', '.join(sorted(taken))} from job(s) "
                             f"{', '.join(str(j) for j in sorted(set(taken.values())))}")
            elif names and not locks.try_acquire(self.store, job_id, names, self._guard()):
                t.commit(lambda j: _waiting(j, idx))
                while not locks.try_acquire(self.store, job_id, names, self._guard()):
                    t.refresh()
                    if t.job.status in _STOPPING:
                        names = []  # none taken
                        return
                    time.sleep(LOCK_POLL)
            t.commit(lambda j: _running(j, idx))
            if t.job.status in _STOPPING:
                return
            lu.check_prereq()
            result = lu.exec()
        except FencedOut:
            raise
        except Exception as exc:
            if isinstance(exc, HavenError):
                msg, kind, ecode = exc.message, type(exc).__name__, exc.ecode
            else:  # a bug in an opcode: the job still ends, and says so
                log.exception("job %s: opcode %s crashed", job_id, op.get("OP_ID"))
                msg = f"Internal error in {op.get('OP_ID')}: {type(exc).__name__}: {exc}"
                kind, ecode = "OpExecError", "internal_error"
            err = [kind, [msg, ecode]]
            t.commit(lambda j: replace(
                jobqueue.finish(j.with_op(idx, OpStatus.ERROR, err), JobStatus.ERROR,
                                msg, now()), opresult=_set(j.opresult, idx, err)))
            return
        finally:
            guard = self.ctx.guard()
            # A deposed master releases nothing: the new master clears what the old
            # one held, and may already have handed these locks to a requeued job.
            if names and guard is not None:
                locks.release(self.store, job_id, names, guard)
        t.commit(lambda j: _op_done(j, idx, result, last, now()))

    def _guard(self) -> Guard:
        guard = self.ctx.guard()
        if guard is None:
            raise FencedOut("This node is no longer master.")
        return guard


class _Tracked:
    """A job being run, with the revision we last wrote: every change is one
    compare-and-swap, re-read only when someone else (a cancel) wrote in between."""

    def __init__(self, runner: JobRunner, job: Job, rev: int) -> None:
        self.runner = runner
        self.job = job
        self.rev = rev

    def status(self) -> JobStatus:
        return self.job.status

    def refresh(self) -> None:
        self.job, self.rev = jobqueue.read(self.runner.store, self.job.id)

    def commit(self, fn: Callable[[Job], Job]) -> bool:
        store = self.runner.store
        deadline = time.monotonic() + STORE_PATIENCE
        for _ in range(1000):
            new = fn(self.job)
            if new == self.job:
                return True
            try:
                rev = store.cas(Keys.job(new.id), jobqueue.dumps(new.to_json()), self.rev,
                                guard=self.runner._guard())
            except FencedOut:
                raise
            except StoreError:
                # etcd changing leader ("raft proposal dropped") or a write of unknown
                # outcome: re-read and apply again; the change is idempotent.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                self._refresh_patiently(deadline)
                continue
            if rev is not None:
                self.job, self.rev = new, rev
                return True
            self._refresh_patiently(deadline)
        raise StoreError(f"Could not update job {self.job.id}: too many concurrent writers.")

    def _refresh_patiently(self, deadline: float) -> None:
        while True:
            try:
                self.refresh()
                return
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _unless_final(fn: Callable[[Job], Job]) -> Callable[[Job], Job]:
    """Apply ``fn`` only to a job that has not finished: a listing may be stale, and a
    finished job's outcome is never rewritten."""
    return lambda j: j if j.status.finalized else fn(j)


def _finisher(status: JobStatus, message: str, now: float) -> Callable[[Job], Job]:
    return lambda j: jobqueue.finish(j, status, message, now)


_STOPPING = (JobStatus.CANCELING, JobStatus.CANCELED)


def _waiting(j: Job, idx: int) -> Job:
    if j.status == JobStatus.CANCELED:
        return j
    status = JobStatus.CANCELING if j.status == JobStatus.CANCELING else JobStatus.WAITING
    return replace(j.with_op(idx, OpStatus.WAITING), status=status)


def _running(j: Job, idx: int) -> Job:
    if j.status == JobStatus.CANCELED:
        return j
    status = JobStatus.CANCELING if j.status == JobStatus.CANCELING else JobStatus.RUNNING
    return replace(j.with_op(idx, OpStatus.RUNNING), status=status)


def _op_done(j: Job, idx: int, result: Any, last: bool, now: float) -> Job:
    out = j.with_op(idx, OpStatus.SUCCESS, result)
    if last:  # the last opcode's success is the job's, in the same write
        return replace(out, status=JobStatus.SUCCESS, end_ts=now)
    return out


def _set(values: tuple[Any, ...], idx: int, value: Any) -> tuple[Any, ...]:
    out = list(values)
    out[idx] = value
    return tuple(out)


def _resumable(job: Job) -> bool:
    try:
        return all(lu_class(op).resumable(op) for op, st in zip(job.ops, job.opstatus, strict=True)
                   if st != OpStatus.SUCCESS)
    except HavenError:
        return False


def _requeue(job: Job) -> Job:
    opstatus = tuple(s if s == OpStatus.SUCCESS else OpStatus.QUEUED for s in job.opstatus)
    return replace(job, status=JobStatus.QUEUED, opstatus=opstatus, master="")
