"""Job locks kept in the store (``locks/<resource>`` -> job id), so a new master sees
which jobs held what.  Exclusive only; every write is guarded by the master token."""

from __future__ import annotations

from haven.model.keys import LOCKS, Keys
from haven.store.base import Compare, Guard, Op, Put, Store
from haven.store.errors import OutcomeUnknown


def try_acquire(store: Store, job_id: int, names: list[str], guard: Guard) -> bool:
    """Take every lock in ``names`` in one transaction, or none of them.

    A transaction whose answer was lost (a member stopping under it when a vote moves)
    is tried once more: locks already ours count as free, so a first attempt that did
    land is found, not taken for another job's."""
    try:
        return _try_acquire(store, job_id, names, guard)
    except OutcomeUnknown:
        return _try_acquire(store, job_id, names, guard)


def _try_acquire(store: Store, job_id: int, names: list[str], guard: Guard) -> bool:
    if not names:
        return True
    mine = str(job_id).encode()
    # A lock already ours (re-acquired after a requeue) counts as free.
    compares = []
    for n in names:
        kv = store.get(Keys.lock(n))
        if kv is not None and kv.value != mine:
            return False
        compares.append(Compare(Keys.lock(n), "mod", "=", kv.mod_revision if kv else 0))
    compares.append(Compare(guard.key, "create", "=", guard.create_revision))
    res = store.txn(compares, [Put(Keys.lock(n), mine) for n in names])
    return res.succeeded


def take_over(store: Store, job_id: int, names: list[str], guard: Guard) -> dict[str, int]:
    """Take every lock in ``names`` whoever holds it (an HA recovery bypassing a user
    job stuck on a dead node); returns the previous holders."""
    before = {n: int(kv.value) for n in names if (kv := store.get(Keys.lock(n)))}
    compares = [Compare(guard.key, "create", "=", guard.create_revision)]
    puts: list[Op] = [Put(Keys.lock(n), str(job_id).encode()) for n in names]
    try:
        res = store.txn(compares, puts)
    except OutcomeUnknown:  # the same puts again: applying them twice changes nothing
        res = store.txn(compares, puts)
    if not res.succeeded:
        from haven.store.errors import FencedOut

        raise FencedOut("This node is no longer master.")
    return {n: j for n, j in before.items() if j != job_id}


def release(store: Store, job_id: int, names: list[str], guard: Guard | None) -> None:
    for n in names:
        kv = store.get(Keys.lock(n))
        if kv is not None and kv.value == str(job_id).encode():
            store.delete(Keys.lock(n), kv.mod_revision, guard=guard)


def held(store: Store) -> dict[str, int]:
    kvs, _ = store.list(LOCKS)
    return {kv.key[len(LOCKS):]: int(kv.value) for kv in kvs}
