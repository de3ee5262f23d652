"""Raft paper §5.3-§5.4: log replication, log matching, commitment and leader completeness."""

from __future__ import annotations

import pytest

from raftlib import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    StateType,
)
from raftlib.testing import Network

from .helpers import app, drain, elect, log_of_terms, msgs_of, new_node, storage_with

MT = MessageType


def test_leader_appends_a_proposal_and_replicates_it() -> None:
    """§5.3: the leader appends the command to its log, then issues AppendEntries in parallel,
    naming the entry that precedes the new ones."""
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)  # index 1: the new leader's empty entry
    node.propose(b"x")
    rd = node.ready()
    assert [(e.index, e.term, e.data) for e in rd.entries] == [(2, 1, b"x")]
    apps = [m for m in rd.messages if m.type == MT.APP]
    assert sorted(m.to for m in apps) == [2, 3]
    for m in apps:
        assert (m.index, m.log_term) == (1, 1)
        assert [(e.index, e.data) for e in m.entries] == [(2, b"x")]


def test_entry_commits_once_a_majority_stores_it() -> None:
    """§5.3: an entry is committed once the leader has replicated it on a majority."""
    s = storage_with((1, 2, 3, 4, 5))
    node = new_node(1, s)
    elect(node, s, (1, 2, 3, 4, 5))
    node.propose(b"x")
    drain(node, s)
    assert node.status().hard_state.commit == 1
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=2))
    drain(node, s)
    assert node.status().hard_state.commit == 1  # leader + 1 of 5
    node.step(Message(MT.APP_RESP, to=1, from_=3, term=1, index=2))
    rd = node.ready()
    assert node.status().hard_state.commit == 2
    assert [e.index for e in rd.committed_entries] == [2]


def test_committing_an_entry_commits_all_preceding_entries() -> None:
    """§5.3: committing an entry also commits all preceding entries, including those of
    previous leaders."""
    s = storage_with(entries=log_of_terms([1, 1]), term=1)
    node = new_node(1, s)
    drain(node, s)
    elect(node, s, ack=False)
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=2, index=3))
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2, 3]


def test_leader_tells_followers_the_commit_index() -> None:
    """§5.3: the leader includes the highest committed index in future AppendEntries."""
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.propose(b"x")
    drain(node, s)
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=2))
    msgs = drain(node, s)
    apps = msgs_of(msgs, MT.APP)
    assert apps, "commit advance should be broadcast"
    assert all(m.commit == 2 for m in apps)


def test_follower_applies_entries_the_leader_reports_committed() -> None:
    """§5.3: once a follower learns an entry is committed, it applies it (in log order)."""
    s = storage_with()
    node = new_node(1, s)
    node.step(app(2, 1, 1, 0, 0, [(1, 1), (1, 2), (1, 3)], commit=2))
    rd = node.ready()
    assert [e.index for e in rd.entries] == [1, 2, 3]
    assert [e.index for e in rd.committed_entries] == [1, 2]
    assert rd.hard_state is not None
    assert rd.hard_state.commit == 2


@pytest.mark.parametrize(
    ("prev_term", "prev_index", "rejected"),
    [(0, 0, False), (1, 1, False), (2, 2, False), (1, 2, True), (3, 3, True), (2, 1, True)],
)
def test_follower_rejects_appends_whose_previous_entry_does_not_match(
    prev_term: int, prev_index: int, rejected: bool
) -> None:
    """§5.3 consistency check: a follower refuses new entries if its log has no entry at the
    previous index with the previous term."""
    s = storage_with(entries=log_of_terms([1, 2]), term=2)
    node = new_node(1, s)
    drain(node, s)
    node.step(app(2, 1, 3, prev_index, prev_term, [(3, prev_index + 1)]))
    resp = msgs_of(drain(node, s), MT.APP_RESP)
    assert len(resp) == 1
    assert resp[0].reject is rejected
    if rejected:
        assert resp[0].index == prev_index
        assert resp[0].reject_hint <= min(prev_index, 2)


@pytest.mark.parametrize(
    ("prev", "new", "expected_terms"),
    [
        # appended after a matching prefix
        ((2, 2), [(3, 3)], [1, 2, 3]),
        # conflict at index 2: the follower's entry and all that follow are replaced
        ((1, 1), [(3, 2), (3, 3)], [1, 3, 3]),
        # entries already present are not rewritten
        ((0, 0), [(1, 1)], [1, 2, 2]),
        ((1, 1), [(2, 2)], [1, 2, 2]),
        ((0, 0), [(1, 1), (4, 2)], [1, 4]),
    ],
)
def test_follower_deletes_conflicting_entries_and_appends_new_ones(
    prev: tuple[int, int], new: list[tuple[int, int]], expected_terms: list[int]
) -> None:
    """§5.3: if an existing entry conflicts with a new one (same index, different terms), delete
    it and all that follow, then append the new entries."""
    s = storage_with(entries=log_of_terms([1, 2, 2]), term=2)
    node = new_node(1, s)
    drain(node, s)
    node.step(app(2, 1, 4, prev[1], prev[0], new))
    drain(node, s)
    assert [s.term(i) for i in range(1, s.last_index() + 1)] == expected_terms


def test_an_acknowledgement_of_entries_replaced_before_the_ready_is_dropped() -> None:
    """§10.2.1: an append is acknowledged once its entries are durable. Entries 2-3 of term 1
    are accepted, then replaced by a term-2 leader's entry 2 before the Ready that would have
    made them durable: their acknowledgement (to the term-1 leader, which could count it
    towards committing them) must not be sent. The simulator found it (seed 351 of the long
    sweep; see the "ack-replaced" story in tests/raftlib/testing/test_mutations.py)."""
    s = storage_with(entries=log_of_terms([1]), term=1)
    node = new_node(3, s)
    drain(node, s)
    node.step(app(1, 3, 1, 1, 1, [(1, 2), (1, 3)]))
    node.step(app(2, 3, 2, 1, 1, [(2, 2)]))
    acks = [m for m in msgs_of(drain(node, s), MT.APP_RESP) if not m.reject]
    assert [(m.to, m.term, m.index) for m in acks] == [(2, 2, 2)]
    assert [s.term(i) for i in range(1, s.last_index() + 1)] == [1, 2]


def test_an_acknowledgement_of_entries_a_snapshot_replaced_is_dropped() -> None:
    s = storage_with(entries=log_of_terms([1]), term=1)
    node = new_node(3, s)
    drain(node, s)
    node.step(app(1, 3, 1, 1, 1, [(1, 2), (1, 3)]))
    snap = Snapshot(metadata=SnapshotMetadata(ConfState(voters=(1, 2, 3)), index=5, term=2))
    node.step(Message(MT.SNAP, to=3, from_=2, term=2, snapshot=snap))
    acks = [m for m in msgs_of(drain(node, s), MT.APP_RESP) if not m.reject]
    assert [(m.to, m.term, m.index) for m in acks] == [(2, 2, 5)]


def test_follower_never_truncates_committed_entries_on_stale_appends() -> None:
    """§5.3 + §5.4: an append older than our commit index cannot change committed entries."""
    s = storage_with(entries=log_of_terms([1, 1, 1]), term=1, commit=3)
    node = new_node(1, s)
    drain(node, s)
    node.step(app(2, 1, 1, 0, 0, [(1, 1)], commit=1))
    resp = msgs_of(drain(node, s), MT.APP_RESP)
    assert [(m.reject, m.index) for m in resp] == [(False, 3)]
    assert s.last_index() == 3


# Figure 7 of the paper: a leader for term 8 and followers (a)-(f) with the listed logs.
FIGURE7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("follower", sorted(FIGURE7_FOLLOWERS))
def test_leader_brings_any_figure7_follower_into_agreement(follower: str) -> None:
    """§5.3 Figure 7: whatever the follower's log, the leader's AppendEntries consistency
    check finds the last agreeing entry, and the follower ends with the leader's log."""
    leader_s = storage_with(entries=log_of_terms(FIGURE7_LEADER), term=8)
    leader = new_node(1, leader_s)
    drain(leader, leader_s)
    follower_s = storage_with(entries=log_of_terms(FIGURE7_FOLLOWERS[follower]), term=7)
    fol = new_node(2, follower_s)
    drain(fol, follower_s)
    # Make node 1 leader for term 8 with node 3's vote (node 3 has the leader's log).
    leader.campaign()
    for m in msgs_of(drain(leader, leader_s), MT.VOTE):
        if m.to == 3:
            leader.step(Message(MT.VOTE_RESP, to=1, from_=3, term=m.term))
    assert leader.status().soft_state.raft_state == StateType.LEADER
    term = leader.status().hard_state.term
    probes = 0
    pending = drain(leader, leader_s)
    for _ in range(50):
        to_fol = [m for m in pending if m.to == 2 and m.type == MT.APP]
        if not to_fol:
            break
        probes += len(to_fol)
        for m in to_fol:
            fol.step(m)
        for m in drain(fol, follower_s):
            leader.step(m)
        pending = drain(leader, leader_s)
    n = leader_s.last_index()
    assert follower_s.last_index() == n
    assert [follower_s.term(i) for i in range(1, n + 1)] == [*FIGURE7_LEADER, term]
    # Fast back-off: a handful of probes, not one per divergent entry.
    assert probes <= 4, f"{probes} appends to reconcile follower {follower}"


def test_leader_only_commits_entries_of_its_current_term_by_counting_replicas() -> None:
    """§5.4.2 Figure 8: a leader may not conclude that an entry from a previous term is
    committed because it is stored on a majority; only entries of its own term are counted."""
    s = storage_with(entries=log_of_terms([1, 2]), term=2)
    node = new_node(1, s)
    drain(node, s)
    elect(node, s, ack=False)  # term 3, appends its empty entry at index 3
    assert node.status().hard_state.term == 3
    # Node 2 acknowledges index 2 (a term-2 entry): a majority (1 and 2) now stores it.
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=3, index=2))
    drain(node, s)
    assert node.status().hard_state.commit == 0
    # Once the term-3 entry is on a majority, it and everything before it commits.
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=3, index=3))
    drain(node, s)
    assert node.status().hard_state.commit == 3


def test_figure8_scenario_previous_term_entry_is_overwritten_safely() -> None:
    """§5.4.2 Figure 8 end to end: an entry replicated to a majority in an old term but never
    committed may be overwritten by a later leader; nothing applied is ever lost."""
    net = Network([1, 2, 3, 4, 5], seed=7)
    net.campaign(1)
    net.propose(1, b"a")
    # (a) S1 leads term 2 (here: term 1) and replicates index 3 only to S2.
    net.isolate(1)
    net.nodes[1].raw.propose(b"orphan")
    net.stabilize()
    net.heal()
    net.partition([1, 2], [3, 4, 5])
    net.nodes[1].raw.propose(b"orphan-2")
    net.stabilize()
    # (b) S5 is elected by S3, S4 and itself and writes a different entry at that index.
    net.heal()
    net.partition([1, 2], [3, 4, 5])
    net.campaign(5)
    assert net.leader() == 5 or 5 in net.leaders()
    net.propose(5, b"from-5")
    net.heal()
    net.tick(n=30)
    # Everyone agrees on what was applied, and both orphans (never committed) are gone.
    logs = {i: n.data_applied() for i, n in net.nodes.items()}
    ref = max(logs.values(), key=len)
    for i, applied in logs.items():
        assert applied == ref[: len(applied)], f"node {i} applied {applied}, not {ref}"
    assert b"from-5" in ref
    assert b"orphan" not in ref
    assert b"orphan-2" not in ref


def test_elected_leader_holds_every_committed_entry() -> None:
    """§5.4.1 Leader Completeness: a candidate missing committed entries cannot win, so every
    later leader holds them."""
    net = Network([1, 2, 3], seed=3)
    net.campaign(1)
    net.isolate(3)
    for i in range(5):
        net.propose(1, b"v%d" % i)
    committed = net.nodes[1].commit
    net.heal()
    net.isolate(1)
    # Node 3 lacks the entries; it cannot beat node 2, whatever the timing.
    net.nodes[3].raw.campaign()
    net.stabilize()
    assert net.nodes[3].state != StateType.LEADER
    for _ in range(100):
        if net.leader() not in (None, 1):
            break
        net.tick([2, 3])
    new = net.leader()
    assert new == 2
    assert net.nodes[2].storage.last_index() >= committed


def test_entries_with_same_index_and_term_have_identical_prefixes() -> None:
    """§5.3 Log Matching: after arbitrary leader changes, logs that agree on an entry's
    term agree on every entry before it."""
    net = Network([1, 2, 3, 4, 5], seed=11)
    for round_ in range(12):
        for _ in range(40):
            if net.leader() is not None:
                break
            net.tick()
        leader = net.leader()
        assert leader is not None
        for k in range(3):
            net.nodes[leader].raw.propose(b"r%d-%d" % (round_, k))
            net.stabilize()
        net.isolate(leader)
        net.nodes[leader].raw.propose(b"lost-%d" % round_)
        net.stabilize()
        net.heal()
        net.isolate((leader % 5) + 1)
    net.heal()
    net.tick(n=40)
    stores = {i: n.storage for i, n in net.nodes.items()}
    for a in stores.values():
        for b in stores.values():
            last = min(a.last_index(), b.last_index())
            for i in range(last, 0, -1):
                if a.term(i) == b.term(i):
                    assert a.entries(1, i + 1) == b.entries(1, i + 1)
                    break


def test_proposals_are_dropped_without_a_leader() -> None:
    """A follower that knows no leader cannot forward, so the proposal is reported dropped."""
    from raftlib import ProposalDropped

    node = new_node(1)
    with pytest.raises(ProposalDropped):
        node.propose(b"x")


def test_followers_forward_proposals_to_the_leader() -> None:
    """A follower forwards a proposal to the leader it knows (etcd behaviour)."""
    s = storage_with()
    node = new_node(1, s)
    node.step(Message(MT.HEARTBEAT, to=1, from_=2, term=1))
    drain(node, s)
    node.propose(b"fwd")
    props = msgs_of(drain(node, s), MT.PROP)
    assert [(m.to, [e.data for e in m.entries]) for m in props] == [(2, [b"fwd"])]


def test_disable_proposal_forwarding_drops_follower_proposals() -> None:
    """With forwarding disabled a follower drops proposals instead of forwarding them."""
    from raftlib import ProposalDropped

    s = storage_with()
    node = new_node(1, s, disable_proposal_forwarding=True)
    node.step(Message(MT.HEARTBEAT, to=1, from_=2, term=1))
    drain(node, s)
    with pytest.raises(ProposalDropped):
        node.propose(b"x")
    assert msgs_of(drain(node, s), MT.PROP) == []


def test_leader_appends_an_empty_entry_on_election() -> None:
    """§5.4.2 / §8: a new leader appends a no-op entry of its term to commit earlier ones."""
    s = storage_with()
    node = new_node(1, s)
    node.campaign()
    drain(node, s)
    node.step(Message(MT.VOTE_RESP, to=1, from_=2, term=1))
    rd = node.ready()
    assert rd.entries == (Entry(term=1, index=1),)


def test_heartbeat_commit_never_exceeds_the_followers_match() -> None:
    """A heartbeat carries min(match, commit), so a lagging follower is never told to commit
    entries it may not have (or that may differ from the leader's)."""
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    for d in (b"a", b"b", b"c"):
        node.propose(d)
    drain(node, s)
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=4))
    drain(node, s)
    assert node.status().hard_state.commit == 4
    node.tick()
    beats = {m.to: m.commit for m in msgs_of(drain(node, s), MT.HEARTBEAT)}
    assert beats == {2: 4, 3: 1}  # node 3 only acknowledged the empty entry
