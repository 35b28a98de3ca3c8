"""Waiting until a new replicated instance's replicas are in sync (Ganeti's
``WaitForSync``), with each disk's progress in the job log.

Who copies: the primary node's agent starts the mirror (the initial full sync) of a
*running* ``drbd`` instance that no job holds the lock of, and writes each replica's
state and percentage to ``replicas/<instance>``.  So the create job hands the
instance's lock back before it waits (the instance is created and started by then;
the wait only watches), and an instance created with ``--no-start`` is not waited
for: nothing copies the replica of a stopped instance until it starts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from haven.errors import OpExecError
from haven.master.lu import LogicalUnit
from haven.model.instance import Instance
from haven.model.keys import Keys
from haven.model.replica import INCONSISTENT, UP_TO_DATE, Replicas

POLL = 0.5
PROGRESS_EVERY = 2.0  # seconds between two progress lines in the job log
STALL_TIMEOUT = 120.0  # no progress for this long: the wait fails


def release_lock(lu: LogicalUnit, resource: str) -> None:
    """Hand back ``resource``'s lock before the opcode ends (the runner's own release
    then finds nothing of ours).  Only for a lock this job holds."""
    kv = lu.c.store.get(Keys.lock(resource))
    if kv is not None:
        lu.c.store.delete(kv.key, kv.mod_revision, guard=lu.require_guard())


def read(lu: LogicalUnit, name: str) -> Replicas | None:
    kv = lu.c.store.get(Keys.replicas(name))
    return Replicas.from_json(json.loads(kv.value)) if kv else None


def progress(inst: Instance, reps: Replicas | None) -> tuple[bool, list[str], float]:
    """(every replica UpToDate at the instance's generation, one Ganeti-style line per
    disk not in sync yet, the total percentage done)."""
    lines: list[str] = []
    total = 0.0
    count = 0
    for node in (inst.primary_node, *inst.secondary_nodes):
        for i in range(len(inst.disks)):
            count += 1
            r = reps.state(node, i) if reps is not None and \
                reps.generation == inst.generation else None
            if r is not None and r.state == UP_TO_DATE:
                total += 100.0
                continue
            if r is None:
                lines.append(f"- device disk/{i} on {node}: no state at generation "
                             f"{inst.generation} yet")
            elif r.state == INCONSISTENT:
                total += r.percent
                lines.append(f"- device disk/{i}: {r.percent:.1f}% done")
            else:
                lines.append(f"- device disk/{i} on {node}: {r.state}"
                             + (f" ({r.message})" if r.message else ""))
    return not lines, lines, (total / count if count else 100.0)


def rate_line(percent: float, before: float, size_mib: int, seconds: float) -> str:
    """One line of the whole sync's progress: percent, rate and what is left."""
    rate = max(percent - before, 0.0) / 100 * size_mib / seconds
    left = (100 - percent) / 100 * size_mib
    eta = f", about {left / rate:.0f} s left" if rate > 0 else ", stalled"
    return f"{percent:.1f}% synced, {rate:.1f} MiB/s{eta}"


def wait_for_sync(lu: LogicalUnit, inst: Instance, stall_timeout: float = STALL_TIMEOUT,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> None:
    """Block until every replica of ``inst`` is ``UpToDate`` at its generation, logging
    each disk's progress every :data:`PROGRESS_EVERY` s; raise :class:`OpExecError` when
    a replica is lost (``Outdated``) or the sync makes no progress for
    ``stall_timeout`` s."""
    lu.feedback(f"- INFO: Waiting for instance {inst.name} to sync disks")
    best = last_percent = -1.0
    last_progress = last_line = clock()
    first = True
    while True:
        ikv = lu.c.store.get(Keys.instance(inst.name))
        if ikv is None:
            raise OpExecError(f"Instance {inst.name} was removed while its disks were "
                              f"syncing.")
        # Re-read: a job may have moved it (a failover changes the generation).
        inst = Instance.from_json(json.loads(ikv.value))
        done, lines, percent = progress(inst, read(lu, inst.name))
        if done:
            lu.feedback(f"- INFO: Instance {inst.name}'s disks are in sync")
            return
        now = clock()
        lost = [ln for ln in lines if " Outdated" in ln]
        if lost:
            raise OpExecError(
                f"Instance {inst.name} was created but its replica is not in sync "
                f"({lost[0][2:]}); bring the secondary back, then check gnt-instance "
                f"info {inst.name} (or gnt-instance replace-disks {inst.name}).")
        if percent > best:
            best, last_progress = percent, now
        elif now - last_progress >= stall_timeout:
            raise OpExecError(
                f"Instance {inst.name} was created but its replica sync made no progress "
                f"for {stall_timeout:g} s ({'; '.join(ln[2:] for ln in lines)}); check "
                f"that its secondary node {', '.join(inst.secondary_nodes)} is up and "
                f"watch gnt-instance info {inst.name}.")
        if first or now - last_line >= PROGRESS_EVERY:
            for ln in lines:
                lu.feedback(f"- INFO: {ln}")
            size = sum(d.size for d in inst.disks) * (1 + len(inst.secondary_nodes))
            if not first and size and now > last_line:
                lu.feedback("- INFO: " + rate_line(percent, last_percent, size,
                                                   now - last_line))
            last_line, last_percent, first = now, percent, False
        sleep(POLL)
