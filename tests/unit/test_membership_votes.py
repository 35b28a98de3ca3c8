"""The master's etcd membership changes never overlap: a node add adds its member only
after the learner that holds etcd's one learner place is promoted, and the runner's
quorum upkeep never runs while a job holds the votes (a demotion landing between a
member's addition and its start made that member's etcd exit: "member count is
unequal", the CI failure of test_a_node_removed_while_down_...)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haven.daemon.etcd_member import EtcdMember, MemberConfig
from haven.master.lu import MasterContext
from haven.master.opcodes.node import NodeAdd
from haven.master.runner import JobRunner
from haven.master.state import dumps
from haven.model.keys import Keys
from haven.model.node import Node
from haven.store.base import Member
from haven.store.errors import StoreUnavailable
from haven.store.memory import MemoryStore
from tests.unit.support import FakeClock, NoRpc


class FakeAdmin:
    """etcd 3.4's membership rules that matter here: one learner at a time, and a
    learner is promoted only once it has started (published its client URL)."""

    def __init__(self, ctx_votes: threading.Lock | None = None) -> None:
        self.members: dict[int, Member] = {}
        self.calls: list[str] = []
        self.votes = ctx_votes  # asserted held on every change, when given
        self._next = 100

    def member(self, name: str, voter: bool, started: bool = True) -> int:
        self._next += 1
        n = int(name[-1])
        self.members[self._next] = Member(
            self._next, name if started else "", (f"https://10.0.0.{n}:2380",),
            (f"https://10.0.0.{n}:2379",) if started else (), not voter)
        return self._next

    def _change(self, what: str) -> None:
        if self.votes is not None:
            assert self.votes.locked(), f"{what} without the votes held"
        self.calls.append(what)

    def member_list(self) -> list[Member]:
        if self.votes is not None:
            assert self.votes.locked(), "member list read without the votes held"
        return list(self.members.values())

    def member_add(self, peer_urls: list[str], is_learner: bool = False
                   ) -> tuple[Member, list[Member]]:
        if is_learner and any(m.is_learner for m in self.members.values()):
            raise StoreUnavailable("etcdserver: too many learner members in cluster")
        self._change(f"add {peer_urls[0]}")
        self._next += 1
        m = Member(self._next, "", tuple(peer_urls), (), is_learner)
        self.members[m.id] = m
        return m, list(self.members.values())

    def member_promote(self, member_id: int) -> list[Member]:
        m = self.members[member_id]
        if not m.client_urls:
            raise StoreUnavailable("etcdserver: can only promote a learner member which "
                                   "is in sync with leader")
        self._change(f"promote {m.name}")
        self.members[member_id] = Member(m.id, m.name, m.peer_urls, m.client_urls, False)
        return list(self.members.values())

    def member_remove(self, member_id: int) -> list[Member]:
        self._change(f"remove {self.members[member_id].name}")
        del self.members[member_id]
        return list(self.members.values())

    def status(self, endpoint: str) -> dict[str, Any]:
        return {"leader": 101, "is_learner": False}

    def move_leader(self, endpoint: str, target: int) -> None:
        pass


def _node(store: MemoryStore, name: str) -> None:
    n = int(name[-1])
    store.put(Keys.node(name), dumps(Node(
        name, f"u{n}", f"10.0.0.{n}", f"10.0.0.{n}", 1811, master_candidate=True,
        etcd_client_url=f"https://10.0.0.{n}:2379",
        etcd_peer_url=f"https://10.0.0.{n}:2380").to_json()))


@pytest.fixture
def ctx() -> Iterator[MasterContext]:
    clock = FakeClock()
    store = MemoryStore("/haven/unit/", clock=clock)
    c = MasterContext(store=store, guard=lambda: None, master_node="node1", rpc=NoRpc(),
                      clock=clock)
    yield c
    store.close()


def test_a_third_node_is_added_after_the_two_node_learner_is_promoted(
        ctx: MasterContext) -> None:
    admin = FakeAdmin(ctx.votes)
    admin.member("node1", voter=True)
    admin.member("node2", voter=False)  # the two-node cluster's learner
    ctx.etcd_admin = admin
    for name in ("node1", "node2", "node3"):  # node3's record comes first, as in exec
        _node(ctx.store, name)
    feedback: list[str] = []
    lu = NodeAdd(ctx, {"OP_ID": "OP_NODE_ADD", "node_name": "node3"}, feedback.append)
    with ctx.votes:
        new, members = lu._add_member("https://10.0.0.3:2380")
    assert admin.calls == ["promote node2", "add https://10.0.0.3:2380"]
    assert new.is_learner and len(members) == 3
    assert feedback == ["Promoting the etcd member of node2 to a voter"]


def test_a_node_rejoining_as_a_learner_is_promoted_once_it_runs_then_the_add_goes_on(
        ctx: MasterContext) -> None:
    admin = FakeAdmin(ctx.votes)
    admin.member("node1", voter=True)
    rejoining = admin.member("node2", voter=False, started=False)
    ctx.etcd_admin = admin
    for name in ("node1", "node2", "node3"):
        _node(ctx.store, name)
    lu = NodeAdd(ctx, {"OP_ID": "OP_NODE_ADD", "node_name": "node3"}, lambda _m: None)
    # node2's member starts while the add waits for etcd's one learner place.
    timer = threading.Timer(1.0, lambda: admin.members.__setitem__(rejoining, Member(
        rejoining, "node2", ("https://10.0.0.2:2380",), ("https://10.0.0.2:2379",), True)))
    timer.start()
    try:
        with ctx.votes:
            lu._add_member("https://10.0.0.3:2380")
    finally:
        timer.cancel()
    assert admin.calls == ["promote node2", "add https://10.0.0.3:2380"]


def test_the_runner_leaves_the_votes_to_a_job_that_holds_them(ctx: MasterContext) -> None:
    admin = FakeAdmin()
    admin.member("node1", voter=True)
    admin.member("node2", voter=True)  # two nodes: node2 should lose its vote
    ctx.etcd_admin = admin
    for name in ("node1", "node2"):
        _node(ctx.store, name)
    runner = JobRunner(ctx)
    with ctx.votes:  # a node job is changing the members
        runner._quorum_check(1e6)
    assert admin.calls == []
    # Its own pass holds them: a job that takes its lock meanwhile waits for it.
    admin.votes = ctx.votes
    runner._quorum_check(2e6)
    assert admin.calls == ["remove node2"]


def test_a_member_that_exits_is_reported_at_once_with_etcds_reason(tmp_path: Path) -> None:
    member = EtcdMember(tmp_path)
    member.configure(MemberConfig("node2", "https://127.0.0.1:1", "https://127.0.0.1:2",
                                  "node2=https://127.0.0.1:2", "existing", "t"))
    member.log_path.parent.mkdir(parents=True, exist_ok=True)
    member.log_path.write_text("\n".join([
        json.dumps({"level": "warn", "msg": "failed to get cluster response"}),
        json.dumps({"level": "fatal", "msg": "discovery failed",
                    "error": "error validating peerURLs {...}: member count is unequal"}),
        "panic: exit", ""]))
    timer = threading.Timer(5.0, lambda: None)
    timer.start()
    try:
        assert not member.wait_healthy(30)  # no process: False without waiting 30 s
        assert timer.is_alive()
    finally:
        timer.cancel()
    assert member.exit_reason() == ("discovery failed: error validating peerURLs {...}: "
                                    "member count is unequal")
