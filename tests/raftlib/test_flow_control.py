"""Per-peer progress: probe / replicate / snapshot states, the inflight window, message sizes,
and the uncommitted-log limit."""

from __future__ import annotations

from typing import Any

import pytest

from raftlib import (
    MemoryStorage,
    Message,
    MessageType,
    ProgressState,
    ProposalDropped,
    RawNode,
)

from .helpers import drain, elect, msgs_of, new_node, storage_with

MT = MessageType


def _leader(**cfg: Any) -> tuple[RawNode, MemoryStorage]:
    s = storage_with()
    node = new_node(1, s, **cfg)
    elect(node, s, ack=False)
    return node, s


def test_probe_state_sends_one_append_at_a_time() -> None:
    """A follower in probe state gets one append; more wait for its answer (or a heartbeat)."""
    node, s = _leader()
    assert node.status().progress[2].state == ProgressState.PROBE
    assert node.status().progress[2].paused
    for d in (b"a", b"b", b"c"):
        node.propose(d)
    assert [m for m in msgs_of(drain(node, s), MT.APP) if m.to == 2] == []
    # A heartbeat response unpauses the probe and triggers one append with everything.
    node.step(Message(MT.HEARTBEAT_RESP, to=1, from_=2, term=1))
    apps = [m for m in msgs_of(drain(node, s), MT.APP) if m.to == 2]
    assert len(apps) == 1
    assert [e.index for e in apps[0].entries] == [1, 2, 3, 4]


def test_acknowledged_probe_moves_to_replicate_and_pipelines() -> None:
    node, s = _leader()
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=1))
    drain(node, s)
    assert node.status().progress[2].state == ProgressState.REPLICATE
    apps = []
    for d in (b"a", b"b", b"c"):
        node.propose(d)
        apps += [m for m in msgs_of(drain(node, s), MT.APP) if m.to == 2]
    assert len(apps) == 3  # one per Ready cycle, without waiting for acknowledgements
    assert node.status().progress[2].inflight == 3


def test_proposals_between_readys_coalesce_into_one_append_per_peer() -> None:
    node, s = _leader()
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=1))
    node.step(Message(MT.APP_RESP, to=1, from_=3, term=1, index=1))
    drain(node, s)
    for d in (b"a", b"b", b"c"):
        node.propose(d)
    apps = msgs_of(drain(node, s), MT.APP)
    assert sorted((m.to, len(m.entries)) for m in apps) == [(2, 3), (3, 3)]


def test_inflight_window_limits_pipelining_and_acks_free_it() -> None:
    node, s = _leader(max_inflight_msgs=2)
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=1))
    drain(node, s)
    apps = []
    for d in (b"a", b"b", b"c", b"d"):
        node.propose(d)
        apps += [m for m in msgs_of(drain(node, s), MT.APP) if m.to == 2]
    assert [[e.index for e in m.entries] for m in apps] == [[2], [3]]
    assert node.status().progress[2].paused
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=3))
    apps = [m for m in msgs_of(drain(node, s), MT.APP) if m.to == 2]
    assert [[e.index for e in m.entries] for m in apps] == [[4, 5]]


def test_inflight_bytes_limit() -> None:
    node, s = _leader(max_inflight_bytes=2000, max_size_per_msg=1000)
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=1))
    drain(node, s)
    apps = []
    for _ in range(4):
        node.propose(b"x" * 1000)
        apps += [m for m in msgs_of(drain(node, s), MT.APP) if m.to == 2]
    assert len(apps) == 2
    assert node.status().progress[2].inflight_bytes == 2000


def test_max_size_per_msg_splits_appends() -> None:
    node, s = _leader(max_size_per_msg=300)
    for _ in range(6):
        node.propose(b"y" * 100)
    drain(node, s)
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=1))
    apps = [m for m in msgs_of(drain(node, s), MT.APP) if m.to == 2]
    sizes = [sum(len(e.data) + 16 for e in m.entries) for m in apps]
    assert len(apps) >= 3
    assert all(sz <= 300 or len(m.entries) == 1 for sz, m in zip(sizes, apps, strict=True))
    assert [e.index for m in apps for e in m.entries] == list(range(2, 8))


def test_rejection_in_replicate_falls_back_to_probe() -> None:
    node, s = _leader()
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=1))
    node.propose(b"a")
    drain(node, s)
    node.step(
        Message(MT.APP_RESP, to=1, from_=2, term=1, index=2, reject=True, reject_hint=1, log_term=1)
    )
    assert node.status().progress[2].state == ProgressState.PROBE


def test_stale_rejection_is_ignored() -> None:
    node, s = _leader()
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=1))
    for d in (b"a", b"b"):
        node.propose(d)
    drain(node, s)
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=3))
    drain(node, s)
    before = node.status().progress[2]
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=1, reject=True, reject_hint=0))
    after = node.status().progress[2]
    assert after.state == ProgressState.REPLICATE
    assert (after.match, after.next) == (before.match, before.next)


def test_report_unreachable_moves_replicating_peer_to_probe() -> None:
    node, s = _leader()
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=1))
    drain(node, s)
    node.report_unreachable(2)
    assert node.status().progress[2].state == ProgressState.PROBE


def test_uncommitted_size_limit_drops_proposals_until_commit() -> None:
    node, s = _leader(max_uncommitted_entries_size=1000)
    node.propose(b"z" * 600)
    node.propose(b"z" * 300)
    with pytest.raises(ProposalDropped):
        node.propose(b"z" * 200)
    drain(node, s)
    # Once committed and applied, the quota is released.
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=3))
    drain(node, s)
    assert node.status().hard_state.commit == 3
    node.propose(b"z" * 200)


def test_empty_entries_always_fit_the_uncommitted_limit() -> None:
    node, _s = _leader(max_uncommitted_entries_size=10)
    node.propose(b"z" * 10)
    with pytest.raises(ProposalDropped):
        node.propose(b"q")
    node.propose(b"")  # zero payload never exceeds the limit


def test_follower_needing_compacted_entries_gets_a_snapshot() -> None:
    node, s = _leader()
    for d in (b"a", b"b", b"c"):
        node.propose(d)
    drain(node, s)
    node.step(Message(MT.APP_RESP, to=1, from_=3, term=1, index=4))
    drain(node, s)
    assert node.status().hard_state.commit == 4
    s.create_snapshot(4, None, b"state@4")
    s.compact(4)
    # Node 2 answers the first probe: it has nothing. The entries it needs are gone.
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=0, reject=True, reject_hint=0))
    snaps = [m for m in drain(node, s) if m.type == MT.SNAP]
    assert [(m.to, m.snapshot.metadata.index if m.snapshot else None) for m in snaps] == [(2, 4)]
    pr = node.status().progress[2]
    assert pr.state == ProgressState.SNAPSHOT
    assert pr.pending_snapshot == 4
    assert pr.paused
    node.report_snapshot(2, success=True)
    assert node.status().progress[2].state == ProgressState.PROBE
    assert node.status().progress[2].next == 5


def _leader_snapshotting_to_2() -> RawNode:
    """A leader whose log is compacted past what node 2 (which has nothing) needs."""
    node, s = _leader()
    node.propose(b"a")
    drain(node, s)
    node.step(Message(MT.APP_RESP, to=1, from_=3, term=1, index=2))
    drain(node, s)
    s.create_snapshot(2, None, b"state")
    s.compact(2)
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=0, reject=True, reject_hint=0))
    drain(node, s)
    assert node.status().progress[2].state == ProgressState.SNAPSHOT
    return node


def test_failed_snapshot_report_probes_again_from_match() -> None:
    node = _leader_snapshotting_to_2()
    node.report_snapshot(2, success=False)
    pr = node.status().progress[2]
    assert pr.state == ProgressState.PROBE
    assert pr.next == 1
    assert pr.paused  # wait a heartbeat before retrying


def test_snapshot_state_ends_when_follower_catches_up_from_the_log() -> None:
    node = _leader_snapshotting_to_2()
    # The follower reports having index 2 (e.g. it applied the snapshot): resume replication.
    node.step(Message(MT.APP_RESP, to=1, from_=2, term=1, index=2))
    assert node.status().progress[2].state == ProgressState.REPLICATE


def test_progress_transitions_follow_the_documented_table() -> None:
    from raftlib.errors import RaftInvariantError
    from raftlib.tracker.inflights import Inflights
    from raftlib.tracker.progress import TRANSITIONS, Progress

    pr = Progress(next=5, match=4, inflights=Inflights(4))
    pr.become_replicate()
    pr.become_snapshot(10)
    assert ProgressState.REPLICATE not in TRANSITIONS[ProgressState.SNAPSHOT]
    with pytest.raises(RaftInvariantError):
        pr.become_replicate()
    pr.become_probe()
    assert pr.next == 11  # after the pending snapshot
