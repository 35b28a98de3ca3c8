"""Every process of one node found by its directory, and a power cut of them: what
``haven kill`` and the ``haven-local`` fence agent do to a node of a local cluster."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from haven.daemon import procs


def node_pids(node_dir: Path) -> dict[str, int]:
    """Every process that belongs to the node of ``node_dir``: found through its pid
    files and, so that nothing escapes, every process whose command line names its
    directory."""
    pids: dict[str, int] = {}
    for label, name, expect in (("noded", "noded.pid", "haven.daemon.main"),
                                ("etcd", "etcd.pid", "etcd")):
        pid = procs.running_pid(node_dir / name, expect)
        if pid is not None:
            pids[label] = pid
    # VMs and storage daemons, by their pid files (their command lines may only hold
    # paths relative to the run directory).
    run = node_dir / "run"
    for pid_file in (*run.glob("*.pid"), *run.glob("*/*.pid")):
        pid = procs.read_pid(pid_file)
        # A recycled pid must not be killed: the process must still look like ours.
        if pid is not None and pid not in pids.values() and (
                procs.pid_alive(pid, "qemu") or procs.pid_alive(pid, pid_file.stem)):
            pids[pid_file.stem] = pid
    marker = str(node_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if (f"{marker} " in cmd or cmd.rstrip().endswith(marker) or f"{marker}/" in cmd) \
                and pid not in pids.values() and pid != os.getpid():
            pids[f"pid{pid}"] = pid
    return pids


def kill_node(node_dir: Path) -> list[int]:
    """SIGKILL every process of the node at once, as a power cut would."""
    pids = list(node_pids(node_dir).values())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        procs.terminate(pid, timeout=2, sig=0)
    return pids
