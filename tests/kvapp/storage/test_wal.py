"""The WAL's format, reading, segment management and its corruption rules (case by case).

The exhaustive crash-safety sweeps (every truncation offset, every bit) are in
``test_crash_safety.py``.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvapp.storage import fileutil
from kvapp.storage import wal as walmod
from kvapp.storage.errors import WalCorruptError, WalIdentityError
from kvapp.storage.fs import FileSystem
from kvapp.storage.wal import (
    BatchRecord,
    CompactRecord,
    MetadataRecord,
    Record,
    SnapshotKind,
    SnapshotRecord,
    StateRecord,
    Wal,
    WalMetadata,
    decode_record,
    encode_record,
    frame_record,
    list_segments,
    read_wal,
    segment_name,
)
from raftlib.types import ConfState, Entry, EntryType, HardState, SnapshotMetadata

META = WalMetadata(cluster_id=7, member_id=3)
EMPTY = StateRecord(HardState(), SnapshotMetadata(), 0, 0, 0, 0)


def batch(first: int, n: int = 1, size: int = 10, term: int = 1) -> BatchRecord:
    return BatchRecord(
        HardState(term, 1, first - 1),
        tuple(Entry(term, first + i, data=bytes([i % 251 + 1]) * size) for i in range(n)),
    )


def new_wal(path: Path, **kwargs: object) -> Wal:
    return Wal.create(path, META, EMPTY, preallocate=False, fsync=False, **kwargs)  # type: ignore[arg-type]


def batches_in(path: Path) -> list[BatchRecord]:
    return [r.record for r in read_wal(path).records if isinstance(r.record, BatchRecord)]


# -- record encoding --

entries = st.builds(
    Entry,
    term=st.integers(0, 2**64 - 1),
    index=st.integers(0, 2**64 - 1),
    type=st.sampled_from(EntryType),
    data=st.binary(max_size=64),
)
hard_states = st.builds(
    HardState, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)
)
metas = st.builds(
    SnapshotMetadata,
    conf_state=st.builds(
        ConfState,
        voters=st.lists(st.integers(1, 2**64 - 1), max_size=5).map(tuple),
        learners=st.lists(st.integers(1, 2**64 - 1), max_size=3).map(tuple),
        auto_leave=st.booleans(),
    ),
    index=st.integers(0, 2**64 - 1),
    term=st.integers(0, 2**64 - 1),
)


@st.composite
def consecutive_entries(draw: st.DrawFn) -> tuple[Entry, ...]:
    ents = draw(st.lists(entries, max_size=5))
    first = draw(st.integers(0, 2**64 - 1 - len(ents)))
    return tuple(Entry(e.term, first + i, e.type, e.data) for i, e in enumerate(ents))


records = st.one_of(
    st.builds(BatchRecord, st.none() | hard_states, consecutive_entries()),
    st.builds(SnapshotRecord, st.sampled_from(SnapshotKind), metas),
    st.builds(CompactRecord, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    st.builds(
        StateRecord,
        hard_states,
        metas,
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
    ),
    st.builds(
        MetadataRecord,
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**32 - 1),
    ),
)


@given(records)
def test_record_encoding_round_trips(record):
    assert decode_record(encode_record(record)) == record


@given(st.binary(max_size=64))
def test_decode_record_raises_only_value_error(payload):
    with contextlib.suppress(ValueError):
        decode_record(payload)


def test_batch_entries_must_be_consecutive():
    with pytest.raises(ValueError, match="consecutive"):
        encode_record(BatchRecord(None, (Entry(1, 5), Entry(1, 7))))


def test_decode_record_rejects_other_versions_and_trailing_bytes():
    good = encode_record(CompactRecord(3, 1))
    with pytest.raises(ValueError, match="version"):
        decode_record(b"\x84\x02\x04\x03\x01")  # [2, 4, 3, 1]: version 2
    with pytest.raises(ValueError, match="trailing"):
        decode_record(good + b"\x00")


@given(st.binary(min_size=1, max_size=100), st.integers(0, 2**32 - 1))
def test_frame_layout(payload, prev):
    frame, crc = frame_record(payload, prev)
    assert len(frame) % 8 == 0
    length, hcrc = struct.unpack_from("<II", frame)
    assert length == len(payload)
    assert hcrc == zlib.crc32(frame[:4])
    assert frame[8 : 8 + length] == payload
    assert struct.unpack_from("<I", frame, 8 + length) == (crc,)
    assert crc == zlib.crc32(payload, prev)
    assert not any(frame[12 + length :])


def test_no_valid_header_is_one_bit_away_from_zero():
    """A single bit flip can never turn a valid header into the all-zero end-of-log marker."""
    for k in range(32):
        length = struct.pack("<I", 1 << k)
        header = length + struct.pack("<I", zlib.crc32(length))
        assert sum(bin(b).count("1") for b in header) > 1, k


def test_frame_rejects_empty_payload():
    with pytest.raises(ValueError, match="out of range"):
        frame_record(b"", 0)


# -- writing and reading back --


def test_create_append_read(tmp_path):
    wal = new_wal(tmp_path)
    recs: list[Record] = [
        batch(1, 3),
        SnapshotRecord(SnapshotKind.CREATED, SnapshotMetadata(index=2, term=1)),
    ]
    wal.append(recs)
    wal.append([CompactRecord(2, 1)])
    wal.close()
    contents = read_wal(tmp_path)
    assert contents.metadata == META
    assert [r.record for r in contents.records] == [
        MetadataRecord(7, 3, 0, 0),
        EMPTY,
        *recs,
        CompactRecord(2, 1),
    ]
    assert contents.torn is None
    assert [s.path.name for s in contents.segments] == [segment_name(0, 1)]


def test_create_refuses_existing_wal(tmp_path):
    new_wal(tmp_path).close()
    with pytest.raises(FileExistsError):
        new_wal(tmp_path)


def test_open_continues_appending(tmp_path):
    wal = new_wal(tmp_path)
    wal.append([batch(1)])
    wal.close()
    wal, contents = Wal.open(tmp_path, metadata=META, preallocate=False, fsync=False)
    assert len(contents.records) == 3
    wal.append([batch(2)])
    wal.close()
    assert [b.entries[0].index for b in batches_in(tmp_path)] == [1, 2]


def test_cut_chains_segments(tmp_path):
    wal = new_wal(tmp_path, segment_size=200)
    for i in range(1, 11):
        wal.append([batch(i, size=60)])
        if wal.segment_full:
            wal.cut(StateRecord(HardState(1, 1, i - 1), SnapshotMetadata(), 0, 0, i, 1))
    wal.close()
    segs = list_segments(tmp_path)
    assert [s.seq for s in segs] == list(range(len(segs)))
    assert len(segs) > 3
    contents = read_wal(tmp_path)
    heads = [r.record for r in contents.records if isinstance(r.record, MetadataRecord)]
    assert [h.seq for h in heads] == [s.seq for s in segs]
    assert heads[0].prev_crc == 0
    assert all(h.prev_crc != 0 for h in heads[1:])
    assert [b.entries[0].index for b in batches_in(tmp_path)] == list(range(1, 11))
    for seg in segs[1:]:
        state = next(
            r.record
            for r in contents.records
            if r.path == seg.path and isinstance(r.record, StateRecord)
        )
        assert state.last_index + 1 == seg.index


def test_preallocated_segment_reads_back(tmp_path):
    wal = Wal.create(tmp_path, META, EMPTY, segment_size=1 << 20, preallocate=True, fsync=True)
    wal.append([batch(1, 2)])
    wal.close()
    seg = list_segments(tmp_path)[0].path
    assert seg.stat().st_size == 1 << 20
    contents = read_wal(tmp_path)
    assert contents.torn is None
    assert contents.end_offset < 200
    wal, _ = Wal.open(tmp_path, metadata=META, segment_size=1 << 20, fsync=False)
    wal.append([batch(3)])
    wal.close()
    assert [b.entries[0].index for b in batches_in(tmp_path)] == [1, 3]


class _Writes:
    """Records the WAL's writes (offset, length, all zeros?) and makes them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[int, int, bool]] = []
        real = fileutil.write_all

        def spy(fs: FileSystem, fd: int, data: bytes | memoryview, offset: int) -> None:
            self.seen.append((offset, len(data), not any(bytes(data))))
            real(fs, fd, data, offset)

        self.spy = spy
        monkeypatch.setattr(walmod, "write_all", spy)

    def zeros(self) -> list[tuple[int, int]]:
        return [(at, n) for at, n, zero in self.seen if zero]


def test_appends_write_zeros_ahead_in_preallocated_space(tmp_path, monkeypatch):
    """Appends overwrite blocks written before (a data-only fdatasync), up to the segment end."""
    ahead = 4096
    monkeypatch.setattr(walmod, "ZERO_AHEAD", ahead)
    monkeypatch.setattr(walmod, "_zeros", lambda: bytes(ahead))
    writes = _Writes(monkeypatch)
    size = 3 * ahead
    wal = Wal.create(tmp_path, META, EMPTY, segment_size=size, preallocate=True, fsync=False)
    wal.append([batch(1)])
    end = wal.end_offset
    assert writes.zeros() == [(end, ahead)]
    index = 2
    while wal.end_offset + 200 < end + ahead:  # inside the zeroed stretch: no more zeros
        wal.append([batch(index)])
        index += 1
    assert len(writes.zeros()) == 1
    while not wal.segment_full:
        wal.append([batch(index, size=300)])
        index += 1
    zeros = writes.zeros()
    assert len(zeros) >= 3
    assert max(at + n for at, n in zeros) == size  # never past the reserved space
    covered = 0
    for at, n, _ in sorted(writes.seen):
        assert at <= covered, f"bytes {covered}..{at} of the segment were never written"
        covered = max(covered, at + n)
    assert covered >= size
    assert list_segments(tmp_path)[0].path.stat().st_size == max(size, wal.end_offset)
    wal.close()
    assert len(batches_in(tmp_path)) == index - 1


def test_no_zeros_without_preallocation_or_after_a_cut_back(tmp_path, monkeypatch):
    writes = _Writes(monkeypatch)
    wal = new_wal(tmp_path / "plain")
    wal.append([batch(1)])
    wal.close()
    assert writes.zeros() == []
    wal = Wal.create(tmp_path / "w", META, EMPTY, preallocate=True, fsync=False)
    wal.append([batch(1)])
    assert len(writes.zeros()) == 1
    failures = [OSError(28, "No space left on device")]

    def full_once(fs: FileSystem, fd: int, data: bytes | memoryview, offset: int) -> None:
        if failures:
            raise failures.pop()
        writes.spy(fs, fd, data, offset)

    monkeypatch.setattr(walmod, "write_all", full_once)
    with pytest.raises(OSError, match="No space"):
        wal.append([batch(2, size=1 << 21)])
    assert not wal.failed  # cut back: the reserved tail is gone with the partial record
    zeros = len(writes.zeros())
    wal.append([batch(2, size=4 << 20)])  # past where the failed append wrote zeros
    assert len(writes.zeros()) == zeros  # never zeros where no space is reserved
    wal.close()
    assert [b.entries[0].index for b in batches_in(tmp_path / "w")] == [1, 2]


def test_no_zeros_after_a_cut_that_found_no_space(tmp_path, monkeypatch):
    """A cut trims the segment's reserved tail first; if the new segment then finds no space,
    appends go on in the old one, and must not write zeros where nothing is reserved now."""
    wal = Wal.create(tmp_path, META, EMPTY, segment_size=4 << 20, preallocate=True, fsync=False)
    wal.close()
    wal, _ = Wal.open(tmp_path, segment_size=1 << 20, fsync=False)  # the size made smaller
    wal.append([batch(1, size=1 << 20)])
    assert wal.segment_full
    writes = _Writes(monkeypatch)
    real = fileutil.write_all

    def no_space_for_new_segments(
        fs: FileSystem, fd: int, data: bytes | memoryview, offset: int
    ) -> None:
        if offset == 0:
            raise OSError(28, "No space left on device")
        real(fs, fd, data, offset)

    monkeypatch.setattr(walmod, "write_all", no_space_for_new_segments)
    with pytest.raises(OSError, match="No space"):
        wal.cut(EMPTY)
    monkeypatch.setattr(walmod, "write_all", writes.spy)
    wal.append([batch(2, size=3 << 19)])  # past the zeros written before the cut
    assert writes.zeros() == []
    wal.close()
    assert [b.entries[0].index for b in batches_in(tmp_path)] == [1, 2]


def test_reopened_preallocated_segment_gets_zeros_ahead(tmp_path, monkeypatch):
    wal = Wal.create(tmp_path, META, EMPTY, segment_size=1 << 21, preallocate=True, fsync=False)
    wal.append([batch(1)])
    wal.close()
    writes = _Writes(monkeypatch)
    wal, _ = Wal.open(tmp_path, segment_size=1 << 21, fsync=False)
    wal.append([batch(2)])
    assert writes.zeros() == [(wal.end_offset, walmod.ZERO_AHEAD)]
    wal.close()
    wal, _ = Wal.open(tmp_path, segment_size=1 << 21, preallocate=False, fsync=False)
    wal.append([batch(3)])
    assert len(writes.zeros()) == 1
    wal.close()
    assert [b.entries[0].index for b in batches_in(tmp_path)] == [1, 2, 3]


def test_release_keeps_segment_holding_index(tmp_path):
    wal = new_wal(tmp_path, segment_size=150)
    for i in range(1, 13):
        wal.append([batch(i, size=60)])
        if wal.segment_full:
            wal.cut(StateRecord(HardState(1, 1, i - 1), SnapshotMetadata(), 0, 0, i, 1))
    starts = [s.index for s in wal.segments]
    assert len(starts) > 4
    doomed = [s.path for s in wal.segments[:2]]
    removed = wal.release(starts[2] - 1)
    assert removed == doomed
    assert [s.index for s in wal.segments] == starts[2:]
    assert [s.index for s in list_segments(tmp_path)] == starts[2:]
    assert wal.release(10**9)  # releases everything but the current segment
    assert [s.index for s in wal.segments] == starts[-1:]
    wal.close()


def test_wrong_identity_is_refused(tmp_path):
    new_wal(tmp_path).close()
    for other in (WalMetadata(8, 3), WalMetadata(7, 4)):
        with pytest.raises(WalIdentityError) as info:
            Wal.open(tmp_path, metadata=other, fsync=False)
        assert info.value.offset == 0
        assert info.value.path == list_segments(tmp_path)[0].path
        assert "cluster 0x7 member 0x3" in str(info.value)


def _three_segments(tmp_path: Path) -> list[Path]:
    wal = new_wal(tmp_path, segment_size=100)
    for i in range(1, 4):
        wal.append([batch(i, size=80)])
        wal.cut(StateRecord(HardState(1, 1, i - 1), SnapshotMetadata(), 0, 0, i, 1))
    wal.close()
    return [s.path for s in list_segments(tmp_path)]


def test_missing_segment_is_corruption(tmp_path):
    segs = _three_segments(tmp_path)
    segs[1].unlink()
    with pytest.raises(WalCorruptError, match="missing segment") as info:
        read_wal(tmp_path)
    assert info.value.path == segs[2]


def test_sealed_segment_losing_its_last_record_breaks_the_chain(tmp_path):
    segs = _three_segments(tmp_path)
    contents = read_wal(tmp_path)
    last_in_first = max(r.offset for r in contents.records if r.path == segs[0])
    with segs[0].open("r+b") as f:
        f.truncate(last_in_first)
    with pytest.raises(WalCorruptError, match="chain broken") as info:
        read_wal(tmp_path)
    assert info.value.path == segs[1]


def test_sealed_segment_truncated_mid_record_is_corruption(tmp_path):
    segs = _three_segments(tmp_path)
    size = segs[0].stat().st_size
    with segs[0].open("r+b") as f:
        f.truncate(size - 5)
    with pytest.raises(WalCorruptError, match="sealed segment") as info:
        read_wal(tmp_path)
    assert info.value.path == segs[0]


def test_no_segments_and_bad_names(tmp_path):
    with pytest.raises(WalCorruptError, match="no WAL segments"):
        read_wal(tmp_path)
    (tmp_path / "junk.wal").write_bytes(b"")
    with pytest.raises(WalCorruptError, match="malformed segment file name"):
        read_wal(tmp_path)


def test_open_removes_tmp_files(tmp_path):
    new_wal(tmp_path).close()
    (tmp_path / (segment_name(1, 5) + ".tmp")).write_bytes(b"partial")
    wal, _ = Wal.open(tmp_path, fsync=False, preallocate=False)
    wal.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [segment_name(0, 1)]


def test_torn_tail_is_dropped_logged_and_appends_continue(tmp_path, caplog):
    wal = new_wal(tmp_path)
    wal.append([batch(1)])
    good_end = wal.end_offset
    wal.append([batch(2, 5)])
    wal.close()
    seg = list_segments(tmp_path)[0].path
    with seg.open("r+b") as f:
        f.truncate(good_end + 20)
    caplog.set_level(logging.WARNING, logger="kvapp.storage.wal")
    wal, contents = Wal.open(tmp_path, fsync=False, preallocate=False)
    assert contents.torn is not None
    assert contents.torn.offset == good_end
    assert "torn tail" in caplog.text
    assert seg.stat().st_size == good_end
    wal.append([batch(2, 2)])
    wal.close()
    assert [len(b.entries) for b in batches_in(tmp_path)] == [1, 2]


def _big_batches(tmp_path: Path, preallocate: bool = False) -> tuple[Path, list[int]]:
    """Three records of ~1.3 KB each; returns the segment and the record start offsets."""
    wal = Wal.create(tmp_path, META, EMPTY, preallocate=preallocate, fsync=False)
    starts = []
    for first in (1, 5, 9):
        starts.append(wal.end_offset)
        wal.append([batch(first, 4, size=300)])
    starts.append(wal.end_offset)
    wal.close()
    return list_segments(tmp_path)[0].path, starts


def _zero(path: Path, start: int, end: int) -> None:
    with path.open("r+b") as f:
        f.seek(start)
        f.write(bytes(end - start))


@pytest.mark.parametrize("preallocate", [False, True])
def test_zeroed_sector_in_last_record_is_a_torn_write(tmp_path, caplog, preallocate):
    seg, starts = _big_batches(tmp_path, preallocate)
    sector = (starts[2] // 512 + 1) * 512
    assert sector + 512 <= starts[3]
    _zero(seg, sector, sector + 512)
    caplog.set_level(logging.WARNING)
    wal, contents = Wal.open(tmp_path, fsync=False, preallocate=preallocate)
    wal.close()
    assert contents.torn is not None
    assert contents.torn.offset == starts[2]
    assert "zero-filled sectors" in contents.torn.reason
    assert len(batches_in(tmp_path)) == 2


def test_zeroed_sector_before_the_tail_is_corruption(tmp_path):
    seg, starts = _big_batches(tmp_path)
    sector = (starts[1] // 512 + 1) * 512
    _zero(seg, sector, sector + 512)
    with pytest.raises(WalCorruptError, match="checksum mismatch") as info:
        read_wal(tmp_path)
    assert info.value.offset == starts[1]


def test_zeroed_header_before_valid_records_is_corruption(tmp_path):
    seg, starts = _big_batches(tmp_path)
    _zero(seg, starts[1], starts[1] + 8)
    with pytest.raises(WalCorruptError, match="zero-filled record header") as info:
        read_wal(tmp_path)
    assert info.value.offset == starts[1]


def test_zero_filled_tail_ends_the_log(tmp_path):
    seg, starts = _big_batches(tmp_path)
    _zero(seg, starts[2], starts[3])
    contents = read_wal(tmp_path)
    assert contents.torn is None  # indistinguishable from preallocated space: nothing lost
    assert contents.end_offset == starts[2]
    assert len(batches_in(tmp_path)) == 2


def test_partially_zeroed_last_record_is_torn(tmp_path):
    seg, starts = _big_batches(tmp_path)
    _zero(seg, starts[2], starts[2] + 600)
    contents = read_wal(tmp_path)
    assert contents.torn is not None
    assert "partial write" in contents.torn.reason
    assert contents.end_offset == starts[2]


def test_undecodable_record_with_valid_crc_is_corruption(tmp_path):
    new_wal(tmp_path).close()
    contents = read_wal(tmp_path)
    start = contents.end_offset
    frame, _ = frame_record(b"\x83\x01\x18\x63\x00", contents.last_crc)  # [1, 99, 0]
    with contents.segments[0].path.open("r+b") as f:
        f.seek(start)
        f.write(frame)
    with pytest.raises(WalCorruptError, match="does not decode") as info:
        read_wal(tmp_path)
    assert info.value.offset == start


def test_write_failure_poisons_the_wal(tmp_path, monkeypatch):
    wal = new_wal(tmp_path)

    def broken(fs: FileSystem, fd: int, data: bytes, offset: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(walmod, "write_all", broken)
    with pytest.raises(OSError, match="Input/output"):
        wal.append([batch(1)])
    monkeypatch.undo()
    with pytest.raises(OSError, match="earlier WAL write failed"):
        wal.append([batch(1)])
    wal.close()
    with pytest.raises(ValueError, match="closed"):
        wal.append([batch(1)])
