"""The cluster-wide metrics, exported by the master only: nodes as the cluster sees
them, instances' Ganeti status and configuration, replica states, jobs, HA.

:func:`read_snapshot` reads everything in one etcd transaction (one round trip, one
revision); :func:`families` turns a snapshot into metric families without I/O.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from haven.model import ha as H
from haven.model import instance as I
from haven.model.ha import InstanceHA, NodeHA, ha_enabled
from haven.model.instance import Instance, Observed, ganeti_status
from haven.model.job import Job, JobStatus
from haven.model.keys import ALIVE, INSTANCES, JOBS, MASTER, NODES, OBSERVED, REPLICAS, Keys
from haven.model.node import Node
from haven.model.replica import DISKLESS, INCONSISTENT, OUTDATED, UNKNOWN, UP_TO_DATE, Replicas
from haven.store.base import Get, KeyValue, Store

log = logging.getLogger(__name__)

MIB = 1 << 20
INSTANCE_STATUSES = (I.RUNNING, I.ADMIN_DOWN, I.ADMIN_OFFLINE, I.ERROR_DOWN, I.ERROR_UP,
                     I.ERROR_NODEDOWN, I.ERROR_NODEOFFLINE, I.ERROR_WRONGNODE, I.USER_DOWN)
REPLICA_STATES = (UP_TO_DATE, INCONSISTENT, OUTDATED, DISKLESS, UNKNOWN)
NODE_ROLES = {"M": "master", "C": "master-candidate", "R": "regular", "D": "drained",
              "O": "offline"}
HA_NODE_STATES = (H.ONLINE, H.UNREACHABLE, H.FENCED, H.RECOVERING, H.BACK, H.MANUAL)
HA_INSTANCE_STATES = ("recovering", "recovered", "failed", "refused")

T = TypeVar("T")


@dataclass(frozen=True)
class ClusterSnapshot:
    """The store's cluster objects at one revision."""

    revision: int = 0
    master: str | None = None
    nodes: tuple[Node, ...] = ()
    alive: frozenset[str] = frozenset()
    instances: tuple[Instance, ...] = ()
    observed: dict[str, Observed] = field(default_factory=dict)
    replicas: dict[str, Replicas] = field(default_factory=dict)
    jobs: tuple[Job, ...] = ()
    jobs_submitted: int = 0
    ha_nodes: dict[str, NodeHA] = field(default_factory=dict)
    ha_instances: dict[str, InstanceHA] = field(default_factory=dict)


class Decoder:
    """Decodes the store's JSON objects, keeping each decoded object until its key
    changes (``mod_revision``): most objects, finished jobs above all, do not change
    between two scrapes, and decoding them is most of a scrape's work."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, Any]] = {}
        self._seen: set[str] = set()

    def __call__(self, kvs: Iterable[KeyValue], parse: Callable[[dict[str, Any]], T]
                 ) -> list[T]:
        out = []
        for kv in kvs:
            self._seen.add(kv.key)
            hit = self._cache.get(kv.key)
            if hit is not None and hit[0] == kv.mod_revision:
                out.append(hit[1])
                continue
            try:
                obj = parse(json.loads(kv.value))
            except (ValueError, TypeError, KeyError) as exc:  # one bad object: skip it
                log.debug("metrics: cannot decode %s: %s", kv.key, exc)
                continue
            self._cache[kv.key] = (kv.mod_revision, obj)
            out.append(obj)
        return out

    def forget_unseen(self) -> None:
        """Drop what the last read did not return (deleted keys)."""
        self._cache = {k: v for k, v in self._cache.items() if k in self._seen}
        self._seen = set()


def read_snapshot(store: Store, decode: Decoder | None = None) -> ClusterSnapshot:
    """Every object the cluster metrics need, in one read-only transaction.  Pass the
    same ``decode`` at every scrape to decode only what changed."""
    decode = decode or Decoder()
    prefixes = (NODES, ALIVE, INSTANCES, OBSERVED, REPLICAS, JOBS, H.HA_NODES,
                H.HA_INSTANCES)
    ops = [Get(p, prefix=True) for p in prefixes] + [Get(MASTER), Get(Keys.counter("job"))]
    res = store.txn([], ops)
    lists = [r if isinstance(r, list) else [] for r in res.responses]
    nodes, alive, insts, obs, reps, jobs, ha_nodes, ha_insts, master, counter = lists
    names = [str(json.loads(kv.value).get("node")) for kv in master]
    submitted = 0
    if counter:
        try:
            submitted = int(counter[0].value)
        except ValueError:
            submitted = 0
    snap = ClusterSnapshot(
        revision=res.revision,
        master=names[0] if names else None,
        nodes=tuple(decode(nodes, Node.from_json)),
        alive=frozenset(kv.key[len(ALIVE):] for kv in alive),
        instances=tuple(decode(insts, Instance.from_json)),
        observed={o.name: o for o in decode(obs, Observed.from_json)},
        replicas={r.instance: r for r in decode(reps, Replicas.from_json)},
        jobs=tuple(decode(jobs, Job.from_json)), jobs_submitted=submitted,
        ha_nodes={r.node: r for r in decode(ha_nodes, NodeHA.from_json)},
        ha_instances={r.name: r for r in decode(ha_insts, InstanceHA.from_json)})
    decode.forget_unseen()
    return snap


def instance_status(inst: Instance, snap: ClusterSnapshot, offline: set[str]) -> str:
    """Ganeti's status column, as ``gnt-instance list`` computes it."""
    obs = snap.observed.get(inst.name)
    elsewhere = obs.node if obs is not None and obs.state == "running" and \
        obs.node != inst.primary_node else None
    return ganeti_status(inst, obs, inst.primary_node in snap.alive,
                         inst.primary_node in offline, elsewhere)


def _one_hot(fam: GaugeMetricFamily, labels: list[str], states: Iterable[str],
             current: str) -> None:
    for st in states:
        fam.add_metric([*labels, st], 1.0 if st == current else 0.0)


def node_families(snap: ClusterSnapshot) -> list[Metric]:
    alive = GaugeMetricFamily("haven_cluster_node_alive", "1 if the node holds its lease "
                              "(its daemon is alive and reaches etcd)", labels=["node"])
    role = GaugeMetricFamily("haven_cluster_node_role", "The node's Ganeti role (1 for the "
                             "current one)", labels=["node", "role"])
    count = GaugeMetricFamily("haven_cluster_node_instances", "Instances whose primary "
                              "(kind=primary) or secondary (kind=secondary) node it is",
                              labels=["node", "kind"])
    primary: dict[str, int] = {}
    secondary: dict[str, int] = {}
    for inst in snap.instances:
        primary[inst.primary_node] = primary.get(inst.primary_node, 0) + 1
        for s in inst.secondary_nodes:
            secondary[s] = secondary.get(s, 0) + 1
    for n in sorted(snap.nodes, key=lambda n: n.name):
        alive.add_metric([n.name], 1.0 if n.name in snap.alive else 0.0)
        _one_hot(role, [n.name], NODE_ROLES.values(), NODE_ROLES[n.role(snap.master)])
        count.add_metric([n.name, "primary"], primary.get(n.name, 0))
        count.add_metric([n.name, "secondary"], secondary.get(n.name, 0))
    return [alive, role, count]


def instance_families(snap: ClusterSnapshot) -> list[Metric]:
    offline = {n.name for n in snap.nodes if n.offline}
    info = GaugeMetricFamily(
        "haven_instance_info", "An instance's placement and configuration (always 1)",
        labels=["instance", "primary_node", "secondary_node", "disk_template",
                "hypervisor", "os"])
    status = GaugeMetricFamily("haven_instance_status", "The instance's Ganeti status, as "
                               "gnt-instance list shows it (1 for the current one)",
                               labels=["instance", "status"])
    memory = GaugeMetricFamily("haven_instance_memory_bytes", "Configured memory (BE "
                               "maxmem/memory)", labels=["instance"])
    vcpus = GaugeMetricFamily("haven_instance_vcpus", "Configured virtual CPUs",
                              labels=["instance"])
    disk = GaugeMetricFamily("haven_instance_disk_size_bytes", "Configured size of each "
                             "disk", labels=["instance", "disk"])
    restarts = GaugeMetricFamily("haven_instance_restarts", "Automatic restarts since the "
                                 "administrator last started it", labels=["instance"])
    ha_on = GaugeMetricFamily("haven_instance_ha_enabled", "1 if the HA manager recovers "
                              "the instance when its node is lost", labels=["instance"])
    for inst in sorted(snap.instances, key=lambda i: i.name):
        name = inst.name
        info.add_metric([name, inst.primary_node, ",".join(inst.secondary_nodes),
                         inst.disk_template, inst.hypervisor, inst.os], 1.0)
        _one_hot(status, [name], INSTANCE_STATUSES, instance_status(inst, snap, offline))
        memory.add_metric([name], inst.memory * MIB)
        vcpus.add_metric([name], inst.vcpus)
        for d in inst.disks:
            disk.add_metric([name, str(d.index)], d.size * MIB)
        obs = snap.observed.get(name)
        restarts.add_metric([name], obs.restarts if obs else 0)
        ha_on.add_metric([name], 1.0 if ha_enabled(inst) else 0.0)
    return [info, status, memory, vcpus, disk, restarts, ha_on]


def replica_families(snap: ClusterSnapshot) -> list[Metric]:
    state = GaugeMetricFamily("haven_replica_state", "State of each replica of a drbd "
                              "instance's disk, as recorded in etcd (1 for the current one)",
                              labels=["instance", "node", "disk", "state"])
    ratio = GaugeMetricFamily("haven_replica_sync_ratio", "How much of the replica is in "
                              "sync, 0 to 1 (1 when UpToDate)",
                              labels=["instance", "node", "disk"])
    stale = GaugeMetricFamily("haven_replica_stale", "1 if the recorded states are of an "
                              "older generation than the instance's (not yet re-reported)",
                              labels=["instance"])
    degraded = GaugeMetricFamily("haven_replica_degraded", "1 if any replica of the "
                                 "instance is not UpToDate", labels=["instance"])
    for inst in sorted(snap.instances, key=lambda i: i.name):
        if inst.disk_template != "drbd":
            continue
        reps = snap.replicas.get(inst.name) or Replicas(inst.name, 0)
        bad = False
        for node in (inst.primary_node, *inst.secondary_nodes):
            for d in inst.disks:
                r = reps.state(node, d.index)
                labels = [inst.name, node, str(d.index)]
                _one_hot(state, labels, REPLICA_STATES, r.state)
                ratio.add_metric(labels, 1.0 if r.state == UP_TO_DATE else r.percent / 100)
                bad = bad or r.state != UP_TO_DATE
        stale.add_metric([inst.name], 1.0 if reps.generation != inst.generation else 0.0)
        degraded.add_metric([inst.name], 1.0 if bad else 0.0)
    return [state, ratio, stale, degraded]


def job_families(snap: ClusterSnapshot) -> list[Metric]:
    by_status = dict.fromkeys((str(s) for s in JobStatus), 0)
    for job in snap.jobs:
        by_status[str(job.status)] += 1
    jobs = GaugeMetricFamily("haven_jobs", "Jobs in the queue (kept 6 hours after they end) "
                             "by status", labels=["status"])
    for st, n in by_status.items():
        jobs.add_metric([st], n)
    submitted = CounterMetricFamily("haven_jobs_submitted", "Jobs submitted since the "
                                    "cluster was created (the job id counter)")
    submitted.add_metric([], snap.jobs_submitted)
    return [jobs, submitted]


def ha_families(snap: ClusterSnapshot) -> list[Metric]:
    node = GaugeMetricFamily("haven_ha_node_state", "The HA manager's state of each node "
                             "(1 for the current one)", labels=["node", "state"])
    for n in sorted(snap.nodes, key=lambda n: n.name):
        nrec = snap.ha_nodes.get(n.name)
        _one_hot(node, [n.name], HA_NODE_STATES, nrec.state if nrec else H.ONLINE)
    inst = GaugeMetricFamily("haven_ha_instance_recovery_state", "State of the latest "
                             "automatic recovery of each instance that had one (1 for the "
                             "current one)", labels=["instance", "state"])
    last = GaugeMetricFamily("haven_ha_last_recovery_seconds", "Seconds the latest "
                             "successful recovery of the instance took, from the loss of "
                             "its node to running elsewhere", labels=["instance"])
    for name in sorted(snap.ha_instances):
        rec = snap.ha_instances[name]
        _one_hot(inst, [name], HA_INSTANCE_STATES, rec.state)
        if rec.state == "recovered" and rec.lost_at and rec.finished:
            last.add_metric([name], max(rec.finished - rec.lost_at, 0.0))
    return [node, inst, last]


def families(snap: ClusterSnapshot) -> list[Metric]:
    """Every cluster-wide family of ``snap`` (no I/O)."""
    return [*node_families(snap), *instance_families(snap), *replica_families(snap),
            *job_families(snap), *ha_families(snap)]
