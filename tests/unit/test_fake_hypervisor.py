"""The fake hypervisor: real detached processes with the QEMU driver's pid-file layout."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.daemon.procs import pid_alive
from haven.hypervisor.base import HypervisorError, VmSpec
from haven.hypervisor.fake import FakeHypervisor


def spec(name: str, **kw: object) -> VmSpec:
    return VmSpec(name=name, uuid=f"uuid-{name}", memory=128, vcpus=2, **kw)  # type: ignore[arg-type]


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[FakeHypervisor]:
    hv = FakeHypervisor(tmp_path / "run")
    yield hv
    for name in list(hv.list()):
        hv.kill(name)


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} still alive")
        time.sleep(0.01)


def test_started_vm_is_listed_running_with_its_spec(hv: FakeHypervisor) -> None:
    info = hv.start(spec("vm1"))
    assert info.status == "running" and pid_alive(info.pid, "guest=vm1,")
    listed = hv.list()
    assert list(listed) == ["vm1"]
    assert listed["vm1"] == info
    assert (listed["vm1"].memory, listed["vm1"].vcpus, listed["vm1"].uuid) == (128, 2, "uuid-vm1")
    assert hv.accel() == "fake"


def test_a_second_driver_instance_finds_the_same_vms(hv: FakeHypervisor) -> None:
    a = hv.start(spec("vm1"))
    b = hv.start(spec("vm2", incoming=True))
    again = FakeHypervisor(hv.run_dir).list()
    assert {n: (i.pid, i.status) for n, i in again.items()} == {
        "vm1": (a.pid, "running"), "vm2": (b.pid, "incoming")}


def test_starting_a_running_name_is_refused(hv: FakeHypervisor) -> None:
    hv.start(spec("vm1"))
    with pytest.raises(HypervisorError, match="already running"):
        hv.start(spec("vm1"))


def test_stop_ends_the_process_and_is_idempotent(hv: FakeHypervisor) -> None:
    pid = hv.start(spec("vm1")).pid
    hv.stop("vm1")
    wait_gone(pid)
    assert hv.list() == {}
    assert not (hv.run_dir / "vm1.pid").exists()
    hv.stop("vm1")
    hv.kill("vm1")


def test_kill_minus_9_from_outside_drops_the_vm_from_the_list(hv: FakeHypervisor) -> None:
    pid = hv.start(spec("vm1")).pid
    hv.start(spec("vm2"))
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert list(hv.list()) == ["vm2"]
    hv.cleanup("vm1")
    assert not (hv.run_dir / "vm1.pid").exists()
    assert hv.start(spec("vm1")).status == "running"  # the name is free again


def test_a_recycled_pid_is_not_taken_for_the_vm(hv: FakeHypervisor) -> None:
    hv.run_dir.mkdir(parents=True)
    (hv.run_dir / "ghost.pid").write_text(f"{os.getpid()}\n")  # alive, but not a VM
    assert hv.list() == {}


def test_guest_poweroff_and_reboot_are_visible(hv: FakeHypervisor) -> None:
    hv.start(spec("vm1"))
    hv.set_status("vm1", "shutdown")
    assert hv.list()["vm1"].status == "shutdown"
    hv.reboot("vm1")
    assert hv.list()["vm1"].status == "running"
    assert hv.meta("vm1")["reboots"] == 1
    with pytest.raises(HypervisorError, match="not running"):
        hv.reboot("vm2")


def test_a_failing_start_leaves_nothing_behind(hv: FakeHypervisor) -> None:
    with pytest.raises(HypervisorError, match="boom"):
        hv.start(spec("vm1", extra={"fake_start_error": "boom"}))
    assert hv.list() == {}
    assert not hv.run_dir.exists() or not list(hv.run_dir.glob("vm1.*"))


def test_console_path_exists_while_the_vm_runs(hv: FakeHypervisor) -> None:
    hv.start(spec("vm1"))
    assert hv.console_path("vm1").exists()
    hv.kill("vm1")
    assert not hv.console_path("vm1").exists()
