"""kvapp's write-ahead log: a segmented, checksummed, append-only log of raft state changes.

The WAL is what makes an acknowledged write survive a crash: :meth:`Wal.append` writes a batch
of records with one ``write`` and one ``fdatasync`` (the group-commit point of a Ready), and
:func:`read_wal` gives every record back in order after a restart.

On-disk format (all integers little-endian)
-------------------------------------------

The log is a directory of *segment* files named ``<seq:016x>-<index:016x>.wal``: ``seq`` numbers
the segments consecutively, ``index`` is the raft index the segment was started at (the last
index then, plus one), which is what :meth:`Wal.release` uses to drop old segments. A segment
grows to about :data:`DEFAULT_SEGMENT_SIZE` before the next one is cut.

A segment is a sequence of 8-byte aligned *records*::

    u32  length         payload length, 1 .. MAX_RECORD_SIZE
    u32  header crc     crc32 of the 4 length bytes
    ...  payload        CBOR: [WAL_FORMAT_VERSION, record type, fields...]
    u32  crc            crc32 of the payload, seeded with the previous record's crc
    ...  zero padding   to the next multiple of 8

Record payloads (``V`` is :data:`WAL_FORMAT_VERSION`; hard states, configurations and snapshot
metadata use :mod:`raftlib.codec`'s arrays)::

    [V, 0, cluster_id, member_id, seq, prev_crc]                     MetadataRecord
    [V, 1, hard_state, snapshot_meta, compact_index, compact_term,
           last_index, last_term]                                    StateRecord
    [V, 2, hard_state | null, first_index, [term...], types, [data...]]
                                                                     BatchRecord
    [V, 3, kind, snapshot_meta]                                      SnapshotRecord
    [V, 4, index, term]                                              CompactRecord

A batch's entries have consecutive indexes, so they are stored as columns: the first index once,
then the terms, the entry types as one byte string (a byte each) and the payloads. That is about
three times faster to encode with cbor2 than an array per entry, for the same size.

The payload crc is chained across records (as etcd's WAL does), so a record that is missing,
repeated or out of place breaks the chain. The first record of a segment (:class:`MetadataRecord`:
cluster id, member id, ``seq`` and the previous segment's last crc) starts a new chain at 0; its
``prev_crc`` links it to the previous segment. The second is a :class:`StateRecord`: the raft
state when the segment was cut, so replay can start at any retained segment.

Torn writes and corruption
--------------------------

A crash during a batch's write can leave its record truncated or with zero-filled sectors (pages
of the write that never reached the disk), only at the end of the last segment. Reading tells
that apart from damage:

* The 8-byte header is aligned, so it lies within one disk sector: after a crash it is either
  intact or all zeros. A header that is neither fails its own crc and is corruption.
* A record that runs past the end of the last segment is a torn tail.
* A payload crc mismatch in the last segment is a torn tail only if a whole sector inside the
  record reads as zeros *and* only zeros follow the record; anything else is corruption. (A torn
  write rewrites the sectors it shares with the record before it with the same bytes, so it can
  only zero sectors of its own record, and nothing is written after it.)
* An all-zero header in the last segment ends the log (preallocated space) unless a valid record
  header follows, which makes it corruption.

A torn tail is dropped (and truncated away by :meth:`Wal.open`, with a warning). Everything else
raises :class:`~kvapp.storage.errors.WalCorruptError` naming the file and offset: a node must not
serve from a log with a hole in it. A write that *fails* (a full disk, an I/O error) is different
from a crash: the writer is still running, so :meth:`Wal.append` truncates its partial record
away itself before raising, and nothing is left for the next open to judge. If the write failed
for lack of space (``ENOSPC``, ``EDQUOT``) and that cut-back worked, the WAL stays usable and
the same records can be appended again once space is freed; after any other failure it refuses
further writes.

These rules assume at most one record in flight at a crash, which holds because every append is
synced before the next one is written; :class:`~kvapp.storage.raftstore.RaftStore` keeps it so
by deferring, rather than writing unsynced, the hard states it need not sync.

Limits of the heuristic, shared with etcd: a damaged last record that also holds a sector of
zeros of its own (say, an entry of 512 zero bytes) is taken for torn; a torn record whose
unwritten part reads as garbage rather than zeros is reported as corruption.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import io
import itertools
import logging
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias, assert_never, cast

import attrs
import cbor2

from kvapp.storage.errors import WalCorruptError, WalIdentityError
from kvapp.storage.fileutil import (
    FsyncError,
    ensure_dir,
    fdatasync,
    fsync_dir,
    is_no_space,
    is_zero,
    last_nonzero,
    preallocate,
    read_file,
    remove_tmp_files,
    write_all,
    write_file_atomic,
)
from kvapp.storage.fileutil import fsync as fsync_file
from kvapp.storage.fs import O_CREAT, O_RDONLY, O_RDWR, O_TRUNC, OS, FileSystem
from raftlib.codec import (
    conf_state_from_array,
    conf_state_to_array,
    hard_state_from_array,
    hard_state_to_array,
)
from raftlib.types import Entry, EntryType, HardState, SnapshotMetadata

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "MAX_RECORD_SIZE",
    "SECTOR_SIZE",
    "WAL_FORMAT_VERSION",
    "ZERO_AHEAD",
    "BatchRecord",
    "CompactRecord",
    "LocatedRecord",
    "MetadataRecord",
    "Record",
    "RecordAt",
    "RecordType",
    "Segment",
    "SnapshotKind",
    "SnapshotRecord",
    "StateRecord",
    "TornTail",
    "Wal",
    "WalContents",
    "WalMetadata",
    "cut_wal",
    "decode_record",
    "encode_record",
    "frame_record",
    "list_segments",
    "read_record_at",
    "read_wal",
    "segment_name",
]

logger = logging.getLogger(__name__)

WAL_FORMAT_VERSION = 1
"""First item of every record payload; readers reject other versions."""

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
"""Size at which a segment is sealed and the next one cut (etcd's default too)."""

ZERO_AHEAD = 1 << 20
"""How far ahead of the records :meth:`Wal.append` writes zeros into a preallocated segment.

Preallocated space is *unwritten* on ext4 and most file systems: the first write into it changes
the file's extent map, so that ``fdatasync`` must commit the file system journal as well as the
data. Writing zeros ahead, a mebibyte at a time, makes later appends overwrite blocks already
written, and their ``fdatasync`` a data flush alone (145 instead of 240 µs on this project's
test VM with three processes syncing at once). Once per mebibyte an append also flushes the
zeros, a few milliseconds.
"""

MAX_RECORD_SIZE = 1 << 30
"""Largest payload a record may declare; larger lengths are corruption, not allocations."""

SECTOR_SIZE = 512
"""The unit a torn write loses: the smallest atomic disk write."""

SEGMENT_SUFFIX = ".wal"

_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")
_HEADER_SIZE = 8
_U32_MAX = 1 << 32
_U64_MAX = 1 << 64


class RecordType(enum.IntEnum):
    """The kinds of WAL record (second item of a payload)."""

    METADATA = 0
    STATE = 1
    BATCH = 2
    SNAPSHOT = 3
    COMPACT = 4


class SnapshotKind(enum.IntEnum):
    """What a :class:`SnapshotRecord` says happened to the snapshot."""

    CREATED = 0
    """The application made a snapshot of its own state; the log is kept (compact separately)."""
    INSTALLED = 1
    """A snapshot from the leader replaced the whole log."""
    RESTORED = 2
    """On recovery the newest snapshot file was unusable and this older one was used instead."""


@attrs.frozen
class WalMetadata:
    """Whose log this is. Opening a WAL with other ids is refused."""

    cluster_id: int
    member_id: int


@attrs.frozen
class MetadataRecord:
    """First record of every segment: identity, position, and the link to the previous segment."""

    cluster_id: int
    member_id: int
    seq: int
    prev_crc: int


@attrs.frozen
class StateRecord:
    """Second record of every segment: the storage state when the segment was cut.

    Replay starts from the first retained segment's state record, so segments before it can be
    deleted. Entries ``compact_index + 1 .. last_index`` are *not* in it; they are in released
    segments, and :meth:`Wal.release` only releases a segment once they are compacted.
    """

    hard_state: HardState
    snapshot: SnapshotMetadata
    compact_index: int
    compact_term: int
    last_index: int
    last_term: int


@attrs.frozen
class BatchRecord:
    """One ``save``: an optional new hard state and entries to append (overwriting conflicts)."""

    hard_state: HardState | None
    entries: tuple[Entry, ...]


@attrs.frozen
class SnapshotRecord:
    """A snapshot marker: a snapshot file with this metadata was written and is now current."""

    kind: SnapshotKind
    metadata: SnapshotMetadata


@attrs.frozen
class CompactRecord:
    """Entries up to and including ``index`` (of term ``term``) were compacted."""

    index: int
    term: int


Record: TypeAlias = MetadataRecord | StateRecord | BatchRecord | SnapshotRecord | CompactRecord


@attrs.frozen
class LocatedRecord:
    """A decoded record and where it was read from (for error messages and :class:`RecordAt`)."""

    record: Record
    path: Path
    offset: int
    prev_crc: int = 0
    """The checksum chain before the record (0 if unknown), so it can be read back alone."""

    def at(self) -> RecordAt:
        """Where to read this record back with :func:`read_record_at`."""
        return RecordAt(self.path, self.offset, self.prev_crc)


@attrs.frozen
class RecordAt:
    """Where a record lies in the WAL, to read it back alone (:func:`read_record_at`).

    ``prev_crc`` is the checksum chain before it, against which its stored checksum is checked.
    """

    path: Path
    offset: int
    prev_crc: int


@attrs.frozen(order=True)
class Segment:
    """One segment file: its sequence number, start index and path."""

    seq: int
    index: int
    path: Path = attrs.field(order=False)


@attrs.frozen
class TornTail:
    """A torn write dropped from the end of the last segment."""

    path: Path
    offset: int
    size: int
    reason: str


@attrs.frozen
class WalContents:
    """Everything :func:`read_wal` found: identity, records in order, segments, any torn tail."""

    metadata: WalMetadata
    records: list[LocatedRecord]
    segments: list[Segment]
    end_offset: int
    """Where the valid data of the last segment ends; the next record goes here."""
    last_crc: int
    torn: TornTail | None
    stale: list[Segment] = attrs.field(factory=list)
    """Segments before a gap in the sequence, wholly before the snapshot's segment: left over by
    an interrupted :meth:`Wal.release`, not read, and deleted by :meth:`Wal.open`."""


# -- record payloads --


def _meta_to_array(md: SnapshotMetadata) -> list[object]:
    return [conf_state_to_array(md.conf_state), md.index, md.term]


def _uint(obj: object, what: str, limit: int = _U64_MAX) -> int:
    if type(obj) is not int or not 0 <= obj < limit:
        raise ValueError(f"{what}: expected an unsigned integer, got {obj!r:.40}")
    return obj


def _list(obj: object, what: str, length: int | None = None) -> list[object]:
    if type(obj) is not list or (length is not None and len(obj) != length):
        raise ValueError(f"{what}: expected an array of {length} items, got {obj!r:.60}")
    return obj


def _meta_from_array(obj: object) -> SnapshotMetadata:
    a = _list(obj, "snapshot metadata", 3)
    return SnapshotMetadata(
        conf_state=conf_state_from_array(a[0]),
        index=_uint(a[1], "snapshot index"),
        term=_uint(a[2], "snapshot term"),
    )


_ENTRY_TYPES = tuple(EntryType)


def _entries_from(first: object, terms: object, types: object, datas: object) -> tuple[Entry, ...]:
    start = _uint(first, "first index")
    ts = _list(terms, "entry terms")
    if type(types) is not bytes or len(types) != len(ts):
        raise ValueError("entry types: expected one byte per entry")
    ds = _list(datas, "entry data", len(ts))
    if not all(type(t) is int and 0 <= t < _U64_MAX for t in ts):
        raise ValueError("entry terms: expected unsigned integers")
    if not all(type(d) is bytes for d in ds):
        raise ValueError("entry data: expected byte strings")
    if types and max(types) >= len(_ENTRY_TYPES):
        raise ValueError(f"entry types: unknown type {max(types)}")
    if ts and start + len(ts) > _U64_MAX:
        raise ValueError("entry indexes overflow")
    checked_terms = cast("list[int]", ts)
    checked_data = cast("list[bytes]", ds)
    return tuple(
        Entry(term, start + i, _ENTRY_TYPES[ty], data)
        for i, (term, ty, data) in enumerate(zip(checked_terms, types, checked_data, strict=True))
    )


def encode_record(record: Record) -> bytes:
    """The CBOR payload of ``record``."""
    v = WAL_FORMAT_VERSION
    arr: list[object]
    if isinstance(record, BatchRecord):
        hs = record.hard_state
        ents = record.entries
        first = ents[0].index if ents else 0
        if [e.index for e in ents] != list(range(first, first + len(ents))):
            raise ValueError("batch entries must have consecutive indexes")
        arr = [
            v,
            2,
            None if hs is None else hard_state_to_array(hs),
            first,
            [e.term for e in ents],
            bytes([e.type for e in ents]),
            [e.data for e in ents],
        ]
    elif isinstance(record, SnapshotRecord):
        arr = [v, 3, int(record.kind), _meta_to_array(record.metadata)]
    elif isinstance(record, CompactRecord):
        arr = [v, 4, record.index, record.term]
    elif isinstance(record, StateRecord):
        arr = [
            v,
            1,
            hard_state_to_array(record.hard_state),
            _meta_to_array(record.snapshot),
            record.compact_index,
            record.compact_term,
            record.last_index,
            record.last_term,
        ]
    elif isinstance(record, MetadataRecord):
        arr = [v, 0, record.cluster_id, record.member_id, record.seq, record.prev_crc]
    else:
        assert_never(record)
    return cbor2.dumps(arr)


def decode_record(payload: bytes) -> Record:
    """The inverse of :func:`encode_record`.

    Raises:
        ValueError: ``payload`` is not a record of a known type and version (raftlib's
            ``DecodeError`` is one).
    """
    buf = io.BytesIO(payload)
    try:
        obj = cbor2.CBORDecoder(buf).decode()
    except Exception as exc:  # cbor2 raises many exception types on malformed input
        raise ValueError(f"malformed CBOR: {exc}") from exc
    if buf.tell() != len(payload):
        raise ValueError(f"{len(payload) - buf.tell()} trailing bytes")
    a = _list(obj, "record")
    if len(a) < 2 or a[0] != WAL_FORMAT_VERSION or type(a[0]) is not int:
        raise ValueError(f"unsupported record version or shape: {a[:2]!r:.40}")
    t = a[1]
    if t == RecordType.BATCH and len(a) == 7:
        return BatchRecord(
            hard_state=None if a[2] is None else hard_state_from_array(a[2]),
            entries=_entries_from(a[3], a[4], a[5], a[6]),
        )
    if t == RecordType.SNAPSHOT and len(a) == 4:
        kind = _uint(a[2], "snapshot kind")
        if kind > max(SnapshotKind):
            raise ValueError(f"unknown snapshot kind {kind}")
        return SnapshotRecord(SnapshotKind(kind), _meta_from_array(a[3]))
    if t == RecordType.COMPACT and len(a) == 4:
        return CompactRecord(_uint(a[2], "compact index"), _uint(a[3], "compact term"))
    if t == RecordType.STATE and len(a) == 8:
        return StateRecord(
            hard_state=hard_state_from_array(a[2]),
            snapshot=_meta_from_array(a[3]),
            compact_index=_uint(a[4], "compact index"),
            compact_term=_uint(a[5], "compact term"),
            last_index=_uint(a[6], "last index"),
            last_term=_uint(a[7], "last term"),
        )
    if t == RecordType.METADATA and len(a) == 6:
        return MetadataRecord(
            cluster_id=_uint(a[2], "cluster id"),
            member_id=_uint(a[3], "member id"),
            seq=_uint(a[4], "seq"),
            prev_crc=_uint(a[5], "prev crc", _U32_MAX),
        )
    raise ValueError(f"unknown record type {t!r:.20} with {len(a)} items")


# -- framing --


def _align8(n: int) -> int:
    return (n + 7) & ~7


def frame_record(payload: bytes, prev_crc: int) -> tuple[bytes, int]:
    """``payload`` framed for disk (see the module docstring), and the crc to chain from next."""
    n = len(payload)
    if not 0 < n <= MAX_RECORD_SIZE:
        raise ValueError(f"record payload of {n} bytes is out of range")
    crc = zlib.crc32(payload, prev_crc)
    length = _U32.pack(n)
    pad = -(n + 4) % 8
    return b"".join(
        (length, _U32.pack(zlib.crc32(length)), payload, _U32.pack(crc), bytes(pad))
    ), crc


def _valid_header_at(data: bytes, pos: int) -> bool:
    length: int
    hcrc: int
    length, hcrc = _HEADER.unpack_from(data, pos)
    return 0 < length <= MAX_RECORD_SIZE and zlib.crc32(data[pos : pos + 4]) == hcrc


def _record_after(data: bytes, start: int) -> int | None:
    """The offset of the first 8-aligned valid record header at or after ``start``, if any."""
    stop = min(last_nonzero(data, start), len(data) - _HEADER_SIZE)
    for pos in range(_align8(start), stop + 1, 8):
        if _valid_header_at(data, pos):
            return pos
    return None


def _has_zero_sector(data: bytes, start: int, end: int) -> bool:
    """Whether a whole sector after the one holding ``start`` and starting before ``end`` is 0."""
    s = (start // SECTOR_SIZE + 1) * SECTOR_SIZE
    while s < end:
        if is_zero(data, s, min(s + SECTOR_SIZE, len(data))):
            return True
        s += SECTOR_SIZE
    return False


@attrs.frozen
class _Scan:
    frames: list[tuple[int, bytes, int]]
    end: int
    last_crc: int
    torn: str | None


def _scan_segment(data: bytes, path: Path, *, last: bool) -> _Scan:
    """Split a segment into verified record payloads; see the module docstring for the rules.

    Raises:
        WalCorruptError: damage that is not a torn tail of the last segment.
    """
    n = len(data)
    pos = 0
    crc = 0
    frames: list[tuple[int, bytes, int]] = []

    def done(torn: str | None) -> _Scan:
        return _Scan(frames, pos, crc, torn)

    while pos < n:
        if n - pos < _HEADER_SIZE:
            if not last:
                raise WalCorruptError(path, pos, "truncated record header in a sealed segment")
            return done(None if is_zero(data, pos, n) else "truncated record header")
        length, hcrc = _HEADER.unpack_from(data, pos)
        if length == 0 and hcrc == 0:
            if not last:
                raise WalCorruptError(path, pos, "zero-filled record header in a sealed segment")
            after = _record_after(data, pos + _HEADER_SIZE)
            if after is not None:
                raise WalCorruptError(
                    path, pos, f"zero-filled record header before a record at offset {after}"
                )
            if last_nonzero(data, pos) >= pos:
                return done("zero-filled record header followed by a partial write")
            return done(None)
        if not 0 < length <= MAX_RECORD_SIZE or zlib.crc32(data[pos : pos + 4]) != hcrc:
            raise WalCorruptError(path, pos, "bad record header (checksum or length)")
        body = pos + _HEADER_SIZE
        crc_at = body + length
        end = _align8(crc_at + 4)
        if end > n:
            if not last:
                raise WalCorruptError(path, pos, "record runs past the end of a sealed segment")
            return done(f"record of {length} bytes truncated at end of file")
        payload = data[body:crc_at]
        (stored,) = _U32.unpack_from(data, crc_at)
        new_crc = zlib.crc32(payload, crc)
        if new_crc != stored:
            if last and _has_zero_sector(data, pos, end) and last_nonzero(data, end) < end:
                return done("record with zero-filled sectors (torn write)")
            raise WalCorruptError(path, pos, "record checksum mismatch")
        if not is_zero(data, crc_at + 4, end):
            raise WalCorruptError(path, pos, "non-zero record padding")
        frames.append((pos, payload, crc))
        crc = new_crc
        pos = end
    return done(None)


# -- segments --


def segment_name(seq: int, index: int) -> str:
    """The file name of segment ``seq`` starting at raft index ``index``."""
    return f"{seq:016x}-{index:016x}{SEGMENT_SUFFIX}"


def _parse_segment_name(path: Path) -> Segment | None:
    stem = path.name.removesuffix(SEGMENT_SUFFIX)
    seq, sep, index = stem.partition("-")
    if not sep or len(seq) != 16 or len(index) != 16:
        return None
    try:
        return Segment(int(seq, 16), int(index, 16), path)
    except ValueError:
        return None


def list_segments(directory: Path, fs: FileSystem = OS) -> list[Segment]:
    """The segment files in ``directory``, in sequence order.

    Raises:
        WalCorruptError: a ``*.wal`` file has a malformed name.
    """
    if fs.kind(directory) != "dir":
        return []
    segments = []
    for p in (directory / n for n in fs.listdir(directory)):
        if p.name.endswith(SEGMENT_SUFFIX):
            seg = _parse_segment_name(p)
            if seg is None:
                raise WalCorruptError(p, 0, "malformed segment file name")
            segments.append(seg)
    segments.sort()
    return segments


def _decode_at(payload: bytes, path: Path, offset: int) -> Record:
    try:
        return decode_record(payload)
    except ValueError as exc:
        raise WalCorruptError(path, offset, f"record does not decode: {exc}") from exc


def read_wal(
    directory: Path, *, metadata: WalMetadata | None = None, fs: FileSystem = OS
) -> WalContents:
    """Read and verify every record of the WAL in ``directory``, without changing anything.

    Args:
        directory: the WAL directory.
        metadata: the identity the caller expects; ``None`` accepts whatever the WAL holds.
        fs: the file layer.

    Segments before a gap in the sequence numbers are not read, and do not stop the read, when
    the gap is wholly before the snapshot's segment (the newest segment started at or before the
    index after the snapshot the WAL's last marker names): :meth:`Wal.release` deletes old
    segments oldest first with one directory fsync at the end, so a power loss can keep an old
    segment and lose a newer one, and replay never needs either. etcd likewise checks the
    sequence only from the snapshot's segment on. A gap at or after that segment is corruption.

    Returns:
        The records of the segments read, in order. A torn tail of the last segment is left out
        and described in :attr:`WalContents.torn`; the segments skipped are in
        :attr:`WalContents.stale`.

    Raises:
        WalIdentityError: the WAL belongs to another cluster or member.
        WalCorruptError: no segments, a missing segment at or after the snapshot's segment, a
            broken checksum chain, a bad record anywhere but a torn tail, or a record that does
            not decode.
    """
    segments = list_segments(directory, fs)
    if not segments:
        raise WalCorruptError(directory, 0, "no WAL segments")
    start = 0
    for i, (prev, seg) in enumerate(itertools.pairwise(segments), start=1):
        if seg.seq != prev.seq + 1:
            start = i
    stale, segments = segments[:start], segments[start:]
    records: list[LocatedRecord] = []
    found: WalMetadata | None = None
    prev_crc: int | None = None
    scan = _Scan([], 0, 0, None)
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        scan = _scan_segment(read_file(seg.path, fs), seg.path, last=last)
        located = [
            LocatedRecord(_decode_at(p, seg.path, off), seg.path, off, prev)
            for off, p, prev in scan.frames
        ]
        if len(located) < 2:
            raise WalCorruptError(seg.path, scan.end, "segment lacks its metadata or state record")
        head, state = located[0].record, located[1].record
        if not isinstance(head, MetadataRecord) or head.seq != seg.seq:
            raise WalCorruptError(seg.path, 0, f"bad segment metadata record {head!r:.100}")
        ident = WalMetadata(head.cluster_id, head.member_id)
        if found is None:
            found = ident
            if metadata is not None and ident != metadata:
                raise WalIdentityError(
                    seg.path,
                    0,
                    f"WAL belongs to cluster {ident.cluster_id:#x} member {ident.member_id:#x}, "
                    f"not cluster {metadata.cluster_id:#x} member {metadata.member_id:#x}",
                )
        elif ident != found:
            raise WalCorruptError(seg.path, 0, f"segment identity {ident} differs from {found}")
        if prev_crc is not None and head.prev_crc != prev_crc:
            raise WalCorruptError(
                seg.path, 0, "checksum chain broken: the previous segment lost records at its end"
            )
        if not isinstance(state, StateRecord) or state.last_index + 1 != seg.index:
            raise WalCorruptError(
                seg.path, located[1].offset, f"bad segment state record {state!r:.100}"
            )
        for lr in located[2:]:
            if isinstance(lr.record, MetadataRecord | StateRecord):
                raise WalCorruptError(seg.path, lr.offset, "segment header record mid-segment")
        records.extend(located)
        prev_crc = scan.last_crc
    if found is None:
        raise WalCorruptError(directory, 0, "no WAL segments")
    if stale:
        _check_gap_before_snapshot(stale[-1], segments[0], records)
    last_seg = segments[-1]
    torn = None
    if scan.torn is not None:
        size = fs.size(last_seg.path)
        torn = TornTail(last_seg.path, scan.end, size, scan.torn)
    return WalContents(found, records, segments, scan.end, scan.last_crc, torn, stale)


def read_record_at(at: RecordAt, fs: FileSystem = OS) -> Record:
    """Read back the one record at ``at`` (written earlier, and still in its segment).

    Raises:
        WalCorruptError: the record there is not whole, fails its checksums, or does not decode.
        OSError: the segment cannot be read.
    """
    fd = fs.open(at.path, O_RDONLY)
    try:
        head = fs.pread(fd, _HEADER_SIZE, at.offset)
        if len(head) < _HEADER_SIZE:
            raise WalCorruptError(at.path, at.offset, "record header missing on read-back")
        length, hcrc = _HEADER.unpack(head)
        if not 0 < length <= MAX_RECORD_SIZE or zlib.crc32(head[:4]) != hcrc:
            raise WalCorruptError(at.path, at.offset, "bad record header on read-back")
        body = fs.pread(fd, length + 4, at.offset + _HEADER_SIZE)
    finally:
        fs.close(fd)
    if len(body) < length + 4:
        raise WalCorruptError(at.path, at.offset, "record truncated on read-back")
    payload = body[:length]
    (stored,) = _U32.unpack_from(body, length)
    if zlib.crc32(payload, at.prev_crc) != stored:
        raise WalCorruptError(at.path, at.offset, "record checksum mismatch on read-back")
    return _decode_at(payload, at.path, at.offset)


def _check_gap_before_snapshot(
    before: Segment, after: Segment, records: Sequence[LocatedRecord]
) -> None:
    """Refuse a gap between ``before`` and ``after`` unless it is before the snapshot's segment.

    That is, ``after`` must start at or before the index following the newest snapshot marker,
    so every entry after the snapshot is in ``after`` or later segments.

    Raises:
        WalCorruptError: the gap may hold entries after the snapshot.
    """
    snapshot = SnapshotMetadata()
    for lr in records:
        if isinstance(lr.record, StateRecord):
            snapshot = lr.record.snapshot
        elif isinstance(lr.record, SnapshotRecord):
            snapshot = lr.record.metadata
    if after.index > snapshot.index + 1:
        raise WalCorruptError(
            after.path,
            0,
            f"missing segment(s) between seq {before.seq} and {after.seq}, at or after the "
            f"segment holding the entries after the snapshot at index {snapshot.index}",
        )


def cut_wal(directory: Path, path: Path, offset: int, fs: FileSystem = OS) -> list[Path]:
    """Drop everything from ``offset`` in segment ``path`` on: an operator's explicit repair.

    The dropped bytes are kept: the cut segment is first copied to ``<name>.broken`` (or, if the
    cut would leave it without its header records, renamed to that), and every later segment is
    renamed to ``<name>.broken``.

    Returns:
        The ``.broken`` files written.

    Raises:
        ValueError: the cut would remove the first segment's header, leaving no WAL at all.
    """
    segments = list_segments(directory, fs)
    idx = next((i for i, s in enumerate(segments) if s.path == path), None)
    if idx is None:
        raise ValueError(f"{path} is not a segment of {directory}")
    seg = segments[idx]
    data = read_file(seg.path, fs)
    scan = _scan_segment(data[:offset], seg.path, last=True)
    broken: list[Path] = []
    if len(scan.frames) < 2:
        if idx == 0:
            raise ValueError(f"cutting {path} at {offset} would leave no WAL; restore a backup")
        later = segments[idx:]
    else:
        copy = seg.path.with_name(seg.path.name + ".broken")
        write_file_atomic(copy, data, fs=fs)
        broken.append(copy)
        fd = fs.open(seg.path, O_RDWR)
        try:
            fs.ftruncate(fd, scan.end)
            fdatasync(fd, fs)
        finally:
            fs.close(fd)
        later = segments[idx + 1 :]
    for s in later:
        target = s.path.with_name(s.path.name + ".broken")
        fs.replace(s.path, target)
        broken.append(target)
    fsync_dir(directory, fs)
    return broken


# -- the writer --


class Wal:
    """An open WAL, appending to its last segment. Not thread-safe.

    Create one with :meth:`create` (empty directory) or :meth:`open` (existing log). Every
    :meth:`append` is durable when it returns (unless ``fsync=False``). After a failed write the
    object refuses further writes (reopen to recover from what is on disk), except after a write
    or a cut that failed only for lack of space and left the log as it was (see :attr:`failed`).
    """

    def __init__(
        self,
        directory: Path,
        metadata: WalMetadata,
        segments: list[Segment],
        *,
        fd: int | None,
        offset: int,
        crc: int,
        segment_size: int,
        preallocate: bool,
        fsync: bool,
        zero_limit: int = 0,
        fs: FileSystem = OS,
    ) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self._fs = fs
        self.directory = directory
        self.metadata = metadata
        self._segments = segments
        self._fd: int | None = fd
        self._offset = offset
        self._crc = crc
        self._segment_size = segment_size
        self._preallocate = preallocate
        self._fsync = fsync
        self._failed = False
        self._zero_limit = zero_limit  # the preallocated end of the segment: zeros go up to here
        self._zeroed = offset  # the end of what appends and zeros have written

    @staticmethod
    def exists(directory: Path, fs: FileSystem = OS) -> bool:
        """Whether ``directory`` holds any WAL segment."""
        return bool(list_segments(directory, fs))

    @classmethod
    def create(
        cls,
        directory: Path,
        metadata: WalMetadata,
        state: StateRecord,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        preallocate: bool = True,
        fsync: bool = True,
        fs: FileSystem = OS,
    ) -> Wal:
        """Start a new WAL in ``directory`` (created if missing) with ``state`` as its base.

        Raises:
            FileExistsError: ``directory`` already holds a WAL.
        """
        ensure_dir(directory, fsync=fsync, fs=fs)
        if Wal.exists(directory, fs):
            raise FileExistsError(f"{directory} already holds a WAL")
        remove_tmp_files(directory, fsync=fsync, fs=fs)
        wal = cls(
            directory,
            metadata,
            [],
            fd=None,
            offset=0,
            crc=0,
            segment_size=segment_size,
            preallocate=preallocate,
            fsync=fsync,
            fs=fs,
        )
        wal._new_segment(0, state)
        logger.info(
            "created WAL %s for cluster %#x member %#x",
            directory,
            metadata.cluster_id,
            metadata.member_id,
        )
        return wal

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        metadata: WalMetadata | None = None,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        preallocate: bool = True,
        fsync: bool = True,
        fs: FileSystem = OS,
    ) -> tuple[Wal, WalContents]:
        """Open the WAL in ``directory`` for appending, after reading it all back.

        A torn tail of the last segment is truncated away (and logged) so appends continue
        after the last good record, and stale segments before a gap (see :func:`read_wal`) are
        deleted, oldest first, finishing the release a crash interrupted. Nothing is modified if
        any other problem is found.

        Returns:
            The open WAL and what :func:`read_wal` returned.

        Raises:
            WalIdentityError: ``metadata`` is given and differs from the WAL's.
            WalCorruptError: see :func:`read_wal`.
        """
        contents = read_wal(directory, metadata=metadata, fs=fs)
        remove_tmp_files(directory, fsync=fsync, fs=fs)
        if contents.stale:
            for seg in contents.stale:
                logger.warning(
                    "WAL %s: deleting %s, left before a gap in the segment sequence by an "
                    "interrupted release (it holds nothing after the snapshot)",
                    directory,
                    seg.path.name,
                )
                with contextlib.suppress(FileNotFoundError):
                    fs.unlink(seg.path)
            if fsync:
                fsync_dir(directory, fs)
        last = contents.segments[-1]
        fd = fs.open(last.path, O_RDWR)
        try:
            if contents.torn is not None:
                t = contents.torn
                logger.warning(
                    "WAL %s: dropping torn tail at offset %d (%d bytes in file): %s",
                    t.path,
                    t.offset,
                    t.size - t.offset,
                    t.reason,
                )
                fs.ftruncate(fd, contents.end_offset)
                if fsync:
                    fdatasync(fd, fs)
            size = fs.fsize(fd)
            if (
                preallocate
                and size < segment_size
                and _preallocate_durably(fs, fd, segment_size, fsync=fsync)
            ):
                size = segment_size
        except BaseException:
            fs.close(fd)
            raise
        wal = cls(
            directory,
            contents.metadata,
            list(contents.segments),
            fd=fd,
            offset=contents.end_offset,
            crc=contents.last_crc,
            segment_size=segment_size,
            preallocate=preallocate,
            fsync=fsync,
            zero_limit=size if preallocate else 0,  # reserved by this run or an earlier one
            fs=fs,
        )
        return wal, contents

    @property
    def segments(self) -> list[Segment]:
        """The segment files currently part of the log, oldest first."""
        return list(self._segments)

    @property
    def end_offset(self) -> int:
        """Where the next record goes in the current (last) segment: the end of the valid data."""
        return self._offset

    @property
    def failed(self) -> bool:
        """Whether a failed write or cut made this WAL refuse further writes."""
        return self._failed

    @property
    def segment_full(self) -> bool:
        """Whether the current segment has reached the segment size and should be cut."""
        return self._offset >= self._segment_size

    def _check(self) -> int:
        if self._fd is None:
            raise ValueError("WAL is closed")
        if self._failed:
            raise OSError("an earlier WAL write failed; reopen the WAL")
        return self._fd

    def append(self, records: Sequence[Record]) -> list[RecordAt]:
        """Write ``records`` with one ``write`` and one ``fdatasync``: the group-commit point.

        Returns where each record was written, in order (to read it back later).

        If the write or the sync fails (a full disk, an I/O error), the file is cut back to the
        end of the last complete record before the error is raised, so the partial,
        unacknowledged record does not read back as corruption on the next open: a restart
        after the disk is freed just works. A write that failed for lack of space
        (:func:`~kvapp.storage.fileutil.is_no_space`) whose cut-back worked leaves the WAL
        usable: the same records may be appended again.

        Raises:
            FsyncError: the sync failed (including the sync of the cut-back); the WAL then refuses
                further writes, and the process must not trust the page cache for this file.
            OSError: the write failed; unless it was for lack of space and nothing of it is left
                in the file, the WAL then refuses further writes (see :attr:`failed`).
            ValueError: the WAL is closed, or a record is larger than :data:`MAX_RECORD_SIZE`.
        """
        fd = self._check()
        if not records:
            return []
        crc = self._crc
        parts = []
        path = self._segments[-1].path
        where = []
        at = self._offset
        for r in records:
            where.append(RecordAt(path, at, crc))
            frame, crc = frame_record(encode_record(r), crc)
            parts.append(frame)
            at += len(frame)
        buf = parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            write_all(self._fs, fd, buf, self._offset)
            if at > self._zeroed and self._zeroed < self._zero_limit:
                self._zero_ahead(fd, at)
            if self._fsync:
                fdatasync(fd, self._fs)
        except OSError as exc:
            self._failed = True
            no_space = is_no_space(exc)
            # A full disk is retried, and its owner logs the episode; anything else is news.
            level = logging.DEBUG if no_space else logging.ERROR
            logger.log(level, "WAL write to %s failed: %s", self._segments[-1].path, exc)
            if self._discard_partial(fd, exc, quiet=no_space) and no_space:
                self._failed = False
            raise
        self._offset += len(buf)
        self._crc = crc
        return where

    def _zero_ahead(self, fd: int, end: int) -> None:
        """Write zeros from ``end`` (where the records now end) up to :data:`ZERO_AHEAD` beyond.

        Only inside the preallocated space, so it never grows the file or needs new space. If
        it fails, :meth:`append` fails as a failed write of its records would.
        """
        stop = min(end + ZERO_AHEAD, self._zero_limit)
        if stop > end:
            write_all(self._fs, fd, memoryview(_zeros())[: stop - end], end)
        self._zeroed = max(stop, end)

    def _discard_partial(self, fd: int, cause: OSError, *, quiet: bool = False) -> bool:
        """Cut the current segment back to the end of its last complete record after ``cause``.

        Truncating only frees space, so it works on a full disk. If it fails the partial record
        stays, and the next open reports it (as a torn tail or as corruption, by its shape).

        Returns:
            Whether the file was cut back (and the cut synced).

        Raises:
            FsyncError: syncing the cut failed; raised from ``cause``.
        """
        path = self._segments[-1].path
        self._zero_limit = self._zeroed = self._offset  # the cut gives back the reserved space
        try:
            self._fs.ftruncate(fd, self._offset)
            if self._fsync:
                fdatasync(fd, self._fs)
        except FsyncError as exc:
            logger.error("WAL %s: syncing the removal of a partial record failed: %s", path, exc)
            raise exc from cause
        except OSError as exc:
            logger.error("WAL %s: could not remove the partial record: %s", path, exc)
            return False
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "WAL %s: removed the partial record of a failed write at offset %d",
            path,
            self._offset,
        )
        return True

    def cut(self, state: StateRecord) -> None:
        """Seal the current segment and continue in a new one starting with ``state``.

        ``state`` must describe the storage after every record appended so far.

        Raises:
            OSError: a file operation failed; the WAL then refuses further writes, unless the
                new segment could not be created for lack of space: then nothing changed but
                the old segment's preallocated tail, appends go on in the old segment, and the
                cut may be tried again.
        """
        fd = self._check()
        try:
            if self._fs.fsize(fd) != self._offset:
                self._zero_limit = self._zeroed = self._offset
                self._fs.ftruncate(fd, self._offset)
                if self._fsync:
                    fdatasync(fd, self._fs)
            self._new_segment(self._segments[-1].seq + 1, state)
        except OSError as exc:
            if self._fd == fd and is_no_space(exc):
                logger.debug("WAL %s: no space for a new segment: %s", self.directory, exc)
                raise
            self._failed = True
            logger.exception("cutting a new WAL segment in %s failed", self.directory)
            raise
        self._fs.close(fd)

    def _new_segment(self, seq: int, state: StateRecord) -> None:
        index = state.last_index + 1
        seg = Segment(seq, index, self.directory / segment_name(seq, index))
        md = self.metadata
        head, crc = frame_record(
            encode_record(MetadataRecord(md.cluster_id, md.member_id, seq, self._crc)), 0
        )
        body, crc = frame_record(encode_record(state), crc)
        tmp = seg.path.with_name(seg.path.name + ".tmp")
        fs = self._fs
        fd = fs.open(tmp, O_RDWR | O_CREAT | O_TRUNC, 0o644)
        renamed = False
        try:
            reserved = self._preallocate and preallocate(fd, self._segment_size, fs)
            write_all(fs, fd, head + body, 0)
            if self._fsync:
                fsync_file(fd, fs)
            fs.replace(tmp, seg.path)
            renamed = True
            if self._fsync:
                fsync_dir(self.directory, fs)
        except BaseException:
            fs.close(fd)
            if not renamed:  # give back the space (a full disk) and leave no debris
                with contextlib.suppress(OSError):
                    fs.unlink(tmp)
            raise
        self._fd = fd
        self._offset = self._zeroed = len(head) + len(body)
        self._zero_limit = self._segment_size if reserved else 0
        self._crc = crc
        self._segments.append(seg)
        logger.debug("WAL %s: started segment %s", self.directory, seg.path.name)

    def release(self, index: int) -> list[Path]:
        """Delete the segments not needed once every entry up to ``index`` is compacted.

        Keeps the newest segment started at or before ``index + 1`` and all later ones: entries
        after ``index`` were all written after that segment was cut (it was started at the last
        index then, plus one). Never deletes the current segment.

        Segments are deleted oldest first and the directory is fsynced once at the end, so a
        crash part-way usually leaves the newer doomed segments in a contiguous run; if the file
        system reorders the deletions, the gap left is wholly before the snapshot's segment,
        which :func:`read_wal` tolerates.

        Returns:
            The deleted files.

        Raises:
            OSError: a deletion failed; the segments deleted so far are no longer listed.
        """
        self._check()
        keep_from = 0
        for i, seg in enumerate(self._segments):
            if seg.index <= index + 1:
                keep_from = i
        doomed = self._segments[:keep_from]
        deleted = 0
        try:
            for seg in doomed:
                self._fs.unlink(seg.path)
                deleted += 1
        finally:
            del self._segments[:deleted]
        if doomed:
            if self._fsync:
                fsync_dir(self.directory, self._fs)
            logger.info(
                "WAL %s: released %d segment(s) up to index %d", self.directory, len(doomed), index
            )
        return [s.path for s in doomed]

    def close(self) -> None:
        """Close the current segment file (idempotent). Everything appended is already synced."""
        if self._fd is not None:
            self._fs.close(self._fd)
            self._fd = None


@functools.cache
def _zeros() -> bytes:
    return bytes(ZERO_AHEAD)


def _preallocate_durably(fs: FileSystem, fd: int, size: int, *, fsync: bool) -> bool:
    """Preallocate ``fd`` to ``size`` and make the new extent durable; False if unsupported."""
    if not preallocate(fd, size, fs):
        return False
    if fsync:
        fsync_file(fd, fs)
    return True
