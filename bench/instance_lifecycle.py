"""Instance lifecycle on a real local cluster, median seconds:

* ``add`` with install and start (busybox OS, 64 MiB file disk, real QEMU under TCG),
* ``startup`` (job until QEMU runs) and startup until the guest's shell answers on the
  serial console, ``shutdown`` (ACPI power-down, guest powers off),
* ``gnt-instance list`` through the CLI with 1, 100 and 1000 instances, and RAPI's bulk
  ``/2/instances?bulk=1`` with 200 and 1000 (the many are fake-hypervisor instances,
  100 of them running as fake processes).

Reference, real Ganeti 3.0 on this machine: add 1.5 s, list 0.27-0.31 s for 1-200
instances, RAPI bulk list of 200 in 0.16 s; the goal is a tenth of each for the
control-plane parts.  Usage: python bench/instance_lifecycle.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BIN, local_cluster, run, summary, write_json
from haven.cli.client import Client


def timed(env: dict[str, str], *argv: str) -> float:
    t = time.perf_counter()
    run(env, *argv)
    return time.perf_counter() - t


def console_ready(env: dict[str, str], name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = subprocess.run([str(BIN / "gnt-instance"), "console", name], input="echo up-$((1+1))\n",
                           capture_output=True, text=True, env=env, timeout=30)
        if "up-2" in p.stdout:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} never answered on its console")


def list_latency(env: dict[str, str], runs: int) -> float:
    return statistics.median(timed(env, "gnt-instance", "list") for _ in range(runs))


def bulk_latency(client: Client, runs: int) -> float:
    vals = []
    for _ in range(runs):
        t = time.perf_counter()
        client.get("/2/instances?bulk=1")
        vals.append(time.perf_counter() - t)
    return statistics.median(vals)


def create_fake(client: Client, start: int, stop: int, running: int) -> None:
    jobs = []
    for i in range(start, stop):
        jobs.append(client.submit([{
            "OP_ID": "OP_INSTANCE_CREATE", "instance_name": f"fake{i:04d}",
            "disk_template": "diskless", "hypervisor": "fake", "no_install": True,
            "start": i < running, "beparams": {"memory": 16}, "pnode": "node03"}]))
    for job_id in jobs:
        job = client.wait_job(job_id)
        if job["status"] != "success":
            raise RuntimeError(f"fake instance job {job_id} failed: {job['opresult']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--subnet", default="127.0.32")
    ap.add_argument("--many", type=int, default=1000)
    args = ap.parse_args()
    res: dict[str, object] = {}
    with local_cluster(3, args.subnet, hypervisors="kvm,fake") as (_base, env):
        os.environ["HAVEN_CLIENT_CONFIG"] = env["HAVEN_CLIENT_CONFIG"]
        client = Client.from_config()
        adds, starts, ready, stops = [], [], [], []
        for i in range(args.runs):
            name = f"bench{i}"
            adds.append(timed(env, "gnt-instance", "add", "-t", "file", "--disk",
                              "0:size=64m", "-B", "memory=128", "-o", "busybox",
                              "-n", "node01", name))
            console_ready(env, name)
            stops.append(timed(env, "gnt-instance", "shutdown", name))
            t = time.perf_counter()
            run(env, "gnt-instance", "startup", name)
            starts.append(time.perf_counter() - t)
            console_ready(env, name)
            ready.append(time.perf_counter() - t)
            if i:
                run(env, "gnt-instance", "remove", "-f", name)
        res["add_seconds"] = summary(adds)
        res["startup_seconds"] = summary(starts)
        res["startup_to_shell_seconds"] = summary(ready)
        res["shutdown_seconds"] = summary(stops)
        res["list_1_seconds"] = list_latency(env, 15)
        create_fake(client, 0, 99, running=99)
        res["list_100_seconds"] = list_latency(env, 15)
        create_fake(client, 99, 199, running=99)
        res["rapi_bulk_200_seconds"] = bulk_latency(client, 15)
        create_fake(client, 199, args.many - 1, running=99)
        res["list_1000_seconds"] = list_latency(env, 9)
        res["rapi_bulk_1000_seconds"] = bulk_latency(client, 9)
    res["ganeti_reference"] = {"add": 1.5, "list": "0.27-0.31", "rapi_bulk_200": 0.16}
    path = write_json("instance_lifecycle", res)
    for key, value in res.items():
        if isinstance(value, dict) and "median" in value:
            print(f"{key:28s} median {value['median']:.3f} s  (min {value['min']:.3f}, "
                  f"max {value['max']:.3f}, n={value['n']})")
        elif isinstance(value, float):
            print(f"{key:28s} median {value:.3f} s")
    print(f"Ganeti 3.0 reference: add 1.5 s, list 0.27-0.31 s, RAPI bulk 200 0.16 s. "
          f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
