"""The shutdown job presses the power button again until the guest hears it; the
create job of a replicated instance waits for its replicas' sync (unless told not to),
with Ganeti-style progress lines, and fails clearly when the sync stalls or is lost."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

import haven.master.opcodes  # noqa: F401  (registers the opcodes)
from haven.errors import OpExecError
from haven.master.lu import LogicalUnit, MasterContext, lu_class
from haven.master.opcodes import instance_sync as sync
from haven.master.opcodes.instance_power import shut_down
from haven.model.cluster import Cluster
from haven.model.instance import Disk, Instance
from haven.model.keys import Keys
from haven.model.node import Node, NodeFacts
from haven.model.replica import INCONSISTENT, OUTDATED, UP_TO_DATE, DiskReplica, Replicas
from haven.noderpc import NodeRpc
from haven.store import Guard, MemoryStore

NODES = ("node01", "node02")
Handler = Callable[[str, dict[str, Any]], Any]


class ScriptedRpc(NodeRpc):
    """Answers node calls by their last path segment; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.handlers: dict[str, Handler] = {}

    def call(self, address: str, port: int, method: str, path: str,
             body: Any = None, timeout: float = 10.0, verify: bool | str = True) -> Any:
        action = path.rsplit("/", 1)[-1]
        self.calls.append((address, action, dict(body or {})))
        handler = self.handlers.get(action)
        return handler(path, dict(body or {})) if handler else {}

    def actions(self) -> list[str]:
        return [a for _addr, a, _b in self.calls]


def dumps(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


@pytest.fixture
def rpc() -> ScriptedRpc:
    return ScriptedRpc()


@pytest.fixture
def ctx(rpc: ScriptedRpc) -> Iterator[MasterContext]:
    store = MemoryStore("/haven/ops/")
    store.create("master", b'{"node": "node01"}')
    token = store.get("master").create_revision  # type: ignore[union-attr]
    store.put(Keys.cluster, dumps(Cluster("c", "u", 0, 0, True, (), "", "").to_json()))
    for i, name in enumerate(NODES, 1):
        store.put(Keys.node(name), dumps(Node(name, f"u{i}", f"10.0.0.{i}", f"10.0.0.{i}",
                                              5080).to_json()))
        store.put(Keys.alive(name), dumps({"node": name}))
        store.put(Keys.facts(name), dumps(NodeFacts(name, 4096, 2048, 100, 2, 10000, 8000,
                                                    ("kvm",), "tcg", "0", "x86_64", "",
                                                    0.0).to_json()))
    yield MasterContext(store=store, guard=lambda: Guard("master", token),
                        master_node="node01", rpc=rpc)
    store.close()


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, msg: str) -> None:
        self.lines.append(msg)


def lu(ctx: MasterContext, op: dict[str, Any], log: Log) -> LogicalUnit:
    unit = lu_class(op)(ctx, op, log)
    unit.check_arguments()
    return unit


# -- shutdown --------------------------------------------------------------------------

def test_shutdown_presses_again_until_the_guest_hears_it(ctx: MasterContext,
                                                         rpc: ScriptedRpc) -> None:
    answers = iter(["on", "on", "off"])
    rpc.handlers["power-button"] = lambda _p, _b: {"state": next(answers)}
    rpc.handlers["stop"] = lambda _p, _b: {"stopped": True}
    log = Log()
    res = shut_down(lu(ctx, {"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": "vm1"}, log),
                    "node01", "vm1", 120.0)
    assert res == {"stopped": True}
    assert rpc.actions() == ["power-button"] * 3 + ["stop"]
    assert all(b["wait"] == 3.0 for _a, act, b in rpc.calls if act == "power-button")
    assert [ln for ln in log.lines if "again" in ln] == [
        "* vm1 is still running: pressed the power button again (1)",
        "* vm1 is still running: pressed the power button again (2)"]
    # The guest powered off: the final stop has nothing left to wait for.
    assert rpc.calls[-1][2] == {"timeout": 0.0}


def test_shutdown_of_a_deaf_guest_stops_it_once_the_timeout_passed(
        ctx: MasterContext, rpc: ScriptedRpc) -> None:
    rpc.handlers["power-button"] = lambda _p, _b: {"state": "on"}
    log = Log()
    shut_down(lu(ctx, {"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": "vm1"}, log),
              "node01", "vm1", 0.05)
    assert rpc.actions()[-1] == "stop"
    assert log.lines[-1] == "* vm1 did not power off within 0.05 s; stopping it"


def test_shutdown_of_a_paused_guest_does_not_wait(ctx: MasterContext,
                                                  rpc: ScriptedRpc) -> None:
    rpc.handlers["power-button"] = lambda _p, _b: {"state": "it is paused"}
    log = Log()
    shut_down(lu(ctx, {"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": "vm1"}, log),
              "node01", "vm1", 120.0)
    assert rpc.actions() == ["power-button", "stop"]
    assert "cannot hear the power button (it is paused)" in log.lines[-1]


# -- wait for sync ---------------------------------------------------------------------

def drbd_instance(ctx: MasterContext, generation: int = 1) -> Instance:
    inst = Instance("vm2", "u-vm2", "busybox", "kvm", "drbd", "node01", ("node02",),
                    (Disk("d0", 0, 64, "vm2/disk0"), Disk("d1", 1, 64, "vm2/disk1")),
                    admin_state="up", generation=generation, beparams={"memory": 128})
    ctx.store.put(Keys.instance("vm2"), dumps(inst.to_json()))
    return inst


def set_secondary(ctx: MasterContext, inst: Instance, *states: DiskReplica) -> None:
    reps = Replicas("vm2", inst.generation, {
        "node01": {i: DiskReplica(UP_TO_DATE) for i in range(len(states))},
        "node02": dict(enumerate(states))})
    ctx.store.put(Keys.replicas("vm2"), dumps(reps.to_json()))


class VirtualTime:
    """A monotonic clock that sleeping advances, with a hook per sleep."""

    def __init__(self, on_sleep: Callable[[float], None] = lambda _t: None) -> None:
        self.now = 0.0
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.on_sleep(self.now)


def test_wait_for_sync_logs_progress_until_up_to_date(ctx: MasterContext) -> None:
    inst = drbd_instance(ctx)
    set_secondary(ctx, inst, DiskReplica(INCONSISTENT, 0.0), DiskReplica(INCONSISTENT, 0.0))

    def advance(now: float) -> None:  # 10 %/s on disk 0, then disk 1
        p0, p1 = min(100.0, now * 10), max(0.0, min(100.0, (now - 10) * 10))
        set_secondary(ctx, inst,
                      DiskReplica(UP_TO_DATE) if p0 >= 100 else DiskReplica(INCONSISTENT, p0),
                      DiskReplica(UP_TO_DATE) if p1 >= 100 else DiskReplica(INCONSISTENT, p1))

    vt = VirtualTime(advance)
    log = Log()
    sync.wait_for_sync(lu(ctx, {"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": "vm2"},
                          log), inst, clock=vt.clock, sleep=vt.sleep)
    assert log.lines[0] == "- INFO: Waiting for instance vm2 to sync disks"
    assert "- INFO: - device disk/0: 0.0% done" in log.lines
    assert "- INFO: - device disk/0: 40.0% done" in log.lines
    assert "- INFO: - device disk/1: 40.0% done" in log.lines
    assert log.lines[-1] == "- INFO: Instance vm2's disks are in sync"
    assert 20.0 <= vt.now <= 21.0
    # The whole sync's percent, rate and time left, from the second report on.
    rates = [ln for ln in log.lines if re.fullmatch(
        r"- INFO: \d+\.\d% synced, \d+\.\d MiB/s, about \d+ s left", ln)]
    assert len(rates) >= 5, log.lines
    # Lines every PROGRESS_EVERY seconds (two disks and the rate), not one per poll.
    assert len(log.lines) < 2 + 3 * (20 / sync.PROGRESS_EVERY + 1) + 1


def test_the_rate_line_says_what_is_left_or_that_it_stalled() -> None:
    assert sync.rate_line(60.0, 50.0, 1000, 2.0) == \
        "60.0% synced, 50.0 MiB/s, about 8 s left"
    assert sync.rate_line(60.0, 60.0, 1000, 2.0) == "60.0% synced, 0.0 MiB/s, stalled"


def test_wait_for_sync_fails_clearly_when_the_sync_stalls(ctx: MasterContext) -> None:
    inst = drbd_instance(ctx)
    set_secondary(ctx, inst, DiskReplica(INCONSISTENT, 45.0), DiskReplica(UP_TO_DATE))
    vt = VirtualTime()
    with pytest.raises(OpExecError, match=r"no progress for 30 s \(device disk/0: 45.0% "
                                          r"done\).*node02"):
        sync.wait_for_sync(lu(ctx, {"OP_ID": "OP_INSTANCE_SHUTDOWN",
                                    "instance_name": "vm2"}, Log()),
                           inst, stall_timeout=30, clock=vt.clock, sleep=vt.sleep)
    assert 30 <= vt.now <= 31


def test_wait_for_sync_fails_at_once_when_the_replica_is_lost(ctx: MasterContext) -> None:
    inst = drbd_instance(ctx)
    set_secondary(ctx, inst, DiskReplica(OUTDATED, 0.0, message="node02 stopped answering"),
                  DiskReplica(UP_TO_DATE))
    vt = VirtualTime()
    with pytest.raises(OpExecError, match="disk/0 on node02: Outdated"):
        sync.wait_for_sync(lu(ctx, {"OP_ID": "OP_INSTANCE_SHUTDOWN",
                                    "instance_name": "vm2"}, Log()),
                           inst, clock=vt.clock, sleep=vt.sleep)
    assert vt.now == 0


def test_states_of_an_older_generation_do_not_count(ctx: MasterContext) -> None:
    inst = drbd_instance(ctx, generation=2)
    set_secondary(ctx, replace(inst, generation=1), DiskReplica(UP_TO_DATE),
                  DiskReplica(UP_TO_DATE))
    done, lines, _ = sync.progress(inst, sync.read(
        lu(ctx, {"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": "vm2"}, Log()), "vm2"))
    assert not done and "no state at generation 2" in lines[0]


# -- create ----------------------------------------------------------------------------

def create_op(**kw: Any) -> dict[str, Any]:
    op = {"OP_ID": "OP_INSTANCE_CREATE", "instance_name": "vm2", "os_type": "busybox",
          "disk_template": "drbd", "disks": [{"size": "64m"}], "pnode": "node01",
          "snode": "node02", "beparams": {"memory": 128}}
    op.update(kw)
    return op


def run_create(ctx: MasterContext, rpc: ScriptedRpc, op: dict[str, Any],
               monkeypatch: pytest.MonkeyPatch) -> tuple[Log, list[str]]:
    def disks(_p: str, _b: dict[str, Any]) -> list[dict[str, Any]]:
        inst = Instance.from_json(json.loads(ctx.store.get(Keys.instance("vm2")).value))  # type: ignore[union-attr]
        return [{**d.__dict__, "path": f"vm2/disk{d.index}"} for d in inst.disks]

    rpc.handlers["create-disks"] = disks
    waited: list[str] = []

    def fake_wait(unit: LogicalUnit, inst: Instance, **_kw: Any) -> None:
        # The lock was handed back, so the agent can start the mirror meanwhile.
        waited.append(f"{inst.name} after {rpc.actions()[-1]}")
        assert ctx.store.get(Keys.lock("instance/vm2")) is None

    monkeypatch.setattr(sync, "wait_for_sync", fake_wait)
    monkeypatch.setattr("haven.osdef.find_os", lambda _name: (None, None))
    log = Log()
    ctx.store.put(Keys.lock("instance/vm2"), b"7")
    unit = lu(ctx, op, log)
    unit.check_prereq()
    unit.exec()
    return log, waited


def test_create_waits_for_the_sync_after_the_start(ctx: MasterContext, rpc: ScriptedRpc,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _log, waited = run_create(ctx, rpc, create_op(), monkeypatch)
    assert waited == ["vm2 after start"]


def test_create_with_no_wait_for_sync_returns_at_once(ctx: MasterContext, rpc: ScriptedRpc,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    log, waited = run_create(ctx, rpc, create_op(wait_for_sync=False), monkeypatch)
    assert waited == []
    assert "--no-wait-for-sync" in log.lines[-1]


def test_create_with_no_start_says_why_it_does_not_wait(
        ctx: MasterContext, rpc: ScriptedRpc, monkeypatch: pytest.MonkeyPatch) -> None:
    log, waited = run_create(ctx, rpc, create_op(start=False), monkeypatch)
    assert waited == [] and "start" not in rpc.actions()
    assert "copied once it runs (gnt-instance startup vm2)" in log.lines[-1]
    # The job still holds the lock: nothing was handed back early.
    assert ctx.store.get(Keys.lock("instance/vm2")) is not None


def test_rapi_create_body_takes_wait_for_sync() -> None:
    from haven.api.instances_api import create_op

    op = create_op({"__version__": 1, "name": "vm2", "disk_template": "drbd",
                    "os_type": "busybox", "disks": [{"size": 64}], "wait_for_sync": False})
    unit = lu_class(op)(None, op, Log())
    unit.check_arguments()
    assert unit.op["wait_for_sync"] is False
    op = create_op({"name": "vm2", "disk_template": "drbd", "os_type": "busybox",
                    "disks": [{"size": 64}]})
    unit = lu_class(op)(None, op, Log())
    unit.check_arguments()
    assert unit.op["wait_for_sync"] is True  # Ganeti's default: wait
