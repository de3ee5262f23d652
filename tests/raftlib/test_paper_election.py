"""Raft paper §5.1-§5.2 (and §5.4.1's vote restriction): terms, roles and leader election.

Each test names the rule it checks; all drive RawNode through its public API.
"""

from __future__ import annotations

import pytest

from raftlib import Message, MessageType, StateType
from raftlib.testing import Network

from .helpers import drain, elect, log_of_terms, msgs_of, new_node, storage_with

MT = MessageType


def test_nodes_start_as_followers() -> None:
    """§5.2: when servers start up, they begin as followers."""
    node = new_node()
    st = node.status()
    assert st.soft_state.raft_state == StateType.FOLLOWER
    assert st.hard_state.term == 0


@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
def test_higher_term_message_makes_any_role_a_follower_at_that_term(role: str) -> None:
    """§5.1: a server that sees a larger term adopts it and reverts to follower."""
    s = storage_with()
    node = new_node(1, s)
    if role == "candidate":
        node.campaign()
        drain(node, s)
    elif role == "leader":
        elect(node, s)
    assert node.status().soft_state.raft_state != StateType.FOLLOWER or role == "follower"
    node.step(Message(MT.APP, to=1, from_=2, term=5, index=0, log_term=0))
    st = node.status()
    assert st.soft_state.raft_state == StateType.FOLLOWER
    assert st.hard_state.term == 5
    assert st.soft_state.lead == 2


def test_stale_term_messages_are_ignored() -> None:
    """§5.1: a request with a stale term number is rejected (it changes nothing)."""
    s = storage_with(term=3)
    node = new_node(1, s)
    drain(node, s)
    node.step(Message(MT.HEARTBEAT, to=1, from_=2, term=2, commit=0))
    msgs = drain(node, s)
    assert node.status().hard_state.term == 3
    assert node.status().soft_state.lead == 0
    assert msgs == []


def test_leader_sends_heartbeats_every_heartbeat_tick() -> None:
    """§5.2: leaders send periodic heartbeats to maintain their authority."""
    s = storage_with()
    node = new_node(1, s, heartbeat_tick=2)
    elect(node, s)
    node.tick()
    assert msgs_of(drain(node, s), MT.HEARTBEAT) == []
    node.tick()
    beats = msgs_of(drain(node, s), MT.HEARTBEAT)
    assert sorted(m.to for m in beats) == [2, 3]
    assert all(m.term == 1 for m in beats)


@pytest.mark.parametrize("start_as_candidate", [False, True])
def test_election_timeout_starts_an_election(start_as_candidate: bool) -> None:
    """§5.2: on election timeout a follower (or a candidate) increments its term, votes for
    itself and requests votes from every other server."""
    s = storage_with()
    node = new_node(1, s)
    if start_as_candidate:
        node.campaign()
        drain(node, s)
    before = node.status().hard_state.term
    for _ in range(20):
        node.tick()
    rd = node.ready()
    st = node.status()
    assert st.soft_state.raft_state == StateType.CANDIDATE
    assert st.hard_state.term == before + 1
    assert st.hard_state.vote == 1
    votes = [m for m in rd.persisted_messages if m.type == MT.VOTE]
    assert sorted(m.to for m in votes) == [2, 3]
    assert all(m.term == before + 1 for m in votes)
    # the vote for ourselves must be durable before the requests go out
    assert rd.hard_state is not None
    assert rd.hard_state.vote == 1
    assert not any(m.type == MT.VOTE for m in rd.messages)


@pytest.mark.parametrize(
    ("size", "grants", "rejects", "expected"),
    [
        (1, [], [], StateType.LEADER),
        (3, [2], [], StateType.LEADER),
        (3, [2, 3], [], StateType.LEADER),
        (5, [2, 3], [], StateType.LEADER),
        (5, [2], [], StateType.CANDIDATE),
        (5, [2], [3, 4], StateType.CANDIDATE),
        (5, [2], [3, 4, 5], StateType.FOLLOWER),
        (3, [], [2, 3], StateType.FOLLOWER),
        (3, [], [], StateType.CANDIDATE),
    ],
)
def test_candidate_wins_with_a_majority_and_loses_without(
    size: int, grants: list[int], rejects: list[int], expected: StateType
) -> None:
    """§5.2: a candidate wins once a majority grants; once a majority rejects it gives up."""
    voters = tuple(range(1, size + 1))
    s = storage_with(voters)
    node = new_node(1, s)
    node.campaign()
    drain(node, s)
    for v in grants:
        node.step(Message(MT.VOTE_RESP, to=1, from_=v, term=1))
    for v in rejects:
        node.step(Message(MT.VOTE_RESP, to=1, from_=v, term=1, reject=True))
    assert node.status().soft_state.raft_state == expected
    assert node.status().hard_state.term == 1


@pytest.mark.parametrize(
    ("vote", "candidate", "granted"),
    [(0, 2, True), (0, 3, True), (2, 2, True), (2, 3, False), (3, 2, False), (3, 3, True)],
)
def test_follower_votes_at_most_once_per_term(vote: int, candidate: int, granted: bool) -> None:
    """§5.2: each server votes for at most one candidate in a term, first-come-first-served."""
    s = storage_with(term=1, vote=vote)
    node = new_node(1, s)
    drain(node, s)
    node.step(Message(MT.VOTE, to=1, from_=candidate, term=1, index=0, log_term=0))
    rd = node.ready()
    resp = [m for m in rd.persisted_messages if m.type == MT.VOTE_RESP]
    assert len(resp) == 1
    assert resp[0].reject is not granted
    if granted:
        assert rd.hard_state is not None or vote == candidate
        assert node.status().hard_state.vote == candidate


def test_vote_is_persisted_before_the_response_is_sent() -> None:
    """§5.2 / Figure 2: votedFor is persistent state, updated on stable storage before
    responding. The grant sits in persisted_messages, beside the hard state recording it."""
    s = storage_with()
    node = new_node(1, s)
    node.step(Message(MT.VOTE, to=1, from_=2, term=4, index=0, log_term=0))
    rd = node.ready()
    assert rd.hard_state is not None
    assert (rd.hard_state.term, rd.hard_state.vote) == (4, 2)
    assert rd.must_sync
    assert [m.type for m in rd.persisted_messages] == [MT.VOTE_RESP]
    assert rd.messages == ()


@pytest.mark.parametrize("msg_type", [MT.APP, MT.HEARTBEAT])
def test_candidate_reverts_to_follower_on_leader_contact_in_its_term(msg_type: MT) -> None:
    """§5.2: a candidate that hears from a legitimate leader (term >= its own) steps down."""
    s = storage_with()
    node = new_node(1, s)
    node.campaign()
    drain(node, s)
    node.step(Message(msg_type, to=1, from_=2, term=1, index=0, log_term=0, commit=0))
    st = node.status()
    assert st.soft_state.raft_state == StateType.FOLLOWER
    assert st.soft_state.lead == 2
    assert st.hard_state.term == 1


def test_election_timeouts_are_randomized_in_one_to_two_timeouts() -> None:
    """§5.2: randomized election timeouts, drawn from [election_tick, 2 * election_tick)."""
    seen = set()
    for seed in range(60):
        s = storage_with()
        node = new_node(1, s, seed=seed, election_tick=10)
        ticks = 0
        while node.status().soft_state.raft_state == StateType.FOLLOWER:
            node.tick()
            ticks += 1
            assert ticks < 20, "no election within 2 * election_tick"
        assert ticks >= 10
        seen.add(ticks)
    assert len(seen) > 5, f"timeouts were not spread out: {sorted(seen)}"


def test_randomized_timeouts_usually_avoid_split_votes() -> None:
    """§5.2: with randomized timeouts one node usually times out first and wins alone."""
    first_round_wins = 0
    for seed in range(30):
        net = Network([1, 2, 3, 4, 5], seed=seed)
        ticks = 0
        while net.leader() is None:
            net.tick()
            ticks += 1
        if ticks < 20:
            first_round_wins += 1
        assert len(net.leaders()) == 1
    assert first_round_wins >= 25


@pytest.mark.parametrize(
    ("our_log", "cand_last_term", "cand_last_index", "granted"),
    [
        ([1, 1], 1, 2, True),  # same last term, same length
        ([1, 1], 1, 3, True),  # same term, longer
        ([1, 1], 1, 1, False),  # same term, shorter
        ([1, 1], 2, 1, True),  # higher last term wins even if shorter
        ([1, 2], 1, 5, False),  # lower last term loses even if longer
        ([1, 2], 2, 2, True),
        ([1, 2], 2, 1, False),
    ],
)
def test_vote_only_for_candidates_whose_log_is_at_least_as_up_to_date(
    our_log: list[int], cand_last_term: int, cand_last_index: int, granted: bool
) -> None:
    """§5.4.1: compare last terms first, then lengths; deny the vote to older logs."""
    s = storage_with(entries=log_of_terms(our_log), term=2, commit=0)
    node = new_node(1, s)
    drain(node, s)
    node.step(
        Message(MT.VOTE, to=1, from_=2, term=3, index=cand_last_index, log_term=cand_last_term)
    )
    rd = node.ready()
    resp = [m for m in rd.persisted_messages if m.type == MT.VOTE_RESP]
    assert len(resp) == 1
    assert resp[0].reject is not granted


def test_vote_request_carries_the_candidates_last_log_position() -> None:
    """§5.4.1: RequestVote includes the index and term of the candidate's last log entry."""
    s = storage_with(entries=log_of_terms([1, 1, 2]), term=2)
    node = new_node(1, s)
    drain(node, s)
    node.campaign()
    votes = msgs_of(drain(node, s), MT.VOTE)
    assert {(m.index, m.log_term, m.term) for m in votes} == {(3, 2, 3)}


def test_exactly_one_leader_per_term_in_a_cluster() -> None:
    """§5.2 Election Safety: at most one leader can be elected in a given term."""
    for seed in range(20):
        net = Network([1, 2, 3, 4, 5], seed=seed)
        leaders_by_term: dict[int, set[int]] = {}
        for _ in range(80):
            net.tick()
            for i in net.leaders():
                leaders_by_term.setdefault(net.nodes[i].term, set()).add(i)
            if seed % 3 == 0 and net.leader() is not None:
                net.isolate(net.leader() or 0)
        for term, leaders in leaders_by_term.items():
            assert len(leaders) == 1, f"term {term} had leaders {leaders} (seed {seed})"
