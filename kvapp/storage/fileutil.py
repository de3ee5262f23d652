"""Small, careful file-system helpers: durable writes, atomic replacement, directory locks.

The durability rules kvapp relies on (as etcd's ``fileutil`` does on Linux):

* data written to a file is durable once ``fdatasync`` on it returns;
* a file created, renamed or deleted is durable once ``fsync`` on its *directory* returns;
* ``rename`` within a directory is atomic, so readers see the old or the new file, never a mix.

``fsync=False`` parameters exist for tests and benchmarks only: data then survives a process crash
(it is in the page cache) but not a power loss.

Every call goes through a :class:`~kvapp.storage.fs.FileSystem` (``fs``; the real one by
default), so tests can run the same code on a simulated disk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from pathlib import Path
from types import TracebackType
from typing import Protocol

from kvapp.storage.errors import StoreLockedError
from kvapp.storage.fs import (
    O_CREAT,
    O_RDONLY,
    O_TRUNC,
    O_WRONLY,
    OS,
    FileLock,
    FileSystem,
    FsyncError,
)

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
    "read_file",
    "remove_tmp_files",
    "write_all",
    "write_file_atomic",
]

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
"""Suffix of files being written before their atomic rename; leftovers are deleted on open."""


def is_no_space(exc: OSError) -> bool:
    """Whether ``exc`` is a write refused for lack of space (``ENOSPC``, ``EDQUOT``).

    Never true of an :class:`FsyncError`: a failed fsync is fatal whatever its errno.
    """
    return not isinstance(exc, FsyncError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path, fs: FileSystem = OS) -> int:
    """Bytes an unprivileged process can still write on the file system holding ``path``.

    ``statvfs``'s ``f_bavail * f_frsize``, what ``df`` shows as available (the blocks reserved
    for root are not counted).

    Raises:
        OSError: ``path`` does not exist or cannot be examined.
    """
    return fs.free_bytes(path)


def fdatasync(fd: int, fs: FileSystem = OS) -> None:
    """Make the data written to ``fd`` (and the size needed to read it back) durable.

    Uses ``fdatasync`` where the platform has it, else ``fsync``. On macOS neither reaches the
    platter (``F_FULLFSYNC`` would); kvapp targets Linux.

    Raises:
        FsyncError: the call failed.
    """
    try:
        fs.fdatasync(fd)
    except OSError as exc:
        raise FsyncError(exc.errno, f"fdatasync failed: {exc.strerror}") from exc


def fsync(fd: int, fs: FileSystem = OS) -> None:
    """Make the data and all metadata of ``fd`` durable (``fsync``).

    Raises:
        FsyncError: the call failed.
    """
    try:
        fs.fsync(fd)
    except OSError as exc:
        raise FsyncError(exc.errno, f"fsync failed: {exc.strerror}") from exc


def fsync_dir(path: Path, fs: FileSystem = OS) -> None:
    """Make the creations, renames and deletions of entries in directory ``path`` durable.

    Raises:
        FsyncError: the fsync failed.
        OSError: ``path`` could not be opened.
    """
    fs.fsync_dir(path)


def ensure_dir(path: Path, *, fsync: bool = True, fs: FileSystem = OS) -> None:
    """Create directory ``path`` (and parents) if missing, durably.

    Each directory created is made durable by fsyncing its parent.
    """
    missing: list[Path] = []
    p = path
    while fs.kind(p) is None:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            fs.mkdir(d)
        if fsync:
            fsync_dir(d.parent, fs)


def write_all(fs: FileSystem, fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``, retrying short writes (e.g. near a full disk)."""
    view = memoryview(data)
    while view:
        n = fs.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"pwrite wrote {n} bytes")
        view = view[n:]
        offset += n


def read_file(path: Path, fs: FileSystem = OS) -> bytes:
    """The whole content of file ``path``."""
    fd = fs.open(path, O_RDONLY)
    try:
        size = fs.fsize(fd)
        chunks = []
        offset = 0
        while True:
            chunk = fs.pread(fd, max(size - offset, 1 << 16), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        fs.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class CopiedPart(Protocol):
    """A part of a file that copies itself (e.g. a range of another file, in the kernel)."""

    def __len__(self) -> int:
        """Its size in bytes."""
        ...

    def copy_to(self, fs: FileSystem, fd: int, offset: int) -> None:
        """Write it to ``fd`` (of ``fs``) at ``offset``."""
        ...


def write_file_atomic(
    path: Path, *parts: bytes | memoryview | CopiedPart, fsync: bool = True, fs: FileSystem = OS
) -> None:
    """Replace ``path`` with ``parts``, concatenated, atomically and durably.

    Writes ``<path>.tmp``, fdatasyncs it, renames it over ``path`` and fsyncs the directory, so
    after a crash ``path`` holds either its old content or all of the parts. If writing the
    temporary file fails (a full disk), it is deleted before the error is raised. Passing
    parts spares the caller joining large buffers.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = fs.open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    try:
        offset = 0
        for part in parts:
            if isinstance(part, bytes | memoryview):
                write_all(fs, fd, part, offset)
            else:
                part.copy_to(fs, fd, offset)
            offset += len(part)
        if fsync:
            fdatasync(fd, fs)
    except BaseException:
        fs.close(fd)
        with contextlib.suppress(OSError):
            fs.unlink(tmp)
        raise
    fs.close(fd)
    fs.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent, fs)


def preallocate(fd: int, size: int, fs: FileSystem = OS) -> bool:
    """Reserve ``size`` bytes of disk for ``fd`` (zero-filled), if the file system supports it.

    Returns:
        Whether the space was reserved; ``False`` on file systems without ``fallocate``.
    """
    try:
        fs.fallocate(fd, 0, size)
    except OSError as exc:
        logger.debug("preallocation of %d bytes not supported: %s", size, exc)
        return False
    return True


def remove_tmp_files(directory: Path, *, fsync: bool = True, fs: FileSystem = OS) -> list[Path]:
    """Delete the ``*.tmp`` files of writes a crash interrupted; returns what was deleted."""
    removed = sorted(directory / n for n in fs.listdir(directory) if n.endswith(TMP_SUFFIX))
    for p in removed:
        logger.info("removing leftover temporary file %s", p)
        fs.unlink(p)
    if removed and fsync:
        fsync_dir(directory, fs)
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

    def __init__(self, path: Path, fs: FileSystem = OS) -> None:
        self._path = path
        self._fs = fs
        self._held: FileLock | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            StoreLockedError: another open file description holds it.
        """
        try:
            self._held = self._fs.lock(self._path)
        except BlockingIOError:
            raise StoreLockedError(f"{self._path} is locked by another process") from None

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._held is not None:
            self._held.release()
            self._held = None

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
