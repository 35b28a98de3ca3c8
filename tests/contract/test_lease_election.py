"""LeaseKeeper, Election and Watcher on top of the store contract."""

from __future__ import annotations

import threading

import pytest

from haven.store import (
    Election,
    FencedOut,
    Guard,
    LeaseExpired,
    LeaseKeeper,
    MemoryStore,
    Put,
    Watcher,
    dumps,
    get_json,
    list_json,
    update_json,
)
from haven.store.errors import StoreError

# -- LeaseKeeper -------------------------------------------------------------------


def test_keeper_deadline_is_send_time_plus_ttl_minus_margin(fake_clock):
    store = MemoryStore(clock=fake_clock)
    keeper = LeaseKeeper(store, ttl=5, margin=1.0, clock=fake_clock, run_thread=False)
    renewed: list[float] = []
    lost: list[str] = []
    keeper.on_renewed(lambda d, _l: renewed.append(d))
    keeper.on_lost(lost.append)
    start = fake_clock()
    assert keeper.valid() and keeper.deadline == start + 4

    fake_clock.advance(2)
    assert keeper.renew_once()
    assert renewed == [start + 6]

    store.set_reachable(False)  # keepalives fail from now on
    fake_clock.advance(3.9)
    assert not keeper.renew_once()
    assert keeper.valid(), "still inside ttl - margin of the last successful renewal"
    fake_clock.advance(0.2)
    assert not keeper.valid()
    # etcd (on its own clock) would still renew it, but a lost lease stays lost: no
    # keepalive is even sent.
    store.set_reachable(True)
    sent: list[int] = []
    real_keepalive = store.lease_keepalive
    store.lease_keepalive = lambda i: sent.append(i) or real_keepalive(i)  # type: ignore
    old = keeper.lease_id
    assert not keeper.renew_once()
    assert sent == []
    assert not keeper.valid()
    assert lost and "local deadline" in lost[0] and len(lost) == 1
    assert renewed == [start + 6]

    new = keeper.restart()
    assert new != old and keeper.valid()
    assert keeper.deadline == fake_clock() + 4
    assert renewed[-1] == keeper.deadline  # a fresh grant feeds the watchdog too
    keeper.stop()
    assert not keeper.valid() and len(lost) == 1  # stopping is not losing


def test_keeper_loses_the_lease_when_etcd_forgot_it(fake_clock):
    store = MemoryStore(clock=fake_clock)
    keeper = LeaseKeeper(store, ttl=5, clock=fake_clock, run_thread=False)
    lost: list[str] = []
    keeper.on_lost(lost.append)
    store.lease_revoke(keeper.lease_id)
    assert not keeper.renew_once()
    assert not keeper.valid()
    assert len(lost) == 1 and "no longer knows" in lost[0]
    # Revoked while the local deadline lay ahead: said so (a stale etcd leader does
    # that after a freeze, and the master may count the node lost already).
    assert "4.0 s before its local deadline" in lost[0]


def test_keeper_refuses_a_renewal_answered_after_the_deadline(fake_clock):
    store = MemoryStore(clock=fake_clock)
    keeper = LeaseKeeper(store, ttl=5, margin=1.0, clock=fake_clock, run_thread=False)
    real_keepalive = store.lease_keepalive

    def slow_keepalive(lease_id: int) -> int:
        fake_clock.advance(4.5)  # the process was paused while the request was out
        return real_keepalive(lease_id)

    store.lease_keepalive = slow_keepalive  # type: ignore[method-assign]
    assert not keeper.renew_once()
    assert not keeper.valid()


def test_keeper_thread_keeps_the_lease_alive_then_revokes_it(backend):
    keeper = LeaseKeeper(backend.store, ttl=2, margin=0.5)
    renewals: list[float] = []
    keeper.on_renewed(lambda d, _l: renewals.append(d))
    backend.store.put("alive/n1", b"", lease=keeper.lease_id)
    # On etcd, six renewals at ttl/5 take ~2.4 s: longer than the TTL, so the key
    # survives only because of them.  (The memory store's clock is fake: two will do.)
    needed = 6 if backend.kind == "etcd" else 2
    backend.wait_for(lambda: len(renewals) >= needed, timeout=5)
    assert keeper.valid()
    assert backend.store.get("alive/n1") is not None
    keeper.stop(revoke=True)
    assert backend.store.get("alive/n1") is None
    assert backend.store.lease_keepalive(keeper.lease_id) == 0


# -- Election ----------------------------------------------------------------------


def test_one_candidate_wins_and_a_new_winner_fences_the_old(backend):
    s1, s2 = backend.store, backend.other()
    k1, k2 = LeaseKeeper(s1, ttl=5), LeaseKeeper(s2, ttl=5)
    try:
        e1 = Election(s1, "master", lease=k1, value=b"node1")
        e2 = Election(s2, "master", lease=k2, value=b"node2")
        t1 = e1.campaign_once()
        assert t1 is not None
        assert e2.campaign_once() is None
        assert e1.campaign_once() == t1  # idempotent for the holder
        leader = e2.leader()
        assert leader is not None and leader.value == b"node1"
        assert leader.create_revision == t1 and leader.lease == k1.lease_id
        assert e1.is_leader() and not e2.is_leader() and e2.guard is None
        old_guard = e1.guard
        assert old_guard is not None and old_guard.create_revision == t1
        s1.put("cfg", b"by-node1", guard=old_guard)

        k1.stop(revoke=True)  # node1 dies: its lease and the key go
        assert e1.guard is None
        t2 = e2.campaign_once()
        assert t2 is not None and t2 > t1
        assert e2.guard is not None and e2.guard.create_revision == t2
        with pytest.raises(FencedOut):
            s1.put("cfg", b"zombie", guard=old_guard)
        s2.put("cfg", b"by-node2", guard=e2.guard)
        assert s1.get("cfg").value == b"by-node2"  # type: ignore[union-attr]
        with pytest.raises(LeaseExpired):
            e1.campaign_once()
        assert not e1.resign(t1)  # an old token never deletes the new holder's key
        assert e2.leader() is not None
        assert e2.resign()
        assert e2.leader() is None and not e2.is_leader()
    finally:
        k1.stop()
        k2.stop()


def test_leader_steps_down_locally_when_its_lease_deadline_passes(mem_backend):
    clock = mem_backend.clock
    keeper = LeaseKeeper(mem_backend.store, ttl=5, margin=1.0, clock=clock, run_thread=False)
    e = Election(mem_backend.store, lease=keeper, value=b"n1")
    assert e.campaign_once() is not None and e.is_leader()
    mem_backend.advance(4.1)  # no renewal: past ttl - margin, etcd still has the key
    assert mem_backend.store.get("master") is not None
    assert not e.is_leader() and e.guard is None
    with pytest.raises(LeaseExpired):
        e.campaign_once()
    keeper.restart()
    assert e.campaign_once() is None  # the old key still blocks until etcd expires it
    mem_backend.advance(1.0)
    assert e.campaign_once() is not None


# -- Watcher -----------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.relists: list[tuple[list[str], int]] = []
        self.events: list[tuple[str, str, int]] = []

    def on_relist(self, kvs, revision) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.relists.append(([kv.key for kv in kvs], revision))

    def on_event(self, ev) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.events.append((ev.type, ev.kv.key, ev.revision))

    def keys(self) -> list[str]:
        with self.lock:
            return [k for _, k, _ in self.events]


def _watcher(store, rec):  # type: ignore[no-untyped-def]
    return Watcher(store, "x/", rec.on_event, rec.on_relist, backoff=(0.02, 0.1)).start()


def test_watcher_lists_then_delivers_every_later_change(backend):
    s = backend.store
    s.put("x/a", b"1")
    s.put("y/other", b"")
    rec = Recorder()
    w = _watcher(s, rec)
    try:
        backend.wait_for(lambda: len(rec.relists) == 1)
        assert rec.relists[0] == (["x/a"], s.revision())
        s.put("x/b", b"2")
        s.delete("x/a")
        backend.wait_for(lambda: len(rec.events) == 2)
        assert [(t, k) for t, k, _ in rec.events] == [("PUT", "x/b"), ("DELETE", "x/a")]
    finally:
        w.stop()


def test_watcher_resumes_after_a_drop_without_losing_or_repeating(backend, flaky):
    s = backend.store
    fs = flaky(s)
    rec = Recorder()
    w = _watcher(fs, rec)
    try:
        backend.wait_for(lambda: len(rec.relists) == 1)
        s.put("x/1", b"")
        backend.wait_for(lambda: rec.keys() == ["x/1"])
        fs.cut()
        s.put("x/2", b"")
        s.txn([], [Put("x/3", b""), Put("x/4", b"")])
        backend.wait_for(lambda: len(fs.watch_calls) >= 3)  # it keeps retrying
        fs.heal()
        backend.wait_for(lambda: len(rec.keys()) >= 4)
        s.put("x/5", b"")
        backend.wait_for(lambda: len(rec.keys()) >= 5)
        assert rec.keys() == ["x/1", "x/2", "x/3", "x/4", "x/5"]
        assert len(rec.relists) == 1
        revs = [r for _, _, r in rec.events]
        assert revs == sorted(revs)
    finally:
        w.stop()


def test_watcher_relists_after_its_history_was_compacted(backend, flaky):
    s = backend.store
    fs = flaky(s)
    rec = Recorder()
    w = _watcher(fs, rec)
    try:
        backend.wait_for(lambda: len(rec.relists) == 1)
        fs.cut()
        s.put("x/missed", b"")
        s.put("x/also-missed", b"")
        s.delete("x/also-missed")
        s.compact(s.revision())
        fs.heal()
        backend.wait_for(lambda: len(rec.relists) == 2)
        keys, revision = rec.relists[1]
        assert keys == ["x/missed"] and revision == s.revision()
        assert rec.events == []
        s.put("x/after", b"")
        backend.wait_for(lambda: rec.keys() == ["x/after"])
    finally:
        w.stop()


def test_watcher_stop_returns_promptly_while_idle(backend):
    rec = Recorder()
    w = _watcher(backend.store, rec)
    backend.wait_for(lambda: len(rec.relists) == 1)
    w.stop(timeout=2)
    assert not w._thread.is_alive()


# -- typed helpers -----------------------------------------------------------------


def test_update_json_is_a_cas_loop_that_survives_races(backend):
    s = backend.store
    other = backend.other()
    assert update_json(s, "obj", lambda cur: None) is None and s.get("obj") is None
    assert update_json(s, "obj", lambda cur: {"n": 0}) == {"n": 0}
    raced = []

    def bump(cur):  # type: ignore[no-untyped-def]
        assert cur is not None
        if not raced:  # another writer sneaks in between our read and our CAS
            raced.append(1)
            update_json(other, "obj", lambda c: {**c, "n": c["n"] + 10})
        return {**cur, "n": cur["n"] + 1}

    assert update_json(s, "obj", bump) == {"n": 11}
    doc = get_json(s, "obj")
    assert doc is not None and doc.value == {"n": 11}
    rev = doc.mod_revision
    assert update_json(s, "obj", lambda cur: cur) == {"n": 11}
    assert s.get("obj").mod_revision == rev  # type: ignore[union-attr]  # no-op: no write
    assert s.get("obj").value == dumps({"n": 11}) == b'{"n":11}'  # type: ignore[union-attr]
    docs, _ = list_json(s, "")
    assert list(docs) == ["obj"] and docs["obj"].value == {"n": 11}
    assert update_json(s, "obj", lambda cur: None) is None and s.get("obj") is None


def test_update_json_gives_up_after_too_many_conflicts_and_obeys_the_guard(backend):
    s = backend.store
    other = backend.other()
    s.put("hot", b'{"n":0}')

    def always_raced(cur):  # type: ignore[no-untyped-def]
        other.put("hot", dumps({"n": cur["n"] + 100}))
        return {"n": -1}

    with pytest.raises(StoreError, match="Gave up"):
        update_json(s, "hot", always_raced, retries=3)
    token = s.create("master", b"")
    assert token is not None
    s.delete("master")
    s.create("master", b"")
    with pytest.raises(FencedOut):
        update_json(s, "hot", lambda cur: {"n": 1}, guard=Guard("master", token))


def test_a_new_keeper_takes_over_a_live_lease_and_not_an_expired_one(fake_clock):
    """A restarted node daemon keeps its VMs only by taking over the same lease."""
    store = MemoryStore(clock=fake_clock)
    first = LeaseKeeper(store, ttl=5, margin=1.0, clock=fake_clock, run_thread=False)
    store.put("alive/n1", b"", lease=first.lease_id)
    first.stop(revoke=False)
    fake_clock.advance(3)
    fed: list[tuple[float, int]] = []
    second = LeaseKeeper(store, ttl=5, margin=1.0, clock=fake_clock, run_thread=False,
                         adopt=first.lease_id, on_renewed=lambda d, lid: fed.append((d, lid)))
    assert second.lease_id == first.lease_id and second.valid()
    assert fed == [(fake_clock() + 4, first.lease_id)]  # fed at once, from the renewal
    fake_clock.advance(2)
    assert store.get("alive/n1") is not None  # etcd's countdown restarted at the takeover
    second.stop(revoke=False)
    fake_clock.advance(6)
    third = LeaseKeeper(store, ttl=5, margin=1.0, clock=fake_clock, run_thread=False,
                        adopt=first.lease_id)
    assert third.lease_id != first.lease_id and third.valid()
    assert store.get("alive/n1") is None
