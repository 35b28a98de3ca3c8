"""etcd membership changes, retried the way etcd needs them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from haven.errors import NodeSetupError
from haven.store.base import Member
from haven.store.errors import StoreError
from haven.store.etcd import EtcdStore

T = TypeVar("T")


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


def remove_member(store: EtcdStore, member_id: int, timeout: float = 30.0) -> None:
    """``member remove``; an unknown member counts as removed."""
    _retry(lambda: store.member_remove(member_id), f"remove member {member_id:x}",
           timeout, 0.5, done_if="not found")


def initial_cluster(members: Iterable[Member], new_id: int, new_name: str) -> str:
    """The ``--initial-cluster`` value for a member joining ``members`` (which include
    it, still without a name)."""
    return ",".join(f"{m.name or (new_name if m.id == new_id else hex(m.id))}="
                    f"{m.peer_urls[0]}" for m in members if m.peer_urls)
