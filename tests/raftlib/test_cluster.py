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


class _Member:
    def __init__(self, node_id: int, voters: tuple[int, ...], seed: int) -> None:
        self.id = node_id
        self.storage = MemoryStorage(ConfState(voters=voters))
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
