"""The RawNode / Ready contract: what is handed out when, persistence ordering, restarts,
snapshots on the receiving side, and input validation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from raftlib import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    InvalidMessageError,
    MemoryStorage,
    Message,
    MessageType,
    MisroutedMessageError,
    Peer,
    RaftError,
    StateType,
    StepLocalMessageError,
    StepPeerNotFoundError,
)

from .helpers import app, drain, elect, msgs_of, new_node, persist, snapshot_at, storage_with

MT = MessageType


def test_ready_and_advance_must_alternate() -> None:
    s = storage_with((1,))
    node = new_node(1, s)
    node.campaign()
    rd = node.ready()
    assert not node.has_ready()
    with pytest.raises(RaftError):
        node.ready()
    with pytest.raises(RaftError):
        node.advance(
            type(rd)(None, None, (), None, (), (), (), (), must_sync=False)  # a different Ready
        )
    persist(node, s, rd)
    node.advance(rd)
    assert node.has_ready()


def test_single_node_commits_only_after_its_own_entries_are_persisted() -> None:
    """Thesis §10.2.1: the leader's own copy counts toward commit only once durable."""
    s = storage_with((1,))
    node = new_node(1, s)
    node.campaign()
    rd = node.ready()
    # Its own vote counts only once the term and vote are durable.
    assert rd.soft_state is not None
    assert rd.soft_state.raft_state == StateType.CANDIDATE
    assert rd.hard_state is not None
    assert (rd.hard_state.term, rd.hard_state.vote) == (1, 1)
    persist(node, s, rd)
    node.advance(rd)
    rd = node.ready()
    assert rd.soft_state is not None
    assert rd.soft_state.raft_state == StateType.LEADER
    assert [e.index for e in rd.entries] == [1]
    assert rd.committed_entries == ()
    persist(node, s, rd)
    node.advance(rd)
    node.propose(b"a")
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [1]
    assert [e.data for e in rd.entries] == [b"a"]
    persist(node, s, rd)
    node.advance(rd)
    rd = node.ready()
    assert [e.data for e in rd.committed_entries] == [b"a"]
    node.advance(rd)


def test_leader_sends_appends_before_persisting_but_followers_ack_after() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.propose(b"x")
    rd = node.ready()
    assert {m.type for m in rd.messages} == {MT.APP}
    assert rd.persisted_messages == ()
    f = storage_with()
    fol = new_node(2, f)
    fol.step(rd.messages[0])
    frd = fol.ready()
    assert frd.messages == ()
    assert [m.type for m in frd.persisted_messages] == [MT.APP_RESP]
    assert frd.must_sync


def test_leader_stepping_acks_before_advance_does_not_commit_its_unpersisted_entry() -> None:
    """Followers may answer before the leader's own fsync; the entry commits then only if a
    majority *without* the leader holds it."""
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.propose(b"x")
    rd = node.ready()
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=2))
    assert node.status().hard_state.commit == 1  # 1 of 3 durable copies (node 2)
    node.step(Message(MT.APP_RESP, to=1, from_=3, term=1, index=2))
    assert node.status().hard_state.commit == 2  # 2 followers: a majority without us
    persist(node, s, rd)
    node.advance(rd)
    rd = node.ready()
    assert [e.data for e in rd.committed_entries] == [b"x"]


def test_committed_entries_never_outrun_entries_handed_out() -> None:
    s = storage_with()
    node = new_node(1, s)
    node.step(app(2, 1, 1, 0, 0, [(1, 1), (1, 2)], commit=2))
    rd = node.ready()
    handed = {e.index for e in rd.entries}
    assert {e.index for e in rd.committed_entries} <= handed


def test_must_sync_only_for_term_vote_entries_or_snapshot() -> None:
    s = storage_with()
    node = new_node(1, s)
    node.step(app(2, 1, 1, 0, 0, [(1, 1)], commit=0))
    rd = node.ready()
    assert rd.must_sync
    persist(node, s, rd)
    node.advance(rd)
    node.step(Message(MT.HEARTBEAT, to=1, from_=2, term=1, commit=1))
    rd = node.ready()
    assert rd.hard_state == HardState(term=1, vote=0, commit=1)
    assert not rd.must_sync


def test_restart_restores_hard_state_log_and_config() -> None:
    s = storage_with((1, 2, 3), entries=[(1, 1), (1, 2), (2, 3)], term=2, vote=1, commit=2)
    node = new_node(1, s)
    st = node.status()
    assert st.hard_state == HardState(term=2, vote=1, commit=2)
    assert st.config.voters == (1, 2, 3)
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2]
    assert rd.entries == ()


def test_restart_with_applied_skips_already_applied_entries() -> None:
    s = storage_with((1, 2, 3), entries=[(1, 1), (1, 2), (1, 3)], term=1, commit=3)
    node = new_node(1, s, applied=2)
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [3]


def test_restart_from_a_snapshot_and_log() -> None:
    s = MemoryStorage()
    s.apply_snapshot(snapshot_at(5, 2, voters=(1, 2)))
    s.append([Entry(term=2, index=6), Entry(term=3, index=7)])
    s.set_hard_state(HardState(term=3, vote=2, commit=6))
    node = new_node(1, s)
    st = node.status()
    assert st.config.voters == (1, 2)
    assert st.applied == 5
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [6]


def test_follower_installs_a_newer_snapshot_from_the_leader() -> None:
    s = storage_with(entries=[(1, 1)], term=1)
    node = new_node(1, s)
    drain(node, s)
    snap = snapshot_at(10, 2)
    node.step(Message(MT.SNAP, to=1, from_=2, term=2, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot == snap
    assert rd.hard_state is not None
    assert rd.hard_state.commit == 10
    assert [(m.type, m.index) for m in rd.persisted_messages] == [(MT.APP_RESP, 10)]
    persist(node, s, rd)
    node.advance(rd)
    assert node.status().applied == 10
    assert s.first_index() == 11


def test_stale_snapshot_is_ignored() -> None:
    s = storage_with(entries=[(1, 1), (1, 2), (1, 3)], term=1, commit=3)
    node = new_node(1, s)
    drain(node, s)
    node.step(Message(MT.SNAP, to=1, from_=2, term=1, snapshot=snapshot_at(2, 1)))
    rd = node.ready()
    assert rd.snapshot is None
    assert [(m.type, m.index) for m in rd.persisted_messages] == [(MT.APP_RESP, 3)]


def test_snapshot_matching_our_log_only_fast_forwards_commit() -> None:
    s = storage_with(entries=[(1, 1), (1, 2), (1, 3)], term=1, commit=1)
    node = new_node(1, s)
    drain(node, s)
    node.step(Message(MT.SNAP, to=1, from_=2, term=1, snapshot=snapshot_at(3, 1)))
    rd = node.ready()
    assert rd.snapshot is None
    assert node.status().hard_state.commit == 3


def test_snapshot_excluding_this_node_is_refused() -> None:
    s = storage_with(entries=[(1, 1)], term=1)
    node = new_node(1, s)
    drain(node, s)
    node.step(Message(MT.SNAP, to=1, from_=2, term=1, snapshot=snapshot_at(9, 1, voters=(2, 3))))
    rd = node.ready()
    assert rd.snapshot is None


def test_step_rejects_local_messages_and_unknown_responders() -> None:
    node = new_node(1)
    for t in (MT.HUP, MT.BEAT, MT.UNREACHABLE, MT.SNAP_STATUS, MT.CHECK_QUORUM):
        with pytest.raises(StepLocalMessageError):
            node.step(Message(t, to=1, from_=2, term=1))
    with pytest.raises(StepPeerNotFoundError):
        node.step(Message(MT.APP_RESP, to=1, from_=9, term=1, index=1))


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        (Message(MT.APP, to=1, from_=0, term=1), InvalidMessageError),
        (Message(MT.APP, to=1, from_=2, term=0), InvalidMessageError),
        (
            Message(MT.APP, to=1, from_=2, term=1, index=0, entries=(Entry(term=1, index=5),)),
            InvalidMessageError,
        ),
        (
            Message(MT.APP, to=1, from_=2, term=1, index=0, entries=(Entry(term=2, index=1),)),
            InvalidMessageError,
        ),
        (
            Message(
                MT.APP,
                to=1,
                from_=2,
                term=3,
                index=0,
                entries=(Entry(term=3, index=1), Entry(term=2, index=2)),
            ),
            InvalidMessageError,
        ),
        (Message(MT.SNAP, to=1, from_=2, term=1), InvalidMessageError),
        (Message(MT.PROP, to=1, from_=2), InvalidMessageError),
        (Message(MT.HEARTBEAT, to=7, from_=2, term=1), MisroutedMessageError),
        (Message(MT.APP_RESP, to=1, from_=1, term=1, index=1), MisroutedMessageError),
    ],
)
def test_malformed_or_misrouted_messages_are_refused_and_change_nothing(
    msg: Message, error: type[Exception]
) -> None:
    s = storage_with(entries=[(1, 1)], term=1, commit=1)
    node = new_node(1, s)
    drain(node, s)
    before = node.status()
    with pytest.raises(error):
        node.step(msg)
    assert node.status() == before
    assert not node.has_ready()


def test_bootstrap_creates_committed_configuration_entries() -> None:
    s = MemoryStorage()
    node = new_node(1, s)
    node.bootstrap([Peer(1), 2, 3])
    assert node.status().config.voters == (1, 2, 3)
    rd = node.ready()
    assert [e.type for e in rd.entries] == [EntryType.CONF_CHANGE] * 3
    assert [e.index for e in rd.committed_entries] == [1, 2, 3]
    persist(node, s, rd)
    for e in rd.committed_entries:
        from raftlib.codec import decode_conf_change

        node.apply_conf_change(decode_conf_change(e.type, e.data))
    node.advance(rd)
    with pytest.raises(ValueError, match="nonempty"):
        new_node(1, s).bootstrap([1])


def test_bootstrapped_single_node_elects_itself_and_commits() -> None:
    s = MemoryStorage()
    node = new_node(1, s)
    node.bootstrap([1])
    drain(node, s)
    node.campaign()
    drain(node, s)
    node.propose(b"hello")
    applied: list[bytes] = []
    while node.has_ready():
        rd = node.ready()
        persist(node, s, rd)
        applied += [e.data for e in rd.committed_entries if e.type == EntryType.NORMAL]
        node.advance(rd)
    assert applied[-1] == b"hello"


def test_status_reports_progress_only_on_the_leader() -> None:
    s = storage_with()
    node = new_node(1, s)
    assert node.status().progress == {}
    elect(node, s)
    st = node.status()
    assert set(st.progress) == {1, 2, 3}
    assert st.progress[2].match == 1
    assert st.soft_state == st.soft_state.__class__(lead=1, raft_state=StateType.LEADER)


def test_propose_conf_change_is_refused_while_one_is_pending() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, 4))
    node.propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, 5))
    rd = node.ready()
    kinds = [e.type for e in rd.entries]
    assert kinds == [EntryType.CONF_CHANGE, EntryType.NORMAL]  # the second became a no-op
    node.advance(rd)


def test_apply_conf_change_returns_the_new_conf_state() -> None:
    node = new_node(1)
    cs = node.apply_conf_change(ConfChange(ConfChangeType.ADD_LEARNER_NODE, 4))
    assert cs == ConfState(voters=(1, 2, 3), learners=(4,))
    assert msgs_of([], MT.APP) == []


def test_leader_ignores_an_acknowledgement_beyond_its_log() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=50))
    drain(node, s)
    st = node.status()
    assert st.progress[2].match == 1
    assert st.hard_state.commit == 1


def test_inputs_between_ready_and_advance_arrive_in_the_next_ready() -> None:
    """etcd allows step, tick and propose while a Ready is being handled."""
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.propose(b"first")
    rd = node.ready()
    node.propose(b"second")
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=2))
    node.tick()
    persist(node, s, rd)
    node.advance(rd)
    rd2 = node.ready()
    assert [e.data for e in rd2.entries] == [b"second"]
    assert [e.data for e in rd2.committed_entries] == [b"first"]
    assert any(m.type == MT.HEARTBEAT for m in rd2.messages)
    persist(node, s, rd2)
    node.advance(rd2)
    assert [s.entries(2, 4)[i].data for i in (0, 1)] == [b"first", b"second"]


def _long_append(n: int = 20) -> list[Entry]:
    """Entries 1..n at terms 1,1,...,2,2 (the term changes half way)."""
    return [Entry(term=1 if i <= n // 2 else 2, index=i, data=b"d%d" % i) for i in range(1, n + 1)]


def _with(e: Entry, field: str, value: object) -> Entry:
    bad = Entry(e.term, e.index, e.type, e.data)
    object.__setattr__(bad, field, value)  # what a buggy caller could build
    return bad


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        (lambda e: _with(e, "term", True), r"entries\[12\]\.term"),
        (lambda e: _with(e, "index", 13.0), r"entries\[12\]\.index"),
        (lambda e: _with(e, "type", 0), r"entries\[12\]\.type"),
        (lambda e: _with(e, "data", bytearray(b"x")), r"entries\[12\]\.data"),
        (lambda e: (e.term, e.index, e.data), r"entries\[12\]: expected Entry"),
        (lambda e: Entry(e.term, e.index + 1, e.type, e.data), "does not follow"),
        (lambda e: Entry(3, e.index, e.type, e.data), "does not follow"),  # past the msg term
        (lambda e: Entry(1, e.index, e.type, e.data), "does not follow"),  # term goes back
    ],
)
def test_long_appends_are_checked_entry_by_entry_like_short_ones(
    fault: Callable[[Entry], object], problem: str
) -> None:
    """A fault anywhere in a long append is refused, with an explanation naming the entry."""
    ents: list[object] = list(_long_append())
    ents[12] = fault(ents[12])  # type: ignore[arg-type]
    s = storage_with(entries=[], term=2)
    node = new_node(1, s)
    drain(node, s)
    m = Message(MT.APP, to=1, from_=2, term=2, index=0, entries=tuple(ents))  # type: ignore[arg-type]
    before = node.status()
    with pytest.raises(InvalidMessageError, match=problem):
        node.step(m)
    assert node.status() == before
    assert not node.has_ready()


@pytest.mark.parametrize("n", [1, 7, 8, 64])
def test_long_and_short_appends_are_accepted(n: int) -> None:
    s = storage_with(entries=[], term=2)
    node = new_node(1, s)
    drain(node, s)
    ents = tuple(_long_append(n)) if n > 1 else (Entry(term=2, index=1, data=b"x"),)
    node.step(Message(MT.APP, to=1, from_=2, term=2, index=0, entries=ents))
    rd = node.ready()
    assert rd.entries == ents


def test_long_append_past_the_last_representable_index_is_refused() -> None:
    top = (1 << 64) - 1
    ents = tuple(Entry(term=2, index=top - 8 + i) for i in range(1, 10))  # the last is 2**64
    s = storage_with(entries=[], term=2)
    node = new_node(1, s)
    drain(node, s)
    with pytest.raises(InvalidMessageError, match="2\\*\\*64"):
        node.step(Message(MT.APP, to=1, from_=2, term=2, index=top - 8, log_term=2, entries=ents))
