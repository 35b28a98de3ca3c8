"""A migration's memory copy in the job log: QEMU's samples on the source (a scripted
QMP session), their publication in the store under the node's lease, and the master's
lines while the source's call blocks."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

import haven.master.opcodes  # noqa: F401  (registers the opcodes)
from haven.daemon.migration_progress import ProgressPublisher
from haven.hypervisor.base import HypervisorError
from haven.hypervisor.qemu import migration, migration_spec
from haven.hypervisor.qemu.qmp import QmpTimeout
from haven.master.lu import MasterContext, lu_class
from haven.master.opcodes import migration_watch
from haven.master.opcodes.migration_watch import ProgressFeed, call_watching
from haven.model.cluster import Cluster
from haven.model.instance import Disk, Instance
from haven.model.keys import Keys
from haven.model.migration_progress import MigrationProgress, finished_line, progress_line
from haven.model.node import Node, NodeFacts
from haven.noderpc import NodeRpc
from haven.store import Guard, MemoryStore
from tests.unit.support import FakeClock, wait_for

MIB = 1 << 20
PAGE = 4096


def dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


def query(status: str, remaining_mib: float, copied_mib: float, passes: int = 1,
          total_mib: int = 128, **extra: Any) -> dict[str, Any]:
    """A ``query-migrate`` reply as QEMU 10 gives it (zero pages: ``duplicate``)."""
    pages = int(copied_mib * MIB) // PAGE
    return {"status": status, "expected-downtime": 40, **extra,
            "ram": {"total": total_mib * MIB, "remaining": int(remaining_mib * MIB),
                    "transferred": pages * 100, "normal": pages // 4,
                    "duplicate": pages - pages // 4, "page-size": PAGE, "mbps": 80.0,
                    "dirty-sync-count": passes}}


# -- what a sample says ---------------------------------------------------------------------

def test_a_sample_counts_zero_pages_in_the_rate_and_the_pass_from_the_dirty_syncs() -> None:
    first = migration_spec.progress_of(query("active", 100, 28))
    assert (first.total, first.remaining, first.copied, first.rate) == (
        128 * MIB, 100 * MIB, 28 * MIB, 0.0)
    assert first.passes == 1 and first.percent == pytest.approx(21.875)
    second = migration_spec.progress_of(query("active", 40, 88), first, 2.0)
    assert second.rate == pytest.approx(30 * MIB)  # 60 MiB of memory in 2 s
    assert second.wire_rate == pytest.approx(10e6)  # 80 Mbit/s on the wire
    dirty = migration_spec.progress_of(query("active", 6, 130, passes=3), second, 1.0)
    assert dirty.passes == 3 and dirty.percent is None
    assert migration_spec.progress_of({"status": "setup"}).total == 0


def test_first_pass_line_has_percent_rate_and_time_left() -> None:
    p = MigrationProgress("active", 128 * MIB, 70 * MIB, 5 * MIB, 58 * MIB, 31 * MIB)
    assert progress_line(p) == "* memory: 45% (58 of 128 MiB) at 31 MiB/s, about 2 s left"
    slow = MigrationProgress("active", 4096 * MIB, 4000 * MIB, 0, 96 * MIB, 10 * MIB)
    assert progress_line(slow) == \
        "* memory: 2% (96 of 4096 MiB) at 10 MiB/s, about 7 min left"
    # No rate yet (the first sample): no estimate at all rather than a wrong one.
    assert progress_line(MigrationProgress("active", 128 * MIB, 128 * MIB, 0)) == \
        "* memory: 0% (0 of 128 MiB)"


def test_dirty_passes_say_the_pass_and_never_a_time_left() -> None:
    p = MigrationProgress("active", 128 * MIB, int(4.5 * MIB), 0, 140 * MIB, 30 * MIB,
                          passes=3, expected_downtime_ms=40)
    line = progress_line(p)
    assert line == ("* memory: pass 3, resending 4.5 MiB the guest dirtied meanwhile "
                    "at 30 MiB/s, expected downtime 40 ms")
    assert "left" not in line and "%" not in line


def test_nothing_to_say_during_setup_or_after_the_copy() -> None:
    assert progress_line(MigrationProgress("setup", 0, 0, 0)) is None
    assert progress_line(MigrationProgress("device", 128 * MIB, 0, 0)) is None
    last = MigrationProgress("active", 128 * MIB, 1 * MIB, 0, passes=2)
    assert finished_line(last, 12 * MIB, 4300) == \
        "* memory: copy finished (128 MiB, 12 MiB sent, 4.3 s)"
    assert finished_line(None, 0, 0) == "* memory: copy finished"


def test_a_sample_survives_the_store_as_json() -> None:
    p = MigrationProgress("active", 1, 2, 3, 4, 5.5, 6.5, 7, 8.0, "tcp:a:1")
    assert MigrationProgress.from_json(json.loads(json.dumps(p.to_json()))) == p


# -- the source's loop hands samples over -------------------------------------------------

class ScriptedQmp:
    """The source's monitor: ``query-migrate`` answers from ``replies`` in turn (the
    last one repeats); ``wait_event`` times out ``polls`` times, then says completed."""

    def __init__(self, replies: list[dict[str, Any]], polls: int) -> None:
        self.replies = replies
        self.polls = polls
        self.commands: list[str] = []
        self.label = "vm1"

    def __call__(self, path: str, timeout: float = 5.0, label: str | None = None
                 ) -> ScriptedQmp:
        return self

    def __enter__(self) -> ScriptedQmp:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass

    def execute(self, command: str, args: Any = None, timeout: float | None = None
                ) -> dict[str, Any]:
        self.commands.append(command)
        if command == "query-status":
            return {"status": "running"}
        if command != "query-migrate":
            return {}
        if not self.commands.count("migrate"):
            return {"status": "none"}
        if self.polls < 0:  # completed: the final numbers
            return {"status": "completed", "total-time": 900, "downtime": 20,
                    "setup-time": 1, "ram": {"transferred": 7 * MIB}}
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def wait_event(self, names: Any, timeout: float) -> dict[str, Any]:
        self.polls -= 1
        if self.polls >= 0:
            raise QmpTimeout("no event")
        return {"event": "MIGRATION", "data": {"status": "completed"}}


@pytest.fixture
def qmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedQmp]:
    fake = ScriptedQmp([query("active", 128 - 40 * i, 40 * i) for i in range(1, 4)], 3)
    monkeypatch.setattr(migration, "qmp_session", fake)
    monkeypatch.setattr(migration, "PROGRESS_POLL", 0.0)
    yield fake


def test_migrate_hands_every_poll_to_on_progress(qmp: ScriptedQmp) -> None:
    seen: list[MigrationProgress] = []
    stats = migration.migrate("/run/vm1.qmp", "tcp:10.0.0.2:12000", on_progress=seen.append)
    assert stats.transferred == 7 * MIB
    assert [round(100 - s.remaining / s.total * 100) for s in seen] == [31, 62, 94]
    # Every sample has a rate, the first one's counted from the start.
    assert all(s.rate > 0 for s in seen)


def test_a_failing_progress_callback_does_not_break_the_migration(
        qmp: ScriptedQmp, caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def broken(p: MigrationProgress) -> None:
        calls.append(p)
        raise RuntimeError("etcd is gone")

    stats = migration.migrate("/run/vm1.qmp", "tcp:10.0.0.2:12000", on_progress=broken)
    assert stats.total_ms == 900 and len(calls) == 3
    assert "migrate_cancel" not in qmp.commands
    # Logged once, not at every poll.
    assert caplog.text.count("progress callback failed") == 1


# -- the source node publishes under its lease --------------------------------------------

def test_published_under_the_lease_throttled_and_deleted_at_the_end() -> None:
    clock = FakeClock()
    store = MemoryStore("/haven/t/", clock=clock)
    lease, _ = store.lease_grant(5)
    key = Keys.migration_progress("vm1")
    with ProgressPublisher(store, "vm1", "tcp:x:1", lease, every=0.05) as publish:
        for i in range(1, 4):
            publish(MigrationProgress("active", 128 * MIB, (128 - i) * MIB, 0))
        wait_for(lambda: store.get(key) is not None, what="the first sample published")
        kv = store.get(key)
        assert kv is not None and kv.lease == lease
        # Only the latest sample counts: never a backlog of stale ones.
        wait_for(lambda: json.loads(store.get(key).value)["remaining"]  # type: ignore[union-attr]
                 == 125 * MIB, what="the latest sample")
        assert publish.published <= 2
        assert json.loads(store.get(key).value)["uri"] == "tcp:x:1"  # type: ignore[union-attr]
    assert store.get(key) is None


def test_a_dead_nodes_progress_goes_with_its_lease() -> None:
    clock = FakeClock()
    store = MemoryStore("/haven/t/", clock=clock)
    lease, _ = store.lease_grant(5)
    publish = ProgressPublisher(store, "vm1", "tcp:x:1", lease, every=0.01).__enter__()
    publish(MigrationProgress("active", 128 * MIB, 64 * MIB, 0))
    wait_for(lambda: publish.published == 1, what="published")
    clock.advance(6)  # the node died: nobody renews
    assert store.get(Keys.migration_progress("vm1")) is None
    publish.__exit__(None, None, None)


def test_a_store_that_fails_loses_progress_but_raises_nothing() -> None:
    class Broken(MemoryStore):
        def put(self, *a: Any, **kw: Any) -> int:
            raise HypervisorError("down")

        def delete(self, *a: Any, **kw: Any) -> bool:
            raise HypervisorError("down")

    with ProgressPublisher(Broken(), "vm1", "tcp:x:1", 0, every=0.01) as publish:
        publish(MigrationProgress("active", 128 * MIB, 64 * MIB, 0))
    assert publish.published == 0


# -- the master's job log -----------------------------------------------------------------

def sample(remaining_mib: int, uri: str = "tcp:10.0.0.2:12000", rate: float = 32 * MIB
           ) -> bytes:
    return json.dumps(MigrationProgress("active", 128 * MIB, remaining_mib * MIB, 0,
                                        rate=rate, uri=uri).to_json()).encode()


def test_the_feed_skips_leftovers_repeats_and_garbage() -> None:
    feed = ProgressFeed("tcp:10.0.0.2:12000")
    assert feed.line(None) is None
    assert feed.line(b"{not json") is None
    assert feed.line(sample(64, uri="tcp:10.0.0.2:12001")) is None  # an earlier attempt
    assert feed.line(sample(64)) == "* memory: 50% (64 of 128 MiB) at 32 MiB/s, about 2 s left"
    assert feed.line(sample(64)) is None


def test_lines_come_while_the_call_blocks_then_the_end_of_the_copy() -> None:
    published: list[bytes | None] = [None]
    lines: list[str] = []
    release = threading.Event()

    def call() -> dict[str, Any]:
        release.wait(5)
        return {"total_ms": 4100.0, "transferred": 9 * MIB}

    def feedback(line: str) -> None:
        lines.append(line)
        # The test plays the source: each line read lets it move on.
        if len(lines) == 1:
            published[0] = sample(32)
        elif len(lines) == 2:
            release.set()

    published[0] = sample(96)
    stats = call_watching(call, lambda: published[0], feedback, "tcp:10.0.0.2:12000",
                          every=0.01)
    assert stats["total_ms"] == 4100.0
    assert lines == ["* memory: 25% (32 of 128 MiB) at 32 MiB/s, about 3 s left",
                     "* memory: 75% (96 of 128 MiB) at 32 MiB/s, about 1 s left",
                     "* memory: copy finished (128 MiB, 9 MiB sent, 4.1 s)"]


def test_the_calls_error_is_raised_and_a_failing_read_changes_nothing() -> None:
    lines: list[str] = []

    def call() -> dict[str, Any]:
        threading.Event().wait(0.05)
        raise HypervisorError("Could not migrate instance 'vm1': the network is cut.")

    def read() -> bytes | None:
        raise HypervisorError("etcd unavailable")

    with pytest.raises(HypervisorError, match="network is cut"):
        call_watching(call, read, lines.append, "tcp:x:1", every=0.01)
    assert lines == []  # no "copy finished" for a copy that failed


# -- the whole migrate job ------------------------------------------------------------------

class SourcePublishing(NodeRpc):
    """Both nodes' migration calls: the source's ``migrate-send`` publishes two samples
    as the real source does, each kept until the job has logged it."""

    def __init__(self, store: MemoryStore, lines: list[str]) -> None:
        self.store, self.lines = store, lines
        self.paths: list[str] = []

    def call(self, address: str, port: int, method: str, path: str, body: Any = None,
             timeout: float = 10.0, verify: bool | str = True) -> Any:
        self.paths.append(path.rsplit("/", 1)[-1])
        if path.endswith("/migrate-accept"):
            return {"uri": "tcp:10.0.0.3:12000"}
        if path.endswith("/migrate-send"):
            for n, remaining in enumerate((100, 20), 1):
                self.store.put(Keys.migration_progress("vm1"),
                               sample(remaining, uri="tcp:10.0.0.3:12000"))
                wait_for(partial(self.logged, n), what=f"progress line {n}")
            self.store.delete(Keys.migration_progress("vm1"))
            return {"total_ms": 3000.0, "downtime_ms": 8.0, "setup_ms": 1.0,
                    "transferred": 40 * MIB, "pre_switchover_ms": 0.0}
        return {"status": "running"}

    def logged(self, n: int) -> bool:
        """The job has logged ``n`` progress lines."""
        return sum(line.startswith("* memory: ") for line in self.lines) == n


def test_the_migrate_job_logs_the_copy_between_its_steps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore("/haven/mig/")
    store.create("master", b'{"node": "node01"}')
    token = store.get("master").create_revision  # type: ignore[union-attr]
    store.put(Keys.cluster, dumps(Cluster("c", "u", 0, 0, True, (), "", "").to_json()))
    for i, node in enumerate(("node01", "node02", "node03"), 1):
        store.put(Keys.node(node), dumps(Node(node, f"u{i}", f"10.0.0.{i}", f"10.0.0.{i}",
                                              5080).to_json()))
        store.put(Keys.alive(node), dumps({"node": node}))
        store.put(Keys.facts(node), dumps(NodeFacts(node, 4096, 2048, 100, 2, 10000, 8000,
                                                    ("kvm",), "kvm", "QEMU 10.0.2",
                                                    "x86_64", "cpu", 0.0).to_json()))
    inst = Instance("vm1", "u-vm1", "busybox", "kvm", "sharedfile", "node01", (),
                    (Disk("d0", 0, 64, "x/disk0"),), admin_state="up",
                    beparams={"memory": 128})
    store.put(Keys.instance("vm1"), dumps(inst.to_json()))
    store.put(Keys.observed("vm1"), dumps({"name": "vm1", "node": "node01",
                                           "state": "running", "accel": "kvm"}))
    lines: list[str] = []
    rpc = SourcePublishing(store, lines)
    ctx = MasterContext(store=store, guard=lambda: Guard("master", token),
                        master_node="node01", rpc=rpc)
    monkeypatch.setattr(migration_watch, "PROGRESS_EVERY", 0.01)
    op = {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "vm1", "target_node": "node03"}
    lu = lu_class(op)(ctx, op, lines.append)
    lu.check_arguments()
    lu.check_prereq()
    result = lu.exec()
    assert result["to"] == "node03" and result["transferred"] == 40 * MIB
    assert rpc.paths == ["migrate-accept", "migrate-send", "migrate-wait", "migrate-finish"]
    assert lines == [
        "* starting the destination on node03",
        "* migrating vm1 from node01 to node03",
        "* memory: 22% (28 of 128 MiB) at 32 MiB/s, about 3 s left",
        "* memory: 84% (108 of 128 MiB) at 32 MiB/s, less than 1 s left",
        "* memory: copy finished (128 MiB, 40 MiB sent, 3.0 s)",
        "* migrated in 3000.0 ms, downtime 8.0 ms"]
    store.close()
