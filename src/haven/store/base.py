"""The store contract: what Haven needs from etcd v3, and nothing more.

Keys are ``str`` relative to the store's prefix (``/haven/<cluster>/``); values are
``bytes``.  Revisions are etcd's: one counter for the whole keyspace, bumped by every
successful write.  Two implementations honour this contract and one test suite
(``tests/contract``) checks both: :class:`haven.store.etcd.EtcdStore` (etcd's v3 JSON
gateway) and :class:`haven.store.memory.MemoryStore` (unit tests).

Atomicity, per method:

* ``get``/``list`` are linearizable reads: they see every write acknowledged before
  the call.  ``list`` returns the revision the listing was taken at, so a watch can
  resume from ``revision + 1`` without missing or repeating an event.
* ``put`` is unconditional; everything else that writes is one etcd transaction and
  either happens entirely or not at all.
* ``cas(key, value, mod_revision)`` writes only if the key's ``mod_revision`` still
  is the one read (``0``: the key must be absent).  Every read-modify-write in Haven
  goes through it.
* A ``guard`` (see :class:`Guard`) adds "the master key still has this
  ``create_revision``" to the same transaction: a deposed master's write fails with
  :class:`~haven.store.errors.FencedOut` instead of landing.
* Leases expire on etcd's clock; a key attached to a lease disappears with it.
* ``watch`` yields every change after ``start_revision`` in revision order, or raises
  :class:`~haven.store.errors.Compacted` if that history is gone (re-list, then resume).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from haven.store.errors import OutcomeUnknown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd reports it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class Guard:
    """A fencing condition: ``key`` must exist with exactly ``create_revision``.

    The master's token is the ``create_revision`` of the leader key it created; a new
    master creates a new key, so the old token never matches again.
    """

    key: str
    create_revision: int


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction.

    ``target`` is ``mod`` (mod_revision), ``create`` (create_revision), ``version`` or
    ``value``; ``op`` is ``=``, ``!=``, ``<`` or ``>``.  An absent key has revisions and
    version ``0``.  Comparing ``value`` of an absent key is false.
    """

    key: str
    target: Literal["mod", "create", "version", "value"]
    op: Literal["=", "!=", "<", ">"]
    operand: int | bytes


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class Get:
    key: str
    prefix: bool = False


Op = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    """``succeeded`` tells which branch ran; ``responses[i]`` answers op ``i`` of it.

    A ``Get`` answers with the list of matching keys, a ``Delete`` with the number of
    keys deleted, a ``Put`` with ``None``.
    """

    succeeded: bool
    revision: int
    responses: tuple[list[KeyValue] | int | None, ...]


@dataclass(frozen=True)
class WatchEvent:
    """A change: ``PUT`` carries the new value, ``DELETE`` the key with empty value."""

    type: Literal["PUT", "DELETE"]
    kv: KeyValue

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True)
class Member:
    """An etcd cluster member (managed etcd)."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool = False


class Watch(abc.ABC):
    """An open watch.  Iterate for events; ``close`` from any thread ends the iteration."""

    @abc.abstractmethod
    def __iter__(self) -> Iterator[WatchEvent]: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class Store(abc.ABC):
    """Haven's view of etcd.  Thread-safe: one instance is shared by a daemon's threads."""

    # -- reads ---------------------------------------------------------------------
    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None:
        """The key, or ``None`` if absent.  Linearizable."""

    @abc.abstractmethod
    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix``, sorted by key, and the read revision."""

    # -- writes --------------------------------------------------------------------
    @abc.abstractmethod
    def txn(self, compares: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        """One atomic transaction: if every compare holds run ``success`` else ``failure``."""

    def put(self, key: str, value: bytes, lease: int = 0, guard: Guard | None = None) -> int:
        """Write unconditionally (but for ``guard``); returns the new revision."""
        res = _resend_once(lambda: self.txn(_guard(guard), [Put(key, value, lease)]))
        _check_guard(res, guard)
        return res.revision

    def create(self, key: str, value: bytes, lease: int = 0,
               guard: Guard | None = None) -> int | None:
        """Write only if ``key`` is absent; the new revision, or ``None`` if it existed."""
        return self.cas(key, value, 0, lease=lease, guard=guard)

    def cas(self, key: str, value: bytes, mod_revision: int, lease: int = 0,
            guard: Guard | None = None) -> int | None:
        """Write only if ``key``'s mod_revision is ``mod_revision`` (0: absent).

        Returns the new revision, or ``None`` if the key changed.  Raises
        :class:`FencedOut` if the guard failed.
        """
        compares = [Compare(key, "mod", "=", mod_revision), *_guard(guard)]
        res = _resend_once(lambda: self.txn(compares, [Put(key, value, lease)],
                                            [Get(key), *_guard_probe(guard)]))
        if res.succeeded:
            return res.revision
        _check_guard(res, guard)
        # etcd may apply a write and still answer "leader changed" (a raft leadership
        # move right after a master hand-over): the client's retry then finds its own
        # write.  The same bytes in place mean this write is done, not lost to another.
        found = res.responses[0] if res.responses else None
        if isinstance(found, list) and found and found[0].value == value:
            return found[0].mod_revision
        return None

    def delete(self, key: str, mod_revision: int | None = None, prefix: bool = False,
               guard: Guard | None = None) -> bool:
        """Delete ``key`` (or every key under it with ``prefix``).

        With ``mod_revision`` only if unchanged.  True if anything was deleted.
        """
        compares = list(_guard(guard))
        if mod_revision is not None:
            compares.insert(0, Compare(key, "mod", "=", mod_revision))
        res = self.txn(compares, [Delete(key, prefix)], _guard_probe(guard))
        if not res.succeeded:
            _check_guard(res, guard)
            return False
        n = res.responses[0]
        return isinstance(n, int) and n > 0

    # -- leases --------------------------------------------------------------------
    @abc.abstractmethod
    def lease_grant(self, ttl: int) -> tuple[int, int]:
        """A new lease; returns ``(lease_id, granted_ttl)`` (etcd may round the TTL up)."""

    @abc.abstractmethod
    def lease_keepalive(self, lease_id: int) -> int:
        """Renew once; returns the TTL now left, ``0`` if the lease no longer exists."""

    @abc.abstractmethod
    def lease_ttl(self, lease_id: int) -> float:
        """Seconds the lease has left (etcd rounds down to whole seconds); ``0`` if it
        no longer exists."""

    @abc.abstractmethod
    def lease_revoke(self, lease_id: int) -> None:
        """Drop the lease and every key attached to it.  Unknown leases are ignored."""

    # -- watches -------------------------------------------------------------------
    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Changes under ``prefix`` from ``start_revision`` on (inclusive).

        Iterating raises :class:`Compacted` if ``start_revision`` is compacted.
        """

    # -- maintenance ---------------------------------------------------------------
    @abc.abstractmethod
    def compact(self, revision: int) -> None:
        """Drop history before ``revision``."""

    @abc.abstractmethod
    def revision(self) -> int:
        """The current revision of the keyspace."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def _resend_once(send: Callable[[], TxnResult]) -> TxnResult:
    """Send a put or a compare-and-swap; if its outcome was lost, send it once more.

    Safe for these two only: a put of the same bytes leaves the same state however often
    it applies, and a compare-and-swap applies at most once (a second application fails
    its compare, and :meth:`Store.cas` then finds its own bytes in place).  Without this
    a member stopping under a request ("raft: stopped", when a vote moves) failed the
    job that sent it although the write could simply go to another member.
    """
    try:
        return send()
    except OutcomeUnknown as exc:
        log.info("resending a write whose outcome was lost: %s", exc)
        return send()


def _guard(guard: Guard | None) -> list[Compare]:
    if guard is None:
        return []
    return [Compare(guard.key, "create", "=", guard.create_revision)]


def _guard_probe(guard: Guard | None) -> list[Op]:
    # On failure, read the guard key so the caller can tell "key changed" from
    # "no longer master" without a second round trip.
    return [] if guard is None else [Get(guard.key)]


def _check_guard(res: TxnResult, guard: Guard | None) -> None:
    from haven.store.errors import FencedOut

    if guard is None or res.succeeded:
        return
    probe = res.responses[-1] if res.responses else None
    kvs = probe if isinstance(probe, list) else []
    if not kvs or kvs[0].create_revision != guard.create_revision:
        raise FencedOut(
            f"Refused a master write: the master key {guard.key!r} is no longer held "
            f"with token {guard.create_revision}; another node is master now."
        )
