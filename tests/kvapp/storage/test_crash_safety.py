"""Crash-safety sweeps: truncation at every offset and single-bit flips, for WAL and snapshots.

Truncation (and zero-filling, what a torn write into preallocated space looks like) at any byte
of the last records must leave each record either fully recovered or cleanly absent. A single
flipped bit anywhere in the written data must be detected, as the documented error, every time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvapp.storage.errors import SnapshotCorruptError, WalCorruptError
from kvapp.storage.raftstore import RaftStore
from kvapp.storage.snap import Snapshotter, decode_snapshot_file, encode_snapshot_file
from kvapp.storage.wal import SECTOR_SIZE, list_segments, read_wal
from raftlib.types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata

from .helpers import VOTERS, Batch, all_entries, fill, open_store

N_BATCHES = 300
LAST_RECORDS = 8


@pytest.fixture(scope="module")
def wal_of_hundreds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Batch]]:
    """A store of a few hundred small batches over several segments (built once)."""
    d = tmp_path_factory.mktemp("hundreds")
    with open_store(d, segment_size=6 * 1024) as store:
        batches = fill(store, N_BATCHES, seed=5)
        while sum(b.path == store.wal.segments[-1].path for b in batches) < 2 * LAST_RECORDS:
            batches += fill(store, 1, seed=len(batches))
    assert len(list_segments(d / "wal")) >= 3
    return d, batches


def expected_after_cut(batches: list[Batch], path: Path, cut: int) -> list[Batch]:
    """The batches that survive when ``path`` keeps only its first ``cut`` bytes."""
    return [b for b in batches if b.path != path or b.end <= cut]


def check_recovered(store: RaftStore, survivors: list[Batch]) -> None:
    expected = [e for b in survivors for e in b.entries]
    assert all_entries(store) == expected
    assert store.hard_state == survivors[-1].hard_state


def test_truncation_at_every_offset_of_the_last_records(wal_of_hundreds, tmp_path):
    src, batches = wal_of_hundreds
    d = tmp_path / "store"
    shutil.copytree(src, d)
    seg = list_segments(d / "wal")[-1].path
    original = seg.read_bytes()
    tail = [b for b in batches if b.path.name == seg.name][-LAST_RECORDS:]
    for b in batches:
        b.path = d / "wal" / b.path.name
    checked = 0
    for cut in range(tail[0].start, len(original)):
        seg.write_bytes(original[:cut])
        survivors = expected_after_cut(batches, seg, cut)
        with open_store(d) as store:
            check_recovered(store, survivors)
            if cut % 7 == 0:  # the torn part is really gone: new appends follow the survivors
                nxt = Entry(term=2, index=store.last_index() + 1, data=b"after")
                store.save(HardState(2, 0, 0), [nxt])
                store.close()
                with open_store(d) as reopened:
                    assert all_entries(reopened) == [*expected_entries(survivors), nxt]
        checked += 1
    assert checked == len(original) - tail[0].start > LAST_RECORDS * 30


def expected_entries(survivors: list[Batch]) -> list[Entry]:
    return [e for b in survivors for e in b.entries]


@pytest.fixture(scope="module")
def wal_of_big_records(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Batch]]:
    """A preallocated segment of ~1 KB records, so the last records span many sectors."""
    d = tmp_path_factory.mktemp("big")
    with open_store(d, preallocate=True, segment_size=1 << 20) as store:
        batches = fill(store, 40, seed=6, max_entries=4, max_data=600)
    return d, batches


def test_zero_fill_from_every_sector_of_the_last_records(wal_of_big_records, tmp_path):
    """A torn write into preallocated space: from some sector on, the file reads as zeros.

    Disks lose whole sectors, so torn data starts at a sector boundary (truncation, which the
    file size makes byte-granular, is swept byte by byte above).
    """
    src, batches = wal_of_big_records
    d = tmp_path / "store"
    shutil.copytree(src, d)
    seg = list_segments(d / "wal")[-1].path
    original = seg.read_bytes()
    assert len(original) == 1 << 20
    for b in batches:
        b.path = seg
    first = batches[-LAST_RECORDS].start
    sectors = range(first // SECTOR_SIZE * SECTOR_SIZE, batches[-1].end + SECTOR_SIZE, SECTOR_SIZE)
    assert len(sectors) > 10
    for sector in sectors:
        seg.write_bytes(original[:sector] + bytes(len(original) - sector))
        with open_store(d, preallocate=True, segment_size=1 << 20) as store:
            check_recovered(store, expected_after_cut(batches, seg, sector))


def test_a_lost_sector_is_a_torn_write_only_in_the_last_record(wal_of_big_records, tmp_path):
    """A missing sector (reads as zeros) inside the last record drops it; anywhere else inside
    a record it is corruption, because good data follows it."""
    src, batches = wal_of_big_records
    d = tmp_path / "store"
    shutil.copytree(src, d)
    seg = list_segments(d / "wal")[-1].path
    original = seg.read_bytes()
    for b in batches:
        b.path = seg
    outcomes = {"torn": 0, "corrupt": 0}
    for b in batches[-LAST_RECORDS:]:
        for sector in range((b.start // SECTOR_SIZE + 1) * SECTOR_SIZE, b.end, SECTOR_SIZE):
            if sector + SECTOR_SIZE > b.end and b is not batches[-1]:
                continue  # the hole reaches into the next record: covered below
            seg.write_bytes(original[:sector] + bytes(SECTOR_SIZE) + original[sector + 512 :])
            if b is batches[-1]:
                with open_store(d, preallocate=True, segment_size=1 << 20) as store:
                    check_recovered(store, batches[:-1])
                outcomes["torn"] += 1
            else:
                with pytest.raises(WalCorruptError, match="checksum mismatch") as info:
                    open_store(d, preallocate=True, segment_size=1 << 20)
                assert info.value.offset == b.start
                outcomes["corrupt"] += 1
    assert outcomes["torn"] >= 1
    assert outcomes["corrupt"] >= 5


def _flip(path: Path, offset: int, bit: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        b = os.pread(fd, 1, offset)[0]
        os.pwrite(fd, bytes([b ^ (1 << bit)]), offset)
    finally:
        os.close(fd)


def _read_error(wal_dir: Path) -> WalCorruptError | None:
    try:
        read_wal(wal_dir)
    except WalCorruptError as exc:
        return exc
    return None


@pytest.fixture
def small_wal_all_record_kinds(tmp_path: Path) -> Path:
    """Two-plus segments holding every record kind: metadata, state, batch, snapshot, compact."""
    d = tmp_path / "small"
    with open_store(d, segment_size=300) as store:
        fill(store, 8, seed=1)
        store.save(HardState(1, 2, 3))
        store.create_snapshot(3, VOTERS, b"snap-3")
        store.compact(6)
        fill(store, 6, seed=2)
        store.apply_snapshot(Snapshot(data=b"installed", metadata=SnapshotMetadata(VOTERS, 40, 3)))
        fill(store, 2, seed=3, term=3)
    assert len(list_segments(d / "wal")) >= 2
    return d


def test_every_single_bit_flip_in_the_wal_is_detected(small_wal_all_record_kinds):
    wal_dir = small_wal_all_record_kinds / "wal"
    contents = read_wal(wal_dir)
    segs = contents.segments
    total = 0
    for seg in segs:
        size = contents.end_offset if seg == segs[-1] else seg.path.stat().st_size
        for offset in range(size):
            for bit in range(8):
                _flip(seg.path, offset, bit)
                try:
                    err = _read_error(wal_dir)
                finally:
                    _flip(seg.path, offset, bit)
                assert err is not None, f"flip of bit {bit} at {seg.path.name}:{offset} unnoticed"
                assert err.path.parent == wal_dir
                total += 1
    assert total > 5000
    read_wal(wal_dir)  # restored intact


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_bit_flips_anywhere_in_a_large_wal_stop_the_store(wal_of_hundreds, tmp_path, data):
    src, _ = wal_of_hundreds
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    shutil.copytree(src, d, dirs_exist_ok=True)
    segs = list_segments(d / "wal")
    seg = data.draw(st.sampled_from(segs))
    size = read_wal(d / "wal").end_offset if seg == segs[-1] else seg.path.stat().st_size
    offset = data.draw(st.integers(0, size - 1))
    _flip(seg.path, offset, data.draw(st.integers(0, 7)))
    with pytest.raises(WalCorruptError) as info:
        open_store(d)
    assert info.value.path == seg.path
    assert info.value.offset <= offset
    shutil.rmtree(d)


# -- snapshot files --

SNAP = Snapshot(data=bytes(range(256)) * 2, metadata=SnapshotMetadata(ConfState((1, 2)), 9, 4))


def test_snapshot_file_truncated_anywhere_is_detected(tmp_path):
    snapper = Snapshotter(tmp_path, fsync=False)
    path = snapper.save(SNAP)
    original = path.read_bytes()
    assert snapper.load(4, 9) == SNAP
    for cut in range(len(original)):
        path.write_bytes(original[:cut])
        with pytest.raises(SnapshotCorruptError) as info:
            snapper.load(4, 9)
        assert info.value.path == path


def test_every_single_bit_flip_in_a_snapshot_file_is_detected(tmp_path):
    data = bytearray(encode_snapshot_file(SNAP))
    path = tmp_path / "x.snap"
    assert decode_snapshot_file(bytes(data), path, term=4, index=9) == SNAP
    for offset in range(len(data)):
        for bit in range(8):
            data[offset] ^= 1 << bit
            with pytest.raises(SnapshotCorruptError):
                decode_snapshot_file(bytes(data), path, term=4, index=9)
            data[offset] ^= 1 << bit


def test_snapshot_under_another_name_is_detected(tmp_path):
    with pytest.raises(SnapshotCorruptError, match="not the one its name says"):
        decode_snapshot_file(encode_snapshot_file(SNAP), tmp_path / "x", term=4, index=10)


@pytest.fixture
def store_with_two_snapshots(tmp_path: Path) -> Path:
    d = tmp_path / "two"
    with open_store(d, segment_size=1024) as store:
        fill(store, 20, seed=9)
        store.create_snapshot(10, VOTERS, b"older state")
        fill(store, 10, seed=10)
        store.create_snapshot(30, VOTERS, b"newer state")
        store.compact(28)
        fill(store, 5, seed=11)
    return d


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_bit_flips_in_the_newest_snapshot_fall_back_to_the_older(
    store_with_two_snapshots, tmp_path, data
):
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    shutil.copytree(store_with_two_snapshots, d, dirs_exist_ok=True)
    with open_store(d) as store:
        expected = all_entries(store)
        last = store.last_index()
    newest = max((d / "snap").glob("*.snap"))
    offset = data.draw(st.integers(0, newest.stat().st_size - 1))
    _flip(newest, offset, data.draw(st.integers(0, 7)))
    with open_store(d) as store:
        assert store.snapshot().data == b"older state"
        assert store.first_index() == 11
        assert store.last_index() == last
        assert all_entries(store)[-len(expected) :] == expected
    assert not newest.exists()
    assert newest.with_name(newest.name + ".broken").exists()
    with open_store(d) as store:  # the fallback was recorded in the WAL: same answer again
        assert store.snapshot().data == b"older state"
        assert store.first_index() == 11
    shutil.rmtree(d)
