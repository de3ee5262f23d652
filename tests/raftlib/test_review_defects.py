"""Regression tests for the five defects an independent review found in reads and elections.

Each test drives RawNodes through the public API only and failed before its fix (issue 9;
docs/raftlib.md, "Defects found by review", states each rule).
"""

from __future__ import annotations

import contextlib

import pytest

from raftlib import (
    Entry,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RaftInvariantError,
    RawNode,
    Ready,
    StateType,
)

from .helpers import drain, drain_reads, elect, msgs_of, new_node, persist, storage_with

MT = MessageType


def _persist_synced_only(storage: MemoryStorage, rd: Ready) -> None:
    """Persist ``rd`` as if the machine crashed before an unsynced write reached the disk."""
    if rd.snapshot is not None:
        storage.apply_snapshot(rd.snapshot)
    storage.append(rd.entries)
    if rd.hard_state is not None and rd.must_sync:
        storage.set_hard_state(rd.hard_state)


def _pump(
    nodes: dict[int, RawNode], storages: dict[int, MemoryStorage], applied: dict[int, list[Entry]]
) -> None:
    """Run every node's Readys and deliver every message until the cluster is quiet."""
    for _ in range(100):
        busy = False
        for nid, node in nodes.items():
            while node.has_ready():
                busy = True
                rd = node.ready()
                out = list(rd.messages)
                persist(node, storages[nid], rd)
                out += rd.persisted_messages
                applied[nid].extend(rd.committed_entries)
                node.advance(rd)
                for m in out:
                    if m.to in nodes:  # others are down: the message is lost
                        nodes[m.to].step(m)
        if not busy:
            return
    raise AssertionError("cluster did not settle in 100 rounds")


# -- 1. a lone voter must not lead a term before that term is durable --


def test_lone_voter_sends_nothing_of_a_new_term_before_persisting_it() -> None:
    s = storage_with((1,), learners=(2,))
    node = new_node(1, s)
    node.campaign()
    rd = node.ready()
    assert rd.hard_state is not None
    assert rd.hard_state.term == 1
    assert [m for m in rd.messages if m.term == 1] == []
    assert node.status().soft_state.raft_state != StateType.LEADER


def test_lone_voter_crashing_before_persisting_its_term_cannot_fork_a_learner() -> None:
    """A lone voter won term 1 at once and sent its learner entry x; it crashed before the
    Ready was durable, restarted at term 0, won term 1 again and wrote y at the same index."""
    storages = {1: storage_with((1,), learners=(2,)), 2: storage_with((1,), learners=(2,))}
    nodes = {1: new_node(1, storages[1]), 2: new_node(2, storages[2])}
    applied: dict[int, list[Entry]] = {1: [], 2: []}
    nodes[1].campaign()
    with contextlib.suppress(ProposalDropped):
        nodes[1].propose(b"x")
    rd = nodes[1].ready()
    for m in rd.messages:  # may go out before persisting, by the Ready contract
        nodes[2].step(m)
    _pump({2: nodes[2]}, {2: storages[2]}, {2: applied[2]})

    nodes[1] = new_node(1, storages[1])  # crash: nothing of rd became durable
    nodes[1].campaign()
    _pump(nodes, storages, applied)
    assert nodes[1].status().soft_state.raft_state == StateType.LEADER
    nodes[1].propose(b"y")
    _pump(nodes, storages, applied)

    def data(nid: int) -> dict[int, bytes]:
        return {e.index: e.data for e in applied[nid] if e.data}

    assert b"y" in data(1).values()
    assert data(2) == data(1)


# -- 2. a retried read must not be confirmed by acks of an earlier round --


def test_retried_read_is_not_confirmed_by_acks_from_the_earlier_round() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.read_index(b"r")
    first_round = msgs_of(drain(node, s), MT.HEARTBEAT)
    ack = {
        m.to: Message(MT.HEARTBEAT_RESP, 1, m.to, term=1, context=m.context) for m in first_round
    }
    node.step(ack[2])
    assert drain_reads(node, s) == [(1, b"r")]
    # The client retries with the same context. Meanwhile nodes 2 and 3 may have elected a new
    # leader that committed more: only acks sent after the retry arrived prove otherwise.
    node.read_index(b"r")
    drain(node, s)
    node.step(ack[3])  # delayed, from the first round
    node.step(ack[2])  # duplicated, from the first round
    assert drain_reads(node, s) == []


def test_retried_read_is_answered_once_its_own_round_is_acked() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.read_index(b"r")
    drain(node, s)
    node.read_index(b"r")
    second_round = msgs_of(drain(node, s), MT.HEARTBEAT)
    latest = {m.to: m.context for m in second_round}
    node.step(Message(MT.HEARTBEAT_RESP, 1, 2, term=1, context=latest[2]))
    assert [ctx for _, ctx in drain_reads(node, s)] == [b"r", b"r"]


# -- 3. a lone voter answers reads only after committing an entry of its term --


def test_lone_voter_read_waits_for_an_entry_of_its_term_after_restart() -> None:
    # Entry 2 was committed and acknowledged, but the commit-only Ready saying so was not
    # fsynced: the durable commit index is 1.
    s = storage_with((1,), entries=[(1, 1), (1, 2)], term=1, vote=1, commit=1)
    node = new_node(1, s, applied=1)
    node.campaign()
    while node.status().soft_state.raft_state != StateType.LEADER:
        rd = node.ready()
        persist(node, s, rd)
        node.advance(rd)
    node.read_index(b"r")
    reads = drain_reads(node, s)
    assert reads == [(3, b"r")]  # the new leader's empty entry, covering entry 2


# -- 4. a read forwarded twice is answered to the node that asked --


def _three_nodes_with_a_stale_follower() -> tuple[dict[int, RawNode], dict[int, MemoryStorage]]:
    """Node 1 leads term 2 and node 2 follows it; node 3 still believes 2 leads term 1."""
    storages = {i: storage_with(term=1) for i in (1, 2)} | {3: storage_with()}
    nodes = {i: new_node(i, storages[i]) for i in (1, 2, 3)}
    nodes[3].step(Message(MT.HEARTBEAT, 3, 2, term=1))
    nodes[1].campaign()
    for vote in msgs_of(drain(nodes[1], storages[1]), MT.VOTE):
        nodes[1].step(Message(MT.VOTE_RESP, 1, vote.to, term=vote.term))
    for m in msgs_of(drain(nodes[1], storages[1]), MT.APP):
        if m.to == 2:
            nodes[2].step(m)
            for resp in drain(nodes[2], storages[2]):
                nodes[1].step(resp)
    drain(nodes[1], storages[1])
    drain(nodes[3], storages[3])
    assert nodes[1].status().hard_state.commit == 1
    return nodes, storages


def test_read_forwarded_twice_is_answered_to_its_origin() -> None:
    nodes, storages = _three_nodes_with_a_stale_follower()
    nodes[3].read_index(b"q")
    (to_2,) = msgs_of(drain(nodes[3], storages[3]), MT.READ_INDEX)
    assert to_2.to == 2
    nodes[2].step(to_2)
    (to_1,) = msgs_of(drain(nodes[2], storages[2]), MT.READ_INDEX)
    assert to_1.to == 1
    nodes[1].step(to_1)
    for beat in msgs_of(drain(nodes[1], storages[1]), MT.HEARTBEAT):
        if beat.to == 2:
            nodes[2].step(beat)
            for resp in msgs_of(drain(nodes[2], storages[2]), MT.HEARTBEAT_RESP):
                nodes[1].step(resp)
    (answer,) = msgs_of(drain(nodes[1], storages[1]), MT.READ_INDEX_RESP)
    assert answer.to == 3
    assert drain_reads(nodes[2], storages[2]) == []
    nodes[3].step(answer)
    assert drain_reads(nodes[3], storages[3]) == [(1, b"q")]


def test_own_read_forwarded_back_to_the_leader_is_answered_locally() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.step(Message(MT.READ_INDEX, 1, 1, context=b"bounced"))
    beats = msgs_of(drain(node, s), MT.HEARTBEAT)
    node.step(Message(MT.HEARTBEAT_RESP, 1, 2, term=1, context=beats[0].context))
    assert [ctx for _, ctx in drain_reads(node, s)] == [b"bounced"]


# -- 5. restart with the state machine's applied index beyond the durable commit index --


def test_restart_with_applied_beyond_durable_commit_adopts_it() -> None:
    s = storage_with((1,), entries=[(1, 1), (1, 2), (1, 3)], term=1, vote=1, commit=1)
    node = new_node(1, s, applied=3)
    st = node.status()
    assert st.hard_state.commit == 3
    assert st.applied == 3
    assert not node.has_ready() or node.ready().committed_entries == ()


def test_restart_with_applied_beyond_the_log_is_refused() -> None:
    s = storage_with((1,), entries=[(1, 1), (1, 2)], term=1, vote=1, commit=1)
    with pytest.raises(RaftInvariantError, match="beyond the last log index"):
        new_node(1, s, applied=3)


def test_crash_after_unsynced_commit_then_restart_with_applied_index() -> None:
    """docs/ready.md's shortcut, followed literally: commit-only Readys are not fsynced."""
    s = storage_with((1,))
    node = new_node(1, s)
    node.campaign()
    applied = 0
    data: list[bytes] = []
    for i in range(6):
        if node.status().soft_state.raft_state == StateType.LEADER:
            node.propose(b"w%d" % i)
        while node.has_ready():
            rd = node.ready()
            _persist_synced_only(s, rd)
            for e in rd.committed_entries:
                applied = e.index
                data += [e.data] if e.data else []
            node.advance(rd)
    assert data, "nothing was applied"
    assert s.hard_state.commit < applied, "the scenario needs an unsynced commit index"
    node = new_node(1, s, applied=applied)  # crash and restart
    node.campaign()
    again: list[bytes] = []
    for _ in range(5):
        while node.has_ready():
            rd = node.ready()
            persist(node, s, rd)
            again += [e.data for e in rd.committed_entries if e.data]
            node.advance(rd)
    assert again == []  # nothing applied twice
    assert node.status().soft_state.raft_state == StateType.LEADER
    assert node.status().hard_state.commit > applied
