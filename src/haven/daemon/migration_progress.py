"""The source node's half of a migration's progress: QEMU's samples into etcd.

``migration.migrate`` calls the publisher from its polling loop, which also watches
for a stalled network: so the publisher only keeps the latest sample and a thread of
its own writes it, at most every :data:`PUBLISH_EVERY` s, to
``Keys.migration_progress(<instance>)``.  The key is attached to the node's alive
lease (a dead node leaves nothing behind) and deleted when the migration ends either
way.  A store that fails is logged, never raised: progress is only information.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from types import TracebackType

from haven.model.keys import Keys
from haven.model.migration_progress import MigrationProgress
from haven.store.base import Store

log = logging.getLogger(__name__)

PUBLISH_EVERY = 1.0  # seconds between two writes; the master reads every ~2 s


class ProgressPublisher:
    """A context manager around one migration of ``name`` to ``uri``; call it with each
    sample.  ``lease``: the key's lease (the node's alive lease; 0 for none)."""

    def __init__(self, store: Store, name: str, uri: str, lease: int = 0,
                 every: float = PUBLISH_EVERY) -> None:
        self.store = store
        self.key = Keys.migration_progress(name)
        self.uri = uri
        self.lease = lease
        self.every = every
        self._latest: MigrationProgress | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-{name}",
                                        daemon=True)
        self._failed = False
        self.published = 0  # writes done, for tests and logs

    def __call__(self, sample: MigrationProgress) -> None:
        """Keep ``sample`` as the latest; never blocks on the store."""
        with self._lock:
            self._latest = dataclasses.replace(sample, uri=self.uri)
        self._wake.set()

    def __enter__(self) -> ProgressPublisher:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5.0)
        try:
            self.store.delete(self.key)
        except Exception as err:  # the lease (if any) removes it later
            log.warning("Could not delete %s: %s", self.key, err)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                sample, self._latest = self._latest, None
            if sample is not None:
                self._publish(sample)
            # At most one write per period; a stop ends the wait at once.
            self._stop.wait(self.every)

    def _publish(self, sample: MigrationProgress) -> None:
        try:
            self.store.put(self.key, json.dumps(sample.to_json()).encode(), lease=self.lease)
            self.published += 1
            self._failed = False
        except Exception as err:  # the store's or its client's: only information
            if not self._failed:  # once per failing stretch, not every second
                log.warning("Could not publish the progress of a migration to %s: %s",
                            self.key, err)
            self._failed = True
