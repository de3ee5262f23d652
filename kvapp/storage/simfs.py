"""A simulated, in-memory file system that can lose power: :class:`SimFileSystem`.

Why: a member's durability rests on a handful of system calls, and the bugs that matter (a
rename made durable before the data it names, a directory never synced, a torn last write) show
up only after a crash at the wrong instant. A real process crash loses nothing the kernel
already holds, so tests need a disk that forgets. This one implements
:class:`~kvapp.storage.fs.FileSystem` in pure Python, deterministically (no clock, no global
randomness, no real files), for crash-consistency tests in the style of TigerBeetle and
FoundationDB and later for deterministic simulation of whole clusters.

The model (Linux/ext4, taken conservatively):

- Files are inodes; directories map names to inodes. An open descriptor keeps working on its
  inode after the name is unlinked or replaced.
- Each file has its *current* content (what reads see) and its *durable* content, plus the data
  operations (writes, truncations, allocations) since its last ``fdatasync``/``fsync``, which
  make the current content durable. Each directory likewise has a current and a durable table
  of names, plus the namespace operations (creations, renames, unlinks, ``mkdir``) since its
  last ``fsync_dir``. Syncing a file does not make its name durable, nor the reverse; a
  directory made by ``mkdir`` is durable once its parent is synced.
- :meth:`SimFileSystem.crash` returns what a power loss now could leave: with no ``rng``, just
  the durable state; with one, each directory and each file keeps its durable state plus a
  random prefix of its pending operations, the last of which, if a write, may be torn at
  512-byte sector granularity. A rename between two directories is an operation in each, and
  the two survive independently (so the name may end up in both or in neither).
- Faults: a capacity (short writes, ``ENOSPC``), a hook that fails chosen calls with chosen
  errors, and :meth:`SimFileSystem.power_cut_after` to stop the world in the middle of a
  workload (:class:`PowerCut`).

The simulated process runs in ``/``: a relative path names the same file as ``/`` joined with
it, so ``"."`` is the root directory.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias, assert_never

import attrs

from kvapp.storage.fs import FileLock

if TYPE_CHECKING:
    from kvapp.storage.fs import FileSystem

__all__ = ["SECTOR_SIZE", "FaultHook", "PowerCut", "SimFileSystem"]

SECTOR_SIZE: Final = 512
"""The unit a write is torn at by :meth:`SimFileSystem.crash` (offsets multiple of it)."""

_UNLIMITED_FREE: Final = 2**50

FaultHook: TypeAlias = Callable[[str, str | None], OSError | None]
"""``fault(method, path)``: an exception for the call to raise instead of running, or ``None``."""


class PowerCut(BaseException):
    """The simulated power went out (:meth:`SimFileSystem.power_cut_after`).

    A ``BaseException``, so storage code's ``except OSError`` and ``except Exception`` let it
    through to the test, as a real power cut would stop the process.
    """


# Data operations on a file since its last sync, replayed by crash().
@attrs.frozen
class _Write:
    offset: int
    data: bytes


@attrs.frozen
class _Truncate:
    size: int


@attrs.frozen
class _Allocate:
    offset: int
    length: int


_DataOp: TypeAlias = _Write | _Truncate | _Allocate


# Namespace operations on a directory since its last sync.
@attrs.frozen
class _Link:
    name: str
    ino: int


@attrs.frozen
class _Unlink:
    name: str


@attrs.frozen
class _Rename:
    src: str
    dst: str


_NameOp: TypeAlias = _Link | _Unlink | _Rename


@attrs.define(eq=False)
class _File:
    ino: int
    data: bytearray = attrs.Factory(bytearray)
    durable: bytes = b""
    pending: list[_DataOp] = attrs.Factory(list)
    links: int = 0
    opens: int = 0


@attrs.define(eq=False)
class _Dir:
    ino: int
    entries: dict[str, int] = attrs.Factory(dict)
    durable: dict[str, int] = attrs.Factory(dict)
    pending: list[_NameOp] = attrs.Factory(list)


@attrs.define(eq=False)
class _Open:
    file: _File
    path: str
    readable: bool
    writable: bool


@attrs.frozen
class _Name:
    """A path as given (for error messages), normalised (for the fault hook), and split."""

    text: str
    key: str
    parts: tuple[str, ...]


def _error(code: int, name: str | None = None, name2: str | None = None) -> OSError:
    # OSError(errno, ...) builds the matching subclass (FileNotFoundError, ...), as os does.
    if name is None:
        return OSError(code, os.strerror(code))
    if name2 is None:
        return OSError(code, os.strerror(code), name)
    return OSError(code, os.strerror(code), name, None, name2)


def _apply_data(data: bytearray, op: _DataOp) -> None:
    match op:
        case _Write(offset, payload):
            if not payload:
                return
            if offset > len(data):
                data.extend(bytes(offset - len(data)))
            data[offset : offset + len(payload)] = payload
        case _Truncate(size):
            if size < len(data):
                del data[size:]
            else:
                data.extend(bytes(size - len(data)))
        case _Allocate(offset, length):
            if offset + length > len(data):
                data.extend(bytes(offset + length - len(data)))
        case _:
            assert_never(op)


def _apply_name(entries: dict[str, int], op: _NameOp) -> None:
    match op:
        case _Link(name, ino):
            entries[name] = ino
        case _Unlink(name):
            del entries[name]
        case _Rename(src, dst):
            entries[dst] = entries.pop(src)
        case _:
            assert_never(op)


def _sectors(write: _Write) -> int:
    """How many file-offset-aligned sectors ``write`` touches."""
    if not write.data:
        return 0
    return (write.offset + len(write.data) - 1) // SECTOR_SIZE - write.offset // SECTOR_SIZE + 1


def _torn(write: _Write, sectors: int) -> _Write:
    """``write`` with only its first ``sectors`` sectors (counted from its start) applied."""
    end = (write.offset // SECTOR_SIZE + sectors) * SECTOR_SIZE
    return _Write(write.offset, write.data[: max(0, end - write.offset)])


def _survivors(pending: list[_DataOp], rng: random.Random) -> list[_DataOp]:
    """A random prefix of ``pending``, the last write possibly torn."""
    ops = pending[: rng.randint(0, len(pending))]
    if ops and isinstance(ops[-1], _Write):
        last = ops[-1]
        total = _sectors(last)
        kept = rng.randint(0, total)
        if kept < total:
            ops[-1] = _torn(last, kept)
    return ops


class _SimLock:
    """A lock on one simulated file; :meth:`release` is idempotent."""

    def __init__(self, fs: SimFileSystem, file: _File) -> None:
        self._fs: SimFileSystem | None = fs
        self._file = file

    def release(self) -> None:
        """Drop the lock (idempotent; a no-op once the file system has crashed)."""
        if self._fs is not None:
            self._fs._release(self._file)
            self._fs = None


class SimFileSystem:
    """An in-memory :class:`~kvapp.storage.fs.FileSystem` that loses unsynced state on crash.

    See the module docstring for the durability model. Besides the ``FileSystem`` methods:

    Attributes:
        capacity: bytes the files may hold in all (``None``: unlimited). Used bytes are the
            sizes of the files still named by a directory or held open. Settable at any time
            (a test frees space by raising it).
        fault: called as ``fault(method, path)`` at the start of every ``FileSystem`` method,
            after the power-cut check; ``path`` is the normalised path the call names (for a
            descriptor, the path it was opened with; for ``replace``, the source; ``None`` for
            an unknown descriptor). An exception it returns is raised and the call does
            nothing else. For ``fsync_dir``, return a
            :class:`~kvapp.storage.fs.FsyncError` to fail the sync itself (a plain ``OSError``
            means the directory could not be opened, which is not fatal to a store).
        mutations: mutating calls made so far (``open`` with ``O_CREAT`` or ``O_TRUNC``,
            ``pwrite``, ``ftruncate``, ``fallocate``, ``copy_range``, ``fdatasync``, ``fsync``,
            ``fsync_dir``, ``replace``, ``unlink``, ``mkdir``), counted whether or not they
            succeed; the call cut by :meth:`power_cut_after` is not counted.
    """

    def __init__(self, *, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.fault: FaultHook | None = None
        self.mutations = 0
        self._inodes: dict[int, _File | _Dir] = {}
        self._next_ino = 1
        self._root = self._new_dir()
        self._live: dict[int, _File] = {}
        self._fds: dict[int, _Open] = {}
        self._next_fd = 3
        self._locked: set[int] = set()
        self._cut_at: int | None = None
        self._power_lost = False
        self._crashed = False

    # -- test controls -----------------------------------------------------------------------

    def power_cut_after(self, n: int) -> None:
        """Cut the power when the ``n + 1``-th mutating call from now starts.

        That call raises :class:`PowerCut` before doing anything, and so does every
        ``FileSystem`` method afterwards; the test helpers and :meth:`crash` still work. Run a
        workload once to read :attr:`mutations`, then replay it with a cut at each point.

        Raises:
            ValueError: ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"power_cut_after needs n >= 0, not {n}")
        self._check_alive()
        self._cut_at = self.mutations + n

    @property
    def power_lost(self) -> bool:
        """Whether a :meth:`power_cut_after` cut has happened."""
        return self._power_lost

    def crash(self, rng: random.Random | None = None) -> SimFileSystem:
        """What a power loss at this instant could leave on disk, as a new file system.

        With ``rng=None``, exactly the durable state. With an ``rng``, every directory keeps its
        durable table plus a random-length prefix of its pending namespace operations, and
        every file its durable content plus a random-length prefix of its pending data
        operations, the last of which, if a write, may be torn: only its first whole sectors
        (:data:`SECTOR_SIZE`, file-offset aligned, counted from the write's start) are
        applied. The outcome depends only on this file system's history and ``rng``'s state.

        The new file system has no open descriptors and no locks, has never lost power, counts
        :attr:`mutations` from 0, and keeps :attr:`capacity` and :attr:`fault` (the same disk,
        rebooted: set ``fault = None`` for a disk that healed). It hands out descriptors after
        the ones this one used, so a stale descriptor fails with ``EBADF``. It may hold more
        than :attr:`capacity` (a file whose deletion is lost comes back); then it has no free
        space. This object is unusable afterwards: every call raises ``OSError(EIO)``.

        Raises:
            OSError: ``EIO``, this file system already crashed.
        """
        self._check_alive()
        new = self._rebooted(rng)
        self._crashed = True
        self._fds.clear()
        self._locked.clear()
        return new

    # -- test helpers ------------------------------------------------------------------------

    def read_file(self, path: Path | str) -> bytes:
        """The current content of file ``path`` (what a read would see).

        Raises:
            FileNotFoundError: nothing is there.
            IsADirectoryError: it is a directory.
        """
        self._check_alive()
        name = self._name(path)
        node = self._file_at(name)
        return bytes(node.data)

    def write_file(self, path: Path | str, data: bytes, *, durable: bool = True) -> None:
        """Create or overwrite file ``path`` with ``data``; its parent must exist.

        ``durable=True`` is as if the file and then its parent directory were fsynced (so the
        parent's other pending changes become durable too); ``durable=False`` leaves the new
        content and name as unsynced operations. Bypasses the fault hook, the power cut,
        :attr:`mutations` and the capacity.

        Raises:
            FileNotFoundError: a parent is missing.
            IsADirectoryError: ``path`` is a directory.
        """
        self._check_alive()
        name = self._name(path)
        parent, file = self._open_node(name, create=True, exclusive=False)
        self._data_op(file, _Truncate(0))
        if data:
            self._data_op(file, _Write(0, bytes(data)))
        if durable:
            file.durable = bytes(file.data)
            file.pending.clear()
            parent.durable = dict(parent.entries)
            parent.pending.clear()

    def corrupt(self, path: Path | str, offset: int, data: bytes) -> None:
        """Overwrite bytes of file ``path`` in place, in its current and its durable content.

        For bit-flip and bad-sector tests. The durable content is patched only where it is
        long enough; pending operations stay pending.

        Raises:
            FileNotFoundError: nothing is there.
            IsADirectoryError: it is a directory.
            ValueError: the range is not within the file's current content.
        """
        self._check_alive()
        name = self._name(path)
        node = self._file_at(name)
        end = offset + len(data)
        if offset < 0 or end > len(node.data):
            raise ValueError(f"{offset}..{end} is not within {name.text}'s {len(node.data)} bytes")
        node.data[offset:end] = data
        durable = bytearray(node.durable)
        patch = data[: max(0, len(durable) - offset)]
        durable[offset : offset + len(patch)] = patch
        node.durable = bytes(durable)

    def files(self) -> dict[str, bytes]:
        """Every file's absolute path and current content."""
        self._check_alive()
        return self._files_of(self)

    def durable_files(self) -> dict[str, bytes]:
        """Every file's absolute path and content as ``crash(None)`` would leave them."""
        self._check_alive()
        return self._files_of(self._rebooted(None))

    def open_fds(self) -> int:
        """How many descriptors are open (locks not included)."""
        self._check_alive()
        return len(self._fds)

    def held_locks(self) -> int:
        """How many locks taken with :meth:`lock` are not released."""
        self._check_alive()
        return len(self._locked)

    # -- FileSystem --------------------------------------------------------------------------

    def open(self, path: Path, flags: int, mode: int = 0o644) -> int:
        """Open ``path``; honours the access mode, ``O_CREAT``, ``O_EXCL`` and ``O_TRUNC``.

        Other flags are ignored. Unlike Linux, a directory cannot be opened at all
        (``IsADirectoryError``).
        """
        name = self._name(path)
        create = bool(flags & os.O_CREAT)
        truncate = bool(flags & os.O_TRUNC)
        self._enter("open", name.key, mutating=create or truncate)
        access = flags & os.O_ACCMODE
        if access not in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
            raise _error(errno.EINVAL, name.text)
        exclusive = create and bool(flags & os.O_EXCL)
        _, file = self._open_node(name, create=create, exclusive=exclusive)
        if truncate and file.data:
            self._data_op(file, _Truncate(0))
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = _Open(
            file,
            name.key,
            readable=access in (os.O_RDONLY, os.O_RDWR),
            writable=access in (os.O_WRONLY, os.O_RDWR),
        )
        file.opens += 1
        self._refresh(file)
        return fd

    def close(self, fd: int) -> None:
        """Close ``fd``."""
        self._enter("close", self._fd_path(fd), mutating=False)
        handle = self._fds.pop(fd, None)
        if handle is None:
            raise _error(errno.EBADF)
        handle.file.opens -= 1
        self._refresh(handle.file)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; fewer at the end of the file."""
        self._enter("pread", self._fd_path(fd), mutating=False)
        if size < 0 or offset < 0:
            raise _error(errno.EINVAL)
        handle = self._handle(fd, read=True)
        return bytes(handle.file.data[offset : offset + size])

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        """Write at ``offset`` (zero-filling a gap); fewer bytes if the capacity runs out."""
        self._enter("pwrite", self._fd_path(fd), mutating=True)
        if offset < 0:
            raise _error(errno.EINVAL)
        file = self._handle(fd, write=True).file
        return self._write(file, bytes(data), offset)

    def fdatasync(self, fd: int) -> None:
        """Make the file's current content durable."""
        self._enter("fdatasync", self._fd_path(fd), mutating=True)
        self._sync(self._handle(fd).file)

    def fsync(self, fd: int) -> None:
        """Make the file's current content durable (not its name: that is ``fsync_dir``)."""
        self._enter("fsync", self._fd_path(fd), mutating=True)
        self._sync(self._handle(fd).file)

    def ftruncate(self, fd: int, size: int) -> None:
        """Cut or zero-extend to ``size`` bytes (``EINVAL`` on a read-only fd, as Linux)."""
        self._enter("ftruncate", self._fd_path(fd), mutating=True)
        if size < 0:
            raise _error(errno.EINVAL)
        handle = self._handle(fd)
        if not handle.writable:
            raise _error(errno.EINVAL)
        file = handle.file
        if size > len(file.data) and size - len(file.data) > self._free():
            raise _error(errno.ENOSPC)
        self._data_op(file, _Truncate(size))

    def fsize(self, fd: int) -> int:
        """The file's current size."""
        self._enter("fsize", self._fd_path(fd), mutating=False)
        return len(self._handle(fd).file.data)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        """Grow the file with zeros to cover ``[offset, offset + length)``; never shrinks."""
        self._enter("fallocate", self._fd_path(fd), mutating=True)
        if offset < 0 or length <= 0:
            raise _error(errno.EINVAL)
        file = self._handle(fd, write=True).file
        if offset + length - len(file.data) > self._free():
            raise _error(errno.ENOSPC)
        self._data_op(file, _Allocate(offset, length))

    def copy_range(self, src: int, dst: int, size: int, src_offset: int, dst_offset: int) -> int:
        """As ``pread`` from ``src`` then ``pwrite`` to ``dst``; 0 at the end of ``src``."""
        self._enter("copy_range", self._fd_path(src), mutating=True)
        source = self._handle(src)
        target = self._handle(dst)
        if not source.readable or not target.writable:
            raise _error(errno.EBADF)
        if size < 0:
            raise _error(errno.EINVAL)
        if src_offset < 0 or dst_offset < 0:
            raise _error(errno.EOVERFLOW)
        data = bytes(source.file.data[src_offset : src_offset + size])
        count = len(data)
        if (
            source.file is target.file
            and dst_offset + count > src_offset
            and dst_offset < src_offset + count
        ):
            raise _error(errno.EINVAL)
        if not count:
            return 0
        return self._write(target.file, data, dst_offset)

    def fsync_dir(self, path: Path) -> None:
        """Make directory ``path``'s current table of names durable."""
        name = self._name(path)
        self._enter("fsync_dir", name.key, mutating=True)
        node = self._dir_at(name)
        node.durable = dict(node.entries)
        node.pending.clear()

    def replace(self, src: Path, dst: Path) -> None:
        """Rename ``src`` to ``dst`` atomically (in the current state), replacing ``dst``."""
        old = self._name(src)
        new = self._name(dst)
        self._enter("replace", old.key, mutating=True)
        if not old.parts or not new.parts:
            raise _error(errno.EBUSY, old.text, new.text)
        old_dir = self._walk(old.parts[:-1], old.text, new.text)
        new_dir = self._walk(new.parts[:-1], old.text, new.text)
        old_ino = old_dir.entries.get(old.parts[-1])
        if old_ino is None:
            raise _error(errno.ENOENT, old.text, new.text)
        # The kernel's lock_rename "trap" checks, in its order (fs/namei.c do_renameat2).
        if old.parts == new.parts[: len(old.parts)] and len(old.parts) < len(new.parts):
            raise _error(errno.EINVAL, old.text, new.text)
        if new.parts == old.parts[: len(new.parts)] and len(new.parts) < len(old.parts):
            raise _error(errno.ENOTEMPTY, old.text, new.text)
        new_ino = new_dir.entries.get(new.parts[-1])
        if new_ino == old_ino:
            return
        moving = self._inodes[old_ino]
        if new_ino is not None:
            victim = self._inodes[new_ino]
            if isinstance(moving, _Dir) and not isinstance(victim, _Dir):
                raise _error(errno.ENOTDIR, old.text, new.text)
            if not isinstance(moving, _Dir) and isinstance(victim, _Dir):
                raise _error(errno.EISDIR, old.text, new.text)
            if isinstance(victim, _Dir) and victim.entries:
                raise _error(errno.ENOTEMPTY, old.text, new.text)
            if isinstance(victim, _File):
                victim.links -= 1
                self._refresh(victim)
        if old_dir is new_dir:
            self._name_op(old_dir, _Rename(old.parts[-1], new.parts[-1]))
        else:
            self._name_op(old_dir, _Unlink(old.parts[-1]))
            self._name_op(new_dir, _Link(new.parts[-1], old_ino))

    def unlink(self, path: Path) -> None:
        """Remove file ``path``'s name; open descriptors keep the file."""
        name = self._name(path)
        self._enter("unlink", name.key, mutating=True)
        if not name.parts:
            raise _error(errno.EISDIR, name.text)
        parent = self._walk(name.parts[:-1], name.text)
        ino = parent.entries.get(name.parts[-1])
        if ino is None:
            raise _error(errno.ENOENT, name.text)
        node = self._inodes[ino]
        if isinstance(node, _Dir):
            raise _error(errno.EISDIR, name.text)
        self._name_op(parent, _Unlink(name.parts[-1]))
        node.links -= 1
        self._refresh(node)

    def mkdir(self, path: Path) -> None:
        """Create directory ``path``; durable once its parent is synced."""
        name = self._name(path)
        self._enter("mkdir", name.key, mutating=True)
        if not name.parts:
            raise _error(errno.EEXIST, name.text)
        parent = self._walk(name.parts[:-1], name.text)
        if name.parts[-1] in parent.entries:
            raise _error(errno.EEXIST, name.text)
        self._name_op(parent, _Link(name.parts[-1], self._new_dir().ino))

    def listdir(self, path: Path) -> list[str]:
        """The names in directory ``path``, sorted."""
        name = self._name(path)
        self._enter("listdir", name.key, mutating=False)
        node = self._dir_at(name)
        return sorted(node.entries)

    def kind(self, path: Path) -> str | None:
        """``"file"``, ``"dir"`` or ``None``; ``NotADirectoryError`` through a file (as lstat)."""
        name = self._name(path)
        self._enter("kind", name.key, mutating=False)
        try:
            node = self._lookup(name)
        except FileNotFoundError:
            return None
        if node is None:
            return None
        return "dir" if isinstance(node, _Dir) else "file"

    def size(self, path: Path) -> int:
        """The size of file ``path`` (``IsADirectoryError`` for a directory, unlike ``stat``)."""
        name = self._name(path)
        self._enter("size", name.key, mutating=False)
        node = self._file_at(name)
        return len(node.data)

    def used_bytes(self) -> int:
        """Bytes the files hold now (open or linked), which count against :attr:`capacity`."""
        return sum(len(f.data) for f in self._live.values())

    def free_bytes(self, path: Path) -> int:
        """``capacity`` less the bytes used (never negative), or 2**50 with no capacity."""
        name = self._name(path)
        self._enter("free_bytes", name.key, mutating=False)
        if self._lookup(name) is None:
            raise _error(errno.ENOENT, name.text)
        return self._free()

    def lock(self, path: Path) -> FileLock:
        """Create ``path`` if missing and lock its file (like ``flock``, per file, in process)."""
        name = self._name(path)
        self._enter("lock", name.key, mutating=False)
        _, file = self._open_node(name, create=True, exclusive=False)
        if file.ino in self._locked:
            raise _error(errno.EWOULDBLOCK, name.text)
        self._locked.add(file.ino)
        file.opens += 1
        self._refresh(file)
        return _SimLock(self, file)

    def realpath(self, path: Path) -> str:
        """``path`` normalised and made absolute (the simulated process runs in ``/``)."""
        name = self._name(path)
        self._enter("realpath", name.key, mutating=False)
        return "/" + "/".join(name.parts)

    # -- internals ---------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._crashed:
            raise OSError(errno.EIO, "crashed")

    def _enter(self, method: str, path: str | None, *, mutating: bool) -> None:
        self._check_alive()
        if self._power_lost:
            raise PowerCut(method)
        if mutating:
            if self._cut_at is not None and self.mutations >= self._cut_at:
                self._power_lost = True
                raise PowerCut(method)
            self.mutations += 1
        if self.fault is not None:
            exc = self.fault(method, path)
            if exc is not None:
                raise exc

    def _name(self, path: Path | str) -> _Name:
        text = os.fspath(path)
        key = os.path.normpath(text)
        parts = [p for p in key.split("/") if p and p != "."]
        # Leading ".." of a relative path: the parent of the root is the root.
        while parts and parts[0] == "..":
            parts.pop(0)
        return _Name(text, key, tuple(parts))

    def _fd_path(self, fd: int) -> str | None:
        handle = self._fds.get(fd)
        return None if handle is None else handle.path

    def _handle(self, fd: int, *, read: bool = False, write: bool = False) -> _Open:
        handle = self._fds.get(fd)
        if handle is None or (read and not handle.readable) or (write and not handle.writable):
            raise _error(errno.EBADF)
        return handle

    def _new_dir(self) -> _Dir:
        d = _Dir(self._next_ino)
        self._inodes[d.ino] = d
        self._next_ino += 1
        return d

    def _new_file(self) -> _File:
        f = _File(self._next_ino)
        self._inodes[f.ino] = f
        self._next_ino += 1
        return f

    def _walk(self, parts: tuple[str, ...], text: str, text2: str | None = None) -> _Dir:
        """The directory ``parts`` names; ``ENOENT``/``ENOTDIR`` as the kernel's path walk."""
        d = self._root
        for part in parts:
            ino = d.entries.get(part)
            if ino is None:
                raise _error(errno.ENOENT, text, text2)
            node = self._inodes[ino]
            if not isinstance(node, _Dir):
                raise _error(errno.ENOTDIR, text, text2)
            d = node
        return d

    def _file_at(self, name: _Name) -> _File:
        node = self._lookup(name)
        if node is None:
            raise _error(errno.ENOENT, name.text)
        if isinstance(node, _Dir):
            raise _error(errno.EISDIR, name.text)
        return node

    def _dir_at(self, name: _Name) -> _Dir:
        node = self._lookup(name)
        if node is None:
            raise _error(errno.ENOENT, name.text)
        if not isinstance(node, _Dir):
            raise _error(errno.ENOTDIR, name.text)
        return node

    def _lookup(self, name: _Name) -> _File | _Dir | None:
        if not name.parts:
            return self._root
        ino = self._walk(name.parts[:-1], name.text).entries.get(name.parts[-1])
        return None if ino is None else self._inodes[ino]

    def _open_node(self, name: _Name, *, create: bool, exclusive: bool) -> tuple[_Dir, _File]:
        """The file ``name`` names and its directory, created if missing and ``create``."""
        if not name.parts:
            raise _error(errno.EEXIST if exclusive else errno.EISDIR, name.text)
        parent = self._walk(name.parts[:-1], name.text)
        ino = parent.entries.get(name.parts[-1])
        if ino is None:
            if not create:
                raise _error(errno.ENOENT, name.text)
            file = self._new_file()
            self._name_op(parent, _Link(name.parts[-1], file.ino))
            file.links += 1
            self._refresh(file)
            return parent, file
        if exclusive:
            raise _error(errno.EEXIST, name.text)
        node = self._inodes[ino]
        if isinstance(node, _Dir):
            raise _error(errno.EISDIR, name.text)
        return parent, node

    def _refresh(self, file: _File) -> None:
        """Keep :attr:`_live` (files that count against the capacity) up to date."""
        if file.links > 0 or file.opens > 0:
            self._live[file.ino] = file
        else:
            self._live.pop(file.ino, None)

    def _free(self) -> int:
        if self.capacity is None:
            return _UNLIMITED_FREE
        return max(0, self.capacity - self.used_bytes())

    def _write(self, file: _File, data: bytes, offset: int) -> int:
        """Write what fits of ``data``; how much that was (``ENOSPC`` if nothing fits)."""
        if not data:
            return 0
        end = offset + len(data)
        if end > len(file.data):
            limit = len(file.data) + self._free()
            if limit < end:
                data = data[: max(0, limit - offset)]
                if not data:
                    raise _error(errno.ENOSPC)
        self._data_op(file, _Write(offset, data))
        return len(data)

    def _data_op(self, file: _File, op: _DataOp) -> None:
        _apply_data(file.data, op)
        file.pending.append(op)

    def _name_op(self, d: _Dir, op: _NameOp) -> None:
        _apply_name(d.entries, op)
        d.pending.append(op)

    @staticmethod
    def _sync(file: _File) -> None:
        file.durable = bytes(file.data)
        file.pending.clear()

    def _release(self, file: _File) -> None:
        if self._crashed or file.ino not in self._locked:
            return
        self._locked.discard(file.ino)
        file.opens -= 1
        self._refresh(file)

    def _rebooted(self, rng: random.Random | None) -> SimFileSystem:
        """A new file system holding a crash outcome (see :meth:`crash`); self is unchanged."""
        tables: dict[int, dict[str, int]] = {}
        contents: dict[int, bytes] = {}
        for ino in sorted(self._inodes):
            node = self._inodes[ino]
            if isinstance(node, _Dir):
                table = dict(node.durable)
                if rng is not None and node.pending:
                    for name_op in node.pending[: rng.randint(0, len(node.pending))]:
                        _apply_name(table, name_op)
                tables[ino] = table
            else:
                data = bytearray(node.durable)
                if rng is not None and node.pending:
                    for data_op in _survivors(node.pending, rng):
                        _apply_data(data, data_op)
                contents[ino] = bytes(data)
        new = SimFileSystem(capacity=self.capacity)
        new.fault = self.fault
        new._next_fd = self._next_fd
        # Rebuild the tree from the root. A directory reachable twice (two renames that
        # survived differently) keeps its first place; a file named twice becomes two files.
        seen = {self._root.ino}
        todo = [(self._root.ino, new._root)]
        while todo:
            old_ino, target = todo.pop()
            for entry, child in sorted(tables[old_ino].items()):
                if child in tables:
                    if child in seen:
                        continue
                    seen.add(child)
                    subdir = new._new_dir()
                    todo.append((child, subdir))
                    target.entries[entry] = subdir.ino
                else:
                    file = new._new_file()
                    file.data = bytearray(contents[child])
                    file.durable = contents[child]
                    file.links = 1
                    new._refresh(file)
                    target.entries[entry] = file.ino
            target.durable = dict(target.entries)
        return new

    @staticmethod
    def _files_of(fs: SimFileSystem) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        todo: list[tuple[str, _Dir]] = [("", fs._root)]
        while todo:
            prefix, d = todo.pop()
            for entry, ino in sorted(d.entries.items()):
                node = fs._inodes[ino]
                if isinstance(node, _Dir):
                    todo.append((f"{prefix}/{entry}", node))
                else:
                    out[f"{prefix}/{entry}"] = bytes(node.data)
        return dict(sorted(out.items()))


if TYPE_CHECKING:
    _conforms: FileSystem = SimFileSystem()
