"""Small, careful file-system helpers: durable writes, atomic replacement, directory locks.

The durability rules kvapp relies on (as etcd's ``fileutil`` does on Linux):

* data written to a file is durable once ``fdatasync`` on it returns;
* a file created, renamed or deleted is durable once ``fsync`` on its *directory* returns;
* ``rename`` within a directory is atomic, so readers see the old or the new file, never a mix.

``fsync=False`` parameters exist for tests and benchmarks only: data then survives a process crash
(it is in the page cache) but not a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Protocol

from kvapp.storage.errors import StoreLockedError

__all__ = [
    "TMP_SUFFIX",
    "CopiedPart",
    "DirLock",
    "FsyncError",
    "ensure_dir",
    "fdatasync",
    "free_bytes",
    "fsync",
    "fsync_dir",
    "is_no_space",
    "is_zero",
    "last_nonzero",
    "preallocate",
    "remove_tmp_files",
    "write_all",
    "write_file_atomic",
]

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
"""Suffix of files being written before their atomic rename; leftovers are deleted on open."""

_fdatasync = getattr(os, "fdatasync", os.fsync)


class FsyncError(OSError):
    """An ``fsync`` or ``fdatasync`` call failed (``errno`` is the call's).

    Told apart from other ``OSError`` s because it is worse: the kernel may already have marked
    the unwritten pages clean, so the page cache no longer tells what is on disk, and only a new
    process can find out (see :class:`~kvapp.storage.errors.StoreFsyncFailedError`).
    """


def is_no_space(exc: OSError) -> bool:
    """Whether ``exc`` is a write refused for lack of space (``ENOSPC``, ``EDQUOT``).

    Never true of an :class:`FsyncError`: a failed fsync is fatal whatever its errno.
    """
    return not isinstance(exc, FsyncError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged process can still write on the file system holding ``path``.

    ``statvfs``'s ``f_bavail * f_frsize``, what ``df`` shows as available (the blocks reserved
    for root are not counted).

    Raises:
        OSError: ``path`` does not exist or cannot be examined.
    """
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fdatasync(fd: int) -> None:
    """Make the data written to ``fd`` (and the size needed to read it back) durable.

    Uses ``fdatasync`` where the platform has it, else ``fsync``. On macOS neither reaches the
    platter (``F_FULLFSYNC`` would); kvapp targets Linux.

    Raises:
        FsyncError: the call failed.
    """
    try:
        _fdatasync(fd)
    except OSError as exc:
        raise FsyncError(exc.errno, f"fdatasync failed: {exc.strerror}") from exc


def fsync(fd: int) -> None:
    """Make the data and all metadata of ``fd`` durable (``fsync``).

    Raises:
        FsyncError: the call failed.
    """
    try:
        os.fsync(fd)
    except OSError as exc:
        raise FsyncError(exc.errno, f"fsync failed: {exc.strerror}") from exc


def fsync_dir(path: Path) -> None:
    """Make the creations, renames and deletions of entries in directory ``path`` durable.

    Raises:
        FsyncError: the fsync failed.
        OSError: ``path`` could not be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path, *, fsync: bool = True) -> None:
    """Create directory ``path`` (and parents) if missing, durably.

    Each directory created is made durable by fsyncing its parent.
    """
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        if fsync:
            fsync_dir(d.parent)


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``, retrying short writes (e.g. near a full disk)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"pwrite wrote {n} bytes")
        view = view[n:]
        offset += n


class CopiedPart(Protocol):
    """A part of a file that copies itself (e.g. a range of another file, in the kernel)."""

    def __len__(self) -> int:
        """Its size in bytes."""
        ...

    def copy_to(self, fd: int, offset: int) -> None:
        """Write it to ``fd`` at ``offset``."""
        ...


def write_file_atomic(
    path: Path, *parts: bytes | memoryview | CopiedPart, fsync: bool = True
) -> None:
    """Replace ``path`` with ``parts``, concatenated, atomically and durably.

    Writes ``<path>.tmp``, fdatasyncs it, renames it over ``path`` and fsyncs the directory, so
    after a crash ``path`` holds either its old content or all of the parts. If writing the
    temporary file fails (a full disk), it is deleted before the error is raised. Passing
    parts spares the caller joining large buffers.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        offset = 0
        for part in parts:
            if isinstance(part, bytes | memoryview):
                write_all(fd, part, offset)
            else:
                part.copy_to(fd, offset)
            offset += len(part)
        if fsync:
            fdatasync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def preallocate(fd: int, size: int) -> bool:
    """Reserve ``size`` bytes of disk for ``fd`` (zero-filled), if the file system supports it.

    Returns:
        Whether the space was reserved; ``False`` on file systems without ``fallocate``.
    """
    if not hasattr(os, "posix_fallocate"):
        return False
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        logger.debug("preallocation of %d bytes not supported: %s", size, exc)
        return False
    return True


def remove_tmp_files(directory: Path, *, fsync: bool = True) -> list[Path]:
    """Delete the ``*.tmp`` files of writes a crash interrupted; returns what was deleted."""
    removed = sorted(p for p in directory.iterdir() if p.name.endswith(TMP_SUFFIX))
    for p in removed:
        logger.info("removing leftover temporary file %s", p)
        p.unlink()
    if removed and fsync:
        fsync_dir(directory)
    return removed


def is_zero(data: bytes, start: int, end: int) -> bool:
    """Whether ``data[start:end]`` is all zero bytes (without copying it)."""
    return data.count(0, start, end) == end - start


def last_nonzero(data: bytes, start: int = 0, chunk: int = 1 << 16) -> int:
    """The index of the last non-zero byte of ``data`` at or after ``start``, or ``start - 1``.

    Scans backwards in chunks so a large zero-filled (preallocated) tail costs no copies.
    """
    end = len(data)
    while end > start:
        lo = max(start, end - chunk)
        if not is_zero(data, lo, end):
            for i in range(end - 1, lo - 1, -1):
                if data[i]:
                    return i
        end = lo
    return start - 1


class DirLock:
    """An exclusive advisory lock (``flock``) on a file, held while a store is open.

    The kernel drops the lock when the process dies, so a crashed node never leaves it behind.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            StoreLockedError: another open file description holds it.
        """
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(f"{self._path} is locked by another process") from None
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
