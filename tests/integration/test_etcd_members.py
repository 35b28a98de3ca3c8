"""Membership changes on a real three-member etcd.

Removing the member that is the raft leader used to leave the cluster leaderless for
an election timeout, and a write sent meanwhile timed out (``gnt-node remove`` failed
so in CI).  ``remove_member`` hands leadership away first and waits for a leader.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from haven.store import members
from haven.store.errors import StoreError
from haven.store.etcd import EtcdStore

pytestmark = pytest.mark.integration


@dataclass
class Member:
    name: str
    client: str
    proc: subprocess.Popen[bytes]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def three(tmp_path: Path) -> Iterator[list[Member]]:
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run 'make setup'")
    names = ["e1", "e2", "e3"]
    peers = {n: f"http://127.0.0.1:{_port()}" for n in names}
    initial = ",".join(f"{n}={u}" for n, u in peers.items())
    out: list[Member] = []
    for n in names:
        client = f"http://127.0.0.1:{_port()}"
        with (tmp_path / f"{n}.log").open("wb") as log:
            proc = subprocess.Popen(
                ["etcd", "--name", n, "--data-dir", str(tmp_path / n),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peers[n], "--initial-advertise-peer-urls", peers[n],
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--listen-metrics-urls", f"http://127.0.0.1:{_port()}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        out.append(Member(n, client, proc))
    try:
        yield out
    finally:
        for m in out:
            m.proc.kill()
            m.proc.wait()


def _leader(store: EtcdStore, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            lead = store.status(store.endpoints[0]).get("leader", 0)
            if lead:
                return lead
        except StoreError:
            pass
        assert time.monotonic() < deadline, "the three etcd members elected no leader"
        time.sleep(0.1)


def test_removing_the_raft_leader_keeps_writes_flowing(three: list[Member]) -> None:
    store = EtcdStore([m.client for m in three], "/t/")
    try:
        leader = _leader(store)
        listed = {m.name: m for m in store.member_list()}
        by_id = {m.id: name for name, m in listed.items()}
        # The member that stays behind with the new leader is told to avoid one voter:
        # leadership must go to the other.
        others = sorted(n for n in listed if listed[n].id != leader)
        avoid = listed[others[0]].id
        survivors = [m.client for m in three if listed[m.name].id != leader]
        members.remove_member(store, leader, timeout=20, prefer_not=avoid)

        after = EtcdStore(survivors, "/t/")
        try:
            # The default 2 s request timeout: a leaderless cluster fails this.
            for i in range(20):
                after.put(f"k{i}", b"v")
            assert sorted(m.name for m in after.member_list()) == others
            new_leader = after.status(survivors[0]).get("leader", 0)
            assert by_id.get(new_leader) == others[1], (
                f"leadership went to {by_id.get(new_leader)}, not {others[1]}")
        finally:
            after.close()
    finally:
        store.close()
