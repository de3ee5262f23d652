"""RaftStore.save_ready: a Ready persisted in one call, fsynced only when it must be.

A Ready that only moves the commit index (``must_sync`` false) is neither written nor synced
on its own: the store keeps the new hard state and writes it with the next record (or on
close). So a crash can bring back an older commit index than the one the application applied
up to, which a restarted RawNode accepts through ``Config(applied=...)``.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from kvapp.storage.raftstore import RaftStore
from raftlib import Ready
from raftlib.config import Config
from raftlib.rawnode import RawNode
from raftlib.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata

from .helpers import CLUSTER, VOTERS, FaultyDisk, all_entries, open_store


def ready(**fields: Any) -> Ready:
    """A Ready with nothing in it but ``fields``."""
    base: dict[str, Any] = {
        "soft_state": None,
        "hard_state": None,
        "entries": (),
        "snapshot": None,
        "committed_entries": (),
        "messages": (),
        "persisted_messages": (),
        "read_states": (),
        "must_sync": False,
    }
    return Ready(**(base | fields))


def ents(first: int, last: int, term: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(term=term, index=i, data=b"d%d" % i) for i in range(first, last + 1))


def crash_image(store: RaftStore, to: Path) -> Path:
    """What the disk holds if the process died now (the page cache survives a process crash)."""
    shutil.copytree(store.directory, to)
    return to


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FaultyDisk:
    return FaultyDisk().install(monkeypatch)


def test_only_a_commit_only_ready_skips_the_fsync(tmp_path, disk):
    with open_store(tmp_path, fsync=True) as store:
        cases = [
            ("entries", ready(hard_state=HardState(1, 1, 0), entries=ents(1, 3), must_sync=True)),
            ("commit only", ready(hard_state=HardState(1, 1, 2))),
            ("commit only again", ready(hard_state=HardState(1, 1, 3))),
            ("nothing to persist", ready(committed_entries=ents(1, 3))),
            ("vote", ready(hard_state=HardState(2, 3, 3), must_sync=True)),
            ("commit only", ready(hard_state=HardState(2, 3, 3))),  # unchanged: nothing to do
            ("term", ready(hard_state=HardState(3, 0, 3), must_sync=True)),
            ("entries only", ready(entries=ents(4, 4, term=3), must_sync=True)),
        ]
        for name, rd in cases:
            syncs, writes, end = disk.syncs, disk.writes, store.wal.end_offset
            store.save_ready(rd)
            if rd.must_sync:
                assert (disk.syncs - syncs, disk.writes - writes) == (1, 1), name
            else:
                assert (disk.syncs - syncs, disk.writes - writes) == (0, 0), name
                assert store.wal.end_offset == end, name
            if rd.hard_state is not None:
                assert store.hard_state == rd.hard_state, name
        assert tuple(all_entries(store)) == (*ents(1, 3), *ents(4, 4, term=3))
    with open_store(tmp_path) as store:
        assert store.hard_state == HardState(3, 0, 3)


def test_deferred_commit_rides_on_the_next_record(tmp_path, disk):
    with open_store(tmp_path, fsync=True) as store:
        store.save_ready(ready(hard_state=HardState(1, 1, 0), entries=ents(1, 5), must_sync=True))
        store.save_ready(ready(hard_state=HardState(1, 1, 4)))
        assert store.hard_state == HardState(1, 1, 4)
        assert store.durable_hard_state == HardState(1, 1, 0)
        assert store.initial_state()[0] == HardState(1, 1, 4)  # raftlib reads the newest
        with open_store(crash_image(store, tmp_path / "crash1")) as crashed:
            assert crashed.hard_state == HardState(1, 1, 0)  # older commit, still consistent
            assert tuple(all_entries(crashed)) == ents(1, 5)
        syncs = disk.syncs
        store.save_ready(ready(entries=ents(6, 6), must_sync=True))  # no hard state in this one
        assert disk.syncs - syncs == 1
        assert store.durable_hard_state == HardState(1, 1, 4)
        with open_store(crash_image(store, tmp_path / "crash2")) as crashed:
            assert crashed.hard_state == HardState(1, 1, 4)
            assert tuple(all_entries(crashed)) == ents(1, 6)


def test_a_snapshot_marker_carries_the_deferred_commit(tmp_path, disk):
    """The commit index on disk is never behind a snapshot the application made from it."""
    with open_store(tmp_path, fsync=True) as store:
        store.save_ready(ready(hard_state=HardState(1, 1, 0), entries=ents(1, 5), must_sync=True))
        store.save_ready(ready(hard_state=HardState(1, 1, 5)))
        store.create_snapshot(5, VOTERS, b"applied through 5")
        with open_store(crash_image(store, tmp_path / "after-snapshot")) as crashed:
            assert crashed.hard_state == HardState(1, 1, 5)
        store.save_ready(ready(hard_state=HardState(1, 1, 5)))
        store.compact(4)
        with open_store(crash_image(store, tmp_path / "after-compact")) as crashed:
            assert crashed.hard_state == HardState(1, 1, 5)
            assert crashed.first_index() == 5


def test_close_writes_the_deferred_commit(tmp_path, disk):
    with open_store(tmp_path, fsync=True) as store:
        store.save_ready(ready(hard_state=HardState(1, 1, 0), entries=ents(1, 3), must_sync=True))
        store.save_ready(ready(hard_state=HardState(1, 1, 3)))
        syncs = disk.syncs
    assert disk.syncs - syncs == 1
    with open_store(tmp_path) as store:
        assert store.hard_state == HardState(1, 1, 3)


def test_save_after_a_deferred_commit_makes_it_durable(tmp_path):
    """``save`` keeps its promise (durable on return) even for a hard state already in memory."""
    with open_store(tmp_path) as store:
        store.save_ready(ready(hard_state=HardState(1, 1, 0), entries=ents(1, 3), must_sync=True))
        store.save_ready(ready(hard_state=HardState(1, 1, 3)))
        store.save(HardState(1, 1, 3))
        assert store.durable_hard_state == HardState(1, 1, 3)
        with open_store(crash_image(store, tmp_path / "crash")) as crashed:
            assert crashed.hard_state == HardState(1, 1, 3)


def test_ready_that_claims_no_sync_but_changes_the_vote_is_synced(tmp_path, disk):
    """Only a commit change may be deferred, whatever ``must_sync`` says."""
    with open_store(tmp_path, fsync=True) as store:
        store.save_ready(ready(hard_state=HardState(1, 2, 0)))
        assert store.durable_hard_state == HardState(1, 2, 0)
        store.save_ready(ready(hard_state=HardState(1, 2, 0), entries=ents(1, 1)))
        assert tuple(all_entries(store)) == ents(1, 1)
        with open_store(crash_image(store, tmp_path / "crash")) as crashed:
            assert tuple(all_entries(crashed)) == ents(1, 1)


def test_ready_with_a_snapshot_installs_it_then_saves(tmp_path):
    snap = Snapshot(b"leader state", SnapshotMetadata(VOTERS, 10, 2))
    with open_store(tmp_path) as store:
        store.save_ready(ready(hard_state=HardState(1, 1, 0), entries=ents(1, 3), must_sync=True))
        store.save_ready(
            ready(
                hard_state=HardState(2, 0, 10),
                snapshot=snap,
                entries=ents(11, 12, term=2),
                must_sync=True,
            )
        )
        store.save_ready(ready(snapshot=Snapshot()))  # an empty snapshot is no snapshot
    with open_store(tmp_path) as store:
        assert store.snapshot() == snap
        assert tuple(all_entries(store)) == ents(11, 12, term=2)
        assert store.hard_state == HardState(2, 0, 10)


def test_invalid_deferred_hard_state_is_refused(tmp_path):
    with open_store(tmp_path) as store:
        store.save_ready(ready(hard_state=HardState(1, 1, 0), entries=ents(1, 3), must_sync=True))
        bad: Any = "3"
        with pytest.raises(ValueError, match="hard state commit"):
            store.save_ready(ready(hard_state=HardState(1, 1, bad)))
        assert store.hard_state == HardState(1, 1, 0)


# -- under a real RawNode --


def _single_node(directory: Path, applied: int = 0) -> tuple[RaftStore, RawNode]:
    store = RaftStore.open(
        directory,
        cluster_id=CLUSTER,
        member_id=1,
        conf_state=ConfState(voters=(1,)),
        preallocate=False,
        fsync=True,
    )
    node = RawNode(Config(id=1, storage=store, rng=random.Random(1), applied=applied))
    return store, node


def test_rawnode_readies_sync_exactly_when_they_must(tmp_path, disk):
    store, node = _single_node(tmp_path / "n1")
    node.campaign()
    applied: list[bytes] = []
    commit_only = 0
    for i in range(21):
        if i % 2 == 1:
            node.propose(b"p%d" % i)
        while node.has_ready():
            rd = node.ready()
            syncs = disk.syncs
            store.save_ready(rd)
            assert (disk.syncs > syncs) == rd.must_sync
            if not rd.must_sync and rd.hard_state is not None:
                commit_only += 1
            applied += [
                e.data for e in rd.committed_entries if e.type == EntryType.NORMAL and e.data
            ]
            node.advance(rd)
    assert commit_only >= 5
    assert applied == [b"p%d" % i for i in range(1, 21, 2)]
    store.close()


def test_restart_after_losing_an_unsynced_commit(tmp_path):
    """Crash after a commit-only Ready: the WAL's commit is older than what was applied.

    The application restarts with ``Config(applied=N)`` for the N it had applied; RawNode must
    accept an applied index beyond the durable commit (every applied entry was committed).
    """
    store, node = _single_node(tmp_path / "n1")
    node.campaign()
    applied = 0
    image = None
    for data in (None, b"x"):
        if data is not None:
            node.propose(data)
        while node.has_ready():
            rd = node.ready()
            store.save_ready(rd)
            if rd.committed_entries:
                applied = rd.committed_entries[-1].index
            node.advance(rd)
            if data is not None and not rd.must_sync and rd.hard_state is not None:
                image = crash_image(store, tmp_path / "crash")  # power lost after applying "x"
    assert image is not None
    store.close()
    restarted, _ = _single_node(image, applied=0)
    durable_commit = restarted.hard_state.commit
    restarted.close()
    assert durable_commit < applied
    restarted, node = _single_node(image, applied=applied)
    with restarted:
        status = node.status()
        assert status.applied == applied
        assert status.hard_state.commit >= applied
        assert not node.has_ready() or not node.ready().committed_entries
