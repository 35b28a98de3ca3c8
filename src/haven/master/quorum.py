"""Who votes in etcd: the cluster's quorum rules.

- **Three or more master candidates**: every candidate's etcd member votes; a majority
  is quorum, so any single loss is survived (a vote-only *witness*, a master candidate
  with ``--vm-capable=no``, makes two VM nodes such a cluster).
- **One or two master candidates** (Ganeti's two-node deployment): only the master's
  member votes; the other candidate's member is a *learner*, a full copy of the store
  that does not count for quorum.  Losing the non-master, at any time, costs nothing;
  ``gnt-cluster master-failover`` moves the vote with the role (the new master's member
  is promoted, then the old one is removed and rejoins as a learner), so the old master
  can then be shut down; the unplanned loss of the master is recovered by hand with
  ``--no-voting`` from the learner's copy, as in Ganeti.  Two voters would be strictly
  worse: losing *either* node would stop every write.

Why not two voters plus something clever: etcd 3.4 has no weighted votes and no way to
demote a voter in place; a learner cannot be recovered with ``--force-new-cluster``
(etcd panics: "removed all voters"), which is why ``--no-voting`` restores a learner
from its database snapshot instead (see ``daemon/etcd_member.py``).

:func:`plan` is pure: one :class:`QuorumView` in, at most one :class:`VoteChange` out.
Promotions come before demotions, so the number of voters never drops below what the
rules want while a change is under way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from haven.errors import HavenError
from haven.model.node import Node
from haven.store import members as members_mod
from haven.store.base import Member
from haven.store.etcd import EtcdStore

MAJORITY_FROM = 3  # candidates from which every candidate votes


@dataclass(frozen=True)
class MemberView:
    """One etcd member, named after the node whose peer URL it has."""

    node: str
    member_id: int
    voter: bool
    started: bool
    healthy: bool = True  # answers its status with a leader


@dataclass(frozen=True)
class QuorumView:
    master: str
    candidates: frozenset[str]  # master candidates that have an etcd member
    members: tuple[MemberView, ...]


@dataclass(frozen=True)
class VoteChange:
    kind: str  # "promote" or "demote"
    node: str
    member_id: int

    def describe(self) -> str:
        if self.kind == "promote":
            return f"promoting the etcd member of {self.node} to a voter"
        return f"removing the vote of {self.node} (its member rejoins as a learner)"


def desired_voters(master: str, candidates: frozenset[str]) -> frozenset[str]:
    """The nodes whose members should vote."""
    if len(candidates) >= MAJORITY_FROM:
        return candidates
    return frozenset({master})


def plan(v: QuorumView) -> VoteChange | None:
    """The next membership change, or ``None`` when the voters are as they should be."""
    by_node = {m.node: m for m in v.members}
    if v.master not in by_node:
        return None  # external etcd, or a master without a member: nothing to steer
    want = desired_voters(v.master, v.candidates)
    for name in sorted(want):
        m = by_node.get(name)
        if m is not None and not m.voter and m.started:
            return VoteChange("promote", name, m.member_id)
    if not by_node[v.master].voter:
        return None  # never take a vote away before the master's own member has one
    for m in sorted(v.members, key=lambda m: m.node):
        # Removing a voter while another one is down can cost the quorum (three voters,
        # one dead, one removed: one of two left), so every other voter must answer.
        if m.voter and m.node not in want and m.node != v.master and \
                all(o.healthy for o in v.members if o.voter and o is not m):
            return VoteChange("demote", m.node, m.member_id)
    return None


def mode(candidates: int, witnesses: int) -> str:
    """One sentence for ``gnt-cluster verify``: which kind of quorum this cluster has."""
    if candidates <= 1:
        return ("quorum: a single master candidate; its loss stops the cluster until it "
                "returns")
    if candidates == 2:
        return ("quorum: two master candidates, only the master's etcd member votes; the "
                "other node may be lost at any time, the master after 'gnt-cluster "
                "master-failover'; an unplanned loss of the master is recovered with "
                "'gnt-cluster master-failover --no-voting --yes-do-it' on the other "
                "(add a witness, 'gnt-node add --master-capable=yes --vm-capable=no', to "
                "survive any single loss by itself)")
    tolerated = (candidates - 1) // 2
    extra = f", {witnesses} of them vote-only witness(es)" if witnesses else ""
    return (f"quorum: majority of {candidates} etcd voters{extra}; {tolerated} node "
            f"loss(es) survived by themselves")


def view_of(master: str, nodes: list[Node], members: list[Member],
            healthy: Callable[[Member], bool] = lambda _m: True) -> QuorumView:
    by_peer = {n.etcd_peer_url: n.name for n in nodes if n.etcd_peer_url}
    views = []
    for m in members:
        name = next((by_peer[u] for u in m.peer_urls if u in by_peer), None)
        if name is None:
            continue
        views.append(MemberView(name, m.id, voter=not m.is_learner,
                                started=bool(m.client_urls),
                                healthy=bool(m.client_urls) and healthy(m)))
    candidates = frozenset(n.name for n in nodes if n.master_candidate and n.etcd_peer_url)
    return QuorumView(master, candidates, tuple(views))


@dataclass(frozen=True)
class Step:
    """What one :func:`reconcile` did."""

    summary: str  # one line, for the log or a job's feedback
    changed: bool = False  # a vote moved: the next change may follow at once
    settled: bool = False  # the voters are as the rules want: nothing to do


def reconcile(admin: EtcdStore, master: str, nodes: list[Node], *,
              promote_timeout: float = 5.0, demote: bool = True) -> Step:
    """Carry out the next change, if any (``demote=False``: promotions only)."""
    try:
        members = admin.member_list()
        change = plan(view_of(master, nodes, members))
        if change is not None and change.kind == "demote" and not demote:
            return Step("a node is being added or removed: votes change after it")
        if change is not None and change.kind == "demote":
            # Only a demotion needs the members' health (a status call each): asked
            # then, not every second in the steady state.
            view = view_of(master, nodes, members, lambda m: _answers(admin, m))
            change = plan(view)
            if change is None:
                down = [m.node for m in view.members if m.voter and not m.healthy]
                return Step(f"waiting for the etcd member(s) of {', '.join(down)} to "
                            f"answer before changing votes")
    except HavenError as exc:
        return Step(f"cannot list etcd members: {exc.message}")
    if change is None:
        return Step("voters as they should be", settled=True)
    try:
        if change.kind == "promote":
            members_mod.promote_member(admin, change.member_id, timeout=promote_timeout)
        else:
            own = next((m.member_id for m in view.members if m.node == master), 0)
            members_mod.remove_member(admin, change.member_id, timeout=15.0,
                                      prefer_not=own)
    except HavenError as exc:
        return Step(f"{change.describe()} failed: {exc.message}")
    return Step(change.describe(), changed=True)


def _answers(admin: EtcdStore, m: Member) -> bool:
    try:
        return admin.status(m.client_urls[0])["leader"] != 0
    except HavenError:
        return False


def settled(admin: EtcdStore, master: str, nodes: list[Node]) -> bool:
    """Whether the voters are as the rules want (read-only)."""
    try:
        return plan(view_of(master, nodes, admin.member_list())) is None
    except HavenError:
        return False
