"""``gnt-cluster master-failover`` on the target node: a voluntary handover of the
master role (and of the etcd vote with it), or, with ``--no-voting``, the recovery of
etcd from this node's member alone after the other members are lost for good."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from haven.daemon.membership import wait_master, write_client_config
from haven.daemon.role import HANDOVER_JOB_WAIT
from haven.errors import HavenError, NodeSetupError, OpExecError, OpPrereqError
from haven.master import quorum, state
from haven.model import ha
from haven.model.keys import ALIVE, HANDOVER, MASTER, Keys, store_prefix
from haven.store.errors import StoreError
from haven.store.etcd import EtcdStore

if TYPE_CHECKING:
    from haven.daemon.noded import NodeDaemon

log = logging.getLogger(__name__)

VOTE_WAIT = 30.0  # seconds master-failover waits for the etcd vote to follow the role


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
    try:
        node = state.node(joined.store, d.name)
    except StoreError as exc:
        raise NodeSetupError(
            f"Node {d.name} cannot reach a quorum of the cluster's etcd ({exc.message}); "
            f"the master's node is probably down. If it is down for good, run "
            f"'gnt-cluster master-failover --no-voting --yes-do-it' on {d.name}.") from exc
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
    result: dict[str, Any] = {"master": d.name, "changed": True, "previous": old}
    if not _wait_for_votes(d, VOTE_WAIT):
        result["warning"] = (f"the etcd vote has not moved to {d.name} yet; do not shut "
                             f"down {old} before 'gnt-cluster verify' is clean")
    write_client_config(d)
    return result


def _wait_for_votes(d: NodeDaemon, timeout: float) -> bool:
    """Wait until etcd's voters follow the quorum rules for the new master, so that the
    old master can be shut down as soon as the command returns (two-node clusters)."""
    joined = d.joined
    if joined is None or not joined.cluster.etcd_managed:
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            if quorum.settled(joined.store, d.name, state.nodes(joined.store)):
                return True
        except HavenError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def recover_alone(d: NodeDaemon) -> None:
    js = d.local.joined()
    if js is None:
        raise NodeSetupError(f"Node {d.name} is not part of a cluster.")
    if not js.etcd_member:
        raise OpPrereqError(f"Node {d.name} has no etcd member; --no-voting recovers a "
                            f"managed etcd from a master candidate's member.")
    learner = _own_member_is_learner(d)
    log.warning("recovering etcd from the %s of %s alone (--no-voting)",
                "learner copy" if learner else "member", d.name)
    with d._lock:
        d._deactivate(revoke=False)
        d.member.recover_alone(learner=learner)
        own = d.settings.etcd_client_url
        d.local.save_joined(replace(js, etcd_endpoints=(own,)))
        store = EtcdStore([own], store_prefix(js.cluster_name), tls=d.local.etcd_tls())
        try:
            d.member.remember_cluster_id(store.status(own)["cluster_id"])
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
            # The administrator says the other nodes are gone (--yes-do-it): their
            # leases, which the recovery restored and extended, end now, so that they
            # are seen down at once (gnt-node failover, gnt-instance list).
            kvs, _ = store.list(ALIVE)
            for kv in kvs:
                if kv.key != Keys.alive(d.name) and kv.lease:
                    with contextlib.suppress(StoreError):
                        store.lease_revoke(kv.lease)
                    store.delete(kv.key)
            # No lease expiry proved them fenced (a cut-off old master keeps its own
            # etcd, lease and VMs): nothing of theirs is recovered automatically; the
            # administrator fails them over by hand, as after Ganeti's --no-voting.
            now = time.time()
            for n in state.nodes(store):
                if n.name != d.name:
                    rec = ha.NodeHA(n.name, ha.MANUAL, now, now,
                                    f"declared gone by master-failover --no-voting on "
                                    f"{d.name}; fail its instances over by hand (gnt-node "
                                    f"failover --ignore-consistency {n.name})")
                    store.put(ha.node_key(n.name), state.dumps(rec.to_json()))
            # The old master is gone with its quorum: clear its key now instead of
            # waiting for its lease, restored by the recovery, to run out.
            store.delete(MASTER)
            store.delete(HANDOVER)
        finally:
            store.close()
    d.activate()


def _own_member_is_learner(d: NodeDaemon) -> bool:
    own = d.settings.etcd_client_url
    probe = EtcdStore([own], "", timeout=1.0, tls=d.local.etcd_tls())
    try:
        deadline = time.monotonic() + 10.0
        while True:
            try:
                return probe.status(own)["is_learner"]
            except StoreError:
                if time.monotonic() > deadline:
                    raise NodeSetupError(
                        f"The etcd member of {d.name} does not answer at {own}; see "
                        f"{d.member.log_path}.") from None
                d.member.start()
                time.sleep(0.2)
    finally:
        probe.close()
