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
import os
import tempfile
from pathlib import Path

from kvapp.storage.snapdata import FileSnapshotData
from raftlib.types import Message

__all__ = ["SnapshotSpool", "SpoolFile"]

_SUFFIX = ".spool"


class SpoolFile(io.FileIO):
    """One incoming snapshot's file: written in order, then handed over or removed.

    ``close`` removes the file (unlinks it); :meth:`hand_over` first opens the
    ``FileSnapshotData`` that keeps the data readable.
    """

    def __init__(self, fd: int, path: Path) -> None:
        super().__init__(fd, "r+")
        self.path = path

    def write(self, data: object, /) -> int:
        """Write all of ``data`` (a raw file may take less than asked)."""
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        total = len(view)
        while view:
            n = super().write(view)
            if not n:
                raise OSError(f"spool file {self.path} took no bytes")
            view = view[n:]
        return total

    def close(self) -> None:
        """Close and remove the file (data handed over stays readable through its holder)."""
        try:
            super().close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def hand_over(self) -> FileSnapshotData:
        """The data written, as a ``FileSnapshotData``; the file is then closed and unlinked.

        Raises:
            OSError: the file could not be reopened.
        """
        try:
            return FileSnapshotData(self.path, 0, self.tell())
        finally:
            self.close()


class SnapshotSpool:
    """A ``snapshot_sink`` factory that spools incoming snapshots to files in ``directory``.

    The directory is made when the first snapshot arrives.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, message: Message) -> SpoolFile:
        """A new spool file for the snapshot ``message`` announces.

        Raises:
            OSError: the file cannot be created.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        index = message.snapshot.metadata.index if message.snapshot is not None else 0
        fd, name = tempfile.mkstemp(
            prefix=f"snapshot-{index:016x}-", suffix=_SUFFIX, dir=self.directory
        )
        return SpoolFile(fd, Path(name))

    def clear(self) -> int:
        """Remove spool files left by a transfer that a crash cut short; how many there were."""
        if not self.directory.is_dir():
            return 0
        removed = 0
        for p in self.directory.glob(f"*{_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed += 1
        return removed
