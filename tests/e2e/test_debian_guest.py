"""The Debian guest: Debian's own ganeti-instance-debootstrap creates a real Debian
through Haven's OS API (``-o debootstrap+default``, configured by ``make setup`` in
/etc/default/ganeti-instance-debootstrap); the instance boots the kernel and initrd of
its own image to ``login:`` on the serial console under TCG; root logs in (the package
leaves root without a password); after a live migration to the secondary (``-t drbd``,
as in the reference deployment) the guest reboots itself into its kernel there;
``gnt-instance shutdown`` powers it off over ACPI; and Ganeti's ``-H kernel_path,
initrd_path,root_path,kernel_args`` boot a kernel of the node.

The first create on a machine downloads Debian (1.5-2 min here); later ones unpack the
package's cache (/var/cache/ganeti-instance-debootstrap) in seconds.  Times are printed
(``pytest -s``); ``bench/debian_guest.py`` measures them over several runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN, Sim, make_sim

OS_DIR = Path("/usr/share/ganeti/os/debootstrap")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not OS_DIR.is_dir(), reason="ganeti-instance-debootstrap is not "
                       "installed (make setup installs it)"),
]
NAME = "deb1"
CREATE_TIMEOUT = 900.0  # a fresh download was 75-120 s; a slow mirror gets some slack
BOOT_TIMEOUT = 300.0  # 26-55 s measured under TCG on 2 busy cores


class Console:
    """``gnt-instance console`` with piped input, kept open: type a line, wait for text."""

    def __init__(self, sim: Sim, name: str) -> None:
        self.proc = subprocess.Popen([str(BIN / "gnt-instance"), "console", name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=sim.env)
        self.out = b""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            with self._lock:
                self.out += chunk

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\r")
        self.proc.stdin.flush()

    def expect(self, text: str, timeout: float, since: int = 0) -> int:
        """Wait until ``text`` appears after offset ``since``; the offset past it."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                at = self.out.find(text.encode(), since)
                if at >= 0:
                    return at + len(text)
                seen = self.out[since:][-800:].decode(errors="replace")
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {text!r} on the console within {timeout} s; "
                                     f"it printed: {seen!r}")
            time.sleep(0.1)

    def text(self, start: int, end: int) -> str:
        with self._lock:
            return self.out[start:end].decode(errors="replace")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    yield from make_sim(tmp_path_factory.mktemp("debian"), 2)


def console_log(sim: Sim, node: str, name: str) -> Path:
    return sim.base / node / "run" / f"{name}.console.log"


def wait_login(sim: Sim, node: str, name: str, since: float, after: str = "") -> float:
    """Seconds from ``since`` until the guest printed ``login:`` on ttyS0 (after the
    text ``after``, if given) in ``node``'s console log."""
    log = console_log(sim, node, name)
    deadline = since + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        start = text.find(after) if after else 0
        if start >= 0 and "login:" in text[start:]:
            return time.monotonic() - since
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no console log)"
    raise AssertionError(f"{name} printed no login:{f' after {after!r}' if after else ''} "
                         f"on {node} within {BOOT_TIMEOUT} s:\n{tail}")


def qemu_argv(sim: Sim, node: str, name: str) -> list[str]:
    meta = json.loads((sim.base / node / "run" / f"{name}.json").read_text())
    return [str(a) for a in meta["argv"]]


def check_disk_kernel(sim: Sim, node: str, name: str) -> None:
    """The kernel and initrd are the image's own, copied out of its /boot on ``node``;
    the root file system is the whole disk (PARTITION_STYLE=none)."""
    argv = qemu_argv(sim, node, name)
    boot_dir = sim.base / node / "boot" / name
    assert arg(argv, "-kernel") == str(boot_dir / "vmlinuz")
    assert arg(argv, "-initrd") == str(boot_dir / "initrd.img")
    assert arg(argv, "-append").startswith("root=/dev/vda ro console=ttyS0")


def arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def log_in_and_run(sim: Sim, name: str) -> tuple[float, str]:
    """Log in as root on the serial console and run a command; (seconds, its output)."""
    con = Console(sim, name)
    try:
        t0 = time.monotonic()
        con.type("")  # a fresh prompt: the first one was printed before we attached
        at = con.expect("login:", 60)
        con.type("root")
        at = con.expect("root@" + name, 60, at)  # no password: the package cleared it
        at = con.expect("#", 30, at)
        con.type("echo x-$((6*7)) $(uname -r) $(cat /etc/debian_version) $(id -un)")
        end = con.expect("x-42", 60, at)
        line_end = con.expect("\n", 10, end)
        took = time.monotonic() - t0
        answer = con.text(end, line_end).strip()
        con.type("exit")
        return took, answer
    finally:
        con.close()


def shut_down(sim: Sim, name: str) -> float:
    t0 = time.monotonic()
    p = sim.run("gnt-instance", "shutdown", name, timeout=200)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    return took


# make test-all only: the Debian guest boots in about 2 minutes under TCG; every
# operation it goes through is covered with busybox guests by the other e2e tests.
@pytest.mark.long
def test_debootstrap_default_boots_its_own_kernel_migrates_and_reboots(sim: Sim) -> None:
    t0 = time.monotonic()
    p = sim.run("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=1g", "-B",
                "memory=512", "-o", "debootstrap+default", "-n", "node01:node02", NAME,
                timeout=CREATE_TIMEOUT)
    create = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    boot = wait_login(sim, "node01", NAME, time.monotonic())
    listing = sim.run("gnt-instance", "list", "--no-headers", "-o", "name,os,pnode,status",
                      NAME, check=True).stdout.split()
    assert listing == [NAME, "debootstrap+default", "node01", "running"]
    check_disk_kernel(sim, "node01", NAME)
    login, answer = log_in_and_run(sim, NAME)
    words = answer.split()
    assert len(words) == 3 and words[0].endswith("-cloud-amd64") and words[2] == "root", \
        answer
    assert words[1].startswith("12."), answer  # Debian 12 (SUITE=bookworm)
    # The migration target copies the kernel out of its own replica: a reboot from
    # inside the guest (QEMU's reset, no new process) boots it there.
    sim.run("gnt-instance", "migrate", "-f", NAME, check=True, timeout=300)
    check_disk_kernel(sim, "node02", NAME)
    t0 = time.monotonic()
    con = Console(sim, NAME)
    try:
        con.type("")
        at = con.expect("login:", 60)
        con.type("root")
        at = con.expect("#", 60, at)
        con.type("reboot")
        reboot = wait_login(sim, "node02", NAME, t0, after="Linux version")
    finally:
        con.close()
    # The guest hears the ACPI power button (dbus + systemd-logind are in the image).
    shutdown = shut_down(sim, NAME)
    assert shutdown < 60, f"gnt-instance shutdown took {shutdown:.1f} s"
    print(f"\ndebian guest (drbd): create+start+sync {create:.1f} s, start to login: "
          f"{boot:.1f} s, root login + command {login:.1f} s, reboot on node02 to login: "
          f"{reboot:.1f} s, shutdown {shutdown:.1f} s")


# make test-all only: another Debian boot; kernel_path is checked on QEMU's command
# line by tests/unit/test_qemu_cmdline.py.
@pytest.mark.long
def test_hvparams_boot_a_kernel_of_the_node(sim: Sim, tmp_path: Path) -> None:
    """Ganeti's way: a kernel and initrd on the node (here: copies of the image's own),
    ``root_path`` and ``kernel_args``, set with gnt-instance modify -H."""
    boot_dir = sim.base / "node02" / "boot" / NAME
    if not (boot_dir / "vmlinuz").exists():
        pytest.skip("the first test did not boot the Debian guest")
    kernel, initrd = tmp_path / "vmlinuz-guest", tmp_path / "initrd-guest"
    shutil.copyfile(boot_dir / "vmlinuz", kernel)
    shutil.copyfile(boot_dir / "initrd.img", initrd)
    sim.run("gnt-instance", "modify", "-H",
            f"kernel_path={kernel},initrd_path={initrd},root_path=/dev/vda,"
            "kernel_args=ro quiet", NAME, check=True)
    t0 = time.monotonic()
    sim.run("gnt-instance", "startup", NAME, check=True, timeout=120)
    boot = wait_login(sim, "node02", NAME, t0)
    argv = qemu_argv(sim, "node02", NAME)
    assert (arg(argv, "-kernel"), arg(argv, "-initrd")) == (str(kernel), str(initrd))
    assert arg(argv, "-append").startswith("root=/dev/vda ro quiet console=ttyS0")
    login, answer = log_in_and_run(sim, NAME)
    assert answer.endswith("root"), answer
    shutdown = shut_down(sim, NAME)
    print(f"\ndebian guest with -H kernel_path: start to login {boot:.1f} s, "
          f"login {login:.1f} s, shutdown {shutdown:.1f} s")


def test_a_missing_kernel_is_refused_before_the_install(sim: Sim) -> None:
    t0 = time.monotonic()
    p = sim.run("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=1g", "-o",
                "debootstrap+default", "-H", "kernel_path=/nonexistent/vmlinuz", "-n",
                "node01:node02", "deb2", timeout=120)
    took = time.monotonic() - t0
    assert p.returncode != 0
    assert ("the kernel /nonexistent/vmlinuz (-H kernel_path) does not exist on node "
            "node01") in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert took < 30, f"refused only after {took:.1f} s"
    names = sim.run("gnt-instance", "list", "--no-headers", "-o", "name",
                    check=True).stdout.split()
    assert "deb2" not in names
