"""The busybox guest image and OS definition, end to end under QEMU (TCG).

The busybox OS's ``create`` formats a sparse disk; QEMU boots the OS's kernel and initrd
(``haven.json``) with that disk and a user-mode NIC; the guest's serial shell must show
the instance name from the disk, the address given by ``haven.ip``, and ``poweroff``
must bring QEMU to the ``shutdown`` run state.  Builds the guest with
``guest/build-guest.sh`` first (a no-op when it is up to date).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from haven.osdef import find_os, os_environment, run_os_script

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 is not installed (apt install "
                              "qemu-system-x86)"),
]

REPO = Path(__file__).resolve().parents[2]
INSTANCE = "itest-vm1.example.com"
GUEST_IP = "10.0.2.15/24"
BOOT_TIMEOUT = 90.0


def _connect(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"QEMU exited with {proc.returncode}: {err}")
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Console:
    """The guest's serial shell: no echo, no prompt; a command's end is a marker line."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.seq = 0

    def read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} within {timeout} s; got {self.buf!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"console closed before {marker!r}; got {self.buf!r}")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return head

    def wait_ready(self, timeout: float) -> str:
        self.read_until(b"GUEST-READY", timeout)
        return self.read_until(b"\n", 5).decode().strip()

    def run(self, command: str, timeout: float = 20.0) -> str:
        self.seq += 1
        end = f"__END{self.seq}__"
        self.sock.sendall(f"{command}; echo {end}\n".encode())
        out = self.read_until(end.encode() + b"\r\n", timeout)
        return out.decode(errors="replace").replace("\r\n", "\n")


class Qmp:
    def __init__(self, sock: socket.socket) -> None:
        self.f = sock.makefile("rwb")
        json.loads(self.f.readline())  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str) -> Any:
        self.f.write(json.dumps({"execute": command}).encode() + b"\n")
        self.f.flush()
        while True:
            msg = json.loads(self.f.readline())
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise AssertionError(f"QMP {command}: {msg['error']}")


@dataclass
class Guest:
    console: Console
    qmp: Qmp
    ready_line: str
    boot_seconds: float


@pytest.fixture(scope="module")
def guest_dir() -> Path:
    env = dict(os.environ)
    out = Path(env.setdefault("HAVEN_GUEST_DIR", "/var/cache/haven/guest"))
    build = subprocess.run([str(REPO / "guest" / "build-guest.sh")], env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"guest/build-guest.sh failed:\n{build.stderr}"
    assert (out / "vmlinuz").is_file() and (out / "initrd.gz").is_file()
    return out


@pytest.fixture(scope="module")
def guest(guest_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    work = tmp_path_factory.mktemp("guest")
    os_def, variant = find_os("busybox+default", environ={"HAVEN_GUEST_DIR": str(guest_dir)})
    assert os_def.boot is not None
    disk = work / "disk0.raw"
    with disk.open("wb") as f:
        f.truncate(64 << 20)
    env = os_environment(os_def, variant, INSTANCE, [str(disk)], "kvm")
    run_os_script(os_def, "create", env, work / "create.log", timeout=60)
    assert disk.stat().st_blocks * 512 < 16 << 20, "the disk should stay sparse"

    run = Path(tempfile.mkdtemp(prefix="haven-it-", dir="/tmp"))  # short socket paths
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-cpu", "qemu64", "-m", "256",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-shutdown",
        "-kernel", os_def.boot.kernel_path, "-initrd", os_def.boot.initrd_path,
        "-append", f"{os_def.boot.kernel_args} haven.ip={GUEST_IP} haven.gw=10.0.2.2",
        "-chardev", f"socket,id=c0,path={run}/con,server=on,wait=off", "-serial", "chardev:c0",
        "-qmp", f"unix:{run}/qmp,server=on,wait=off",
        "-blockdev", f"driver=file,filename={disk},node-name=f0",
        "-blockdev", "driver=raw,file=f0,node-name=disk0",
        "-device", "virtio-blk-pci,drive=disk0",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        console = Console(_connect(run / "con", proc))
        ready = console.wait_ready(BOOT_TIMEOUT)
        boot = time.monotonic() - started
        print(f"guest booted in {boot:.2f} s (guest uptime {ready})")
        yield Guest(console, Qmp(_connect(run / "qmp", proc)), ready, boot)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(run, ignore_errors=True)


def test_guest_reports_ready_with_its_uptime(guest: Guest) -> None:
    assert float(guest.ready_line) > 0
    assert guest.console.run("echo hello") == "hello\n"  # no echo, no prompt


def test_guest_mounts_the_disk_made_by_create(guest: Guest) -> None:
    assert guest.console.run("cat /mnt/etc/hostname") == f"{INSTANCE}\n"
    assert guest.console.run("hostname") == f"{INSTANCE}\n"


def test_guest_has_the_address_from_haven_ip(guest: Guest) -> None:
    out = guest.console.run("ip addr show dev eth0")
    assert f"inet {GUEST_IP}" in out
    assert "default via 10.0.2.2" in guest.console.run("ip route")


def test_poweroff_in_the_guest_shuts_the_vm_down(guest: Guest) -> None:
    assert guest.qmp.execute("query-status")["status"] == "running"
    guest.console.sock.sendall(b"poweroff\n")
    deadline = time.monotonic() + 20
    status = ""
    while time.monotonic() < deadline:
        status = guest.qmp.execute("query-status")["status"]
        if status == "shutdown":
            break
        time.sleep(0.1)
    assert status == "shutdown"
