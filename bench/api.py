"""RAPI read latency with many instances: ``GET /2/instances?bulk=1`` (what Ganeti Web
Manager and htools load) with 200 and 1000 instances, plus ``/2/instances`` (names only)
and ``/2/nodes?bulk=1``, over one kept-alive HTTPS connection as a RAPI client holds it.

The instances are written straight into the store (stopped, on the ``fake``
hypervisor): the benchmark measures the API's read path, not 1000 creation jobs.  The
node daemons, etcd and the HTTPS stack are the real ones.

Reference: Ganeti 3.0 on this machine answers the bulk list of 200 instances in 0.16 s;
the goal is a tenth of that (0.016 s).
Usage: python bench/api.py [--runs 30] [--sizes 200,1000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import local_cluster, summary, write_json
from haven import clientconf
from haven.daemon.localstate import LocalState
from haven.model.instance import Disk, Instance
from haven.model.keys import Keys, store_prefix
from haven.store.base import Put
from haven.store.etcd import EtcdStore
from haven.store.tls import TlsFiles

GANETI_200 = 0.16
GOAL_200 = 0.016


def add_instances(endpoint: str, cluster: str, start: int, count: int,
                  tls: TlsFiles | None) -> None:
    store = EtcdStore([endpoint], store_prefix(cluster), tls=tls)
    try:
        batch: list[Put] = []
        for i in range(start, start + count):
            name = f"bench{i:04d}"
            inst = Instance(name, str(uuid.uuid4()), "busybox", "fake", "file",
                            "node01" if i % 2 else "node02", (),
                            (Disk(str(uuid.uuid4()), 0, 1024),),
                            beparams={"memory": 128, "vcpus": 1}, admin_state="down")
            batch.append(Put(Keys.instance(name), json.dumps(inst.to_json()).encode()))
            if len(batch) == 100:  # etcd allows 128 operations per transaction
                store.txn([], batch)
                batch = []
        if batch:
            store.txn([], batch)
    finally:
        store.close()


def timed_get(conn: http.client.HTTPSConnection, path: str, runs: int
              ) -> tuple[list[float], int, int]:
    """Seconds per GET, and the size and item count of the last answer."""
    times = []
    data = b""
    for _ in range(runs + 2):
        t = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        data = resp.read()
        times.append(time.perf_counter() - t)
        assert resp.status == 200, data[:200]
    return times[2:], len(data), len(json.loads(data))  # two warm-up calls dropped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--sizes", default="200,1000")
    ap.add_argument("--subnet", default="127.0.33")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    result: dict[str, object] = {"ganeti_reference_seconds_200": GANETI_200,
                                 "goal_seconds_200": GOAL_200, "runs": args.runs}
    with local_cluster(2, args.subnet, hypervisors="kvm,fake") as (base, env):
        tls = LocalState(Path(base) / "node01").etcd_tls()
        conf = clientconf.load(Path(env["HAVEN_CLIENT_CONFIG"]))
        assert conf is not None
        host, _, port = str(conf["endpoints"][0]).rpartition(":")
        ctx = ssl.create_default_context(cadata=conf["cert"])
        ctx.check_hostname = False
        conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=60)
        have = 0
        for size in sizes:
            add_instances(f"https://{host}:2379", str(conf["cluster"]), have, size - have,
                          tls)
            have = size
            bulk, nbytes, count = timed_get(conn, "/2/instances?bulk=1", args.runs)
            assert count == size, f"listed {count} instances, expected {size}"
            names, _, _ = timed_get(conn, "/2/instances", args.runs)
            nodes, _, _ = timed_get(conn, "/2/nodes?bulk=1", args.runs)
            result[str(size)] = {"instances_bulk_seconds": summary(bulk),
                                 "instances_bulk_bytes": nbytes,
                                 "instances_names_seconds": summary(names),
                                 "nodes_bulk_seconds": summary(nodes)}
            print(f"{size:5d} instances: GET /2/instances?bulk=1 median "
                  f"{summary(bulk)['median']:.4f} s (min {min(bulk):.4f}, max "
                  f"{max(bulk):.4f}, {nbytes / 1024:.0f} KiB); /2/instances "
                  f"{summary(names)['median']:.4f} s; /2/nodes?bulk=1 "
                  f"{summary(nodes)['median']:.4f} s")
        conn.close()
    path = write_json("api", result)
    print(f"Ganeti 3.0: {GANETI_200} s for 200; goal {GOAL_200} s. JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
