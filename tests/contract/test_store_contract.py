"""The store contract (haven.store.base), checked against MemoryStore and real etcd."""

from __future__ import annotations

import threading
import time

import pytest

from haven.store import (
    Compacted,
    Compare,
    Delete,
    FencedOut,
    Get,
    Guard,
    LeaseExpired,
    OutcomeUnknown,
    Put,
    StoreError,
    StoreUnavailable,
)
from haven.store.etcd import EtcdStore, prefix_end


def test_get_of_absent_key_is_none_and_put_tracks_revisions(backend):
    s = backend.store
    assert s.get("a") is None
    r1 = s.put("a", b"one")
    kv = s.get("a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        "a", b"one", r1, r1, 1, 0)
    r2 = s.put("a", b"two")
    assert r2 > r1
    kv = s.get("a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"two", r1, r2, 2)
    assert s.revision() == r2
    s.put("empty", b"")
    empty = s.get("empty")
    assert empty is not None and empty.value == b""


def test_list_is_sorted_bounded_by_prefix_and_gives_the_read_revision(backend):
    s = backend.store
    for key in ["n/b", "n/a", "n0", "m", "n/c/d"]:
        rev = s.put(key, key.encode())
    kvs, revision = s.list("n/")
    assert [kv.key for kv in kvs] == ["n/a", "n/b", "n/c/d"]
    assert revision == rev
    assert [kv.key for kv in s.list("")[0]] == ["m", "n/a", "n/b", "n/c/d", "n0"]
    assert s.list("zzz") == ([], rev)


def test_create_writes_only_an_absent_key(backend):
    s = backend.store
    rev = s.create("k", b"first")
    assert rev is not None
    assert s.create("k", b"second") is None
    kv = s.get("k")
    assert kv is not None and kv.value == b"first" and kv.mod_revision == rev


def test_cas_writes_only_at_the_revision_read(backend):
    s = backend.store
    s.put("k", b"v1")
    kv = s.get("k")
    assert kv is not None
    other = backend.other()  # a second client races us
    assert other.cas("k", b"theirs", kv.mod_revision) is not None
    assert s.cas("k", b"mine", kv.mod_revision) is None
    assert s.cas("k", b"mine", 0) is None  # 0 means "must be absent"
    fresh = s.get("k")
    assert fresh is not None and fresh.value == b"theirs"
    assert s.cas("k", b"mine", fresh.mod_revision) is not None
    assert s.get("k").value == b"mine"  # type: ignore[union-attr]


def test_delete_single_conditional_and_by_prefix(backend):
    s = backend.store
    assert s.delete("nothing") is False
    rev = s.put("d/1", b"x")
    s.put("d/2", b"x")
    s.put("d/sub/3", b"x")
    s.put("d0", b"sibling")
    assert s.delete("d/1", mod_revision=rev - 1) is False
    assert s.get("d/1") is not None
    assert s.delete("d/1", mod_revision=rev) is True
    assert s.delete("d/", prefix=True) is True
    assert [kv.key for kv in s.list("")[0]] == ["d0"]
    assert s.delete("d/", prefix=True) is False


def test_txn_runs_exactly_one_branch_and_answers_each_op(backend):
    s = backend.store
    s.put("t/a", b"A")
    s.put("t/b", b"B")
    before = s.revision()
    res = s.txn([Compare("t/a", "value", "=", b"A"), Compare("t/a", "version", "=", 1)],
                [Put("t/c", b"C"), Get("t/", prefix=True), Delete("t/b")],
                [Put("t/failed", b"!")])
    assert res.succeeded
    assert res.revision == before + 1  # all writes of one txn share one revision
    assert res.responses[0] is None
    listed = res.responses[1]
    assert isinstance(listed, list) and [kv.key for kv in listed] == ["t/a", "t/b", "t/c"]
    assert res.responses[2] == 1
    assert s.get("t/c").mod_revision == s.revision() == before + 1  # type: ignore[union-attr]

    res = s.txn([Compare("t/a", "mod", ">", 10**9)], [Put("t/x", b"no")],
                [Get("t/b"), Delete("t/nothing"), Put("t/failed", b"yes")])
    assert not res.succeeded
    assert res.responses == ([], 0, None)
    assert s.get("t/x") is None and s.get("t/failed").value == b"yes"  # type: ignore[union-attr]


def test_txn_compare_semantics_for_absent_keys(backend):
    s = backend.store
    # An absent key has revisions and version 0; a value compare on it is false.
    assert s.txn([Compare("nope", "create", "=", 0), Compare("nope", "version", "<", 1)],
                 []).succeeded
    assert not s.txn([Compare("nope", "value", "=", b"")], []).succeeded
    assert not s.txn([Compare("nope", "value", "!=", b"x")], []).succeeded


def test_read_only_txn_does_not_bump_the_revision(backend):
    s = backend.store
    s.put("r", b"1")
    rev = s.revision()
    res = s.txn([], [Get("r"), Delete("absent")])
    assert res.revision == rev == s.revision()


def test_txn_writing_one_key_twice_is_refused(backend):
    with pytest.raises(StoreError):
        backend.store.txn([], [Put("k", b"1"), Put("k", b"2")])
    with pytest.raises(StoreError):
        backend.store.txn([], [Put("p/k", b"1"), Delete("p/", prefix=True)])


def test_guard_turns_a_deposed_masters_write_into_fenced_out(backend):
    s = backend.store
    token = s.create("master", b"node1")
    assert token is not None
    guard = Guard("master", token)
    s.put("obj", b"v1", guard=guard)
    kv = s.get("obj")
    assert kv is not None
    s.put("obj", b"v2")
    # Still master, but the object changed: a plain conflict, not fencing.
    assert s.cas("obj", b"stale", kv.mod_revision, guard=guard) is None
    assert s.delete("obj", mod_revision=kv.mod_revision, guard=guard) is False

    # A new master takes over: same key, new create_revision.
    s.delete("master")
    new_token = s.create("master", b"node2")
    assert new_token is not None and new_token > token
    current = s.get("obj")
    assert current is not None
    with pytest.raises(FencedOut):
        s.cas("obj", b"zombie", current.mod_revision, guard=guard)
    with pytest.raises(FencedOut):
        s.put("obj", b"zombie", guard=guard)
    with pytest.raises(FencedOut):
        s.create("fresh", b"zombie", guard=guard)
    with pytest.raises(FencedOut):
        s.delete("obj", guard=guard)
    assert s.get("obj").value == b"v2" and s.get("fresh") is None  # type: ignore[union-attr]
    s.delete("master")
    with pytest.raises(FencedOut):  # no master at all
        s.put("obj", b"zombie", guard=Guard("master", new_token))
    assert s.put("obj", b"ok", guard=None) > 0


def test_lease_ttl_is_at_least_two_and_expiry_removes_keys(backend):
    s = backend.store
    short, ttl = s.lease_grant(1)
    assert ttl == 2
    kept, _ = s.lease_grant(2)
    s.put("alive/short", b"", lease=short)
    s.put("alive/kept", b"", lease=kept)
    assert s.get("alive/short").lease == short  # type: ignore[union-attr]
    for _ in range(3):  # 3.6 s in total: `short` ran out, `kept` was renewed
        backend.advance(1.2)
        assert s.lease_keepalive(kept) == 2
    assert s.get("alive/short") is None
    assert s.get("alive/kept") is not None
    assert s.lease_keepalive(short) == 0
    with pytest.raises(LeaseExpired):
        s.put("alive/late", b"", lease=short)
    s.lease_revoke(kept)
    assert s.list("alive/") == ([], s.revision())


def test_lease_ttl_says_the_time_left_and_zero_once_gone(backend):
    # The master times a node's silence from it when it first sees the node's key.
    s = backend.store
    lease, ttl = s.lease_grant(5)
    assert ttl - 1 <= s.lease_ttl(lease) <= ttl  # etcd rounds down to whole seconds
    backend.advance(2.5)
    assert ttl - 4 <= s.lease_ttl(lease) <= ttl - 2
    s.lease_revoke(lease)
    assert s.lease_ttl(lease) == 0
    assert s.lease_ttl(0x1234_5678) == 0


def test_keepalive_and_revoke_of_an_unknown_lease(backend):
    s = backend.store
    assert s.lease_keepalive(0x1234_5678) == 0
    s.lease_revoke(0x1234_5678)  # ignored


def test_watch_delivers_changes_in_revision_order_and_resumes(backend):
    s = backend.store
    start = s.revision() + 1
    r_a = s.put("w/a", b"1")
    s.put("w/b", b"2")
    s.delete("w/a")
    txn_rev = s.txn([], [Put("w/c", b"3"), Put("w/d", b"4")]).revision
    events = backend.collect(s.watch("w/", start), 5)
    assert [(e.type, e.kv.key) for e in events] == [
        ("PUT", "w/a"), ("PUT", "w/b"), ("DELETE", "w/a"), ("PUT", "w/c"), ("PUT", "w/d")]
    assert events[0].revision == r_a and events[0].kv.value == b"1"
    assert events[2].kv.value == b""
    assert [e.revision for e in events] == sorted(e.revision for e in events)
    assert events[3].revision == events[4].revision == txn_rev
    # Resume after the DELETE: the txn's events come again, nothing before them.
    resumed = backend.collect(s.watch("w/", events[2].revision + 1), 3, timeout=0.5)
    assert [e.kv.key for e in resumed] == ["w/c", "w/d"]
    # A live watch sees later writes too.
    w = s.watch("w/", txn_rev + 1)
    writer = threading.Timer(0.2, lambda: s.put("w/e", b"5"))
    writer.start()
    assert [e.kv.key for e in backend.collect(w, 1)] == ["w/e"]
    # The watch can see the write before the writer has read etcd's answer: let it
    # finish before the store is closed under it.
    writer.join(5)


def test_watch_is_confined_to_its_prefix_and_store_prefix(backend):
    s = backend.store
    neighbour = backend.other(f"{backend.prefix}x")  # shares a string prefix with ours
    start = s.revision() + 1
    s.put("in/1", b"")
    s.put("out/1", b"")
    neighbour.put("in/2", b"")
    s.put("in/3", b"")
    events = backend.collect(s.watch("in/", start), 3, timeout=0.5)
    assert [e.kv.key for e in events] == ["in/1", "in/3"]
    assert [kv.key for kv in neighbour.list("")[0]] == ["in/2"]
    assert neighbour.get("in/1") is None


def test_watch_from_a_compacted_revision_raises_compacted(backend):
    s = backend.store
    first = s.put("c/k", b"1")
    s.put("c/k", b"2")
    rev = s.put("c/k", b"3")
    s.compact(rev)
    s.compact(rev)  # again: harmless
    with pytest.raises(Compacted) as info:
        backend.collect(s.watch("c/", first), 1, timeout=2.0)
    assert info.value.compact_revision == rev
    # From the compaction revision on, history is still there.
    events = backend.collect(s.watch("c/", rev), 1)
    assert [e.kv.value for e in events] == [b"3"]


@pytest.mark.parametrize("closer", ["watch", "store"])
def test_close_ends_a_watch_blocked_in_another_thread(backend, closer):
    store = backend.other()
    w = store.watch("idle/", store.revision() + 1)
    done = threading.Event()

    def run() -> None:
        for _ in w:
            pass
        done.set()

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.2)  # let it block
    t0 = time.monotonic()
    (w if closer == "watch" else store).close()
    assert done.wait(2.0)
    assert time.monotonic() - t0 < 1.0


def test_prefix_end_increments_the_last_byte():
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


@pytest.mark.integration
def test_etcd_rotates_past_a_dead_endpoint(etcd_server):
    dead = f"http://127.0.0.1:{_closed_port()}"
    s = EtcdStore([dead, etcd_server.url], "/rotation/")
    try:
        s.put("k", b"v")
        assert s.get("k").value == b"v"  # type: ignore[union-attr]
        assert s.list("")[0][0].key == "k"
        w = s.watch("", s.revision())  # the watch rotates too
        first = next(iter(w))
        w.close()
        assert first.kv.key == "k"
        s.delete("k")
    finally:
        s.close()


@pytest.mark.integration
def test_etcd_a_closed_client_says_so_retryably(etcd_server):
    """A long poll that still holds the client its node daemon closed (the node left
    the cluster) gets a StoreClosed (503, retryable), not httpx's RuntimeError."""
    from haven.store.errors import StoreClosed

    s = EtcdStore([etcd_server.url], "/closed/")
    s.put("k", b"v")
    s.close()
    for call in (lambda: s.get("k"), lambda: s.put("k", b"w"), lambda: s.list(""),
                 lambda: next(iter(s.watch("", 1)))):
        with pytest.raises(StoreClosed) as info:
            call()
        assert info.value.http_status == 503 and "closed" in str(info.value)


@pytest.mark.integration
def test_etcd_with_only_dead_endpoints_is_unavailable_quickly():
    dead = [f"http://127.0.0.1:{_closed_port()}", f"127.0.0.1:{_closed_port()}"]
    s = EtcdStore(dead, "/x/", timeout=1.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            s.get("k")
        assert time.monotonic() - t0 < 1.0
        msg = str(info.value)
        assert dead[0] in msg and "http://" + dead[1] in msg and "etcd is running" in msg
        with pytest.raises(StoreUnavailable):
            list(s.watch("", 1))
    finally:
        s.close()


@pytest.mark.integration
def test_etcd_resends_reads_puts_and_cas_but_no_other_write_after_a_timeout(etcd_server):
    # A listener that never answers: requests are delivered, replies never come.
    with _silent_listener() as port:
        eps = [f"http://127.0.0.1:{port}", etcd_server.url]
        s = EtcdStore(eps, "/silent/", timeout=0.3)
        try:
            # A general transaction whose answer was lost is not resent: the caller
            # must re-read first.
            with pytest.raises(OutcomeUnknown, match="may or may not"):
                s.txn([Compare("k", "version", "=", 0)], [Put("k", b"v")])
            # The failed endpoint was left: this goes to the live one.
            assert s.get("k") is None
            # A put and a compare-and-swap apply at most once however often they are
            # sent: each is resent once, to the next member, and succeeds.
            for write in (lambda st: st.put("p", b"v"), lambda st: st.cas("c", b"w", 0)):
                fresh = EtcdStore(eps, "/silent/", timeout=0.3)
                try:
                    assert write(fresh)
                finally:
                    fresh.close()
            assert s.get("p").value == b"v"  # type: ignore[union-attr]
            assert s.get("c").value == b"w"  # type: ignore[union-attr]
        finally:
            s.close()


@pytest.mark.integration
def test_etcd_a_stopping_member_does_not_fail_a_put_or_a_read(etcd_server):
    """A member removed from the cluster (a vote moving) answers "raft: stopped" while
    it shuts down, possibly after handing the proposal to raft: reads go on to the next
    member, puts and compare-and-swaps are resent there once; a failed job was the
    symptom (CI, stop 17)."""
    with _answering(b'{"error":"raft: stopped","message":"raft: stopped","code":2}',
                    500) as port:
        eps = [f"http://127.0.0.1:{port}", etcd_server.url]
        for call in (lambda st: st.put("k", b"v"), lambda st: st.get("k"),
                     lambda st: st.cas("c", b"w", 0)):
            st = EtcdStore(eps, "/stopping/", timeout=1.0)
            try:
                call(st)
            finally:
                st.close()
        st = EtcdStore([f"http://127.0.0.1:{port}"], "/stopping/", timeout=1.0)
        try:
            with pytest.raises(OutcomeUnknown, match="raft: stopped"):
                st.txn([], [Put("k", b"x")])
        finally:
            st.close()
        st = EtcdStore([etcd_server.url], "/stopping/")
        assert st.get("k").value == b"v" and st.get("c").value == b"w"  # type: ignore[union-attr]
        st.close()


@pytest.mark.integration
def test_etcd_membership_and_status(etcd_server):
    s = EtcdStore([etcd_server.url], "/m/")
    try:
        members = s.member_list()
        assert len(members) == 1 and members[0].name == "t"
        assert members[0].client_urls == (etcd_server.url,)
        st = s.status(etcd_server.url)
        assert st["leader"] == st["member_id"] == members[0].id > 0
        assert st["raft_term"] >= 1 and st["db_size"] > 0 and st["errors"] == []
        assert s.alarm_list() == []
        # A learner does not count for quorum, so this is safe on a one-member cluster.
        new, listed = s.member_add([f"http://127.0.0.1:{_closed_port()}"], is_learner=True)
        assert new.is_learner and new.id in {m.id for m in listed} and len(listed) == 2
        remaining = s.member_remove(new.id)
        assert [m.id for m in remaining] == [members[0].id]
        s.defragment(etcd_server.url)
        with pytest.raises(StoreUnavailable):
            s.status(f"http://127.0.0.1:{_closed_port()}")
    finally:
        s.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _answering:
    """An HTTP server that answers every POST with one fixed JSON body."""

    def __init__(self, body: bytes, status: int) -> None:
        self.body, self.status = body, status

    def __enter__(self) -> int:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _silent_listener:
    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_open_store_picks_the_implementation_and_stays_lazy():
    import subprocess
    import sys

    from haven.store import MemoryStore, open_store

    assert isinstance(open_store("memory://", "/p/"), MemoryStore)
    s = open_store("http://127.0.0.1:1, 127.0.0.2:2", "/p/")
    assert isinstance(s, EtcdStore)
    assert s.endpoints == ["http://127.0.0.1:1", "http://127.0.0.2:2"]
    s.close()
    with pytest.raises(ValueError):
        open_store(["memory://", "http://127.0.0.1:1"], "/p/")
    # The daemon imports haven.store; httpx is loaded only with EtcdStore.
    out = subprocess.run([sys.executable, "-c",
                          "import sys, haven.store; print('httpx' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
