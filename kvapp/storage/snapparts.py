"""A snapshot's data assembled from new bytes and ranges of earlier snapshots' data.

A member's snapshot holds its whole state, yet most of it is what the previous snapshot already
wrote (:meth:`kvapp.kvstate.KvState.keep_encoded`). Copying that part through Python costs
about as much CPU as the state is large: at 1M keys, 293 MB a snapshot, most of a second of a
member's CPU under load, largely holding the GIL. :class:`SnapshotParts` instead records
*where* those bytes are (a :class:`FileRange` of an earlier snapshot file); the snapshot file
writer (:class:`~kvapp.storage.snap.Snapshotter`) then has the kernel copy them
(``copy_file_range``) without reading them, and the file's checksum combines the range's
recorded CRC (:func:`~kvapp.storage.crc.crc32_combine`) instead of reading it either.

A storage that accepts such data says so with ``takes_snapshot_parts``; raftlib passes a
snapshot's data through without looking inside.
"""

from __future__ import annotations

import errno
import zlib
from collections.abc import Callable, Iterator
from typing import TypeAlias

from kvapp.storage.crc import crc32_combine
from kvapp.storage.fileutil import write_all
from kvapp.storage.fs import FileSystem
from kvapp.storage.snapdata import FileSnapshotData

__all__ = ["FileRange", "SnapshotParts"]

_CHUNK = 1 << 20
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})

Piece: TypeAlias = "bytes | memoryview | FileRange"


class FileRange:
    """Bytes ``start`` to ``end`` of a :class:`FileSnapshotData` (which keeps its file open)."""

    __slots__ = ("end", "source", "start")

    def __init__(self, source: FileSnapshotData, start: int, end: int) -> None:
        if not 0 <= start <= end <= len(source):
            raise ValueError(f"range {start}..{end} is not within {len(source)} bytes")
        self.source = source
        self.start = start
        self.end = end

    def __len__(self) -> int:
        return self.end - self.start

    def __repr__(self) -> str:
        return f"FileRange({self.source!r}, {self.start}, {self.end})"

    def copy_to(self, fs: FileSystem, fd: int, offset: int) -> None:
        """Write the range to ``fd`` (of ``fs``, the source's too) at ``offset``.

        In the kernel where it can.

        Raises:
            OSError: reading or writing failed, or the source file is shorter than it was.
        """
        src = self.source
        at, end = self.start, self.end
        if src.fs is not fs:  # descriptors of another file system: read through the source
            self._copy_by_reading(fs, fd, at, offset)
            return
        while at < end:
            try:
                n = fs.copy_range(src.fd, fd, end - at, src.offset + at, offset)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                self._copy_by_reading(fs, fd, at, offset)
                return
            if n == 0:
                raise OSError(f"snapshot file {src.path} is shorter than it was")
            at += n
            offset += n

    def _copy_by_reading(self, fs: FileSystem, fd: int, at: int, offset: int) -> None:
        while at < self.end:
            chunk = self.source.read_range(at, min(at + _CHUNK, self.end))
            if not chunk:
                raise OSError(f"snapshot file {self.source.path} is shorter than it was")
            write_all(fs, fd, chunk, offset)
            offset += len(chunk)
            at += len(chunk)

    def read(self) -> bytes:
        """The range's bytes (read from the file)."""
        return self.source.read_range(self.start, self.end)


class SnapshotParts:
    """Snapshot data as a list of pieces, with its size and zlib CRC-32, written once in order.

    It is a write-only stream to its producer (:meth:`write`, :meth:`add_range`) and a list of
    pieces to the file writer (:attr:`pieces`). Like :class:`FileSnapshotData` it is not a
    ``bytes``: :meth:`to_bytes` reads it whole where bytes are really needed.
    """

    __slots__ = ("__weakref__", "crc", "pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self.size = 0
        self.crc = 0

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"SnapshotParts({len(self.pieces)} pieces, {self.size} bytes)"

    def write(self, data: bytes | memoryview) -> None:
        """Append new bytes (kept by reference: they must not change)."""
        if data:
            self.pieces.append(data)
            self.size += len(data)
            self.crc = zlib.crc32(data, self.crc)

    def add_range(self, source: object, start: int, end: int, crc: int) -> None:
        """Append bytes ``start`` to ``end`` of earlier snapshot data, whose CRC-32 is ``crc``.

        ``source`` is ``bytes``, a :class:`FileSnapshotData` or a :class:`SnapshotParts`; the
        bytes are not read, so ``crc`` must be right (it comes from when they were written).
        """
        self.pieces.extend(_pieces(source, start, end))
        self.size += end - start
        self.crc = crc32_combine(self.crc, crc, end - start)

    def to_bytes(self) -> bytes:
        """The whole data, read into memory."""
        return b"".join(bytes(p) if not isinstance(p, FileRange) else p.read() for p in self.pieces)

    def copy_range(self, start: int, end: int, write: Callable[[bytes], object]) -> None:
        """Pass bytes ``start`` to ``end`` to ``write``, a piece at a time (reading ranges)."""
        for piece in _pieces(self, start, end):
            write(piece.read() if isinstance(piece, FileRange) else bytes(piece))


def _pieces(source: object, start: int, end: int) -> Iterator[Piece]:
    """Bytes ``start`` to ``end`` of ``source`` as pieces, nothing read or copied."""
    if isinstance(source, FileSnapshotData):
        yield FileRange(source, start, end)
    elif isinstance(source, SnapshotParts):
        at = 0
        for piece in source.pieces:
            n = len(piece)
            lo, hi = max(start - at, 0), min(end - at, n)
            if lo < hi:
                if isinstance(piece, FileRange):
                    yield FileRange(piece.source, piece.start + lo, piece.start + hi)
                else:
                    yield memoryview(piece)[lo:hi]
            at += n
            if at >= end:
                break
    elif isinstance(source, bytes | bytearray | memoryview):
        yield memoryview(source)[start:end]
    else:
        raise TypeError(f"cannot take a range of {type(source).__name__}")
