"""``haven-noded``: one per node.

Always: serves the API, and once the node is part of a cluster, holds the node's lease
(``alive/<node>``), publishes its facts, supervises its etcd member, and (on master
candidates) runs the master role.  A node that is not part of a cluster yet waits in
*standby* for ``gnt-cluster init`` or for a master's ``gnt-node add``.

:class:`NodeDaemon` holds the process's state and what the API asks of it; connecting to
the cluster and the supervision pass are in :mod:`haven.daemon.activation`, the lease,
alive key and fencer in :mod:`haven.daemon.fencing`, joining and leaving in
:mod:`haven.daemon.membership`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haven.api.routing import Router
from haven.daemon import activation, diskcopy, fencing, master_failover, membership
from haven.daemon.activation import Joined
from haven.daemon.etcd_member import EtcdMember
from haven.daemon.instances import NodeInstances
from haven.daemon.localstate import JoinedState, LocalState, write_private
from haven.daemon.migration import NodeMigration
from haven.daemon.replication import NodeReplication
from haven.daemon.settings import DaemonSettings
from haven.errors import HavenError, NodeSetupError
from haven.fence.feeder import Feeder
from haven.master import state
from haven.master.lu import MasterContext
from haven.model.cluster import Cluster
from haven.model.keys import NODES
from haven.model.node import Node
from haven.noderpc import HttpsNodeRpc
from haven.passwords import hash_password
from haven.store.base import Guard
from haven.store.etcd import EtcdStore

if TYPE_CHECKING:
    from haven.api.http import ApiServer

log = logging.getLogger(__name__)

NODE_USER = "haven-node"  # the user node daemons authenticate to each other with


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
            activation.activate_with_retry(self)
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
    def activate(self) -> None:
        """Connect to the store and start everything a cluster node runs."""
        activation.activate(self)

    def _deactivate(self, revoke: bool) -> None:
        activation.deactivate(self, revoke)

    # -- fencing -------------------------------------------------------------------------
    def start_blocked(self) -> str:
        """Why this node may not start a VM now, or "" if it may
        (:func:`haven.daemon.fencing.start_blocked`)."""
        return fencing.start_blocked(self)

    def vm_start_gate(self, name: str) -> AbstractContextManager[None]:
        """Hold while starting VM ``name``: refuses (one sentence) unless this node may
        start VMs, and keeps a new lease from being granted meanwhile."""
        return fencing.vm_start_gate(self, name)

    # -- the master role, and the API's users ------------------------------------------
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

    # -- periodic work -------------------------------------------------------------------
    def supervise(self) -> str:
        """One supervision pass; returns what it did, in one line."""
        # Not while a join, leave or --no-voting recovery holds the daemon: it stops and
        # restores the etcd member, which this pass would otherwise start again under it.
        if not self._lock.acquire(blocking=False):
            return "busy"
        try:
            return activation.supervise(self)
        finally:
            self._lock.release()

    def use_etcd_endpoints(self, js: JoinedState, urls: tuple[str, ...]) -> None:
        """Remember ``urls`` as the cluster's etcd endpoints, and use them at once
        (:func:`haven.daemon.activation.use_etcd_endpoints`)."""
        activation.use_etcd_endpoints(self, js, urls)

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
        return master_failover.master_failover(self, no_voting)

    def write_client_config(self) -> dict[str, Any]:
        return membership.write_client_config(self)

    def disk_stream(self, name: str, index: int) -> Iterator[bytes]:
        return diskcopy.send_file(diskcopy.disk_path(self, name, index))

    def pull_disk(self, name: str, source: str, index: int) -> int:
        return diskcopy.pull(self, name, source, index,
                             diskcopy.disk_path(self, name, index))
