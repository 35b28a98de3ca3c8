"""How long a primary acknowledges guest writes alone while etcd still calls its lost
secondary ``UpToDate``: the window in which losing the primary too, and starting the
instance on the secondary, would lose those writes.

A two-node ``haven up`` runs a ``drbd`` instance whose guest writes to its disk all the
time.  Each run SIGKILLs the secondary's ``qemu-storage-daemon`` (the replica's NBD
export) and polls the instance's replica states through the API every 5 ms until the
secondary reads ``Outdated``; then waits until the agents have brought it back
``UpToDate``.  Meanwhile it polls the primary VM's status monitor in one QMP session
for the moment its guest is paused: since the mirror watcher freezes the guest on the
replication error, the writes at risk are only those acknowledged before that.
Printed: the seconds from the kill to the freeze and to ``Outdated`` (min / median /
max).

Usage: python bench/outdated.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN, local_cluster, run, summary, write_json
from haven.cli.client import Client

NAME = "outd1"


def secondary_state(client: Client) -> str:
    view: dict[str, Any] = client.get(f"/2/instances/{NAME}", timeout=2)
    states = view.get("replicas", {}).get("node02", {})
    return str(states.get("0", {}).get("state", "")) if states else ""


def wait_state(client: Client, want: str, timeout: float) -> float:
    """Poll every 5 ms until the secondary's replica is ``want``; when it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if secondary_state(client) == want:
            return time.monotonic()
        time.sleep(0.005)
    raise RuntimeError(f"the replica on node02 did not become {want} within {timeout} s")


def time_to_pause(status_qmp: str, t0_box: list[float], timeout: float = 2.0) -> float:
    """Poll ``query-status`` in one session from the moment ``t0_box`` gets the kill
    time until the guest is paused; seconds after the kill (-1: not within timeout)."""
    from haven.hypervisor.qemu.qmp import qmp_session

    with qmp_session(status_qmp, timeout=5.0) as session:
        while not t0_box:
            time.sleep(0.0005)
        t0 = t0_box[0]
        while time.monotonic() - t0 < timeout:
            if session.execute("query-status").get("status") != "running":
                return time.monotonic() - t0
            time.sleep(0.001)
    return -1.0


def console(env: dict[str, str], line: str, expect: str, timeout: float = 120) -> None:
    """Type ``line`` until the guest answers ``expect`` (a booting guest drops input)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([str(BIN / "gnt-instance"), "console", NAME], input=line + "\n",
                             env=env, capture_output=True, text=True, timeout=60).stdout
        if expect in out:
            return
        time.sleep(1.0)
    raise RuntimeError(f"the console of {NAME} did not answer {expect!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--subnet", default="127.0.31")
    args = ap.parse_args()
    window: list[float] = []
    frozen: list[float] = []
    with local_cluster(2, args.subnet) as (base, env):
        os.environ["HAVEN_CLIENT_CONFIG"] = env["HAVEN_CLIENT_CONFIG"]
        run(env, "gnt-instance", "add", "-t", "drbd", "--disk", "0:size=64m", "-B",
            "memory=128", "-o", "busybox", "-n", "node01:node02", NAME)
        client = Client.from_config()
        wait_state(client, "UpToDate", 120)
        # A writer that never stops: a line appended and synced every 10 ms.
        console(env, "while true; do echo x >> /mnt/w; sync; sleep 0.01; done & "
                "echo writing-$((2*3))", "writing-6")
        pid_file = base / "node02" / "run" / "exports" / f"{NAME}.qsd.pid"
        status_qmp = base / "node01" / "run" / f"{NAME}.qmp-status"
        for i in range(args.runs):
            time.sleep(1.0)  # the resync's checkpoint has settled
            pid = int(pid_file.read_text())
            box: list[float] = []
            with ThreadPoolExecutor(1) as pool:
                paused = pool.submit(time_to_pause, str(status_qmp), box)
                time.sleep(0.2)  # the session is open
                t0 = time.monotonic()
                box.append(t0)
                os.kill(pid, signal.SIGKILL)
                seen = wait_state(client, "Outdated", 30)
                froze = paused.result()
            window.append(seen - t0)
            frozen.append(froze)
            print(f"run {i + 1}: guest frozen {1000 * froze:.0f} ms, Outdated "
                  f"{1000 * (seen - t0):.0f} ms after the kill", flush=True)
            wait_state(client, "UpToDate", 120)
    s = summary(window)
    f = summary(frozen)
    print(f"kill -> guest frozen: min {f['min']:.3f} s, median {f['median']:.3f} s, "
          f"max {f['max']:.3f} s (-1: never)")
    print(f"kill -> Outdated: min {s['min']:.3f} s, median {s['median']:.3f} s, "
          f"max {s['max']:.3f} s over {s['n']} runs")
    data = {"seconds": window, "summary": s, "frozen": frozen, "frozen_summary": f}
    print(f"written {write_json('outdated', data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
