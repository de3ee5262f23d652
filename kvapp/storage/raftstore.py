"""A raftlib :class:`~raftlib.storage.Storage` that lives on disk: WAL + snapshot files.

:class:`RaftStore` answers raftlib's reads from memory (an index of the entries since the last
compaction, exactly like :class:`~raftlib.storage.MemoryStorage`) and makes every write durable
before it returns: one WAL record, one ``write``, one ``fdatasync``. Given the same operations it
gives the same answers as ``MemoryStorage``, before and after a restart; a hypothesis test checks
that.

Driving it from a Ready, in the order etcd's raftexample uses::

    store.save_ready(rd)       # snapshot file + WAL marker if any, then one WAL batch, one fsync
                               # (none if not rd.must_sync: a commit-only Ready is deferred)
    ... send messages, apply committed entries ...
    node.advance(rd)
    # now and then, after applying up to `applied`:
    store.create_snapshot(applied, conf_state, state_machine_bytes)
    store.compact(applied - keep_for_slow_followers)

Directory layout: ``<dir>/wal/`` (:mod:`kvapp.storage.wal`), ``<dir>/snap/``
(:mod:`kvapp.storage.snap`) and ``<dir>/LOCK`` (held while open).

Recovery (:meth:`RaftStore.open`) reads the whole retained WAL, replays its records from the first
segment's state record, loads the snapshot file named by the newest snapshot marker and verifies
it. If that file is missing or corrupt it falls back to the newest older snapshot file for which
the WAL still holds every later entry, records that choice in the WAL (a ``RESTORED`` marker) and
sets the bad file aside; if there is none, it refuses to start.

What is kept: the newest ``keep_snapshots`` snapshot files, and the WAL segments holding entries
after ``min(compacted index, oldest kept snapshot)``, so that fallback stays possible.

The operator's view (layout, guarantees, errors and what to do about them) is docs/storage.md.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import shlex
import weakref
import zlib
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TypeVar, cast

import attrs

from kvapp.storage.entrylog import DEFAULT_HOT_BYTES, DiskBackedLog
from kvapp.storage.errors import (
    InvalidWriteError,
    SnapshotCorruptError,
    StorageLayoutError,
    StoreFailedError,
    StoreFsyncFailedError,
    StoreFullError,
    WalCorruptError,
    WalIdentityError,
)
from kvapp.storage.fileutil import DirLock, FsyncError, ensure_dir, is_no_space
from kvapp.storage.fs import OS, FileSystem
from kvapp.storage.snap import Snapshotter, data_offset
from kvapp.storage.snapdata import FileSnapshotData
from kvapp.storage.snapparts import SnapshotParts
from kvapp.storage.wal import (
    DEFAULT_SEGMENT_SIZE,
    BatchRecord,
    CompactRecord,
    LocatedRecord,
    MetadataRecord,
    Record,
    RecordAt,
    SnapshotKind,
    SnapshotRecord,
    StateRecord,
    Wal,
    WalMetadata,
)
from raftlib.rawnode import Ready
from raftlib.storage import check_snapshot_newer, plan_snapshot
from raftlib.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata

__all__ = [
    "DEFAULT_KEEP_SNAPSHOTS",
    "RaftStore",
    "RecoveredLog",
    "check_layout",
    "repair_hint",
    "replay_records",
]

logger = logging.getLogger(__name__)

DEFAULT_KEEP_SNAPSHOTS = 5
"""Snapshot files kept; the WAL is kept back to the oldest of them so any can be fallen back to."""

_T = TypeVar("_T")

_U64 = 1 << 64

_FSYNC_FAILED: dict[str, str] = {}
"""Data directories (real paths) whose store saw an fsync fail in this process, with the error.

Process-wide on purpose: after a failed fsync the page cache of those files cannot be trusted for
the rest of the process, whichever ``RaftStore`` object reads them (see
:class:`~kvapp.storage.errors.StoreFsyncFailedError`)."""
_FSYNC_FAILED_ELSEWHERE: weakref.WeakKeyDictionary[FileSystem, dict[str, str]] = (
    weakref.WeakKeyDictionary()
)
"""The same for other file systems (simulated disks), each held only as long as its disk. A
wrapper of the real file system has a registry of its own: it is another file system here."""
_FSYNC_FAILED_HELD: dict[FileSystem, dict[str, str]] = {}

_EMPTY_STATE = StateRecord(
    hard_state=HardState(),
    snapshot=SnapshotMetadata(),
    compact_index=0,
    compact_term=0,
    last_index=0,
    last_term=0,
)


class RecoveredLog:
    """The storage state a WAL's records describe, rebuilt by :func:`replay_records`.

    It applies each record with ``MemoryStorage`` semantics, and additionally keeps the entries
    at or before the compaction point that the retained segments still hold (``log`` may start
    before ``compact_index``) so recovery can fall back to an older snapshot. Replay starts from
    the first retained segment's :class:`~kvapp.storage.wal.StateRecord`: entries between its
    compaction point and its last index are in released segments and unknown here; they must
    have been compacted by the end of the log, or the WAL is missing data.

    Attributes:
        hard_state: the last hard state saved.
        snapshot: the metadata of the newest snapshot marker.
        compact_index: ``MemoryStorage``'s ``ents[0].index``: first index minus one.
        compact_term: the term of ``compact_index``.
        base: the index of ``log[0]``.
        log: known entries from ``base`` on.
    """

    def __init__(self, state: StateRecord) -> None:
        self.hard_state = state.hard_state
        self.snapshot = state.snapshot
        self.compact_index = state.compact_index
        self.compact_term = state.compact_term
        self.base = state.last_index + 1
        self._base_term: int | None = state.last_term
        self.log: list[Entry] = []
        self.where: list[RecordAt] = []
        """Where each entry of ``log`` was read from (its batch record)."""

    @property
    def last_index(self) -> int:
        """The index of the last entry (known or not)."""
        return self.base + len(self.log) - 1

    def term_of(self, index: int) -> int | None:
        """The term of entry ``index`` if the replayed records tell it, else ``None``."""
        if index == self.compact_index:
            return self.compact_term
        if self.base <= index < self.base + len(self.log):
            return self.log[index - self.base].term
        if index == self.base - 1:
            return self._base_term
        return None

    def can_restore(self, index: int, term: int) -> bool:
        """Whether the log holds every entry after a snapshot at ``index``/``term``."""
        return self.base - 1 <= index <= self.last_index and self.term_of(index) == term

    def state_record(self) -> StateRecord:
        """What a segment cut now would record. Only valid after :meth:`finish`."""
        return StateRecord(
            hard_state=self.hard_state,
            snapshot=self.snapshot,
            compact_index=self.compact_index,
            compact_term=self.compact_term,
            last_index=self.last_index,
            last_term=self.term_of(self.last_index) or 0,
        )

    def apply(self, located: LocatedRecord) -> None:
        """Apply one record (after the first segment's header records).

        Raises:
            WalCorruptError: the record is inconsistent with the ones before it.
        """
        rec = located.record

        def bad(reason: str) -> WalCorruptError:
            return WalCorruptError(located.path, located.offset, reason)

        if isinstance(rec, BatchRecord):
            if rec.hard_state is not None:
                self.hard_state = rec.hard_state
            self._append(rec.entries, bad, located.at())
        elif isinstance(rec, CompactRecord):
            if not self.compact_index < rec.index <= self.last_index:
                raise bad(
                    f"compaction to {rec.index} outside ({self.compact_index}, {self.last_index}]"
                )
            if self.term_of(rec.index) not in (None, rec.term):
                raise bad(f"compaction to {rec.index} names term {rec.term}, log disagrees")
            self.compact_index, self.compact_term = rec.index, rec.term
        elif isinstance(rec, SnapshotRecord):
            self._apply_snapshot(rec, bad)
        elif isinstance(rec, StateRecord):
            last_term = self.term_of(self.last_index)
            expected = self.state_record()
            if last_term is None:
                expected = StateRecord(
                    hard_state=expected.hard_state,
                    snapshot=expected.snapshot,
                    compact_index=expected.compact_index,
                    compact_term=expected.compact_term,
                    last_index=expected.last_index,
                    last_term=rec.last_term,
                )
            if rec != expected:
                raise bad(f"segment state {rec} disagrees with the records before it {expected}")
        elif isinstance(rec, MetadataRecord):
            pass

    def _apply_snapshot(self, rec: SnapshotRecord, bad: Callable[[str], WalCorruptError]) -> None:
        md = rec.metadata
        if rec.kind == SnapshotKind.INSTALLED:
            self.snapshot = md
            self.compact_index, self.compact_term = md.index, md.term
            self.log = []
            self.where = []
            self.base = md.index + 1
            self._base_term = md.term
            return
        if rec.kind == SnapshotKind.RESTORED:
            if not self.can_restore(md.index, md.term):
                raise bad(f"restored snapshot at {md.index} does not fit the log")
            self.snapshot = md
            if md.index < self.compact_index:
                self.compact_index, self.compact_term = md.index, md.term
            return
        if md.index > self.last_index or self.term_of(md.index) not in (None, md.term):
            raise bad(f"snapshot marker at {md.index} term {md.term} does not fit the log")
        self.snapshot = md

    def _append(
        self, entries: Sequence[Entry], bad: Callable[[str], WalCorruptError], at: RecordAt
    ) -> None:
        if not entries:
            return
        for i, e in enumerate(entries):
            if e.index != entries[0].index + i:
                raise bad(f"batch entries are not contiguous at {e.index}")
        first = self.compact_index + 1
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        x = entries[0].index
        if x > self.last_index + 1:
            raise bad(f"batch starting at {x} leaves a gap after last index {self.last_index}")
        if x < self.base:
            self._base_term = self.compact_term if x - 1 == self.compact_index else None
            self.log = list(entries)
            self.where = [at] * len(entries)
            self.base = x
        else:
            del self.log[x - self.base :]
            self.log.extend(entries)
            del self.where[x - self.base :]
            self.where.extend([at] * len(entries))

    def finish(self, path: Path) -> None:
        """Check that every live entry is known.

        Raises:
            WalCorruptError: entries after the compaction point are in released segments.
        """
        if self.base - 1 > self.compact_index:
            raise WalCorruptError(
                path,
                0,
                f"entries {self.compact_index + 1}..{self.base - 1} are needed but not in the "
                "WAL (segments released too early or lost)",
                hint="cutting the WAL cannot help; replace the member (remove it, wipe its data "
                "directory, add it back) or restore a backup",
            )

    def live_entries(self) -> list[Entry]:
        """The entries after the compaction point, as ``MemoryStorage`` would hold them."""
        return self.log[self.compact_index + 1 - self.base :]

    def live_where(self) -> list[RecordAt]:
        """Where each of :meth:`live_entries` is in the WAL."""
        return self.where[self.compact_index + 1 - self.base :]


def replay_records(records: Sequence[LocatedRecord]) -> RecoveredLog:
    """Rebuild the storage state from a WAL's records (as read by ``read_wal``).

    Raises:
        WalCorruptError: the records are inconsistent (a gap in the entries, a state record that
            disagrees with what precedes it, entries needed but missing).
    """
    if len(records) < 2 or not isinstance(records[1].record, StateRecord):
        path = records[0].path if records else Path()
        raise WalCorruptError(path, 0, "WAL does not start with metadata and state records")
    log = RecoveredLog(records[1].record)
    for lr in records[2:]:
        log.apply(lr)
    log.finish(records[0].path)
    return log


class RaftStore:
    """raftlib's ``Storage`` over a WAL and snapshot files, with ``MemoryStorage``'s write API.

    Open with :meth:`open`; close with :meth:`close` or use as a context manager. Reads never
    touch the disk. Each write method is durable when it returns (one ``fdatasync``; a snapshot
    adds the file's own), except :meth:`save_ready` of a Ready that need not be synced. A write
    validates its arguments before writing anything, so one that raises a raftlib or
    ``ValueError`` exception (:class:`~kvapp.storage.errors.InvalidWriteError` is one) changed
    nothing. If the disk is full, the write raises :class:`~kvapp.storage.errors.StoreFullError`
    having kept nothing of it, and the store stays usable: make the same call again once space
    is freed (raftlib's ``Node`` does). If the disk fails otherwise, the write raises
    :class:`~kvapp.storage.errors.StoreFailedError` and so does every later write: close and
    reopen the store. After a failed *fsync*
    (:class:`~kvapp.storage.errors.StoreFsyncFailedError`) the process must exit, as etcd does,
    and this directory cannot be reopened in it.

    Not thread-safe: call it from the one thread (or event loop) that drives the raft node.
    """

    def __init__(
        self,
        *,
        directory: Path,
        lock: DirLock,
        wal: Wal,
        snapshotter: Snapshotter,
        hard_state: HardState,
        snapshot: Snapshot,
        entries: list[Entry],
        keep_snapshots: int,
        where: Sequence[RecordAt] = (),
        hot_bytes: int = DEFAULT_HOT_BYTES,
        snapshot_in_file: bool = False,
        fs: FileSystem = OS,
    ) -> None:
        """Use :meth:`open`."""
        self.fs = fs
        """The file layer this store reads and writes through."""
        self.directory = directory
        self._lock = lock
        self._wal = wal
        self._snapshotter = snapshotter
        self._hard_state = hard_state
        self._wal_hard_state = hard_state
        self._log = DiskBackedLog(entries, where, hot_bytes, fs)
        self._keep_snapshots = keep_snapshots
        self._failure: OSError | None = None
        self._cut_deferred = False
        self._closed = False
        self.on_snapshot_kept: Callable[[object, FileSnapshotData], object] | None = None
        """Called with a snapshot's data and what replaced it in memory once its file is
        recorded (see :meth:`snapshot`), so that other holders of the bytes can let them go."""
        self._in_file = snapshot_in_file
        self._snapshot = self._kept(snapshot)
        self._applied: int | None = None

    @classmethod
    def open(
        cls,
        directory: str | PathLike[str],
        *,
        cluster_id: int,
        member_id: int,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        preallocate: bool = True,
        fsync: bool = True,
        conf_state: ConfState | None = None,
        hot_bytes: int = DEFAULT_HOT_BYTES,
        snapshot_in_file: bool = False,
        fs: FileSystem = OS,
    ) -> RaftStore:
        """Open (or create) the store in ``directory`` and recover its state.

        A missing or empty directory gives an empty store, as ``MemoryStorage(conf_state)``.

        Args:
            directory: the data directory; created if missing.
            cluster_id: this cluster's id; an existing WAL must carry the same.
            member_id: this member's id; an existing WAL must carry the same.
            segment_size: WAL segment size (default 64 MiB).
            keep_snapshots: how many snapshot files to keep (at least 1).
            preallocate: reserve each WAL segment's space up front and write zeros ahead of
                its records (faster fsyncs on ext4; see :data:`~kvapp.storage.wal.ZERO_AHEAD`).
            fsync: ``False`` skips every fsync. For tests and benchmarks only: a power loss can
                then lose acknowledged writes.
            conf_state: the starting configuration of a *new* store, as if restored from an
                empty snapshot (the alternative to ``RawNode.bootstrap``). Recorded when the
                store is created; ignored when it already exists, like etcd's initial cluster.
            hot_bytes: entry data held in memory; older committed entries' data is read back
                from the WAL when asked for (see :mod:`kvapp.storage.entrylog`).
            snapshot_in_file: hold a snapshot's data, once its file is recorded, as a
                :class:`~kvapp.storage.snapdata.FileSnapshotData` that reads the file when used
                instead of as ``bytes`` (see :meth:`snapshot`). Its user must read it as that
                module says (kvapp's ``Member`` does); raftlib never looks inside.
            fs: the file layer (the real file system by default; tests pass a simulated
                disk, :class:`~kvapp.storage.simfs.SimFileSystem`).

        Raises:
            StoreFsyncFailedError: an fsync on this directory failed earlier in this process
                (the process must exit first), or fails now.
            StorageLayoutError: ``directory``, its ``wal`` or ``snap`` is not a directory, or its
                ``LOCK`` is not a regular file.
            StoreLockedError: another open store holds ``directory``.
            WalIdentityError: the WAL belongs to another cluster or member.
            WalCorruptError: the WAL is damaged (other than a torn tail, which is dropped), or
                snapshot files exist without a WAL. The message ends with what the operator can
                do, usually ``python -m kvapp.storage.repair DIR --cut`` (:func:`repair_hint`).
            SnapshotCorruptError: the newest snapshot is unusable and no older one can replace
                it with the entries the WAL holds.
            ValueError: ``keep_snapshots`` is less than 1.
        """
        if keep_snapshots < 1:
            raise ValueError(f"keep_snapshots must be at least 1, got {keep_snapshots}")
        root = Path(directory)
        failed = _fsync_failures(fs).get(fs.realpath(root))
        if failed is not None:
            raise StoreFsyncFailedError(
                f"{root}: refusing to open: an fsync on this store failed earlier in this "
                f"process ({failed}), so the page cache may hold data the disk never got; the "
                "process must exit; do not reopen this store in this process (a new process "
                "recovers from what is really on disk)"
            )
        check_layout(root, fs)
        try:
            return cls._open(
                root,
                WalMetadata(cluster_id, member_id),
                segment_size=segment_size,
                keep_snapshots=keep_snapshots,
                preallocate=preallocate,
                fsync=fsync,
                conf_state=conf_state,
                hot_bytes=hot_bytes,
                snapshot_in_file=snapshot_in_file,
                fs=fs,
            )
        except FsyncError as exc:
            raise _fsync_failed(fs, root, exc) from exc
        except WalIdentityError:
            raise
        except WalCorruptError as exc:
            if exc.hint:
                raise
            raise type(exc)(exc.path, exc.offset, exc.reason, hint=repair_hint(root)) from exc

    @classmethod
    def _open(
        cls,
        root: Path,
        metadata: WalMetadata,
        *,
        segment_size: int,
        keep_snapshots: int,
        preallocate: bool,
        fsync: bool,
        conf_state: ConfState | None,
        hot_bytes: int,
        snapshot_in_file: bool,
        fs: FileSystem,
    ) -> RaftStore:
        """:meth:`open` after its checks: lock, then create or recover."""
        ensure_dir(root, fsync=fsync, fs=fs)
        lock = DirLock(root / "LOCK", fs)
        lock.acquire()
        try:
            snapshotter = Snapshotter(root / "snap", fsync=fsync, fs=fs)
            wal_dir = root / "wal"
            if not Wal.exists(wal_dir, fs):
                if snapshotter.files():
                    raise WalCorruptError(
                        wal_dir,
                        0,
                        "no WAL segments but snapshot files exist: the WAL was lost",
                        hint="restore the WAL from a backup, or replace the member",
                    )
                initial = Snapshot(metadata=SnapshotMetadata(conf_state=conf_state or ConfState()))
                wal = Wal.create(
                    wal_dir,
                    metadata,
                    attrs.evolve(_EMPTY_STATE, snapshot=initial.metadata),
                    segment_size=segment_size,
                    preallocate=preallocate,
                    fsync=fsync,
                    fs=fs,
                )
                return cls(
                    directory=root,
                    lock=lock,
                    wal=wal,
                    snapshotter=snapshotter,
                    hard_state=HardState(),
                    snapshot=initial,
                    entries=[Entry()],
                    keep_snapshots=keep_snapshots,
                    hot_bytes=hot_bytes,
                    snapshot_in_file=snapshot_in_file,
                    fs=fs,
                )
            wal, contents = Wal.open(
                wal_dir,
                metadata=metadata,
                segment_size=segment_size,
                preallocate=preallocate,
                fsync=fsync,
                fs=fs,
            )
            try:
                log = replay_records(contents.records)
                marker = log.snapshot
                snapshot = _recover_snapshot(log, snapshotter, wal)
                orphans = [f for f in snapshotter.files() if f.index > marker.index]
                if orphans:
                    logger.info(
                        "removing %d snapshot file(s) whose WAL marker was never written",
                        len(orphans),
                    )
                    snapshotter.remove(orphans)
            except BaseException:
                wal.close()
                raise
        except BaseException:
            lock.release()
            raise
        entries = [Entry(term=log.compact_term, index=log.compact_index), *log.live_entries()]
        logger.info(
            "recovered %s: snapshot at %d, entries %d..%d, %s",
            root,
            snapshot.metadata.index,
            entries[0].index + 1,
            entries[-1].index,
            log.hard_state,
        )
        store = cls(
            directory=root,
            lock=lock,
            wal=wal,
            snapshotter=snapshotter,
            hard_state=log.hard_state,
            snapshot=snapshot,
            entries=entries,
            keep_snapshots=keep_snapshots,
            where=log.live_where(),
            hot_bytes=hot_bytes,
            snapshot_in_file=snapshot_in_file,
            fs=fs,
        )
        # Entries after the snapshot are about to be applied again; older ones are not needed.
        store._log.evict(min(log.hard_state.commit, snapshot.metadata.index))
        return store

    # -- read side (the Storage protocol) --

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See :meth:`raftlib.storage.Storage.initial_state`."""
        return self._hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """See :meth:`raftlib.storage.Storage.entries`.

        Reads the WAL for old committed entries whose data is not held in memory (see
        :mod:`kvapp.storage.entrylog`); a damaged record raises
        :class:`~kvapp.storage.errors.WalCorruptError`.
        """
        return self._log.entries(lo, hi, max_size)

    def term(self, index: int) -> int:
        """See :meth:`raftlib.storage.Storage.term`."""
        return self._log.window.term(index)

    def first_index(self) -> int:
        """See :meth:`raftlib.storage.Storage.first_index`."""
        return self._log.window.first_index()

    def last_index(self) -> int:
        """See :meth:`raftlib.storage.Storage.last_index`."""
        return self._log.window.last_index()

    def note_applied(self, index: int) -> None:
        """The application has applied the entries up to ``index``.

        Once told, the store keeps the data of entries not applied yet in memory, however
        much it is (a member catching up after a restart applies them next), and lets go of
        the older ones' as they are applied; without it, that of entries not committed yet.
        See :mod:`kvapp.storage.entrylog`.
        """
        self._applied = index
        self._log.evict(min(self._hard_state.commit, index))

    def data_size(self) -> int:
        """Bytes of the snapshot's data and of every entry's data held (what a restart reads)."""
        return len(self._snapshot.data) + self._log.data_size()

    def snapshot(self) -> Snapshot:
        """See :meth:`raftlib.storage.Storage.snapshot`; never reads the disk.

        The metadata is held in memory, and so is the data, unless the store was opened with
        ``snapshot_in_file``: then, once its file is recorded, it is a
        :class:`~kvapp.storage.snapdata.FileSnapshotData` that reads the file when used (see
        :mod:`kvapp.storage.snapdata`), not ``bytes``.
        """
        return self._snapshot

    @property
    def takes_snapshot_parts(self) -> bool:
        """Whether a snapshot's data may be a :class:`~kvapp.storage.snapparts.SnapshotParts`.

        True with ``snapshot_in_file``: the snapshot file is then assembled from the parts
        (ranges of earlier snapshot files copied by the kernel), and the data kept in memory is
        a :class:`~kvapp.storage.snapdata.FileSnapshotData` of it, as for any snapshot.
        """
        return self._in_file

    # -- write side --

    @property
    def hard_state(self) -> HardState:
        """The hard state last saved (possibly a commit-only one :meth:`save_ready` deferred)."""
        return self._hard_state

    @property
    def durable_hard_state(self) -> HardState:
        """The hard state the WAL holds: what a restart after a crash now would recover.

        Differs from :attr:`hard_state` only in ``commit``, after :meth:`save_ready` deferred a
        commit-only Ready.
        """
        return self._wal_hard_state

    def save(self, hard_state: HardState | None = None, entries: Sequence[Entry] = ()) -> None:
        """Persist a Ready's hard state and entries as one WAL record with one fsync.

        Entries follow ``MemoryStorage.append``: those already compacted are skipped, the rest
        replace any existing entries from their first index on. Either all of it is recovered
        after a crash, or (if the crash came before this returned) none of it. A hard state
        :meth:`save_ready` deferred is written too. Nothing is written if there is nothing new.

        ``bytearray`` and ``memoryview`` entry data are stored as ``bytes``; anything else the
        WAL could not read back is refused before anything is written.

        Raises:
            InvalidWriteError: an entry or the hard state has a field of the wrong type or out of
                range (a ``str`` payload, a negative term, an unknown entry type, ...).
            RaftInvariantError: ``entries`` are not consecutive indexes, or would leave a gap
                after the last index (as ``MemoryStorage.append``).
            StoreFullError: no space for the record; nothing was written or changed.
            StoreFailedError: the disk write failed (now or earlier).
        """
        if hard_state is not None:
            _check_hard_state(hard_state)
        ents = self._log.window.check_append(_checked_entries(entries))
        hs = self._hard_state if hard_state is None else hard_state
        if not ents and hs == self._wal_hard_state:
            self._hard_state = hs
            return
        batch = BatchRecord(None if hs == self._wal_hard_state else hs, tuple(ents))
        where = self._write(batch, hard_state=hs)
        self._log.apply_append(ents, where[0] if where else None)
        commit = self._hard_state.commit
        self._log.evict(commit if self._applied is None else min(commit, self._applied))
        self._maybe_cut()

    def save_ready(self, rd: Ready) -> None:
        """Persist everything a Ready asks to (its step 2): snapshot, entries, hard state.

        Installs ``rd.snapshot`` if set (as :meth:`apply_snapshot`), then saves ``rd.entries``
        and ``rd.hard_state`` as one WAL record with one fsync (as :meth:`save`). When
        ``rd.must_sync`` is false the Ready only moved the commit index (no entries, no snapshot,
        same term and vote), and nothing is written or synced at all: the new hard state is
        kept in memory (:attr:`hard_state`) and written with the next record of any kind, or by
        :meth:`close`. A crash before then recovers the older commit index, which Raft allows:
        commit is re-learned from the leader, and ``Config(applied=...)`` may be ahead of it.

        Why defer rather than write without an fsync (as etcd does): the WAL's torn-tail rules
        rely on at most one record being in flight at a power loss. An unsynced record followed
        by a synced one puts two in flight, and a lost sector in the first would then read as
        corruption that stops the member. A deferred commit costs nothing on a clean shutdown and
        a little progress after a crash. Every record written carries the deferred commit along,
        so the commit index on disk is never behind a snapshot marker that needs it.

        After :class:`~kvapp.storage.errors.StoreFullError` the same Ready may be saved again: a
        snapshot it installed before the entries' record failed is not installed twice.

        Raises:
            InvalidWriteError: see :meth:`save`, and :meth:`apply_snapshot`.
            RaftInvariantError: see :meth:`save`.
            SnapshotOutOfDateError: ``rd.snapshot`` is not newer than the current snapshot.
            StoreFullError: no space; what was not written can be saved again with the Ready.
            StoreFailedError: a disk write failed (now or earlier).
        """
        snap = rd.snapshot
        if snap is not None and not snap.is_empty() and snap.metadata != self._snapshot.metadata:
            self.apply_snapshot(snap)
        hs = rd.hard_state
        if (
            not rd.must_sync
            and not rd.entries
            and (hs is None or (hs.term, hs.vote) == (self._hard_state.term, self._hard_state.vote))
        ):
            if hs is not None:  # else nothing to persist (and a deferred commit stays deferred)
                _check_hard_state(hs)
                self._guard(lambda: None)
                self._hard_state = hs
            return
        self.save(hs, rd.entries)

    def set_hard_state(self, hard_state: HardState) -> None:
        """``save(hard_state)``: for code written against ``MemoryStorage``."""
        self.save(hard_state)

    def append(self, entries: Sequence[Entry]) -> None:
        """``save(None, entries)``: for code written against ``MemoryStorage``."""
        self.save(None, entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Install a snapshot received from the leader; every entry is discarded.

        The snapshot file is written (and synced) before its WAL marker, so a crash in between
        leaves the old state, and the file is removed on the next open.

        ``snapshot``'s data may be a :class:`~kvapp.storage.snapdata.FileSnapshotData` (a
        snapshot the peer transport spooled to a file): it is copied into the snapshot file by
        the kernel, never read into memory whole.

        Raises:
            InvalidWriteError: ``snapshot`` has data that is neither bytes-like nor a
                ``FileSnapshotData``, or metadata that is not unsigned 64-bit integers; nothing
                is written.
            SnapshotOutOfDateError: ``snapshot`` is not newer than the current one.
            StoreFullError: no space; nothing was kept (the file is deleted again).
            StoreFailedError: a disk write failed (now or earlier).
        """
        check_snapshot_newer(self._snapshot, snapshot.metadata.index)
        snapshot = _checked_snapshot(snapshot)
        md = snapshot.metadata
        self._guard(lambda: self._snapshotter.save(snapshot))
        self._write_marker(SnapshotRecord(SnapshotKind.INSTALLED, md))
        self._snapshot = self._kept(snapshot)
        self._log.reset(md.index, md.term)
        self._after_snapshot()

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """Save a snapshot of the applied state at ``index``, keeping the entries.

        Use :meth:`compact` afterwards to drop the entries it covers. Old snapshot files beyond
        the newest ``keep_snapshots`` are deleted, and WAL segments no longer needed released.

        Args:
            index: the applied index ``data`` reflects.
            conf_state: the configuration at ``index``; ``None`` keeps the current snapshot's.
            data: the state machine's serialized state.

        Returns:
            The snapshot saved.

        Raises:
            InvalidWriteError: ``data`` is not bytes-like or ``conf_state`` holds ids that are
                not unsigned 64-bit integers; nothing is written.
            SnapshotOutOfDateError: ``index`` is not after the current snapshot.
            CompactedError: ``index`` is before the first entry's predecessor, so its term is
                gone.
            ValueError: ``index`` is after the last entry.
            StoreFullError: no space; nothing was kept (the file is deleted again).
            StoreFailedError: a disk write failed (now or earlier).
        """
        planned = plan_snapshot(self._snapshot, self._log.window, index, conf_state, data)
        snap = _checked_snapshot(planned)
        self._guard(lambda: self._snapshotter.save(snap))
        self._write_marker(SnapshotRecord(SnapshotKind.CREATED, snap.metadata))
        self._snapshot = self._kept(snap)
        self._after_snapshot()
        return self._snapshot

    def stage_snapshot(self, snapshot: Snapshot) -> None:
        """Write ``snapshot``'s file durably without recording it (see ``raftlib.StagingStorage``).

        Safe to call from another thread beside every other method: it only writes a new file,
        which nothing reads until :meth:`adopt_snapshot` records it. A staged file never adopted
        is newer than the recorded snapshot, so it is left alone by pruning and removed as an
        orphan when the store is next opened.

        Raises:
            InvalidWriteError: as :meth:`create_snapshot`; nothing is written.
            StoreFullError: no space; nothing is left of the file.
            StoreFailedError: the write failed (now or earlier).
        """
        snap = _checked_snapshot(snapshot)
        self._guard(lambda: self._snapshotter.save(snap))

    def adopt_snapshot(self, snapshot: Snapshot) -> None:
        """Record a snapshot :meth:`stage_snapshot` wrote, as :meth:`create_snapshot` would.

        Raises:
            SnapshotOutOfDateError: ``snapshot`` is not after the current snapshot.
            ValueError: its index is after the last entry, or its term is not the log's term
                there.
            CompactedError: the entry at its index was already compacted away.
            StoreFullError: no space for the WAL marker; the staged file is deleted (stage a
                snapshot again to retry).
            StoreFailedError: a disk write failed (now or earlier).
        """
        md = snapshot.metadata
        planned = plan_snapshot(
            self._snapshot, self._log.window, md.index, md.conf_state, snapshot.data
        )
        if planned.metadata != md:
            raise ValueError(f"staged snapshot {md} does not match the log ({planned.metadata})")
        self._write_marker(SnapshotRecord(SnapshotKind.CREATED, md))
        self._snapshot = self._kept(_checked_snapshot(snapshot))
        self._after_snapshot()

    def compact(self, compact_index: int) -> None:
        """Discard entries up to and including ``compact_index``; release WAL segments.

        The application must not compact past its applied index.

        Raises:
            CompactedError: ``compact_index`` is not after the current first entry's predecessor.
            ValueError: ``compact_index`` is after the last entry.
            StoreFullError: no space for the WAL record; nothing was compacted.
            StoreFailedError: a disk write failed (now or earlier).
        """
        kept = self._log.window.check_compact(compact_index)
        self._write(CompactRecord(kept.index, kept.term))
        self._log.apply_compact(kept)
        self._guard(self._release)

    def close(self) -> None:
        """Write a hard state :meth:`save_ready` deferred, close the WAL, release the lock.

        Idempotent. The WAL and the lock are released even if that last write fails (then
        raising :class:`~kvapp.storage.errors.StoreFullError` or
        :class:`~kvapp.storage.errors.StoreFailedError`; only the commit index is lost); a failed
        store is closed without writing.
        """
        if self._closed:
            return
        try:
            if self._failure is None and self._hard_state != self._wal_hard_state:
                self._write()
        finally:
            self._closed = True
            self._wal.close()
            self._lock.release()

    def __enter__(self) -> RaftStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals --

    @property
    def wal(self) -> Wal:
        """The underlying WAL (for inspection and tools)."""
        return self._wal

    @property
    def snapshotter(self) -> Snapshotter:
        """The underlying snapshotter (for inspection and tools)."""
        return self._snapshotter

    def _guard(self, op: Callable[[], _T]) -> _T:
        """Run the disk operation ``op`` unless the store is closed or failed; map its errors.

        A failure for lack of space that left the WAL usable (the WAL cut its partial record
        away, a snapshot write deleted its temporary file) raises StoreFullError and leaves the
        store usable; any other failure poisons it.
        """
        if self._closed:
            raise ValueError("store is closed")
        failure = self._failure
        if failure is not None:
            if isinstance(failure, FsyncError):
                raise StoreFsyncFailedError(
                    f"{self.directory}: an earlier fsync failed ({failure}); {_FSYNC_ADVICE}"
                ) from failure
            raise StoreFailedError(
                f"{self.directory}: an earlier write failed ({failure}); close and reopen the "
                "store to continue from what is on disk"
            ) from failure
        try:
            return op()
        except OSError as exc:
            if is_no_space(exc) and not self._wal.failed:
                raise StoreFullError(
                    f"{self.directory}: no space left for a write: {exc}; nothing of it was "
                    "kept, and the same write can be made again once space is freed"
                ) from exc
            self._failure = exc
            if isinstance(exc, FsyncError):
                logger.critical("%s: fsync failed; the process must exit: %s", self, exc)
                raise _fsync_failed(self.fs, self.directory, exc) from exc
            logger.exception("%s: disk write failed; the store refuses further writes", self)
            raise StoreFailedError(
                f"{self.directory}: disk write failed: {exc}; close and reopen the store to "
                "continue from what is on disk"
            ) from exc

    def _write(self, *records: Record, hard_state: HardState | None = None) -> list[RecordAt]:
        """Append ``records`` as one WAL write, with the hard state if it is not in the WAL yet.

        The hard state written is ``hard_state``, else :attr:`hard_state` (which a deferred
        commit-only Ready may have moved). A leading :class:`~kvapp.storage.wal.BatchRecord`
        carries it itself; any other write gets a hard-state-only batch in front, so the WAL
        never holds a snapshot marker (or compaction) with a commit index older than the one the
        application acted on. Both hard state attributes are updated only once the write is
        durable.

        Returns:
            Where the records of ``records`` went, in order (a hard-state batch put in front
            is left out).
        """
        hs = self._hard_state if hard_state is None else hard_state
        skip = 0
        if hs != self._wal_hard_state:
            first = records[0] if records else None
            if not isinstance(first, BatchRecord):
                records = (BatchRecord(hs, ()), *records)
                skip = 1
            elif first.hard_state is None:
                records = (BatchRecord(hs, first.entries), *records[1:])
        where = self._guard(lambda: self._wal.append(records))
        self._hard_state = self._wal_hard_state = hs
        return where[skip:]

    def _write_marker(self, marker: SnapshotRecord) -> None:
        """Write a snapshot's WAL marker; without space for it, delete the snapshot's file."""
        try:
            self._write(marker)
        except StoreFullError:
            md = marker.metadata
            path = self._snapshotter.path_for(md.term, md.index)
            try:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.unlink(path)
            except OSError as exc:  # harmless: an unrecorded newer file is removed on open
                logger.warning("could not remove the unrecorded snapshot %s: %s", path, exc)
            raise

    def _state_record(self) -> StateRecord:
        return StateRecord(
            hard_state=self._wal_hard_state,
            snapshot=self._snapshot.metadata,
            compact_index=self._log.window.placeholder.index,
            compact_term=self._log.window.placeholder.term,
            last_index=self._log.window.last.index,
            last_term=self._log.window.last.term,
        )

    def _maybe_cut(self) -> None:
        """Start a new segment if the current one is full.

        Without space for a new one, the current segment just grows (the write that called
        this already is durable), and the next write tries again.
        """
        if not self._wal.segment_full:
            return
        try:
            self._guard(lambda: self._wal.cut(self._state_record()))
        except StoreFullError as exc:
            if not self._cut_deferred:
                logger.warning(
                    "%s: no space for a new WAL segment; carrying on in the old: %s", self, exc
                )
            self._cut_deferred = True
            return
        if self._cut_deferred:
            logger.info("%s: new WAL segment started after the space came back", self)
            self._cut_deferred = False

    def _kept(self, snap: Snapshot) -> Snapshot:
        """``snap`` as held in memory: its data read from its (recorded) file when needed.

        Falls back to holding the bytes if the file cannot be opened (it is then read back
        whole on the next open anyway).
        """
        data: object = snap.data  # bytes, or what a parts-taking store was given
        if snap.is_empty() or not isinstance(data, bytes | SnapshotParts):
            return snap
        if not self._in_file:
            if isinstance(data, SnapshotParts):  # only given when takes_snapshot_parts
                return attrs.evolve(snap, data=data.to_bytes())
            return snap
        md = snap.metadata
        path = self._snapshotter.path_for(md.term, md.index)
        try:
            kept = FileSnapshotData(path, data_offset(len(data)), len(data), self.fs)
        except OSError as exc:
            logger.warning("%s: snapshot data kept in memory: cannot open %s: %s", self, path, exc)
            if isinstance(data, SnapshotParts):
                return attrs.evolve(snap, data=data.to_bytes())
            return snap
        if self.on_snapshot_kept is not None:
            self.on_snapshot_kept(data, kept)
        # raftlib types a snapshot's data as bytes but never looks inside (see snapdata).
        return attrs.evolve(snap, data=cast("bytes", kept))

    def _after_snapshot(self) -> None:
        def prune_and_release() -> None:
            self._snapshotter.prune(
                self._keep_snapshots, newest_index=self._snapshot.metadata.index
            )
            self._release()

        self._guard(prune_and_release)
        self._maybe_cut()

    def _release(self) -> None:
        """Release the WAL up to the compaction point, but not past the oldest kept snapshot."""
        upto = self._log.window.placeholder.index
        newest = self._snapshot.metadata.index
        kept = [f.index for f in self._snapshotter.files() if f.index <= newest]
        if kept:
            upto = min(upto, *kept)
        self._wal.release(upto)

    def __repr__(self) -> str:
        return f"RaftStore({str(self.directory)!r})"


def _recover_snapshot(log: RecoveredLog, snapshotter: Snapshotter, wal: Wal) -> Snapshot:
    """Load the snapshot the WAL's newest marker names, or fall back to an older usable one."""
    md = log.snapshot
    if md.index == 0:
        return Snapshot(metadata=md)
    try:
        snap = snapshotter.load(md.term, md.index)
        if snap.metadata != md:
            raise SnapshotCorruptError(
                snapshotter.path_for(md.term, md.index),
                f"metadata {snap.metadata} differs from the WAL marker {md}",
            )
    except SnapshotCorruptError as exc:
        logger.error("newest snapshot unusable: %s", exc)
        failure = exc
    else:
        return snap
    for f in snapshotter.files():
        if f.index >= md.index or not log.can_restore(f.index, f.term):
            continue
        try:
            snap = snapshotter.load(f.term, f.index)
        except SnapshotCorruptError as exc:
            logger.error("older snapshot unusable too: %s", exc)
            continue
        # Set the bad file aside before recording the fallback: a crash in between then finds the
        # newest snapshot missing and falls back again, where the other order would delete the
        # bad file as an orphan (its index is after the RESTORED marker) instead of keeping it.
        snapshotter.set_aside(md.term, md.index)
        record = SnapshotRecord(SnapshotKind.RESTORED, snap.metadata)
        wal.append((record,))
        log.apply(LocatedRecord(record, wal.segments[-1].path, 0))
        logger.warning(
            "fell back to the snapshot at index %d term %d; the WAL holds the entries after it",
            f.index,
            f.term,
        )
        return snap
    raise SnapshotCorruptError(
        failure.path,
        f"{failure.reason}, and no older snapshot file can replace it with the entries the WAL "
        "still holds",
    )


# -- checks and messages --

_FSYNC_ADVICE = (
    "the page cache may hold data the disk never got, so the process must exit; do not reopen "
    "this store in this process (a new process recovers from what is really on disk)"
)


def _fsync_failures(fs: FileSystem) -> dict[str, str]:
    """The stores on ``fs`` whose fsync failed in this process, by real path.

    A simulated disk is another machine, and a crashed one's successor another process.
    """
    if fs is OS:
        return _FSYNC_FAILED
    try:
        return _FSYNC_FAILED_ELSEWHERE.setdefault(fs, {})
    except TypeError:  # not weakly referenceable (a slotted wrapper): held for good
        return _FSYNC_FAILED_HELD.setdefault(fs, {})


def _fsync_failed(fs: FileSystem, root: Path, exc: OSError) -> StoreFsyncFailedError:
    """Remember that an fsync under ``root`` failed in this process; the error to raise."""
    _fsync_failures(fs).setdefault(fs.realpath(root), str(exc))
    return StoreFsyncFailedError(f"{root}: fsync failed ({exc}); {_FSYNC_ADVICE}")


def repair_hint(root: Path) -> str:
    """What an operator can do about a damaged WAL in data directory ``root``: the exact command.

    Added to the :class:`~kvapp.storage.errors.WalCorruptError` raised by
    :meth:`RaftStore.open`.
    """
    command = (
        f"python -m kvapp.storage.repair {shlex.quote(posixpath.normpath(root.absolute()))} --cut"
    )
    return (
        f"to keep this member's data, stop it and run `{command}`, which cuts the WAL before "
        "this record and loses what follows (see docs/storage.md); else replace the member"
    )


_KIND_NAMES = {
    "file": "regular file",
    "dir": "directory",
    "link": "dangling symbolic link",
    "other": "special file",
}


def check_layout(root: Path, fs: FileSystem = OS) -> None:
    """Check that what exists of data directory ``root`` has the right kinds of file.

    ``root``, ``root/wal`` and ``root/snap`` must be directories (or symbolic links to them)
    and ``root/LOCK`` a regular file, where they exist; missing ones are created by
    :meth:`RaftStore.open`. Without this check a misplaced file surfaces as a bare
    ``NotADirectoryError`` from deep inside the store.

    Raises:
        StorageLayoutError: one of them is the wrong kind of file.
    """
    expected = ((root, True), (root / "wal", True), (root / "snap", True), (root / "LOCK", False))
    for path, is_dir in expected:
        try:
            kind = fs.kind(path)
        except NotADirectoryError:
            raise StorageLayoutError(
                path, "a path component above it is not a directory; fix the data directory path"
            ) from None
        if kind is None:
            continue
        if is_dir and kind != "dir":
            raise StorageLayoutError(
                path,
                f"is a {_KIND_NAMES[kind]}, not a directory (a data directory holds the "
                "directories wal/ and snap/ and the file LOCK); move it away",
            )
        if not is_dir and kind != "file":
            raise StorageLayoutError(
                path,
                f"is a {_KIND_NAMES[kind]}, not the regular file the store locks; move it away",
            )


def _check_uint(value: object, what: str) -> None:
    if type(value) is not int or not 0 <= value < _U64:
        raise InvalidWriteError(f"{what} must be an int in 0..2**64-1, got {value!r:.40}")


def _check_hard_state(hs: HardState) -> None:
    """Refuse a hard state the WAL could not read back (fields must be unsigned 64-bit ints)."""
    if not isinstance(hs, HardState):
        raise InvalidWriteError(f"hard state must be a HardState, got {type(hs).__name__}")
    _check_uint(hs.term, "hard state term")
    _check_uint(hs.vote, "hard state vote")
    _check_uint(hs.commit, "hard state commit")


def _checked_data(data: object, what: str) -> bytes:
    """``data`` as ``bytes``: copied from a ``bytearray`` or ``memoryview``, else refused."""
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise InvalidWriteError(f"{what} must be bytes, got {type(data).__name__}")


def _checked_entry(e: object, i: int) -> Entry:
    """Entry ``e`` (``i``-th of a save) with bytes-like data as bytes and an int type as an enum.

    Raises:
        InvalidWriteError: ``e`` is not an entry, or a field cannot be stored.
    """
    if not isinstance(e, Entry):
        raise InvalidWriteError(f"entries[{i}] must be an Entry, got {type(e).__name__}")
    _check_uint(e.index, f"entries[{i}].index")
    _check_uint(e.term, f"entries[{i}] (index {e.index}).term")
    entry_type: object = e.type
    if type(entry_type) is not EntryType:
        if type(entry_type) is not int or entry_type not in _ENTRY_TYPE_VALUES:
            raise InvalidWriteError(
                f"entries[{i}] (index {e.index}).type must be an EntryType, got {entry_type!r:.40}"
            )
        entry_type = EntryType(entry_type)
    data = _checked_data(e.data, f"entries[{i}] (index {e.index}).data")
    if entry_type is e.type and data is e.data:
        return e
    return Entry(term=e.term, index=e.index, type=EntryType(entry_type), data=data)


_ENTRY_TYPE_VALUES = frozenset(int(t) for t in EntryType)


def _checked_entries(entries: Sequence[Entry]) -> Sequence[Entry]:
    """``entries`` if every field can be stored and read back as is, else a fixed copy.

    The common case costs one pass of type checks and no copy.

    Raises:
        InvalidWriteError: an entry cannot be stored (see :func:`_checked_entry`).
    """
    for i, e in enumerate(entries):
        if not (
            type(e) is Entry
            and type(e.term) is int
            and type(e.index) is int
            and 0 <= e.term < _U64
            and 0 <= e.index < _U64
            and type(e.type) is EntryType
            and type(e.data) is bytes
        ):
            return [*entries[:i], *(_checked_entry(x, i + k) for k, x in enumerate(entries[i:]))]
    return entries


def _crc_of(data: FileSnapshotData) -> int:
    crc = 0

    def add(chunk: bytes) -> None:
        nonlocal crc
        crc = zlib.crc32(chunk, crc)

    data.copy_range(0, len(data), add)
    return crc


def _checked_snapshot(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` (its data as bytes) if its file and WAL marker can be read back, else refuse.

    Raises:
        InvalidWriteError: the data is not bytes-like, or an index, term or node id is not an
            unsigned 64-bit integer, or ``auto_leave`` is not a bool.
    """
    if not isinstance(snapshot, Snapshot):
        raise InvalidWriteError(f"snapshot must be a Snapshot, got {type(snapshot).__name__}")
    md = snapshot.metadata
    _check_uint(md.index, "snapshot index")
    _check_uint(md.term, "snapshot term")
    cs = md.conf_state
    for field in ("voters", "learners", "voters_outgoing", "learners_next"):
        for node_id in getattr(cs, field):
            _check_uint(node_id, f"snapshot conf_state.{field} id")
    if type(cs.auto_leave) is not bool:
        raise InvalidWriteError(f"snapshot conf_state.auto_leave must be a bool: {cs.auto_leave!r}")
    given: object = snapshot.data
    if isinstance(given, SnapshotParts):
        return snapshot
    if isinstance(given, FileSnapshotData):
        # A snapshot received into a spool file (kvapp.transport.spool): the kernel copies it
        # into the snapshot file, and only its checksum is read here, a chunk at a time.
        parts = SnapshotParts()
        parts.add_range(given, 0, len(given), _crc_of(given))
        return attrs.evolve(snapshot, data=cast("bytes", parts))
    data = _checked_data(snapshot.data, "snapshot data")
    return snapshot if data is snapshot.data else attrs.evolve(snapshot, data=data)
