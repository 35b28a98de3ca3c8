"""Detached processes with pid files: how Haven starts what must outlive its starter.

etcd members and (later) QEMU processes are started in their own session so that a
restart of ``haven-noded`` never stops them, and found again through their pid files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def spawn_detached(argv: Sequence[str], log_path: Path, pid_path: Path,
                   env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
    """Start ``argv`` in a new session, output appended to ``log_path``; write its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=env, cwd=cwd,
        )
    # Popen returns once exec has begun; the kernel fills /proc/PID/cmdline a moment
    # later.  Wait for it, so that pid_alive(pid, marker) right after a start cannot
    # take our new process for a dead one.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if Path(f"/proc/{proc.pid}/cmdline").read_bytes():
                break
        except OSError:
            break
        time.sleep(0.001)
    pid_path.write_text(f"{proc.pid}\n")
    return proc.pid


def read_pid(pid_path: Path) -> int | None:
    try:
        return int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int, expect: str | None = None) -> bool:
    """True if ``pid`` runs and (when ``expect`` is given) its command line contains it.

    The command-line check keeps a recycled pid from being taken for our process.
    Zombies count as dead.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name.
    if stat[stat.rfind(")") + 2:].startswith("Z"):
        return False
    if expect is None:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return expect in cmdline


def running_pid(pid_path: Path, expect: str) -> int | None:
    """The pid recorded in ``pid_path`` if that process still runs, else ``None``."""
    pid = read_pid(pid_path)
    if pid is not None and pid_alive(pid, expect):
        return pid
    return None


def terminate(pid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig``, wait up to ``timeout`` for the exit, then SIGKILL.  True if it died."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            _reap(pid)
            return True
        _reap(pid)
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return False


def _reap(pid: int) -> None:
    # Only our own children can be reaped; for the others this is a no-op.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
