"""Median seconds from submitting a trivial job (OP_TEST_DELAY 0) to its success,
through the CLI (a new ``gnt-debug delay 0`` process each time) and through the REST
API (one client submitting and long-polling ``/2/jobs/<id>/wait``).

Reference: real Ganeti 3.0 on this machine takes 0.44 s; the goal is a tenth of that.
Usage: python bench/job_latency.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import local_cluster, run, summary, write_json
from haven.cli.client import Client


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--subnet", default="127.0.31")
    args = ap.parse_args()
    with local_cluster(3, args.subnet) as (_base, env):
        os.environ["HAVEN_CLIENT_CONFIG"] = env["HAVEN_CLIENT_CONFIG"]
        for _ in range(3):  # warm up connections and caches
            run(env, "gnt-debug", "delay", "0")
        cli = []
        for _ in range(args.runs):
            t = time.perf_counter()
            run(env, "gnt-debug", "delay", "0")
            cli.append(time.perf_counter() - t)
        client = Client.from_config()
        rest = []
        for _ in range(args.runs):
            t = time.perf_counter()
            job_id = client.submit([{"OP_ID": "OP_TEST_DELAY", "duration": 0}])
            job = client.wait_job(job_id)
            rest.append(time.perf_counter() - t)
            assert job["status"] == "success", job
    result = {"cli_seconds": summary(cli), "rest_seconds": summary(rest),
              "ganeti_reference_seconds": 0.44, "goal_seconds": 0.044}
    path = write_json("job_latency", result)
    print(f"trivial job, CLI  (gnt-debug delay 0): median {result['cli_seconds']['median']:.3f} s"
          f"  (min {min(cli):.3f}, max {max(cli):.3f}, n={len(cli)})")
    print(f"trivial job, REST (submit + wait):     median {result['rest_seconds']['median']:.3f} s"
          f"  (min {min(rest):.3f}, max {max(rest):.3f}, n={len(rest)})")
    print(f"Ganeti 3.0 reference 0.44 s; goal 0.044 s. JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
