"""The master role: ``plan(RoleView)`` as a table, then whole cycles of two daemons.

``plan`` is pure, so each row is one view and the action plus the sentence it returns.
The cycle tests run two :class:`MasterRole` objects on two views of one MemoryStore
with a fake clock: leases expire only when the test moves the clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from haven.daemon.role import MasterRole, RoleAction, RoleView, plan
from haven.master.lu import MasterContext
from haven.model.keys import HANDOVER, MASTER
from haven.store import Guard, KeyValue, LeaseKeeper, MemoryStore
from tests.unit.support import FakeClock, NoRpc

ME = "node01"
TOKEN = 42


def key(node: str, token: int = TOKEN) -> KeyValue:
    """The master key as ``node`` created it at revision ``token``."""
    return KeyValue(MASTER, json.dumps({"node": node}).encode(), create_revision=token,
                    mod_revision=token, version=1, lease=0x694D)


def view(*, lease_valid: bool = True, candidate: bool = True,
         leader: KeyValue | None = None, handover_to: str | None = None,
         token: int | None = None, lease_id: int = 0) -> RoleView:
    return RoleView(me=ME, lease_valid=lease_valid, candidate=candidate, leader=leader,
                    handover_to=handover_to, token=token, lease_id=lease_id)


PLANS = [
    # -- a restarted daemon that took over its node's lease, and with it the master key
    ("own key on the lease taken over", view(leader=key(ME), lease_id=0x694D),
     RoleAction.CAMPAIGN, "resuming the master role held on our lease"),
    ("own key on another lease", view(leader=key(ME), lease_id=0x1234),
     RoleAction.NOTHING, "waiting for a stale master key of this node to expire"),
    # -- not master
    ("no leader, valid lease, candidate", view(),
     RoleAction.CAMPAIGN, "campaigning"),
    ("another node leads", view(leader=key("node02")),
     RoleAction.NOTHING, "following master node02"),
    ("own lease invalid", view(lease_valid=False),
     RoleAction.NOTHING, "not campaigning: own lease is not valid"),
    ("not a candidate", view(candidate=False),
     RoleAction.NOTHING, "not a master candidate"),
    ("handover to another node", view(handover_to="node02"),
     RoleAction.NOTHING, "not campaigning: handover to node02 in progress"),
    ("handover to this node", view(handover_to=ME),
     RoleAction.CAMPAIGN, "campaigning"),
    ("own stale key from an earlier life", view(leader=key(ME)),
     RoleAction.NOTHING, "waiting for a stale master key of this node to expire"),
    ("corrupt leader key", view(leader=KeyValue(MASTER, b"\xffgarbage", 7, 7, 1)),
     RoleAction.NOTHING, "following master None"),
    # -- master
    ("master, all well", view(leader=key(ME), token=TOKEN),
     RoleAction.NOTHING, "master"),
    ("master whose lease is invalid", view(lease_valid=False, leader=key(ME), token=TOKEN),
     RoleAction.STEP_DOWN, "stepping down: own lease is past its local deadline"),
    ("master whose key is gone", view(token=TOKEN),
     RoleAction.STEP_DOWN, "stepping down: the master key is no longer ours"),
    ("master whose key was re-created by another node",
     view(leader=key("node02", TOKEN + 5), token=TOKEN),
     RoleAction.STEP_DOWN, "stepping down: the master key is no longer ours"),
    ("master asked to hand over", view(leader=key(ME), token=TOKEN, handover_to="node02"),
     RoleAction.HAND_OVER, "handing the master role over to node02"),
    ("master that is the handover target", view(leader=key(ME), token=TOKEN, handover_to=ME),
     RoleAction.NOTHING, "master"),
]


@pytest.mark.parametrize(("v", "action", "summary"), [p[1:] for p in PLANS],
                         ids=[p[0] for p in PLANS])
def test_plan_picks_one_action_and_says_why(v: RoleView, action: RoleAction,
                                            summary: str) -> None:
    assert plan(v) == (action, summary)


def test_plan_treats_a_non_object_master_key_like_a_corrupt_one() -> None:
    assert plan(view(leader=KeyValue(MASTER, b"[]", 7, 7, 1))) == (
        RoleAction.NOTHING, "following master None")


# -- whole cycles ----------------------------------------------------------------------


@dataclass
class Daemon:
    role: MasterRole
    lease: LeaseKeeper
    store: MemoryStore


@pytest.fixture
def two_daemons(clock: FakeClock) -> Iterator[tuple[Daemon, Daemon]]:
    stores = MemoryStore.shared(2, prefix="/haven/unit/", clock=clock)
    daemons = []
    for name, store in zip(("node01", "node02"), stores, strict=True):
        lease = LeaseKeeper(store, ttl=5, margin=1.0, clock=clock, run_thread=False)

        def make_context(guard: Callable[[], Guard | None], store: MemoryStore = store,
                         name: str = name) -> MasterContext:
            return MasterContext(store=store, guard=guard, master_node=name, rpc=NoRpc(),
                                 clock=clock)

        daemons.append(Daemon(MasterRole(name, store, lease, lambda: True, make_context),
                              lease, store))
    yield daemons[0], daemons[1]
    for d in daemons:
        d.role.stop(resign=False)
        d.store.close()


def master_token(store: MemoryStore) -> int | None:
    kv = store.get(MASTER)
    return None if kv is None else kv.create_revision


def test_exactly_one_of_two_candidates_becomes_master(two_daemons: tuple[Daemon, Daemon]
                                                     ) -> None:
    one, two = two_daemons
    first = one.role.cycle()
    token = master_token(one.store)
    assert first == f"became master (token {token})"
    assert two.role.cycle() == "following master node01"
    assert one.role.cycle() == "master"
    assert (one.role.is_master(), two.role.is_master()) == (True, False)
    assert one.role.runner is not None and two.role.runner is None


def test_a_candidate_that_loses_the_race_says_so(two_daemons: tuple[Daemon, Daemon]) -> None:
    one, two = two_daemons
    seen_by_two = two.role.observe()  # both see no master ...
    assert one.role.cycle().startswith("became master")  # ... and one is faster
    assert plan(seen_by_two) == (RoleAction.CAMPAIGN, "campaigning")
    assert two.role.execute(*plan(seen_by_two)) == "lost the campaign"
    assert two.role.token is None


def test_when_the_master_lease_expires_the_other_becomes_master_with_a_larger_token(
        clock: FakeClock, two_daemons: tuple[Daemon, Daemon]) -> None:
    one, two = two_daemons
    assert one.role.cycle().startswith("became master")
    old = master_token(one.store)
    assert old is not None
    assert two.role.cycle() == "following master node01"
    # node01 stops renewing (hung, cut off); node02 keeps renewing.
    clock.advance(3)
    assert two.lease.renew_once()
    clock.advance(3)  # past node01's 5 s TTL in the store
    one.store.expire_leases()
    assert one.store.get(MASTER) is None
    new_summary = two.role.cycle()
    new = master_token(two.store)
    assert new is not None and new > old
    assert new_summary == f"became master (token {new})"
    assert one.role.cycle() == "stepping down: own lease is past its local deadline"
    assert one.role.cycle() == "not campaigning: own lease is not valid"
    assert (one.role.is_master(), two.role.is_master()) == (False, True)


def test_a_revoked_master_lease_hands_the_role_to_the_other(
        two_daemons: tuple[Daemon, Daemon]) -> None:
    one, two = two_daemons
    assert one.role.cycle().startswith("became master")
    old = master_token(one.store)
    one.lease.stop(revoke=True)
    assert two.role.cycle() == f"became master (token {master_token(two.store)})"
    assert (master_token(two.store) or 0) > (old or 0)
    assert one.role.cycle() == "stepping down: own lease is past its local deadline"


def test_a_handover_moves_the_master_role_to_its_target(
        two_daemons: tuple[Daemon, Daemon]) -> None:
    one, two = two_daemons
    assert one.role.cycle().startswith("became master")
    one.store.put(HANDOVER, json.dumps({"target": "node02", "from": "node01"}).encode())
    assert two.role.cycle() == "following master node01"
    assert one.role.cycle() == "handing the master role over to node02"
    assert one.store.get(MASTER) is None, "the old master resigned its key"
    assert one.role.cycle() == "not campaigning: handover to node02 in progress"
    assert two.role.cycle() == f"became master (token {master_token(two.store)})"
    assert two.store.get(HANDOVER) is None, "the new master closed the handover"
    assert one.role.cycle() == "following master node02"
