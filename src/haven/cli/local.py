"""This machine's own node daemon: find it, or start it (``gnt-cluster init``)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from haven.cli.client import Client
from haven.errors import HavenError, NodeSetupError

STDERR_KEEP = 1024 * 1024  # bytes of the daemon's stderr file kept before a new start


def data_dir() -> Path:
    return Path(os.environ.get("HAVEN_DATA_DIR", "/var/lib/haven"))


def start_daemon(name: str, address: str, directory: Path, port: int,
                 timeout: float = 15.0, prefix: list[str] | None = None) -> Client:
    """Start ``haven-noded`` detached for ``directory`` unless it runs (``prefix``: e.g.
    ``ip netns exec NS``); wait until it answers; return a client for it (unverified
    TLS: it may not be joined yet)."""
    from haven.daemon import procs

    directory.mkdir(parents=True, exist_ok=True)
    pid_file = directory / "noded.pid"
    if procs.running_pid(pid_file, "haven.daemon.main") is None:
        # The daemon writes and rotates logs/noded.log itself; what reaches its stderr
        # (a crash's traceback) goes to logs/noded.stderr, kept small across restarts.
        stderr = directory / "logs" / "noded.stderr"
        with contextlib.suppress(OSError):
            if stderr.stat().st_size > STDERR_KEEP:
                stderr.replace(stderr.with_name("noded.stderr.1"))
        procs.spawn_detached(
            [*(prefix or []), sys.executable, "-m", "haven.daemon.main", "--name", name,
             "--address", address, "--data-dir", str(directory), "--port", str(port),
             "--log-file", str(directory / "logs" / "noded.log")],
            stderr, pid_file)
    client = Client([f"{address}:{port}"], None, None, None)
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = client.get("/haven/node/info", timeout=2)
            if info.get("name") != name:
                raise NodeSetupError(f"Another node daemon ({info.get('name')}) already "
                                     f"listens on {address}:{port}.")
            theirs = info.get("data_dir")
            if theirs is not None and Path(str(theirs)).resolve() != directory.resolve():
                # The same node name from another local cluster (a leftover of an
                # earlier run): talking to it would mix two clusters.
                raise NodeSetupError(
                    f"Node daemon {name} of another cluster (data in "
                    f"{info['data_dir']}, pid {info.get('pid')}) already listens on "
                    f"{address}:{port}; stop it first ('haven --base-dir "
                    f"{Path(str(info['data_dir'])).parent} down').")
            return client
        except NodeSetupError:
            raise
        except HavenError as exc:
            if time.monotonic() > deadline:
                raise NodeSetupError(
                    f"Node daemon {name} did not start on {address}:{port}; see "
                    f"{directory / 'logs' / 'noded.log'} and noded.stderr.") from exc
            time.sleep(0.1)
