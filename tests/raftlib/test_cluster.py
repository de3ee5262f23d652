"""Whole-cluster runs: elections, 1,000 replicated proposals, partitions, catch-up by log and by
snapshot. Every node must apply the same entries in the same order, each exactly once.

The cluster here is deliberately self-contained (its own Ready loop and a list-of-payloads state
machine with snapshots), so these tests exercise RawNode exactly as an application would.
"""

from __future__ import annotations

import contextlib
import random

import cbor2
import pytest

from raftlib import (
    ConfChange,
    ConfChangeType,
    ConfChangeV2,
    Config,
    ConfState,
    EntryType,
    MemoryStorage,
    Message,
    ProposalDropped,
    RawNode,
    StateType,
    StepPeerNotFoundError,
)
from raftlib.codec import decode_conf_change


class _Member:
    def __init__(self, node_id: int, voters: tuple[int, ...], seed: int) -> None:
        self.id = node_id
        self.storage = MemoryStorage(ConfState(voters=voters))
        self.payload_index: dict[bytes, int] = {}  # log index of each payload applied
        self.raw = RawNode(
            Config(
                id=node_id,
                storage=self.storage,
                election_tick=10,
                heartbeat_tick=1,
                pre_vote=True,
                check_quorum=True,
                max_size_per_msg=64 * 1024,
                rng=random.Random(seed * 1000 + node_id),
            )
        )
        self.state: list[bytes] = []  # the application state: payloads in apply order
        self.applied_index = 0
        self.snapshots_installed = 0
        self.reads: dict[bytes, int] = {}  # answered read_index requests: ctx -> read index

    def handle_ready(self) -> list[Message]:
        rd = self.raw.ready()
        out = list(rd.messages)
        if rd.snapshot is not None:
            self.storage.apply_snapshot(rd.snapshot)
            self.state = list(cbor2.loads(rd.snapshot.data))
            self.applied_index = rd.snapshot.metadata.index
            self.snapshots_installed += 1
        self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        out.extend(rd.persisted_messages)
        for e in rd.committed_entries:
            assert e.index == self.applied_index + 1, "entries must be applied in order, once"
            self.applied_index = e.index
            if e.type == EntryType.NORMAL and e.data:
                self.state.append(e.data)
                self.payload_index[e.data] = e.index
            elif e.type != EntryType.NORMAL:
                cc = decode_conf_change(e.type, e.data) if e.data else ConfChangeV2()
                self.raw.apply_conf_change(cc)
        for rs in rd.read_states:
            self.reads[rs.request_ctx] = rs.index
        self.raw.advance(rd)
        return out

    def compact(self, keep: int = 10) -> None:
        """Snapshot the applied state and drop all but the last ``keep`` applied entries."""
        idx = self.applied_index - keep
        if idx <= self.storage.first_index():
            return
        data = cbor2.dumps(self.state[: len(self.state) - self._payloads_after(idx)])
        self.storage.create_snapshot(idx, None, data)
        self.storage.compact(idx)

    def _payloads_after(self, idx: int) -> int:
        ents = self.storage.entries(idx + 1, self.applied_index + 1)
        return sum(1 for e in ents if e.type == EntryType.NORMAL and e.data)


class _Cluster:
    def __init__(self, n: int, seed: int) -> None:
        voters = tuple(range(1, n + 1))
        self.members = {i: _Member(i, voters, seed) for i in voters}
        self.rng = random.Random(seed)
        self.cut: set[int] = set()  # isolated members
        self.inflight: list[Message] = []

    def connected(self, a: int, b: int) -> bool:
        return (a in self.cut) == (b in self.cut)

    def run(self, ticks: int = 0, rounds: int = 1) -> None:
        for _ in range(rounds):
            for _ in range(ticks):
                for m in self.members.values():
                    m.raw.tick()
            for _ in range(1000):
                moved = False
                for m in self.members.values():
                    while m.raw.has_ready():
                        self.inflight += m.handle_ready()
                        moved = True
                msgs, self.inflight = self.inflight, []
                self.rng.shuffle(msgs)  # arbitrary but seeded delivery order
                for msg in msgs:
                    moved = True
                    if not self.connected(msg.from_, msg.to):
                        continue
                    with contextlib.suppress(ProposalDropped, StepPeerNotFoundError):
                        self.members[msg.to].raw.step(msg)
                if not moved:
                    break

    def leader(self) -> int | None:
        leaders = [
            (m.raw.status().hard_state.term, i)
            for i, m in self.members.items()
            if m.raw.status().soft_state.raft_state == StateType.LEADER and i not in self.cut
        ]
        return max(leaders)[1] if leaders else None

    def wait_leader(self) -> int:
        for _ in range(200):
            leader = self.leader()
            if leader is not None:
                return leader
            self.run(ticks=1)
        raise AssertionError("no leader elected within 200 ticks")

    def propose(self, data: bytes) -> None:
        for _ in range(50):
            leader = self.wait_leader()
            try:
                self.members[leader].raw.propose(data)
                return
            except ProposalDropped:
                self.run(ticks=1)
        raise AssertionError(f"proposal {data!r} dropped 50 times")


def _assert_consistent(cluster: _Cluster, expected: list[bytes]) -> None:
    for i, m in cluster.members.items():
        assert m.state == expected, f"node {i} applied {len(m.state)} payloads, diverging"


@pytest.mark.parametrize("size", [3, 5])
def test_cluster_replicates_1000_proposals_in_the_same_order_exactly_once(size: int) -> None:
    c = _Cluster(size, seed=size)
    c.wait_leader()
    assert (
        sum(m.raw.status().soft_state.raft_state == StateType.LEADER for m in c.members.values())
        == 1
    )
    expected = []
    for i in range(1000):
        data = b"p%04d" % i
        expected.append(data)
        c.propose(data)
        if i % 50 == 0:
            c.run()
    c.run(ticks=1, rounds=3)
    _assert_consistent(c, expected)


@pytest.mark.parametrize("size", [3, 5])
def test_majority_keeps_committing_and_minority_catches_up_by_log(size: int) -> None:
    c = _Cluster(size, seed=10 + size)
    leader = c.wait_leader()
    expected = [b"before"]
    c.propose(b"before")
    c.run()
    minority = {i for i in c.members if i != leader}
    minority = set(sorted(minority)[: (size - 1) // 2])
    c.cut = minority
    for i in range(200):
        data = b"during%03d" % i
        expected.append(data)
        c.propose(data)
        c.run()
    for i in minority:
        assert c.members[i].state == [b"before"]
    c.cut = set()
    c.run(ticks=1, rounds=20)
    _assert_consistent(c, expected)
    assert all(m.snapshots_installed == 0 for m in c.members.values())


@pytest.mark.parametrize("size", [3, 5])
def test_minority_catches_up_by_snapshot_after_compaction(size: int) -> None:
    c = _Cluster(size, seed=20 + size)
    c.wait_leader()
    expected = [b"before"]
    c.propose(b"before")
    c.run()
    leader = c.wait_leader()
    lagging = max(i for i in c.members if i != leader)
    c.cut = {lagging}
    for i in range(300):
        data = b"during%03d" % i
        expected.append(data)
        c.propose(data)
        c.run()
        if i % 100 == 99:
            for i2, m in c.members.items():
                if i2 != lagging:
                    m.compact()
    c.cut = set()
    c.run(ticks=1, rounds=30)
    _assert_consistent(c, expected)
    assert c.members[lagging].snapshots_installed >= 1


def test_leader_partitioned_into_minority_is_replaced_and_its_uncommitted_tail_dropped() -> None:
    c = _Cluster(5, seed=31)
    old = c.wait_leader()
    c.propose(b"a")
    c.run()
    c.cut = {old}
    c.members[old].raw.propose(b"never-committed")
    c.run(ticks=1, rounds=40)
    new = c.wait_leader()
    assert new != old
    c.propose(b"b")
    c.run()
    c.cut = set()
    c.run(ticks=1, rounds=20)
    _assert_consistent(c, [b"a", b"b"])


def test_reads_and_membership_changes_mixed_with_writes_stay_linearizable() -> None:
    """Every read_index answer, served once applied up to its index, reflects every write that
    completed before the read was issued, while voters are added and removed."""
    c = _Cluster(3, seed=41)
    c.wait_leader()
    c.members[4] = _Member(4, (1, 2, 3), seed=41)
    done: list[bytes] = []  # writes known applied (acknowledged) before each read
    changes = [ConfChange(ConfChangeType.ADD_NODE, 4), ConfChange(ConfChangeType.REMOVE_NODE, 2)]
    answered = 0
    for i in range(120):
        data = b"w%03d" % i
        c.propose(data)
        c.run()
        leader = c.wait_leader()
        assert data in c.members[leader].state
        done.append(data)
        if i in (30, 80):
            c.members[leader].raw.propose_conf_change(changes.pop(0))
            c.run(ticks=1, rounds=3)
        reader_id = [m for m in sorted(c.members) if m != 2 or i < 80][i % 3]
        reader = c.members[reader_id]
        ctx = b"r%03d" % i
        reader.raw.read_index(ctx)
        c.run()
        if ctx not in reader.reads:
            continue  # no leader known at that moment: the read is simply not answered
        answered += 1
        idx = reader.reads[ctx]
        assert reader.applied_index >= idx
        # Serving at idx must reflect every write acknowledged before the read was issued.
        missed = [d for d in done if reader.payload_index.get(d, idx + 1) > idx]
        assert missed == [], f"read {ctx!r} at index {idx} misses writes {missed[:3]}"
    assert len(changes) == 0
    assert answered >= 100, f"only {answered} of 120 reads were answered"
    leader = c.wait_leader()
    assert c.members[leader].raw.status().config.voters == (1, 3, 4)
