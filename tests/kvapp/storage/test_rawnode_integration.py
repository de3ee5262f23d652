"""RaftStore under the real raft core: a 3-node cluster in one process, restarted from disk.

Nodes persist each Ready in a RaftStore, snapshot and compact their state machines, lose their
volatile state on restart, and a node cut off while the leader compacted catches up by snapshot
(``apply_snapshot``). Every proposal must end up applied, in order, on every node.
"""

from __future__ import annotations

import random
from pathlib import Path

import cbor2

from kvapp.storage.raftstore import RaftStore
from raftlib.codec import decode_conf_change
from raftlib.config import Config
from raftlib.rawnode import RawNode
from raftlib.types import ConfState, EntryType, Message, MessageType, StateType

VOTERS = ConfState(voters=(1, 2, 3))


class Member:
    def __init__(self, node_id: int, directory: Path) -> None:
        self.id = node_id
        self.dir = directory
        self.start()

    def start(self) -> None:
        self.store = RaftStore.open(
            self.dir,
            cluster_id=7,
            member_id=self.id,
            conf_state=VOTERS,
            segment_size=2048,
            keep_snapshots=2,
            fsync=False,
            preallocate=False,
        )
        snap = self.store.snapshot()
        self.state: list[bytes] = [] if snap.is_empty() else cbor2.loads(snap.data)
        self.applied = snap.metadata.index
        self.node = RawNode(
            Config(
                id=self.id,
                storage=self.store,
                rng=random.Random(self.id),
                applied=self.applied,
            )
        )

    def crash_and_restart(self) -> None:
        self.store.close()
        self.start()

    def handle_ready(self) -> list[Message]:
        rd = self.node.ready()
        self.store.save_ready(rd)  # snapshot, entries, hard state; commit-only Readys deferred
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self.state = cbor2.loads(rd.snapshot.data)
            self.applied = rd.snapshot.metadata.index
        for e in rd.committed_entries:
            assert e.index == self.applied + 1, (self.id, e.index, self.applied)
            if e.type == EntryType.NORMAL and e.data:
                self.state.append(e.data)
            elif e.type != EntryType.NORMAL:
                self.node.apply_conf_change(decode_conf_change(e.type, e.data))
            self.applied = e.index
        self.node.advance(rd)
        if self.applied - self.store.first_index() >= 8:
            self.store.create_snapshot(self.applied, None, cbor2.dumps(self.state))
            self.store.compact(self.applied)
        return [*rd.messages, *rd.persisted_messages]


class Cluster:
    def __init__(self, base: Path) -> None:
        self.members = {i: Member(i, base / f"n{i}") for i in (1, 2, 3)}
        self.isolated: set[int] = set()
        self.snapshots_sent = 0

    def run(self) -> None:
        for _ in range(10_000):
            inflight = [
                m for nd in self.members.values() if nd.node.has_ready() for m in nd.handle_ready()
            ]
            if not inflight:
                return
            for m in inflight:
                if m.to in self.isolated or m.from_ in self.isolated:
                    continue
                self.members[m.to].node.step(m)
                if m.type == MessageType.SNAP:
                    self.snapshots_sent += 1
                    self.members[m.from_].node.report_snapshot(m.to, success=True)
        raise AssertionError("cluster did not settle")

    def leader(self) -> Member:
        leaders = [
            nd
            for nd in self.members.values()
            if nd.node.status().soft_state.raft_state == StateType.LEADER
        ]
        assert len(leaders) == 1, [nd.node.status() for nd in self.members.values()]
        return leaders[0]

    def propose(self, data: bytes) -> None:
        self.leader().node.propose(data)
        self.run()

    def heartbeat(self) -> None:
        self.leader().node.tick()
        self.run()


def test_cluster_over_raftstore_survives_restarts_and_catches_up_by_snapshot(tmp_path):
    c = Cluster(tmp_path)
    c.members[1].node.campaign()
    c.run()
    proposals = [b"p%d" % i for i in range(90)]
    for p in proposals[:30]:
        c.propose(p)
    c.isolated.add(3)
    for p in proposals[30:60]:
        c.propose(p)
    c.members[2].crash_and_restart()
    c.heartbeat()
    assert c.members[1].store.first_index() > c.members[3].store.last_index() + 1
    c.isolated.clear()
    c.heartbeat()
    c.propose(proposals[60])
    assert c.snapshots_sent >= 1
    assert c.members[3].store.snapshot().metadata.index > 30  # installed from the leader
    assert c.members[3].state == proposals[:61]
    c.members[1].crash_and_restart()
    c.members[2].node.campaign()
    c.run()
    assert c.leader().id == 2
    for p in proposals[61:]:
        c.propose(p)
    for nd in c.members.values():
        nd.crash_and_restart()
    c.members[3].node.campaign()
    c.run()
    c.heartbeat()
    for nd in c.members.values():
        assert nd.state == proposals, nd.id
        assert nd.store.first_index() > 60  # compaction happened on every node
