"""A snapshot's data left in its file: what :class:`~kvapp.storage.RaftStore` keeps in memory.

A member's snapshot holds its whole replicated state (about 290 bytes per key with 256-byte
values), and Raft's storage must hand it out whenever a follower needs it. Holding those bytes
in memory as well as in the file would double what the state costs, so once the file is written
:class:`~kvapp.storage.RaftStore` keeps a :class:`FileSnapshotData` as the snapshot's ``data``
instead: a few fields and an open descriptor of the file.

raftlib never looks inside a snapshot's data; kvapp reads it where it is used:

- :meth:`FileSnapshotData.open` streams it (a restore at start-up, the member table);
- :meth:`FileSnapshotData.reader` feeds the peer transport's chunked snapshot stream;
- :meth:`FileSnapshotData.copy_range` lets the next snapshot copy its unchanged part
  (:meth:`kvapp.kvstate.KvState.keep_encoded`);
- :func:`snapshot_bytes` reads it whole, for what needs a ``bytes`` (an in-process transport).

It is also what a member receives: the peer transport spools an incoming snapshot to a file
(:mod:`kvapp.transport.spool`) and delivers it as a :class:`FileSnapshotData`, which raftlib
passes through unread (it is registered as a :class:`raftlib.ExternalSnapshotData`).

It is deliberately not a ``bytes``: code that would treat it as one (slicing, ``bytes()``,
encoding it) fails loudly instead of reading an empty or partial snapshot. ``len()`` is the
data's size, and it compares equal to the bytes it stands for (reading the file: for tests and
tools, not for hot paths). The descriptor stays open while the object lives, so a snapshot file
pruned meanwhile (a newer snapshot was taken) stays readable to whoever still holds it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import IO

from kvapp.storage.fs import O_RDONLY, OS, FileSystem
from raftlib import ExternalSnapshotData

__all__ = ["FileSnapshotData", "open_snapshot_data", "snapshot_bytes"]

_CHUNK = 1 << 20


class FileSnapshotData:
    """Bytes ``offset`` to ``offset + size`` of the snapshot file at ``path``, read on demand.

    The file must not change while this object lives (snapshot files are written once under a
    temporary name and renamed into place, then only deleted).

    Raises:
        OSError: the file cannot be opened (from the constructor).
    """

    __slots__ = ("__weakref__", "_fd", "fs", "offset", "path", "size")

    def __init__(self, path: Path, offset: int, size: int, fs: FileSystem = OS) -> None:
        self.path = path
        self.offset = offset
        self.size = size
        self.fs = fs
        self._fd = fs.open(path, O_RDONLY)

    def __len__(self) -> int:
        return self.size

    @property
    def fd(self) -> int:
        """The open descriptor of the file (owned by this object: do not close it)."""
        return self._fd

    def __repr__(self) -> str:
        return f"FileSnapshotData({self.path.name!r}, offset={self.offset}, size={self.size})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FileSnapshotData):
            other = other.read_range(0, other.size)
        if not isinstance(other, bytes | bytearray | memoryview):
            return NotImplemented
        return len(other) == self.size and self.read_range(0, self.size) == other

    __hash__ = None  # type: ignore[assignment]

    def __del__(self) -> None:
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            with contextlib.suppress(OSError):  # e.g. a simulated disk that has crashed since
                self.fs.close(fd)

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` of the data (clipped to it).

        Raises:
            OSError: reading failed, or the file is shorter than it was.
        """
        start, end = max(start, 0), min(end, self.size)
        if end <= start:
            return b""
        out = bytearray()
        while start + len(out) < end:
            got = self.fs.pread(
                self._fd, min(_CHUNK, end - start - len(out)), self.offset + start + len(out)
            )
            if not got:
                raise OSError(f"snapshot file {self.path} is shorter than it was")
            out += got
        return bytes(out)

    def copy_range(self, start: int, end: int, write: Callable[[bytes], object]) -> None:
        """Pass bytes ``start`` to ``end`` of the data to ``write``, a chunk at a time."""
        at = start
        while at < end:
            chunk = self.read_range(at, min(at + _CHUNK, end))
            if not chunk:
                raise OSError(f"snapshot file {self.path} is shorter than it was")
            write(chunk)
            at += len(chunk)

    def open(self) -> IO[bytes]:
        """A buffered binary stream of the data, from its first byte to its last."""
        return io.BufferedReader(_RangeIO(self), buffer_size=_CHUNK)

    def reader(self) -> _Reader:
        """A :class:`~kvapp.transport.SnapshotReader` of the data, for the peer transport."""
        return _Reader(self)


class _RangeIO(io.RawIOBase):
    """The data of a :class:`FileSnapshotData` as a raw, read-only, positionless stream."""

    def __init__(self, source: FileSnapshotData) -> None:
        self._source: FileSnapshotData | None = source
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        source = self._source
        if source is None:
            raise ValueError("I/O operation on closed snapshot data")
        chunk = source.read_range(self._pos, self._pos + len(buffer))
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def close(self) -> None:
        self._source = None
        super().close()


class _Reader:
    """Reads a :class:`FileSnapshotData` in pieces (the transport's ``SnapshotReader``)."""

    __slots__ = ("_at", "_source")

    def __init__(self, source: FileSnapshotData) -> None:
        self._source: FileSnapshotData | None = source
        self._at = 0

    def read(self, size: int, /) -> bytes:
        if self._source is None:
            return b""
        chunk = self._source.read_range(self._at, self._at + size)
        self._at += len(chunk)
        return chunk

    def close(self) -> None:
        self._source = None


# raftlib's step takes a snapshot message whose data is one of these (a spooled snapshot).
ExternalSnapshotData.register(FileSnapshotData)


def open_snapshot_data(data: object) -> IO[bytes]:
    """A binary stream of a snapshot's data: ``bytes``-like, or a :class:`FileSnapshotData`.

    Raises:
        TypeError: ``data`` is neither.
    """
    if isinstance(data, FileSnapshotData):
        return data.open()
    if isinstance(data, bytes | bytearray | memoryview):
        return io.BytesIO(data)
    raise TypeError(f"snapshot data must be bytes or FileSnapshotData, got {type(data).__name__}")


def snapshot_bytes(data: object) -> bytes:
    """A snapshot's data as ``bytes``, read whole from its file if it is a FileSnapshotData.

    Raises:
        TypeError: ``data`` is neither bytes-like nor a :class:`FileSnapshotData`.
        OSError: reading the file failed.
    """
    if isinstance(data, FileSnapshotData):
        return data.read_range(0, data.size)
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"snapshot data must be bytes or FileSnapshotData, got {type(data).__name__}")
