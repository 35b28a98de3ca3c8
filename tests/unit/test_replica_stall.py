"""The primary's agent cuts off a secondary whose mirror stalls (no progress, writes
pending) for STALL_SECONDS, once, and never one that makes progress or is idle."""

from __future__ import annotations

from typing import Any

import pytest

from haven.daemon import replica_stall
from haven.daemon.replica_stall import STALL_SECONDS
from haven.daemon.replication import NodeReplication
from haven.hypervisor.qemu import replication as repl
from haven.hypervisor.qemu.mirror_spec import MirrorState
from haven.model.instance import Instance


class FakeInstances:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def emit(self, kind: str, inst: Instance, message: str, severity: str = "info") -> None:
        self.events.append((kind, inst.name, severity))


class FakeDaemon:
    def __init__(self) -> None:
        self.instances = FakeInstances()


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    clock = {"now": 1000.0, "severed": []}
    monkeypatch.setattr(replica_stall.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(repl, "sever", lambda qmp, disk: clock["severed"].append(disk) or True)
    monkeypatch.setattr(NodeReplication, "qmp_path", lambda self, name: f"/run/{name}.qmp")
    return clock


def state(offset: int, length: int, phase: str = "ready") -> MirrorState:
    return MirrorState(0, "mirror0", phase, offset, length)  # type: ignore[arg-type]


def observe(rep: NodeReplication, clock: dict[str, Any], inst: Instance,
            seq: list[tuple[float, MirrorState]]) -> list[str]:
    phases = []
    for at, m in seq:
        clock["now"] = 1000.0 + at
        phases.append(replica_stall.unless_stalled(rep, inst, m).phase)
    return phases


def vm() -> Instance:
    return Instance(name="vm1", uuid="u1", hypervisor="kvm", disk_template="drbd",
                    os="busybox", primary_node="node01")


def test_a_mirror_stalled_with_writes_pending_is_cut_off_once(rig: dict[str, Any]) -> None:
    daemon = FakeDaemon()
    rep = NodeReplication(daemon)  # type: ignore[arg-type]
    stuck = state(4096, 8192)
    seq = [(t, stuck) for t in (0, 2, 4, STALL_SECONDS - 0.1, STALL_SECONDS + 0.1)]
    assert observe(rep, rig, vm(), seq) == ["ready"] * 4 + ["failed"]
    assert rig["severed"] == [0]
    assert daemon.instances.events == [("replica-hung", "vm1", "warning")]
    assert ("vm1", 0) in rep._severed


def test_progress_or_idleness_is_never_a_stall(rig: dict[str, Any]) -> None:
    rep = NodeReplication(FakeDaemon())  # type: ignore[arg-type]
    moving = [(2.0 * t, state(4096 * t, 4096 * t + 8192)) for t in range(10)]
    idle = [(30 + 2.0 * t, state(8192, 8192)) for t in range(10)]
    assert set(observe(rep, rig, vm(), moving + idle)) == {"ready"}
    # A stall shorter than the limit, then progress: the clock starts again.
    stuck = state(4096, 8192)
    seq = [(60, stuck), (60 + STALL_SECONDS - 1, stuck), (61 + STALL_SECONDS, state(8192, 12288)),
           (62 + STALL_SECONDS + 2, state(8192, 12288))]
    assert set(observe(rep, rig, vm(), seq)) == {"ready"}
    assert rig["severed"] == []


def _slow_monitor(qmp: str, disk: int) -> bool:
    from haven.hypervisor.qemu.qmp import QmpTimeout

    # QEMU's main loop drains writes stuck on the hung peer: the stop of the degrade
    # was sent and lands later, after this timeout.
    raise QmpTimeout(f"The QMP monitor ({qmp}) did not answer stop within 5 s")


def test_a_cut_whose_monitor_times_out_holds_the_guest_frozen_for_its_thaw(
        rig: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed 3008 of the fault campaign: the degrade's ``stop`` timed out, landed later,
    and left the guest paused for good (nobody was to resume it).  Now the guest is
    held frozen, so release_frozen resumes it once its peer is Outdated, and the disk
    reports failed, which is what records the peer Outdated."""
    monkeypatch.setattr(repl, "sever", _slow_monitor)
    rep = NodeReplication(FakeDaemon())  # type: ignore[arg-type]
    stuck = state(4096, 8192)
    phases = observe(rep, rig, vm(), [(0, stuck), (STALL_SECONDS + 0.1, stuck)])
    assert phases == ["ready", "failed"]
    assert "vm1" in rep._frozen


def test_an_unanswered_quorum_peer_whose_cut_times_out_is_held_frozen(
        rig: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from haven.errors import HavenError

    def no_answer(target: Any, timeout: float) -> None:
        raise HavenError("no NBD greeting")

    monkeypatch.setattr(repl, "sever", _slow_monitor)
    monkeypatch.setattr(repl, "probe", no_answer)
    monkeypatch.setattr(NodeReplication, "targets", lambda self, inst: {0: None})
    rep = NodeReplication(FakeDaemon())  # type: ignore[arg-type]
    idle = MirrorState(0, "", "ready", 0, 0, slot="replica", idle_s=5.0)
    rig["now"] = 1000.0
    assert replica_stall.unless_unanswered(rep, vm(), idle).phase == "ready"
    rig["now"] = 1000.0 + STALL_SECONDS + 0.1
    assert replica_stall.unless_unanswered(rep, vm(), idle).phase == "failed"
    assert "vm1" in rep._frozen
