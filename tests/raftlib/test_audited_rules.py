"""Raft rules a mutation audit found no fast test for (2026-12-06).

Each test here fails against one mutant of raftlib's core that the rest of ``tests/raftlib``
let through (the mutant named in its docstring); three of them were caught only by the slower
property tests. The joint-configuration vote and ReadIndex quorums are safety rules: without
them a node could win an election, or confirm a read, with one half of a joint configuration.
"""

from __future__ import annotations

from raftlib import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    StateType,
)
from tests.raftlib.helpers import (
    app,
    drain,
    drain_reads,
    elect,
    log_of_terms,
    msgs_of,
    new_node,
    persist,
    snapshot_at,
    storage_with,
)

MT = MessageType


def test_a_followers_commit_is_capped_at_the_last_new_entry() -> None:
    s = storage_with(entries=log_of_terms([1, 1, 1]), term=2)
    n = new_node(2, s)
    n.step(app(1, 2, term=2, index=2, log_term=1, entries=[], commit=3))
    assert n.status().hard_state.commit == 2


def test_a_snapshot_older_than_the_commit_index_is_ignored() -> None:
    s = MemoryStorage(ConfState(voters=(1, 2, 3)))
    s.apply_snapshot(snapshot_at(10, 1))
    s.set_hard_state(HardState(term=1, vote=0, commit=10))
    n = new_node(2, s)
    n.step(Message(MT.SNAP, to=2, from_=1, term=1, snapshot=snapshot_at(5, 1)))
    rd = n.ready()
    assert rd.snapshot is None
    assert n.status().hard_state.commit == 10
    resp = [m for m in rd.messages + rd.persisted_messages if m.type == MT.APP_RESP]
    assert [m.index for m in resp] == [10]


def test_entries_overwritten_before_they_were_persisted_are_not_marked_stable() -> None:
    s = storage_with(entries=log_of_terms([1, 1]), term=1)
    n = new_node(2, s)
    n.step(app(1, 2, term=1, index=2, log_term=1, entries=[(1, 3)]))
    rd = n.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(3, 1)]
    n.step(app(3, 2, term=2, index=2, log_term=1, entries=[(2, 3)]))
    persist(n, s, rd)
    n.advance(rd)
    rd2 = n.ready()
    assert [(e.index, e.term) for e in rd2.entries] == [(3, 2)]


def test_timeout_now_goes_only_once_the_transferee_matches_the_whole_log() -> None:
    s = storage_with()
    n = new_node(1, s)
    elect(n, s)
    n.propose(b"a")
    n.propose(b"b")
    drain(n, s)  # last index 3; followers matched 1
    n.transfer_leader(2)
    assert not msgs_of(drain(n, s), MT.TIMEOUT_NOW)
    n.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=2))
    assert not msgs_of(drain(n, s), MT.TIMEOUT_NOW)
    n.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=3))
    assert [m.to for m in msgs_of(drain(n, s), MT.TIMEOUT_NOW)] == [2]


def _joint_storage() -> MemoryStorage:
    return MemoryStorage(ConfState(voters=(1, 2, 3), voters_outgoing=(1, 4, 5)))


def test_a_joint_election_needs_a_majority_of_both_halves() -> None:
    s = _joint_storage()
    n = new_node(1, s)
    n.campaign()
    msgs = drain(n, s)
    t = msgs_of(msgs, MT.VOTE)[0].term
    n.step(Message(MT.VOTE_RESP, to=1, from_=2, term=t))
    drain(n, s)
    assert n.status().soft_state.raft_state == StateType.CANDIDATE  # incoming won, outgoing not
    n.step(Message(MT.VOTE_RESP, to=1, from_=4, term=t))
    drain(n, s)
    assert n.status().soft_state.raft_state == StateType.LEADER


def test_a_joint_read_index_needs_acks_from_a_quorum_of_both_halves() -> None:
    s = _joint_storage()
    n = new_node(1, s)
    elect(n, s, (1, 2, 3, 4, 5))
    n.read_index(b"r")
    msgs = drain(n, s)
    hbs = {m.to: m for m in msgs_of(msgs, MT.HEARTBEAT)}
    n.step(Message(MT.HEARTBEAT_RESP, to=1, from_=2, term=hbs[2].term, context=hbs[2].context))
    assert drain_reads(n, s) == []
    n.step(Message(MT.HEARTBEAT_RESP, to=1, from_=4, term=hbs[4].term, context=hbs[4].context))
    assert [ctx for _, ctx in drain_reads(n, s)] == [b"r"]


def test_no_campaign_while_a_committed_conf_change_is_unapplied() -> None:
    s = MemoryStorage(ConfState(voters=(1, 2, 3)))
    s.append([Entry(term=1, index=1), Entry(term=1, index=2, type=EntryType.CONF_CHANGE_V2)])
    s.set_hard_state(HardState(term=1, vote=0, commit=2))
    n = new_node(1, s)
    n.campaign()
    assert n.status().soft_state.raft_state == StateType.FOLLOWER
    rd = n.ready()
    assert not [m for m in rd.messages + rd.persisted_messages if m.type in (MT.VOTE, MT.PRE_VOTE)]


def test_no_vote_for_another_candidate_in_a_term_whose_leader_is_known() -> None:
    n = new_node(2, storage_with())
    n.step(app(1, 2, term=2, index=0, log_term=0))
    assert n.status().soft_state.lead == 1
    n.step(Message(MT.VOTE, to=2, from_=3, term=2, index=5, log_term=2))
    rd = n.ready()
    resp = [m for m in rd.messages + rd.persisted_messages if m.type == MT.VOTE_RESP]
    assert [m.reject for m in resp] == [True]
