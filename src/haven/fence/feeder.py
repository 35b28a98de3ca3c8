"""The node daemon's side of ``haven-fenced``: start it, feed it, read what it did."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from haven.daemon import procs
from haven.fence.fenced import PID_NAME, RECORD_NAME, SOCKET_NAME

log = logging.getLogger(__name__)

MARKER = "haven.fence.fenced"


class Feeder:
    """One per node daemon.  :meth:`feed` is called after every lease renewal (on the
    lease keeper's thread); :meth:`fed` says whether the last deadline reached a
    running fencer, which the agent requires before it starts a VM."""

    def __init__(self, run_dir: Path, log_file: Path | None = None) -> None:
        self.run_dir = run_dir
        self.log_file = log_file
        self._lock = threading.Lock()
        self._fed_deadline = 0.0

    def running(self) -> int | None:
        return procs.running_pid(self.run_dir / PID_NAME, MARKER)

    def ensure_running(self) -> bool:
        """Start the fencer if it does not run; True if it was started now."""
        if self.running() is not None:
            return False
        argv = [sys.executable, "-m", MARKER, "--run-dir", str(self.run_dir)]
        if self.log_file is not None:
            argv += ["--log-file", str(self.log_file)]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / SOCKET_NAME).unlink()  # a dead fencer's: wait for the new one
        pid = procs.spawn_detached(argv, self.run_dir / "fenced.out", self.run_dir / PID_NAME)
        log.info("Started haven-fenced (pid %d)", pid)
        return True

    def feed(self, deadline: float, lease_id: int) -> None:
        if self._send({"op": "feed", "deadline": deadline, "lease": f"{lease_id:x}"}):
            with self._lock:
                self._fed_deadline = deadline

    def disarm(self, reason: str) -> None:
        self._send({"op": "disarm", "reason": reason})
        with self._lock:
            self._fed_deadline = 0.0

    def fed_until(self) -> float:
        """The deadline the fencer last accepted (0: none)."""
        with self._lock:
            return self._fed_deadline

    def take_record(self) -> dict[str, Any] | None:
        """What the fencer killed since the last call (None if nothing new)."""
        path = self.run_dir / RECORD_NAME
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("seen", True):
            return None
        data["seen"] = True
        with contextlib.suppress(OSError):
            path.write_text(json.dumps(data))
        return data

    def _send(self, msg: dict[str, Any]) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.sendto(json.dumps(msg).encode(), str(self.run_dir / SOCKET_NAME))
            return True
        except OSError as exc:
            log.warning("haven-fenced did not take %s: %s", msg.get("op"), exc)
            return False
        finally:
            sock.close()
