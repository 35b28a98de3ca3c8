"""Prometheus ``/metrics`` of a real 3-node cluster with a running replicated instance
and a stopped one, scraped over HTTPS from every node as Prometheus would, parsed with
the Prometheus client's text parser, and checked against ``gnt-node list`` and
``gnt-instance list``."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Sim, make_sim

pytestmark = pytest.mark.e2e

NODES = ("node01", "node02", "node03")
MIB = 1 << 20
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CLUSTER_WIDE = {"haven_instance_status", "haven_instance_memory_bytes", "haven_jobs",
                "haven_cluster_node_role", "haven_replica_state", "haven_ha_node_state",
                "haven_etcd_members"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    for s in make_sim(tmp_path_factory.mktemp("metrics"), 3):
        p = s.run("gnt-instance", "add", "-t", "drbd", "--disk", "0:size=32m", "-B",
                  "memory=128", "-o", "busybox", "-n", "node01:node02", "vm1", timeout=180)
        assert p.returncode == 0, p.stdout + p.stderr
        p = s.run("gnt-instance", "add", "-t", "file", "--disk", "0:size=16m", "-B",
                  "memory=64", "-o", "busybox", "-n", "node03", "vm2", timeout=180)
        assert p.returncode == 0, p.stdout + p.stderr
        s.run("gnt-instance", "shutdown", "--timeout", "10", "vm2", check=True)
        yield s


def scrape(sim: Sim, node: str) -> Samples:
    """GET https://<node>:5080/metrics, trusting the cluster certificate only."""
    conf = json.loads(Path(sim.env["HAVEN_CLIENT_CONFIG"]).read_text())
    ctx = ssl.create_default_context(cadata=conf["cert"])
    ctx.check_hostname = False  # nodes are addressed by IP; the pinned cert is the identity
    url = f"https://{sim.address(node)}:5080/metrics"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"{node} exports {key} twice"
            out[key] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def families(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def table(sim: Sim, *argv: str) -> list[list[str]]:
    p = sim.run(*argv, "--no-headers", "--separator", "|", check=True)
    return [line.split("|") for line in p.stdout.splitlines() if line]


def scrape_until(sim: Sim, node: str, ok: object, timeout: float = 60) -> Samples:
    """Scrape until ``ok(samples)`` holds (a state that only moves one way)."""
    deadline = time.monotonic() + timeout
    while True:
        s = scrape(sim, node)
        try:
            if ok(s):  # type: ignore[operator]
                return s
        except KeyError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{node}'s metrics never satisfied the condition")
        time.sleep(0.5)


def test_every_node_serves_its_own_series_and_only_the_master_the_cluster_ones(
        sim: Sim) -> None:
    master = sim.master()
    assert master in NODES
    for node in NODES:
        s = scrape(sim, node)
        assert value(s, "haven_node_joined", node=node) == 1
        assert value(s, "haven_node_lease_valid", node=node) == 1
        assert value(s, "haven_node_master", node=node) == (1 if node == master else 0)
        assert value(s, "haven_etcd_member_up", node=node) == 1
        assert value(s, "haven_etcd_has_leader", node=node) == 1
        if node == master:
            assert families(s) >= CLUSTER_WIDE
        else:
            assert not CLUSTER_WIDE & families(s), CLUSTER_WIDE & families(s)
        errors = {k: v for k, v in s.items() if k[0] == "haven_scrape_errors_total" and v}
        assert not errors, f"{node}: {errors}"
    # Three master candidates: every member votes once the quorum logic has promoted them.
    s = scrape_until(sim, master, lambda s: value(s, "haven_etcd_members", kind="voter") == 3)
    assert value(s, "haven_etcd_members", kind="learner") == 0


def test_instance_states_and_memory_are_those_of_gnt_instance_list(sim: Sim) -> None:
    s = scrape(sim, sim.master())
    rows = table(sim, "gnt-instance", "list", "-o", "name,status,pnode,snodes")
    assert [r[0] for r in rows] == ["vm1", "vm2"]
    listed = {labels for name, labels in s if name == "haven_instance_status"}
    assert {dict(lb)["instance"] for lb in listed} == {"vm1", "vm2"}
    for name, status, pnode, snodes in rows:
        assert value(s, "haven_instance_status", instance=name, status=status) == 1
        current = [dict(lb)["status"] for (n, lb), v in s.items()
                   if n == "haven_instance_status" and dict(lb)["instance"] == name and v]
        assert current == [status]
        info = [dict(lb) for (n, lb) in s if n == "haven_instance_info"
                and dict(lb)["instance"] == name]
        assert info[0]["primary_node"] == pnode
        assert info[0]["secondary_node"] == snodes.replace(" ", "")
    assert [r[1] for r in rows] == ["running", "ADMIN_down"]
    assert value(s, "haven_instance_memory_bytes", instance="vm1") == 128 * MIB
    assert value(s, "haven_instance_memory_bytes", instance="vm2") == 64 * MIB
    mem = table(sim, "gnt-instance", "list", "--units", "m", "-o", "name,oper_ram")
    assert mem[0] == ["vm1", "128"]
    assert value(s, "haven_jobs", status="success") >= 3  # two adds and a shutdown
    assert value(s, "haven_jobs_submitted_total") >= 3
    assert value(s, "haven_job_duration_seconds_count", op="OP_INSTANCE_CREATE",
                 status="success") == 2


def test_node_series_are_those_of_gnt_node_list(sim: Sim) -> None:
    master = sim.master()
    cluster = scrape(sim, master)
    rows = table(sim, "gnt-node", "list", "--units", "m", "-o",
                 "name,mtotal,mfree,ctotal,pinst_cnt,sinst_cnt,role")
    assert [r[0] for r in rows] == list(NODES)
    running_on = {"node01": 1, "node02": 0, "node03": 0}  # vm2 on node03 is stopped
    roles = {"M": "master", "C": "master-candidate", "R": "regular"}
    for name, mtotal, mfree, ctotal, pinst, sinst, role in rows:
        s = scrape(sim, name)
        assert value(s, "haven_node_memory_total_bytes", node=name) // MIB == int(mtotal)
        available = value(s, "haven_node_memory_available_bytes", node=name) / MIB
        # Facts are published every few seconds; the scrape reads /proc now.
        assert abs(available - int(mfree)) < 0.25 * int(mtotal)
        assert value(s, "haven_node_cpus", node=name) == int(ctotal)
        assert value(s, "haven_node_instances", node=name) == running_on[name]
        assert value(s, "haven_node_role", node=name, role=roles[role]) == 1
        assert value(cluster, "haven_cluster_node_role", node=name, role=roles[role]) == 1
        assert value(cluster, "haven_cluster_node_alive", node=name) == 1
        assert value(cluster, "haven_cluster_node_instances", node=name,
                     kind="primary") == int(pinst)
        assert value(cluster, "haven_cluster_node_instances", node=name,
                     kind="secondary") == int(sinst)


def test_the_running_vm_reports_cpu_disk_and_replication(sim: Sim) -> None:
    vm = {"instance": "vm1", "node": "node01"}
    disk = {**vm, "disk": "0"}
    s = scrape_until(sim, "node01", lambda s: value(
        s, "haven_replication_mirror_phase", phase="ready", **disk) == 1)
    assert value(s, "haven_instance_vm_state", state="running", **vm) == 1
    assert value(s, "haven_instance_resident_memory_bytes", **vm) > 16 * MIB
    assert value(s, "haven_instance_disk_reads_completed_total", **disk) > 0
    assert value(s, "haven_replication_progress_ratio", **disk) == 1
    assert value(s, "haven_replication_pending_bytes", **disk) >= 0
    cpu = value(s, "haven_instance_cpu_seconds_total", **vm)
    assert cpu > 0
    # A counter only grows: the guest keeps running (TCG spends CPU even when idle).
    again = scrape_until(sim, "node01", lambda s: value(
        s, "haven_instance_cpu_seconds_total", **vm) > cpu)
    assert value(again, "haven_instance_disk_read_bytes_total", **disk) >= \
        value(s, "haven_instance_disk_read_bytes_total", **disk)
    # Nothing of vm1's process is exported by the nodes that do not run it.
    for node in ("node02", "node03"):
        assert not any(dict(lb).get("instance") == "vm1" for _, lb in scrape(sim, node))
    master = scrape_until(sim, sim.master(), lambda s: all(
        value(s, "haven_replica_state", instance="vm1", node=n, disk="0",
              state="UpToDate") == 1 for n in ("node01", "node02")))
    assert value(master, "haven_replica_degraded", instance="vm1") == 0
    assert value(master, "haven_replica_sync_ratio", instance="vm1", node="node02",
                 disk="0") == 1
