"""What a node does with copies and words that are no longer the instance's: a node
that returns takes back the "running" it published before it went down
(``NodeInstances.retract_stale``, called before its alive key is written again); a
stray copy killed off its primary leaves the primary's word alone; a migration's
rollback resumes a paused source only where that is the instance.

CI caught the bug: right after a killed node came back, ``gnt-instance list`` showed its
instance ``running`` from the old record, and a console sent on that word was refused
("Instance vm1 is not running")."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from haven.daemon.instances import NodeInstances
from haven.hypervisor.base import VmSpec
from haven.model.instance import Observed
from haven.model.keys import Keys
from haven.store import MemoryStore


def _obs(store: MemoryStore, name: str, node: str, st: str) -> None:
    store.put(Keys.observed(name), json.dumps(
        Observed(name=name, node=node, state=st, pid=4242).to_json()).encode())


def _state(store: MemoryStore, name: str) -> Observed:
    kv = store.get(Keys.observed(name))
    assert kv is not None
    return Observed.from_json(json.loads(kv.value))


def node01(tmp_path: Path, store: MemoryStore, **extra: Any) -> Any:
    """A stand-in for node01's daemon, with its ``NodeInstances`` as ``.instances``."""
    daemon = SimpleNamespace(name="node01", settings=SimpleNamespace(data_dir=tmp_path),
                             store=lambda: store, **extra)
    daemon.instances = NodeInstances(daemon)  # type: ignore[arg-type]
    return daemon


def test_only_this_node_s_running_words_without_a_process_are_taken_back(
        tmp_path: Path) -> None:
    store = MemoryStore()
    ni = node01(tmp_path, store).instances
    fake = ni.hypervisor("fake")
    spec = VmSpec(name="alive1", uuid="u1", memory=64, vcpus=1, disks=(), nics=())
    fake.start(spec)
    try:
        _obs(store, "alive1", "node01", "running")  # its process runs: kept
        _obs(store, "gone1", "node01", "running")  # killed with the node: taken back
        _obs(store, "other1", "node02", "running")  # another node's word: not ours
        _obs(store, "down1", "node01", "stopped")  # already true
        assert ni.retract_stale() == ["gone1"]
        gone = _state(store, "gone1")
        assert gone.state == "stopped" and gone.pid == 0 and "node01" in gone.message
        assert gone.with_node  # its node stopped it: its next restart is not counted
        assert _state(store, "alive1").state == "running"
        assert _state(store, "other1").state == "running"
        assert _state(store, "down1").state == "stopped"
        assert ni.retract_stale() == []
    finally:
        fake.kill("alive1")


def test_a_stray_copy_stopped_here_leaves_the_primary_s_word_alone(tmp_path: Path) -> None:
    """A copy killed off its primary used to publish "stopped" over the primary's
    "running" (one key per instance), so the cluster briefly saw the instance down."""
    from haven.model.instance import Instance

    store = MemoryStore()
    ni = node01(tmp_path, store).instances
    inst = Instance("vm1", "u1", "busybox", "fake", "diskless", "node02")
    store.put(Keys.instance("vm1"), json.dumps(inst.to_json()).encode())
    ni.hypervisor("fake").start(VmSpec(name="vm1", uuid="u1", memory=64, vcpus=1,
                                       disks=(), nics=()))
    _obs(store, "vm1", "node02", "running")
    assert ni.stop("vm1", force=True) == {"stopped": True}
    assert "vm1" not in ni.all_vms()
    seen = _state(store, "vm1")
    assert (seen.node, seen.state) == ("node02", "running")


def test_a_paused_migration_source_is_resumed_only_on_the_primary(tmp_path: Path) -> None:
    """A rollback that came too late (the instance moved since) must not resume the
    old source: that would be a second running copy."""
    import pytest

    from haven.daemon.migration import NodeMigration
    from haven.errors import OpPrereqError
    from haven.model.instance import Instance

    store = MemoryStore()
    daemon = node01(tmp_path, store)
    inst = Instance("vm1", "u1", "busybox", "kvm", "sharedfile", "node02")
    store.put(Keys.instance("vm1"), json.dumps(inst.to_json()).encode())
    with pytest.raises(OpPrereqError, match="primary node node02, not node01"):
        NodeMigration(daemon).resume("vm1")  # type: ignore[arg-type]


def test_a_source_its_replication_holds_frozen_is_not_resumed_by_a_rollback(
        tmp_path: Path) -> None:
    """Seed 3010 of the fault campaign: the migration failed on a write to the peer, the
    replication froze the source until the peer is Outdated, and the cleanup of the
    migration (its master killed) tried to resume it, failed, and kept the instance
    locked for good.  Now the rollback leaves it to its replication."""
    from haven.daemon.migration import NodeMigration
    from haven.model.instance import Instance

    store = MemoryStore()
    daemon = node01(tmp_path, store,
                    replication=SimpleNamespace(holds_frozen=lambda n: n == "vm1"))
    inst = Instance("vm1", "u1", "busybox", "kvm", "drbd", "node01")
    store.put(Keys.instance("vm1"), json.dumps(inst.to_json()).encode())
    assert NodeMigration(daemon).resume("vm1") == {"resumed": False}  # type: ignore[arg-type]


def test_a_source_stopped_by_an_io_error_of_a_migration_that_failed_is_left_alone(
        monkeypatch: Any) -> None:
    from haven.hypervisor.qemu import migration

    asked: list[str] = []
    replies = {"query-status": {"status": "io-error"}, "query-migrate": {"status": "failed"}}

    def qmp(path: Any, command: str, args: Any = None, **kw: Any) -> Any:
        asked.append(command)
        return replies.get(command, {})

    monkeypatch.setattr(migration, "qmp_call", qmp)
    assert migration.resume_source("/run/vm1.qmp") is False
    assert "cont" not in asked
    replies["query-status"] = {"status": "postmigrate"}
    replies["query-migrate"] = {"status": "completed"}
    assert migration.resume_source("/run/vm1.qmp") is True
    assert asked[-1] == "cont"
