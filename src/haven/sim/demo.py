"""``make demo`` / ``haven demo``: the reference deployment, two nodes, driven with
Ganeti's own commands back to back, printing what each step costs.

0. ``haven up --nodes 2``: node01 and node02, etcd and daemons; node01 master.
1. Move an instance: ``vm1..vm3`` created on node01 with node02 as secondary
   (``drbd``, ``vm3`` with ``--no-start`` then ``gnt-instance startup``), a command
   through ``vm1``'s console, ``gnt-instance migrate vm2``.
2. Planned shutdown of node01: ``gnt-instance failover`` of its instances,
   ``gnt-cluster master-failover`` run on node02, node01 shut down cleanly; the cluster
   is managed from node02; node01 comes back.
3. Unplanned loss of the master node02 (holding vm1 and vm3; vm2 migrated back to
   node01 first): every process of node02 SIGKILLed; on node01
   ``gnt-cluster master-failover --no-voting --yes-do-it`` then
   ``gnt-node failover --ignore-consistency node02``; node02 returns and rejoins;
   ``gnt-cluster redist-conf``, ``gnt-cluster getmaster``.
4. Automatic failover: vm1 failed over to node02, node02 SIGKILLed, nobody types
   anything: the master (node01) fences node02 by the lease rule and restarts vm1 on
   node01; the times to ``running`` and to vm1's shell are reported; node02 returns
   as vm1's secondary.

Every step runs the real command line; the demo exits non-zero at the first failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from haven.sim import cluster

BIN = Path(sys.executable).parent
DEMO_BASE = Path(os.environ.get("HAVEN_DEMO_DIR", "/var/lib/haven/demo"))


class StepFailed(Exception):
    pass


def sh(*argv: str, check: bool = True, quiet: bool = False, stdin: str | None = None,
       on: str | None = None) -> tuple[int, str]:
    """Run a command as the administrator types it; ``on``: in a shell of that node."""
    cmd = [str(BIN / argv[0]), *argv[1:]]
    if argv[0] == "haven":
        cmd[1:1] = ["--base-dir", str(DEMO_BASE)]
    env = dict(os.environ)
    if on:
        env["HAVEN_DATA_DIR"] = str(DEMO_BASE / on)
    if not quiet:
        shown = " ".join(argv) if stdin is None else f"echo {stdin!r} | {' '.join(argv)}"
        print(f"\n{on or ''}$ {shown}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, input=stdin,
                          env=env)
    out = (proc.stdout + proc.stderr).rstrip()
    if not quiet and out:
        print(out, flush=True)
    if check and proc.returncode != 0:
        raise StepFailed(f"'{' '.join(argv)}' exited with {proc.returncode}")
    return proc.returncode, proc.stdout.strip()


def timed(label: str, report: list[tuple[str, str]], *argv: str,
          on: str | None = None) -> str:
    t = time.monotonic()
    _, out = sh(*argv, on=on)
    report.append((label, f"{time.monotonic() - t:.2f} s"))
    return out


def master() -> str:
    rc, out = sh("gnt-cluster", "getmaster", check=False, quiet=True)
    return out if rc == 0 else ""


def console_until(name: str, command: str, expect: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, out = sh("gnt-instance", "console", name, stdin=command + "\n", check=False,
                    quiet=True)
        if expect in out:
            return out
        time.sleep(0.3)
    raise StepFailed(f"{name} never answered {command!r} on its console")


def wait_in_sync(name: str, timeout: float = 180) -> None:
    """Wait until both replicas of ``name`` are UpToDate (``gnt-instance list -o
    degraded`` empty), as an administrator watches ``gnt-cluster verify-disks``."""
    print(f"\n(waiting for both replicas of {name} to be UpToDate)", flush=True)
    deadline = time.monotonic() + timeout
    while True:
        _rc, out = sh("gnt-instance", "list", "--no-headers", "-o", "degraded", name,
                      check=False, quiet=True)
        if out.strip() in ("", "-"):
            return
        if time.monotonic() > deadline:
            raise StepFailed(f"the replicas of {name} are still not in sync: {out}")
        time.sleep(0.5)


def main() -> int:
    os.environ["HAVEN_CLIENT_CONFIG"] = str(DEMO_BASE / "client.json")
    report: list[tuple[str, str]] = []
    try:
        cluster.destroy(DEMO_BASE)  # a fresh cluster every time
        t0 = time.monotonic()
        sh("haven", "up", "--nodes", "2", "--subnet", "127.0.40")
        report.append(("haven up: 2 nodes, etcd members, daemons, master elected",
                       f"{time.monotonic() - t0:.1f} s"))
        sh("gnt-node", "list", "-o", "name,role,pip,master_candidate,alive,accel")
        sh("gnt-cluster", "verify")

        print("\n=== 1. Move an instance ===")
        for name in ("vm1", "vm2", "vm3"):
            argv = ["gnt-instance", "add", "-t", "drbd", "--disk", "0:size=256m", "-B",
                    "memory=256", "-o", "busybox", "-n", "node01:node02", name]
            if name == "vm3":
                argv.insert(2, "--no-start")
            timed(f"gnt-instance add {name} (drbd, installed, in sync" +
                  (", left down)" if name == "vm3" else ", started)"), report, *argv)
        timed("gnt-instance startup vm3", report, "gnt-instance", "startup", "vm3")
        sh("gnt-instance", "list")
        out = console_until("vm1", "echo hello from $(hostname)", "hello from vm1")
        print(f"\n$ echo 'echo hello from $(hostname)' | gnt-instance console vm1\n{out}")
        out = timed("gnt-instance migrate vm2 (to node02)", report,
                    "gnt-instance", "migrate", "-f", "vm2")
        m = re.search(r"downtime ([\d.]+) ms", out)
        report.append(("  pause of that migration (QEMU's downtime)",
                       f"{m.group(1)} ms" if m else "?"))

        print("\n=== 2. Planned shutdown of the primary node (node01) ===")
        for name in ("vm1", "vm3"):
            timed(f"gnt-instance failover {name} (to node02)", report,
                  "gnt-instance", "failover", "-f", name)
        timed("gnt-cluster master-failover (run on node02)", report,
              "gnt-cluster", "master-failover", on="node02")
        timed("node01 shut down (daemon, VMs, etcd)", report, "haven", "stop", "node01")
        sh("gnt-cluster", "getmaster")
        sh("gnt-instance", "list")
        console_until("vm1", "echo still here", "still here")
        timed("gnt-instance reboot vm2 with node01 off", report,
              "gnt-instance", "reboot", "vm2")
        timed("node01 back in the cluster", report, "haven", "start", "node01")
        sh("gnt-cluster", "getmaster")

        print("\n=== 3. Unplanned loss of the master node (node02) ===")
        timed("gnt-instance migrate vm2 (back to node01)", report,
              "gnt-instance", "migrate", "-f", "vm2")
        sh("gnt-instance", "list")
        sh("haven", "kill", "node02")
        t = time.monotonic()
        timed("gnt-cluster master-failover --no-voting --yes-do-it (on node01)", report,
              "gnt-cluster", "master-failover", "--no-voting", "--yes-do-it", on="node01")
        timed("gnt-node failover --ignore-consistency node02", report,
              "gnt-node", "failover", "--ignore-consistency", "node02")
        report.append(("  from the master's death to vm1 and vm3 on node01 (typing aside)",
                       f"{time.monotonic() - t:.2f} s"))
        sh("gnt-instance", "list")
        console_until("vm3", "echo vm3 is back", "vm3 is back")
        timed("node02 back (rejoins etcd as a fresh learner)", report,
              "haven", "start", "node02")
        sh("gnt-cluster", "redist-conf")
        sh("gnt-cluster", "getmaster")
        sh("gnt-instance", "list")
        sh("gnt-cluster", "verify", check=False)

        print("\n=== 4. Automatic failover: node02 dies, nobody types anything ===")
        wait_in_sync("vm1")  # node02 came back: its replica resyncs first
        timed("gnt-instance failover vm1 (to node02)", report,
              "gnt-instance", "failover", "-f", "vm1")
        console_until("vm1", "echo vm1 on node02", "vm1 on node02")
        wait_in_sync("vm1")  # node01's replica, the former primary's, is copied back
        sh("haven", "kill", "node02")
        t = time.monotonic()
        while True:
            _rc, out = sh("gnt-instance", "list", "--no-headers", "--separator=|", "-o",
                          "status,pnode", "vm1", check=False, quiet=True)
            if out.strip() == "running|node01":
                break
            if time.monotonic() - t > 90:
                raise StepFailed(f"vm1 was not restarted on node01 by itself: {out}")
            time.sleep(0.2)
        report.append(("  node02 killed -> vm1 running on node01, by itself",
                       f"{time.monotonic() - t:.1f} s"))
        console_until("vm1", "echo vm1 is back", "vm1 is back")
        report.append(("  node02 killed -> vm1's shell answers on node01",
                       f"{time.monotonic() - t:.1f} s"))
        sh("haven", "ha", "status")
        timed("node02 back (secondary again, resynced; nothing moves back)", report,
              "haven", "start", "node02")
        sh("gnt-instance", "list", "-o", "name,pnode,snodes,status,ha,ha_state")
        sh("haven", "status")
    except (StepFailed, subprocess.TimeoutExpired) as exc:
        print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
        return 1
    print("\n=== Haven demo report ===")
    width = max(len(k) for k, _ in report)
    for k, v in report:
        print(f"  {k.ljust(width)}  {v}")
    print(f"\nThe cluster keeps running: haven --base-dir {DEMO_BASE} status / down "
          f"(HAVEN_CLIENT_CONFIG={DEMO_BASE}/client.json).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
