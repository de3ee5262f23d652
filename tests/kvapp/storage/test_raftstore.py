"""RaftStore: the Storage contract, recovery, identity, locking, snapshots, release, failures."""

from __future__ import annotations

import logging
import os

import pytest

from kvapp.storage.errors import (
    SnapshotCorruptError,
    StoreFailedError,
    StoreLockedError,
    WalCorruptError,
    WalIdentityError,
)
from kvapp.storage.raftstore import RaftStore, replay_records
from kvapp.storage.wal import (
    BatchRecord,
    CompactRecord,
    LocatedRecord,
    StateRecord,
    list_segments,
    read_wal,
)
from raftlib.errors import (
    CompactedError,
    RaftInvariantError,
    SnapshotOutOfDateError,
    UnavailableError,
)
from raftlib.storage import MemoryStorage, Storage
from raftlib.types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata

from .helpers import CLUSTER, MEMBER, VOTERS, all_entries, fill, open_store


def ents(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term=term, index=i, data=b"d%d" % i) for i in range(first, last + 1)]


def test_fresh_directory_is_an_empty_storage(tmp_path):
    with open_store(tmp_path / "new") as store:
        assert isinstance(store, Storage)
        fresh = MemoryStorage()
        assert store.initial_state() == fresh.initial_state()
        assert (store.first_index(), store.last_index()) == (1, 0)
        assert store.snapshot() == fresh.snapshot()
        assert store.term(0) == 0
        with pytest.raises(UnavailableError):
            store.entries(1, 1)
        with pytest.raises(UnavailableError):
            store.term(1)


def test_state_survives_reopen(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(2, 1, 0), ents(1, 5, term=2))
        store.save(HardState(2, 1, 4))
        store.create_snapshot(3, VOTERS, b"three")
    with open_store(tmp_path) as store:
        assert store.hard_state == HardState(2, 1, 4)
        assert store.initial_state() == (HardState(2, 1, 4), VOTERS)
        assert all_entries(store) == ents(1, 5, term=2)
        assert store.snapshot() == Snapshot(b"three", SnapshotMetadata(VOTERS, 3, 2))
        assert store.term(5) == 2


def test_real_fsync_and_preallocation(tmp_path):
    with open_store(tmp_path, fsync=True, preallocate=True, segment_size=4096) as store:
        fill(store, 40, seed=3)
        store.create_snapshot(20, VOTERS, b"x" * 100)
        store.compact(20)
        expected = all_entries(store)
    with open_store(tmp_path, fsync=True, preallocate=True, segment_size=4096) as store:
        assert all_entries(store) == expected
    assert list_segments(tmp_path / "wal")[-1].path.stat().st_size == 4096


def test_conflicting_entries_replace_the_suffix(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 6, term=1))
        store.save(HardState(2, 2, 2), ents(4, 5, term=2))
        assert [e.term for e in all_entries(store)] == [1, 1, 1, 2, 2]
    with open_store(tmp_path) as store:
        assert [e.term for e in all_entries(store)] == [1, 1, 1, 2, 2]
        assert store.last_index() == 5


def test_invalid_saves_write_nothing(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 3))
        end = store.wal.end_offset
        with pytest.raises(RaftInvariantError, match="not consecutive"):
            store.save(HardState(5, 5, 5), [ents(4, 4)[0], ents(6, 6)[0]])
        with pytest.raises(RaftInvariantError, match="missing log entry"):
            store.save(HardState(5, 5, 5), ents(5, 6))
        store.save(HardState(1, 1, 0))  # unchanged hard state, no entries: nothing to write
        store.save(None, [])
        assert store.wal.end_offset == end
        assert store.hard_state == HardState(1, 1, 0)
        assert store.last_index() == 3


def test_compacted_entries_in_a_save_are_skipped(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 5))
        store.compact(3)
        store.save(None, ents(2, 7, term=1))
        assert store.first_index() == 4
        assert all_entries(store) == ents(4, 7)
        store.append(ents(1, 2))
        assert all_entries(store) == ents(4, 7)


def test_create_snapshot_errors(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 10))
        store.create_snapshot(4, VOTERS, b"4")
        with pytest.raises(SnapshotOutOfDateError):
            store.create_snapshot(4, None, b"again")
        with pytest.raises(ValueError, match="after last index"):
            store.create_snapshot(11, None, b"")
        store.compact(8)
        with pytest.raises(CompactedError):  # MemoryStorage would report a wrong term here
            store.create_snapshot(6, None, b"")
        snap = store.create_snapshot(8, None, b"8")
        assert snap.metadata == SnapshotMetadata(VOTERS, 8, 1)


def test_a_staged_snapshot_counts_once_adopted_and_is_an_orphan_otherwise(tmp_path):
    staged = Snapshot(b"at 6", SnapshotMetadata(VOTERS, 6, 1))
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 10))
        store.stage_snapshot(staged)
        assert store.snapshotter.path_for(1, 6).exists()
        assert store.snapshot().is_empty()  # written, not yet recorded
    with open_store(tmp_path) as store:  # a crash before adopting: the file is an orphan
        assert store.snapshot().is_empty()
        assert not store.snapshotter.path_for(1, 6).exists()
        store.stage_snapshot(staged)
        with pytest.raises(ValueError, match="does not match"):
            store.adopt_snapshot(Snapshot(b"", SnapshotMetadata(VOTERS, 6, 2)))  # wrong term
        store.adopt_snapshot(staged)
        with pytest.raises(SnapshotOutOfDateError):
            store.adopt_snapshot(staged)
        store.compact(6)
    with open_store(tmp_path) as store:
        assert store.snapshot() == staged
        assert (store.first_index(), store.last_index()) == (7, 10)


def test_compact_errors(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 5))
        store.compact(2)
        with pytest.raises(CompactedError):
            store.compact(2)
        with pytest.raises(ValueError, match="after last index"):
            store.compact(6)
        with pytest.raises(CompactedError):
            store.entries(2, 4)
        with pytest.raises(CompactedError):
            store.term(1)
        assert store.term(2) == 1


def test_apply_snapshot_replaces_the_log(tmp_path):
    snap = Snapshot(b"leader state", SnapshotMetadata(VOTERS, 50, 4))
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 5))
        store.apply_snapshot(snap)
        with pytest.raises(SnapshotOutOfDateError):
            store.apply_snapshot(snap)
        store.save(HardState(4, 0, 50), ents(51, 52, term=4))
    with open_store(tmp_path) as store:
        assert store.snapshot() == snap
        assert (store.first_index(), store.last_index()) == (51, 52)
        assert store.term(50) == 4
        assert store.initial_state() == (HardState(4, 0, 50), VOTERS)


def test_snapshot_file_without_wal_marker_is_removed(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 5))
        orphan = store.snapshotter.save(Snapshot(b"o", SnapshotMetadata(VOTERS, 5, 1)))
    with open_store(tmp_path) as store:
        assert store.snapshot().is_empty()
    assert not orphan.exists()


def test_old_snapshots_are_pruned_and_wal_released(tmp_path):
    with open_store(tmp_path, segment_size=512, keep_snapshots=3) as store:
        for k in range(1, 9):
            for i in range(10 * k - 9, 10 * k + 1):
                store.save(HardState(1, 1, i - 1), ents(i, i))
            store.create_snapshot(store.last_index(), VOTERS, b"s%d" % k)
            store.compact(store.last_index() - 2)
        files = store.snapshotter.files()
        assert [f.index for f in files] == [80, 70, 60]
        contents = read_wal(tmp_path / "wal")
        oldest_entry = min(
            (e.index for r in contents.records for e in getattr(r.record, "entries", ())),
        )
        assert 30 < oldest_entry <= 61  # released up to (not past) the oldest kept snapshot
        expected = all_entries(store)
    with open_store(tmp_path, segment_size=512, keep_snapshots=3) as store:
        assert all_entries(store) == expected
        assert store.snapshot().data == b"s8"


def test_wrong_identity_and_lock(tmp_path):
    with open_store(tmp_path), pytest.raises(StoreLockedError):
        open_store(tmp_path)
    with pytest.raises(WalIdentityError, match="member"):
        RaftStore.open(tmp_path, cluster_id=CLUSTER, member_id=MEMBER + 1, fsync=False)
    with pytest.raises(WalIdentityError, match="cluster"):
        RaftStore.open(tmp_path, cluster_id=CLUSTER + 1, member_id=MEMBER, fsync=False)
    open_store(tmp_path).close()  # the failed opens released the lock


def test_keep_snapshots_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep_snapshots"):
        open_store(tmp_path, keep_snapshots=0)


def test_snapshots_without_a_wal_refuse_to_start(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 3))
        store.create_snapshot(2, VOTERS, b"")
    for seg in list_segments(tmp_path / "wal"):
        seg.path.unlink()
    with pytest.raises(WalCorruptError, match="WAL was lost"):
        open_store(tmp_path)


def _two_snapshots(tmp_path, keep: int = 5):
    with open_store(tmp_path, keep_snapshots=keep, segment_size=512) as store:
        fill(store, 20, seed=1)
        store.create_snapshot(10, VOTERS, b"older")
        fill(store, 10, seed=2)
        store.create_snapshot(30, VOTERS, b"newer")
        store.compact(30)
        return all_entries(store)


def test_missing_newest_snapshot_falls_back(tmp_path, caplog):
    expected = _two_snapshots(tmp_path)
    newest = max((tmp_path / "snap").glob("*.snap"))
    newest.unlink()
    caplog.set_level(logging.WARNING)
    with open_store(tmp_path) as store:
        assert store.snapshot().data == b"older"
        assert store.first_index() == 11
        assert all_entries(store)[-len(expected) :] == expected
        store.compact(15)  # works on the restored log, and is recorded after the fallback
    assert "fell back" in caplog.text
    with open_store(tmp_path) as store:
        assert store.first_index() == 16
        assert store.snapshot().data == b"older"


def test_unusable_snapshot_without_fallback_refuses_to_start(tmp_path):
    _two_snapshots(tmp_path, keep=1)
    newest = max((tmp_path / "snap").glob("*.snap"))
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0x10
    newest.write_bytes(data)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SnapshotCorruptError, match="checksum mismatch") as info:
        open_store(tmp_path)
    assert info.value.path == newest
    assert "no older snapshot" in str(info.value)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # refused without touching anything


def test_all_snapshots_corrupt_refuses_to_start(tmp_path):
    _two_snapshots(tmp_path)
    for p in (tmp_path / "snap").glob("*.snap"):
        p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(SnapshotCorruptError):
        open_store(tmp_path)


def test_torn_tail_is_dropped_with_a_warning(tmp_path, caplog):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 3))
        good = store.wal.end_offset
        store.save(HardState(1, 1, 3), ents(4, 9))
    seg = list_segments(tmp_path / "wal")[-1].path
    os.truncate(seg, good + 30)
    caplog.set_level(logging.WARNING)
    with open_store(tmp_path) as store:
        assert store.last_index() == 3
        assert store.hard_state == HardState(1, 1, 0)
    assert "torn tail" in caplog.text


def test_disk_failure_stops_writes_but_not_reads(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    store.save(HardState(1, 1, 0), ents(1, 3))

    def failing_append(records: object) -> None:
        raise OSError(5, "Input/output error")  # a full disk is retryable instead: test_disk_full

    monkeypatch.setattr(store.wal, "append", failing_append)
    with pytest.raises(StoreFailedError, match="Input/output error"):
        store.save(None, ents(4, 4))
    monkeypatch.undo()
    with pytest.raises(StoreFailedError, match="earlier write failed"):
        store.save(None, ents(4, 4))
    with pytest.raises(StoreFailedError):
        store.compact(2)
    assert all_entries(store) == ents(1, 3)  # memory holds only what was written
    store.close()
    with open_store(tmp_path) as store:
        assert all_entries(store) == ents(1, 3)


def test_snapshot_write_failure_changes_nothing(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    store.save(HardState(1, 1, 0), ents(1, 3))

    def failing_save(snapshot: Snapshot) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store.snapshotter, "save", failing_save)
    with pytest.raises(StoreFailedError):
        store.create_snapshot(2, VOTERS, b"x")
    assert store.snapshot().is_empty()
    store.close()
    with open_store(tmp_path) as store:
        assert store.snapshot().is_empty()


def test_closed_store_refuses_writes(tmp_path):
    store = open_store(tmp_path)
    store.close()
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.save(HardState(1, 1, 0), ents(1, 1))


def test_replay_rejects_inconsistent_records(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 3))
    contents = read_wal(tmp_path / "wal")
    records = list(contents.records)
    gap = LocatedRecord(BatchRecord(None, tuple(ents(6, 7))), records[-1].path, 12345)
    with pytest.raises(WalCorruptError, match="gap") as info:
        replay_records([*records, gap])
    assert info.value.offset == 12345
    bad_compact = LocatedRecord(CompactRecord(9, 1), records[-1].path, 99)
    with pytest.raises(WalCorruptError, match="compaction"):
        replay_records([*records, bad_compact])
    wrong_state = LocatedRecord(
        StateRecord(HardState(), SnapshotMetadata(), 0, 0, 3, 1), records[-1].path, 7
    )
    with pytest.raises(WalCorruptError, match="disagrees"):
        replay_records([*records, wrong_state])


def test_conf_state_defaults_to_the_current_snapshots(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 4))
        store.create_snapshot(2, ConfState(voters=(1,)), b"")
        snap = store.create_snapshot(4, None, b"")
        assert snap.metadata.conf_state == ConfState(voters=(1,))


def test_initial_conf_state_like_memory_storage(tmp_path):
    model = MemoryStorage(VOTERS)
    store = RaftStore.open(tmp_path, cluster_id=CLUSTER, member_id=MEMBER, conf_state=VOTERS)
    with store:
        assert store.initial_state() == model.initial_state()
        assert store.snapshot() == model.snapshot()
        store.save(HardState(1, 1, 0), ents(1, 3))
        store.compact(2)  # no snapshot yet: the initial configuration must still be there
    other = ConfState(voters=(9,))
    with RaftStore.open(tmp_path, cluster_id=CLUSTER, member_id=MEMBER, conf_state=other) as store:
        assert store.initial_state() == (HardState(1, 1, 0), VOTERS)  # only used at creation
