"""The storage contract raftlib reads from, and an in-memory implementation of it.

raftlib only *reads* storage. The application writes it (appending a Ready's entries, setting its
hard state, installing its snapshot) and tells raftlib via ``advance()``. ``MemoryStorage`` is what
tests and simulations use; a durable application implements :class:`Storage` over its own disk
format (kvapp's ``RaftStore`` is one) and can check itself with ``raftlib.testing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

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

__all__ = ["MemoryStorage", "Storage", "limit_size"]


def limit_size(entries: Sequence[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of ``entries`` within ``max_size`` bytes, but never fewer than one entry.

    ``None`` means no limit. Sizes are counted as :func:`raftlib.types.entry_size`.
    """
    if max_size is None or not entries:
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


class MemoryStorage:
    """A :class:`Storage` kept entirely in memory, with the write side the application uses.

    ``_ents[0]`` is a placeholder carrying the snapshot's index and term, so ``term()`` answers
    for the snapshot index too. Not thread-safe.
    """

    def __init__(self, conf_state: ConfState | None = None) -> None:
        """Create an empty log.

        ``conf_state`` sets the starting configuration, as if restored from an empty snapshot
        (the alternative to ``RawNode.bootstrap``).
        """
        self._hard_state = HardState()
        self._snapshot = Snapshot(metadata=SnapshotMetadata(conf_state=conf_state or ConfState()))
        self._ents: list[Entry] = [Entry()]

    # -- read side (the Storage protocol) --

    def initial_state(self) -> tuple[HardState, ConfState]:
        """See :meth:`Storage.initial_state`."""
        return self._hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """See :meth:`Storage.entries`."""
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(f"requested index {lo} is compacted (first is {offset + 1})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries [{lo}, {hi}) beyond last index {self.last_index()}")
        if len(self._ents) == 1:
            raise UnavailableError("no entries after the snapshot")
        return limit_size(self._ents[lo - offset : hi - offset], max_size)

    def term(self, index: int) -> int:
        """See :meth:`Storage.term`."""
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(f"term of compacted index {index} (snapshot at {offset})")
        if index - offset >= len(self._ents):
            raise UnavailableError(f"term of index {index} beyond last {self.last_index()}")
        return self._ents[index - offset].term

    def first_index(self) -> int:
        """See :meth:`Storage.first_index`."""
        return self._ents[0].index + 1

    def last_index(self) -> int:
        """See :meth:`Storage.last_index`."""
        return self._ents[0].index + len(self._ents) - 1

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
        if self._snapshot.metadata.index >= snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {snapshot.metadata.index} is not newer than "
                f"{self._snapshot.metadata.index}"
            )
        self._snapshot = snapshot
        self._ents = [Entry(term=snapshot.metadata.term, index=snapshot.metadata.index)]

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """Make a snapshot at ``index`` (applied state ``data``), keeping the entries.

        Use :meth:`compact` afterwards to drop the entries it covers.

        Raises:
            SnapshotOutOfDateError: ``index`` is not after the current snapshot.
            CompactedError: the entry at ``index`` was already compacted away.
            ValueError: ``index`` is after the last entry.
        """
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than {self._snapshot.metadata.index}"
            )
        if index > self.last_index():
            raise ValueError(f"snapshot index {index} is after last index {self.last_index()}")
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(f"snapshot index {index} is compacted (log starts at {offset})")
        cs = conf_state if conf_state is not None else self._snapshot.metadata.conf_state
        self._snapshot = Snapshot(
            data=data,
            metadata=SnapshotMetadata(
                conf_state=cs, index=index, term=self._ents[index - offset].term
            ),
        )
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Discard entries up to and including ``compact_index``.

        The application must not compact past its applied index, nor past its latest snapshot:
        a follower that needs the discarded entries can only be sent that snapshot.

        Raises:
            CompactedError: ``compact_index`` is at or before the current first placeholder.
            ValueError: ``compact_index`` is after the last entry.
        """
        offset = self._ents[0].index
        if compact_index <= offset:
            raise CompactedError(f"index {compact_index} is already compacted (at {offset})")
        if compact_index > self.last_index():
            raise ValueError(
                f"compact index {compact_index} is after last index {self.last_index()}"
            )
        i = compact_index - offset
        kept = self._ents[i]
        self._ents = [Entry(term=kept.term, index=kept.index), *self._ents[i + 1 :]]

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``, truncating any existing entries they conflict with.

        Entries already compacted are skipped. The first new entry must follow an existing one.

        Raises:
            RaftInvariantError: the entries would leave a gap in the log, or their indexes are
                not consecutive.
        """
        if not entries:
            return
        if entries[-1].index - entries[0].index != len(entries) - 1:
            raise RaftInvariantError(
                f"entries {entries[0].index}..{entries[-1].index} are not consecutive"
            )
        first = self.first_index()
        last = entries[0].index + len(entries) - 1
        if last < first:
            return
        if first > entries[0].index:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self._ents[0].index
        if len(self._ents) > offset:
            del self._ents[offset:]
            self._ents.extend(entries)
        elif len(self._ents) == offset:
            self._ents.extend(entries)
        else:
            raise RaftInvariantError(
                f"missing log entry: last index {self.last_index()}, "
                f"appending at {entries[0].index}"
            )
