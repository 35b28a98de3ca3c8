"""Kill every process of the master node (SIGKILL: daemon and etcd member) N times and
measure the seconds from the kill to a new master that accepts and runs a job.

Goal: median under 6 s with the default lease TTL of 5 s.
Usage: python bench/master_failover.py [--runs 10] [--nodes 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import local_cluster, run, summary, write_json
from haven.cli.client import Client
from haven.errors import HavenError


def current_master(client: Client) -> str | None:
    try:
        m = client.get("/haven/master", timeout=2)
        return str(m) if m else None
    except HavenError:
        return None


def accepts_job(client: Client) -> bool:
    try:
        job = client.wait_job(client.submit([{"OP_ID": "OP_TEST_DELAY", "duration": 0}]))
        return bool(job["status"] == "success")
    except HavenError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--subnet", default="127.0.30")
    args = ap.parse_args()
    times: list[float] = []
    with local_cluster(args.nodes, args.subnet) as (base, env):
        os.environ["HAVEN_CLIENT_CONFIG"] = env["HAVEN_CLIENT_CONFIG"]
        endpoints = [f"{args.subnet}.{i}:5080" for i in range(1, args.nodes + 1)]
        for i in range(args.runs):
            client = Client.from_config()
            client.endpoints = list(endpoints)
            old = current_master(client)
            assert old, "no master before the kill"
            t0 = time.monotonic()
            run(env, "haven", "--base-dir", str(base), "kill", old)
            # Poll the survivors the way a user's CLI would.
            client.endpoints = [e for e in endpoints
                                if not e.startswith(f"{args.subnet}.{int(old[-2:])}:")]
            while True:
                m = current_master(client)
                if m and m != old and accepts_job(client):
                    break
                if time.monotonic() - t0 > 120:
                    raise RuntimeError(f"run {i}: no new master after 120 s")
                time.sleep(0.05)
            dt = time.monotonic() - t0
            times.append(dt)
            print(f"run {i + 1}: {old} killed -> {m} accepted a job after {dt:.2f} s",
                  flush=True)
            run(env, "haven", "--base-dir", str(base), "start", old)
            deadline = time.monotonic() + 90
            while run(env, "gnt-cluster", "verify", check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{old} did not rejoin")
                time.sleep(0.5)
    result = {"seconds": summary(times), "runs": times, "lease_ttl": 5, "goal_median": 6.0}
    path = write_json("master_failover", result)
    s = result["seconds"]
    print(f"master failover after SIGKILL of the master node: min {s['min']:.2f} s, "
          f"median {s['median']:.2f} s, max {s['max']:.2f} s (n={len(times)}); JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
