"""``make demo`` / ``haven demo``: a local cluster and a tour of the commands, with the
measured times of what matters (elections, failovers, job latency).

Every step runs the real command line a user would type; the demo exits non-zero as
soon as one step fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from haven.sim import cluster

BIN = Path(sys.executable).parent


class StepFailed(Exception):
    pass


def sh(*argv: str, check: bool = True, quiet: bool = False) -> tuple[int, str]:
    cmd = [str(BIN / argv[0]), *argv[1:]]
    if not quiet:
        print(f"\n$ {' '.join(argv)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    out = (proc.stdout + proc.stderr).rstrip()
    if not quiet and out:
        print(out, flush=True)
    if check and proc.returncode != 0:
        raise StepFailed(f"'{' '.join(argv)}' exited with {proc.returncode}")
    return proc.returncode, proc.stdout.strip()


def master() -> str:
    rc, out = sh("gnt-cluster", "getmaster", check=False, quiet=True)
    return out if rc == 0 else ""


def wait_new_master(old: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = master()
        if m and m != old:
            rc, _ = sh("gnt-debug", "delay", "0", check=False, quiet=True)
            if rc == 0:
                return m
        time.sleep(0.1)
    raise StepFailed(f"no new master after {old} died")


def main() -> int:
    base = cluster.DEFAULT_BASE
    os.environ.setdefault("HAVEN_CLIENT_CONFIG", str(base / "client.json"))
    report: list[tuple[str, str]] = []
    try:
        t0 = time.monotonic()
        sh("haven", "--base-dir", str(base), "up", "--nodes", "3")
        report.append(("haven up (3 nodes, etcd + daemons)", f"{time.monotonic() - t0:.1f} s"))
        sh("gnt-cluster", "info")
        sh("gnt-node", "list")
        sh("gnt-node", "list", "-o", "name,role,pip,master_candidate,alive,accel")
        sh("gnt-cluster", "getmaster")
        sh("gnt-cluster", "verify")
        t = time.monotonic()
        sh("gnt-debug", "delay", "0")
        report.append(("trivial job through the CLI", f"{time.monotonic() - t:.2f} s"))
        sh("gnt-job", "list")
        old = master()
        target = next(n.name for n in cluster.load_layout(base).nodes  # type: ignore[union-attr]
                      if n.name != old)
        t = time.monotonic()
        sh("gnt-cluster", "master-failover", "--target", target)
        report.append((f"voluntary master-failover {old} -> {target}",
                       f"{time.monotonic() - t:.2f} s"))
        t = time.monotonic()
        sh("haven", "--base-dir", str(base), "kill", target)
        new = wait_new_master(target)
        report.append((f"SIGKILL of master {target} -> {new} accepts jobs",
                       f"{time.monotonic() - t:.2f} s"))
        sh("gnt-cluster", "verify", check=False)
        sh("haven", "--base-dir", str(base), "start", target)
        deadline = time.monotonic() + 60
        while sh("gnt-cluster", "verify", check=False, quiet=True)[0] != 0:
            if time.monotonic() > deadline:
                raise StepFailed(f"{target} did not rejoin")
            time.sleep(0.5)
        sh("gnt-cluster", "verify")
        sh("haven", "--base-dir", str(base), "status")
    except (StepFailed, subprocess.TimeoutExpired) as exc:
        print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
        return 1
    print("\n=== Haven demo report ===")
    width = max(len(k) for k, _ in report)
    for k, v in report:
        print(f"  {k.ljust(width)}  {v}")
    print(f"\nThe cluster keeps running; stop it with 'haven down' "
          f"(client config: {os.environ['HAVEN_CLIENT_CONFIG']}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
