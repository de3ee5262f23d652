"""ReadIndex (thesis §6.4): safe and lease-based linearizable reads, from leader and followers."""

from __future__ import annotations

import pytest

from raftlib import (
    Config,
    ConfigError,
    ConfState,
    MemoryStorage,
    Message,
    MessageType,
    ReadOnlyOption,
)
from raftlib.testing import Network

from .helpers import drain, drain_reads, elect, msgs_of, new_node, storage_with

MT = MessageType


def test_single_voter_answers_reads_at_once() -> None:
    s = storage_with((1,))
    node = new_node(1, s)
    node.campaign()
    drain(node, s)
    node.read_index(b"r1")
    assert drain_reads(node, s) == [(1, b"r1")]


def test_safe_read_waits_for_a_heartbeat_quorum() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.read_index(b"r1")
    beats = msgs_of(drain(node, s), MT.HEARTBEAT)
    assert len({m.context for m in beats}) == 1
    token = beats[0].context
    assert token
    assert drain_reads(node, s) == []
    node.step(Message(MT.HEARTBEAT_RESP, to=1, from_=2, term=1, context=token))
    assert drain_reads(node, s) == [(1, b"r1")]


def test_confirming_a_read_confirms_every_earlier_one() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.read_index(b"a")
    node.read_index(b"b")
    beats = msgs_of(drain(node, s), MT.HEARTBEAT)
    last_round = beats[-1].context
    node.step(Message(MT.HEARTBEAT_RESP, to=1, from_=2, term=1, context=last_round))
    assert [ctx for _, ctx in drain_reads(node, s)] == [b"a", b"b"]


def test_reads_recorded_before_one_ready_share_one_heartbeat_round() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.read_index(b"a")
    node.step(Message(MT.READ_INDEX, to=1, from_=2, context=b"b"))
    node.read_index(b"c")
    beats = msgs_of(drain(node, s), MT.HEARTBEAT)
    assert sorted(m.to for m in beats) == [2, 3]  # one round, not three
    (token,) = {m.context for m in beats}
    node.step(Message(MT.HEARTBEAT_RESP, to=1, from_=3, term=1, context=token))
    out: list[Message] = []
    reads: list[tuple[int, bytes]] = []
    while node.has_ready():
        rd = node.ready()
        out.extend(rd.messages)
        reads.extend((r.index, r.request_ctx) for r in rd.read_states)
        node.advance(rd)
    assert [ctx for _, ctx in reads] == [b"a", b"c"]
    (answer,) = msgs_of(out, MT.READ_INDEX_RESP)
    assert (answer.to, answer.context) == (2, b"b")


def test_a_heartbeat_tick_before_the_ready_sends_the_read_round_once() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.read_index(b"a")
    node.tick()  # heartbeat_tick=1: the periodic heartbeat carries the pending read's token
    beats = msgs_of(drain(node, s), MT.HEARTBEAT)
    assert sorted(m.to for m in beats) == [2, 3]
    assert len({m.context for m in beats}) == 1


def test_a_read_round_is_not_sent_by_a_node_that_stepped_down_before_its_ready() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.read_index(b"a")
    node.step(Message(MT.HEARTBEAT, to=1, from_=2, term=5))  # a new leader, before the Ready
    msgs = drain(node, s)
    assert msgs_of(msgs, MT.HEARTBEAT) == []
    assert drain_reads(node, s) == []


def test_new_leader_holds_reads_until_an_entry_of_its_term_commits() -> None:
    s = storage_with(entries=[(1, 1)], term=1, commit=1)
    node = new_node(1, s)
    drain(node, s)
    elect(node, s, ack=False)
    node.read_index(b"early")
    assert msgs_of(drain(node, s), MT.HEARTBEAT) == []
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=2, index=2))  # commits the empty entry
    beats = msgs_of(drain(node, s), MT.HEARTBEAT)
    assert len({m.context for m in beats}) == 1
    node.step(Message(MT.HEARTBEAT_RESP, to=1, from_=2, term=2, context=beats[0].context))
    assert drain_reads(node, s) == [(2, b"early")]


def test_follower_read_is_forwarded_and_answered_with_the_leaders_index() -> None:
    net = Network([1, 2, 3], seed=1)
    net.campaign(1)
    net.propose(1, b"w")
    net.nodes[2].raw.read_index(b"f")
    net.stabilize()
    assert [(r.index, r.request_ctx) for r in net.nodes[2].read_states] == [(2, b"f")]


def test_stale_leader_in_a_minority_cannot_serve_a_safe_read() -> None:
    net = Network([1, 2, 3], seed=1)
    net.campaign(1)
    net.propose(1, b"w")
    net.isolate(1)
    net.nodes[1].raw.read_index(b"stale")
    for _ in range(30):
        net.tick([1])
    assert net.nodes[1].read_states == []
    # Meanwhile the majority elects a leader and writes: the stale read was rightly refused.
    net.tick([2, 3], n=30)
    assert net.leader() in (2, 3)


def test_lease_reads_need_check_quorum() -> None:
    with pytest.raises(ConfigError):
        Config(id=1, storage=MemoryStorage(), read_only_option=ReadOnlyOption.LEASE_BASED)


def test_lease_based_read_needs_no_round_trip() -> None:
    s = storage_with()
    node = new_node(1, s, check_quorum=True, read_only_option=ReadOnlyOption.LEASE_BASED)
    elect(node, s)
    node.read_index(b"fast")
    rd = node.ready()
    assert [(r.index, r.request_ctx) for r in rd.read_states] == [(1, b"fast")]
    assert not any(m.type == MT.HEARTBEAT for m in rd.messages)


def test_reads_see_every_write_acknowledged_before_them() -> None:
    """Linearizability: a read issued after a write commits is served at an index covering it,
    from any node, once that node has applied up to the read's index."""
    net = Network([1, 2, 3], seed=5)
    net.campaign(1)
    for i in range(20):
        net.propose(1 + i % 3, b"v%d" % i)
        reader = net.nodes[1 + (i + 1) % 3]
        reader.raw.read_index(b"read%d" % i)
        net.stabilize()
        rs = reader.read_states[-1]
        assert rs.request_ctx == b"read%d" % i
        applied = [e for e in reader.applied if e.index <= rs.index]
        assert reader.applied[-1].index >= rs.index
        assert [e.data for e in applied if e.data][-1] == b"v%d" % i


def test_read_index_rejects_an_empty_context() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        new_node().read_index(b"")


def test_a_leader_alone_in_both_halves_of_a_joint_configuration_answers_reads() -> None:
    s = MemoryStorage(ConfState(voters=(1,), voters_outgoing=(1,), learners=()))
    node = new_node(1, s)
    node.campaign()
    drain(node, s)
    node.read_index(b"r")
    assert drain_reads(node, s) == [(1, b"r")]
