"""etcd membership changes, retried the way etcd needs them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from haven.errors import NodeSetupError
from haven.store.base import Member
from haven.store.errors import StoreError
from haven.store.etcd import EtcdStore

T = TypeVar("T")
log = logging.getLogger(__name__)


def _retry(fn: Callable[[], T], what: str, timeout: float, pause: float,
           done_if: str | None = None) -> T | None:
    """Call ``fn`` until it succeeds or ``timeout`` passes.  etcd refuses membership
    changes for a few seconds after each one ("unhealthy cluster") and promotes a
    learner only once it has caught up; an error containing ``done_if`` means the change
    is already in place."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except StoreError as exc:
            if done_if is not None and done_if in exc.message.lower():
                return None
            if time.monotonic() > deadline:
                raise NodeSetupError(f"etcd refused to {what}: {exc.message}") from exc
            time.sleep(pause)


def add_member(store: EtcdStore, peer_url: str, learner: bool = True,
               timeout: float = 30.0) -> tuple[Member, list[Member]]:
    """``member add``.  A new member joins as a *learner*: it does not count for quorum
    until :func:`promote_member`, so the cluster keeps accepting writes while it starts."""
    result = _retry(lambda: store.member_add([peer_url], is_learner=learner),
                    f"add member {peer_url}", timeout, 0.5)
    assert result is not None
    return result


def promote_member(store: EtcdStore, member_id: int, timeout: float = 60.0) -> None:
    """Make a learner a voter, once it has caught up with the leader."""
    _retry(lambda: store.member_promote(member_id), f"promote learner {member_id:x}",
           timeout, 0.3, done_if="not a learner")


def remove_member(store: EtcdStore, member_id: int, timeout: float = 30.0,
                  prefer_not: int = 0) -> None:
    """``member remove``; an unknown member counts as removed.

    Removing the raft leader leaves the cluster without one for an election timeout
    or more, and every write sent meanwhile times out (a removed node's job failed so
    in CI).  So raft leadership is first handed to another voter (other than
    ``prefer_not``, the master's member, when there is a choice), and after the removal
    this waits until a remaining voter follows a leader again."""
    _hand_off_leadership(store, member_id, prefer_not)
    _retry(lambda: store.member_remove(member_id), f"remove member {member_id:x}",
           timeout, 0.5, done_if="not found")
    wait_for_leader(store, exclude=member_id, timeout=timeout)


def _statuses(store: EtcdStore) -> list[tuple[Member, int]]:
    """Each voter that answers, with the leader it follows (0: none)."""
    out = []
    for m in store.member_list():
        if m.is_learner or not m.client_urls:
            continue
        try:
            out.append((m, store.status(m.client_urls[0]).get("leader", 0)))
        except StoreError:
            continue
    return out


def _hand_off_leadership(store: EtcdStore, member_id: int, prefer_not: int) -> None:
    try:
        seen = _statuses(store)
    except StoreError:
        return  # nothing readable: the removal itself will say what is wrong
    leader = next((m for m, lead in seen if m.id == member_id and lead == member_id), None)
    if leader is None:
        return
    followers = [m for m, lead in seen if m.id != member_id and lead == member_id]
    if not followers:
        return
    target = min(followers, key=lambda m: (m.id == prefer_not, m.name))
    try:
        store.move_leader(leader.client_urls[0], target.id)
    except StoreError as exc:
        # Not fatal: the removal still works, with a leaderless gap that
        # wait_for_leader sits out.
        log.warning("could not move raft leadership off member %x before removing it: %s",
                    member_id, exc.message)


def wait_for_leader(store: EtcdStore, exclude: int = 0, timeout: float = 30.0) -> None:
    """Return once a voter other than ``exclude`` follows a leader other than it; raise
    :class:`NodeSetupError` naming the members' views after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen: list[tuple[Member, int]] = []
    while True:
        try:
            seen = _statuses(store)
        except StoreError:
            seen = []
        # The removed member may still run for a moment, trusting a stale leader.
        if any(lead and lead != exclude for m, lead in seen if m.id != exclude):
            return
        if time.monotonic() > deadline:
            views = ", ".join(f"{m.name or hex(m.id)}: leader {lead:x}" for m, lead in seen)
            raise NodeSetupError(f"etcd has no raft leader {timeout:.0f} s after a "
                                 f"membership change ({views or 'no member answered'}); "
                                 f"check the members with 'gnt-cluster verify'.")
        time.sleep(0.1)


def initial_cluster(members: Iterable[Member], new_id: int, new_name: str) -> str:
    """The ``--initial-cluster`` value for a member joining ``members`` (which include
    it, still without a name)."""
    return ",".join(f"{m.name or (new_name if m.id == new_id else hex(m.id))}="
                    f"{m.peer_urls[0]}" for m in members if m.peer_urls)
