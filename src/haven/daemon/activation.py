"""The node daemon's connection to its cluster: :class:`Joined` (everything that exists
only while the node is part of one), activating and deactivating it, the periodic
supervision pass that keeps the etcd member, the lease and the facts going, and the
cached etcd endpoints that follow membership.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from haven.agent.loop import Agent
from haven.daemon import facts as node_facts
from haven.daemon import fencing, membership
from haven.daemon.hub import EventHub
from haven.daemon.localstate import JoinedState
from haven.daemon.role import MasterRole
from haven.errors import HavenError, NodeSetupError
from haven.master import state
from haven.model.cluster import Cluster
from haven.model.ha import LEASE_MARGIN
from haven.model.keys import (
    CLUSTER,
    INSTANCES,
    LOCKS,
    NODES,
    OBSERVED,
    PKI,
    Keys,
    store_prefix,
)
from haven.store.errors import StoreError
from haven.store.etcd import EtcdStore
from haven.store.lease import LeaseKeeper

if TYPE_CHECKING:
    from haven.daemon.noded import NodeDaemon

log = logging.getLogger(__name__)


class Joined:
    """Everything that exists only while the node is part of a cluster."""

    def __init__(self, store: EtcdStore, lease: LeaseKeeper, hub: EventHub,
                 cluster: Cluster) -> None:
        self.store = store
        self.lease = lease
        self.hub = hub
        self.cluster = cluster
        self.role: MasterRole | None = None
        self.agent: Agent | None = None


# -- joined state ------------------------------------------------------------------
def activate_with_retry(d: NodeDaemon) -> None:
    try:
        activate(d)
    except HavenError as exc:
        if isinstance(exc, StoreError) and membership.removed_while_away(d):
            return
        log.warning("cannot reach the cluster yet: %s (retrying)", exc.message)


def activate(d: NodeDaemon) -> None:
    """Connect to the store and start everything a cluster node runs."""
    with d._lock:
        if d.joined is not None:
            return
        js = d.local.joined()
        if js is None:
            raise NodeSetupError(f"Node {d.name} is not part of a cluster.")
        if js.etcd_member and not d.member.running():
            if not membership.rejoin_if_removed(d, js):
                d.member.start()
            elif d.local.joined() is None:
                return  # it was removed from the cluster while away: standby now
        store = EtcdStore(endpoints(d, js), store_prefix(js.cluster_name),
                          tls=d.local.etcd_tls())
        cluster = state.cluster(store)
        fencing.ensure_fencer(d)
        lease = LeaseKeeper(store, cluster.lease_ttl, margin=LEASE_MARGIN,
                            adopt=fencing.saved_lease(d),
                            on_renewed=lambda deadline, lid: fencing.lease_renewed(
                                d, deadline, lid),
                            heartbeat=lambda lid: fencing.heartbeat(d, store, lid))
        hub = EventHub(store)
        joined = Joined(store, lease, hub, cluster)
        d.joined = joined
        d._refresh_auth(cluster)
        fencing.put_alive(d)
        publish_facts(d)
        remember_cluster_id(d, js)
        membership.sync_crl(d, store)
        hub.subscribe(PKI, lambda _k: membership.sync_crl(d, store))
        hub.subscribe(CLUSTER, lambda _k: on_cluster_change(d))
        # The cached etcd endpoints must follow membership at once: a node that
        # dies right after a join must still find the others when it returns.
        hub.subscribe(NODES, lambda _k: refresh_endpoints(d))
        role = MasterRole(d.name, store, lease, d._is_candidate,
                          d._master_context)
        lease.on_lost(lambda _reason: role.on_lease_lost())
        hub.subscribe("master", lambda _k: role.wake.set())
        hub.subscribe("handover", lambda _k: role.wake.set())
        joined.role = role
        agent = Agent(d)
        joined.agent = agent
        # Not REPLICAS: the agent itself writes them while a sync progresses.
        for prefix in (INSTANCES, OBSERVED, LOCKS):
            hub.subscribe(prefix, lambda _k: agent.wake.set())
        hub.start()
        role.start()
        agent.start()
        log.info("joined cluster %s", js.cluster_name)


def deactivate(d: NodeDaemon, revoke: bool) -> None:
    joined, d.joined = d.joined, None
    if joined is None:
        return
    if joined.agent is not None:
        joined.agent.stop()
    if joined.role is not None:
        joined.role.stop(resign=revoke)
    joined.hub.stop()
    vms = sorted(d.instances.all_vms()) if revoke else []
    if vms:
        # One last renewal: the next daemon gets the whole TTL - margin to take the
        # lease over (its fencer's deadline is fed from this renewal too).
        with contextlib.suppress(StoreError):
            joined.lease.renew_once()
        # The cluster must not believe the node gone while its VMs run: the lease
        # stays, the fencer keeps its deadline.  A daemon started before it takes
        # the lease over and keeps them; otherwise the fencer stops them first.
        log.warning("Stopping with %d VM(s) running (%s): lease %x is kept; a daemon "
                    "started within %.0f s takes it over, else haven-fenced stops "
                    "them before it expires", len(vms), ", ".join(vms),
                    joined.lease.lease_id, max(joined.lease.deadline - time.monotonic(),
                                               0))
        revoke = False
    with contextlib.suppress(StoreError):
        joined.lease.stop(revoke=revoke)
    if revoke:
        d.fencer.disarm("the node daemon stopped cleanly with no VM running")
    joined.store.close()


def endpoints(d: NodeDaemon, js: JoinedState) -> list[str]:
    eps = list(js.etcd_endpoints)
    if js.etcd_member:
        own = d.settings.etcd_client_url
        eps = [own] + [e for e in eps if e != own]
    return eps


def on_cluster_change(d: NodeDaemon) -> None:
    joined = d.joined
    if joined is None:
        return
    try:
        joined.cluster = state.cluster(joined.store)
    except HavenError:
        return
    d._refresh_auth(joined.cluster)


# -- periodic work -------------------------------------------------------------------
def supervise(d: NodeDaemon) -> str:
    """One supervision pass, under the daemon's lock (``NodeDaemon.supervise``)."""
    js = d.local.joined()
    if js is None:
        return "standby"
    done = []
    if js.etcd_member and not d.member.running() and d.member.config():
        # Removed members exit: one demoted to a learner, or left behind by a
        # recovery elsewhere, rejoins instead of restarting its old copy.
        if membership.rejoin_if_removed(d, js):
            if d.local.joined() is None:
                return "removed from the cluster: standby"
            done.append("rejoined etcd as a learner")
        else:
            d.member.start()
            done.append("restarted etcd member")
    joined = d.joined
    if joined is None:
        activate_with_retry(d)
        return "activating"
    fencing.ensure_fencer(d)
    if not joined.lease.valid() or joined.lease.lease_id != d._alive_lease:
        with d.vm_start_lock:
            joined.lease.restart()
            fencing.put_alive(d)
        done.append("renewed lease")
    fired = d.fencer.take_record()
    if fired:
        fencing.report_fenced(d, fired)
    if time.monotonic() - d._last_facts > d.settings.facts_period:
        publish_facts(d)
        refresh_endpoints(d)
        remember_cluster_id(d, js)
    return ", ".join(done) or "ok"


def publish_facts(d: NodeDaemon) -> None:
    joined = d.joined
    if joined is None:
        return
    version = (d.instances.qemu_version()
               if "kvm" in joined.cluster.enabled_hypervisors else "")
    f = node_facts.collect(d.name, d.settings.storage_dir,
                           joined.cluster.enabled_hypervisors, hv_version=version)
    joined.store.put(Keys.facts(d.name), state.dumps(f.to_json()))
    d._last_facts = time.monotonic()


def refresh_endpoints(d: NodeDaemon) -> None:
    """Keep the cached etcd endpoints in step with the members in the store."""
    joined = d.joined
    js = d.local.joined()
    if joined is None or js is None:
        return
    urls = tuple(sorted(n.etcd_client_url for n in state.nodes(joined.store)
                        if n.etcd_client_url))
    if js.etcd_managed and urls and urls != tuple(sorted(js.etcd_endpoints)):
        use_etcd_endpoints(d, js, urls)


def use_etcd_endpoints(d: NodeDaemon, js: JoinedState, urls: tuple[str, ...]) -> None:
    """Remember ``urls`` as the cluster's etcd endpoints, and use them at once: a
    member that joined after this node may be the only voter left when this
    node's own member is demoted or the first ones go."""
    js = replace(js, etcd_endpoints=urls)
    d.local.save_joined(js)
    joined = d.joined
    if joined is not None:
        joined.store.set_endpoints(endpoints(d, js))


def remember_cluster_id(d: NodeDaemon, js: JoinedState) -> None:
    joined = d.joined
    if joined is None or not js.etcd_member:
        return
    with contextlib.suppress(StoreError):
        own = d.settings.etcd_client_url
        d.member.remember_cluster_id(joined.store.status(own)["cluster_id"])
