"""Errors raised by kvapp's durable storage (WAL, snapshots, the disk-backed raft Storage).

They all derive from :class:`DiskStorageError`. Corruption errors name the file and, for the WAL,
the byte offset of the first bad record, so an operator can inspect it and, if they accept losing
what follows, cut the log there with ``python -m kvapp.storage.repair --cut``.

The Storage *protocol* conditions (``CompactedError``, ``UnavailableError``, ...) stay raftlib's:
a :class:`~kvapp.storage.raftstore.RaftStore` raises exactly what ``MemoryStorage`` would.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DiskStorageError",
    "SnapshotCorruptError",
    "StoreFailedError",
    "StoreLockedError",
    "WalCorruptError",
    "WalIdentityError",
]


class DiskStorageError(Exception):
    """Root of the errors raised by :mod:`kvapp.storage`."""


class WalCorruptError(DiskStorageError):
    """The write-ahead log is damaged somewhere other than a torn tail; the node must not start.

    Attributes:
        path: the segment file holding the first bad byte (or the WAL directory).
        offset: byte offset of the first bad record in ``path``: everything before it is intact.
        reason: what was found there.
    """

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class WalIdentityError(WalCorruptError):
    """The WAL belongs to another cluster or member than the one opening it."""


class SnapshotCorruptError(DiskStorageError):
    """A snapshot file is missing, truncated or fails its checksum, and no fallback is possible.

    Attributes:
        path: the snapshot file.
        reason: what was wrong with it.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class StoreLockedError(DiskStorageError):
    """Another process (or another open store in this one) holds the data directory."""


class StoreFailedError(DiskStorageError):
    """An earlier write or fsync failed, so what is on disk is unknown; reopen the store.

    After a failed fsync the page cache may hold data the disk does not (or vice versa), so the
    only safe continuation is recovery from disk, as etcd does by exiting.
    """
