"""Leader election on one key, etcd's recipe, with the key's create_revision as token.

Campaigning is one transaction: *if the key does not exist, create it on my lease,
else read it*.  The winner's token is the ``create_revision`` of the key it created.
Every later leader creates a new key, hence a larger token, so
:class:`~haven.store.base.Guard` (``create_revision == token``) refuses the writes of
any deposed leader.  The key disappears with the winner's lease.

This class does no waiting and runs no thread: the daemon's loop calls
:meth:`Election.campaign_once` when the key is absent (a watch or a timer tells it).  A
voluntary hand-over is :meth:`Election.resign` while the others campaign.
"""

from __future__ import annotations

import logging
import threading

from haven.store.base import Compare, Delete, Get, Guard, KeyValue, Put, Store
from haven.store.errors import LeaseExpired
from haven.store.lease import LeaseKeeper

log = logging.getLogger(__name__)


class Election:
    """One candidate.  Thread-safe; all state other than the token lives in the store."""

    def __init__(self, store: Store, key: str = "master", *, lease: LeaseKeeper,
                 value: bytes) -> None:
        self._store = store
        self._key = key
        self._lease = lease
        self._value = value
        self._lock = threading.Lock()
        self._token: int | None = None
        self._token_lease = 0  # the lease the key was created on

    @property
    def key(self) -> str:
        return self._key

    @property
    def token(self) -> int | None:
        """The token of our last win (``None`` if we do not believe we hold the key)."""
        with self._lock:
            return self._token

    def campaign_once(self) -> int | None:
        """Try to take the key; our token, or ``None`` if someone else holds it.

        One transaction.  If we already hold the key on our current lease (a second
        call) it returns the same token.  Raises :class:`LeaseExpired` if our lease is
        locally lost: restart the :class:`LeaseKeeper` first.
        """
        if not self._lease.valid():
            with self._lock:
                self._token = None
            raise LeaseExpired(
                f"Cannot campaign for {self._key!r}: our lease is lost; restart it first."
            )
        lease_id = self._lease.lease_id
        res = self._store.txn([Compare(self._key, "create", "=", 0)],
                              [Put(self._key, self._value, lease_id)],
                              [Get(self._key)])
        token: int | None = None
        if res.succeeded:
            token = res.revision  # the put created the key at this revision
        else:
            kvs = res.responses[0] if res.responses else None
            kv = kvs[0] if isinstance(kvs, list) and kvs else None
            if kv is not None and kv.lease == lease_id:
                token = kv.create_revision
        with self._lock:
            previous, self._token, self._token_lease = self._token, token, lease_id
        if token is not None and token != previous:
            log.info("Won the election for %r with token %d", self._key, token)
        return token

    def leader(self) -> KeyValue | None:
        """The current holder's key (its value names it), or ``None``.  One read."""
        return self._store.get(self._key)

    def resign(self, token: int | None = None) -> bool:
        """Delete the key only if it still has ``token`` (default: ours).  Atomic.

        True if we deleted it.  Another holder's key is never touched.
        """
        with self._lock:
            token = self._token if token is None else token
            if token == self._token:
                self._token = None
        if token is None:
            return False
        res = self._store.txn([Compare(self._key, "create", "=", token)], [Delete(self._key)])
        if res.succeeded:
            log.info("Resigned from %r (token %d)", self._key, token)
        return res.succeeded

    @property
    def guard(self) -> Guard | None:
        """The fencing guard for master writes, only while we hold the key on a lease
        that is still locally valid.  A guarded write is what proves we still hold it.
        """
        with self._lock:
            token, lease_id = self._token, self._token_lease
        if token is None or lease_id != self._lease.lease_id or not self._lease.valid():
            return None
        return Guard(self._key, token)

    def is_leader(self) -> bool:
        """Our local belief (see :attr:`guard`); no store access."""
        return self.guard is not None
