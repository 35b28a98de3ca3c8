"""A lease kept alive by a thread, with a local deadline that errs on the safe side.

etcd expires a lease on *its* clock; a node that is paused, partitioned or slow learns
that too late.  So :class:`LeaseKeeper` also keeps a local deadline on its own
monotonic clock: the *send* time of the last successful keepalive + TTL - ``margin``.
etcd renewed the lease no earlier than we sent the request, so etcd cannot expire it
before that deadline (up to clock-rate differences, which ``margin`` absorbs).  Past
the deadline the lease counts as lost, even if etcd would still renew it: a holder
that stepped down must never quietly become a holder again.  A fresh lease is granted
only by :meth:`LeaseKeeper.restart`.

``on_renewed`` callbacks get the new local deadline after every successful renewal
(the fencing watchdog is fed from there); an optional ``heartbeat`` write is part of
every renewal (see :meth:`LeaseKeeper.renew_once`); ``on_lost`` callbacks get a sentence saying
why, once per lost lease.  Callbacks run on the keeper's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from haven.store.base import Store
from haven.store.errors import StoreError

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Grants a lease in the constructor and renews it every ``ttl/5`` on a daemon thread.

    With ``run_thread=False`` nothing renews by itself: tests call :meth:`renew_once`.
    """

    def __init__(self, store: Store, ttl: int, margin: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, *,
                 interval: float | None = None, run_thread: bool = True, adopt: int = 0,
                 on_renewed: Callable[[float, int], None] | None = None,
                 heartbeat: Callable[[int], None] | None = None) -> None:
        if ttl <= margin:
            raise ValueError(f"lease TTL {ttl} s must exceed the safety margin {margin} s")
        self._store = store
        self._heartbeat = heartbeat
        self._ttl = ttl
        self._margin = margin
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._on_lost: list[Callable[[str], None]] = []
        self._on_renewed: list[Callable[[float, int], None]] = \
            [on_renewed] if on_renewed else []
        self._lease_id = 0
        self._granted_ttl = 0
        self._deadline = 0.0
        self._lost: str | None = "not granted yet"
        self._lost_reported = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        if not (adopt and self._adopt(adopt)):
            self._grant()
        if run_thread:
            self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self._thread.start()

    # -- state ---------------------------------------------------------------------
    @property
    def lease_id(self) -> int:
        """The current lease (it may be lost: check :meth:`valid`)."""
        with self._lock:
            return self._lease_id

    @property
    def deadline(self) -> float:
        """The local deadline, on this keeper's clock."""
        with self._lock:
            return self._deadline

    def valid(self) -> bool:
        """True while the local deadline has not passed and etcd has not dropped the lease.

        Once False, it stays False until :meth:`restart`.
        """
        with self._lock:
            if self._lost is None and self._clock() >= self._deadline:
                self._mark_lost("its local deadline passed without a successful renewal")
            return self._lost is None

    def on_lost(self, callback: Callable[[str], None]) -> None:
        self._on_lost.append(callback)

    def on_renewed(self, callback: Callable[[float, int], None]) -> None:
        self._on_renewed.append(callback)

    # -- actions -------------------------------------------------------------------
    def renew_once(self) -> bool:
        """One keepalive, unless the lease already counts as lost.  True if renewed."""
        with self._lock:
            lease_id, sent = self._lease_id, self._clock()
            if self._lost is None and sent >= self._deadline:
                self._mark_lost("its local deadline passed without a successful renewal")
            lost = self._lost is not None
        if lost:
            self._report_lost()
            return False
        try:
            ttl = self._store.lease_keepalive(lease_id)
            if ttl > 0 and self._heartbeat is not None:
                # A write through raft after the keepalive: the master times a node's
                # silence from these (a keepalive leaves no trace a new etcd leader
                # sees), so the renewal counts only once it is committed.
                self._heartbeat(lease_id)
        except StoreError as exc:
            log.warning("Could not renew lease %x: %s", lease_id, exc)
            self.valid()  # lost if this failure ran the deadline out
            self._report_lost()
            return False
        with self._lock:
            if self._lost is not None or self._lease_id != lease_id:
                renewed = False  # lost (or restarted) while the request was in flight
            elif ttl <= 0:
                early = self._deadline - self._clock()
                if early > 0:
                    # etcd cannot have expired it yet on its own clock: it was revoked,
                    # or a stale etcd leader resumed after a freeze revoked it (etcd
                    # before the fix of its issue 15247 does that).  The master may
                    # already count this node lost; the fencer still waits ``early``.
                    self._mark_lost(f"etcd no longer knows it, {early:.1f} s before its "
                                    "local deadline (revoked, or expired early by an etcd "
                                    "member that was frozen while it led)")
                else:
                    self._mark_lost("etcd no longer knows it (expired or revoked)")
                renewed = False
            elif self._clock() >= self._deadline:
                # The answer came after the deadline: someone may already have acted
                # on the loss, so the renewal is not taken.
                self._mark_lost("a renewal came back after the local deadline")
                renewed = False
            else:
                self._deadline = sent + ttl - self._margin
                new_deadline = self._deadline
                renewed = True
        if not renewed:
            self._report_lost()
            return False
        self._notify_renewed(lease_id, new_deadline)
        return True

    def restart(self) -> int:
        """After a loss, grant a fresh lease and renew that one; returns its id.

        A no-op (returning the current id) while the lease is still valid.
        """
        if self._stopping:
            raise RuntimeError("restart() on a stopped LeaseKeeper")
        if self.valid():
            return self.lease_id
        self._grant()
        self._wake.set()
        return self.lease_id

    def stop(self, revoke: bool = True) -> None:
        """Stop renewing; with ``revoke`` drop the lease (and its keys) in etcd now."""
        with self._lock:
            self._stopping = True
            lease_id, was_valid = self._lease_id, self._lost is None
            self._lost, self._lost_reported = "stopped", True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if revoke and was_valid:
            try:
                self._store.lease_revoke(lease_id)
            except StoreError as exc:
                log.warning("Could not revoke lease %x (it will expire): %s", lease_id, exc)

    # -- internals -----------------------------------------------------------------
    def _adopt(self, lease_id: int) -> bool:
        """Take over ``lease_id`` (a previous daemon's, still alive in etcd): a daemon
        restart keeps the node's VMs only this way, within the lease's TTL."""
        sent = self._clock()
        try:
            ttl = self._store.lease_keepalive(lease_id)
        except StoreError as exc:
            log.info("Could not take over lease %x (%s): granting a new one", lease_id, exc)
            return False
        if ttl <= 0:
            log.info("Lease %x of the previous daemon has expired: granting a new one",
                     lease_id)
            return False
        self._hold(lease_id, ttl, sent, "Took over lease %x of the previous daemon (TTL %d s)")
        return True

    def _grant(self) -> None:
        sent = self._clock()
        lease_id, ttl = self._store.lease_grant(self._ttl)
        self._hold(lease_id, ttl, sent, "Granted lease %x (TTL %d s)")

    def _hold(self, lease_id: int, ttl: int, sent: float, message: str) -> None:
        """Hold ``lease_id`` (granted or taken over, ``ttl`` as etcd answered a request
        sent at ``sent``): valid again, deadline from the send time; callbacks told."""
        with self._lock:
            self._lease_id, self._granted_ttl = lease_id, ttl
            self._deadline = sent + ttl - self._margin
            self._lost, self._lost_reported = None, False
            deadline = self._deadline
        log.info(message, lease_id, ttl)
        self._notify_renewed(lease_id, deadline)

    def _notify_renewed(self, lease_id: int, deadline: float) -> None:
        for cb in list(self._on_renewed):
            try:
                cb(deadline, lease_id)
            except Exception:
                log.exception("An on_renewed callback of lease %x failed", lease_id)

    def _mark_lost(self, reason: str) -> None:  # lock held
        self._lost = f"Lease {self._lease_id:x} is lost: {reason}."
        self._wake.set()  # the thread reports it

    def _report_lost(self) -> None:
        with self._lock:
            if self._lost is None or self._lost_reported or self._stopping:
                return
            self._lost_reported = True
            reason = self._lost
        log.warning("%s", reason)
        for lost_cb in list(self._on_lost):
            try:
                lost_cb(reason)
            except Exception:
                log.exception("An on_lost callback failed")

    def _run(self) -> None:
        delay: float | None = None
        while True:
            with self._lock:
                interval = self._interval or max(self._granted_ttl, 1) / 5
            self._wake.wait(interval if delay is None else delay)
            self._wake.clear()
            if self._stopping:
                return
            if not self.valid():
                self._report_lost()
                delay = None  # idle until restart() or stop() wakes us
                continue
            try:
                ok = self.renew_once()
            except Exception:  # a bug must not silently end the renewals
                log.exception("Renewing lease %x failed unexpectedly", self.lease_id)
                ok = False
            # After a failed attempt retry sooner, but never busy-loop.
            delay = None if ok else min(interval, 0.5)
