"""The Prometheus collector fed fake inputs, its output read back with the Prometheus
client's own text parser: what each node exports, what only the master exports, and
that a part that fails is left out and counted instead of failing the scrape."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from haven.api import metrics
from haven.api.routing import Request, Router
from haven.hypervisor.base import VmInfo
from haven.hypervisor.qemu.mirror_spec import MirrorState, parse_block_jobs
from haven.hypervisor.qemu.stats import DiskIo, VmIo, parse_blockstats
from haven.model.ha import InstanceHA, NodeHA, instance_key, node_key
from haven.model.instance import Disk, Instance, Observed
from haven.model.job import Job, JobStatus, OpStatus
from haven.model.keys import MASTER, Keys
from haven.model.node import Node
from haven.model.replica import DiskReplica, Replicas
from haven.monitor.collect import HavenCollector
from haven.store.base import Member, Store
from haven.store.etcd import EndpointStatus
from haven.store.memory import MemoryStore

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class FakeNode:
    """A NodeView whose every answer a test sets, or makes fail."""

    name: str
    storage: Path
    st: Store | None = None
    master: bool = False
    running: dict[str, tuple[str, VmInfo]] = field(default_factory=dict)
    io: dict[str, VmIo] = field(default_factory=dict)
    taps: dict[str, dict[int, str]] = field(default_factory=dict)
    etcd: EndpointStatus | None = None
    members: list[Member] | None = None
    broken: set[str] = field(default_factory=set)  # methods that raise
    started: float = 1700000000.0

    def _check(self, what: str) -> None:
        if what in self.broken:
            raise RuntimeError(f"{what} broken on purpose")

    def store(self) -> Store | None:
        return self.st

    def is_master(self) -> bool:
        return self.master

    def lease_valid(self) -> bool:
        return self.st is not None

    def storage_dir(self) -> Path:
        return self.storage

    def vms(self) -> Mapping[str, tuple[str, VmInfo]]:
        self._check("vms")
        return self.running

    def vm_io(self, names: Sequence[str]) -> Mapping[str, VmIo]:
        self._check("vm_io")
        return {n: self.io[n] for n in names if n in self.io}

    def nic_taps(self, name: str) -> Mapping[int, str]:
        return self.taps.get(name, {})

    def etcd_status(self) -> EndpointStatus | None:
        self._check("etcd")
        return self.etcd

    def etcd_members(self) -> Sequence[Member] | None:
        return self.members


def scrape(collector: HavenCollector) -> Samples:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    text = generate_latest(reg).decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def put(store: Store, key: str, data: object) -> None:
    store.put(key, json.dumps(data).encode())


def node(name: str, **kw: object) -> Node:
    return Node.from_json({"name": name, "uuid": f"u-{name}", "primary_ip": "127.0.0.1",
                           "secondary_ip": "127.0.0.1", "api_port": 5080, **kw})


def instance(name: str, pnode: str, **kw: object) -> Instance:
    return Instance.from_json({"name": name, "uuid": f"uuid-{name}", "os": "busybox",
                               "hypervisor": "kvm", "disk_template": "file",
                               "primary_node": pnode, "admin_state": "up",
                               "beparams": {"memory": 256, "vcpus": 2},
                               "disks": [Disk("d0", 0, 1024).__dict__], **kw})


def job(job_id: int, status: JobStatus, start: float | None, end: float | None,
        op: str = "OP_INSTANCE_STARTUP") -> Job:
    j = Job.new(job_id, [{"OP_ID": op, "instance_name": "vm1"}], 100.0)
    final = {JobStatus.SUCCESS: OpStatus.SUCCESS, JobStatus.ERROR: OpStatus.ERROR,
             JobStatus.CANCELED: OpStatus.CANCELED}.get(status, OpStatus.QUEUED)
    return Job(j.id, j.ops, status, (final,), j.opresult, j.oplog, 100.0, start, end)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    (root / "meminfo").write_text("MemTotal:        8000000 kB\nMemFree:          100 kB\n"
                                  "MemAvailable:    6000000 kB\n")
    return root


def fake_process(proc: Path, pid: int, utime: int, stime: int, rss_pages: int) -> None:
    # Fields 3.. of /proc/<pid>/stat; utime is field 14, stime 15, rss 24.
    fields = ["S"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 8 + [str(rss_pages)]
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "stat").write_text(f"{pid} (qemu (x) y) " + " ".join(fields) + "\n")


@pytest.fixture
def cluster_store() -> MemoryStore:
    """node01 (master, runs vm1), node02 (alive), node03 (offline, not alive); vm1
    running, vm2 stopped by the administrator, vm3 whose node is down; a drbd vm4."""
    s = MemoryStore()
    for n in (node("node01"), node("node02"), node("node03", offline=True,
                                                          master_candidate=False)):
        put(s, Keys.node(n.name), n.to_json())
    for n in ("node01", "node02"):
        put(s, Keys.alive(n), {"node": n})
    put(s, MASTER, {"node": "node01"})
    put(s, Keys.instance("vm1"), instance("vm1", "node01").to_json())
    put(s, Keys.observed("vm1"), Observed("vm1", "node01", "running", pid=4242,
                                          restarts=1).to_json())
    put(s, Keys.instance("vm2"), instance("vm2", "node02", admin_state="down").to_json())
    put(s, Keys.instance("vm3"), instance("vm3", "node03").to_json())
    put(s, Keys.instance("vm4"), instance("vm4", "node01", disk_template="drbd",
                                          secondary_nodes=["node02"]).to_json())
    put(s, Keys.replicas("vm4"), Replicas("vm4", 1, {
        "node01": {0: DiskReplica("UpToDate")},
        "node02": {0: DiskReplica("Inconsistent", 42.0)}}).to_json())
    for j in (job(1, JobStatus.SUCCESS, 101.0, 103.0), job(2, JobStatus.ERROR, 101.0, 101.2),
              job(3, JobStatus.RUNNING, 104.0, None), job(4, JobStatus.QUEUED, None, None)):
        put(s, Keys.job(j.id), j.to_json())
    s.put(Keys.counter("job"), b"4")
    put(s, node_key("node03"), NodeHA("node03", "fenced").to_json())
    put(s, instance_key("vm3"), InstanceHA("vm3", "recovered", "node03", "node02", 7, 1,
                                           lost_at=50.0, started=56.0, finished=62.5).to_json())
    return s


def test_master_exports_cluster_wide_series_as_gnt_list_shows_them(
        tmp_path: Path, proc: Path, cluster_store: MemoryStore) -> None:
    n = FakeNode("node01", tmp_path, cluster_store, master=True,
                 members=[Member(1, "node01", (), ()), Member(2, "node02", (), (), True)])
    s = scrape(HavenCollector(n, proc=proc))
    assert value(s, "haven_instance_status", instance="vm1", status="running") == 1
    assert value(s, "haven_instance_status", instance="vm1", status="ERROR_down") == 0
    assert value(s, "haven_instance_status", instance="vm2", status="ADMIN_down") == 1
    assert value(s, "haven_instance_status", instance="vm3", status="ERROR_nodeoffline") == 1
    assert value(s, "haven_instance_memory_bytes", instance="vm1") == 256 * MIB
    assert value(s, "haven_instance_vcpus", instance="vm2") == 2
    assert value(s, "haven_instance_disk_size_bytes", instance="vm1", disk="0") == 1024 * MIB
    assert value(s, "haven_instance_restarts", instance="vm1") == 1
    assert value(s, "haven_instance_info", instance="vm4", primary_node="node01",
                 secondary_node="node02", disk_template="drbd", hypervisor="kvm",
                 os="busybox") == 1
    assert value(s, "haven_cluster_node_role", node="node01", role="master") == 1
    assert value(s, "haven_cluster_node_role", node="node02", role="master-candidate") == 1
    assert value(s, "haven_cluster_node_role", node="node03", role="offline") == 1
    assert value(s, "haven_cluster_node_alive", node="node03") == 0
    assert value(s, "haven_cluster_node_instances", node="node01", kind="primary") == 2
    assert value(s, "haven_cluster_node_instances", node="node02", kind="secondary") == 1
    # Replicas: node02's disk is resyncing at 42 %.
    assert value(s, "haven_replica_state", instance="vm4", node="node02", disk="0",
                 state="Inconsistent") == 1
    assert value(s, "haven_replica_sync_ratio", instance="vm4", node="node02",
                 disk="0") == pytest.approx(0.42)
    assert value(s, "haven_replica_degraded", instance="vm4") == 1
    assert value(s, "haven_replica_stale", instance="vm4") == 0
    # Jobs.
    assert value(s, "haven_jobs", status="success") == 1
    assert value(s, "haven_jobs", status="running") == 1
    assert value(s, "haven_jobs", status="canceled") == 0
    assert value(s, "haven_jobs_submitted_total") == 4
    assert value(s, "haven_job_duration_seconds_count", op="OP_INSTANCE_STARTUP",
                 status="success") == 1
    assert value(s, "haven_job_duration_seconds_bucket", op="OP_INSTANCE_STARTUP",
                 status="success", le="2.5") == 1
    assert value(s, "haven_job_duration_seconds_bucket", op="OP_INSTANCE_STARTUP",
                 status="success", le="1.0") == 0
    assert value(s, "haven_job_duration_seconds_sum", op="OP_INSTANCE_STARTUP",
                 status="error") == pytest.approx(0.2)
    # HA.
    assert value(s, "haven_ha_node_state", node="node03", state="fenced") == 1
    assert value(s, "haven_ha_node_state", node="node02", state="online") == 1
    assert value(s, "haven_ha_instance_recovery_state", instance="vm3",
                 state="recovered") == 1
    assert value(s, "haven_ha_last_recovery_seconds", instance="vm3") == 12.5
    assert value(s, "haven_ha_recoveries_total", outcome="recovered") == 1
    assert value(s, "haven_ha_recovery_duration_seconds_bucket", le="15.0") == 1
    assert value(s, "haven_etcd_members", kind="voter") == 1
    assert value(s, "haven_etcd_members", kind="learner") == 1
    # This node's own series too.
    assert value(s, "haven_node_master", node="node01") == 1
    assert value(s, "haven_node_role", node="node01", role="master") == 1
    assert value(s, "haven_node_memory_total_bytes", node="node01") == 8000000 * 1024
    assert value(s, "haven_node_memory_available_bytes", node="node01") == 6000000 * 1024
    assert not any(v for (name, _), v in s.items() if name == "haven_scrape_errors_total")


def test_a_node_that_is_not_master_exports_only_its_own_series(
        tmp_path: Path, proc: Path, cluster_store: MemoryStore) -> None:
    s = scrape(HavenCollector(FakeNode("node02", tmp_path, cluster_store), proc=proc))
    assert value(s, "haven_node_master", node="node02") == 0
    assert value(s, "haven_node_joined", node="node02") == 1
    assert value(s, "haven_node_role", node="node02", role="master-candidate") == 1
    cluster_wide = {"haven_instance_status", "haven_jobs", "haven_cluster_node_alive",
                    "haven_replica_state", "haven_ha_node_state", "haven_etcd_members"}
    assert not cluster_wide & names(s)


def test_a_standby_node_exports_its_machine_and_says_it_is_not_joined(
        tmp_path: Path, proc: Path) -> None:
    s = scrape(HavenCollector(FakeNode("node09", tmp_path), proc=proc))
    assert value(s, "haven_node_joined", node="node09") == 0
    assert value(s, "haven_node_cpus", node="node09") == os.cpu_count()
    assert value(s, "haven_node_storage_total_bytes", node="node09") > 0
    assert "haven_node_role" not in names(s)


def test_vm_processes_report_cpu_time_memory_and_run_state(
        tmp_path: Path, proc: Path) -> None:
    fake_process(proc, 4242, utime=3 * TICKS, stime=TICKS // 2, rss_pages=1000)
    n = FakeNode("node01", tmp_path, running={
        "vm1": ("kvm", VmInfo("vm1", 4242, "running", started=1700000100.0, memory=256)),
        "vm2": ("fake", VmInfo("vm2", 999999, "shutdown", memory=128))})
    s = scrape(HavenCollector(n, proc=proc))
    assert value(s, "haven_node_instances", node="node01") == 2
    assert value(s, "haven_node_instance_memory_bytes", node="node01") == 384 * MIB
    labels = {"instance": "vm1", "node": "node01"}
    assert value(s, "haven_instance_cpu_seconds_total", **labels) == pytest.approx(3.5)
    assert value(s, "haven_instance_resident_memory_bytes", **labels) == 1000 * PAGE
    assert value(s, "haven_instance_start_time_seconds", **labels) == 1700000100.0
    assert value(s, "haven_instance_vm_state", state="running", **labels) == 1
    assert value(s, "haven_instance_vm_state", instance="vm2", node="node01",
                 state="shutdown") == 1
    # vm2's process is gone from /proc: no CPU series for it, and no error either.
    assert ("haven_instance_cpu_seconds_total",
            frozenset({"instance": "vm2", "node": "node01"}.items())) not in s


def test_qmp_disk_counters_and_replication_in_flight_bytes(tmp_path: Path, proc: Path) -> None:
    n = FakeNode("node01", tmp_path, running={
        "vm1": ("kvm", VmInfo("vm1", 1, "running")),
        "vm2": ("kvm", VmInfo("vm2", 2, "running"))})
    n.io["vm1"] = VmIo((DiskIo(0, read_bytes=4096, written_bytes=8192, reads=1, writes=2,
                               write_seconds=0.25, failed=3),),
                       {0: MirrorState(0, "mirror0", "ready", 1000, 1500)})
    collector = HavenCollector(n, proc=proc)
    s = scrape(collector)
    d = {"instance": "vm1", "node": "node01", "disk": "0"}
    assert value(s, "haven_instance_disk_read_bytes_total", **d) == 4096
    assert value(s, "haven_instance_disk_written_bytes_total", **d) == 8192
    assert value(s, "haven_instance_disk_writes_completed_total", **d) == 2
    assert value(s, "haven_instance_disk_write_time_seconds_total", **d) == 0.25
    assert value(s, "haven_instance_disk_errors_total", **d) == 3
    assert value(s, "haven_replication_mirror_phase", phase="ready", **d) == 1
    assert value(s, "haven_replication_pending_bytes", **d) == 500
    assert value(s, "haven_replication_progress_ratio", **d) == 1
    # vm2 did not answer its monitor: vm1 is still there, the miss is counted.
    assert value(s, "haven_scrape_errors_total", part="qmp") == 1


def test_tap_counters_are_reported_from_the_guests_side(tmp_path: Path, proc: Path) -> None:
    sys_net = tmp_path / "net"
    stats = sys_net / "hvabc-0" / "statistics"
    stats.mkdir(parents=True)
    for key, v in (("rx_bytes", 100), ("tx_bytes", 2000), ("rx_packets", 1),
                   ("tx_packets", 20), ("rx_dropped", 0), ("tx_dropped", 5),
                   ("rx_errors", 0), ("tx_errors", 0)):
        (stats / key).write_text(f"{v}\n")
    n = FakeNode("node01", tmp_path, running={"vm1": ("kvm", VmInfo("vm1", 1, "running"))},
                 taps={"vm1": {0: "hvabc-0", 1: "hvgone-1"}})
    s = scrape(HavenCollector(n, proc=proc, sys_net=sys_net))
    nic = {"instance": "vm1", "node": "node01", "nic": "0"}
    # The tap transmits what the guest receives.
    assert value(s, "haven_instance_network_receive_bytes_total", **nic) == 2000
    assert value(s, "haven_instance_network_transmit_bytes_total", **nic) == 100
    assert value(s, "haven_instance_network_receive_drop_total", **nic) == 5
    assert not any(dict(labels).get("nic") == "1" for _, labels in s)


def test_failing_parts_are_left_out_and_counted_not_raised(
        tmp_path: Path, proc: Path, cluster_store: MemoryStore) -> None:
    n = FakeNode("node01", tmp_path, cluster_store, master=True, broken={"vms", "etcd"})
    collector = HavenCollector(n, proc=proc)
    s = scrape(collector)
    assert value(s, "haven_scrape_errors_total", part="vms") == 1
    assert value(s, "haven_etcd_member_up", node="node01") == 0
    assert "haven_node_instances" not in names(s)
    assert value(s, "haven_instance_status", instance="vm1", status="running") == 1
    cluster_store.set_reachable(False)
    s = scrape(collector)
    assert value(s, "haven_scrape_errors_total", part="vms") == 2
    assert value(s, "haven_scrape_errors_total", part="role") == 1
    # etcd unreachable: the cluster part is not even tried, the node's own part is there.
    assert "haven_instance_status" not in names(s)
    assert ("haven_scrape_errors_total", frozenset({("part", "cluster")})) not in s
    assert value(s, "haven_node_memory_total_bytes", node="node01") > 0


def test_a_reachable_member_reports_its_raft_view(tmp_path: Path, proc: Path) -> None:
    st = EndpointStatus(endpoint="http://x:2379", version="3.4", cluster_id=1, member_id=7,
                        leader=7, raft_term=3, raft_index=99, db_size=2 * MIB,
                        db_size_in_use=MIB, is_learner=False, errors=[])
    s = scrape(HavenCollector(FakeNode("node01", tmp_path, etcd=st), proc=proc))
    assert value(s, "haven_etcd_member_up", node="node01") == 1
    assert value(s, "haven_etcd_is_leader", node="node01") == 1
    assert value(s, "haven_etcd_has_leader", node="node01") == 1
    assert value(s, "haven_etcd_db_size_bytes", node="node01") == 2 * MIB
    assert value(s, "haven_etcd_raft_term", node="node01") == 3


def test_finished_jobs_and_recoveries_are_counted_once(
        tmp_path: Path, proc: Path, cluster_store: MemoryStore) -> None:
    collector = HavenCollector(FakeNode("node01", tmp_path, cluster_store, master=True),
                               proc=proc)
    scrape(collector)
    # Job 3 finishes; vm2 is lost and recovered at the second attempt.
    put(cluster_store, Keys.job(3), job(3, JobStatus.SUCCESS, 104.0, 200.0).to_json())
    put(cluster_store, instance_key("vm2"), InstanceHA("vm2", "failed", "node02",
                                                       attempts=1, lost_at=80.0).to_json())
    scrape(collector)
    put(cluster_store, instance_key("vm2"), InstanceHA(
        "vm2", "recovered", "node02", "node01", 9, 2, lost_at=80.0, finished=84.0).to_json())
    s = scrape(collector)
    s = scrape(collector)
    assert value(s, "haven_job_duration_seconds_count", op="OP_INSTANCE_STARTUP",
                 status="success") == 2
    assert value(s, "haven_job_duration_seconds_bucket", op="OP_INSTANCE_STARTUP",
                 status="success", le="60.0") == 1  # job 3 took 96 s, job 1 2 s
    assert value(s, "haven_ha_recoveries_total", outcome="recovered") == 2
    assert value(s, "haven_ha_recoveries_total", outcome="failed") == 1
    assert value(s, "haven_ha_recovery_duration_seconds_count") == 2
    assert value(s, "haven_ha_recovery_duration_seconds_sum") == pytest.approx(12.5 + 4.0)
    # An archived job is forgotten, never subtracted.
    cluster_store.delete(Keys.job(1))
    s = scrape(collector)
    assert value(s, "haven_job_duration_seconds_count", op="OP_INSTANCE_STARTUP",
                 status="success") == 2
    assert value(s, "haven_jobs", status="success") == 1


def test_blockstats_map_to_guest_disks_even_under_a_mirror_filter() -> None:
    reply = [
        {"device": "", "qdev": "/machine/peripheral/vblk1/virtio-backend",
         "node-name": "mirror_top0", "stats": {"rd_bytes": 10, "wr_bytes": 20,
                                               "wr_total_time_ns": 1_500_000_000,
                                               "failed_wr_operations": 1}},
        {"device": "", "qdev": "/machine/peripheral/vblk0/virtio-backend",
         "node-name": "disk0", "stats": {"rd_operations": 3}},
        {"device": "cd0", "qdev": "/machine/peripheral/ide0", "stats": {"rd_bytes": 5}},
    ]
    disks = parse_blockstats(reply)
    assert [d.disk for d in disks] == [0, 1]
    assert disks[0].reads == 3
    assert (disks[1].read_bytes, disks[1].written_bytes) == (10, 20)
    assert disks[1].write_seconds == 1.5 and disks[1].failed == 1
    assert parse_blockstats(None) == ()


def test_block_jobs_give_each_disks_replication_phase() -> None:
    jobs = parse_block_jobs([
        {"device": "mirror0", "type": "mirror", "status": "ready", "ready": True,
         "offset": 4096, "len": 8192, "io-status": "ok"},
        {"device": "resync1", "type": "mirror", "status": "running", "ready": False,
         "offset": 10, "len": 40},
        {"device": "backup-x", "type": "backup", "status": "running"}])
    assert jobs[0].phase == "ready" and jobs[0].pending == 4096
    assert jobs[1].phase == "syncing" and jobs[1].percent == 25.0
    assert set(jobs) == {0, 1}


def test_every_name_follows_prometheus_conventions(
        tmp_path: Path, proc: Path, cluster_store: MemoryStore) -> None:
    fake_process(proc, 4242, 1, 1, 1)
    n = FakeNode("node01", tmp_path, cluster_store, master=True, running={
        "vm1": ("kvm", VmInfo("vm1", 4242, "running"))}, members=[])
    n.io["vm1"] = VmIo((DiskIo(0),), {})
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HavenCollector(n, proc=proc))
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        assert fam.name.startswith("haven_"), fam.name
        if fam.type == "counter":
            assert all(s.name.endswith("_total") for s in fam.samples), fam.name
        assert not any(unit in fam.name for unit in ("_ms", "_mib", "_percent", "_kb"))
        for s in fam.samples:
            assert not math.isnan(s.value), s


def test_get_metrics_serves_the_text_format_of_a_standby_daemon(tmp_path: Path) -> None:
    daemon = SimpleNamespace(
        name="node07", started=1.0, joined=None,
        settings=SimpleNamespace(storage_dir=tmp_path),
        instances=SimpleNamespace(all_vms=lambda: {}),
        local=SimpleNamespace(joined=lambda: None))
    router = Router()
    metrics.install(router, daemon)  # type: ignore[arg-type]
    route, _, _ = router.match("GET", "/metrics")
    assert route is not None and not route.write
    resp = route.handler(Request("GET", "/metrics", {}, None, None, False))
    assert resp.status == 200 and resp.content_type == CONTENT_TYPE_LATEST
    fams = {f.name: f for f in text_string_to_metric_families(resp.body.decode())}
    assert fams["haven_node_joined"].samples[0].value == 0
    assert fams["haven_node_joined"].samples[0].labels == {"node": "node07"}
    assert "process_cpu_seconds" in fams  # the daemon process's own metrics


def test_every_exported_family_is_listed_in_the_module_docstring(
        tmp_path: Path, proc: Path, cluster_store: MemoryStore) -> None:
    from haven.monitor import collect

    fake_process(proc, 4242, 1, 1, 1)
    sys_net = tmp_path / "net"
    (sys_net / "tap0" / "statistics").mkdir(parents=True)
    for key in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped",
                "tx_dropped", "rx_errors", "tx_errors"):
        (sys_net / "tap0" / "statistics" / key).write_text("1\n")
    st = EndpointStatus(endpoint="e", version="3.4", cluster_id=1, member_id=1, leader=1,
                        raft_term=1, raft_index=1, db_size=1, db_size_in_use=1,
                        is_learner=False, errors=[])
    n = FakeNode("node01", tmp_path, cluster_store, master=True, etcd=st, members=[],
                 running={"vm1": ("kvm", VmInfo("vm1", 4242, "running", started=1.0))},
                 taps={"vm1": {0: "tap0"}}, broken={"vm_io"})
    n.io["vm1"] = VmIo((DiskIo(0),), {0: MirrorState(0, "mirror0", "ready")})
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HavenCollector(n, proc=proc, sys_net=sys_net))
    exported = {f.name + ("_total" if f.type == "counter" else "")
                for f in text_string_to_metric_families(generate_latest(reg).decode())}
    n.broken = set()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HavenCollector(n, proc=proc, sys_net=sys_net))
    exported |= {f.name + ("_total" if f.type == "counter" else "")
                 for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert len(exported) > 60
    doc = collect.__doc__ or ""
    listed = {word.split("{")[0] for word in doc.split() if word.startswith("haven_")}
    assert exported == listed


def test_a_vm_whose_monitor_does_not_answer_is_left_out_of_the_io_stats(
        tmp_path: Path) -> None:
    from haven.hypervisor.qemu.stats import io_stats

    assert io_stats({"vm1": tmp_path / "vm1.qmp-status"}, timeout=0.2) == {}
    assert io_stats({}) == {}
