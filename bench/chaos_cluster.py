"""The fault campaign's view of the local cluster (``bench/chaos.py``): commands as a
user types them, the QEMUs of each instance found in ``/proc``, and the guest's kernel
asked over QMP (SysRq) when its console stops taking input."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
NODES = ("node01", "node02", "node03")
REGION = 512  # 4 KiB blocks per writer run; disk 1 (16 MiB) holds 8 regions
INSTANCES: dict[str, list[str]] = {
    "d1": ["-t", "drbd", "--disk", "0:size=32m", "--disk", "1:size=16m",
           "-n", "node01:node02"],
    "s1": ["-t", "ext", "--disk", "0:size=32m,provider=iscsi",
           "--disk", "1:size=16m,provider=iscsi", "-n", "node03"]}
RUN_LINE = re.compile(r"(?:^|\s)RUN-(\d+)\s*$")  # the marker's output, not its echo
ACK_LINE = re.compile(r"(?:^|\s)A (\d+)\s*$")


class Cluster:
    """Commands as a user types them, and the processes of the local cluster."""

    def __init__(self, base: Path, subnet: str, netns: bool = False) -> None:
        self.base, self.subnet, self.netns = base, subnet, netns
        self.env = dict(os.environ, HAVEN_CLIENT_CONFIG=str(base / "client.json"))
        self.env.pop("HAVEN_DATA_DIR", None)
        # A console with a writer printing never goes quiet: piped, it ends 3 x LINGER
        # after its input; the answers come within a fraction of a second (and are
        # asked again if not).
        self.env.setdefault("HAVEN_CONSOLE_LINGER", "0.4")
        self.san = f"{subnet}.250"
        # Instance -> the QEMU (pid) seen to no longer read its console's input.
        self.stalled: dict[str, int] = {}
        if netns:  # haven.sim.netns: the nodes on 10.77.0.NN, the target on the switch
            from haven.sim import netns as lan

            self.subnet, self.san = lan.PREFIX, lan.SWITCH_IP

    def run(self, *argv: str, timeout: float = 120, check: bool = False
            ) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / argv[0]), *argv[1:]]
        if argv[0] == "haven":
            cmd[1:1] = ["--base-dir", str(self.base)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               env=self.env)
        except subprocess.TimeoutExpired as exc:
            p = subprocess.CompletedProcess(cmd, 124, str(exc.stdout or ""),
                                            f"timed out after {timeout} s")
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {p.stdout}{p.stderr}")
        return p

    def address(self, node: str) -> str:
        return f"{self.subnet}.{int(node[-2:])}"

    def placement(self) -> dict[str, tuple[str, str]]:
        p = self.run("gnt-instance", "list", "--no-headers", "--separator=|", "-o",
                     "name,status,pnode", timeout=30)
        rows = [ln.split("|") for ln in p.stdout.splitlines() if ln.count("|") == 2]
        return {r[0]: (r[1], r[2]) for r in rows}

    def master(self) -> str:
        p = self.run("gnt-cluster", "getmaster", timeout=20)
        return p.stdout.strip() if p.returncode == 0 else ""

    def node_pids(self, node: str) -> dict[str, int]:
        from haven.fence import power

        return power.node_pids(self.base / node)

    def console(self, name: str, command: str, expect: str, timeout: float = 60) -> str:
        """The console's answer containing ``expect`` (printed only by running the
        command, never by its echo); typed again until it comes, and only into a guest
        that has booted (typing into a booting one loses characters)."""
        deadline = time.monotonic() + timeout
        out = ""
        while True:
            left = deadline - time.monotonic()
            if _alive_console(self, name):
                try:
                    p = subprocess.run([str(BIN / "gnt-instance"), "console", name],
                                       input=command + "\n", capture_output=True,
                                       text=True, env=self.env,
                                       timeout=max(5.0, min(30.0, left)))
                    out = p.stdout
                    if expect in out:
                        return out
                except subprocess.TimeoutExpired:
                    out = "(the console hung)"
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the console of {name} never answered {expect!r}: "
                                   f"{out[-300:]!r}")
            time.sleep(0.3)

    def copy_logs(self, dest: Path) -> None:
        for log in [*self.base.rglob("*.log"), *self.base.rglob("*.stderr")]:
            target = dest / log.relative_to(self.base)
            with contextlib.suppress(OSError):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(log, target)


def one_qemu(c: Cluster, name: str) -> tuple[int, Path] | None:
    """The pid and run directory of ``name``'s one live QEMU; None unless exactly one
    runs (or its directory cannot be read)."""
    pids = qemus(c.base, name)
    if len(pids) != 1:
        return None
    try:
        return pids[0], Path(os.readlink(f"/proc/{pids[0]}/cwd"))
    except OSError:
        return None


def _alive_console(c: Cluster, name: str) -> bool:
    """Whether exactly one live, unfrozen QEMU of ``name`` runs and has booted (typing
    into a booting guest loses characters)."""
    found = one_qemu(c, name)
    if found is None:
        return False
    pid, run = found
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        text = (run / f"{name}.console.log").read_text(errors="replace")
    except OSError:
        return False
    return b"-incoming" in argv or "GUEST-READY" in text


# pid -> (its start time, the instance if it is a QEMU of this cluster, when first
# read).  Keyed by start time too: pids are reused (pid_max is 32768 here).  A "not a
# QEMU" is read again for its first seconds: between fork and exec a QEMU-to-be still
# shows its parent's command line (cached for good, it stayed invisible: a QEMU that
# ran was counted as missing).
_qemu_cache: dict[int, tuple[str, str | None, float]] = {}
_YOUNG = 3.0


def qemus(base: Path, name: str | None = None, frozen: bool = False
          ) -> list[int]:
    """Live QEMUs of this cluster (of instance ``name`` if given); frozen ones (SIGSTOP,
    state T) only with ``frozen``."""
    found = []
    seen = set()
    marker = str(base).encode()
    now = time.monotonic()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            st, started = fields[0], fields[19]
        except (OSError, IndexError):
            continue
        seen.add(pid)
        cached = _qemu_cache.get(pid)
        if cached is None or cached[0] != started or (
                cached[1] is None and now - cached[2] < _YOUNG):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            m = re.search(rb"guest=([^,\0]+),", argv)
            guest = m.group(1).decode() if (
                m and b"qemu-system" in argv.split(b"\0")[0] and marker in argv) else None
            first = cached[2] if cached is not None and cached[0] == started else now
            _qemu_cache[pid] = cached = (started, guest, first)
        guest = cached[1]
        if guest is None or (name is not None and guest != name):
            continue
        if st == "Z" or (st in ("T", "t") and not frozen):
            continue
        found.append(pid)
    for pid in set(_qemu_cache) - seen:
        _qemu_cache.pop(pid, None)
    return found


def qemu_node(pid: int) -> str:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).parent.name
    except OSError:
        return "?"


def qmp_statuses(pids: list[int], name: str) -> list[str]:
    """Per QEMU: ``running``, ``paused``, ``inmigrate``, ``postmigrate``... or
    ``unanswered``; asked side by side, briefly (the sampler must not stall)."""
    from haven.hypervisor.qemu.qmp import qmp_call_many

    paths: list[str | Path] = []
    for pid in pids:
        try:
            paths.append(Path(os.readlink(f"/proc/{pid}/cwd")) / f"{name}.qmp-status")
        except OSError:
            paths.append(f"/nonexistent/{pid}")
    answers = qmp_call_many(paths, "query-status", timeout=0.2)
    return [str(a["status"]) if isinstance(a, dict) else "unanswered" for a in answers]


def guest_alive(c: Cluster, name: str) -> bool:
    """Whether the guest's kernel answers: SysRq-h typed on its keyboard prints its help
    on the console.  Output only: QEMU 10.0.2 sometimes stops reading a console's input
    while it keeps passing the guest's output on (seen live: the guest's UART empty
    with its receive interrupt on, bytes written to QEMU's socket never reaching it).
    Such a guest runs; only its console cannot take the campaign's commands, and the
    round says so."""
    out = sysrq(c, name, "h", "HELP :", 3.0)
    return out is not None and "HELP :" in out


def sysrq(c: Cluster, name: str, key: str, until: str | None, wait: float) -> str | None:
    """Type SysRq-``key`` on ``name``'s keyboard over QMP (the busybox OS boots with
    ``sysrq_always_enabled``); what its console printed after it, until ``until``
    appears or ``wait`` s have passed.  None without exactly one live QEMU, or when its
    monitor or console log cannot be read."""
    from haven.hypervisor.qemu.qmp import QmpError, qmp_call

    found = one_qemu(c, name)
    if found is None:
        return None
    run = found[1]
    try:
        log = run / f"{name}.console.log"
        start = log.stat().st_size
        qmp_call(run / f"{name}.qmp", "human-monitor-command",
                 {"command-line": f"sendkey alt-sysrq-{key}"})
        deadline = time.monotonic() + wait
        while True:
            with open(log, "rb") as f:
                f.seek(start)
                text = f.read().decode(errors="replace")
            if (until is not None and until in text) or time.monotonic() >= deadline:
                return text
            time.sleep(0.1)
    except (OSError, QmpError):
        return None
