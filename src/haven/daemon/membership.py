"""How a node enters and leaves a cluster, and how a member that was away finds its
place again (rejoin as a learner, or standby when removed).

These run inside the node daemon, called through its API: ``init`` by the local
``gnt-cluster init``; ``join``/``leave`` by the master's node-add/remove jobs;
``destroy`` on the master.  ``gnt-cluster master-failover`` and the quorum-loss
recovery are in :mod:`haven.daemon.master_failover`.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from haven import clientconf, pki, revocation
from haven.daemon.etcd_member import MemberConfig
from haven.daemon.localstate import ClusterSecrets, JoinedState, make_certificate
from haven.errors import (
    ExistsError,
    HavenError,
    InvalidInput,
    NodeSetupError,
    NotFoundError,
    OpPrereqError,
)
from haven.master import state
from haven.model.cluster import Cluster
from haven.model.keys import Keys, store_prefix
from haven.model.node import Node
from haven.passwords import hash_password
from haven.store.base import Compare, Put, Store
from haven.store.errors import StoreError
from haven.store.etcd import EtcdStore
from haven.store.members import add_member, initial_cluster

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
    keys = ClusterSecrets.new()
    salt = secrets.token_hex(8)
    now = time.time()
    # Only hashes and public certificates go into etcd: the keys, the cluster secret
    # and the CLI's password stay in this node's 0600 files and travel to the others
    # inside the join call (TLS, each side verified by the join token).
    cluster = Cluster(
        name=name, uuid=str(uuid.uuid4()), ctime=now, mtime=now, etcd_managed=managed,
        etcd_endpoints=tuple(etcd_endpoints), cert_pem=cert, key_pem="",
        rapi_users={"haven-admin": {"salt": salt, "write": True,
                                    "password": hash_password(keys.admin_password, salt)}},
        lease_ttl=lease_ttl, api_port=d.settings.api_port,
        enabled_hypervisors=hypervisors)
    if shared_dir:
        cluster = replace(cluster, shared_file_storage_dir=shared_dir)
    s = d.settings
    d.local.save_secrets(keys)
    ca = pki.make_ca(name)
    d.local.save_ca(ca)
    issued: list[Put] = []
    if managed:
        pair = pki.node_certificate(ca, d.name, s.address)
        d.local.save_etcd_cert(pair)
        # An empty revocation list from the start: the member reads it from its first
        # connection on (haven.revocation).
        crl = pki.make_crl(ca, ())
        d.local.save_crl(crl)
        issued = [Put(Keys.issued(d.name), revocation.issued_value([pki.serial(pair.cert_pem)])),
                  Put(Keys.crl, crl.encode())]
    if managed:
        d.member.configure(MemberConfig(d.name, s.etcd_client_url, s.etcd_peer_url,
                                        f"{d.name}={s.etcd_peer_url}", "new",
                                        f"haven-{name}-{cluster.uuid[:8]}"), wipe=True)
        d.member.start()
        if not d.member.wait_healthy(30):
            why = _exited(d)
            d.member.unconfigure()
            d.local.forget()
            raise NodeSetupError(f"The etcd member of {d.name} did not start{why}; see "
                                 f"{d.member.log_path}.")
        etcd_endpoints = [s.etcd_client_url]
    store = EtcdStore(etcd_endpoints, store_prefix(name), tls=d.local.etcd_tls())
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
                         Put(Keys.node(d.name), state.dumps(node.to_json())), *issued])
        if not res.succeeded:
            raise ExistsError(f"etcd at {', '.join(etcd_endpoints)} already holds a "
                              f"cluster named {name}; choose another name.")
    except HavenError:
        store.close()
        if managed:
            d.member.unconfigure()
        d.local.forget()
        raise
    store.close()
    d.local.save_cert(cert, key)
    d.local.save_joined(JoinedState(name, tuple(etcd_endpoints), managed, managed, node.uuid))
    d.use_certificate()
    d.activate()
    wait_master(d, 20)
    return write_client_config(d)


def join(d: NodeDaemon, body: dict[str, Any]) -> dict[str, Any]:
    """Called by the master's node-add job on the node being added."""
    js = d.local.joined()
    if js is not None:
        raise ExistsError(f"Node {d.name} is already part of cluster {js.cluster_name}; "
                          f"remove it there first.")
    if not d.local.consume_join_token(str(body.get("join_token", ""))):
        raise OpPrereqError(f"Node {d.name} refused to join: the join token is not its "
                            f"current one; print it with 'haven join-token' on {d.name} "
                            f"and pass it to 'gnt-node add --join-token'.")
    s = d.settings
    crypto = body.get("crypto")
    if not isinstance(crypto, dict):
        raise InvalidInput(f"The join call for {d.name} lacks the cluster's keys; the "
                           f"master runs an older Haven.")
    try:
        d.local.save_key_bundle(crypto)
    except HavenError:
        d.local.forget()
        raise
    member = body.get("member")
    if member:
        d.member.configure(MemberConfig(d.name, s.etcd_client_url, s.etcd_peer_url,
                                        str(member["initial_cluster"]), "existing",
                                        str(member["token"])), wipe=True)
        d.member.start()
        if not d.member.wait_healthy(30):
            why = _exited(d)
            d.member.unconfigure()
            d.local.forget()
            raise NodeSetupError(f"The etcd member of {d.name} did not join{why}; see "
                                 f"{d.member.log_path}.")
    d.local.save_joined(JoinedState(str(body["cluster_name"]),
                                    tuple(body["etcd_endpoints"]),
                                    bool(body["etcd_managed"]), bool(member),
                                    str(body.get("node_uuid", ""))))
    d.use_certificate()
    d.activate()
    write_client_config(d)
    return {"node": d.name, "joined": body["cluster_name"]}


def _exited(d: NodeDaemon) -> str:
    """`` (etcd exited: why)`` if the member's process is gone, else ``""``."""
    if d.member.running():
        return ""
    return f" (etcd exited: {d.member.exit_reason() or 'no reason in its log'})"


def leave(d: NodeDaemon) -> dict[str, Any]:
    """Called by the master's node-remove job: forget the cluster, back to standby."""
    with d._lock:
        d._deactivate(revoke=True)
        d.member.unconfigure()
        d.local.forget()
        d.local.new_join_token()  # standby again: a new token for its next join
        d.use_certificate()
    return {"node": d.name, "left": True}


def write_client_config(d: NodeDaemon) -> dict[str, Any]:
    """(Re)write this node's cached client config from the store; returns it."""
    store = d.store()
    cluster = state.cluster(store)
    nodes = state.nodes(store)
    master = state.master(store)
    eps = [f"{n.primary_ip}:{n.api_port}" for n in
           sorted(nodes, key=lambda n: (n.name != master, n.name)) if not n.offline]
    keys = d.local.secrets()
    conf = clientconf.build(cluster.name, eps, cluster.cert_pem, cluster.admin_user,
                            keys.admin_password if keys else cluster.admin_password, master)
    clientconf.save(conf, d.local.client_file)
    return conf


def wait_master(d: NodeDaemon, timeout: float) -> bool:
    joined = d.joined
    if joined is None or joined.role is None:
        return False
    joined.role.wake.set()
    return joined.role.became_master.wait(timeout)


def rejoin_if_removed(d: NodeDaemon, js: JoinedState) -> bool:
    """Before this node's member starts: ask the other members whether it still
    belongs to their cluster.  One that was removed (demoted to a learner by the quorum
    rules, or left behind by a ``--no-voting`` recovery elsewhere) is wiped and joins
    their cluster as a fresh learner; the master promotes it if the rules want a vote.
    Returns whether it rejoined (its member then runs), or left: a node that was
    removed from the cluster's configuration goes back to standby.

    This runs *before* the old member starts because a former sole voter (the master of
    a two-node cluster) would otherwise serve its stale copy on its own, and its agent
    would start instances that now run elsewhere.  If no other member answers, nothing
    can be learnt and the member starts as it is."""
    s = d.settings
    known = d.member.known_cluster_id()
    for ep in js.etcd_endpoints:
        if ep == s.etcd_client_url:
            continue
        other = EtcdStore([ep], store_prefix(js.cluster_name), timeout=1.0,
                          tls=d.local.etcd_tls())
        try:
            st = other.status(ep)
            if st["is_learner"]:
                continue  # a learner cannot list members; ask the next one
            members = other.member_list()
            mine = next((m for m in members if s.etcd_peer_url in m.peer_urls), None)
            if mine is not None and not mine.client_urls:
                # Added but never started: its --initial-cluster may predate a change of
                # the members made since, which etcd refuses at every start ("member
                # count is unequal").  Started anew from the members as they are now.
                _rejoin(d, other, members, mine, st["cluster_id"],
                        "was added but never started; starting it from the current "
                        "members")
                return True
            if mine is not None and (not known or st["cluster_id"] == known):
                return False
            if mine is None and other.get(Keys.node(d.name)) is None:
                # Removed from the cluster (gnt-node remove), not merely dropped from
                # etcd: rejoining would bring a removed node back, and its fresh learner,
                # racing the removal, once made a voter's etcd exit ("the member has
                # been permanently removed").  Back to standby instead.
                log.warning("node %s was removed from cluster %s; its etcd member is "
                            "wiped and the node goes back to standby", d.name,
                            js.cluster_name)
                leave(d)
                return True
            _rejoin(d, other, members, mine, st["cluster_id"])
            return True
        except StoreError:
            continue
        finally:
            other.close()
    if removed_per_api(d, js):
        log.warning("node %s was removed from cluster %s (its etcd certificate is revoked); "
                    "its etcd member is wiped and the node goes back to standby", d.name,
                    js.cluster_name)
        leave(d)
        return True
    return False


def sync_crl(d: NodeDaemon, store: Store) -> None:
    """Write the cluster's revocation list (``pki/crl``) for this node's etcd member
    if it changed: at activation, and whenever the event hub sees it change."""
    try:
        kv = store.get(Keys.crl)
    except StoreError as exc:
        log.warning("could not read the revocation list: %s", exc.message)
        return
    if kv is not None and d.local.save_crl(kv.value.decode()):
        log.info("etcd's revocation list updated: %d certificate(s) revoked",
                 len(pki.crl_serials(kv.value.decode())))


def removed_while_away(d: NodeDaemon) -> bool:
    """The daemon cannot reach etcd: if another node says this one was removed (its
    certificate is revoked, so etcd cannot tell it), go back to standby.  Asked at
    most every 30 s: a partition fails the same way, and the question costs up to a
    timeout per unreachable node."""
    js = d.local.joined()
    if js is None or time.monotonic() - d.asked_if_removed < 30:
        return False
    d.asked_if_removed = time.monotonic()
    if not removed_per_api(d, js):
        return False
    log.warning("node %s was removed from cluster %s while away (its etcd certificate is "
                "revoked); back to standby", d.name, js.cluster_name)
    leave(d)
    return True


def removed_per_api(d: NodeDaemon, js: JoinedState) -> bool:
    """True if another node's API (its cluster certificate pinned) says this node is
    not part of the cluster.  Asked when no etcd member would answer: a node removed
    while it was down finds its etcd certificate revoked (haven.revocation), so etcd
    cannot tell it."""
    rpc = d.rpc()
    rpc.not_ready_patience = 0.0  # a node that is starting says nothing either way
    for ep in js.etcd_endpoints:
        host = urlsplit(ep if "//" in ep else f"//{ep}").hostname
        if not host or ep == d.settings.etcd_client_url or host == d.settings.address:
            continue
        try:
            rpc.call(host, d.settings.api_port, "GET", f"/2/nodes/{d.name}", timeout=1.0)
        except NotFoundError:
            return True
        except HavenError:
            continue
        return False
    return False


def _rejoin(d: NodeDaemon, other: EtcdStore, members: list[Any], mine: Any,
            cluster_id: int, why: str = "is not part of the cluster its peers serve; "
                                        "rejoining it as a fresh learner") -> None:
    s = d.settings
    log.warning("etcd member of %s %s", d.name, why)
    d.member.stop()
    if mine is None:
        mine, members = add_member(other, s.etcd_peer_url)
    conf = d.member.config()
    assert conf is not None
    initial = initial_cluster(members, mine.id, d.name)
    d.member.configure(replace(conf, initial_cluster=initial, initial_state="existing"),
                       wipe=True)
    d.member.start()
    d.member.remember_cluster_id(cluster_id)
    # A learner serves no reads: the daemon's store must know every voter, even one
    # that joined after this node did and is not in its cached list yet.
    voters = {m.client_urls[0] for m in members
              if m.client_urls and not m.is_learner and m.id != mine.id}
    js = d.local.joined()
    if js is not None and voters:
        d.use_etcd_endpoints(js, tuple(sorted(voters | {s.etcd_client_url})))
    # No wait for it: the daemon reaches the store through the other members, and a
    # new learner takes about 7 s to publish itself (etcd 3.4 retries that proposal).
    # The supervision pass restarts or rejoins it if it dies.
    node, rev = state.node_rev(other, d.name)
    other.cas(Keys.node(d.name), state.dumps(node.modified(
        time.time(), etcd_member_id=mine.id).to_json()), rev)


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
        d.use_certificate()
    return {"destroyed": name}
