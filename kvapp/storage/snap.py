"""State-machine snapshot files: written atomically, checksummed, named by term and index.

A snapshot file is ``<term:016x>-<index:016x>.snap`` in the snapshot directory::

    8 bytes  magic          b"KVSNAP" + u16 format version (1)
    u64      length         payload length
    ...      payload        CBOR: raftlib's snapshot array ``[data, [conf_state, index, term]]``
    u32      crc            crc32 of everything before it

It is written to ``<name>.tmp``, fdatasynced, renamed into place and the directory fsynced, so a
file with a final name is always complete unless the disk damaged it afterwards. Loading checks
the size, the crc, the encoding and that the metadata matches the name; any mismatch is a
:class:`~kvapp.storage.errors.SnapshotCorruptError`.

A snapshot file only counts once the WAL holds its marker record (written after the file): the
:class:`~kvapp.storage.raftstore.RaftStore` decides which files are current, falls back to older
ones and prunes. The :class:`Snapshotter` only stores, lists, loads and deletes files.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import zlib
from pathlib import Path
from typing import cast

import attrs
import cbor2

from kvapp.storage.crc import crc32_combine
from kvapp.storage.errors import SnapshotCorruptError
from kvapp.storage.fileutil import (
    CopiedPart,
    ensure_dir,
    fsync_dir,
    read_file,
    remove_tmp_files,
    write_file_atomic,
)
from kvapp.storage.fs import OS, FileSystem
from kvapp.storage.snapparts import SnapshotParts
from raftlib.codec import snapshot_from_array, snapshot_to_array
from raftlib.types import Snapshot

__all__ = [
    "SNAP_FORMAT_VERSION",
    "SNAP_SUFFIX",
    "SnapshotFile",
    "Snapshotter",
    "data_offset",
    "decode_snapshot_file",
    "encode_snapshot_file",
    "snapshot_file_name",
]

logger = logging.getLogger(__name__)

SNAP_FORMAT_VERSION = 1
SNAP_SUFFIX = ".snap"
BROKEN_SUFFIX = ".broken"

_MAGIC = b"KVSNAP" + struct.pack("<H", SNAP_FORMAT_VERSION)
_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_OVERHEAD = len(_MAGIC) + _LEN.size + _CRC.size


def snapshot_file_name(term: int, index: int) -> str:
    """The file name of the snapshot at ``index`` of ``term``."""
    return f"{term:016x}-{index:016x}{SNAP_SUFFIX}"


@attrs.frozen(order=True)
class SnapshotFile:
    """A snapshot file found on disk, ordered by (index, term): newest compares greatest."""

    index: int
    term: int
    path: Path = attrs.field(order=False)


def _parse_name(path: Path) -> SnapshotFile | None:
    if not path.name.endswith(SNAP_SUFFIX):
        return None
    term, sep, index = path.name.removesuffix(SNAP_SUFFIX).partition("-")
    if not sep or len(term) != 16 or len(index) != 16:
        return None
    try:
        return SnapshotFile(int(index, 16), int(term, 16), path)
    except ValueError:
        return None


def encode_snapshot_file(snapshot: Snapshot) -> bytes:
    """The file content for ``snapshot`` (see the module docstring); its data must be bytes."""
    parts = _file_parts(snapshot)
    if not all(isinstance(p, bytes | memoryview) for p in parts):
        raise TypeError("snapshot data with ranges of other files: write it with a Snapshotter")
    return b"".join(cast("tuple[bytes, ...]", parts))


def _file_parts(snapshot: Snapshot) -> tuple[bytes | memoryview | CopiedPart, ...]:
    """:func:`encode_snapshot_file`'s content in pieces, the snapshot's data not copied.

    The payload is the CBOR array of :func:`raftlib.codec.snapshot_to_array`, with the data's
    byte string written as cbor2 writes it (the shortest length head), so that the (possibly
    large) data is neither copied into an encoder's buffer nor joined with the rest. Data given
    as :class:`~kvapp.storage.snapparts.SnapshotParts` is passed on as its pieces (ranges of
    other files are copied by the kernel), and its recorded CRC is combined, not recomputed.
    """
    raw: object = snapshot.data
    meta = cbor2.dumps(snapshot_to_array(snapshot)[1])
    if isinstance(raw, SnapshotParts):
        size, data_crc, pieces = raw.size, raw.crc, tuple(raw.pieces)
    else:
        data = bytes(cast("bytes", raw))  # the same object if it is bytes
        size, data_crc, pieces = len(data), zlib.crc32(data), (data,)
    opening = b"\x82" + _byte_string_head(size)
    head = _MAGIC + _LEN.pack(len(opening) + size + len(meta))
    crc = crc32_combine(zlib.crc32(opening, zlib.crc32(head)), data_crc, size)
    crc = zlib.crc32(meta, crc)
    return head, opening, *pieces, meta, _CRC.pack(crc)


def data_offset(size: int) -> int:
    """Where a snapshot's data of ``size`` bytes starts in its file (see the module doc)."""
    return len(_MAGIC) + _LEN.size + 1 + len(_byte_string_head(size))


def _byte_string_head(n: int) -> bytes:
    """The CBOR head of a byte string of ``n`` bytes (major type 2, shortest length form)."""
    if n < 24:
        return bytes((0x40 | n,))
    for marker, size in ((0x58, 1), (0x59, 2), (0x5A, 4), (0x5B, 8)):
        if n < 1 << (8 * size):
            return bytes((marker,)) + n.to_bytes(size, "big")
    raise ValueError(f"a byte string of {n} bytes is too long for CBOR")


def decode_snapshot_file(data: bytes, path: Path, *, term: int, index: int) -> Snapshot:
    """Check and decode the content of snapshot file ``path``, expected at ``term``/``index``.

    Raises:
        SnapshotCorruptError: wrong magic or version, wrong size, crc mismatch, undecodable
            payload, or metadata that does not match the file name.
    """
    if len(data) < _OVERHEAD or data[: len(_MAGIC)] != _MAGIC:
        raise SnapshotCorruptError(path, "not a snapshot file of a supported version")
    length: int
    (length,) = _LEN.unpack_from(data, len(_MAGIC))
    if len(data) != _OVERHEAD + length:
        raise SnapshotCorruptError(
            path, f"size {len(data)} does not match the {length}-byte payload it declares"
        )
    stored: int
    (stored,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: len(data) - _CRC.size]) != stored:
        raise SnapshotCorruptError(path, "checksum mismatch")
    payload = data[len(_MAGIC) + _LEN.size : len(data) - _CRC.size]
    try:
        snap = snapshot_from_array(cbor2.loads(payload))
    except Exception as exc:  # DecodeError, and the many exception types cbor2 raises
        raise SnapshotCorruptError(path, f"payload does not decode: {exc}") from exc
    if (snap.metadata.term, snap.metadata.index) != (term, index):
        raise SnapshotCorruptError(
            path,
            f"holds the snapshot at term {snap.metadata.term} index {snap.metadata.index}, "
            "not the one its name says",
        )
    return snap


class Snapshotter:
    """Stores, lists, loads and deletes snapshot files in one directory. Not thread-safe.

    Args:
        directory: where the files live; created (durably) if missing. Leftover ``.tmp`` files
            of interrupted writes are deleted.
        fsync: ``False`` skips fsyncs (tests and benchmarks only).
        read_only: only list and load; neither create the directory nor clean it up (for
            inspection tools).
        fs: the file layer.
    """

    def __init__(
        self,
        directory: Path,
        *,
        fsync: bool = True,
        read_only: bool = False,
        fs: FileSystem = OS,
    ) -> None:
        self.directory = directory
        self.fs = fs
        self._fsync = fsync
        if not read_only:
            ensure_dir(directory, fsync=fsync, fs=fs)
            remove_tmp_files(directory, fsync=fsync, fs=fs)

    def path_for(self, term: int, index: int) -> Path:
        """Where the snapshot at ``term``/``index`` is (or would be) stored."""
        return self.directory / snapshot_file_name(term, index)

    def save(self, snapshot: Snapshot) -> Path:
        """Write ``snapshot`` durably (temp file, fdatasync, rename, directory fsync).

        Returns:
            The file written.
        """
        md = snapshot.metadata
        path = self.path_for(md.term, md.index)
        write_file_atomic(path, *_file_parts(snapshot), fsync=self._fsync, fs=self.fs)
        logger.info(
            "saved snapshot at index %d term %d (%d bytes) to %s",
            md.index,
            md.term,
            len(snapshot.data),
            path.name,
        )
        return path

    def files(self) -> list[SnapshotFile]:
        """The snapshot files present, newest (highest index) first; other files are ignored."""
        if self.fs.kind(self.directory) != "dir":
            return []
        names = self.fs.listdir(self.directory)
        found = [f for n in names if (f := _parse_name(self.directory / n)) is not None]
        found.sort(reverse=True)
        return found

    def load(self, term: int, index: int) -> Snapshot:
        """Load and verify the snapshot at ``term``/``index``.

        Raises:
            SnapshotCorruptError: the file is missing or fails verification.
        """
        path = self.path_for(term, index)
        try:
            data = read_file(path, self.fs)
        except FileNotFoundError:
            raise SnapshotCorruptError(path, "snapshot file is missing") from None
        return decode_snapshot_file(data, path, term=term, index=index)

    def set_aside(self, term: int, index: int) -> Path | None:
        """Rename a bad snapshot file to ``<name>.broken`` (kept for inspection, never loaded).

        Returns:
            The new name, or ``None`` if the file did not exist.
        """
        path = self.path_for(term, index)
        target = path.with_name(path.name + BROKEN_SUFFIX)
        try:
            self.fs.replace(path, target)
        except FileNotFoundError:
            return None
        if self._fsync:
            fsync_dir(self.directory, self.fs)
        logger.warning("set aside unusable snapshot file %s as %s", path.name, target.name)
        return target

    def remove(self, files: list[SnapshotFile]) -> None:
        """Delete ``files`` (durably)."""
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                self.fs.unlink(f.path)
        if files and self._fsync:
            fsync_dir(self.directory, self.fs)

    def prune(self, keep: int, *, newest_index: int) -> list[SnapshotFile]:
        """Keep the ``keep`` newest files at or before ``newest_index``; delete the older ones.

        Files after ``newest_index`` are not touched: they may belong to a snapshot whose WAL
        marker is being written.

        Returns:
            The deleted files.
        """
        candidates = [f for f in self.files() if f.index <= newest_index]
        doomed = candidates[keep:]
        self.remove(doomed)
        if doomed:
            logger.info("pruned %d old snapshot file(s)", len(doomed))
        return doomed
