"""One watch on the whole cluster prefix per daemon, fanned out to subscribers.

The API's long-polls (``/2/jobs/<id>/wait``) and the master role wake on it instead of
each opening its own watch stream.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from haven.store.base import KeyValue, Store, WatchEvent
from haven.store.watcher import Watcher


class EventHub:
    def __init__(self, store: Store) -> None:
        self._subs: list[tuple[str, Callable[[str], None]]] = []
        self._lock = threading.Lock()
        self.changed = threading.Condition()
        self.revision = 0
        self._watcher = Watcher(store, "", self._on_event, self._on_relist)

    def subscribe(self, prefix: str, fn: Callable[[str], None]) -> None:
        """``fn(key)`` runs (in the watch thread) for each change under ``prefix``."""
        with self._lock:
            self._subs.append((prefix, fn))

    def start(self) -> None:
        self._watcher.start()

    def stop(self) -> None:
        self._watcher.stop()

    def wait(self, timeout: float) -> None:
        """Block until any change (or ``timeout``)."""
        with self.changed:
            self.changed.wait(timeout)

    def _notify(self, key: str, revision: int) -> None:
        with self._lock:
            subs = list(self._subs)
        for prefix, fn in subs:
            if key.startswith(prefix):
                fn(key)
        with self.changed:
            self.revision = max(self.revision, revision)
            self.changed.notify_all()

    def _on_event(self, ev: WatchEvent) -> None:
        self._notify(ev.kv.key, ev.kv.mod_revision)

    def _on_relist(self, kvs: list[KeyValue], revision: int) -> None:
        # After a compaction we cannot know what changed: wake every subscriber.
        with self._lock:
            subs = list(self._subs)
        for prefix, fn in subs:
            fn(prefix)
        with self.changed:
            self.revision = max(self.revision, revision)
            self.changed.notify_all()
