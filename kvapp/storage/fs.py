"""The file layer: every file-system call kvapp's storage makes goes through a ``FileSystem``.

Why a seam: a member's durability rests on a handful of system calls (``pwrite``,
``fdatasync``, ``rename``, ``fsync`` of a directory). Behind this interface they can be
replaced by a simulated disk (:mod:`kvapp.storage.simfs`) that loses what was not synced when
it "crashes", tears writes, and fails chosen calls with chosen errors, so crash recovery is
tested against every interleaving a seeded test can reach, not only against the crashes a
real process happens to suffer. :data:`OS` is the real one, the default everywhere.

The interface mirrors ``os``: files are integer descriptors, offsets are explicit, errors are
``OSError`` with the errno the kernel would give. Only the calls the storage needs are here.
Paths are ``pathlib.Path``; a simulated file system treats them as plain names.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import Protocol

__all__ = [
    "OS",
    "O_CREAT",
    "O_EXCL",
    "O_RDONLY",
    "O_RDWR",
    "O_TRUNC",
    "O_WRONLY",
    "FileLock",
    "FileSystem",
    "FsyncError",
]

O_RDONLY, O_WRONLY, O_RDWR = os.O_RDONLY, os.O_WRONLY, os.O_RDWR
O_CREAT, O_TRUNC, O_EXCL = os.O_CREAT, os.O_TRUNC, os.O_EXCL

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_fdatasync = getattr(os, "fdatasync", os.fsync)


class FsyncError(OSError):
    """An ``fsync`` or ``fdatasync`` call failed (``errno`` is the call's).

    Told apart from other ``OSError`` s because it is worse: the kernel may already have marked
    the unwritten pages clean, so the page cache no longer tells what is on disk, and only a new
    process can find out (see :class:`~kvapp.storage.errors.StoreFsyncFailedError`).
    """


class FileLock(Protocol):
    """An exclusive lock on a file, held until released (or the process dies)."""

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        ...


class FileSystem(Protocol):
    """What kvapp's storage asks of a file system. See the module docstring."""

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        """Open ``path``; a descriptor.

        ``flags`` are ``os.O_*`` flags: ``O_RDONLY``, ``O_WRONLY``, ``O_RDWR``, ``O_CREAT``,
        ``O_TRUNC``, ``O_EXCL``.
        """
        ...

    def close(self, fd: int) -> None:
        """Close ``fd``."""
        ...

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes of ``fd`` at ``offset`` (fewer at the end of the file)."""
        ...

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        """Write ``data`` at ``offset``; how many bytes were written (may be fewer)."""
        ...

    def fdatasync(self, fd: int) -> None:
        """Make ``fd``'s data and size durable (``fdatasync``)."""
        ...

    def fsync(self, fd: int) -> None:
        """Make ``fd``'s data and metadata durable (``fsync``)."""
        ...

    def ftruncate(self, fd: int, size: int) -> None:
        """Cut or zero-extend ``fd`` to ``size`` bytes."""
        ...

    def fsize(self, fd: int) -> int:
        """The size of ``fd`` in bytes (``fstat``'s ``st_size``)."""
        ...

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        """Reserve disk space for ``fd``'s bytes ``[offset, offset + length)``, zero-filled.

        As ``posix_fallocate``: the size grows to cover them.

        Raises:
            OSError: the file system cannot (``EOPNOTSUPP``, ``EINVAL``) or has no space.
        """
        ...

    def copy_range(self, src: int, dst: int, size: int, src_offset: int, dst_offset: int) -> int:
        """Copy up to ``size`` bytes between descriptors (``copy_file_range``).

        Returns how many were copied: 0 at the end of ``src``.
        """
        ...

    def fsync_dir(self, path: Path) -> None:
        """Make the creations, renames and deletions in directory ``path`` durable.

        Raises:
            FsyncError: the sync itself failed (fatal to the store, as any failed fsync).
            OSError: the directory could not be opened (nothing was synced; not fatal).
        """
        ...

    def replace(self, src: Path, dst: Path) -> None:
        """Rename ``src`` to ``dst`` atomically, replacing ``dst`` if it exists."""
        ...

    def unlink(self, path: Path) -> None:
        """Delete file ``path``.

        Raises:
            FileNotFoundError: it does not exist.
        """
        ...

    def mkdir(self, path: Path) -> None:
        """Create directory ``path`` (its parent must exist).

        Raises:
            FileExistsError: it exists.
        """
        ...

    def listdir(self, path: Path) -> list[str]:
        """The names in directory ``path``, in no particular order."""
        ...

    def kind(self, path: Path) -> str | None:
        """What ``path`` is, following symbolic links.

        ``"file"``, ``"dir"``, ``"other"`` (a device, a socket, ...), ``"link"`` for a
        symbolic link to nothing, or ``None`` if nothing is there.

        Raises:
            NotADirectoryError: a component above ``path`` is not a directory.
        """
        ...

    def size(self, path: Path) -> int:
        """The size of file ``path`` in bytes."""
        ...

    def free_bytes(self, path: Path) -> int:
        """Bytes an unprivileged process can still write on the file system holding ``path``."""
        ...

    def lock(self, path: Path) -> FileLock:
        """Create ``path`` if missing and take an exclusive lock on it.

        Raises:
            BlockingIOError: someone else holds it.
        """
        ...

    def realpath(self, path: Path) -> str:
        """``path`` made absolute, symbolic links resolved: a key for "the same directory"."""
        ...


class _FlockLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _OsFileSystem:
    """The real file system, through ``os``. Stateless: :data:`OS` is the one to use."""

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags | _CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        _fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fsize(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        if not hasattr(os, "posix_fallocate"):
            raise OSError(errno.EOPNOTSUPP, "posix_fallocate is not available")
        os.posix_fallocate(fd, offset, length)

    def copy_range(self, src: int, dst: int, size: int, src_offset: int, dst_offset: int) -> int:
        return os.copy_file_range(src, dst, size, src_offset, dst_offset)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as exc:
            raise FsyncError(
                exc.errno, f"fsync of directory {path} failed: {exc.strerror}"
            ) from exc
        finally:
            os.close(fd)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)

    def kind(self, path: Path) -> str | None:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            try:
                os.lstat(path)
            except FileNotFoundError:
                return None
            return "link"
        if stat.S_ISDIR(mode):
            return "dir"
        if stat.S_ISREG(mode):
            return "file"
        return "other"

    def size(self, path: Path) -> int:
        return os.stat(path).st_size

    def free_bytes(self, path: Path) -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def lock(self, path: Path) -> FileLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return _FlockLock(fd)

    def realpath(self, path: Path) -> str:
        return os.path.realpath(path)


OS: FileSystem = _OsFileSystem()
"""The real file system."""
