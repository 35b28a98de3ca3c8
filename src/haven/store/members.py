"""etcd membership changes, retried the way etcd needs them."""

from __future__ import annotations

import time
from collections.abc import Iterable

from haven.errors import NodeSetupError
from haven.store.base import Member
from haven.store.errors import StoreError
from haven.store.etcd import EtcdStore


def add_member(store: EtcdStore, peer_url: str, learner: bool = True,
               timeout: float = 30.0) -> tuple[Member, list[Member]]:
    """``member add``, retried while etcd says it is not healthy enough to reconfigure
    (it refuses for a few seconds after every membership change).

    A new member joins as a *learner*: it does not count for quorum until
    :func:`promote_member`, so the cluster keeps accepting writes while it starts.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return store.member_add([peer_url], is_learner=learner)
        except StoreError as exc:
            if time.monotonic() > deadline:
                raise NodeSetupError(f"etcd refused to add member {peer_url}: "
                                     f"{exc.message}") from exc
            time.sleep(0.5)


def promote_member(store: EtcdStore, member_id: int, timeout: float = 60.0) -> None:
    """Make a learner a voter, retried until it has caught up with the leader."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            store.member_promote(member_id)
            return
        except StoreError as exc:
            if "not a learner" in exc.message.lower():
                return
            if time.monotonic() > deadline:
                raise NodeSetupError(f"etcd did not promote learner {member_id:x}: "
                                     f"{exc.message}") from exc
            time.sleep(0.3)


def remove_member(store: EtcdStore, member_id: int, timeout: float = 30.0) -> None:
    """``member remove``, retried the same way; an unknown member counts as removed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            store.member_remove(member_id)
            return
        except StoreError as exc:
            if "not found" in exc.message.lower():
                return
            if time.monotonic() > deadline:
                raise NodeSetupError(f"etcd refused to remove member {member_id:x}: "
                                     f"{exc.message}") from exc
            time.sleep(0.5)


def initial_cluster(members: Iterable[Member], new_id: int, new_name: str) -> str:
    """The ``--initial-cluster`` value for a member joining ``members`` (which include
    it, still without a name)."""
    return ",".join(f"{m.name or (new_name if m.id == new_id else hex(m.id))}="
                    f"{m.peer_urls[0]}" for m in members if m.peer_urls)
