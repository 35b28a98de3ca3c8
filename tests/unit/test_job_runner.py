"""JobRunner on an in-memory store: phases, locks, cancel, takeover and fencing.

Every test runs a real master: a LeaseKeeper (fake clock, no thread) and an Election on
a MemoryStore, and the runner's guard is the election's.  A previous master (node00)
held the key before and was revoked, so ``Master.stale`` is a genuinely stale token.
Test-only LUs (``OP_TEST_UNIT_*``) record what ran, wait on gates the test opens, and
note any two jobs inside ``exec`` under one lock at the same time.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import pytest

import haven.master.opcodes  # noqa: F401  (registers OP_TEST_DELAY and the others)
from haven.api import routes
from haven.cli.common import job_error
from haven.errors import InvalidInput, OpExecError, OpPrereqError
from haven.master import jobqueue, locks
from haven.master.lu import REQUIRED, LogicalUnit, MasterContext, check_job, register
from haven.master.runner import JobRunner
from haven.model.job import Job, JobStatus, OpStatus
from haven.model.keys import Keys
from haven.store import Election, FencedOut, Guard, LeaseKeeper, MemoryStore
from tests.unit.support import FakeClock, NoRpc, stays, wait_for

# -- test-only logical units -------------------------------------------------------------


class Recorder:
    """What the test LUs did, in order ("+a" entered exec, "-a" left it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[str] = []
        self.overlaps: list[str] = []
        self._inside: dict[str, set[str]] = {}
        self._gates: dict[str, threading.Event] = {}

    def enter(self, name: str, lock: str) -> None:
        with self._lock:
            self.events.append(f"+{name}")
            if lock:
                holders = self._inside.setdefault(lock, set())
                if holders:
                    self.overlaps.append(f"{name} entered {lock} held by {sorted(holders)}")
                holders.add(name)

    def leave(self, name: str, lock: str) -> None:
        with self._lock:
            self.events.append(f"-{name}")
            if lock:
                self._inside[lock].discard(name)

    def gate(self, name: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def open(self, name: str) -> None:
        self.gate(name).set()

    def open_all(self) -> None:
        with self._lock:
            gates = list(self._gates.values())
        for g in gates:
            g.set()

    def entered(self, name: str) -> bool:
        with self._lock:
            return f"+{name}" in self.events

    @property
    def ran(self) -> list[str]:
        with self._lock:
            return [e[1:] for e in self.events if e.startswith("+")]


@register
class StepLU(LogicalUnit):
    """Records itself; takes lock ``lock``; with ``wait`` stays in exec until its gate
    opens.  Its result is its name."""

    OP_ID = "OP_TEST_UNIT_STEP"
    RESUMABLE = True
    PARAMS = {"name": (str, REQUIRED), "lock": (str, ""), "wait": (bool, False)}  # noqa: RUF012

    def lock_names(self) -> list[str]:
        return [self.op["lock"]] if self.op["lock"] else []

    def exec(self) -> Any:
        rec: Recorder = self.c.extras["recorder"]
        name, lock = self.op["name"], self.op["lock"]
        rec.enter(name, lock)
        try:
            self.feedback(f"step {name}")
            if self.op["wait"] and not rec.gate(name).wait(5):
                raise OpExecError(f"The gate of step {name} was never opened.")
        finally:
            rec.leave(name, lock)
        return name


@register
class OnceLU(StepLU):
    """Like a step, but not safe to run twice (a new master must not resume it)."""

    OP_ID = "OP_TEST_UNIT_ONCE"
    RESUMABLE = False


@register
class PrereqFailLU(StepLU):
    OP_ID = "OP_TEST_UNIT_PREREQ_FAIL"

    def check_prereq(self) -> None:
        name = self.op["name"]
        raise OpPrereqError(f"Node {name} is down; start it with 'haven start {name}'.")


@register
class CrashLU(StepLU):
    """An LU with a bug: exec raises something that is not a HavenError."""

    OP_ID = "OP_TEST_UNIT_CRASH"

    def exec(self) -> Any:
        super().exec()
        raise RuntimeError("list index out of range")


def step(name: str, lock: str = "", wait: bool = False, op_id: str = "OP_TEST_UNIT_STEP"
         ) -> dict[str, Any]:
    return {"OP_ID": op_id, "name": name, "lock": lock, "wait": wait}


# -- a master on a memory store ----------------------------------------------------------


@dataclass
class Master:
    store: MemoryStore
    clock: FakeClock
    election: Election
    ctx: MasterContext
    stale: Guard  # the token of the previous master, node00
    rec: Recorder
    runners: list[JobRunner] = field(default_factory=list)

    def runner(self, guard: Callable[[], Guard | None] | None = None,
               start: bool = True) -> JobRunner:
        ctx = self.ctx if guard is None else replace(self.ctx, guard=guard)
        r = JobRunner(ctx)
        self.runners.append(r)
        if start:
            r.start()
        return r

    def submit(self, *ops: dict[str, Any]) -> int:
        return jobqueue.submit(self.store, check_job(list(ops)), now=self.clock())

    def job(self, job_id: int) -> Job:
        return jobqueue.read(self.store, job_id)[0]

    def wait_status(self, job_id: int, status: JobStatus) -> Job:
        wait_for(lambda: self.job(job_id).status == status, what=f"job {job_id} {status}")
        return self.job(job_id)

    def wait_final(self, job_id: int) -> Job:
        wait_for(lambda: self.job(job_id).status.finalized, what=f"job {job_id} finished")
        return self.job(job_id)

    def left_by_dead_master(self, ops: list[dict[str, Any]], opstatus: list[OpStatus],
                            opresult: list[Any] | None = None,
                            status: JobStatus = JobStatus.RUNNING) -> int:
        """A job as node00 left it when it died (written before any runner starts)."""
        job_id = self.submit(*ops)
        jobqueue.update(self.store, job_id, lambda j: replace(
            j, status=status, opstatus=tuple(opstatus), master="node00",
            opresult=tuple(opresult) if opresult else j.opresult, start_ts=self.clock()))
        return job_id


def _election(store: MemoryStore, clock: FakeClock, node: str) -> tuple[Election, LeaseKeeper]:
    keeper = LeaseKeeper(store, ttl=10, margin=1.0, clock=clock, run_thread=False)
    election = Election(store, "master", lease=keeper, value=json.dumps({"node": node}).encode())
    return election, keeper


@pytest.fixture
def master(clock: FakeClock) -> Iterator[Master]:
    store = MemoryStore("/haven/unit/", clock=clock)
    old, old_keeper = _election(store, clock, "node00")
    old_token = old.campaign_once()
    assert old_token is not None
    old_keeper.stop(revoke=True)  # node00 is gone, and with it its master key
    election, _ = _election(store, clock, "node01")
    token = election.campaign_once()
    assert token is not None and token > old_token
    rec = Recorder()
    ctx = MasterContext(store=store, guard=lambda: election.guard, master_node="node01",
                        rpc=NoRpc(), clock=clock, extras={"recorder": rec})
    m = Master(store, clock, election, ctx, Guard("master", old_token), rec)
    yield m
    rec.open_all()
    for r in m.runners:
        r.stop(wait=2)
    store.close()


# -- running jobs ------------------------------------------------------------------------


def test_trivial_delay_job_reaches_success_with_its_result(master: Master) -> None:
    job_id = master.submit({"OP_ID": "OP_TEST_DELAY", "duration": 0})
    master.runner()
    job = master.wait_final(job_id)
    assert (job.status, job.opstatus, job.opresult) == (
        JobStatus.SUCCESS, (OpStatus.SUCCESS,), (None,))
    assert (job.master, job.start_ts, job.end_ts) == ("node01", 1000.0, 1000.0)
    assert job.summary == ["TEST_DELAY(0.0)"]


def test_opcodes_of_one_job_run_in_order_each_with_its_result_and_log(master: Master) -> None:
    job_id = master.submit(step("a"), step("b"), step("c"))
    master.runner()
    job = master.wait_final(job_id)
    assert job.status == JobStatus.SUCCESS
    assert master.rec.ran == ["a", "b", "c"]
    assert job.opstatus == (OpStatus.SUCCESS,) * 3
    assert job.opresult == ("a", "b", "c")
    entries = [entry for log in job.oplog for entry in log]
    assert [e[3] for e in entries] == ["step a", "step b", "step c"]
    assert [e[0] for e in entries] == [1, 2, 3]


@pytest.mark.parametrize(("ops", "message"), [
    pytest.param([{"OP_ID": "OP_NO_SUCH_THING"}], "Unknown opcode 'OP_NO_SUCH_THING'",
                 id="unknown opcode"),
    pytest.param([{"duration": 1.0}], "Unknown opcode None", id="no opcode id"),
    pytest.param([{"OP_ID": "OP_TEST_DELAY", "duration": "soon"}],
                 "Parameter 'duration' of OP_TEST_DELAY has the wrong type: 'soon'.",
                 id="wrong type"),
    pytest.param([{"OP_ID": "OP_TEST_DELAY", "repeat": True}],
                 "Parameter 'repeat' of OP_TEST_DELAY has the wrong type: True.",
                 id="bool is not an int"),
    pytest.param([{"OP_ID": "OP_TEST_DELAY", "bogus": 1, "also": 2}],
                 "OP_TEST_DELAY does not take parameter(s) also, bogus.",
                 id="unknown parameters"),
    pytest.param([{"OP_ID": "OP_TEST_UNIT_STEP"}],
                 "OP_TEST_UNIT_STEP needs the parameter 'name'.", id="missing parameter"),
    pytest.param([{"OP_ID": "OP_TEST_DELAY", "duration": -1}],
                 "Delay -1.0 s is out of range (0-3600).", id="extra check of the LU"),
    pytest.param([], "A job needs a non-empty list of opcodes.", id="no opcodes"),
    pytest.param({"OP_ID": "OP_TEST_DELAY"}, "A job needs a non-empty list of opcodes.",
                 id="not a list"),
])
def test_check_job_refuses_a_bad_opcode_with_invalid_input(ops: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_job(ops)
    assert message in err.value.message


def test_check_job_fills_defaults_and_widens_int_to_float() -> None:
    [op] = check_job([{"OP_ID": "OP_TEST_DELAY", "duration": 2}])
    assert op["duration"] == 2.0 and isinstance(op["duration"], float)
    assert (op["on_master"], op["on_nodes"], op["repeat"]) == (True, [], 0)


def test_a_job_with_one_bad_opcode_is_never_queued(master: Master) -> None:
    daemon = SimpleNamespace(store=lambda: master.store)
    with pytest.raises(InvalidInput, match="wrong type"):
        routes.submit(daemon, [step("a"), {"OP_ID": "OP_TEST_DELAY", "duration": "x"}])  # type: ignore[arg-type]
    assert master.store.list("jobs/")[0] == []
    assert master.store.get(Keys.counter("job")) is None, "no job id was even taken"


def test_prereq_failure_ends_the_job_in_error_and_fails_the_later_opcodes(
        master: Master) -> None:
    job_id = master.submit(step("a"), step("node07", lock="node/node07",
                                           op_id="OP_TEST_UNIT_PREREQ_FAIL"), step("c"))
    master.runner()
    job = master.wait_final(job_id)
    message = "Node node07 is down; start it with 'haven start node07'."
    assert job.status == JobStatus.ERROR
    assert job.opstatus == (OpStatus.SUCCESS, OpStatus.ERROR, OpStatus.ERROR)
    assert job.opresult == ("a", ["OpPrereqError", [message, "wrong_state"]], None)
    assert [e[3] for e in job.oplog[1]] == [message]
    assert master.rec.ran == ["a"], "neither the failing LU's exec nor c ran"
    assert locks.held(master.store) == {}, "the failed opcode's lock was released"
    # The CLI rebuilds the same error from the RAPI form of the job.
    err = job_error(routes.job_dict(job))
    assert (type(err), err.message, err.ecode) == (OpPrereqError, message, "wrong_state")


def test_an_lu_that_crashes_ends_the_job_in_error(master: Master) -> None:
    job_id = master.submit(step("x", lock="node/x", op_id="OP_TEST_UNIT_CRASH"))
    runner = master.runner()
    wait_for(lambda: master.rec.entered("x"), what="the crashing LU ran")
    wait_for(lambda: not runner.busy(), what="the job thread ended")
    assert locks.held(master.store) == {}
    job = master.job(job_id)
    assert (job.status, job.opstatus) == (JobStatus.ERROR, (OpStatus.ERROR,))


# -- locks ---------------------------------------------------------------------------------


def test_two_jobs_needing_the_same_lock_never_run_at_the_same_time(master: Master) -> None:
    first = master.submit(step("a", lock="node/node02", wait=True))
    master.runner()
    wait_for(lambda: master.rec.entered("a"), what="a inside exec")
    second = master.submit(step("b", lock="node/node02"))
    job = master.wait_status(second, JobStatus.WAITING)
    assert job.opstatus == (OpStatus.WAITING,)
    assert not master.rec.entered("b")
    assert locks.held(master.store) == {"node/node02": first}
    master.rec.open("a")
    assert master.wait_final(first).status == JobStatus.SUCCESS
    assert master.wait_final(second).status == JobStatus.SUCCESS
    assert master.rec.events == ["+a", "-a", "+b", "-b"]
    assert master.rec.overlaps == []
    assert locks.held(master.store) == {}


def test_jobs_with_different_locks_run_in_parallel(master: Master) -> None:
    a = master.submit(step("a", lock="node/node02", wait=True))
    b = master.submit(step("b", lock="node/node03", wait=True))
    master.runner()
    wait_for(lambda: master.rec.entered("a") and master.rec.entered("b"),
             what="both jobs inside exec at once")
    assert locks.held(master.store) == {"node/node02": a, "node/node03": b}
    master.rec.open_all()
    assert master.wait_final(a).status == master.wait_final(b).status == JobStatus.SUCCESS
    assert master.rec.overlaps == []
    assert locks.held(master.store) == {}


# -- cancel --------------------------------------------------------------------------------


def test_cancel_of_a_queued_job_gives_canceled_and_it_never_runs(master: Master) -> None:
    job_id = master.submit(step("a"))
    assert jobqueue.cancel(master.store, job_id, now=1000.0) == (True, f"Job {job_id} canceled")
    job = master.job(job_id)
    assert (job.status, job.opstatus) == (JobStatus.CANCELED, (OpStatus.CANCELED,))
    master.runner()
    sentinel = master.submit(step("sentinel"))
    assert master.wait_final(sentinel).status == JobStatus.SUCCESS
    assert master.job(job_id).status == JobStatus.CANCELED
    assert master.rec.ran == ["sentinel"]
    # Canceling again is idempotent; a finished job cannot be canceled.
    assert jobqueue.cancel(master.store, job_id) == (True, f"Job {job_id} canceled")
    with pytest.raises(OpPrereqError) as err:
        jobqueue.cancel(master.store, sentinel)
    assert err.value.message == f"Job {sentinel} is already success and cannot be canceled."


def _blocked_waiter(master: Master) -> tuple[int, int]:
    holder = master.submit(step("a", lock="node/node02", wait=True))
    master.runner()
    wait_for(lambda: master.rec.entered("a"), what="a holds the lock")
    waiter = master.submit(step("b", lock="node/node02"))
    master.wait_status(waiter, JobStatus.WAITING)
    return holder, waiter


def test_cancel_of_a_lock_waiting_job_ends_canceled_and_keeps_the_holders_lock(
        master: Master) -> None:
    holder, waiter = _blocked_waiter(master)
    assert jobqueue.cancel(master.store, waiter) == (True, f"Job {waiter} canceled")
    job = master.job(waiter)
    assert (job.status, job.opstatus) == (JobStatus.CANCELED, (OpStatus.CANCELED,))
    assert locks.held(master.store) == {"node/node02": holder}
    assert master.job(holder).status == JobStatus.RUNNING


def test_a_canceled_lock_waiting_job_does_not_run_when_the_lock_frees(master: Master) -> None:
    holder, waiter = _blocked_waiter(master)
    jobqueue.cancel(master.store, waiter)
    master.rec.open("a")
    assert master.wait_final(holder).status == JobStatus.SUCCESS
    assert stays(lambda: not master.rec.entered("b"), 0.3), "the canceled job ran"
    assert master.job(waiter).status == JobStatus.CANCELED
    assert locks.held(master.store) == {}


def test_cancel_of_a_running_job_stops_it_before_its_next_opcode(master: Master) -> None:
    job_id = master.submit(step("a", wait=True), step("b"))
    master.runner()
    wait_for(lambda: master.rec.entered("a"), what="a running")
    assert jobqueue.cancel(master.store, job_id) == (
        True, f"Job {job_id} will be canceled at its next opcode")
    assert master.job(job_id).status == JobStatus.CANCELING
    master.rec.open("a")
    job = master.wait_final(job_id)
    assert (job.status, job.opstatus) == (
        JobStatus.CANCELED, (OpStatus.SUCCESS, OpStatus.CANCELED))
    assert master.rec.ran == ["a"]


# -- takeover ------------------------------------------------------------------------------


@pytest.mark.parametrize("left", [JobStatus.RUNNING, JobStatus.WAITING])
def test_takeover_requeues_a_resumable_job_of_a_dead_master_and_it_completes(
        master: Master, left: JobStatus) -> None:
    job_id = master.left_by_dead_master([step("a", lock="node/node02")],
                                        [OpStatus(str(left))], status=left)
    master.store.put(Keys.lock("node/node02"), str(job_id).encode())
    runner = master.runner(start=False)
    assert runner.takeover() == f"takeover: requeued [{job_id}], failed none"
    job = master.job(job_id)
    assert (job.status, job.opstatus, job.master) == (
        JobStatus.QUEUED, (OpStatus.QUEUED,), "")
    runner.start()
    job = master.wait_final(job_id)
    assert (job.status, job.master, job.opresult) == (JobStatus.SUCCESS, "node01", ("a",))
    assert master.rec.ran == ["a"]


def test_takeover_resumes_after_the_opcodes_the_dead_master_finished(master: Master) -> None:
    job_id = master.left_by_dead_master([step("a"), step("b")],
                                        [OpStatus.SUCCESS, OpStatus.RUNNING], ["a", None])
    master.runner()
    job = master.wait_final(job_id)
    assert (job.status, job.opresult) == (JobStatus.SUCCESS, ("a", "b"))
    assert master.rec.ran == ["b"], "the finished opcode was not run again"


def test_takeover_fails_a_non_resumable_job_naming_the_old_master_and_verify(
        master: Master) -> None:
    job_id = master.left_by_dead_master([step("a"), step("b", op_id="OP_TEST_UNIT_ONCE")],
                                        [OpStatus.SUCCESS, OpStatus.RUNNING], ["a", None])
    runner = master.runner(start=False)
    assert runner.takeover() == f"takeover: requeued none, failed [{job_id}]"
    job = master.job(job_id)
    assert (job.status, job.opstatus) == (JobStatus.ERROR, (OpStatus.SUCCESS, OpStatus.ERROR))
    kind, [message] = job.opresult[1]
    assert kind == "OpExecError"
    for part in ("The master node node00 stopped", "opcode 1 (OP_TEST_UNIT_ONCE)",
                 "'gnt-cluster verify'"):
        assert part in message
    assert job.opresult[0] == "a"
    runner.start()
    assert stays(lambda: master.job(job_id).status == JobStatus.ERROR, 0.1)
    assert master.rec.ran == []


def test_takeover_finishes_a_canceling_job_as_canceled(master: Master) -> None:
    job_id = master.left_by_dead_master([step("a"), step("b")],
                                        [OpStatus.SUCCESS, OpStatus.RUNNING], ["a", None],
                                        status=JobStatus.CANCELING)
    runner = master.runner(start=False)
    assert runner.takeover() == f"takeover: requeued none, failed [{job_id}]"
    job = master.job(job_id)
    assert (job.status, job.opstatus) == (
        JobStatus.CANCELED, (OpStatus.SUCCESS, OpStatus.CANCELED))


def test_takeover_removes_stale_locks(master: Master) -> None:
    done = master.submit(step("a"))
    jobqueue.update(master.store, done, lambda j: jobqueue.finish(
        j, JobStatus.SUCCESS, "done", 900.0))
    master.store.put(Keys.lock("cluster-membership"), str(done).encode())
    master.store.put(Keys.lock("node/node09"), b"77")  # a job that no longer exists
    runner = master.runner(start=False)
    assert runner.takeover() == "takeover: requeued none, failed none"
    assert locks.held(master.store) == {}


# -- fencing -------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["not master", "stale token"])
def test_a_runner_that_is_not_master_never_changes_a_job(
        master: Master, who: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="haven.master.runner")
    guard: Callable[[], Guard | None] = (lambda: None) if who == "not master" \
        else (lambda: master.stale)
    job_id = master.submit(step("a"))
    before = master.store.get(Keys.job(job_id))
    runner = master.runner(guard=guard, start=False)
    if who == "not master":
        assert runner.takeover() == "not master"
    runner.start()
    wait_for(lambda: f"job {job_id}: no longer master" in caplog.text,
             what="the runner tried and was refused")
    assert master.store.get(Keys.job(job_id)) == before
    assert master.rec.ran == []


def test_a_write_guarded_with_a_stale_token_raises_fenced_out(master: Master) -> None:
    job_id = master.submit(step("a"))
    stale = master.stale.create_revision
    with pytest.raises(FencedOut, match=f"no longer held with token {stale};"):
        jobqueue.update(master.store, job_id, lambda j: replace(j, master="node00"),
                        master.stale)
    assert master.job(job_id).master == ""
    current = master.election.guard
    assert current is not None and current.create_revision > master.stale.create_revision
    assert jobqueue.update(master.store, job_id, lambda j: replace(j, master="node01"),
                           current).master == "node01"


def _finished_long_ago(master: Master) -> int:
    job_id = master.submit(step("old"))
    jobqueue.update(master.store, job_id, lambda j: jobqueue.finish(
        j, JobStatus.SUCCESS, "done", master.clock() - 7 * 3600))
    return job_id


def test_the_master_archives_jobs_finished_more_than_six_hours_ago(master: Master) -> None:
    old = _finished_long_ago(master)
    recent = master.submit(step("recent"))
    master.runner()
    wait_for(lambda: master.store.get(Keys.job(old)) is None, what="the old job archived")
    assert master.wait_final(recent).status == JobStatus.SUCCESS


def test_a_runner_that_is_not_master_never_archives_jobs(master: Master) -> None:
    old = _finished_long_ago(master)
    master.runner(guard=lambda: None)
    assert stays(lambda: master.store.get(Keys.job(old)) is not None, 0.3)


def test_a_deposed_runner_never_releases_a_lock(master: Master) -> None:
    current: dict[str, Callable[[], Guard | None]] = {"guard": master.ctx.guard}
    job_id = master.submit(step("a", lock="node/node02", wait=True))
    runner = master.runner(guard=lambda: current["guard"]())
    wait_for(lambda: master.rec.entered("a"), what="a running under the lock")
    current["guard"] = lambda: None  # node01's lease ran out while a was running ...
    # ... and the new master requeued the job and took its lock again.
    master.store.put(Keys.lock("node/node02"), str(job_id).encode())
    master.rec.open("a")
    wait_for(lambda: not runner.busy(), what="the deposed job thread ended")
    assert locks.held(master.store) == {"node/node02": job_id}


def test_a_stale_listing_never_rewrites_a_finished_job(master: Master) -> None:
    """The orphan sweep lists jobs, then adopts those no thread of ours runs; a job that
    finished between the listing and the adoption keeps its outcome."""
    job_id = master.submit(step("done"))
    r = master.runner()
    done = master.wait_final(job_id)
    assert done.status == JobStatus.SUCCESS
    stale_view = replace(done, status=JobStatus.RUNNING, opstatus=(OpStatus.RUNNING,))
    guard = master.ctx.guard()
    assert guard is not None
    r._adopt(stale_view, guard, master.clock())
    assert master.job(job_id).status == JobStatus.SUCCESS


def test_a_job_whose_thread_died_while_we_stay_master_is_adopted(master: Master) -> None:
    """A store outage can end a job's thread mid-way; the next scan adopts the job as a
    new master would (here: run again, being resumable)."""
    job_id = master.left_by_dead_master([step("orphan")], [OpStatus.RUNNING])
    jobqueue.update(master.store, job_id, lambda j: replace(j, master="node01"))
    r = master.runner(start=False)
    r._scan()  # adopts it: requeued
    assert master.job(job_id).status == JobStatus.QUEUED
    r._scan()  # and runs it
    job = master.wait_final(job_id)
    assert job.status == JobStatus.SUCCESS and master.rec.ran == ["orphan"]


# -- interrupted migrations ----------------------------------------------------------------


def test_an_interrupted_migration_without_a_job_gets_one_cleanup_job(master: Master) -> None:
    master.store.put("migrations/vm1", b'{"step": "migrate", "source": "a", "target": "b"}')
    master.store.put("migrations/vm2", b'{"step": "accept", "source": "a", "target": "b"}')
    master.store.put(Keys.lock("instance/vm2"), b"41")  # its migration job still runs
    runner = master.runner(start=False)
    runner._scan()
    runner._scan()  # once, not once per scan
    jobs = [j for j in jobqueue.list_jobs(master.store) if j.ops[0]["OP_ID"] ==
            "OP_INSTANCE_MIGRATE"]
    assert [(j.ops[0]["instance_name"], j.ops[0]["cleanup"]) for j in jobs] == [("vm1", True)]


def test_a_failed_cleanup_is_tried_again_at_once_when_a_node_comes_back(
        master: Master) -> None:
    # A cleanup that could not ask a down node is retried with a growing delay, but a
    # node's return is what it waits for: then at once (a crashed VM is not restarted
    # while the record stays, so minutes of backoff left it down).
    master.store.put("migrations/vm1", b'{"step": "migrate", "source": "a", "target": "b"}')
    runner = master.runner(start=False)

    def cleanups() -> int:
        return sum(1 for j in jobqueue.list_jobs(master.store)
                   if j.ops[0]["OP_ID"] == "OP_INSTANCE_MIGRATE")

    runner._scan()
    assert cleanups() == 1
    master.clock.advance(5)
    runner._scan()
    assert cleanups() == 1  # not before its delay
    master.store.put(Keys.alive("b"), b"{}")  # node b is back
    runner._scan()
    assert cleanups() == 2
    runner._scan()
    assert cleanups() == 2  # once per change


def test_a_job_started_by_the_watcher_and_the_scan_at_once_runs_once(
        master: Master, monkeypatch: pytest.MonkeyPatch) -> None:
    # The watcher's event and the first scan both start a queued job.  A thread that
    # one of them registered is not alive until started: it must still count as taken
    # (a NODE_ADD ran twice this way: "node02 is already in the cluster").
    import time

    real_thread = threading.Thread
    started: list[str] = []

    class SlowStart(real_thread):
        def start(self) -> None:
            started.append(self.name)
            time.sleep(0.05)
            super().start()

    job_id = master.submit(step("a"))
    r = master.runner(start=False)
    callers = [real_thread(target=r._start_job, args=(job_id,)) for _ in range(2)]
    monkeypatch.setattr(threading, "Thread", SlowStart)
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    job = master.wait_final(job_id)
    assert job.status == JobStatus.SUCCESS
    assert master.rec.events.count("+a") == 1, master.rec.events
    assert started.count(f"job-{job_id}") == 1, started
