"""Event watchers on the primary's VMs: a replication error wakes the agent at once.

The agent notices a failed mirror in its next cycle (every 2 s) and only then marks the
lost secondary ``Outdated``.  Until then the guest's writes are acknowledged on the
primary alone while etcd still calls the secondary ``UpToDate``: losing the primary in
that window and starting the instance on the secondary would lose them.  A thread per
replicated VM here waits on the VM's event monitor (``<name>.qmp-events``, which no one
else uses) for ``BLOCK_JOB_ERROR`` of a mirror job, pauses the guest in that same
session at once, and wakes the agent, whose cycle records ``Outdated`` and thaws it.
A VM started before QEMU had the event monitor is left to the agent's cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from haven.errors import HavenError

log = logging.getLogger(__name__)

SLICE = 5.0  # seconds per wait: how soon a watcher notices that it was told to stop
RETRY = 1.0  # seconds before reconnecting after a failed wait
# A paused mirror reports an error for every guest write that still fails on the peer:
# one wake per VM in this many seconds is enough (the agent's own period).
QUIET = 2.0


class MirrorWatch:
    """One watcher thread per VM name given to :meth:`follow`."""

    def __init__(self, on_error: Callable[[str, list[int], bool], None]) -> None:
        self._on_error = on_error
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        # VMs whose next replication error freezes the guest.  Disarmed by a freeze:
        # a degraded mirror reports an error at every guest write, and the guest must
        # run on once its peer is Outdated; re-armed when the mirror is healthy again.
        self._disarmed: set[str] = set()

    def rearm(self, name: str) -> None:
        with self._lock:
            self._disarmed.discard(name)

    def follow(self, monitors: dict[str, Path]) -> None:
        """Watch exactly these VMs (name -> event monitor socket): start the missing
        watchers, stop those of VMs not named any more."""
        with self._lock:
            for name in set(self._stops) - set(monitors):
                self._stops.pop(name).set()
            for name, path in monitors.items():
                if name not in self._stops and path.exists():
                    stop = threading.Event()
                    self._stops[name] = stop
                    threading.Thread(target=self._watch, args=(name, path, stop), daemon=True,
                                     name=f"mirror-watch-{name}").start()

    def stop(self) -> None:
        self.follow({})

    def _watch(self, name: str, path: Path, stop: threading.Event) -> None:
        from haven.hypervisor.qemu.replication import watch_errors

        last = -QUIET
        while not stop.is_set():
            frozen: list[bool] = []

            def armed(vm: str = name) -> bool:  # asked when the error arrives
                with self._lock:
                    return vm not in self._disarmed
            try:
                disks = watch_errors(path, SLICE, frozen, armed)
            except HavenError as exc:
                if not path.exists():  # the VM is gone; follow() forgets it
                    break
                log.debug("event monitor of %s: %s", name, exc.message)
                stop.wait(RETRY)
                continue
            if frozen:
                with self._lock:
                    self._disarmed.add(name)
            if disks and (frozen == [True] or
                          (not stop.is_set() and time.monotonic() - last >= QUIET)):
                last = time.monotonic()
                log.info("%s: replication error on disk(s) %s%s", name, disks,
                         "; guest frozen" if frozen == [True] else "")
                self._on_error(name, disks, frozen == [True])
        with self._lock:
            if self._stops.get(name) is stop:
                del self._stops[name]
