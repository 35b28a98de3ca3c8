"""How a node enters and leaves a cluster, and the quorum-loss recovery.

These run inside the node daemon, called through its API: ``init`` by the local
``gnt-cluster init``; ``join``/``leave`` by the master's node-add/remove jobs;
``master_failover`` on the target node; ``destroy`` on the master.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from haven import clientconf
from haven.api.http import hash_password
from haven.daemon.etcd_member import MemberConfig, wait_healthy
from haven.daemon.localstate import JoinedState, make_certificate
from haven.daemon.role import HANDOVER_JOB_WAIT
from haven.errors import (
    ExistsError,
    HavenError,
    InvalidInput,
    NodeSetupError,
    OpExecError,
    OpPrereqError,
)
from haven.master import state
from haven.model.cluster import Cluster
from haven.model.keys import HANDOVER, MASTER, Keys, store_prefix
from haven.model.node import Node
from haven.store.base import Compare, Put
from haven.store.errors import StoreError
from haven.store.etcd import EtcdStore
from haven.store.members import add_member, initial_cluster, promote_member

if TYPE_CHECKING:
    from haven.daemon.noded import NodeDaemon

log = logging.getLogger(__name__)


def init(d: NodeDaemon, name: str, etcd_endpoints: list[str], lease_ttl: int,
         vm_capable: bool = True, shared_dir: str = "",
         hypervisors: tuple[str, ...] = ("kvm",)) -> dict[str, Any]:
    """Make this node a one-node cluster (and its master)."""
    js = d.local.joined()
    if js is not None:
        raise ExistsError(f"Node {d.name} is already part of cluster {js.cluster_name}; "
                          f"destroy it first with 'gnt-cluster destroy --yes-do-it'.")
    if not name or "/" in name:
        raise InvalidInput(f"Cluster name {name!r} is not valid.")
    if not 2 <= lease_ttl <= 60:
        raise InvalidInput(f"Lease TTL {lease_ttl} s is out of range; use 2 to 60.")
    managed = not etcd_endpoints
    cert, key = make_certificate(name)
    password = secrets.token_urlsafe(18)
    salt = secrets.token_hex(8)
    now = time.time()
    cluster = Cluster(
        name=name, uuid=str(uuid.uuid4()), ctime=now, mtime=now, etcd_managed=managed,
        etcd_endpoints=tuple(etcd_endpoints), cert_pem=cert, key_pem=key,
        rapi_users={"haven-admin": {"salt": salt, "write": True,
                                    "password": hash_password(password, salt)}},
        admin_password=password, lease_ttl=lease_ttl, api_port=d.settings.api_port,
        enabled_hypervisors=hypervisors)
    if shared_dir:
        cluster = replace(cluster, shared_file_storage_dir=shared_dir)
    s = d.settings
    if managed:
        d.member.configure(MemberConfig(d.name, s.etcd_client_url, s.etcd_peer_url,
                                        f"{d.name}={s.etcd_peer_url}", "new",
                                        f"haven-{name}-{cluster.uuid[:8]}"), wipe=True)
        d.member.start()
        if not d.member.wait_healthy(30):
            d.member.unconfigure()
            raise NodeSetupError(f"The etcd member of {d.name} did not start; see "
                                 f"{d.member.log_path}.")
        etcd_endpoints = [s.etcd_client_url]
    store = EtcdStore(etcd_endpoints, store_prefix(name))
    try:
        member_id = 0
        if managed:
            member_id = next((m.id for m in store.member_list() if m.name == d.name), 0)
        node = Node(name=d.name, uuid=str(uuid.uuid4()), primary_ip=s.address,
                    secondary_ip=s.address, api_port=s.api_port, vm_capable=vm_capable,
                    etcd_member_id=member_id,
                    etcd_client_url=s.etcd_client_url if managed else "",
                    etcd_peer_url=s.etcd_peer_url if managed else "", ctime=now, mtime=now)
        res = store.txn([Compare(Keys.cluster, "create", "=", 0)],
                        [Put(Keys.cluster, state.dumps(cluster.to_json())),
                         Put(Keys.node(d.name), state.dumps(node.to_json()))])
        if not res.succeeded:
            raise ExistsError(f"etcd at {', '.join(etcd_endpoints)} already holds a "
                              f"cluster named {name}; choose another name.")
    except HavenError:
        store.close()
        if managed:
            d.member.unconfigure()
        raise
    store.close()
    d.local.save_cert(cert, key)
    d.local.save_joined(JoinedState(name, tuple(etcd_endpoints), managed, managed, node.uuid))
    d._use_certificate()
    d.activate()
    wait_master(d, 20)
    return write_client_config(d)


def join(d: NodeDaemon, body: dict[str, Any]) -> dict[str, Any]:
    """Called by the master's node-add job on the node being added."""
    js = d.local.joined()
    if js is not None:
        raise ExistsError(f"Node {d.name} is already part of cluster {js.cluster_name}; "
                          f"remove it there first.")
    s = d.settings
    member = body.get("member")
    if member:
        d.member.configure(MemberConfig(d.name, s.etcd_client_url, s.etcd_peer_url,
                                        str(member["initial_cluster"]), "existing",
                                        str(member["token"])), wipe=True)
        d.member.start()
        if not d.member.wait_healthy(30):
            d.member.unconfigure()
            raise NodeSetupError(f"The etcd member of {d.name} did not join; see "
                                 f"{d.member.log_path}.")
    d.local.save_cert(str(body["cert_pem"]), str(body["key_pem"]))
    d.local.save_joined(JoinedState(str(body["cluster_name"]),
                                    tuple(body["etcd_endpoints"]),
                                    bool(body["etcd_managed"]), bool(member),
                                    str(body.get("node_uuid", ""))))
    d._use_certificate()
    d.activate()
    write_client_config(d)
    return {"node": d.name, "joined": body["cluster_name"]}


def leave(d: NodeDaemon) -> dict[str, Any]:
    """Called by the master's node-remove job: forget the cluster, back to standby."""
    with d._lock:
        d._deactivate(revoke=True)
        d.member.unconfigure()
        d.local.forget()
        d._use_certificate()
    return {"node": d.name, "left": True}


def write_client_config(d: NodeDaemon) -> dict[str, Any]:
    """(Re)write this node's cached client config from the store; returns it."""
    store = d.store()
    cluster = state.cluster(store)
    nodes = state.nodes(store)
    master = state.master(store)
    eps = [f"{n.primary_ip}:{n.api_port}" for n in
           sorted(nodes, key=lambda n: (n.name != master, n.name)) if not n.offline]
    conf = clientconf.build(cluster.name, eps, cluster.cert_pem, cluster.admin_user,
                            cluster.admin_password, master)
    clientconf.save(conf, d.local.client_file)
    return conf


def wait_master(d: NodeDaemon, timeout: float) -> bool:
    joined = d.joined
    if joined is None or joined.role is None:
        return False
    joined.role.wake.set()
    return joined.role.became_master.wait(timeout)


def master_failover(d: NodeDaemon, no_voting: bool) -> dict[str, Any]:
    """Make this node the master: a voluntary handover, or (``no_voting``) a recovery
    of etcd from this member alone after the other members are lost for good."""
    if no_voting:
        recover_alone(d)
        if not wait_master(d, 30):
            raise OpExecError(f"Node {d.name} recovered etcd but did not become master; "
                              f"see its log.")
        return {"master": d.name, "recovered": True}
    joined = d.joined
    if joined is None or joined.role is None:
        raise NodeSetupError(f"Node {d.name} cannot reach the cluster's etcd; if the other "
                             f"members are gone for good, use --no-voting --yes-do-it.")
    if joined.role.is_master():
        return {"master": d.name, "changed": False}
    node = state.node(joined.store, d.name)
    if not node.master_candidate or node.offline:
        raise OpPrereqError(f"Node {d.name} is not a master candidate; make it one with "
                            f"'gnt-node modify -C yes {d.name}'.")
    old = state.master(joined.store)
    joined.store.put(HANDOVER, json.dumps({"target": d.name, "from": old}).encode(),
                     lease=joined.lease.lease_id)
    if not wait_master(d, HANDOVER_JOB_WAIT + 15):
        kv = joined.store.get(HANDOVER)
        if kv is not None and json.loads(kv.value).get("target") == d.name:
            joined.store.delete(HANDOVER, kv.mod_revision)
        raise OpExecError(f"Master {old} did not hand over to {d.name} in time; check "
                          f"it with 'gnt-cluster verify' and retry.")
    write_client_config(d)
    return {"master": d.name, "changed": True, "previous": old}


def recover_alone(d: NodeDaemon) -> None:
    js = d.local.joined()
    if js is None:
        raise NodeSetupError(f"Node {d.name} is not part of a cluster.")
    if not js.etcd_member:
        raise OpPrereqError(f"Node {d.name} has no etcd member; --no-voting recovers a "
                            f"managed etcd from a master candidate's member.")
    log.warning("recovering etcd from the member of %s alone (--no-voting)", d.name)
    with d._lock:
        d._deactivate(revoke=False)
        d.member.recover_alone()
        own = d.settings.etcd_client_url
        d.local.save_joined(replace(js, etcd_endpoints=(own,)))
        store = EtcdStore([own], store_prefix(js.cluster_name))
        try:
            members = {m.peer_urls[0]: m.id for m in store.member_list() if m.peer_urls}
            for n in state.nodes(store):
                if n.name == d.name:
                    changes: dict[str, Any] = {
                        "etcd_member_id": members.get(n.etcd_peer_url, n.etcd_member_id)}
                elif n.etcd_peer_url and n.etcd_peer_url not in members:
                    # Dropped from etcd: it rejoins as a fresh member when it returns.
                    changes = {"etcd_member_id": 0}
                else:
                    continue
                store.put(Keys.node(n.name),
                          state.dumps(n.modified(time.time(), **changes).to_json()))
            # The old master is gone with its quorum: clear its key now instead of
            # waiting for its lease, restored by the recovery, to run out.
            store.delete(MASTER)
            store.delete(HANDOVER)
        finally:
            store.close()
    d.activate()


def rejoin_if_removed(d: NodeDaemon, js: JoinedState) -> None:
    """A member that returns after a ``--no-voting`` recovery elsewhere finds itself
    removed: wipe it and join the surviving cluster as a fresh member."""
    s = d.settings
    if wait_healthy(s.etcd_client_url, 3.0):
        return
    for ep in js.etcd_endpoints:
        if ep == s.etcd_client_url:
            continue
        other = EtcdStore([ep], store_prefix(js.cluster_name), timeout=1.0)
        try:
            members = other.member_list()
            if any(s.etcd_peer_url in m.peer_urls for m in members):
                return  # still a member: it only needs time
            log.warning("etcd member of %s was removed from the cluster; rejoining", d.name)
            d.member.stop()
            new, members = add_member(other, s.etcd_peer_url)
            conf = d.member.config()
            assert conf is not None
            initial = initial_cluster(members, new.id, d.name)
            d.member.configure(replace(conf, initial_cluster=initial,
                                       initial_state="existing"), wipe=True)
            d.member.start()
            if not d.member.wait_healthy(30):
                raise NodeSetupError(f"etcd member of {d.name} did not rejoin; see "
                                     f"{d.member.log_path}.")
            promote_member(other, new.id)
            node, rev = state.node_rev(other, d.name)
            other.cas(Keys.node(d.name), state.dumps(node.modified(
                time.time(), etcd_member_id=new.id).to_json()), rev)
            return
        except StoreError:
            continue
        finally:
            other.close()


def destroy(d: NodeDaemon) -> dict[str, Any]:
    """Remove the cluster entirely; only the master, only when it is the last node."""
    joined = d.joined
    if joined is None or joined.role is None or not joined.role.is_master():
        master = state.master(d.store())
        raise OpPrereqError(f"Node {d.name} is not the master; run the command on "
                            f"{master}.")
    others = [n.name for n in d.other_nodes()]
    if others:
        raise OpPrereqError(f"The cluster still has the node(s) {', '.join(others)}; "
                            f"remove them first with 'gnt-node remove'.")
    name = joined.cluster.name
    guard = d.guard()
    joined.store.delete("", prefix=True, guard=guard)
    with d._lock:
        d._deactivate(revoke=True)
        d.member.unconfigure()
        d.local.forget()
        d._use_certificate()
    return {"destroyed": name}
