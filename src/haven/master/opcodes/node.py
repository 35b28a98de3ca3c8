"""Node opcodes: add, remove, modify."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from typing import Any

from haven import pki, revocation
from haven.errors import (
    ExistsError,
    HavenError,
    InvalidInput,
    NodeSetupError,
    OpExecError,
    OpPrereqError,
)
from haven.master import quorum, state
from haven.master.lu import REQUIRED, LogicalUnit, register
from haven.model.keys import Keys
from haven.model.node import Node
from haven.store import members as members_mod
from haven.store.base import Member

log = logging.getLogger(__name__)

NODE_NAME = (str, REQUIRED)


def local_state(ctx: Any) -> Any:
    """The master daemon's LocalState (haven.daemon.localstate), which holds the
    cluster's keys; the master package does not import the daemon."""
    local = getattr(ctx.extras.get("daemon"), "local", None)
    if local is None:
        raise OpExecError("This master holds no cluster keys; run the job on a node "
                          "daemon.")
    return local


def push_crl(lu: LogicalUnit, crl: str) -> None:
    """Send the new revocation list to every node that is up, so that it holds when
    the job ends (each node's event hub also writes it, a moment later; one that is
    down reads it from etcd when its daemon starts)."""
    alive = state.alive(lu.c.store)
    for n in state.nodes(lu.c.store):
        if n.offline or n.name not in alive:
            continue
        try:
            lu.c.rpc.call(n.primary_ip, n.api_port, "POST", "/haven/node/redist",
                          {"crl_pem": crl})
        except HavenError as exc:
            lu.feedback(f"Node {n.name} did not take the revocation list now "
                        f"({exc.message}); it reads it from etcd")


def resolve(name: str) -> str:
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        raise OpPrereqError(f"Cannot resolve node name {name!r}; add it to DNS or "
                            f"/etc/hosts, or give its address with --primary-ip.",
                            "resolver_error") from exc


@register
class NodeAdd(LogicalUnit):
    """``gnt-node add``: the node's daemon must already run (in standby)."""

    OP_ID = "OP_NODE_ADD"
    PARAMS = {"node_name": NODE_NAME, "primary_ip": (str, ""), "secondary_ip": (str, ""),
              "master_capable": (bool, True), "vm_capable": (bool, True),
              "readd": (bool, False), "api_port": (int, 0), "group": (str, ""),
              "join_token": (str, "")}

    def lock_names(self) -> list[str]:
        return ["cluster-membership", f"node/{self.op['node_name']}"]

    def check_arguments(self) -> None:
        super().check_arguments()
        if self.op["join_token"]:
            pki.split_token(self.op["join_token"])

    def check_prereq(self) -> None:
        name = self.op["node_name"]
        if self.c.store.get(Keys.node(name)) is not None:
            raise ExistsError(f"Node {name} is already in the cluster; see gnt-node list.")
        if not self.op["join_token"]:
            raise OpPrereqError(
                f"Node {name} can join only with its join token: run 'haven join-token' "
                f"on {name} and pass what it prints with 'gnt-node add --join-token "
                f"TOKEN {name}'.", "wrong_input")
        ip = self.op["primary_ip"] or resolve(name)
        self.op["primary_ip"] = ip
        for n in state.nodes(self.c.store):
            if ip in (n.primary_ip, n.secondary_ip):
                raise ExistsError(f"Address {ip} of node {name} is already used by node "
                                  f"{n.name}.")
        cluster = self.cluster()
        self.port = self.op["api_port"] or cluster.api_port
        # The node's standby certificate must be the one its token names: the master
        # hands the cluster's keys only to the node the administrator read it from.
        self.pin = pki.split_token(self.op["join_token"])[1]
        info = self.c.rpc.call(ip, self.port, "GET", "/haven/node/info", timeout=5,
                               verify=self.pin)
        if info.get("name") != name:
            raise OpPrereqError(f"The daemon at {ip}:{self.port} is node "
                                f"{info.get('name')!r}, not {name!r}; check the address.")
        if info.get("cluster"):
            raise ExistsError(f"Node {name} already belongs to cluster {info['cluster']}; "
                              f"remove it there first.")

    def exec(self) -> Any:
        name, ip = self.op["node_name"], self.op["primary_ip"]
        cluster = self.cluster()
        guard = self.require_guard()
        now = self.c.clock()
        member = cluster.etcd_managed and self.op["master_capable"]
        node = Node(name=name, uuid=str(uuid.uuid4()), primary_ip=ip,
                    secondary_ip=self.op["secondary_ip"] or ip, api_port=self.port,
                    master_capable=self.op["master_capable"],
                    master_candidate=self.op["master_capable"],
                    vm_capable=self.op["vm_capable"],
                    etcd_client_url=f"https://{ip}:2379" if member else "",
                    etcd_peer_url=f"https://{ip}:2380" if member else "",
                    ctime=now, mtime=now)
        if self.c.store.create(Keys.node(name), state.dumps(node.to_json()), guard=guard) \
                is None:
            raise ExistsError(f"Node {name} was added concurrently.")
        member_id = 0
        # The votes are held from the member's addition until its vote is settled:
        # the new member starts from the member list its addition returned, and no
        # other change by the master may come in between.
        with self.c.votes:
            try:
                crypto = self._crypto(name, ip, cluster.etcd_managed)
                if "etcd_cert" in crypto:  # recorded first: revoked with the node
                    revocation.record_issued(self.c.store, name, crypto["etcd_cert"],
                                             guard)
                join: dict[str, Any] = {
                    "cluster_name": cluster.name, "etcd_managed": cluster.etcd_managed,
                    "etcd_endpoints": self._endpoints(cluster), "node_uuid": node.uuid,
                    "member": None, "join_token": self.op["join_token"],
                    "crypto": crypto}
                if member:
                    self.feedback(f"Adding etcd member for {name}")
                    new, members = self._add_member(node.etcd_peer_url)
                    member_id = new.id
                    join["member"] = {
                        "initial_cluster": members_mod.initial_cluster(members, new.id,
                                                                       name),
                        "token": self._token()}
                self.feedback(f"Joining node {name} at {ip}")
                self.c.rpc.call(ip, self.port, "POST", "/haven/node/join", join,
                                timeout=60, verify=self.pin)
                if member_id:
                    self._apply_quorum_rules()
            except HavenError:
                self._rollback(name, member_id)
                raise
        if member_id:
            cur, rev = state.node_rev(self.c.store, name)
            self.c.store.cas(Keys.node(name), state.dumps(
                cur.modified(self.c.clock(), etcd_member_id=member_id).to_json()), rev,
                guard=self.require_guard())
        return {"node": name, "etcd_member": f"{member_id:x}" if member_id else None}

    def _add_member(self, peer_url: str) -> tuple[Member, list[Member]]:
        """``member add``, first promoting what the quorum rules now want to vote (a
        two-node cluster's learner, once a third candidate is recorded): etcd 3.4 takes
        one learner at a time, and the runner leaves the votes to this job while it
        holds them.  A node whose member rejoins as a learner by itself takes that
        place too; it is promoted once it runs, and the addition is tried again."""
        deadline = self.c.clock() + 60.0
        while True:
            self._promote()
            try:
                return members_mod.add_member(self.c.etcd_admin, peer_url, timeout=2.0)
            except NodeSetupError:
                if self.c.clock() > deadline:
                    raise

    def _promote(self) -> None:
        while True:
            step = quorum.reconcile(self.c.etcd_admin, self.c.master_node,
                                    state.nodes(self.c.store), promote_timeout=10.0,
                                    demote=False)
            if not step.changed:
                return
            self.feedback(step.summary[0].upper() + step.summary[1:])

    def _apply_quorum_rules(self) -> None:
        """Give votes as ``master/quorum.py`` wants them with the new candidate: with
        three or more, every candidate votes (the new member and a two-node cluster's
        learner are promoted); with two, the new member stays a learner."""
        assert self.c.etcd_admin is not None
        deadline = self.c.clock() + 60.0
        while True:
            step = quorum.reconcile(self.c.etcd_admin, self.c.master_node,
                                    state.nodes(self.c.store), promote_timeout=20.0)
            if step.settled:
                return
            self.feedback(step.summary[0].upper() + step.summary[1:])
            if self.c.clock() > deadline:
                raise OpExecError(f"etcd's votes did not settle: {step.summary}; see "
                                  f"'gnt-cluster verify'.")

    def _endpoints(self, cluster: Any) -> list[str]:
        if not cluster.etcd_managed:
            return list(cluster.etcd_endpoints)
        urls = [n.etcd_client_url for n in state.nodes(self.c.store) if n.etcd_client_url]
        return sorted(set(urls))

    def _crypto(self, name: str, ip: str, etcd_cert: bool) -> dict[str, str]:
        """The cluster's keys from the master's own files (never from etcd), and a
        certificate from the cluster CA for the new node's etcd connections."""
        out: dict[str, str] = dict(local_state(self.c).key_bundle())
        if etcd_cert:
            pair = pki.node_certificate(pki.KeyPair(out["ca_pem"], out["ca_key"]), name,
                                        ip, self.op["secondary_ip"] or ip)
            out.update(etcd_cert=pair.cert_pem, etcd_key=pair.key_pem)
        return out

    def _token(self) -> str:
        daemon = self.c.extras.get("daemon")
        conf = daemon.member.config() if daemon is not None else None
        return conf.cluster_token if conf else "haven"

    def _rollback(self, name: str, member_id: int) -> None:
        if member_id:
            try:
                members_mod.remove_member(self.c.etcd_admin, member_id, timeout=10)
            except HavenError as exc:
                self.feedback(f"Could not remove the etcd member again: {exc.message}")
        self.c.store.delete(Keys.node(name), guard=self.c.guard())


@register
class NodeRemove(LogicalUnit):
    OP_ID = "OP_NODE_REMOVE"
    PARAMS = {"node_name": NODE_NAME}

    def lock_names(self) -> list[str]:
        return ["cluster-membership", f"node/{self.op['node_name']}"]

    def check_prereq(self) -> None:
        name = self.op["node_name"]
        self.target = self.node(name)
        master = state.master(self.c.store)
        self.master_member = self.node(master).etcd_member_id if master else 0
        if name == master:
            raise OpPrereqError(f"Node {name} is the master and cannot be removed; move "
                                f"the master role first with 'gnt-cluster "
                                f"master-failover' on another node.")
        nodes = state.nodes(self.c.store)
        if self.target.master_candidate and \
                sum(1 for n in nodes if n.master_candidate) <= 1:
            raise OpPrereqError(f"Node {name} is the last master candidate.")

    def exec(self) -> Any:
        name = self.target.name
        alive = name in state.alive(self.c.store)
        guard = self.require_guard()
        # The node's record goes first: once its etcd member is removed, its etcd exits
        # and its daemon asks the others whether it still belongs; without a record it
        # goes to standby instead of rejoining as a fresh learner under the removal.
        record = self.c.store.get(Keys.node(name))
        self.c.store.delete(Keys.node(name), guard=guard)
        if self.target.etcd_member_id and self.c.etcd_admin is not None:
            self.feedback(f"Removing etcd member {self.target.etcd_member_id:x} of {name}")
            try:
                with self.c.votes:
                    members_mod.remove_member(self.c.etcd_admin,
                                              self.target.etcd_member_id,
                                              prefer_not=self.master_member)
            except BaseException:
                if record is not None:  # as it was: the node is still a member
                    self.c.store.put(Keys.node(name), record.value, guard=guard)
                raise
        if alive:
            try:
                self.c.rpc.call(self.target.primary_ip, self.target.api_port, "POST",
                                "/haven/node/leave", timeout=30)
            except HavenError as exc:
                if "not part of a cluster" in exc.message:
                    self.feedback(f"Node {name} already went back to standby")
                else:
                    self.feedback(f"Node {name} did not answer ({exc.message}); when "
                                  f"it returns it finds itself removed and goes back to "
                                  f"standby")
        else:
            self.feedback(f"Node {name} is down; it is removed from the configuration "
                          f"only")
        for key in (Keys.facts(name), Keys.alive(name)):
            self.c.store.delete(key, guard=guard)
        self._revoke(name, guard)
        return {"node": name, "removed": True}

    def _revoke(self, name: str, guard: Any) -> None:
        """Revoke every etcd certificate issued to the removed node: a copy of its
        certificate no longer opens etcd."""
        try:
            serials = revocation.issued(self.c.store, name)
            if not serials:
                return
            ca = local_state(self.c).ca()
            crl = revocation.revoke(self.c.store, ca, serials, guard)
            self.c.store.delete(Keys.issued(name), guard=guard)
        except HavenError as exc:
            # The node is removed already: the job says what is left to do, it does
            # not fail for it.
            self.feedback(f"Could not revoke the etcd certificates of {name} "
                          f"({exc.message}); run 'gnt-cluster renew-crypto "
                          f"--new-node-certificates' to revoke every old one")
            return
        push_crl(self, crl)
        self.feedback(f"Revoked {len(serials)} etcd certificate(s) of {name}")


@register
class NodeSetParams(LogicalUnit):
    """``gnt-node modify``: -C (master candidate), -D (drained), -O (offline),
    --master-capable, --vm-capable."""

    OP_ID = "OP_NODE_SET_PARAMS"
    PARAMS = {"node_name": NODE_NAME, "master_candidate": ((bool, type(None)), None),
              "drained": ((bool, type(None)), None), "offline": ((bool, type(None)), None),
              "master_capable": ((bool, type(None)), None),
              "vm_capable": ((bool, type(None)), None), "force": (bool, False),
              "auto_promote": (bool, False), "fence_agent": ((str, type(None)), None),
              "fence_params": ((dict, type(None)), None)}
    FLAGS = ("master_candidate", "drained", "offline", "master_capable", "vm_capable",
             "fence_agent", "fence_params")

    def check_arguments(self) -> None:
        super().check_arguments()
        changes = {k: self.op[k] for k in self.FLAGS if self.op[k] is not None}
        if not changes:
            raise InvalidInput("Please give at least one of the parameters to change "
                               "(-C, -D, -O, --master-capable, --vm-capable, "
                               "--fence-agent).")
        if "fence_params" in changes and "fence_agent" not in changes:
            raise InvalidInput(f"--fence-param for node {self.op['node_name']} needs "
                               f"--fence-agent too (the parameters are the agent's).")
        if "fence_agent" in changes:
            from haven.fence import agents

            changes.setdefault("fence_params", {})
            agents.validate(self.op["node_name"], changes["fence_agent"],
                            changes["fence_params"])
        if sum(1 for k in ("master_candidate", "drained", "offline")
               if changes.get(k) is True) > 1:
            raise InvalidInput("A node can be only one of master candidate, drained or "
                               "offline.")
        self.changes = changes

    def lock_names(self) -> list[str]:
        return [f"node/{self.op['node_name']}"]

    def check_prereq(self) -> None:
        name = self.op["node_name"]
        self.target = self.node(name)
        master = state.master(self.c.store)
        self._check_fence_agent(name, master)
        demote = self.changes.get("master_candidate") is False or \
            self.changes.get("offline") is True or self.changes.get("drained") is True \
            or self.changes.get("master_capable") is False
        if name == master and demote:
            raise OpPrereqError(f"Node {name} is the master; move the master role first "
                                f"with 'gnt-cluster master-failover' on another node.")
        if self.changes.get("master_candidate") and not self.target.master_capable and \
                not self.changes.get("master_capable"):
            raise OpPrereqError(f"Node {name} is not master capable; set "
                                f"--master-capable=yes first.")
        if self.changes.get("master_candidate") and not self.target.etcd_peer_url and \
                self.cluster().etcd_managed:
            raise OpPrereqError(f"Node {name} has no etcd member; only nodes added with "
                                f"--master-capable=yes can be master candidates.")

    def _check_fence_agent(self, name: str, master: str | None) -> None:
        """The agent must be runnable where agents run: on the master."""
        from haven.fence import agents

        agent = self.changes.get("fence_agent") or ""
        if agent.startswith("fence_") and agents.find(agent) is None:
            raise OpPrereqError(f"Fence agent {agent} for node {name} is not installed on "
                                f"the master {master}; install Debian's fence-agents on "
                                f"every master candidate.")
        if agent == agents.LOCAL and agents.local_base(self.c.extras.get("daemon")) is None:
            raise OpPrereqError(f"The {agents.LOCAL} fence agent for node {name} works only "
                                f"in a local cluster made by haven up.")

    def exec(self) -> Any:
        ch = dict(self.changes)
        # Ganeti: making a node offline or drained also removes its candidacy.
        if ch.get("offline") or ch.get("drained") or ch.get("master_capable") is False:
            ch["master_candidate"] = False
        if ch.get("master_candidate"):
            ch.setdefault("offline", False)
            ch.setdefault("drained", False)
        guard = self.require_guard()
        cur, rev = state.node_rev(self.c.store, self.target.name)
        first = cur
        for _attempt in range(3):
            new = cur.modified(self.c.clock(), **ch)
            if self.c.store.cas(Keys.node(cur.name), state.dumps(new.to_json()), rev,
                                guard=guard) is not None:
                break
            # Another field of the record changed meanwhile (the node's etcd member id
            # after a rejoin, its tags): these flags apply on top of it.
            prev = cur
            cur, rev = state.node_rev(self.c.store, self.target.name)
            log.info("node %s changed under a modify (%s); applying the change again",
                     cur.name, ", ".join(k for k, v in cur.to_json().items()
                                         if prev.to_json().get(k) != v) or "same fields")
        else:
            raise NodeSetupError(f"Node {cur.name} changed concurrently three times; "
                                 f"retry.")
        cur = first
        # Never echo the parameters back: they hold the BMC's password.
        return [[k, "(set)" if k == "fence_params" else v] for k, v in ch.items()
                if getattr(cur, k) != v]


__all__ = ["NodeAdd", "NodeRemove", "NodeSetParams", "time"]
