"""A member that was added but never started is started anew from the members as they
are now: its saved --initial-cluster may predate a membership change made since (a
node removed meanwhile), and etcd refuses such a start every time ("member count is
unequal"), so restarting it as it was would never succeed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from haven.daemon import membership
from haven.daemon.etcd_member import MemberConfig
from haven.daemon.localstate import JoinedState
from haven.master.state import dumps
from haven.model.keys import Keys
from haven.model.node import Node
from haven.store.base import Member
from haven.store.memory import MemoryStore
from tests.unit.support import FakeClock

PEER = "https://10.0.0.{}:2380"
CLIENT = "https://10.0.0.{}:2379"


class Peer(MemoryStore):
    """Another node's etcd member, as the daemon asks it: its status and member list."""

    members: list[Member]

    def status(self, endpoint: str) -> dict[str, Any]:
        return {"is_learner": False, "cluster_id": 7}

    def member_list(self) -> list[Member]:
        return list(self.members)


@dataclass
class FakeMember:
    conf: MemberConfig
    calls: list[str] = field(default_factory=list)

    def known_cluster_id(self) -> int:
        return 7

    def config(self) -> MemberConfig:
        return self.conf

    def stop(self) -> None:
        self.calls.append("stop")

    def configure(self, conf: MemberConfig, wipe: bool = False) -> None:
        self.conf = conf
        self.calls.append(f"configure wipe={wipe}")

    def start(self) -> None:
        self.calls.append("start")

    def remember_cluster_id(self, cluster_id: int) -> None:
        pass


@pytest.fixture
def peer(monkeypatch: pytest.MonkeyPatch) -> Peer:
    store = Peer("/haven/c/", clock=FakeClock())
    store.members = []
    store.put(Keys.node("node2"), dumps(Node("node2", "u2", "10.0.0.2", "10.0.0.2", 1811,
                                             etcd_peer_url=PEER.format(2)).to_json()))
    monkeypatch.setattr(membership, "EtcdStore", lambda *_a, **_k: store)
    monkeypatch.setattr(store, "close", lambda: None)
    return store


def daemon(stale_initial: str) -> Any:
    member = FakeMember(MemberConfig("node2", CLIENT.format(2), PEER.format(2),
                                     stale_initial, "existing", "t"))
    return SimpleNamespace(
        name="node2", member=member,
        settings=SimpleNamespace(etcd_client_url=CLIENT.format(2),
                                 etcd_peer_url=PEER.format(2)),
        local=SimpleNamespace(etcd_tls=lambda: None, joined=lambda: None))


JS = JoinedState("c", (CLIENT.format(1), CLIENT.format(2)), True, True)


def test_a_member_added_but_never_started_starts_from_the_current_members(
        peer: Peer) -> None:
    # node3 was removed between node2's addition and its start.
    peer.members = [Member(11, "node1", (PEER.format(1),), (CLIENT.format(1),)),
                    Member(22, "", (PEER.format(2),), (), is_learner=True)]
    d = daemon(f"node1={PEER.format(1)},node3={PEER.format(3)},node2={PEER.format(2)}")
    assert membership.rejoin_if_removed(d, JS)
    assert d.member.calls == ["stop", "configure wipe=True", "start"]
    assert d.member.conf.initial_cluster == f"node1={PEER.format(1)},node2={PEER.format(2)}"
    kv = peer.get(Keys.node("node2"))
    assert kv is not None
    node = Node.from_json(json.loads(kv.value))
    assert node.etcd_member_id == 22


def test_a_member_that_ran_before_is_restarted_as_it_is(peer: Peer) -> None:
    peer.members = [Member(11, "node1", (PEER.format(1),), (CLIENT.format(1),)),
                    Member(22, "node2", (PEER.format(2),), (CLIENT.format(2),))]
    d = daemon(f"node1={PEER.format(1)},node2={PEER.format(2)}")
    assert not membership.rejoin_if_removed(d, JS)
    assert d.member.calls == []
