"""kvapp's durable storage: write-ahead log, snapshot files and a disk-backed raft Storage.

:class:`RaftStore` is what a node uses; :mod:`~kvapp.storage.wal` and
:mod:`~kvapp.storage.snap` are its parts, public for tools and tests.
"""

from kvapp.storage.errors import (
    DiskStorageError,
    SnapshotCorruptError,
    StoreFailedError,
    StoreLockedError,
    WalCorruptError,
    WalIdentityError,
)
from kvapp.storage.raftstore import RaftStore

__all__ = [
    "DiskStorageError",
    "RaftStore",
    "SnapshotCorruptError",
    "StoreFailedError",
    "StoreLockedError",
    "WalCorruptError",
    "WalIdentityError",
]
