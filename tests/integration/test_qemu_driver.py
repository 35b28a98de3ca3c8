"""The QEMU driver against real QEMU under TCG.

Most tests run a kernel-less VM (SeaBIOS finds no boot disk and idles: enough for the
monitor, reboot, kill and list).  ACPI power-down and the console need a real guest: the
kernel + busybox initramfs of ``guest/build-guest.sh`` in
``${HAVEN_GUEST_DIR:-/var/cache/haven/guest}``, built on first use.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.daemon.procs import pid_alive
from haven.hypervisor.base import DiskSpec, HypervisorError, NicSpec, VmSpec
from haven.hypervisor.qemu import QemuHypervisor
from haven.hypervisor.qemu.accel import probe_kvm
from haven.hypervisor.qemu.qmp import (
    QmpCommandError,
    QmpConnectError,
    qmp_call,
    qmp_session,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 is not installed"),
]

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = Path(os.environ.get("HAVEN_GUEST_DIR", "/var/cache/haven/guest"))
BUILD_SCRIPT = REPO / "guest" / "build-guest.sh"


@pytest.fixture(scope="session")
def guest() -> tuple[Path, Path]:
    """(vmlinuz, initrd.gz), built by guest/build-guest.sh when missing."""
    kernel, initrd = GUEST_DIR / "vmlinuz", GUEST_DIR / "initrd.gz"
    if not (kernel.exists() and initrd.exists()):
        if not BUILD_SCRIPT.exists():
            pytest.skip(f"no test guest in {GUEST_DIR} and no {BUILD_SCRIPT} to build it")
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                              timeout=900, check=False)
        if proc.returncode != 0:
            pytest.fail(f"{BUILD_SCRIPT} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return kernel, initrd


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[QemuHypervisor]:
    hv = QemuHypervisor(tmp_path / "run")
    yield hv
    for name in list(hv.list()):
        hv.kill(name)
    assert qemu_pids(hv.run_dir) == [], "a QEMU of this test survived"


def qemu_pids(run_dir: Path, name: str = "") -> list[int]:
    """QEMU processes whose command line mentions this run dir (and VM name)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if ("qemu-system" in cmd and str(run_dir) in cmd and f"guest={name}" in cmd
                and pid_alive(int(entry.name))):
            found.append(int(entry.name))
    return found


def vm_name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def bare(name: str, **kw: object) -> VmSpec:
    """A kernel-less VM: SeaBIOS, no boot disk."""
    args: dict[str, object] = {"memory": 64, "accel": "tcg", **kw}
    return VmSpec(name=name, uuid=str(uuid.uuid4()), **args)  # type: ignore[arg-type]


def booted(name: str, guest: tuple[Path, Path]) -> VmSpec:
    kernel, initrd = guest
    return VmSpec(name=name, uuid=str(uuid.uuid4()), memory=128, accel="tcg",
                  kernel_path=str(kernel), initrd_path=str(initrd),
                  kernel_args="console=ttyS0 quiet")


class Console:
    """The guest's serial console socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.buf = b""

    def read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} on the console within {timeout} s; "
                                     f"got {self.buf[-500:]!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"console closed before {marker!r}")
            self.buf += chunk
        out, self.buf = self.buf.split(marker, 1)
        return out + marker

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def close(self) -> None:
        self.sock.close()


def boot_to_shell(hv: QemuHypervisor, spec: VmSpec) -> Console:
    hv.start(spec)
    console = Console(hv.console_path(spec.name))
    console.read_until(b"GUEST-READY", timeout=60)
    return console


# -- start, list, rediscovery -------------------------------------------------------------

def test_started_vm_is_listed_running_and_a_new_driver_finds_the_same_pid(
        hv: QemuHypervisor) -> None:
    name = vm_name()
    spec = bare(name)
    info = hv.start(spec)
    assert info.status == "running" and info.accel == "tcg"
    listed = hv.list()[name]
    assert (listed.pid, listed.status, listed.uuid, listed.memory, listed.vcpus) == (
        info.pid, "running", spec.uuid, 64, 1)
    again = QemuHypervisor(hv.run_dir).list()  # the node daemon restarted
    assert again[name].pid == info.pid and again[name].status == "running"
    assert QemuHypervisor(hv.run_dir).load_spec(name) == spec


def test_starting_a_name_that_runs_is_refused(hv: QemuHypervisor) -> None:
    name = vm_name()
    hv.start(bare(name))
    with pytest.raises(HypervisorError, match="already running"):
        hv.start(bare(name))
    assert len(qemu_pids(hv.run_dir, name)) == 1


@pytest.mark.parametrize(("kw", "qemu_says"), [
    ({"memory": 999999999}, "cannot set up guest memory"),
    ({"kernel_path": "/nonexistent/vmlinuz"}, "could not open kernel file"),
])
def test_qemu_failing_at_start_raises_its_stderr_and_leaves_nothing(
        hv: QemuHypervisor, kw: dict[str, object], qemu_says: str) -> None:
    name = vm_name()
    with pytest.raises(HypervisorError, match=qemu_says) as err:
        hv.start(bare(name, **kw))
    assert name in str(err.value)
    assert qemu_pids(hv.run_dir, name) == []
    assert hv.list() == {}
    assert sorted(p.name for p in hv.run_dir.glob(f"{name}*")) == [
        f"{name}.console.log", f"{name}.log"]


def test_disks_use_direct_io_and_nics_get_their_mac(
        hv: QemuHypervisor, tmp_path: Path) -> None:
    name = vm_name()
    disk = tmp_path / "disk0.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    hv.start(bare(name, disks=(DiskSpec(0, str(disk)),),
                  nics=(NicSpec(0, "52:54:00:ab:cd:ef"),)))
    nodes = {n["node-name"]: n for n in qmp_call(hv.qmp_path(name), "query-named-block-nodes")}
    assert nodes["file0"]["file"] == str(disk) and nodes["file0"]["cache"]["direct"] is True
    assert nodes["disk0"]["drv"] == "raw"
    mac = qmp_call(hv.qmp_path(name), "qom-get",
                   {"path": "/machine/peripheral/nic0", "property": "mac"})
    assert mac == "52:54:00:ab:cd:ef"


def test_a_vm_started_for_incoming_migration_is_listed_incoming(hv: QemuHypervisor) -> None:
    name = vm_name()
    assert hv.start(bare(name, incoming=True)).status == "incoming"
    assert hv.list()[name].status == "incoming"
    t0 = time.monotonic()
    hv.stop(name, timeout=60)  # no guest to power off: QEMU is quit at once
    assert time.monotonic() - t0 < 5 and hv.list() == {}


def test_run_dirs_longer_than_a_socket_address_still_work(tmp_path: Path) -> None:
    hv = QemuHypervisor(tmp_path / ("x" * 90) / "run")
    name = vm_name()
    try:
        hv.start(bare(name))
        assert hv.list()[name].status == "running"
        assert qmp_call(hv.qmp_path(name), "query-status")["status"] == "running"
    finally:
        hv.kill(name)
    assert hv.list() == {}


# -- reboot, kill, stop -------------------------------------------------------------------

def test_reboot_resets_the_vm_which_keeps_answering(hv: QemuHypervisor) -> None:
    name = vm_name()
    pid = hv.start(bare(name)).pid
    # Listen on the status monitor: reboot() itself uses the command monitor.
    with qmp_session(hv.path(name, ".qmp-status")) as session:
        hv.reboot(name)
        assert session.wait_event("RESET", timeout=5)["data"]["guest"] is False
    assert qmp_call(hv.qmp_path(name), "query-status")["status"] == "running"
    assert hv.list()[name].pid == pid


def test_kill_minus_9_makes_the_vm_disappear_from_the_list(hv: QemuHypervisor) -> None:
    a, b = vm_name(), vm_name()
    pid = hv.start(bare(a)).pid
    hv.start(bare(b))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while a in hv.list() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(hv.list()) == [b]
    hv.kill(b)  # through the driver: gone and its files cleaned up
    assert hv.list() == {} and qemu_pids(hv.run_dir) == []
    assert not hv.path(b, ".pid").exists() and hv.path(b, ".log").exists()
    hv.kill(b)  # idempotent
    hv.stop(b)


def test_stop_kills_a_vm_that_ignores_acpi_after_the_timeout(hv: QemuHypervisor) -> None:
    name = vm_name()
    hv.start(bare(name))  # SeaBIOS does not handle the power button
    t0 = time.monotonic()
    hv.stop(name, timeout=2)
    elapsed = time.monotonic() - t0
    assert 2 <= elapsed < 10
    assert hv.list() == {} and qemu_pids(hv.run_dir, name) == []


def test_stop_powers_off_a_booted_guest_through_acpi(
        hv: QemuHypervisor, guest: tuple[Path, Path]) -> None:
    name = vm_name()
    boot_to_shell(hv, booted(name, guest)).close()
    t0 = time.monotonic()
    hv.stop(name, timeout=60)
    assert time.monotonic() - t0 < 20  # far below the timeout: the guest powered off
    assert hv.list() == {} and qemu_pids(hv.run_dir, name) == []


def test_console_reaches_the_guest_shell_and_guest_poweroff_shows_as_shutdown(
        hv: QemuHypervisor, guest: tuple[Path, Path]) -> None:
    name = vm_name()
    console = boot_to_shell(hv, booted(name, guest))
    console.send("echo hello-$((6*7))")
    assert b"hello-42" in console.read_until(b"hello-42", timeout=20)
    console.send("poweroff")
    deadline = time.monotonic() + 20
    while hv.list()[name].status != "shutdown":
        assert time.monotonic() < deadline, "the guest did not power off"
        time.sleep(0.1)
    console.close()
    pid = hv.list()[name].pid
    assert pid_alive(pid)  # -no-shutdown: QEMU stays for the agent to see USER_down
    hv.stop(name, timeout=5)
    assert hv.list() == {}


# -- QMP ----------------------------------------------------------------------------------

def test_qmp_errors_are_sentences_naming_the_instance(hv: QemuHypervisor) -> None:
    name = vm_name()
    hv.start(bare(name))
    with pytest.raises(QmpCommandError, match=f"no-such-command failed on instance '{name}'") \
            as err:
        qmp_call(hv.qmp_path(name), "no-such-command")
    assert err.value.error_class == "CommandNotFound"
    with pytest.raises(QmpConnectError, match=r"instance 'ghost'.*does not run"):
        qmp_call(hv.run_dir / "ghost.qmp", "query-status")
    with pytest.raises(HypervisorError, match="not running"):
        hv.reboot("ghost")


def test_a_session_sees_events_while_list_polls_the_second_monitor(
        hv: QemuHypervisor) -> None:
    name = vm_name()
    hv.start(bare(name))
    with qmp_session(hv.qmp_path(name)) as session:
        session.execute("stop")
        assert session.wait_event("STOP", timeout=5)["event"] == "STOP"
        assert hv.list()[name].status == "paused"  # not blinded by the held monitor
        session.execute("cont")
        session.wait_event(["RESUME"], timeout=5)
        assert hv.list()[name].status == "running"
        with pytest.raises(HypervisorError, match=r"sent no SHUTDOWN event within 0\.2 s"):
            session.wait_event("SHUTDOWN", timeout=0.2)
        session.execute("quit")
        with pytest.raises(HypervisorError, match="closed its QMP connection"):
            session.wait_event("NEVER", timeout=5)


def test_qmp_call_latency_is_a_few_milliseconds(hv: QemuHypervisor) -> None:
    names = [vm_name() for _ in range(3)]
    for n in names:
        hv.start(bare(n))
    qmp_call(hv.qmp_path(names[0]), "query-status")
    t0 = time.perf_counter()
    for _ in range(50):
        qmp_call(hv.qmp_path(names[0]), "query-status")
    per_call = (time.perf_counter() - t0) / 50
    t0 = time.perf_counter()
    for _ in range(20):
        assert len(hv.list()) == 3
    per_list = (time.perf_counter() - t0) / 20
    assert per_call < 0.02 and per_list < 0.05, (per_call, per_list)


# -- accelerator ------------------------------------------------------------------------

def test_the_accel_probe_boot_sector_runs_under_tcg(tmp_path: Path) -> None:
    ok, reason, seconds = probe_kvm("qemu-system-x86_64", tmp_path, accel="tcg")
    assert ok, reason
    assert seconds is not None and seconds < 0.5


def test_auto_accel_is_probed_once_and_cached_in_the_run_dir(hv: QemuHypervisor) -> None:
    choice = hv.accel_choice()
    assert choice.accel in ("kvm", "tcg") and choice.reason and choice.qemu_version
    assert (hv.run_dir / ".accel.json").exists()
    t0 = time.monotonic()
    assert QemuHypervisor(hv.run_dir).accel() == choice.accel
    assert time.monotonic() - t0 < 0.5  # from the cache, no second probe
