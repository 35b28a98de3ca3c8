"""``haven-fenced``: the node's self-fencing process (ARCHITECTURE.md, "Fencing").

One per node, separate from ``haven-noded`` and outliving it.  The node daemon feeds it
the local deadline of the node's etcd lease after every renewal (a datagram on
``<run_dir>/fenced.sock``: ``{"op": "feed", "deadline": <CLOCK_MONOTONIC seconds>,
"lease": "<hex id>"}``).  CLOCK_MONOTONIC is one clock for every process of a machine,
so the daemon's deadline means the same here.  The daemon computes it as the send time
of the last successful renewal + TTL - margin, so it passes before etcd can expire the
lease and before the master may declare the node dead.

If the deadline passes unfed, every Haven QEMU of this node is SIGKILLed: the processes
named by the VM pid files of the run directory and every process whose command line
names the run directory (one caught mid-launch) -- never anything found by a broad
name.  Until fed a deadline in the future again, it goes on killing any such QEMU that
appears: an agent that read a valid lease just before it lapsed cannot slip a VM past
it.  What was killed and why is logged and written to ``<run_dir>/fenced.json``, which
the daemon turns into an event.

``{"op": "disarm"}`` stops the deadline (a clean stop with no VM left, a node leaving
the cluster).  Where ``/dev/watchdog`` exists it is armed and petted while fed, so a
hung kernel is reset too; without one it says so once at start.

No etcd client and no threads: a blocking ``recv`` with a timeout is the whole loop, so
nothing in it can hang on the network.  Written by hand because it is ~150 lines of
stdlib that must stay that small to be trusted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("haven.fenced")

SOCKET_NAME = "fenced.sock"
PID_NAME = "fenced.pid"
RECORD_NAME = "fenced.json"
WATCHDOG = "/dev/watchdog"
RESCAN = 0.1  # seconds between kill sweeps once fired, until fed again ...
RESCAN_SLOW = 0.5  # ... after the first SLOW_AFTER seconds (a /proc scan costs CPU)
SLOW_AFTER = 10.0
IDLE = 5.0  # seconds per recv when nothing is due


def qemu_pids(run_dir: Path) -> dict[int, str]:
    """Every live QEMU of this node's run directory: pid -> VM name (or the command)."""
    found: dict[int, str] = {}
    for pid_file in run_dir.glob("*.pid"):
        if pid_file.name == PID_NAME:
            continue
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        cmd = _cmdline(pid)
        if "qemu-system" in cmd and f"guest={pid_file.stem}," in cmd:
            found[pid] = pid_file.stem
    marker = str(run_dir) + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in found:
            continue
        cmd = _cmdline(int(entry.name))
        if cmd.startswith(("qemu-system", "/usr/bin/qemu-system")) and marker in cmd:
            found[int(entry.name)] = cmd.split()[0]
    return found


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def kill_all(run_dir: Path) -> list[str]:
    """SIGKILL every QEMU of ``run_dir``; returns "name (pid N)" for each."""
    killed = []
    for pid, name in sorted(qemu_pids(run_dir).items()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(f"{name} (pid {pid})")
    return killed


class Fencer:
    """The state machine; :meth:`step` is one turn of the loop (tests drive it)."""

    def __init__(self, run_dir: Path, clock: Callable[[], float] = time.monotonic,
                 watchdog: str | None = WATCHDOG) -> None:
        self.run_dir = run_dir
        self.clock = clock
        self.deadline: float | None = None  # None: disarmed
        self.lease = ""
        self.fired = False
        self._wd: int | None = None
        if watchdog and os.path.exists(watchdog):
            try:
                self._wd = os.open(watchdog, os.O_WRONLY)
                log.info("Armed %s: a hung kernel is reset too", watchdog)
            except OSError as exc:
                log.warning("Cannot open %s (%s): only processes are fenced", watchdog, exc)
        else:
            log.info("No %s on this machine: VMs are fenced by killing them; a hung "
                     "kernel would not be reset", watchdog)

    def timeout(self) -> float:
        """How long the next recv may block."""
        if self.fired:
            late = self.deadline is not None and self.clock() - self.deadline > SLOW_AFTER
            return RESCAN_SLOW if late else RESCAN
        if self.deadline is None:
            return IDLE
        return max(0.0, min(self.deadline - self.clock(), IDLE))

    def handle(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "feed":
            deadline = float(msg["deadline"])
            if deadline <= self.clock():
                return  # already past: feeding it changes nothing
            # A deadline that passed unfed fences, even if a feed is already waiting
            # when this process gets to look: a node frozen with its daemon, resumed,
            # may grant a new lease and feed it before this process runs again, while
            # the cluster already counts the node lost and runs its VMs elsewhere.
            self.check()
            lease = str(msg.get("lease", ""))
            if self.fired or self.deadline is None or lease != self.lease:
                log.info("Armed: lease %s, deadline in %.1f s", lease or "?",
                         deadline - self.clock())
            self.deadline, self.lease, self.fired = deadline, lease, False
            self._pet()
        elif op == "disarm":
            if self.deadline is not None or self.fired:
                log.info("Disarmed: %s", msg.get("reason") or "asked to")
            self.deadline, self.fired = None, False
            if self._wd is not None:
                with contextlib.suppress(OSError):
                    os.write(self._wd, b"V")  # magic close: the watchdog stops

    def check(self) -> list[str]:
        """Fire if the deadline passed; keep killing while fired.  What was killed."""
        if self.deadline is not None and not self.fired and self.clock() >= self.deadline:
            self.fired = True
            late = self.clock() - self.deadline
            killed = kill_all(self.run_dir)
            log.warning("Lease %s was not renewed in time (deadline passed %.3f s ago): "
                        "fenced this node, killed %s", self.lease or "?", late,
                        ", ".join(killed) or "no VM (none ran)")
            self._record(killed)
            return killed
        if self.fired:
            killed = kill_all(self.run_dir)
            if killed:
                log.warning("A VM started while this node is fenced: killed %s",
                            ", ".join(killed))
                self._record(killed)
            return killed
        return []

    def _pet(self) -> None:
        if self._wd is not None:
            with contextlib.suppress(OSError):
                os.write(self._wd, b"1")

    def _record(self, killed: list[str]) -> None:
        path = self.run_dir / RECORD_NAME
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        same = old.get("lease") == self.lease and old.get("seen") is False
        data = {"lease": self.lease, "fired_at": old.get("fired_at") if same else time.time(),
                "killed": (old.get("killed", []) if same else []) + killed, "seen": False}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


def serve(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / SOCKET_NAME
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    (run_dir / PID_NAME).write_text(f"{os.getpid()}\n")
    fencer = Fencer(run_dir)
    log.info("haven-fenced watching %s (pid %d)", run_dir, os.getpid())
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        sock.settimeout(fencer.timeout())
        try:
            data = sock.recv(4096)
        except TimeoutError:
            data = b""
        except InterruptedError:
            continue
        if data:
            try:
                msg = json.loads(data)
            except ValueError:
                log.warning("Ignored a message that is not JSON: %r", data[:80])
                msg = {}
            if isinstance(msg, dict):
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    fencer.handle(msg)
        fencer.check()
    if fencer.deadline is not None and not fencer.fired:
        # Stopped while armed: whoever stops the fencer must not leave VMs unguarded.
        log.warning("Stopped while armed: killing the VMs now rather than leaving them "
                    "without a fence")
        fencer.deadline = fencer.clock()
        fencer.check()
    log.info("haven-fenced stopped")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="haven-fenced",
                                description="Kill this node's VMs when its lease lapses.")
    p.add_argument("--run-dir", type=Path, required=True,
                   help="the node daemon's run directory (VM pid files, the socket)")
    p.add_argument("--log-file", type=Path, default=None)
    args = p.parse_args(argv)
    handler: logging.Handler
    if args.log_file is not None:
        handler = logging.handlers.RotatingFileHandler(args.log_file, maxBytes=4 << 20,
                                                       backupCount=3, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    serve(args.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
