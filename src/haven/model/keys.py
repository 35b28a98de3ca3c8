"""Where each object lives in the store (keys relative to ``/haven/<cluster>/``)."""

from __future__ import annotations

# Plain constants and functions, so that every layer spells the keys the same way.
CLUSTER = "cluster"
MASTER = "master"
HANDOVER = "handover"
NODES = "nodes/"
FACTS = "facts/"
ALIVE = "alive/"
JOBS = "jobs/"
LOCKS = "locks/"
EVENTS = "events/"
INSTANCES = "instances/"
MIGRATIONS = "migrations/"  # migrations/<instance>: the steps of a live migration
# progress/migration/<instance>: the memory copy of a running migration, written by the
# source node under its alive lease (not under migrations/: that lists unfinished ones)
MIGRATION_PROGRESS = "progress/migration/"
OBSERVED = "observed/"
REPLICAS = "replicas/"
COUNTERS = "counters/"
ALARMS_ACTIVE = "alarms/active/"  # alarms/active/<kind>:<object>: alarms that hold now
ALARMS_HISTORY = "alarms/history/"  # alarms/history/<raised ns>-<id>: cleared ones
ALARM_SETTINGS = "alarms/settings"  # thresholds and notification targets
PKI = "pki/"
CRL = "pki/crl"  # the etcd certificates the cluster revoked (a CRL, PEM)
ISSUED = "pki/issued/"  # pki/issued/<node>: serials of the certificates issued to it


class Keys:
    """Key builders; ``Keys.node("node01") == "nodes/node01"``."""

    cluster = CLUSTER
    master = MASTER
    handover = HANDOVER
    crl = CRL

    @staticmethod
    def issued(name: str) -> str:
        return ISSUED + name

    @staticmethod
    def node(name: str) -> str:
        return NODES + name

    @staticmethod
    def facts(name: str) -> str:
        return FACTS + name

    @staticmethod
    def alive(name: str) -> str:
        return ALIVE + name

    @staticmethod
    def instance(name: str) -> str:
        return INSTANCES + name

    @staticmethod
    def observed(name: str) -> str:
        return OBSERVED + name

    @staticmethod
    def replicas(name: str) -> str:
        return REPLICAS + name

    @staticmethod
    def migration(name: str) -> str:
        """The record of ``name``'s migration while one runs or awaits its cleanup."""
        return MIGRATIONS + name

    @staticmethod
    def migration_progress(name: str) -> str:
        return MIGRATION_PROGRESS + name

    @staticmethod
    def job(job_id: int) -> str:
        # Zero-padded so that a prefix listing is in id order.
        return f"{JOBS}{job_id:012d}"

    @staticmethod
    def lock(resource: str) -> str:
        return LOCKS + resource

    @staticmethod
    def counter(name: str) -> str:
        return COUNTERS + name

    @staticmethod
    def alarm(alarm_id: str) -> str:
        return ALARMS_ACTIVE + alarm_id

    @staticmethod
    def alarm_history(raised: float, alarm_id: str) -> str:
        # Time-ordered, so that trimming deletes the oldest first.
        return f"{ALARMS_HISTORY}{int(raised * 1e9):020d}-{alarm_id}"


def store_prefix(cluster_name: str) -> str:
    """The etcd prefix under which a cluster keeps everything."""
    return f"/haven/{cluster_name}/"
