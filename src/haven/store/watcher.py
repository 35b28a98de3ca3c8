"""Follow a prefix forever: list, then watch, resume after drops, re-list after compaction.

:class:`Watcher` gives its callbacks a consistent stream: ``on_relist(kvs, revision)``
with a full snapshot, then ``on_event`` for every change after that revision, in
revision order.  After a dropped connection it resumes where it stopped (no event lost,
none repeated); if that history was compacted meanwhile it re-lists and the consumer
starts over from the new snapshot.  Callbacks run on the watcher's thread, one at a
time; an exception in a callback is logged and does not stop the watcher.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from haven.store.base import KeyValue, Store, Watch, WatchEvent
from haven.store.errors import Compacted, StoreClosed, StoreError

log = logging.getLogger(__name__)


class Watcher:
    """A daemon thread following ``prefix`` of ``store``; :meth:`start`, then :meth:`stop`."""

    def __init__(self, store: Store, prefix: str, on_event: Callable[[WatchEvent], None],
                 on_relist: Callable[[list[KeyValue], int], None], *,
                 backoff: tuple[float, float] = (0.1, 5.0), name: str | None = None) -> None:
        self._store = store
        self._prefix = prefix
        self._on_event = on_event
        self._on_relist = on_relist
        self._backoff = backoff
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watch: Watch | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=name or f"watch:{prefix}")
        # Position: every event up to ``_rev`` was delivered, except that events *at*
        # ``_rev`` are delivered only for the keys in ``_seen`` (a txn writes several
        # keys in one revision, and a drop can fall between them).
        self._rev: int | None = None  # None: (re-)list first
        self._seen: set[str] = set()
        self._complete = True

    @property
    def revision(self) -> int | None:
        """The last revision delivered (``None`` before the first listing)."""
        return self._rev

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and wait for the thread; no callback runs after this returns."""
        self._stopping.set()
        with self._lock:
            watch = self._watch
        if watch is not None:
            watch.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- the loop ------------------------------------------------------------------
    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stopping.is_set():
            try:
                if self._rev is None:
                    self._relist()
                if self._follow():
                    delay = self._backoff[0]  # the connection worked for a while
            except Compacted as exc:
                log.info("Watch on %r: %s Re-listing.", self._prefix, exc)
                self._rev = None
                continue
            except StoreClosed:
                log.debug("Watch on %r: its store was closed; stopping.", self._prefix)
                return
            except StoreError as exc:
                log.warning("Watch on %r interrupted, retrying in %.1f s: %s",
                            self._prefix, delay, exc)
            self._stopping.wait(delay)
            delay = min(delay * 2, self._backoff[1])

    def _relist(self) -> None:
        kvs, revision = self._store.list(self._prefix)
        if self._stopping.is_set():
            return
        self._rev, self._seen, self._complete = revision, set(), True
        self._call(self._on_relist, kvs, revision)

    def _follow(self) -> bool:
        """Watch until the stream ends; True if it delivered anything."""
        assert self._rev is not None
        # Resume at the next revision, or at the current one if it may be incomplete.
        start = self._rev + 1 if self._complete else self._rev
        watch = self._store.watch(self._prefix, start)
        with self._lock:
            self._watch = watch
        if self._stopping.is_set():
            watch.close()
        delivered = False
        try:
            for ev in watch:
                if self._stopping.is_set():
                    break
                if ev.revision < self._rev or (ev.revision == self._rev
                                               and ev.kv.key in self._seen):
                    continue  # already delivered before the drop
                if ev.revision > self._rev:
                    self._rev, self._seen = ev.revision, set()
                self._seen.add(ev.kv.key)
                # Until a later revision shows up, this one may have more events.
                self._complete = False
                delivered = True
                self._call(self._on_event, ev)
        finally:
            watch.close()
            with self._lock:
                self._watch = None
        return delivered

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        if self._stopping.is_set():
            return
        try:
            fn(*args)
        except Exception:
            log.exception("A callback of the watch on %r failed", self._prefix)
