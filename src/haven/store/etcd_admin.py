"""Cluster membership and maintenance calls of :class:`haven.store.etcd.EtcdStore`
(managed etcd): members listed, added, promoted and removed, one member's status,
leadership transfer, alarms and defragmentation."""

from __future__ import annotations

from collections.abc import Sequence

from haven.store.base import Member
from haven.store.etcd_transport import _EtcdTransport
from haven.store.etcd_wire import Alarm, Alarms, EndpointStatus, _int, _member

Members = list[Member]  # an alias: inside EtcdStore, ``list`` is the method


class _EtcdAdmin(_EtcdTransport):
    """The membership and maintenance RPCs, over :class:`_EtcdTransport`."""

    # -- cluster membership and maintenance (managed etcd) -------------------------
    def member_list(self) -> Members:
        """The members as the answering member knows them (not linearizable in 3.4)."""
        data = self._post("/v3/cluster/member/list", {}, idempotent=True)
        return [_member(d) for d in data.get("members") or []]

    def member_add(self, peer_urls: Sequence[str],
                   is_learner: bool = False) -> tuple[Member, Members]:
        """Add a member; returns it and the new member list.  Never resent.

        etcd refuses this for a few seconds after a join ("unhealthy cluster"): that
        raises :class:`StoreUnavailable`, and the caller retries.
        """
        data = self._post("/v3/cluster/member/add",
                          {"peerURLs": list(peer_urls), "isLearner": is_learner},
                          idempotent=False)
        return (_member(data.get("member") or {}),
                [_member(d) for d in data.get("members") or []])

    def member_promote(self, member_id: int) -> Members:
        """Make a learner a voting member (once it has caught up).  Never resent."""
        data = self._post("/v3/cluster/member/promote", {"ID": str(member_id)},
                          idempotent=False)
        return [_member(d) for d in data.get("members") or []]

    def member_remove(self, member_id: int) -> Members:
        """Remove a member; returns the remaining members.  Never resent."""
        data = self._post("/v3/cluster/member/remove", {"ID": str(member_id)},
                          idempotent=False)
        return [_member(d) for d in data.get("members") or []]

    def status(self, endpoint: str) -> EndpointStatus:
        """That one member's view: its leader (0 if none), raft term/index, db size."""
        d = self._post_one(endpoint, "/v3/maintenance/status", {}, self._timeout)
        return EndpointStatus(
            endpoint=endpoint, version=str(d.get("version", "")),
            cluster_id=_int(d.get("header", {}).get("cluster_id")),
            member_id=_int(d.get("header", {}).get("member_id")),
            leader=_int(d.get("leader")), raft_term=_int(d.get("raftTerm")),
            raft_index=_int(d.get("raftIndex")), db_size=_int(d.get("dbSize")),
            db_size_in_use=_int(d.get("dbSizeInUse")),
            is_learner=bool(d.get("isLearner", False)),
            errors=[str(e) for e in d.get("errors") or []])

    def move_leader(self, leader_endpoint: str, target_id: int) -> None:
        """Hand raft leadership to member ``target_id``; sent to the current leader."""
        self._post_one(leader_endpoint, "/v3/maintenance/transfer-leadership",
                       {"targetID": str(target_id)}, max(self._timeout, 5.0))

    def alarm_list(self) -> Alarms:
        """Raised alarms (``NOSPACE`` makes the cluster read-only)."""
        data = self._post("/v3/maintenance/alarm", {"action": "GET"}, idempotent=True)
        return [Alarm(_int(a.get("memberID")), str(a.get("alarm", "NONE")))
                for a in data.get("alarms") or []]

    def defragment(self, endpoint: str) -> None:
        """Defragment one member (it blocks that member while it runs)."""
        self._post_one(endpoint, "/v3/maintenance/defragment", {}, max(self._timeout, 60.0))
