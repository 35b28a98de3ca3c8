"""The master's view of a migration's memory copy: while the source node's
``migrate-send`` call blocks, the job log gets a progress line every
:data:`PROGRESS_EVERY` s from what the source publishes in etcd (see
:mod:`haven.model.migration_progress`), then one line saying the copy finished.

The call runs in a worker thread and the job's own thread polls, so every job-log
write stays on the job's thread.  Reading or logging progress never fails the
migration: the call's result or error is what counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from haven.model.migration_progress import MigrationProgress, finished_line, progress_line

log = logging.getLogger(__name__)

PROGRESS_EVERY = 2.0  # seconds between two progress lines, as the resync's


class ProgressFeed:
    """Turns the samples read for one migration (``uri``) into job-log lines: one per
    new sample, none for a leftover of another attempt or a sample already logged."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.last: MigrationProgress | None = None

    def line(self, raw: bytes | None) -> str | None:
        if raw is None:
            return None
        try:
            sample = MigrationProgress.from_json(json.loads(raw))
        except (ValueError, TypeError, AttributeError):
            return None  # not ours to judge: another version's record
        if sample.uri != self.uri or sample == self.last:
            return None
        self.last = sample
        return progress_line(sample)

    def finished(self, stats: dict[str, Any]) -> str:
        return finished_line(self.last, int(stats.get("transferred") or 0),
                             float(stats.get("total_ms") or 0))


def call_watching(call: Callable[[], dict[str, Any]], read: Callable[[], bytes | None],
                  feedback: Callable[[str], None], uri: str,
                  every: float | None = None) -> dict[str, Any]:
    """Run ``call`` (the source's ``migrate-send``) and return its result, or raise
    what it raises; meanwhile, every ``every`` s, ``read`` the published progress and
    ``feedback`` its line; once it returned, the line that ends the copy.  ``every``:
    :data:`PROGRESS_EVERY` unless given."""
    period = PROGRESS_EVERY if every is None else every
    feed = ProgressFeed(uri)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="migrate-send")
    try:
        future: Future[dict[str, Any]] = pool.submit(call)
        while True:
            try:
                stats = future.result(timeout=period)
                break
            except FutureTimeout:
                pass
            try:
                if (text := feed.line(read())) is not None:
                    feedback(text)
            except Exception as exc:  # the store or the job log: only information lost
                log.warning("Could not report the progress of the migration to %s: %s",
                            uri, exc)
    finally:
        pool.shutdown(wait=False)
    try:
        feedback(feed.finished(stats))
    except Exception as exc:  # as above: the migration itself is done
        log.warning("Could not log the end of the memory copy to %s: %s", uri, exc)
    return stats
