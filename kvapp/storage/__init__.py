"""kvapp's durable storage: write-ahead log, snapshot files and a disk-backed raft Storage.

:class:`RaftStore` is what a node uses; :mod:`~kvapp.storage.wal` and
:mod:`~kvapp.storage.snap` are its parts, public for tools and tests. docs/storage.md is the
operator's guide: layout, guarantees, errors and the repair tool.
"""

from kvapp.storage.errors import (
    DiskStorageError,
    InvalidWriteError,
    SnapshotCorruptError,
    StorageLayoutError,
    StoreFailedError,
    StoreFsyncFailedError,
    StoreFullError,
    StoreLockedError,
    WalCorruptError,
    WalIdentityError,
)
from kvapp.storage.raftstore import RaftStore

__all__ = [
    "DiskStorageError",
    "InvalidWriteError",
    "RaftStore",
    "SnapshotCorruptError",
    "StorageLayoutError",
    "StoreFailedError",
    "StoreFsyncFailedError",
    "StoreFullError",
    "StoreLockedError",
    "WalCorruptError",
    "WalIdentityError",
]
