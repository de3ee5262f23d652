"""Errors raised by kvapp's durable storage (WAL, snapshots, the disk-backed raft Storage).

They all derive from :class:`DiskStorageError`. Corruption errors name the file and, for the WAL,
the byte offset of the first bad record, so an operator can inspect it and, if they accept losing
what follows, cut the log there with ``python -m kvapp.storage.repair DIR --cut``. docs/storage.md
says, for each error, what the operator should do.

The Storage *protocol* conditions (``CompactedError``, ``UnavailableError``, ...) stay raftlib's:
a :class:`~kvapp.storage.raftstore.RaftStore` raises exactly what ``MemoryStorage`` would.
"""

from __future__ import annotations

from pathlib import Path

from raftlib.errors import StorageFullError

__all__ = [
    "DiskStorageError",
    "InvalidWriteError",
    "SnapshotCorruptError",
    "StorageLayoutError",
    "StoreFailedError",
    "StoreFsyncFailedError",
    "StoreFullError",
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
        hint: what the operator can do about it (appended to the message), or ``""``.
            :meth:`~kvapp.storage.raftstore.RaftStore.open` adds the repair command with the real
            data directory, which the WAL layer does not know.
    """

    def __init__(self, path: Path, offset: int, reason: str, *, hint: str = "") -> None:
        message = f"{path}: offset {offset}: {reason}"
        super().__init__(f"{message}; {hint}" if hint else message)
        self.path = path
        self.offset = offset
        self.reason = reason
        self.hint = hint


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
    """A write failed, so this store object refuses every later write.

    A failed ``write`` (a full disk, say) leaves the page cache in step with the file: the WAL
    removes its partial record, and closing and reopening the store recovers from what is on
    disk. A failed *fsync* is worse: see :class:`StoreFsyncFailedError`, raised instead.
    """


class StoreFullError(DiskStorageError, StorageFullError):
    """A write failed for lack of space (``ENOSPC``, ``EDQUOT``); the store is still usable.

    Nothing of the write was kept: the WAL cut its partial record away (and synced that), a
    half-written snapshot file was deleted. Unlike :class:`StoreFailedError` the store takes
    later writes, so the same call can simply be made again once space is freed; raftlib's
    ``Node`` does exactly that (it is a :class:`raftlib.StorageFullError`). A failed *fsync* is
    never reported as this, whatever its errno: see :class:`StoreFsyncFailedError`.
    """


class StoreFsyncFailedError(StoreFailedError):
    """An fsync failed: the process must exit, and must not reopen this store.

    After a failed ``fsync`` Linux marks the dirty pages clean (or drops them) and reports the
    error once, so the page cache can hold data the disk never got; reading the files back in
    the same process can return exactly that data (PostgreSQL's "fsyncgate"). The only safe
    continuation is a new process recovering from what is really on disk, as etcd does by
    exiting. Raised by the write whose fsync failed, by every later write, and by
    :meth:`~kvapp.storage.raftstore.RaftStore.open` of the same directory in the same process.
    """


class InvalidWriteError(DiskStorageError, ValueError):
    """A write's arguments cannot be stored and read back faithfully; nothing was written.

    The caller's mistake, not the disk's: an entry whose ``data`` is a ``str``, a negative term,
    an unknown entry type, a hard state field that is not an unsigned 64-bit integer. Checked
    before anything is written, because a record the WAL cannot decode would stop the member
    from restarting. A ``ValueError``, like raftlib's own argument errors. The store stays usable.
    """


class StorageLayoutError(DiskStorageError):
    """The data directory is not laid out as a store: something is the wrong kind of file.

    For example ``<dir>/wal`` or ``<dir>/snap`` is a regular file, or ``<dir>/LOCK`` is a
    directory. Nothing was changed; the operator has to move the offending file away.

    Attributes:
        path: the offending path.
        reason: what is wrong with it.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
