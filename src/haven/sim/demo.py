"""``make demo`` / ``haven demo``: the reference scenarios end to end on a fresh local
cluster, printing what each step costs.

1. ``haven up``: three nodes, etcd and daemons; the master elected.
2. ``vm1..vm3`` created on node01 with node02 as secondary (``drbd``), ``vm3`` left
   ``ADMIN_down`` and then started; listed; a command through ``vm1``'s console.
3. ``vm2`` migrated to node02 (live under KVM; under TCG non-live unless asked, see
   ``TCG_LIVE_RISK`` in ``master/opcodes/instance_migrate.py``).
4. Planned maintenance of node01: master role handed to node02, every instance moved
   live, node01 marked offline and stopped.
5. node01 back; maintenance ended; rebalanced (``vm1`` migrated back).
6. Unplanned: every process of the master node SIGKILLed; a new master is elected and
   accepts jobs.

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


def sh(*argv: str, check: bool = True, quiet: bool = False, stdin: str | None = None
       ) -> tuple[int, str]:
    cmd = [str(BIN / argv[0]), *argv[1:]]
    if argv[0] == "haven":
        cmd[1:1] = ["--base-dir", str(DEMO_BASE)]
    if not quiet:
        shown = " ".join(argv) if stdin is None else f"echo {stdin!r} | {' '.join(argv)}"
        print(f"\n$ {shown}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, input=stdin)
    out = (proc.stdout + proc.stderr).rstrip()
    if not quiet and out:
        print(out, flush=True)
    if check and proc.returncode != 0:
        raise StepFailed(f"'{' '.join(argv)}' exited with {proc.returncode}")
    return proc.returncode, proc.stdout.strip()


def timed(label: str, report: list[tuple[str, str]], *argv: str) -> str:
    t = time.monotonic()
    _, out = sh(*argv)
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


def wait_in_sync(name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, out = sh("gnt-instance", "info", name, quiet=True, check=False)
        states = re.findall(r"(?:primary|secondary) \S+: (\w+)", out)
        if states and all(s == "UpToDate" for s in states):
            return
        time.sleep(0.5)
    raise StepFailed(f"the replicas of {name} did not get in sync")


def wait_new_master(old: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = master()
        if m and m != old and sh("gnt-debug", "delay", "0", check=False, quiet=True)[0] == 0:
            return m
        time.sleep(0.1)
    raise StepFailed(f"no new master after {old} died")


def main() -> int:
    os.environ["HAVEN_CLIENT_CONFIG"] = str(DEMO_BASE / "client.json")
    report: list[tuple[str, str]] = []
    try:
        cluster.destroy(DEMO_BASE)  # a fresh cluster every time
        t0 = time.monotonic()
        sh("haven", "up", "--nodes", "3", "--subnet", "127.0.40")
        report.append(("haven up: 3 nodes, etcd members, daemons, master elected",
                       f"{time.monotonic() - t0:.1f} s"))
        sh("gnt-node", "list", "-o", "name,role,pip,master_candidate,alive,accel")
        for name in ("vm1", "vm2", "vm3"):
            argv = ["gnt-instance", "add", "-t", "drbd", "--disk", "0:size=256m", "-B",
                    "memory=256", "-o", "busybox", "-n", "node01:node02", name]
            if name == "vm3":
                argv.insert(2, "--no-start")
            timed(f"gnt-instance add {name} (drbd, installed" +
                  (", left down)" if name == "vm3" else ", started)"), report, *argv)
        sh("gnt-instance", "list")
        timed("gnt-instance startup vm3", report, "gnt-instance", "startup", "vm3")
        sh("gnt-instance", "list")
        out = console_until("vm1", "echo hello from $(hostname)", "hello from vm1")
        print(f"\n$ echo 'echo hello from $(hostname)' | gnt-instance console vm1\n{out}")
        for name in ("vm1", "vm2", "vm3"):
            wait_in_sync(name)
        sh("gnt-instance", "info", "vm2")
        out = timed("gnt-instance migrate vm2 (to node02)", report,
                    "gnt-instance", "migrate", "vm2")
        m = re.search(r"migrated (\S+) .*downtime ([\d.]+) ms", out)
        report.append((f"  pause of that migration ({m.group(1) if m else '?'})",
                       f"{m.group(2)} ms" if m else "?"))
        for name in ("vm1", "vm3"):
            wait_in_sync(name)
        timed("planned maintenance of node01 (master role, instances live, offline)",
              report, "haven", "node", "maintenance", "node01")
        t = time.monotonic()
        cluster.stop_node(cluster.load_layout(DEMO_BASE).node("node01"))  # type: ignore[union-attr]
        report.append(("node01 stopped (daemon and etcd member)",
                       f"{time.monotonic() - t:.2f} s"))
        sh("gnt-instance", "list")
        console_until("vm1", "echo still here", "still here")
        sh("gnt-cluster", "getmaster")
        t = time.monotonic()
        sh("haven", "start", "node01")
        deadline = time.monotonic() + 60
        while "node01|Y" not in sh("gnt-node", "list", "-o", "name,alive", "--no-headers",
                                   "--separator=|", quiet=True)[1]:
            if time.monotonic() > deadline:
                raise StepFailed("node01 did not come back")
            time.sleep(0.3)
        sh("haven", "node", "maintenance", "--end", "node01")
        report.append(("node01 back and out of maintenance", f"{time.monotonic() - t:.2f} s"))
        wait_in_sync("vm1")
        timed("rebalance: gnt-instance migrate vm1 (back to node01)", report,
              "gnt-instance", "migrate", "vm1")
        sh("gnt-instance", "list")
        old = master()
        t = time.monotonic()
        sh("haven", "kill", old)
        new = wait_new_master(old)
        report.append((f"SIGKILL of master {old}: {new} is master and accepts jobs",
                       f"{time.monotonic() - t:.2f} s"))
        sh("haven", "start", old)
        sh("gnt-cluster", "verify", check=False)
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
