"""Cluster-wide opcodes: test delay, verify, redistribute config."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from haven import pki, revocation
from haven.errors import HavenError, OpExecError, OpPrereqError
from haven.master import locks, quorum, state
from haven.master.lu import LogicalUnit, register
from haven.master.opcodes.node import local_state, push_crl
from haven.model.job import JobStatus
from haven.model.keys import Keys


@register
class TestDelay(LogicalUnit):
    """``gnt-debug delay``: sleep on the master; the trivial job of latency benchmarks."""

    OP_ID = "OP_TEST_DELAY"
    RESUMABLE = True
    PARAMS = {"duration": (float, 0.0), "on_master": (bool, True),
              "on_nodes": (list, []), "repeat": (int, 0), "no_locks": (bool, True),
              "no_resume": (bool, False)}

    @classmethod
    def resumable(cls, op: dict[str, Any]) -> bool:
        # ``no_resume`` lets tests see how a master takeover fails a job that is not
        # safe to repeat.
        return not op.get("no_resume", False)

    def check_arguments(self) -> None:
        super().check_arguments()
        if not 0 <= self.op["duration"] <= 3600:
            from haven.errors import InvalidInput
            raise InvalidInput(f"Delay {self.op['duration']} s is out of range (0-3600).")

    def exec(self) -> Any:
        if self.op["duration"] > 0:
            end = time.monotonic() + self.op["duration"]
            while time.monotonic() < end:
                time.sleep(min(0.1, end - time.monotonic()))
                self.require_guard()
        return None


@register
class ClusterVerify(LogicalUnit):
    """``gnt-cluster verify``: checks configuration against what is observed.

    Returns ``{"ok": bool, "errors": [...], "warnings": [...], "checked": [...]}``;
    each message names the object it is about and, where there is one, the fix.
    """

    OP_ID = "OP_CLUSTER_VERIFY"
    PARAMS = {"skip_checks": (list, []), "error_codes": (bool, False),
              "verbose": (bool, False), "debug_simulate_errors": (bool, False),
              "ignore_errors": (list, [])}

    def exec(self) -> Any:
        store = self.c.store
        errors: list[str] = []
        warnings: list[str] = []
        checked: list[str] = []
        cluster = state.cluster(store)
        nodes = state.nodes(store)
        facts = state.facts(store)
        alive = state.alive(store)
        master = state.master(store)
        now = self.c.clock()
        checked.append(f"cluster {cluster.name}: {len(nodes)} node(s), master {master}")
        if master is None:
            errors.append("cluster: no master is elected; check that a master candidate "
                          "runs haven-noded")
        for n in nodes:
            if n.offline:
                warnings.append(f"node {n.name}: marked offline, not checked")
                continue
            if n.name not in alive:
                errors.append(f"node {n.name}: its daemon holds no lease (down or cut "
                              f"off); start it with 'haven start {n.name}' or mark it "
                              f"offline with 'gnt-node modify -O yes {n.name}'")
                continue
            f = facts.get(n.name)
            if f is None or now - f.updated > 60:
                warnings.append(f"node {n.name}: facts are stale or missing")
            elif f.version != facts.get(master or "", f).version:
                warnings.append(f"node {n.name}: runs Haven {f.version}, the master "
                                f"runs {facts[master or ''].version}")
            if f is not None and f.storage_free < 1024:
                warnings.append(f"node {n.name}: less than 1 GiB free storage")
            checked.append(f"node {n.name}: alive")
        candidates = [n for n in nodes if n.master_candidate and not n.offline]
        if not candidates:
            errors.append("cluster: no master candidate; make one with "
                          "'gnt-node modify -C yes NODE'")
        if cluster.etcd_managed and self.c.etcd_admin is not None:
            self._verify_etcd(nodes, errors, warnings, checked)
        if cluster.etcd_managed:
            voting = [n for n in nodes if n.master_candidate and n.etcd_peer_url]
            witnesses = sum(1 for n in voting if not n.vm_capable)
            checked.append(quorum.mode(len(voting), witnesses))
            if self.c.etcd_admin is not None and master is not None and \
                    not quorum.settled(self.c.etcd_admin, master, nodes):
                warnings.append("etcd: the voters do not follow the quorum rules yet; the "
                                "master is moving the votes")
        elif len(candidates) > 1:
            checked.append("quorum: external etcd; its own quorum applies")
        held = locks.held(store)
        if held:
            from haven.master import jobqueue
            for name, job_id in held.items():
                try:
                    job, _ = jobqueue.read(store, job_id)
                    if job.status.finalized:
                        errors.append(f"lock {name}: held by finished job {job_id}")
                except HavenError:
                    errors.append(f"lock {name}: held by missing job {job_id}")
        from haven.master import jobqueue
        from haven.master.opcodes.instance_migrate import migrations_in_progress

        for name, rec in migrations_in_progress(store).items():
            errors.append(f"instance {name}: a migration from {rec.get('source')} to "
                          f"{rec.get('target')} was interrupted ({rec.get('step')}); finish "
                          f"it with 'gnt-instance migrate --cleanup {name}'")
        _verify_instances(store, set(alive), set(held), now, errors)
        for j in jobqueue.list_jobs(store):
            if j.status == JobStatus.RUNNING and j.master and j.master != master:
                errors.append(f"job {j.id}: still marked running by former master "
                              f"{j.master}; fail over the master role to adopt it")
        # Ganeti's ENODEN1 is an error (a node whose loss the others cannot absorb),
        # skipped with skip_checks nplusone_mem, a warning with ignore_errors ENODEN1.
        if "nplusone_mem" not in self.op["skip_checks"]:
            from haven.master import allocator, iallocator

            n1 = allocator.n1_failures(iallocator.read_model(store))
            (warnings if "ENODEN1" in self.op["ignore_errors"] else errors).extend(n1)
            checked.append("N+1 memory: every node's failover fits on the others"
                           if not n1 else f"N+1 memory: {len(n1)} failover(s) would not fit")
        return {"ok": not errors, "errors": errors, "warnings": warnings,
                "checked": checked}

    def _verify_etcd(self, nodes: list[Any], errors: list[str], warnings: list[str],
                     checked: list[str]) -> None:
        admin = self.c.etcd_admin
        try:
            members = admin.member_list()
        except HavenError as exc:
            errors.append(f"etcd: cannot list members: {exc.message}")
            return
        by_peer = {m.peer_urls[0]: m for m in members if m.peer_urls}
        for n in nodes:
            if n.etcd_peer_url and n.etcd_peer_url not in by_peer and n.master_candidate:
                errors.append(f"node {n.name}: its etcd member is not in the cluster; it "
                              f"rejoins when its daemon restarts ('haven start {n.name}')")
        known = {n.etcd_peer_url for n in nodes}
        for peer, m in by_peer.items():
            if peer not in known:
                warnings.append(f"etcd: member {m.name or hex(m.id)} ({peer}) belongs to "
                                f"no node")
        for m in members:
            url = m.client_urls[0] if m.client_urls else None
            if url is None:
                errors.append(f"etcd: member {m.name or hex(m.id)} has not started")
                continue
            try:
                st = admin.status(url)
                size = st["db_size"]
                if size > 1024**3:
                    warnings.append(f"etcd: member {m.name} database is {size >> 20} MiB")
                checked.append(f"etcd member {m.name}: healthy")
            except HavenError as exc:
                if m.is_learner:
                    # A member that has just (re)joined takes seconds to publish itself.
                    warnings.append(f"etcd: learner {m.name} does not answer yet (it may "
                                    f"still be joining): {exc.message}")
                else:
                    errors.append(f"etcd: member {m.name} does not answer: {exc.message}")
        try:
            alarms = admin.alarm_list()
        except HavenError:
            alarms = []
        for alarm in alarms:
            errors.append(f"etcd: alarm {alarm}; the database must be compacted, "
                          f"defragmented and the alarm disarmed")


@register
class RedistConf(LogicalUnit):
    """``gnt-cluster redist-conf``: every node re-caches what it keeps from the store."""

    OP_ID = "OP_CLUSTER_REDIST_CONF"
    RESUMABLE = True

    def exec(self) -> Any:
        report: dict[str, Any] = {}
        alive = state.alive(self.c.store)
        # As Ganeti's: the master's RAPI users file goes to every node (if it has one).
        body: dict[str, Any] = {}
        try:
            me = self.node(self.c.master_node)
            users = self.c.rpc.call(me.primary_ip, me.api_port, "GET",
                                    "/haven/node/rapi-users").get("text")
            if isinstance(users, str):
                body["rapi_users"] = users
        except HavenError as exc:
            self.feedback(f"Could not read the master's RAPI users file: {exc.message}")
        body["keys"] = local_state(self.c).key_bundle()
        for n in state.nodes(self.c.store):
            if n.offline or n.name not in alive:
                report[n.name] = "skipped: node is offline or down"
                self.feedback(f"Skipping node {n.name}: offline or down")
                continue
            try:
                res = self.c.rpc.call(n.primary_ip, n.api_port, "POST", "/haven/node/redist",
                                      body)
                written = res.get("written", [])
                report[n.name] = written
                self.feedback(f"Node {n.name}: {len(written)} file(s) updated")
            except HavenError as exc:
                report[n.name] = f"failed: {exc.message}"
                self.feedback(f"Node {n.name}: failed: {exc.message}")
        return report


DOWN_FOR = 60.0  # an instance down this long on a live primary is an error


def _verify_instances(store: Any, alive: set[str], held: set[str], now: float,
                      errors: list[str]) -> None:
    """Ganeti's EINSTANCEDOWN: an instance that should run and does not.  One its
    node's agent gave up on at once; one merely down only after ``DOWN_FOR`` s (a
    restart or a recovery under way is not an error).  A primary that is down is
    reported with its node, a locked instance is a job's."""
    observed = state.all_observed(store)
    for inst in state.instances(store).values():
        if inst.admin_state != "up" or inst.primary_node not in alive \
                or f"instance/{inst.name}" in held:
            continue
        obs = observed.get(inst.name)
        mine = obs is not None and obs.node == inst.primary_node
        if mine and obs is not None and obs.state == "failed":
            errors.append(f"instance {inst.name}: not running on {inst.primary_node}; its "
                          f"agent gave up after {obs.restarts} automatic restarts (see "
                          f"haven events); start it with 'gnt-instance startup "
                          f"{inst.name}'")
        elif not mine or obs is None or obs.state not in ("running", "user_down"):
            since = obs.since if mine and obs is not None else 0.0
            if since and now - since > DOWN_FOR:
                errors.append(f"instance {inst.name}: should run on {inst.primary_node} "
                              f"and has not for {now - since:.0f} s (see haven events)")


@register
class RenewCrypto(LogicalUnit):
    """``gnt-cluster renew-crypto``.

    ``--new-cluster-certificate`` (``--new-rapi-certificate`` is the same: one API
    serves Ganeti's noded and RAPI roles): a new self-signed cluster certificate, which
    every node's API serves and every client pins.  It goes into etcd first (the nodes'
    client configs are made from it), then to every other node, the master last: each
    node is called while it still serves the old one, and swaps its live TLS context.

    ``--new-node-certificates``: every node's certificate for etcd (its member's server
    and peer identity, its daemon's client identity) is issued again by the cluster CA
    and sent to the node.  etcd reads its certificate files at every TLS handshake, so
    members serve the new ones at once, without a restart; a node daemon loads its new
    one into its open TLS contexts, so that its next connections present it.  Then the
    old certificates are revoked (haven.revocation): a copy of one no longer opens etcd.

    Every node must be up: one that missed a renewal would keep an old certificate."""

    OP_ID = "OP_CLUSTER_RENEW_CRYPTO"
    PARAMS = {"node_certificates": (bool, False), "cluster_certificate": (bool, False)}

    def lock_names(self) -> list[str]:
        return ["cluster-membership"]

    def check_prereq(self) -> None:
        if not (self.op["node_certificates"] or self.op["cluster_certificate"]):
            raise OpPrereqError("Nothing to renew: give --new-node-certificates or "
                                "--new-cluster-certificate.", "wrong_input")
        if self.op["node_certificates"] and not self.cluster().etcd_managed:
            raise OpPrereqError("This cluster uses an external etcd: its certificates are "
                                "not Haven's to renew.", "wrong_input")
        alive = state.alive(self.c.store)
        down = [n.name for n in state.nodes(self.c.store)
                if n.offline or n.name not in alive]
        if down:
            raise OpPrereqError(f"Node(s) {', '.join(sorted(down))} are down or offline; "
                                f"renew when every node is up, or remove them first.",
                                "wrong_state")

    def exec(self) -> Any:
        report: dict[str, Any] = {}
        if self.op["node_certificates"]:
            report = self._node_certificates()
        if self.op["cluster_certificate"]:
            for node, written in self._cluster_certificate().items():
                report[node] = sorted(set(report.get(node, [])) | set(written))
        return report

    def _cluster_certificate(self) -> dict[str, Any]:
        guard = self.require_guard()
        cluster, rev = state.cluster_rev(self.c.store)
        pair = pki.self_signed(cluster.name)
        if self.c.store.cas(Keys.cluster, state.dumps(replace(
                cluster, cert_pem=pair.cert_pem, mtime=self.c.clock()).to_json()), rev,
                guard=guard) is None:
            raise OpExecError("The cluster configuration changed during the renewal; run "
                              "it again.")
        bundle = {**local_state(self.c).key_bundle(), "cert_pem": pair.cert_pem,
                  "key_pem": pair.key_pem}
        master = self.c.master_node
        report: dict[str, Any] = {}
        for n in sorted(state.nodes(self.c.store), key=lambda n: n.name == master):
            res = self.c.rpc.call(n.primary_ip, n.api_port, "POST", "/haven/node/redist",
                                  {"keys": bundle})
            report[n.name] = res.get("written", [])
            self.feedback(f"Node {n.name}: serves the new cluster certificate "
                          f"{pki.fingerprint(pair.cert_pem)[:23]}...")
        return report

    def _node_certificates(self) -> dict[str, Any]:
        bundle = local_state(self.c).key_bundle()
        ca = pki.KeyPair(bundle["ca_pem"], bundle["ca_key"])
        guard = self.require_guard()
        report: dict[str, Any] = {}
        old: set[int] = set()
        nodes = state.nodes(self.c.store)
        for n in nodes:
            pair = pki.node_certificate(ca, n.name, n.primary_ip, n.secondary_ip)
            # Recorded before it is sent: a certificate is never out there unrecorded.
            revocation.record_issued(self.c.store, n.name, pair.cert_pem, guard)
            body = {"keys": {**bundle, "etcd_cert": pair.cert_pem, "etcd_key": pair.key_pem}}
            res = self.c.rpc.call(n.primary_ip, n.api_port, "POST", "/haven/node/redist",
                                  body)
            new = pki.serial(pair.cert_pem)
            replaced = {int(res["replaced"], 16)} if res.get("replaced") else set()
            old |= (revocation.issued(self.c.store, n.name) | replaced) - {new}
            revocation.record_issued(self.c.store, n.name, pair.cert_pem, guard,
                                     replace=True)
            report[n.name] = res.get("written", [])
            self.feedback(f"Node {n.name}: new etcd certificate "
                          f"{pki.fingerprint(pair.cert_pem)[:23]}...")
        # Certificates of nodes that are gone (a removal that could not revoke them).
        gone = revocation.orphans(self.c.store, {n.name for n in nodes})
        old |= {s for serials in gone.values() for s in serials}
        if old:
            # When the command returns, no etcd member accepts an old certificate.
            push_crl(self, revocation.revoke(self.c.store, ca, old, guard))
            self.feedback(f"Revoked {len(old)} old etcd certificate(s)")
        for name in gone:
            self.c.store.delete(Keys.issued(name), guard=guard)
        return report
