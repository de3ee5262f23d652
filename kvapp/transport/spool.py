"""Incoming snapshots spooled to files, and handed on without being read back into memory.

A snapshot holds a member's whole state: hundreds of MB at a million keys. The sender streams
it from its file in chunks; :class:`SnapshotSpool`, given to
:class:`~kvapp.transport.TcpTransport` as its ``snapshot_sink``, lets the receiver write those
chunks to a file in turn. Once the transfer is complete, the transport delivers the SNAP message
with a :class:`~kvapp.storage.snapdata.FileSnapshotData` of that file as its data. raftlib passes
it through unread, the storage copies it into its snapshot file in the kernel, and the member
restores from it as a stream. So at no point is the snapshot held whole in memory.

Each spool file is unlinked as soon as it is handed over: the ``FileSnapshotData`` keeps it
open, so the disk space goes back when the last holder lets go. A transfer that fails has its
file closed and removed. A crash mid-transfer leaves a ``*.spool`` file, which
:meth:`SnapshotSpool.clear` removes when the member starts.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path
from typing import BinaryIO, cast

from kvapp.storage.fileutil import ensure_dir, write_all
from kvapp.storage.fs import O_CREAT, O_EXCL, O_RDWR, OS, FileSystem
from kvapp.storage.snapdata import FileSnapshotData
from raftlib.types import Message

__all__ = ["SnapshotSpool", "SpoolFile"]

_SUFFIX = ".spool"


class SpoolFile(io.RawIOBase):
    """One incoming snapshot's file: written in order, then handed over or removed.

    ``close`` removes the file (unlinks it); :meth:`hand_over` first opens the
    ``FileSnapshotData`` that keeps the data readable.
    """

    def __init__(self, fs: FileSystem, fd: int, path: Path) -> None:
        super().__init__()
        self.fs = fs
        self.path = path
        self._fd: int | None = fd
        self._pos = 0

    def writable(self) -> bool:
        """Yes."""
        return True

    def seekable(self) -> bool:
        """No: it is written in order."""
        return False

    def tell(self) -> int:
        """Bytes written so far."""
        return self._pos

    def write(self, data: object, /) -> int:
        """Append all of ``data``."""
        if self._fd is None:
            raise ValueError(f"spool file {self.path} is closed")
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        write_all(self.fs, self._fd, view, self._pos)
        self._pos += len(view)
        return len(view)

    def close(self) -> None:
        """Close and remove the file (data handed over stays readable through its holder)."""
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                self.fs.close(fd)
        finally:
            super().close()
            with contextlib.suppress(FileNotFoundError):
                self.fs.unlink(self.path)

    def hand_over(self) -> FileSnapshotData:
        """The data written, as a ``FileSnapshotData``; the file is then closed and unlinked.

        Raises:
            OSError: the file could not be reopened.
        """
        try:
            return FileSnapshotData(self.path, 0, self._pos, self.fs)
        finally:
            self.close()


class SnapshotSpool:
    """A ``snapshot_sink`` factory that spools incoming snapshots to files in ``directory``.

    The directory is made when the first snapshot arrives.
    """

    def __init__(self, directory: Path, fs: FileSystem = OS) -> None:
        self.directory = directory
        self.fs = fs
        self._serial = itertools.count()

    def __call__(self, message: Message) -> BinaryIO:
        """A new spool file for the snapshot ``message`` announces.

        Raises:
            OSError: the file cannot be created.
        """
        ensure_dir(self.directory, fsync=False, fs=self.fs)
        index = message.snapshot.metadata.index if message.snapshot is not None else 0
        while True:
            path = self.directory / f"snapshot-{index:016x}-{next(self._serial)}{_SUFFIX}"
            try:
                fd = self.fs.open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
            except FileExistsError:
                continue
            return cast("BinaryIO", SpoolFile(self.fs, fd, path))

    def clear(self) -> int:
        """Remove spool files left by a transfer that a crash cut short; how many there were."""
        if self.fs.kind(self.directory) != "dir":
            return 0
        removed = 0
        for name in self.fs.listdir(self.directory):
            if name.endswith(_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    self.fs.unlink(self.directory / name)
                    removed += 1
        return removed
