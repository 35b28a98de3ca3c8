"""Jobs in the store: submit, read, update by compare-and-swap, cancel.

Any node's API submits (a job is just a key); only the master runs them.  Job ids come
from a counter advanced by compare-and-swap, so they are unique and increasing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from haven.errors import NotFoundError, OpPrereqError
from haven.model.job import Job, JobStatus, OpStatus
from haven.model.keys import JOBS, Keys
from haven.store.base import Guard, Store
from haven.store.errors import StoreError


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def next_id(store: Store, counter: str = "job") -> int:
    """Advance a counter key by CAS and return the new value."""
    key = Keys.counter(counter)
    for _ in range(100):
        kv = store.get(key)
        current = int(kv.value) if kv else 0
        if store.cas(key, str(current + 1).encode(), kv.mod_revision if kv else 0):
            return current + 1
    raise StoreError(f"Could not advance counter {counter!r}: too many concurrent writers.")


def submit(store: Store, ops: list[dict[str, Any]], now: float | None = None) -> int:
    """Store a new queued job and return its id."""
    job_id = next_id(store)
    job = Job.new(job_id, ops, time.time() if now is None else now)
    if store.create(Keys.job(job_id), dumps(job.to_json())) is None:
        raise StoreError(f"Job {job_id} already exists; the job counter was reset.")
    return job_id


def read(store: Store, job_id: int) -> tuple[Job, int]:
    kv = store.get(Keys.job(job_id))
    if kv is None:
        raise NotFoundError(f"Job {job_id} does not exist (it may have been archived).")
    return Job.from_json(json.loads(kv.value)), kv.mod_revision


def list_jobs(store: Store) -> list[Job]:
    kvs, _ = store.list(JOBS)
    return [Job.from_json(json.loads(kv.value)) for kv in kvs]


def update(store: Store, job_id: int, fn: Callable[[Job], Job],
           guard: Guard | None = None) -> Job:
    """Read-modify-CAS ``fn`` on a job until it lands; returns the job as written."""
    for _ in range(50):
        job, rev = read(store, job_id)
        new = fn(job)
        if new == job:
            return job
        if store.cas(Keys.job(job_id), dumps(new.to_json()), rev, guard=guard) is not None:
            return new
    raise StoreError(f"Could not update job {job_id}: too many concurrent writers.")


def cancel(store: Store, job_id: int, now: float | None = None) -> tuple[bool, str]:
    """Cancel a job not yet running, or ask a running one to stop at the next opcode.

    Returns ``(success, message)`` as Ganeti's ``CancelJob`` does.
    """
    when = time.time() if now is None else now

    def change(job: Job) -> Job:
        if job.status in (JobStatus.QUEUED, JobStatus.WAITING):
            return finish(job, JobStatus.CANCELED, "Job canceled by request", when)
        if job.status == JobStatus.RUNNING:
            from dataclasses import replace
            return replace(job, status=JobStatus.CANCELING)
        return job

    job = update(store, job_id, change)
    if job.status == JobStatus.CANCELED:
        return True, f"Job {job_id} canceled"
    if job.status == JobStatus.CANCELING:
        return True, f"Job {job_id} will be canceled at its next opcode"
    raise OpPrereqError(f"Job {job_id} is already {job.status} and cannot be canceled.")


def finish(job: Job, status: JobStatus, message: str, now: float) -> Job:
    """Mark a job and its unfinished opcodes final, logging ``message`` on the first."""
    from dataclasses import replace

    op_final = {JobStatus.CANCELED: OpStatus.CANCELED, JobStatus.ERROR: OpStatus.ERROR,
                JobStatus.SUCCESS: OpStatus.SUCCESS}[status]
    opstatus = tuple(s if s in (OpStatus.SUCCESS, OpStatus.ERROR, OpStatus.CANCELED)
                     else op_final for s in job.opstatus)
    idx = next((i for i, s in enumerate(job.opstatus)
                if s not in (OpStatus.SUCCESS,)), 0)
    out = replace(job, status=status, opstatus=opstatus, end_ts=now)
    if job.ops:
        out = out.with_log(idx, message, now, "message")
        if status == JobStatus.ERROR:
            results = list(out.opresult)
            results[idx] = ["OpExecError", [message]]
            out = replace(out, opresult=tuple(results))
    return out
