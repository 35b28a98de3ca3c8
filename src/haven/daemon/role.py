"""The master role: campaign, hold, hand over, or step down.

One cycle: ``observe()`` reads the store once into a :class:`RoleView`; ``plan(view)`` is
a pure function that picks one :class:`RoleAction`; ``execute`` carries it out; the
cycle returns one sentence that is logged and asserted in tests.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from haven.master.alarm_loop import AlarmManager
from haven.master.ha_loop import HaManager
from haven.master.lu import MasterContext
from haven.master.runner import JobRunner
from haven.model.keys import HANDOVER, MASTER
from haven.store.base import Guard, KeyValue, Store
from haven.store.election import Election
from haven.store.errors import StoreError
from haven.store.lease import LeaseKeeper

log = logging.getLogger(__name__)

HANDOVER_JOB_WAIT = 60.0  # seconds a handing-over master lets running jobs finish


class RoleAction(enum.Enum):
    NOTHING = "nothing"
    CAMPAIGN = "campaign"
    STEP_DOWN = "step down"
    HAND_OVER = "hand over"


@dataclass(frozen=True)
class RoleView:
    """One observation.  ``token`` is ours if we believe we are master."""

    me: str
    lease_valid: bool
    candidate: bool
    leader: KeyValue | None
    handover_to: str | None
    token: int | None
    lease_id: int = 0  # our current lease

    @property
    def leader_name(self) -> str | None:
        if self.leader is None:
            return None
        return _field(self.leader.value, "node")

    @property
    def holds_key(self) -> bool:
        return (self.token is not None and self.leader is not None
                and self.leader.create_revision == self.token)


def _field(raw: bytes, name: str) -> str | None:
    """``name`` of a JSON object value; ``None`` for anything malformed (a corrupt
    key must not crash the role loop)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def plan(v: RoleView) -> tuple[RoleAction, str]:
    """Decide, from one view only, what the role does now (no I/O)."""
    if v.token is not None:
        if not v.lease_valid:
            return RoleAction.STEP_DOWN, "stepping down: own lease is past its local deadline"
        if not v.holds_key:
            return RoleAction.STEP_DOWN, "stepping down: the master key is no longer ours"
        if v.handover_to is not None and v.handover_to != v.me:
            return RoleAction.HAND_OVER, f"handing the master role over to {v.handover_to}"
        return RoleAction.NOTHING, "master"
    if not v.lease_valid:
        return RoleAction.NOTHING, "not campaigning: own lease is not valid"
    if not v.candidate:
        return RoleAction.NOTHING, "not a master candidate"
    if v.leader is not None:
        if v.leader_name == v.me:
            if v.lease_id and v.leader.lease == v.lease_id:
                # The previous daemon of this node held it on the lease we took over
                # (a restart within the lease): the role continues, same token.
                return RoleAction.CAMPAIGN, "resuming the master role held on our lease"
            # A key from an earlier life of this daemon: it expires with that lease.
            return RoleAction.NOTHING, "waiting for a stale master key of this node to expire"
        return RoleAction.NOTHING, f"following master {v.leader_name}"
    if v.handover_to is not None and v.handover_to != v.me:
        return RoleAction.NOTHING, f"not campaigning: handover to {v.handover_to} in progress"
    return RoleAction.CAMPAIGN, "campaigning"


class MasterRole:
    """Runs the cycle in a thread, woken by changes of the master/handover keys."""

    def __init__(self, me: str, store: Store, lease: LeaseKeeper,
                 is_candidate: Callable[[], bool],
                 make_context: Callable[[Callable[[], Guard | None]], MasterContext],
                 period: float = 1.0) -> None:
        self.me = me
        self.store = store
        self.lease = lease
        self.is_candidate = is_candidate
        self.make_context = make_context
        self.period = period
        self.election = Election(store, MASTER, lease=lease,
                                 value=json.dumps({"node": me}).encode())
        self.token: int | None = None
        self.runner: JobRunner | None = None
        self.ha: HaManager | None = None
        self.alarms: AlarmManager | None = None
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cycle_lock = threading.Lock()
        self.last_summary = ""
        self.became_master = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="master-role", daemon=True)
        self._thread.start()

    def stop(self, resign: bool = True) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._cycle_lock:
            self._step_down(resign=resign)

    def is_master(self) -> bool:
        return self.token is not None and self.guard() is not None

    def guard(self) -> Guard | None:
        token = self.token
        if token is None or not self.lease.valid():
            return None
        return Guard(MASTER, token)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                summary = self.cycle()
            except StoreError as exc:
                summary = f"store unavailable: {exc.message}"
            if summary != self.last_summary:
                log.info("role: %s", summary)
                self.last_summary = summary
            self.wake.wait(self.period)
            self.wake.clear()

    def cycle(self) -> str:
        with self._cycle_lock:
            view = self.observe()
            action, summary = plan(view)
            return self.execute(action, summary)

    def observe(self) -> RoleView:
        leader = self.store.get(MASTER)
        handover = self.store.get(HANDOVER)
        target = _field(handover.value, "target") if handover is not None else None
        return RoleView(me=self.me, lease_valid=self.lease.valid(),
                        lease_id=self.lease.lease_id, candidate=self.is_candidate(), leader=leader,
                        handover_to=target, token=self.token)

    def execute(self, action: RoleAction, summary: str) -> str:
        if action is RoleAction.CAMPAIGN:
            token = self.election.campaign_once()
            if token is None:
                return "lost the campaign"
            self._become_master(token)
            return f"became master (token {token})"
        if action is RoleAction.STEP_DOWN:
            self._step_down(resign=True)
        elif action is RoleAction.HAND_OVER:
            runner = self.runner
            if runner is not None:
                runner.stop(wait=HANDOVER_JOB_WAIT)
            self._step_down(resign=True)
        return summary

    def on_lease_lost(self) -> None:
        """Called by the lease keeper: stop acting at once, without a store round trip."""
        if self.ha is not None:
            self.ha.stop()
        if self.alarms is not None:
            self.alarms.stop()
        runner = self.runner
        if runner is not None:
            runner.stop()
        self.wake.set()

    def _become_master(self, token: int) -> None:
        self.token = token
        ctx = self.make_context(self.guard)
        self.runner = JobRunner(ctx)
        self.runner.start()
        self.ha = HaManager(ctx)
        self.ha.start()
        self.alarms = AlarmManager(ctx)
        self.alarms.start()
        # A handover addressed to us is complete.
        handover = self.store.get(HANDOVER)
        if handover is not None and _field(handover.value, "target") == self.me:
            self.store.delete(HANDOVER, handover.mod_revision)
        self.became_master.set()

    def _step_down(self, resign: bool) -> None:
        ha, self.ha = self.ha, None
        if ha is not None:
            ha.stop()
        alarms, self.alarms = self.alarms, None
        if alarms is not None:
            alarms.stop()
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.stop()
        token, self.token = self.token, None
        self.became_master.clear()
        if token is not None and resign:
            try:
                self.election.resign(token)
            except StoreError as exc:
                log.warning("could not resign the master key: %s", exc)
