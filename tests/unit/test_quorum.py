"""The quorum rules: which etcd members vote, and in which order votes move."""

from __future__ import annotations

from haven.master.quorum import MemberView, QuorumView, VoteChange, desired_voters, mode, plan


def view(master: str, candidates: set[str], **members: str) -> QuorumView:
    """``members``: node -> "voter" | "learner" | "unstarted"."""
    ms = tuple(MemberView(name, i + 1, voter=kind == "voter", started=kind != "unstarted")
               for i, (name, kind) in enumerate(sorted(members.items())))
    return QuorumView(master, frozenset(candidates), ms)


def test_two_candidates_only_the_master_votes() -> None:
    assert desired_voters("n1", frozenset({"n1", "n2"})) == {"n1"}
    assert plan(view("n1", {"n1", "n2"}, n1="voter", n2="learner")) is None


def test_two_voters_lose_the_non_master_vote() -> None:
    # Two voters would stop every write when either node is lost.
    assert plan(view("n1", {"n1", "n2"}, n1="voter", n2="voter")) == \
        VoteChange("demote", "n2", 2)


def test_handover_promotes_the_new_master_before_demoting_the_old() -> None:
    # n2 just became master; its member is still a learner.
    first = plan(view("n2", {"n1", "n2"}, n1="voter", n2="learner"))
    assert first == VoteChange("promote", "n2", 2)
    second = plan(view("n2", {"n1", "n2"}, n1="voter", n2="voter"))
    assert second == VoteChange("demote", "n1", 1)
    assert plan(view("n2", {"n1", "n2"}, n1="learner", n2="voter")) is None


def test_no_vote_is_taken_while_the_master_has_none() -> None:
    # The new master's member has not started: demoting n1 would leave no voter.
    assert plan(view("n2", {"n1", "n2"}, n1="voter", n2="unstarted")) is None


def test_three_candidates_all_vote() -> None:
    v = view("n1", {"n1", "n2", "w3"}, n1="voter", n2="learner", w3="learner")
    assert plan(v) == VoteChange("promote", "n2", 2)
    v = view("n1", {"n1", "n2", "w3"}, n1="voter", n2="voter", w3="learner")
    assert plan(v) == VoteChange("promote", "w3", 3)
    assert plan(view("n1", {"n1", "n2", "w3"}, n1="voter", n2="voter", w3="voter")) is None


def test_a_learner_that_never_started_is_not_promoted() -> None:
    assert plan(view("n1", {"n1", "n2", "n3"}, n1="voter", n2="voter",
                     n3="unstarted")) is None


def test_a_node_that_is_no_longer_a_candidate_loses_its_vote() -> None:
    v = view("n1", {"n1", "n2", "n3"}, n1="voter", n2="voter", n3="voter", n4="voter")
    assert plan(v) == VoteChange("demote", "n4", 4)


def test_the_master_never_demotes_itself() -> None:
    # The master is not a candidate any more (modify -C no on the master): it keeps
    # its vote until the role moves.
    v = view("n1", {"n2", "n3", "n4"}, n1="voter", n2="voter", n3="voter", n4="voter")
    assert plan(v) is None


def test_no_vote_is_removed_while_another_voter_is_down() -> None:
    # Four voters, n4 no longer a candidate, n1 dead: removing n4 would leave two of
    # three voters alive, one more loss from no quorum; wait for n1.
    ms = (MemberView("n1", 1, voter=True, started=True, healthy=False),
          MemberView("n2", 2, voter=True, started=True),
          MemberView("n3", 3, voter=True, started=True),
          MemberView("n4", 4, voter=True, started=True))
    assert plan(QuorumView("n2", frozenset({"n1", "n2", "n3"}), ms)) is None


def test_a_dead_voter_may_lose_its_vote_when_the_others_are_up() -> None:
    # Three voters, n1 dead and no longer wanted: removing it keeps two live voters.
    ms = (MemberView("n1", 1, voter=True, started=True, healthy=False),
          MemberView("n2", 2, voter=True, started=True),
          MemberView("n3", 3, voter=True, started=True))
    assert plan(QuorumView("n3", frozenset({"n1", "n3"}), ms)) == \
        VoteChange("demote", "n1", 1)
    # ... but not n2's while n1 is dead and still a voter.
    assert plan(QuorumView("n3", frozenset({"n3"}), ms[:2] + ms[2:])) == \
        VoteChange("demote", "n1", 1)


def test_external_etcd_is_left_alone() -> None:
    assert plan(view("n1", {"n1", "n2"})) is None


def test_mode_names_the_kind_of_quorum() -> None:
    assert "only the master's etcd member votes" in mode(2, 0)
    assert "--no-voting" in mode(2, 0)
    assert "majority of 3" in mode(3, 1) and "witness" in mode(3, 1)
    assert "1 node loss" in mode(3, 0)
