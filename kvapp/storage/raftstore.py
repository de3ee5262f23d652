"""A raftlib :class:`~raftlib.storage.Storage` that lives on disk: WAL + snapshot files.

:class:`RaftStore` answers raftlib's reads from memory (an index of the entries since the last
compaction, exactly like :class:`~raftlib.storage.MemoryStorage`) and makes every write durable
before it returns: one WAL record, one ``write``, one ``fdatasync``. Given the same operations it
gives the same answers as ``MemoryStorage``, before and after a restart; a hypothesis test checks
that.

Driving it from a Ready, in the order etcd's raftexample uses::

    if not rd.snapshot.is_empty():
        store.apply_snapshot(rd.snapshot)          # snapshot file, then WAL marker
    store.save(rd.hard_state, rd.entries)          # one WAL batch, one fsync
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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import attrs

from kvapp.storage.errors import (
    SnapshotCorruptError,
    StoreFailedError,
    WalCorruptError,
)
from kvapp.storage.fileutil import DirLock, ensure_dir
from kvapp.storage.snap import Snapshotter
from kvapp.storage.wal import (
    DEFAULT_SEGMENT_SIZE,
    BatchRecord,
    CompactRecord,
    LocatedRecord,
    MetadataRecord,
    Record,
    SnapshotKind,
    SnapshotRecord,
    StateRecord,
    Wal,
    WalMetadata,
)
from raftlib.storage import EntryWindow, check_snapshot_newer, plan_snapshot
from raftlib.types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata

__all__ = ["DEFAULT_KEEP_SNAPSHOTS", "RaftStore", "RecoveredLog", "replay_records"]

logger = logging.getLogger(__name__)

DEFAULT_KEEP_SNAPSHOTS = 5
"""Snapshot files kept; the WAL is kept back to the oldest of them so any can be fallen back to."""

_T = TypeVar("_T")

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
            self._append(rec.entries, bad)
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

    def _append(self, entries: Sequence[Entry], bad: Callable[[str], WalCorruptError]) -> None:
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
            self.base = x
        else:
            del self.log[x - self.base :]
            self.log.extend(entries)

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
            )

    def live_entries(self) -> list[Entry]:
        """The entries after the compaction point, as ``MemoryStorage`` would hold them."""
        return self.log[self.compact_index + 1 - self.base :]


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
    adds the file's own). A write validates its arguments before writing anything, so one that
    raises a raftlib or ``ValueError`` exception changed nothing. If the disk fails, the write
    raises :class:`~kvapp.storage.errors.StoreFailedError` and so does every later write: what
    reached the disk is unknown, so the process should reopen the store (etcd exits).

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
    ) -> None:
        """Use :meth:`open`."""
        self.directory = directory
        self._lock = lock
        self._wal = wal
        self._snapshotter = snapshotter
        self._hard_state = hard_state
        self._snapshot = snapshot
        self._log = EntryWindow(entries)
        self._keep_snapshots = keep_snapshots
        self._failure: BaseException | None = None
        self._closed = False

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        cluster_id: int,
        member_id: int,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        preallocate: bool = True,
        fsync: bool = True,
        conf_state: ConfState | None = None,
    ) -> RaftStore:
        """Open (or create) the store in ``directory`` and recover its state.

        A missing or empty directory gives an empty store, as ``MemoryStorage(conf_state)``.

        Args:
            directory: the data directory; created if missing.
            cluster_id: this cluster's id; an existing WAL must carry the same.
            member_id: this member's id; an existing WAL must carry the same.
            segment_size: WAL segment size (default 64 MiB).
            keep_snapshots: how many snapshot files to keep (at least 1).
            preallocate: reserve each WAL segment's space up front (faster fsyncs on ext4).
            fsync: ``False`` skips every fsync. For tests and benchmarks only: a power loss can
                then lose acknowledged writes.
            conf_state: the starting configuration of a *new* store, as if restored from an
                empty snapshot (the alternative to ``RawNode.bootstrap``). Recorded when the
                store is created; ignored when it already exists, like etcd's initial cluster.

        Raises:
            StoreLockedError: another open store holds ``directory``.
            WalIdentityError: the WAL belongs to another cluster or member.
            WalCorruptError: the WAL is damaged (other than a torn tail, which is dropped), or
                snapshot files exist without a WAL.
            SnapshotCorruptError: the newest snapshot is unusable and no older one can replace
                it with the entries the WAL holds.
            ValueError: ``keep_snapshots`` is less than 1.
        """
        if keep_snapshots < 1:
            raise ValueError(f"keep_snapshots must be at least 1, got {keep_snapshots}")
        root = Path(directory)
        ensure_dir(root, fsync=fsync)
        lock = DirLock(root / "LOCK")
        lock.acquire()
        try:
            snapshotter = Snapshotter(root / "snap", fsync=fsync)
            wal_dir = root / "wal"
            metadata = WalMetadata(cluster_id, member_id)
            if not Wal.exists(wal_dir):
                if snapshotter.files():
                    raise WalCorruptError(
                        wal_dir, 0, "no WAL segments but snapshot files exist: the WAL was lost"
                    )
                initial = Snapshot(metadata=SnapshotMetadata(conf_state=conf_state or ConfState()))
                wal = Wal.create(
                    wal_dir,
                    metadata,
                    attrs.evolve(_EMPTY_STATE, snapshot=initial.metadata),
                    segment_size=segment_size,
                    preallocate=preallocate,
                    fsync=fsync,
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
                )
            wal, contents = Wal.open(
                wal_dir,
                metadata=metadata,
                segment_size=segment_size,
                preallocate=preallocate,
                fsync=fsync,
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
        return cls(
            directory=root,
            lock=lock,
            wal=wal,
            snapshotter=snapshotter,
            hard_state=log.hard_state,
            snapshot=snapshot,
            entries=entries,
            keep_snapshots=keep_snapshots,
        )

    # -- read side (the Storage protocol) --

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See :meth:`raftlib.storage.Storage.initial_state`."""
        return self._hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """See :meth:`raftlib.storage.Storage.entries`."""
        return self._log.entries(lo, hi, max_size)

    def term(self, index: int) -> int:
        """See :meth:`raftlib.storage.Storage.term`."""
        return self._log.term(index)

    def first_index(self) -> int:
        """See :meth:`raftlib.storage.Storage.first_index`."""
        return self._log.first_index()

    def last_index(self) -> int:
        """See :meth:`raftlib.storage.Storage.last_index`."""
        return self._log.last_index()

    def snapshot(self) -> Snapshot:
        """See :meth:`raftlib.storage.Storage.snapshot`. Held in memory; never reads the disk."""
        return self._snapshot

    # -- write side --

    @property
    def hard_state(self) -> HardState:
        """The hard state last saved."""
        return self._hard_state

    def save(self, hard_state: HardState | None = None, entries: Sequence[Entry] = ()) -> None:
        """Persist a Ready's hard state and entries as one WAL record with one fsync.

        Entries follow ``MemoryStorage.append``: those already compacted are skipped, the rest
        replace any existing entries from their first index on. Either all of it is recovered
        after a crash, or (if the crash came before this returned) none of it. Nothing is written
        if there is nothing new.

        Raises:
            RaftInvariantError: ``entries`` are not consecutive indexes, or would leave a gap
                after the last index (as ``MemoryStorage.append``).
            StoreFailedError: the disk write failed (now or earlier).
        """
        ents = self._log.check_append(entries)
        if not ents and (hard_state is None or hard_state == self._hard_state):
            return
        self._write(BatchRecord(hard_state, tuple(ents)))
        if hard_state is not None:
            self._hard_state = hard_state
        self._log.apply_append(ents)
        self._maybe_cut()

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

        Raises:
            SnapshotOutOfDateError: ``snapshot`` is not newer than the current one.
            StoreFailedError: a disk write failed (now or earlier).
        """
        md = snapshot.metadata
        check_snapshot_newer(self._snapshot, md.index)
        self._guard(lambda: self._snapshotter.save(snapshot))
        self._write(SnapshotRecord(SnapshotKind.INSTALLED, md))
        self._snapshot = snapshot
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
            SnapshotOutOfDateError: ``index`` is not after the current snapshot.
            CompactedError: ``index`` is before the first entry's predecessor, so its term is
                gone.
            ValueError: ``index`` is after the last entry.
            StoreFailedError: a disk write failed (now or earlier).
        """
        snap = plan_snapshot(self._snapshot, self._log, index, conf_state, data)
        self._guard(lambda: self._snapshotter.save(snap))
        self._write(SnapshotRecord(SnapshotKind.CREATED, snap.metadata))
        self._snapshot = snap
        self._after_snapshot()
        return snap

    def compact(self, compact_index: int) -> None:
        """Discard entries up to and including ``compact_index``; release WAL segments.

        The application must not compact past its applied index.

        Raises:
            CompactedError: ``compact_index`` is not after the current first entry's predecessor.
            ValueError: ``compact_index`` is after the last entry.
            StoreFailedError: a disk write failed (now or earlier).
        """
        kept = self._log.check_compact(compact_index)
        self._write(CompactRecord(kept.index, kept.term))
        self._log.apply_compact(kept)
        self._guard(self._release)

    def close(self) -> None:
        """Close the WAL and release the directory lock (idempotent)."""
        if not self._closed:
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
        if self._closed:
            raise ValueError("store is closed")
        if self._failure is not None:
            raise StoreFailedError(
                f"{self.directory}: an earlier write failed ({self._failure}); reopen the store"
            ) from self._failure
        try:
            return op()
        except OSError as exc:
            self._failure = exc
            logger.exception("%s: disk write failed; the store refuses further writes", self)
            raise StoreFailedError(f"{self.directory}: disk write failed: {exc}") from exc

    def _write(self, record: Record) -> None:
        self._guard(lambda: self._wal.append((record,)))

    def _state_record(self) -> StateRecord:
        return StateRecord(
            hard_state=self._hard_state,
            snapshot=self._snapshot.metadata,
            compact_index=self._log.placeholder.index,
            compact_term=self._log.placeholder.term,
            last_index=self._log.last.index,
            last_term=self._log.last.term,
        )

    def _maybe_cut(self) -> None:
        if self._wal.segment_full:
            self._guard(lambda: self._wal.cut(self._state_record()))

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
        upto = self._log.placeholder.index
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
        record = SnapshotRecord(SnapshotKind.RESTORED, snap.metadata)
        wal.append((record,))
        log.apply(LocatedRecord(record, wal.segments[-1].path, 0))
        snapshotter.set_aside(md.term, md.index)
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
