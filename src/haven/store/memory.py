"""An in-process :class:`~haven.store.base.Store` with etcd's semantics, for unit tests.

One lock guards the whole keyspace, so every method is atomic the way an etcd request
is.  It keeps a real revision counter, the history of changes (for watches, until
:meth:`MemoryStore.compact`) and leases that expire on an injected ``clock``: expiry is
checked lazily at every call and by :meth:`MemoryStore.expire_leases`, so a test with
a fake clock decides exactly when a lease dies.

Several ``MemoryStore`` objects can share one keyspace (:meth:`MemoryStore.clone_view`),
each with its own prefix and reachability, so a unit test can run several "daemons"
against one store and cut one of them off (:meth:`MemoryStore.set_reachable`).
"""

from __future__ import annotations

import bisect
import itertools
import operator
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from haven.store.base import (
    Compare,
    Delete,
    Get,
    KeyValue,
    Op,
    Put,
    Store,
    TxnResult,
    Watch,
    WatchEvent,
)
from haven.store.errors import Compacted, LeaseExpired, StoreError, StoreUnavailable

MIN_TTL = 2  # etcd 3.4 grants at least 2 s, whatever is asked (measured)


@dataclass
class _Lease:
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


class _State:
    """The keyspace shared by every view.  Keys here are full keys (prefix included)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.cond = threading.Condition(threading.Lock())
        self.revision = 1  # an empty etcd is at revision 1; the first write makes it 2
        self.compacted = 0  # history before this revision is gone
        self.data: dict[str, KeyValue] = {}
        self.history: list[WatchEvent] = []
        self.leases: dict[int, _Lease] = {}
        # Lease ids look like etcd's (large, opaque) without being random, so that
        # tests are reproducible.
        self.lease_ids = itertools.count(0x694D_0000_0000_0001)

    # -- called with the lock held -------------------------------------------------
    def expire(self) -> None:
        now = self.clock()
        for lease_id in [i for i, le in self.leases.items() if now >= le.deadline]:
            self.revoke(lease_id)

    def revoke(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None or not lease.keys:
            return
        # etcd deletes all keys of a lease in one revision.
        self.revision += 1
        for key in sorted(lease.keys):
            if key in self.data:
                self._delete(key)
        self.cond.notify_all()

    def _delete(self, key: str) -> None:
        old = self.data.pop(key)
        if old.lease and old.lease in self.leases:
            self.leases[old.lease].keys.discard(key)
        self.history.append(WatchEvent("DELETE", KeyValue(key, b"", 0, self.revision, 0)))

    def _put(self, key: str, value: bytes, lease: int) -> None:
        old = self.data.get(key)
        if old is not None and old.lease and old.lease in self.leases:
            self.leases[old.lease].keys.discard(key)
        if lease:
            self.leases[lease].keys.add(key)
        kv = KeyValue(
            key=key,
            value=value,
            create_revision=old.create_revision if old else self.revision,
            mod_revision=self.revision,
            version=old.version + 1 if old else 1,
            lease=lease,
        )
        self.data[key] = kv
        self.history.append(WatchEvent("PUT", kv))

    def matching(self, key: str, prefix: bool) -> list[KeyValue]:
        if not prefix:
            kv = self.data.get(key)
            return [kv] if kv is not None else []
        return [self.data[k] for k in sorted(self.data) if k.startswith(key)]

    def holds(self, c: Compare, full_key: str) -> bool:
        kv = self.data.get(full_key)
        if c.target == "value":
            if kv is None:
                return False  # etcd: a value compare on an absent key always fails
            actual: int | bytes = kv.value
        elif c.target == "mod":
            actual = kv.mod_revision if kv else 0
        elif c.target == "create":
            actual = kv.create_revision if kv else 0
        else:
            actual = kv.version if kv else 0
        operand = c.operand
        if isinstance(actual, bytes) != isinstance(operand, bytes):
            raise StoreError(f"Cannot compare the {c.target} of {c.key!r} with {operand!r}.")
        return bool(_OPS[c.op](actual, operand))

    def apply(self, ops: Sequence[tuple[Op, str]]) -> tuple[list[KeyValue] | int | None, ...]:
        """Run one branch of a txn; all its writes share one new revision."""
        for op, _ in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self.leases:
                raise LeaseExpired(f"Lease {op.lease:x} is gone; cannot write {op.key!r}.")
        _check_no_overlap(ops)
        will_write = any(
            isinstance(op, Put) or self.matching(full, op.prefix)
            for op, full in ops
            if isinstance(op, Put | Delete)
        )
        if will_write:
            self.revision += 1
        out: list[list[KeyValue] | int | None] = []
        for op, full in ops:
            if isinstance(op, Get):
                out.append(self.matching(full, op.prefix))
            elif isinstance(op, Put):
                self._put(full, op.value, op.lease)
                out.append(None)
            else:
                hits = self.matching(full, op.prefix)
                for kv in hits:
                    self._delete(kv.key)
                out.append(len(hits))
        if will_write:
            self.cond.notify_all()
        return tuple(out)


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
}


def _revision(ev: WatchEvent) -> int:
    return ev.revision


def _check_no_overlap(ops: Sequence[tuple[Op, str]]) -> None:
    # etcd refuses a txn branch that writes one key twice ("duplicate key given in
    # txn request"); mirror it so code that passes here also passes on etcd.
    puts = [full for op, full in ops if isinstance(op, Put)]
    dels = [(full, op.prefix) for op, full in ops if isinstance(op, Delete)]
    seen = set(puts)
    bad = len(seen) != len(puts) or any(
        (k.startswith(d) if p else k == d) for k in puts for d, p in dels
    )
    if bad:
        raise StoreError("etcdserver: duplicate key given in txn request")


class MemoryStore(Store):
    """The store contract in memory.  Thread-safe; every call is atomic under one lock."""

    def __init__(self, prefix: str = "", clock: Callable[[], float] = time.monotonic,
                 *, _state: _State | None = None) -> None:
        self._prefix = prefix
        self._state = _state if _state is not None else _State(clock)
        self._reachable = True
        self._watches: list[_MemoryWatch] = []

    @classmethod
    def shared(cls, count: int, prefix: str = "",
               clock: Callable[[], float] = time.monotonic) -> list[MemoryStore]:
        """``count`` views of one new keyspace (one per simulated daemon)."""
        first = cls(prefix, clock)
        return [first, *(first.clone_view() for _ in range(count - 1))]

    def clone_view(self, prefix: str | None = None) -> MemoryStore:
        """Another store object on the same keyspace (same clock), with its own prefix."""
        return MemoryStore(self._prefix if prefix is None else prefix, _state=self._state)

    def set_reachable(self, reachable: bool) -> None:
        """Simulate losing etcd: every call of this view raises StoreUnavailable."""
        with self._state.cond:
            self._reachable = reachable
            self._state.cond.notify_all()  # wake this view's watches so they fail

    def expire_leases(self) -> None:
        """Expire every lease whose deadline ``clock()`` has passed (tests call this)."""
        with self._state.cond:
            self._state.expire()

    # -- helpers -------------------------------------------------------------------
    def _enter(self) -> _State:
        # Called with the lock held: the per-call lazy lease expiry, and reachability.
        if not self._reachable:
            raise StoreUnavailable(
                "The in-memory store is marked unreachable for this view (a test "
                "simulates losing etcd)."
            )
        self._state.expire()
        return self._state

    def _full(self, key: str) -> str:
        return self._prefix + key

    def _rel(self, kv: KeyValue) -> KeyValue:
        return replace(kv, key=kv.key[len(self._prefix):])

    def _rel_result(self, r: list[KeyValue] | int | None) -> list[KeyValue] | int | None:
        return [self._rel(kv) for kv in r] if isinstance(r, list) else r

    # -- the contract --------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        """The key or ``None``; atomic under the store lock."""
        with self._state.cond:
            kv = self._enter().data.get(self._full(key))
            return self._rel(kv) if kv is not None else None

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Keys under ``prefix`` sorted by key, and the revision, read atomically."""
        with self._state.cond:
            st = self._enter()
            return [self._rel(kv) for kv in st.matching(self._full(prefix), True)], st.revision

    def txn(self, compares: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        """Evaluate ``compares`` and run one branch, all under the lock (one revision)."""
        with self._state.cond:
            st = self._enter()
            ok = all(st.holds(c, self._full(c.key)) for c in compares)
            branch = success if ok else failure
            responses = st.apply([(op, self._full(op.key)) for op in branch])
            return TxnResult(ok, st.revision, tuple(self._rel_result(r) for r in responses))

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of ``max(ttl, 2)`` seconds on the store's clock."""
        with self._state.cond:
            st = self._enter()
            granted = max(int(ttl), MIN_TTL)
            lease_id = next(st.lease_ids)
            st.leases[lease_id] = _Lease(granted, st.clock() + granted)
            return lease_id, granted

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew to a full TTL from now; ``0`` if the lease is gone (expired or revoked)."""
        with self._state.cond:
            st = self._enter()
            lease = st.leases.get(lease_id)
            if lease is None:
                return 0
            lease.deadline = st.clock() + lease.ttl
            return lease.ttl

    def lease_ttl(self, lease_id: int) -> float:
        """Seconds left on the store's clock; ``0`` if the lease is gone."""
        with self._state.cond:
            st = self._enter()
            lease = st.leases.get(lease_id)
            return max(lease.deadline - st.clock(), 0.0) if lease is not None else 0.0

    def lease_revoke(self, lease_id: int) -> None:
        """Drop the lease and delete its keys in one revision; unknown ids are ignored."""
        with self._state.cond:
            self._enter().revoke(lease_id)

    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Events under ``prefix`` from ``start_revision`` (``<= 0``: from now on)."""
        with self._state.cond:
            st = self._enter()
            start = start_revision if start_revision > 0 else st.revision + 1
            w = _MemoryWatch(self, self._full(prefix), start)
            self._watches = [x for x in self._watches if not x.closed]
            self._watches.append(w)
            return w

    def compact(self, revision: int) -> None:
        """Forget history before ``revision``; compacting an older revision is a no-op."""
        with self._state.cond:
            st = self._enter()
            if revision > st.revision:
                raise StoreError(
                    f"Cannot compact to revision {revision}: the store is at {st.revision}."
                )
            if revision <= st.compacted:
                return
            st.compacted = revision
            st.history = [e for e in st.history if e.revision >= revision]
            st.cond.notify_all()

    def revision(self) -> int:
        with self._state.cond:
            return self._enter().revision

    def close(self) -> None:
        """Close this view's open watches (the shared keyspace lives on)."""
        with self._state.cond:
            for w in self._watches:
                w.closed = True
            self._watches = []
            self._state.cond.notify_all()


class _MemoryWatch(Watch):
    # Lease expiry is lazy, so a blocked watch re-checks now and then: without that a
    # watcher on a real clock would never see an expired lease's keys disappear.
    POLL = 0.05

    def __init__(self, store: MemoryStore, full_prefix: str, start: int) -> None:
        self._store = store
        self._prefix = full_prefix
        self._next = start
        self.closed = False

    def __iter__(self) -> Iterator[WatchEvent]:
        cond = self._store._state.cond
        while True:
            with cond:
                while True:
                    if self.closed:
                        return
                    st = self._store._enter()  # raises if the view was cut off
                    if self._next < st.compacted:
                        raise Compacted(
                            f"Watch from revision {self._next} refused: history before "
                            f"revision {st.compacted} is compacted; re-list and resume.",
                            st.compacted,
                        )
                    pos = bisect.bisect_left(st.history, self._next, key=_revision)
                    batch = [e for e in st.history[pos:] if e.kv.key.startswith(self._prefix)]
                    self._next = max(self._next, st.revision + 1)
                    if batch:
                        break
                    cond.wait(self.POLL)
            for ev in batch:
                if self.closed:
                    return
                yield WatchEvent(ev.type, self._store._rel(ev.kv))

    def close(self) -> None:
        with self._store._state.cond:
            self.closed = True
            self._store._state.cond.notify_all()
