"""Live migration of a QEMU VM to another node: precopy over TCP (QEMU 7.2).

This module is the source side; the destination's steps (``accept``,
``wait_destination``, ``abort_incoming``) are in :mod:`.migration_destination`, the
parameters and the reading of QEMU's replies in :mod:`.migration_spec`.

The phases, Ganeti's (accept on the destination, migrate, finalize both sides)::

    destination  hv.start(spec with incoming=True)  QEMU waits (-incoming defer): inmigrate
                 accept(dest_qmp, addr, port)       -> "tcp:addr:port"
    source       migrate(src_qmp, uri, ...)         -> MigrationStats, or HypervisorError
    destination  wait_destination(hv, name)         until it has taken over (or failed)
    source       finish_source(src_qmp)             quit the postmigrate source, then the
                                                    driver's stop/cleanup for its files
    rollback     abort_incoming(hv, name)           kill a destination still inmigrate
                 resume_source(src_qmp)             completed, but no destination runs

Contracts (each measured in tests/integration/test_migration.py):

* ``migrate`` holds the source's command monitor for the whole migration, except while
  ``before_switchover`` runs: other callers in this process queue for it (the status
  monitor stays free for ``list()``).
* **No return path**, on purpose: with it a source whose destination acknowledgement is
  lost would resume while the destination runs - two copies.  Without it ``completed``
  means "all sent": the source stays ``postmigrate`` (stopped, disks released) until the
  caller has seen the destination run; if it never does, :func:`resume_source`.
* Any failure before ``completed`` (failed, destination died, timeout, callback raised)
  cancels the migration and leaves the source *running* (QEMU restarts it itself;
  ``cont`` otherwise), then raises a :class:`HypervisorError` naming the instance and
  the cause.  If the source died instead, the error says so and a destination still
  ``inmigrate`` must be killed; QEMU 7.2's destination usually exits by itself.
* A destination that stops reading in the final phase (stopped, network cut without a
  reset) blocks the source's main loop, monitor included, until TCP gives up: the error
  says to kill the destination, after which the source resumes within ~15 ms.
* ``pause-before-switchover`` (with a callback): the source's vCPUs are stopped, its
  disks still active, the destination's not yet; :func:`drbd_switchover` uses that
  window to hand the replica over.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from haven.hypervisor.base import HypervisorError
from haven.hypervisor.qemu import replication
from haven.hypervisor.qemu.migration_spec import (
    _ENDED_BADLY,
    DEFAULT_BANDWIDTH_MIB,
    DEFAULT_DOWNTIME_MS,
    MIB,
    MigrationStats,
    _cause,
    capabilities,
    progress_of,
    stats_of,
)
from haven.hypervisor.qemu.qmp import (
    QmpCommandError,
    QmpError,
    QmpSession,
    QmpTimeout,
    instance_of,
    qmp_call,
    qmp_session,
)
from haven.model.migration_progress import MigrationProgress

log = logging.getLogger(__name__)

# Statuses (QAPI MigrationStatus) in which a migration still owns the source.
_ACTIVE = frozenset({"setup", "active", "pre-switchover", "device", "wait-unplug",
                     "cancelling", "postcopy-active", "postcopy-paused",
                     "postcopy-recover", "colo"})
CANCEL_TIMEOUT = 10.0  # migrate_cancel shuts the socket down: this is ample
RESTART_GRACE = 2.0  # QEMU restarts the source itself after a failure; wait this long
STATS_TIMEOUT = 2.0  # the completed event can precede query-migrate's final numbers
STALL_TIMEOUT = 10.0  # no byte sent for this long: cancel (see _Progress)
PROGRESS_POLL = 1.0
_ADVICE = {  # by the outcome of _recover
    "gone": "its source QEMU exited meanwhile; kill the destination if it is still "
            "incoming (abort_incoming)",
    "hung": "its source QEMU does not answer, blocked sending the final state to a "
            "destination that stopped reading; kill the destination QEMU (abort_incoming) "
            "and the source resumes by itself",
}


# -- source ---------------------------------------------------------------------------------

class _Failed(Exception):
    """Internal: the migration cannot complete, for the reason given."""


def migrate(src_qmp: Path | str, uri: str, downtime_ms: int = DEFAULT_DOWNTIME_MS,
            bandwidth_bytes: int = DEFAULT_BANDWIDTH_MIB * MIB,
            before_switchover: Callable[[], None] | None = None,
            timeout: float = 300.0, stall_timeout: float = STALL_TIMEOUT,
            live: bool = True,
            on_progress: Callable[[MigrationProgress], None] | None = None
            ) -> MigrationStats:
    """Migrate the VM of ``src_qmp`` to ``uri`` (from :func:`accept`) and return once
    QEMU reports ``completed``; the source is then ``postmigrate``.

    ``downtime_ms``/``bandwidth_bytes`` become QEMU's ``downtime-limit`` and
    ``max-bandwidth`` (QEMU's defaults, 300 ms and 128 MiB/s, double the pause and the
    total time).  ``before_switchover`` runs once the source is paused, before the
    destination takes over; it may use the source's monitor, and raising cancels the
    migration.  No byte sent for ``stall_timeout`` s (network cut) cancels it too.
    ``live=False``: the source is paused first and its whole memory copied while it
    stands still (the destination comes up paused: ``wait_destination(resume=True)``);
    a failure resumes the source as for a live one.
    ``on_progress`` gets a :class:`MigrationProgress` at every poll (about every
    :data:`PROGRESS_POLL` s while memory is copied); it must return quickly, and
    whatever it raises is logged and ignored: reporting never breaks a migration.
    On every failure the source is left running and a
    :class:`HypervisorError` names the instance and the cause (see the module docstring).
    """
    path = str(src_qmp)
    name = instance_of(path)
    deadline = time.monotonic() + timeout
    with qmp_session(path, label=name) as s:
        if (busy := s.execute("query-migrate").get("status")) in _ACTIVE:
            raise HypervisorError(f"Cannot migrate instance '{name}': a migration of it is "
                                  f"already {busy}; cancel or finish that one first.")
        was_running = s.execute("query-status").get("status") == "running"
    session: QmpSession | None = None
    try:
        session = qmp_session(path, label=name)
        session.execute("migrate-set-capabilities",
                        {"capabilities": capabilities(before_switchover is not None)})
        session.execute("migrate-set-parameters", {"downtime-limit": downtime_ms,
                                                   "max-bandwidth": bandwidth_bytes})
        if not live:
            session.execute("stop")
        session.execute("migrate", {"uri": uri})
        log.info("Instance %s: migrating to %s (downtime limit %d ms, %d MiB/s)", name, uri,
                 downtime_ms, bandwidth_bytes // MIB)
        pre_ms = 0.0
        progress = _Progress(stall_timeout, on_progress, name)
        while (status := _next_status(session, deadline, timeout, progress)) != "completed":
            if status in _ENDED_BADLY:
                raise _Failed(_cause(session.execute("query-migrate")))
            if status == "pre-switchover" and before_switchover is not None:
                # The callback may need this monitor (one client at a time): let go of
                # it.  Nothing is lost meanwhile: QEMU waits for migrate-continue.
                paused_at = time.monotonic()
                session.close()
                try:
                    before_switchover()
                except Exception as exc:
                    raise _Failed(f"the pre-switchover step failed: {exc}") from exc
                session = qmp_session(path, label=name)
                session.execute("migrate-continue", {"state": "pre-switchover"})
                pre_ms = (time.monotonic() - paused_at) * 1000
        stats = _final_stats(session, pre_ms)
    except BaseException as exc:
        if session is not None:
            session.close()
        cause = str(exc) if isinstance(exc, _Failed | HypervisorError) else repr(exc)
        outcome = _recover(path, name, was_running)
        if not isinstance(exc, Exception):
            raise  # cancellation and interrupts propagate unwrapped
        if outcome == "completed":  # the cancellation lost the race: it is over there
            log.warning("Instance %s: migration completed although %s", name, cause)
            return _final_stats(None, 0.0, path)
        advice = _ADVICE.get(outcome, "it keeps running on the source")
        raise HypervisorError(f"Could not migrate instance '{name}' to {uri}: "
                              f"{cause.rstrip('.')}; "
                              f"{advice}.") from exc
    finally:
        if session is not None:
            session.close()
    log.info("Instance %s: migrated to %s in %.0f ms, downtime %.0f ms, %.1f MiB sent", name,
             uri, stats.total_ms, stats.downtime_ms, stats.transferred / MIB)
    return stats


class _Progress:
    """Watches ``ram.transferred``: a migration whose bytes stop moving for ``stall``
    seconds has lost its network (or its destination stopped reading).  QEMU itself
    would wait for TCP to give up, ~15 minutes, with the guest dirty-tracked meanwhile.
    Each reply also goes to ``on_progress`` as a :class:`MigrationProgress`."""

    def __init__(self, stall: float,
                 on_progress: Callable[[MigrationProgress], None] | None = None,
                 name: str = "") -> None:
        self.stall = stall
        self.sent = -1
        self.since = time.monotonic()
        self.on_progress = on_progress
        self.name = name
        # The first sample's rate counts from the start (setup included): one line
        # with a rate is worth more than an exact one a poll later.
        self.sample = MigrationProgress("setup", 0, 0, 0)
        self.sampled = self.since
        self.warned = False

    def check(self, session: QmpSession) -> None:
        info = session.execute("query-migrate")
        sent = int(info.get("ram", {}).get("transferred", 0))
        now = time.monotonic()
        self.report(info, now)
        if sent != self.sent or info.get("status") not in ("active", "setup"):
            self.sent, self.since = sent, now
        elif now - self.since > self.stall:
            raise _Failed(f"no data went through for {self.stall:g} s (the migration network "
                          "is cut or the destination stopped reading)")

    def report(self, info: Mapping[str, Any], now: float) -> None:
        """Hand a sample to ``on_progress``; what it raises is logged once, not raised."""
        if self.on_progress is None:
            return
        try:  # a reply of an unexpected shape included: reporting is only information
            self.sample = progress_of(info, self.sample, now - self.sampled)
            self.sampled = now
            self.on_progress(self.sample)
        except Exception:
            if not self.warned:  # once per migration: it is called every second
                log.exception("Instance %s: the migration progress callback failed",
                              self.name)
                self.warned = True


def _next_status(session: QmpSession, deadline: float, timeout: float,
                 progress: _Progress) -> str:
    """The status of the next MIGRATION event; checks for a stall every second."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Failed(f"it did not complete within {timeout:g} s")
        try:
            ev = session.wait_event("MIGRATION", min(left, PROGRESS_POLL))
        except QmpTimeout:
            progress.check(session)
            continue
        status = str(ev.get("data", {}).get("status", ""))
        log.debug("Instance %s: migration %s", session.label, status)
        return status



def _final_stats(session: QmpSession | None, pre_ms: float, path: str = "") -> MigrationStats:
    """Poll ``query-migrate`` until ``total-time`` is set (the event can come first)."""
    deadline = time.monotonic() + STATS_TIMEOUT
    while True:
        info = session.execute("query-migrate") if session else qmp_call(path, "query-migrate")
        if info.get("total-time") or time.monotonic() > deadline:
            return stats_of(info, pre_ms)
        time.sleep(0.005)


def _recover(path: str, name: str, was_running: bool) -> str:
    """After a failure: cancel what still runs and resume the source if it ran before.
    The migration's final status; ``gone`` when the source QEMU has exited, ``hung``
    when it does not answer: QEMU 7.2 sends the last RAM and the device state with its
    main loop locked, so a destination that stops reading then keeps every QMP command,
    ``migrate_cancel`` included, waiting until the connection fails."""
    try:
        # A healthy QEMU answers in ms; a hung one should not cost the default 5 s.
        status = str(qmp_call(path, "query-migrate", timeout=2.0).get("status", "none"))
        if status in _ACTIVE:
            with contextlib.suppress(QmpCommandError):  # it may have ended meanwhile
                qmp_call(path, "migrate_cancel")
            deadline = time.monotonic() + CANCEL_TIMEOUT
            while status in _ACTIVE and time.monotonic() < deadline:
                time.sleep(0.01)
                status = str(qmp_call(path, "query-migrate").get("status", "none"))
        if status == "completed":
            return status
        if was_running:
            _ensure_running(path, name)
        return status
    except QmpTimeout as exc:
        log.warning("Instance %s: source hangs after a failed migration: %s", name, exc)
        return "hung"
    except QmpError as exc:
        log.warning("Instance %s: source gone after a failed migration: %s", name, exc)
        return "gone"


def _ensure_running(path: str, name: str) -> None:
    """QEMU restarts a source that ran before once the migration has failed or been
    cancelled; give it :data:`RESTART_GRACE`, then ``cont`` (which also re-activates
    disks left inactive by a late failure)."""
    deadline = time.monotonic() + RESTART_GRACE
    while (state := qmp_call(path, "query-status").get("status")) != "running":
        if state != "finish-migrate" or time.monotonic() > deadline:
            log.warning("Instance %s is %s after the failed migration; resuming it", name,
                        state)
            qmp_call(path, "cont")
            return
        time.sleep(0.01)


def resume_source(src_qmp: Path | str, settle: float = 5.0) -> bool:
    """Roll a migration back on its source: ``cont`` a ``postmigrate`` source (completed,
    but no destination runs; it takes its disks back), or one left ``paused`` by a
    non-live migration that failed (waiting up to ``settle`` s for that migration to
    end first).  For ``drbd`` the replica then needs a *full* resync: the destination
    may have written to it.  False (nothing done) if running, or stopped for another
    reason (``io-error``...) by a migration that never completed: it is still the
    instance, and what stopped it resumes it (found by the fault campaign: a cleanup
    that refused such a source, again and again, kept its instance locked for good)."""
    name = instance_of(src_qmp)
    state = qmp_call(src_qmp, "query-status").get("status")
    if state == "running":
        return False
    if state not in ("postmigrate", "paused"):
        if qmp_call(src_qmp, "query-migrate").get("status") != "completed":
            log.info("Instance %s: its migration did not complete and it is %s: left as "
                     "it is", name, state)
            return False
        raise HypervisorError(f"Cannot resume the source of instance '{name}': it is "
                              f"{state}, not postmigrate or paused.")
    deadline = time.monotonic() + settle
    while (mig := qmp_call(src_qmp, "query-migrate").get("status")) in _ACTIVE:
        if time.monotonic() > deadline:
            raise HypervisorError(f"Cannot resume the source of instance '{name}': its "
                                  f"migration is still {mig}; abort the destination first.")
        time.sleep(0.05)
    qmp_call(src_qmp, "cont")
    log.warning("Instance %s: migration rolled back, running on the source again", name)
    return True


def finish_source(src_qmp: Path | str) -> None:
    """Quit the ``postmigrate`` source after the destination took over; then the
    driver's ``stop``/``cleanup`` wait for the exit and remove its files.  Refuses any
    other state (a running source is the only copy); no-op if it is already gone."""
    name = instance_of(src_qmp)
    try:
        state = qmp_call(src_qmp, "query-status").get("status")
    except QmpError:
        return  # already gone (or quitting)
    if state != "postmigrate":
        raise HypervisorError(f"Not stopping the source of instance '{name}': it is {state}, "
                              "so the migration did not complete there.")
    qmp_call(src_qmp, "quit")


# -- onto the replica holder ----------------------------------------------------------------

class DrbdSwitchover:
    """The ``before_switchover`` callback for migrating onto the replica holder (see
    :func:`drbd_switchover`), with the durations of its last run in ms.

    In the window (source paused, destination inactive): raise unless every mirror is
    ``ready``; end each gracefully (in sync, no pivot: the source writes nothing more to
    the replica), keeping the resync bitmap for a migration that fails after this; then
    ``stop_export()`` must stop the destination's storage daemon and return once it
    exited, so the destination takes the image lock with no other opener.  Raising
    cancels the migration; if mirrors had ended, the caller exports and resyncs again.
    """

    def __init__(self, src_qmp: Path | str, disks: Sequence[int],
                 stop_export: Callable[[], None]) -> None:
        self.src_qmp = str(src_qmp)
        self.disks = tuple(disks)
        self.stop_export = stop_export
        self.unprotect_ms = 0.0
        self.stop_export_ms = 0.0

    def __call__(self) -> None:
        name = instance_of(self.src_qmp)
        t0 = time.monotonic()
        try:
            replication.hand_over(self.src_qmp, self.disks)
        except HypervisorError as exc:
            raise HypervisorError(f"instance '{name}': {exc.message}") from exc
        t1 = time.monotonic()
        self.stop_export()
        t2 = time.monotonic()
        self.unprotect_ms, self.stop_export_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
        log.info("Instance %s: mirrors ended in sync in %.1f ms, export stopped in %.1f ms",
                 name, self.unprotect_ms, self.stop_export_ms)


def drbd_switchover(src_qmp: Path | str, disks: Sequence[int],
                    stop_export: Callable[[], None]) -> DrbdSwitchover:
    """The ``before_switchover`` callback for :func:`migrate` onto the replica holder
    (see :class:`DrbdSwitchover`)."""
    return DrbdSwitchover(src_qmp, disks, stop_export)
