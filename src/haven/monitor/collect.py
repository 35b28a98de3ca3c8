"""Prometheus metrics of a Haven node: a collector built at scrape time from what the
node daemon knows.  ``GET /metrics`` on every node serves it (:mod:`haven.api.metrics`).

Who exports what.  Prometheus scrapes every node, so each series comes from exactly one
node: every node exports its own series (``haven_node_*``, the VMs running on it, its
etcd member), labelled ``node``; the master alone exports the cluster-wide ones
(``haven_cluster_*``, instances' status and configuration, replica states, jobs, HA,
etcd membership), built from one read of etcd.  ``sum()`` over all targets never counts
anything twice; ``haven_node_master`` says which target is the master.

A scrape never fails: a part that fails (etcd unreachable, a VM that does not answer)
is left out and counted in ``haven_scrape_errors_total{part}`` (the reason is logged at
DEBUG).  Units are bytes and seconds, ratios 0 to 1; a state is one series per possible
value, 1 for the current one and 0 for the others.

Every node, about itself (label ``node``)::

    haven_node_info{version}                      always 1
    haven_node_joined                             1 if connected to its cluster's etcd
    haven_node_master                             1 on the master
    haven_node_lease_valid                        1 while it holds a valid lease
    haven_node_role{role}                         master, master-candidate, regular, drained...
    haven_node_memory_total_bytes                 MemTotal (Ganeti's mtotal)
    haven_node_memory_available_bytes            MemAvailable (Ganeti's mfree)
    haven_node_cpus                               logical CPUs
    haven_node_storage_total_bytes                file system of the disk images: size
    haven_node_storage_free_bytes                 ... and free space
    haven_node_instances                          VM processes running here
    haven_node_instance_memory_bytes              memory given to them
    haven_node_daemon_start_time_seconds          when haven-noded started (Unix time)
    haven_etcd_member_up                          1 if its own etcd member answers
    haven_etcd_has_leader                         1 if that member knows a raft leader
    haven_etcd_is_leader                          1 if it is the raft leader
    haven_etcd_is_learner                         1 if it is a learner (no vote)
    haven_etcd_db_size_bytes                      its database file
    haven_etcd_db_size_in_use_bytes               ... the part in use
    haven_etcd_raft_term                          its raft term
    haven_scrape_errors_total{part}               parts of scrapes left out since start
    haven_scrape_duration_seconds{part}           how long each part of this scrape took
    process_*                                     the daemon process (prometheus_client)

Every node, about the VMs running on it (labels ``instance``, ``node``)::

    haven_instance_vm_state{state}                running, paused, shutdown, incoming, unknown
    haven_instance_cpu_seconds_total              CPU time of its QEMU process (user + system)
    haven_instance_resident_memory_bytes          resident memory of that process
    haven_instance_start_time_seconds             when that process started (Unix time)
    haven_instance_disk_read_bytes_total{disk}    QMP query-blockstats, since QEMU started
    haven_instance_disk_written_bytes_total{disk}
    haven_instance_disk_reads_completed_total{disk}
    haven_instance_disk_writes_completed_total{disk}
    haven_instance_disk_flushes_completed_total{disk}
    haven_instance_disk_read_time_seconds_total{disk}
    haven_instance_disk_write_time_seconds_total{disk}
    haven_instance_disk_flush_time_seconds_total{disk}
    haven_instance_disk_errors_total{disk}        failed reads, writes and flushes
    haven_instance_network_receive_bytes_total{nic}   a bridged NIC's tap, guest's view
    haven_instance_network_transmit_bytes_total{nic}  (user-mode NICs have none)
    haven_instance_network_receive_packets_total{nic}
    haven_instance_network_transmit_packets_total{nic}
    haven_instance_network_receive_drop_total{nic}
    haven_instance_network_transmit_drop_total{nic}
    haven_instance_network_receive_errs_total{nic}
    haven_instance_network_transmit_errs_total{nic}
    haven_replication_mirror_phase{disk,phase}    drbd primary's job: syncing, ready, failed, none
    haven_replication_pending_bytes{disk}         not yet on the secondary: in-flight writes
    haven_replication_progress_ratio{disk}        the job's progress (1 when ready)

The master only (:mod:`.cluster`, :mod:`.history`)::

    haven_cluster_node_alive{node}                1 if the node holds its lease
    haven_cluster_node_role{node,role}            each node's Ganeti role
    haven_cluster_node_instances{node,kind}       instances it is primary or secondary node of
    haven_instance_info{instance,primary_node,secondary_node,disk_template,hypervisor,os}  = 1
    haven_instance_status{instance,status}        Ganeti's status, as gnt-instance list shows it
    haven_instance_memory_bytes{instance}         configured memory
    haven_instance_vcpus{instance}                configured virtual CPUs
    haven_instance_disk_size_bytes{instance,disk} configured disk size
    haven_instance_restarts{instance}             automatic restarts since its last start
    haven_instance_ha_enabled{instance}           1 if recovered when its node is lost
    haven_replica_state{instance,node,disk,state} UpToDate, Inconsistent, Outdated, Diskless...
    haven_replica_sync_ratio{instance,node,disk}  resync progress (1 when UpToDate)
    haven_replica_stale{instance}                 1 if the states are of an older generation
    haven_replica_degraded{instance}              1 if a replica is not UpToDate
    haven_jobs{status}                            jobs in the queue (kept 6 h) by status
    haven_jobs_submitted_total                    the job id counter
    haven_job_duration_seconds{op,status}         histogram of finished jobs, by first opcode
    haven_ha_node_state{node,state}               online, unreachable, fenced, recovering, back...
    haven_ha_instance_recovery_state{instance,state}  latest recovery: recovered, failed...
    haven_ha_last_recovery_seconds{instance}      node lost to running elsewhere, latest time
    haven_ha_recoveries_total{outcome}            recovered, failed (attempts), refused
    haven_ha_recovery_duration_seconds            histogram: node lost to running elsewhere
    haven_etcd_members{kind}                      voters and learners (managed etcd)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from haven import __version__
from haven.hypervisor.base import VmInfo
from haven.model.keys import MASTER, Keys
from haven.model.node import Node
from haven.monitor import cluster, procfs
from haven.monitor.history import JobHistory, RecoveryHistory
from haven.store.base import Get, Member, Store

if TYPE_CHECKING:
    from haven.hypervisor.qemu.stats import VmIo
    from haven.store.etcd import EndpointStatus

log = logging.getLogger(__name__)

MIB = 1 << 20
VM_STATES = ("running", "paused", "shutdown", "incoming", "unknown")
MIRROR_PHASES = ("syncing", "ready", "failed", "none")


class NodeView(Protocol):
    """What the collector needs of its node daemon.  Every method may raise; the
    collector then leaves that part out.  Implemented over ``NodeDaemon`` by
    :mod:`haven.api.metrics`, by fakes in the unit tests."""

    @property
    def name(self) -> str: ...

    @property
    def started(self) -> float:
        """When the daemon started (Unix time)."""

    def store(self) -> Store | None:
        """The cluster's store, None while the node is not connected to it."""

    def is_master(self) -> bool: ...

    def lease_valid(self) -> bool: ...

    def storage_dir(self) -> Path: ...

    def vms(self) -> Mapping[str, tuple[str, VmInfo]]:
        """VM processes on this node: name -> (hypervisor, info)."""

    def vm_io(self, names: Sequence[str]) -> Mapping[str, VmIo]:
        """QMP block statistics and replication jobs of these ``kvm`` VMs (those that
        did not answer are left out)."""

    def nic_taps(self, name: str) -> Mapping[int, str]:
        """NIC index -> tap device of VM ``name``'s bridged NICs."""

    def etcd_status(self) -> EndpointStatus | None:
        """This node's own etcd member's status; None if it has no member.  Raises if
        the member does not answer."""

    def etcd_members(self) -> Sequence[Member] | None:
        """The etcd cluster's members (asked on the master only); None if etcd is not
        managed by Haven (external)."""


def _gauge(name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Sequence[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


class HavenCollector(Collector):
    """The node's metrics, computed at every scrape (see the module docstring).

    Thread-safe: concurrent scrapes run one after the other (they share the counters).
    """

    def __init__(self, node: NodeView, proc: Path = procfs.PROC,
                 sys_net: Path = procfs.SYS_NET) -> None:
        self.node = node
        self.proc = proc
        self.sys_net = sys_net
        self.errors: dict[str, int] = {}
        self.jobs = JobHistory()
        self.recoveries = RecoveryHistory()
        self._decode = cluster.Decoder()
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        return []  # computed at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = self._scrape()
        yield from families

    # -- the scrape ----------------------------------------------------------------
    def _scrape(self) -> list[Metric]:
        out: list[Metric] = []
        timings: dict[str, float] = {}

        def part(name: str, fn: Callable[[], list[Metric]]) -> bool:
            t0 = time.perf_counter()
            try:
                out.extend(fn())
                ok = True
            except Exception as exc:  # a part that fails is left out, never the scrape
                self.errors[name] = self.errors.get(name, 0) + 1
                log.debug("metrics: %s left out: %s: %s", name, type(exc).__name__, exc)
                ok = False
            timings[name] = time.perf_counter() - t0
            return ok

        n = self.node
        vms: dict[str, tuple[str, VmInfo]] = {}

        def list_vms() -> list[Metric]:
            vms.update(n.vms())
            return self._vm_families(vms)

        part("node", self._node_families)
        part("vms", list_vms)
        part("qmp", lambda: self._qmp_families(vms))
        part("network", lambda: self._network_families(vms))
        part("etcd", self._etcd_families)
        store = self._store()
        if store is not None:
            master = False
            if part("role", lambda: self._role_families(store)):
                master = self._is_master()
            if master:
                part("cluster", lambda: self._cluster_families(store))
        out.extend(self._scrape_families(timings))
        return out

    def _store(self) -> Store | None:
        try:
            return self.node.store()
        except Exception:  # not part of a cluster
            return None

    def _is_master(self) -> bool:
        try:
            return bool(self.node.is_master())
        except Exception:
            return False

    def _scrape_families(self, timings: Mapping[str, float]) -> list[Metric]:
        errors = _counter("haven_scrape_errors", "Parts of a scrape left out because they "
                          "failed, by part", ["part"])
        for name in sorted(self.errors):
            errors.add_metric([name], self.errors[name])
        took = _gauge("haven_scrape_duration_seconds", "How long each part of this scrape "
                      "took", ["part"])
        for name, seconds in timings.items():
            took.add_metric([name], seconds)
        return [errors, took]

    # -- this node -------------------------------------------------------------------
    def _node_families(self) -> list[Metric]:
        n = self.node
        node = [n.name]
        out: list[Metric] = []

        def one(name: str, doc: str, value: float) -> None:
            fam = _gauge(name, doc, ["node"])
            fam.add_metric(node, value)
            out.append(fam)

        info = _gauge("haven_node_info", "The node daemon (always 1)", ["node", "version"])
        info.add_metric([n.name, __version__], 1.0)
        out.append(info)
        joined = self._store() is not None
        one("haven_node_joined", "1 if the node daemon is connected to its cluster's etcd",
            1.0 if joined else 0.0)
        one("haven_node_master", "1 if this node is the master", 1.0 if self._is_master()
            else 0.0)
        one("haven_node_lease_valid", "1 while the node holds a valid lease",
            1.0 if joined and n.lease_valid() else 0.0)
        one("haven_node_daemon_start_time_seconds", "When haven-noded started (Unix time)",
            n.started)
        mem = procfs.memory(self.proc)
        one("haven_node_memory_total_bytes", "Physical memory (MemTotal)", mem.total)
        one("haven_node_memory_available_bytes", "Memory available for new work "
            "(MemAvailable), Ganeti's mfree", mem.available)
        one("haven_node_cpus", "Logical CPUs", os.cpu_count() or 1)
        disk = shutil.disk_usage(n.storage_dir())
        one("haven_node_storage_total_bytes", "Size of the file system holding the node's "
            "disk images", disk.total)
        one("haven_node_storage_free_bytes", "Free space on it", disk.free)
        return out

    def _role_families(self, store: Store) -> list[Metric]:
        res = store.txn([], [Get(Keys.node(self.node.name)), Get(MASTER)])
        own, master = (r if isinstance(r, list) else [] for r in res.responses)
        role = _gauge("haven_node_role", "The node's Ganeti role (1 for the current one)",
                      ["node", "role"])
        if own:
            rec = Node.from_json(json.loads(own[0].value))
            master_name = str(json.loads(master[0].value).get("node")) if master else None
            current = cluster.NODE_ROLES[rec.role(master_name)]
            for r in cluster.NODE_ROLES.values():
                role.add_metric([self.node.name, r], 1.0 if r == current else 0.0)
        return [role]

    def _etcd_families(self) -> list[Metric]:
        node = [self.node.name]
        up = _gauge("haven_etcd_member_up", "1 if this node's etcd member answers", ["node"])
        try:
            st = self.node.etcd_status()
        except Exception as exc:
            log.debug("metrics: etcd member of %s: %s", self.node.name, exc)
            up.add_metric(node, 0.0)
            return [up]
        if st is None:
            return []
        up.add_metric(node, 1.0)
        out: list[Metric] = [up]
        for name, doc, value in (
                ("haven_etcd_has_leader", "1 if the member knows a raft leader",
                 st["leader"] != 0),
                ("haven_etcd_is_leader", "1 if the member is the raft leader",
                 st["leader"] != 0 and st["leader"] == st["member_id"]),
                ("haven_etcd_is_learner", "1 if the member is a learner (no vote)",
                 st["is_learner"]),
                ("haven_etcd_db_size_bytes", "Size of the member's database file",
                 st["db_size"]),
                ("haven_etcd_db_size_in_use_bytes", "Bytes of it in use", st["db_size_in_use"]),
                ("haven_etcd_raft_term", "The member's raft term", st["raft_term"])):
            fam = _gauge(name, doc, ["node"])
            fam.add_metric(node, float(value))
            out.append(fam)
        return out

    # -- VMs on this node ------------------------------------------------------------
    def _vm_families(self, vms: Mapping[str, tuple[str, VmInfo]]) -> list[Metric]:
        node = self.node.name
        count = _gauge("haven_node_instances", "VM processes running on the node", ["node"])
        count.add_metric([node], len(vms))
        given = _gauge("haven_node_instance_memory_bytes", "Memory given to the VMs running "
                       "on the node", ["node"])
        given.add_metric([node], sum(info.memory for _, info in vms.values()) * MIB)
        state = _gauge("haven_instance_vm_state", "Run state of the instance's VM process "
                       "on this node (1 for the current one)", ["instance", "node", "state"])
        cpu = _counter("haven_instance_cpu_seconds", "CPU time of the instance's VM process "
                       "(user + system)", ["instance", "node"])
        rss = _gauge("haven_instance_resident_memory_bytes", "Resident memory of the "
                     "instance's VM process", ["instance", "node"])
        start = _gauge("haven_instance_start_time_seconds", "When the instance's VM process "
                       "started (Unix time)", ["instance", "node"])
        for name in sorted(vms):
            info = vms[name][1]
            labels = [name, node]
            for st in VM_STATES:
                state.add_metric([*labels, st], 1.0 if info.status == st else 0.0)
            if info.started:
                start.add_metric(labels, info.started)
            ps = procfs.process(info.pid, self.proc)
            if ps is not None:
                cpu.add_metric(labels, ps.cpu_seconds)
                rss.add_metric(labels, ps.rss_bytes)
        return [count, given, state, cpu, rss, start]

    def _qmp_families(self, vms: Mapping[str, tuple[str, VmInfo]]) -> list[Metric]:
        kvm = sorted(name for name, (hv, info) in vms.items()
                     if hv == "kvm" and info.status != "unknown")
        if not kvm:
            return []
        io = self.node.vm_io(kvm)
        missing = [name for name in kvm if name not in io]
        node = self.node.name
        disk_labels = ["instance", "node", "disk"]
        fams = {key: _counter(f"haven_instance_disk_{key}", doc, disk_labels) for key, doc in (
            ("read_bytes", "Bytes read by the guest from the disk"),
            ("written_bytes", "Bytes written by the guest to the disk"),
            ("reads_completed", "Read operations completed"),
            ("writes_completed", "Write operations completed"),
            ("flushes_completed", "Flush operations completed"),
            ("read_time_seconds", "Time spent on reads"),
            ("write_time_seconds", "Time spent on writes"),
            ("flush_time_seconds", "Time spent on flushes"),
            ("errors", "Failed reads, writes and flushes"))}
        phase = _gauge("haven_replication_mirror_phase", "Phase of the replication job of "
                       "each drbd disk on its primary (1 for the current one)",
                       [*disk_labels, "phase"])
        pending = _gauge("haven_replication_pending_bytes", "Bytes taken on by the "
                         "replication job and not yet on the secondary: in-flight writes "
                         "when ready, what is left to copy while syncing", disk_labels)
        progress = _gauge("haven_replication_progress_ratio", "Progress of the replication "
                          "job, 0 to 1 (1 when ready)", disk_labels)
        for name in sorted(io):
            vm = io[name]
            for d in vm.disks:
                labels = [name, node, str(d.disk)]
                for key, value in (
                        ("read_bytes", d.read_bytes), ("written_bytes", d.written_bytes),
                        ("reads_completed", d.reads), ("writes_completed", d.writes),
                        ("flushes_completed", d.flushes),
                        ("read_time_seconds", d.read_seconds),
                        ("write_time_seconds", d.write_seconds),
                        ("flush_time_seconds", d.flush_seconds), ("errors", d.failed)):
                    fams[key].add_metric(labels, value)
            for i in sorted(vm.mirrors):
                m = vm.mirrors[i]
                labels = [name, node, str(i)]
                for ph in MIRROR_PHASES:
                    phase.add_metric([*labels, ph], 1.0 if m.phase == ph else 0.0)
                pending.add_metric(labels, m.pending)
                progress.add_metric(labels, m.percent / 100)
        if missing:
            # The others are exported; the scrape says that some were not.
            self.errors["qmp"] = self.errors.get("qmp", 0) + 1
            log.debug("metrics: no QMP answer from %s", ", ".join(missing))
        return [*fams.values(), phase, pending, progress]

    def _network_families(self, vms: Mapping[str, tuple[str, VmInfo]]) -> list[Metric]:
        labels_ = ["instance", "node", "nic"]
        # A tap's receive is what the guest sent: the guest's view swaps the directions.
        keys = (("receive_bytes", "tx_bytes"), ("transmit_bytes", "rx_bytes"),
                ("receive_packets", "tx_packets"), ("transmit_packets", "rx_packets"),
                ("receive_drop", "tx_dropped"), ("transmit_drop", "rx_dropped"),
                ("receive_errs", "tx_errors"), ("transmit_errs", "rx_errors"))
        fams = {key: _counter(f"haven_instance_network_{key}",
                              f"{key.replace('_', ' ').capitalize()} of the NIC, seen from "
                              "the guest", labels_) for key, _ in keys}
        for name in sorted(vms):
            for nic, tap in sorted(self.node.nic_taps(name).items()):
                c = procfs.net_device(tap, self.sys_net)
                if c is None:
                    continue
                for key, attr in keys:
                    fams[key].add_metric([name, self.node.name, str(nic)], getattr(c, attr))
        return list(fams.values())

    # -- the cluster (master) --------------------------------------------------------
    def _cluster_families(self, store: Store) -> list[Metric]:
        snap = cluster.read_snapshot(store, self._decode)
        self.jobs.update(snap.jobs)
        self.recoveries.update(snap.ha_instances.values())
        out: list[Metric] = [*cluster.families(snap), *self.jobs.families(),
                             *self.recoveries.families()]
        try:
            members = self.node.etcd_members()
        except Exception as exc:
            self.errors["etcd_members"] = self.errors.get("etcd_members", 0) + 1
            log.debug("metrics: etcd member list: %s", exc)
            return out
        if members is None:
            return out
        fam = _gauge("haven_etcd_members", "Members of the etcd cluster by kind (voter, "
                     "learner)", ["kind"])
        learners = sum(1 for m in members if m.is_learner)
        fam.add_metric(["voter"], len(members) - learners)
        fam.add_metric(["learner"], learners)
        out.append(fam)
        return out
