"""The storage contract raftlib reads from, and an in-memory implementation of it.

raftlib only *reads* storage. The application writes it (appending a Ready's entries, setting its
hard state, installing its snapshot) and tells raftlib via ``advance()``. ``MemoryStorage`` is what
tests and simulations use; a durable application implements :class:`Storage` over its own disk
format (kvapp's ``RaftStore`` is one) and can check itself with ``raftlib.testing``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from raftlib.errors import (
    CompactedError,
    RaftInvariantError,
    SnapshotOutOfDateError,
    UnavailableError,
)
from raftlib.types import (
    ENTRY_OVERHEAD,
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
)

if TYPE_CHECKING:
    from raftlib.rawnode import Ready  # rawnode imports config, which imports this module

_DATA = operator.attrgetter("data")

__all__ = [
    "EntryWindow",
    "MemoryStorage",
    "Storage",
    "check_snapshot_newer",
    "limit_size",
    "plan_snapshot",
]


def limit_size(entries: Sequence[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_size`` bytes, but never fewer than one entry.

    ``None`` means no limit. Sizes are counted as :func:`raftlib.types.entry_size`.
    """
    if max_size is None or len(entries) <= 1:
        return list(entries)
    size = len(entries[0].data) + ENTRY_OVERHEAD
    n = 1
    for n in range(1, len(entries)):
        size += len(entries[n].data) + ENTRY_OVERHEAD
        if size > max_size:
            break
    else:
        n = len(entries)
    return list(entries[:n])


def _limit_owned(entries: list[Entry], max_size: int | None) -> list[Entry]:
    """:func:`limit_size` of a list the caller owns: ``entries`` itself when it fits."""
    if max_size is None or len(entries) <= 1:
        return entries
    if sum(map(len, map(_DATA, entries))) + ENTRY_OVERHEAD * len(entries) <= max_size:
        return entries
    return limit_size(entries, max_size)


@runtime_checkable
class Storage(Protocol):
    """What raftlib needs to read of the persisted log.

    The log held by storage is a contiguous run of entries ``first_index() .. last_index()``
    following the latest snapshot (whose index is ``first_index() - 1``). Methods may raise
    :class:`~raftlib.errors.CompactedError` for indexes before the snapshot and
    :class:`~raftlib.errors.UnavailableError` for indexes after the last entry, as documented
    on each. raftlib calls them from inside ``step``/``ready``; they should not block for long.
    """

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the configuration of the latest snapshot (or bootstrap)."""
        ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, cut to ``max_size`` bytes but never fewer than one.

        Raises:
            CompactedError: ``lo`` is at or before the snapshot index.
            UnavailableError: storage holds no entries at all after the snapshot.
        """
        ...

    def term(self, index: int) -> int:
        """The term of entry ``index``; valid for ``first_index() - 1 <= index <= last_index()``.

        Raises:
            CompactedError: ``index`` is before the snapshot index.
            UnavailableError: ``index`` is after ``last_index()``.
        """
        ...

    def first_index(self) -> int:
        """The index of the first entry still available (the snapshot index plus one)."""
        ...

    def last_index(self) -> int:
        """The index of the last entry (the snapshot index if there are none after it)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot.

        Raises:
            SnapshotTemporarilyUnavailable: a snapshot is being prepared; raftlib retries later.
        """
        ...


class EntryWindow:
    """The in-memory run of log entries after a compaction point.

    ``MemoryStorage`` keeps its whole log in one; a durable ``Storage`` (kvapp's ``RaftStore``)
    keeps one as the index it answers raftlib's reads from, so both give the same answers.
    The first element is a placeholder carrying the compaction point's index and term (a
    snapshot's, or a later compaction's), so ``term()`` answers for that index too. Writes come
    in two steps, check then apply, so a durable store can validate, write its disk, and only
    then change memory.
    """

    __slots__ = ("_ents",)

    def __init__(self, entries: Sequence[Entry] | None = None) -> None:
        """A window holding ``entries``, whose first element is the placeholder (default: none)."""
        self._ents: list[Entry] = list(entries) if entries else [Entry()]

    @property
    def placeholder(self) -> Entry:
        """The compaction point: index and term of the entry before the first one held."""
        return self._ents[0]

    @property
    def last(self) -> Entry:
        """The last entry (the placeholder when the window is empty)."""
        return self._ents[-1]

    def first_index(self) -> int:
        """See :meth:`Storage.first_index`."""
        return self._ents[0].index + 1

    def last_index(self) -> int:
        """See :meth:`Storage.last_index`."""
        return self._ents[0].index + len(self._ents) - 1

    def term(self, index: int) -> int:
        """See :meth:`Storage.term`."""
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(f"term of compacted index {index} (compacted at {offset})")
        if index - offset >= len(self._ents):
            raise UnavailableError(f"term of index {index} beyond last {self.last_index()}")
        return self._ents[index - offset].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """See :meth:`Storage.entries`."""
        ents = self._ents
        offset = ents[0].index
        if lo <= offset:
            raise CompactedError(f"requested index {lo} is compacted (first is {offset + 1})")
        last = offset + len(ents) - 1  # self.last_index()
        if hi > last + 1:
            raise UnavailableError(f"entries [{lo}, {hi}) beyond last index {last}")
        if len(ents) == 1:
            raise UnavailableError("no entries after the compaction point")
        out = ents[lo - offset : hi - offset]
        return out if len(out) <= 1 else _limit_owned(out, max_size)

    def check_append(self, entries: Sequence[Entry]) -> list[Entry]:
        """The part of ``entries`` an append would write (compacted ones skipped); may be empty.

        Raises:
            RaftInvariantError: the entries are not consecutive, or would leave a gap.
        """
        if not entries:
            return []
        lo = entries[0].index
        hi = entries[-1].index
        if hi - lo != len(entries) - 1:
            raise RaftInvariantError(f"entries {lo}..{hi} are not consecutive")
        placeholder = self._ents[0].index
        first = placeholder + 1  # self.first_index()
        if hi < first:
            return []
        ents = list(entries[first - lo :]) if first > lo else list(entries)
        last = placeholder + len(self._ents) - 1  # self.last_index()
        if ents[0].index > last + 1:
            raise RaftInvariantError(
                f"missing log entry: last index {last}, appending at {ents[0].index}"
            )
        return ents

    def apply_append(self, checked: Sequence[Entry]) -> None:
        """Append entries returned by :meth:`check_append`, replacing any conflicting suffix."""
        if checked:
            del self._ents[checked[0].index - self._ents[0].index :]
            self._ents.extend(checked)

    def append(self, entries: Sequence[Entry]) -> None:
        """Check and apply an append in one step.

        :meth:`check_append` then :meth:`apply_append`, in one pass without copying ``entries``.
        """
        if not entries:
            return
        lo = entries[0].index
        hi = entries[-1].index
        if hi - lo != len(entries) - 1:
            raise RaftInvariantError(f"entries {lo}..{hi} are not consecutive")
        ents = self._ents
        placeholder = ents[0].index
        if hi <= placeholder:
            return  # all compacted
        if lo <= placeholder:
            entries = entries[placeholder + 1 - lo :]
            lo = placeholder + 1
        last = placeholder + len(ents) - 1
        if lo > last + 1:
            raise RaftInvariantError(f"missing log entry: last index {last}, appending at {lo}")
        del ents[lo - placeholder :]
        ents.extend(entries)

    def check_compact(self, compact_index: int) -> Entry:
        """The entry that becomes the new placeholder if compacted at ``compact_index``.

        Raises:
            CompactedError: ``compact_index`` is at or before the current placeholder.
            ValueError: ``compact_index`` is after the last entry.
        """
        offset = self._ents[0].index
        if compact_index <= offset:
            raise CompactedError(f"index {compact_index} is already compacted (at {offset})")
        if compact_index > self.last_index():
            raise ValueError(
                f"compact index {compact_index} is after last index {self.last_index()}"
            )
        return self._ents[compact_index - offset]

    def apply_compact(self, kept: Entry) -> None:
        """Drop entries up to ``kept`` (from :meth:`check_compact`); it becomes the placeholder."""
        i = kept.index - self._ents[0].index
        self._ents = [Entry(term=kept.term, index=kept.index), *self._ents[i + 1 :]]

    def compact(self, compact_index: int) -> None:
        """Check and apply a compaction in one step."""
        self.apply_compact(self.check_compact(compact_index))

    def replace(self, entries: Sequence[Entry]) -> None:
        """Hold ``entries`` instead of the held entries at the same indexes.

        For a storage that keeps some entries' data elsewhere (on disk, say) and holds stand-ins
        here; each must have the index, term and type of the entry it replaces.

        Raises:
            ValueError: an entry is not held, or differs in term or type from the held one.
        """
        ents = self._ents
        offset = ents[0].index
        for e in entries:
            i = e.index - offset
            if not 0 < i < len(ents):
                raise ValueError(f"entry {e.index} is not held")
            held = ents[i]
            if held.term != e.term or held.type != e.type:
                raise ValueError(f"entry {e.index} differs from the held one in term or type")
            ents[i] = e

    def reset(self, index: int, term: int) -> None:
        """Discard everything: the window restarts after ``(index, term)`` (a snapshot)."""
        self._ents = [Entry(term=term, index=index)]


class MemoryStorage:
    """A :class:`Storage` kept entirely in memory, with the write side the application uses.

    The log is an :class:`EntryWindow` whose placeholder is the snapshot (or a later compaction
    point). Not thread-safe.
    """

    def __init__(self, conf_state: ConfState | None = None) -> None:
        """Create an empty log.

        ``conf_state`` sets the starting configuration, as if restored from an empty snapshot
        (the alternative to ``RawNode.bootstrap``).
        """
        self._hard_state = HardState()
        self._snapshot = Snapshot(metadata=SnapshotMetadata(conf_state=conf_state or ConfState()))
        self._log = EntryWindow()

    # -- read side (the Storage protocol) --

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See :meth:`Storage.initial_state`."""
        return self._hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """See :meth:`Storage.entries`."""
        return self._log.entries(lo, hi, max_size)

    def term(self, index: int) -> int:
        """See :meth:`Storage.term`."""
        return self._log.term(index)

    def first_index(self) -> int:
        """See :meth:`Storage.first_index`."""
        return self._log.first_index()

    def last_index(self) -> int:
        """See :meth:`Storage.last_index`."""
        return self._log.last_index()

    def snapshot(self) -> Snapshot:
        """See :meth:`Storage.snapshot`."""
        return self._snapshot

    # -- write side (used by the application) --

    @property
    def hard_state(self) -> HardState:
        """The hard state last set."""
        return self._hard_state

    def set_hard_state(self, hard_state: HardState) -> None:
        """Record the hard state of a Ready."""
        self._hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the log with ``snapshot``: every entry is discarded.

        Raises:
            SnapshotOutOfDateError: ``snapshot`` is not newer than the current one.
        """
        check_snapshot_newer(self._snapshot, snapshot.metadata.index)
        self._snapshot = snapshot
        self._log.reset(snapshot.metadata.index, snapshot.metadata.term)

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """Make a snapshot at ``index`` (applied state ``data``), keeping the entries.

        Use :meth:`compact` afterwards to drop the entries it covers.

        Raises:
            SnapshotOutOfDateError: ``index`` is not after the current snapshot.
            CompactedError: the entry at ``index`` was already compacted away.
            ValueError: ``index`` is after the last entry.
        """
        self._snapshot = plan_snapshot(self._snapshot, self._log, index, conf_state, data)
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Discard entries up to and including ``compact_index``.

        The application must not compact past its applied index, nor past its latest snapshot:
        a follower that needs the discarded entries can only be sent that snapshot.

        Raises:
            CompactedError: ``compact_index`` is at or before the current first placeholder.
            ValueError: ``compact_index`` is after the last entry.
        """
        self._log.compact(compact_index)

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``, truncating any existing entries they conflict with.

        Entries already compacted are skipped. The first new entry must follow an existing one.

        Raises:
            RaftInvariantError: the entries would leave a gap in the log, or their indexes are
                not consecutive.
        """
        self._log.append(entries)

    def save_ready(self, rd: Ready) -> None:
        """Persist what ``rd`` asks to persist (step 2 of ``docs/ready.md``), in order.

        Installs ``rd.snapshot`` if set, appends ``rd.entries``, then records ``rd.hard_state``
        if set. This is the write :class:`raftlib.node.Node` calls for every Ready (off the event
        loop); a durable storage offers the same method and fsyncs when ``rd.must_sync``.

        Raises:
            SnapshotOutOfDateError: ``rd.snapshot`` is not newer than the current snapshot.
            RaftInvariantError: ``rd.entries`` would leave a gap in the log.
        """
        if rd.snapshot is not None:
            self.apply_snapshot(rd.snapshot)
        if rd.entries:
            self.append(rd.entries)
        if rd.hard_state is not None:
            self.set_hard_state(rd.hard_state)


def check_snapshot_newer(current: Snapshot, index: int) -> None:
    """Raise ``SnapshotOutOfDateError`` unless a snapshot at ``index`` is newer than ``current``."""
    if current.metadata.index >= index:
        raise SnapshotOutOfDateError(
            f"snapshot at {index} is not newer than {current.metadata.index}"
        )


def plan_snapshot(
    current: Snapshot, log: EntryWindow, index: int, conf_state: ConfState | None, data: bytes
) -> Snapshot:
    """The snapshot ``create_snapshot(index, conf_state, data)`` makes, validated, unapplied.

    ``conf_state`` ``None`` keeps ``current``'s configuration.

    Raises:
        SnapshotOutOfDateError: ``index`` is not after ``current``.
        ValueError: ``index`` is after the last entry.
        CompactedError: the entry at ``index`` was already compacted away.
    """
    check_snapshot_newer(current, index)
    if index > log.last_index():
        raise ValueError(f"snapshot index {index} is after last index {log.last_index()}")
    cs = conf_state if conf_state is not None else current.metadata.conf_state
    return Snapshot(
        data=data,
        metadata=SnapshotMetadata(conf_state=cs, index=index, term=log.term(index)),
    )
