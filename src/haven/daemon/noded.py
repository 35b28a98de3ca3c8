"""``haven-noded``: one per node.

Always: serves the API, and once the node is part of a cluster, holds the node's lease
(``alive/<node>``), publishes its facts, supervises its etcd member, and (on master
candidates) runs the master role.  A node that is not part of a cluster yet waits in
*standby* for ``gnt-cluster init`` or for a master's ``gnt-node add``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haven.agent.loop import Agent
from haven.api.routing import Router
from haven.daemon import diskcopy, membership
from haven.daemon import facts as node_facts
from haven.daemon.etcd_member import EtcdMember
from haven.daemon.hub import EventHub
from haven.daemon.instances import NodeInstances
from haven.daemon.localstate import JoinedState, LocalState, write_private
from haven.daemon.migration import NodeMigration
from haven.daemon.replication import NodeReplication
from haven.daemon.role import MasterRole
from haven.daemon.settings import DaemonSettings
from haven.errors import HavenError, NodeSetupError, OpPrereqError
from haven.fence.feeder import Feeder
from haven.master import state
from haven.master.lu import MasterContext
from haven.model import ha
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
from haven.model.node import Node
from haven.noderpc import HttpsNodeRpc
from haven.passwords import hash_password
from haven.store.base import Guard
from haven.store.errors import StoreError
from haven.store.etcd import EtcdStore
from haven.store.lease import LeaseKeeper

if TYPE_CHECKING:
    from haven.api.http import ApiServer

log = logging.getLogger(__name__)

NODE_USER = "haven-node"  # the user node daemons authenticate to each other with


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


class NodeDaemon:
    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.local = LocalState(settings.data_dir)
        self.member = EtcdMember(settings.data_dir)
        self.router = Router()
        self.api: ApiServer | None = None
        self.joined: Joined | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._last_facts = 0.0
        self._alive_lease = 0
        self.started = time.time()
        self.instances = NodeInstances(self)
        self.replication = NodeReplication(self)
        self.migration = NodeMigration(self)
        self.fencer = Feeder(self.instances.run_dir, settings.data_dir / "fenced.log")
        # Held while a VM is started and while a new lease is granted: a VM is started
        # only under the lease (and fencer deadline) that was checked for it.
        self.vm_start_lock = threading.Lock()
        self.asked_if_removed = -1e9  # monotonic (membership.removed_while_away)
        self._recorded_lease = 0  # the lease id last written to run/lease.json

    # -- process lifecycle -----------------------------------------------------------
    def run(self) -> None:
        self.local.ensure_dirs()
        self.local.ensure_provisional_cert()
        # A daemon restarted under running VMs must take its lease over (and feed the
        # fencer) within TTL - 1 s of its predecessor's last renewal: that comes first,
        # before the web stack is even imported.  Callers meanwhile wait in the
        # listening socket's backlog or retry (a node not ready yet).
        if self.local.joined() is not None:
            self._activate_with_retry()
        from haven.api import console, routes, ui
        from haven.api.http import ApiServer
        from haven.api.users_file import UsersFile

        # The routes take a NodeContext (api/node.py): mypy checks here that this
        # daemon is one, and the API never imports the daemon.
        routes.install(self.router, self)
        self.api = ApiServer(self.settings.address, self.settings.api_port, self.router,
                             [*console.routes(self), *ui.routes(self)])
        self.api.auth.users_file = UsersFile(self.rapi_users_path)
        self.use_certificate()
        joined = self.joined
        if joined is not None:
            self._refresh_auth(joined.cluster)
        self.api.start()
        write_private(self.local.daemon_file, json.dumps({
            "name": self.name, "address": self.settings.address,
            "port": self.settings.api_port, "pid": os.getpid()}))
        log.info("node daemon %s listening on %s:%s", self.name, self.settings.address,
                 self.settings.api_port)
        while not self._stop.is_set():
            try:
                self.supervise()
            except HavenError as exc:
                log.warning("supervision: %s", exc.message)
            except Exception:  # a bug must not take the node's VMs' guardian down
                log.exception("supervision failed; retrying")
            self._stop.wait(self.settings.supervise_period)
        self.shutdown()

    def request_stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        with self._lock:
            self._deactivate(revoke=True)
        if self.api is not None:
            self.api.stop()

    def use_certificate(self) -> None:
        """Serve the cluster's certificate once joined, else the provisional one."""
        if self.api is None:
            return  # activated (or left) before the API exists: run() calls this again
        if self.local.cert_file.exists() and self.local.joined() is not None:
            self.api.use_certificate(str(self.local.cert_file), str(self.local.key_file))
        else:
            self.api.use_certificate(str(self.local.provisional_cert),
                                     str(self.local.provisional_key))

    # -- joined state ------------------------------------------------------------------
    def _activate_with_retry(self) -> None:
        try:
            self.activate()
        except HavenError as exc:
            if isinstance(exc, StoreError) and membership.removed_while_away(self):
                return
            log.warning("cannot reach the cluster yet: %s (retrying)", exc.message)

    def activate(self) -> None:
        """Connect to the store and start everything a cluster node runs."""
        with self._lock:
            if self.joined is not None:
                return
            js = self.local.joined()
            if js is None:
                raise NodeSetupError(f"Node {self.name} is not part of a cluster.")
            if js.etcd_member and not self.member.running():
                if not self._rejoin_if_removed(js):
                    self.member.start()
                elif self.local.joined() is None:
                    return  # it was removed from the cluster while away: standby now
            store = EtcdStore(self._endpoints(js), store_prefix(js.cluster_name),
                              tls=self.local.etcd_tls())
            cluster = state.cluster(store)
            self._ensure_fencer()
            lease = LeaseKeeper(store, cluster.lease_ttl, margin=LEASE_MARGIN,
                                adopt=self._saved_lease(), on_renewed=self._lease_renewed,
                                heartbeat=lambda lid: self._heartbeat(store, lid))
            hub = EventHub(store)
            joined = Joined(store, lease, hub, cluster)
            self.joined = joined
            self._refresh_auth(cluster)
            self._put_alive()
            self.publish_facts()
            self._remember_cluster_id(js)
            membership.sync_crl(self, store)
            hub.subscribe(PKI, lambda _k: membership.sync_crl(self, store))
            hub.subscribe(CLUSTER, lambda _k: self._on_cluster_change())
            # The cached etcd endpoints must follow membership at once: a node that
            # dies right after a join must still find the others when it returns.
            hub.subscribe(NODES, lambda _k: self._refresh_endpoints())
            role = MasterRole(self.name, store, lease, self._is_candidate,
                              self._master_context)
            lease.on_lost(lambda _reason: role.on_lease_lost())
            hub.subscribe("master", lambda _k: role.wake.set())
            hub.subscribe("handover", lambda _k: role.wake.set())
            joined.role = role
            agent = Agent(self)
            joined.agent = agent
            # Not REPLICAS: the agent itself writes them while a sync progresses.
            for prefix in (INSTANCES, OBSERVED, LOCKS):
                hub.subscribe(prefix, lambda _k: agent.wake.set())
            hub.start()
            role.start()
            agent.start()
            log.info("joined cluster %s", js.cluster_name)

    def _deactivate(self, revoke: bool) -> None:
        joined, self.joined = self.joined, None
        if joined is None:
            return
        if joined.agent is not None:
            joined.agent.stop()
        if joined.role is not None:
            joined.role.stop(resign=revoke)
        joined.hub.stop()
        vms = sorted(self.instances.all_vms()) if revoke else []
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
            self.fencer.disarm("the node daemon stopped cleanly with no VM running")
        joined.store.close()

    # -- fencing -------------------------------------------------------------------------
    def _ensure_fencer(self) -> None:
        if self.fencer.ensure_running():
            deadline = time.monotonic() + 5
            while not (self.instances.run_dir / "fenced.sock").exists():
                if time.monotonic() > deadline:
                    log.warning("haven-fenced did not open its socket within 5 s")
                    return
                time.sleep(0.02)
            joined = self.joined
            if joined is not None and joined.lease.valid():
                self.fencer.feed(joined.lease.deadline, joined.lease.lease_id)

    def _lease_path(self) -> Path:
        return self.instances.run_dir / "lease.json"

    def _saved_lease(self) -> int:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(json.loads(self._lease_path().read_text())["lease"])
        return 0

    def _lease_renewed(self, deadline: float, lease_id: int) -> None:
        self.fencer.feed(deadline, lease_id)
        # Every second: the file is written when the lease changes, never read here.
        if lease_id != self._recorded_lease:
            write_private(self._lease_path(), json.dumps({"lease": lease_id}))
            self._recorded_lease = lease_id

    def start_blocked(self) -> str:
        """Why this node may not start a VM now, or "" if it may: it needs a valid
        lease that holds its alive key, a fed fencer, and the HA manager not to have
        fenced it (ARCHITECTURE.md, "Fencing")."""
        joined = self.joined
        if joined is None:
            return f"node {self.name} is not connected to the cluster"
        if not joined.lease.valid():
            return f"node {self.name} holds no valid lease"
        if self.fencer.fed_until() <= time.monotonic():
            return f"haven-fenced of node {self.name} is not running or not fed"
        kv = joined.store.get(Keys.alive(self.name))
        if kv is None or kv.lease != joined.lease.lease_id:
            return f"node {self.name}'s alive key is not held by its lease"
        kv = joined.store.get(ha.node_key(self.name))
        if kv is not None:
            rec = ha.NodeHA.from_json(json.loads(kv.value))
            if rec.state in ha.BLOCKED:
                return (f"the HA manager has node {self.name} {rec.state} ({rec.reason}); "
                        f"its instances are being recovered elsewhere")
        return ""

    @contextlib.contextmanager
    def vm_start_gate(self, name: str) -> Iterator[None]:
        """Hold while starting VM ``name``: refuses (one sentence) unless this node may
        start VMs, and keeps a new lease from being granted meanwhile."""
        with self.vm_start_lock:
            why = self.start_blocked()
            if why:
                raise OpPrereqError(f"Not starting {name} on {self.name}: {why}.")
            yield

    def _endpoints(self, js: JoinedState) -> list[str]:
        eps = list(js.etcd_endpoints)
        if js.etcd_member:
            own = self.settings.etcd_client_url
            eps = [own] + [e for e in eps if e != own]
        return eps

    def _is_candidate(self) -> bool:
        joined = self.joined
        if joined is None:
            return False
        try:
            node = state.node(joined.store, self.name)
        except HavenError:
            return False
        return node.master_candidate and not node.offline

    def _master_context(self, guard: Any) -> MasterContext:
        joined = self.joined
        assert joined is not None
        return MasterContext(
            store=joined.store, guard=guard, master_node=self.name, rpc=self.rpc(),
            etcd_admin=joined.store if joined.cluster.etcd_managed else None,
            extras={"daemon": self})

    def rpc(self) -> HttpsNodeRpc:
        import base64

        secret = self.cluster_secret()
        header = "Basic " + base64.b64encode(f"{NODE_USER}:{secret}".encode()).decode()
        cert = str(self.local.cert_file) if self.local.cert_file.exists() else None
        return HttpsNodeRpc(cert, header)

    def _refresh_auth(self, cluster: Cluster) -> None:
        if self.api is None:
            return  # activated before the API exists (run): it is given the users then
        users = dict(cluster.rapi_users)
        # Node daemons authenticate to each other with the cluster secret, which only
        # the nodes hold (secrets.json, never etcd).
        secret = self.cluster_secret()
        if secret:
            users[NODE_USER] = {"salt": "node", "password": hash_password(secret, "node"),
                                "write": True}
        self.api.auth.users = users
        self.api.auth.set_token_secret(secret)

    def cluster_secret(self) -> str:
        """The secret the cluster's nodes share (empty while standby)."""
        keys = self.local.secrets() if self.joined is not None else None
        return keys.cluster_secret if keys else ""

    def _on_cluster_change(self) -> None:
        joined = self.joined
        if joined is None:
            return
        try:
            joined.cluster = state.cluster(joined.store)
        except HavenError:
            return
        self._refresh_auth(joined.cluster)

    # -- periodic work -------------------------------------------------------------------
    def supervise(self) -> str:
        """One supervision pass; returns what it did, in one line."""
        # Not while a join, leave or --no-voting recovery holds the daemon: it stops and
        # restores the etcd member, which this pass would otherwise start again under it.
        if not self._lock.acquire(blocking=False):
            return "busy"
        try:
            return self._supervise()
        finally:
            self._lock.release()

    def _supervise(self) -> str:
        js = self.local.joined()
        if js is None:
            return "standby"
        done = []
        if js.etcd_member and not self.member.running() and self.member.config():
            # Removed members exit: one demoted to a learner, or left behind by a
            # recovery elsewhere, rejoins instead of restarting its old copy.
            if self._rejoin_if_removed(js):
                if self.local.joined() is None:
                    return "removed from the cluster: standby"
                done.append("rejoined etcd as a learner")
            else:
                self.member.start()
                done.append("restarted etcd member")
        joined = self.joined
        if joined is None:
            self._activate_with_retry()
            return "activating"
        self._ensure_fencer()
        if not joined.lease.valid() or joined.lease.lease_id != self._alive_lease:
            with self.vm_start_lock:
                joined.lease.restart()
                self._put_alive()
            done.append("renewed lease")
        fired = self.fencer.take_record()
        if fired:
            self._report_fenced(fired)
        if time.monotonic() - self._last_facts > self.settings.facts_period:
            self.publish_facts()
            self._refresh_endpoints()
            self._remember_cluster_id(js)
        return ", ".join(done) or "ok"

    def _report_fenced(self, fired: dict[str, Any]) -> None:
        from haven.model import event

        killed = ", ".join(fired.get("killed") or []) or "no VM"
        ev = event.new("self-fenced", f"node/{self.name}", self.name,
                       f"Node {self.name} fenced itself: its lease {fired.get('lease')} was "
                       f"not renewed in time; haven-fenced killed {killed}", "warning")
        with contextlib.suppress(StoreError):
            self.store().put(ev.key(), ev.encode())

    def _heartbeat(self, store: EtcdStore, lease_id: int) -> None:
        """Re-write the alive key at every renewal: the master's HA manager times this
        node's silence from these writes (``master/ha.py``)."""
        if self._alive_lease != lease_id:
            return  # not ours yet: supervise() writes it first
        store.put(Keys.alive(self.name), self._alive_value(), lease=lease_id)

    def _alive_value(self) -> bytes:
        return json.dumps({"node": self.name, "pid": os.getpid(), "since": self.started,
                           "api": f"{self.settings.address}:{self.settings.api_port}"}
                          ).encode()

    def _put_alive(self) -> None:
        joined = self.joined
        if joined is None or not joined.lease.valid():
            return
        if self._alive_lease != joined.lease.lease_id:
            try:
                self.instances.retract_stale()
            except (StoreError, OSError) as exc:  # the agent's pass corrects it later
                log.warning("could not correct %s's stale instance states: %s",
                            self.name, exc)
        joined.store.put(Keys.alive(self.name), self._alive_value(),
                         lease=joined.lease.lease_id)
        self._alive_lease = joined.lease.lease_id

    def publish_facts(self) -> None:
        joined = self.joined
        if joined is None:
            return
        version = (self.instances.qemu_version()
                   if "kvm" in joined.cluster.enabled_hypervisors else "")
        f = node_facts.collect(self.name, self.settings.storage_dir,
                               joined.cluster.enabled_hypervisors, hv_version=version)
        joined.store.put(Keys.facts(self.name), state.dumps(f.to_json()))
        self._last_facts = time.monotonic()

    def _refresh_endpoints(self) -> None:
        """Keep the cached etcd endpoints in step with the members in the store."""
        joined = self.joined
        js = self.local.joined()
        if joined is None or js is None:
            return
        urls = tuple(sorted(n.etcd_client_url for n in state.nodes(joined.store)
                            if n.etcd_client_url))
        if js.etcd_managed and urls and urls != tuple(sorted(js.etcd_endpoints)):
            self.use_etcd_endpoints(js, urls)

    def use_etcd_endpoints(self, js: JoinedState, urls: tuple[str, ...]) -> None:
        """Remember ``urls`` as the cluster's etcd endpoints, and use them at once: a
        member that joined after this node may be the only voter left when this
        node's own member is demoted or the first ones go."""
        js = replace(js, etcd_endpoints=urls)
        self.local.save_joined(js)
        joined = self.joined
        if joined is not None:
            joined.store.set_endpoints(self._endpoints(js))

    def _rejoin_if_removed(self, js: JoinedState) -> bool:
        return membership.rejoin_if_removed(self, js)

    def _remember_cluster_id(self, js: JoinedState) -> None:
        joined = self.joined
        if joined is None or not js.etcd_member:
            return
        with contextlib.suppress(StoreError):
            own = self.settings.etcd_client_url
            self.member.remember_cluster_id(joined.store.status(own)["cluster_id"])

    # -- what the API asks ---------------------------------------------------------------
    @property
    def rapi_users_path(self) -> Path:
        """Ganeti's RAPI users file of this node (``api/users_file.py``)."""
        return self.settings.data_dir / "rapi" / "users"

    def store(self) -> EtcdStore:
        joined = self.joined
        if joined is None:
            raise NodeSetupError(f"Node {self.name} is not part of a cluster (or cannot "
                                 f"reach etcd right now).")
        return joined.store

    def guard(self) -> Guard | None:
        joined = self.joined
        if joined is None or joined.role is None:
            return None
        return joined.role.guard()

    def node_record(self) -> Node | None:
        try:
            return state.node(self.store(), self.name)
        except HavenError:
            return None

    def other_nodes(self) -> list[Node]:
        kvs, _ = self.store().list(NODES)
        return [n for n in (Node.from_json(json.loads(kv.value)) for kv in kvs)
                if n.name != self.name]

    def qmp_path(self, name: str) -> str:
        return self.replication.qmp_path(name)

    # The API's membership and disk-copy calls (api/node.py), carried out here.
    def init_cluster(self, name: str, etcd_endpoints: list[str], lease_ttl: int,
                     vm_capable: bool = True, shared_dir: str = "",
                     hypervisors: tuple[str, ...] = ("kvm",)) -> dict[str, Any]:
        return membership.init(self, name, etcd_endpoints, lease_ttl, vm_capable,
                               shared_dir, hypervisors)

    def join_cluster(self, body: dict[str, Any]) -> dict[str, Any]:
        return membership.join(self, body)

    def leave_cluster(self) -> dict[str, Any]:
        return membership.leave(self)

    def destroy_cluster(self) -> dict[str, Any]:
        return membership.destroy(self)

    def master_failover(self, no_voting: bool) -> dict[str, Any]:
        return membership.master_failover(self, no_voting)

    def write_client_config(self) -> dict[str, Any]:
        return membership.write_client_config(self)

    def disk_stream(self, name: str, index: int) -> Iterator[bytes]:
        return diskcopy.send_file(diskcopy.disk_path(self, name, index))

    def pull_disk(self, name: str, source: str, index: int) -> int:
        return diskcopy.pull(self, name, source, index,
                             diskcopy.disk_path(self, name, index))
