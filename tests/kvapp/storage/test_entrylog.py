"""Old committed entries' data left in the WAL and read back: kvapp.storage.entrylog."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvapp.storage.errors import WalCorruptError
from kvapp.storage.raftstore import RaftStore
from kvapp.storage.wal import BatchRecord, read_record_at
from raftlib.storage import limit_size
from raftlib.types import Entry, HardState

from .helpers import CLUSTER, MEMBER

SIZE = 1000


def open_hot(directory: Path, hot_bytes: int, segment_size: int = 64 * 1024) -> RaftStore:
    return RaftStore.open(
        directory,
        cluster_id=CLUSTER,
        member_id=MEMBER,
        segment_size=segment_size,
        fsync=False,
        preallocate=False,
        hot_bytes=hot_bytes,
    )


def ents(lo: int, hi: int, term: int = 1, tag: bytes = b"") -> list[Entry]:
    return [Entry(term=term, index=i, data=tag + bytes([i % 251]) * SIZE) for i in range(lo, hi)]


def held(store: RaftStore) -> int:
    return store._log.hot_bytes


def test_committed_entries_beyond_the_budget_are_read_back_from_the_wal(tmp_path: Path) -> None:
    written = ents(1, 101)
    with open_hot(tmp_path, hot_bytes=10 * SIZE) as store:
        for i in range(0, 100, 5):
            store.save(HardState(1, 1, i), written[i : i + 5])  # commits what came before
        assert store._log.cold_until > 80
        assert held(store) <= 10 * SIZE + 5 * SIZE  # the uncommitted tail stays, too
        assert store.entries(1, 101) == written
        for limit in (0, SIZE, 3 * SIZE, 10**9, None):  # the size limit as in memory
            assert store.entries(40, 95, max_size=limit) == limit_size(written[39:94], limit)
        assert store.entries(100, 101) == written[99:]
        assert store.data_size() == 100 * SIZE
        store.save(HardState(1, 1, 100))
        store.create_snapshot(30, None, b"state at 30")
    with open_hot(tmp_path, hot_bytes=10 * SIZE) as store:
        # a restart keeps what will be applied again (after the snapshot) until told otherwise
        assert store._log.cold_until == 30
        assert held(store) == 70 * SIZE
        assert store.entries(1, 101) == written
        store.note_applied(60)
        assert store._log.cold_until == 60  # applied, not committed, bounds it now
        store.save(HardState(1, 1, 100), ents(101, 102))
        assert store._log.cold_until == 60
        assert store.entries(1, 102) == [*written, *ents(101, 102)]


def test_entries_not_committed_keep_their_data_and_a_conflict_replaces_them(
    tmp_path: Path,
) -> None:
    with open_hot(tmp_path, hot_bytes=0) as store:
        store.save(HardState(1, 1, 10), ents(1, 21))
        assert store._log.cold_until == 10
        assert held(store) == 10 * SIZE
        store.save(HardState(2, 1, 10), ents(15, 18, term=2, tag=b"x"))
        want = ents(1, 15) + ents(15, 18, term=2, tag=b"x")
        assert store.entries(1, 18) == want
        store.compact(12)
        assert store.entries(13, 18) == want[12:]
        assert store.data_size() == sum(len(e.data) for e in want[12:])


def test_a_damaged_record_is_an_error_on_read_back(tmp_path: Path) -> None:
    with open_hot(tmp_path, hot_bytes=0) as store:
        store.save(HardState(1, 1, 0), ents(1, 6))
        store.save(HardState(1, 1, 5))
        at = store._log._where[3]
        rec = read_record_at(at)
        assert isinstance(rec, BatchRecord)
        assert [e.index for e in rec.entries] == [1, 2, 3, 4, 5]
        with at.path.open("r+b") as f:
            f.seek(at.offset + 100)
            byte = f.read(1)
            f.seek(at.offset + 100)
            f.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(WalCorruptError, match="checksum mismatch on read-back"):
            store.entries(1, 6)


def test_reads_back_across_segment_cuts(tmp_path: Path) -> None:
    written = ents(1, 201)
    with open_hot(tmp_path, hot_bytes=0, segment_size=16 * 1024) as store:
        for i in range(0, 200, 4):
            store.save(HardState(1, 1, i), written[i : i + 4])
        store.save(HardState(1, 1, 200))
        assert len(store.wal.segments) > 5
        assert store.entries(1, 201) == written
        assert held(store) == 0


def test_many_small_entries_committed_at_once_all_go_cold(tmp_path: Path) -> None:
    written = [Entry(term=1, index=i, data=b"e%d" % i) for i in range(1, 701)]
    with open_hot(tmp_path, hot_bytes=0) as store:
        store.save(HardState(1, 1, 0), written)
        store.save(HardState(1, 1, 700))  # more than one eviction step's worth
        assert store._log.cold_until == 700
        assert held(store) == 0
        assert store.entries(1, 701) == written
        assert store.data_size() == sum(len(e.data) for e in written)
