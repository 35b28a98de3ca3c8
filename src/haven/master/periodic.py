"""The loop the master's managers (HA, alarms) share: run a cycle, survive its errors,
log its one-line summary when it changes, wait for the period or a wake-up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from haven.errors import HavenError
from haven.store.errors import FencedOut, StoreError

QUIET = "nothing to do"  # a summary not worth a log line


class CycleLoop:
    """Mixin: subclasses set ``wake``, ``_stop`` and ``last_summary`` in ``__init__``
    and call :meth:`run_cycles` from their thread."""

    wake: threading.Event
    _stop: threading.Event
    last_summary: str

    def run_cycles(self, cycle: Callable[[], str], period: float, label: str,
                   log: logging.Logger) -> None:
        while not self._stop.is_set():
            try:
                line = cycle()
            except FencedOut:
                return  # no longer master: the next master runs its own loop
            except (HavenError, StoreError) as exc:
                line = f"cannot run a cycle: {exc}"
            except Exception:  # the loop must survive a bug in one cycle
                log.exception("%s cycle failed", label)
                line = "cycle failed"
            if line not in (self.last_summary, QUIET):
                log.info("%s: %s", label, line)
            self.last_summary = line
            self.wake.wait(period)
            self.wake.clear()
