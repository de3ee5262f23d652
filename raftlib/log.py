"""The Raft log: storage's durable prefix plus the unstable tail, with commit and apply cursors.

Internal. Invariant: ``applied <= committed <= last_index()``; ``committed`` never decreases.
"""

from __future__ import annotations

from collections.abc import Sequence

from raftlib.errors import (
    CompactedError,
    RaftInvariantError,
    StorageError,
    UnavailableError,
)
from raftlib.log_unstable import Unstable
from raftlib.storage import Storage, _limit_owned
from raftlib.types import Entry, Snapshot


class RaftLog:
    """Log entries by index across stable storage and the unstable tail."""

    __slots__ = (
        "applied",
        "committed",
        "max_applying_size",
        "replaced_from",
        "storage",
        "unstable",
    )

    def __init__(self, storage: Storage, max_applying_size: int | None) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1
        self.max_applying_size = max_applying_size
        self.replaced_from = 0
        """The first index whose entry :meth:`maybe_append` replaced by a conflicting one; its
        one caller reads it and resets it to 0 after every call (0: none replaced)."""

    def __repr__(self) -> str:
        return (
            f"committed={self.committed} applied={self.applied} "
            f"unstable.offset={self.unstable.offset} unstable.len={len(self.unstable.entries)}"
        )

    # -- index bounds --

    # The index lookups below inline Unstable.maybe_first_index/maybe_last_index/maybe_term:
    # they run several times per message on the hot path.

    def first_index(self) -> int:
        """The first index available (from a pending snapshot, else storage)."""
        snap = self.unstable.snapshot
        if snap is not None:
            return snap.metadata.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        """The last index of the log.

        The unstable tail follows the last entry storage holds (or the pending snapshot), so
        storage is not asked: it holds exactly what was handed out and confirmed by ``advance``.
        """
        u = self.unstable
        return u.offset + len(u.entries) - 1

    def last_term(self) -> int:
        """The term of the last entry."""
        return self.term(self.last_index())

    def persisted_index(self) -> int:
        """The last index the application has confirmed durable (0 while a snapshot is pending)."""
        if self.unstable.snapshot is not None:
            return 0
        return self.unstable.offset - 1

    # -- terms --

    def term(self, index: int, first: int | None = None) -> int:
        """The term of entry ``index``.

        ``first`` is :meth:`first_index`, if the caller already has it (saves asking storage).

        Raises:
            CompactedError: ``index`` is before the first available entry's predecessor.
            UnavailableError: ``index`` is after the last entry.
        """
        u = self.unstable
        i = index - u.offset
        if i >= 0:
            if i < len(u.entries):
                return u.entries[i].term
            raise UnavailableError(
                f"index {index} is after last index {u.offset + len(u.entries) - 1}"
            )
        if i == -1 and u.prev_term >= 0:
            return u.prev_term  # the last entry storage holds, or the pending snapshot's
        snap = u.snapshot
        if first is not None:
            dummy = first - 1
        elif snap is not None:
            dummy = snap.metadata.index
        else:
            dummy = self.storage.first_index() - 1
        if index < dummy:
            raise CompactedError(f"index {index} is compacted (first index {dummy + 1})")
        t = self.storage.term(index)
        if i == -1:
            u.prev_term = t
        return t

    def zero_term(self, index: int) -> int:
        """The term of ``index``, or 0 when it is out of bounds."""
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def match_term(self, index: int, term: int) -> bool:
        """Whether the log has an entry at ``index`` with ``term``."""
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a log ending at ``(last_index, term)`` is at least as up-to-date as ours.

        Paper §5.4.1: compare the last terms, then the lengths.
        """
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest ``(i, t)`` with ``i <= index`` and ``t <= term`` in our log.

        Used for fast back-off: every entry after the result may be skipped when probing. An index
        whose term is unknown (compacted) is returned with term 0.
        """
        while index > 0:
            try:
                our = self.term(index)
            except StorageError:
                return index, 0
            if our <= term:
                return index, our
            index -= 1
        return 0, 0

    # -- mutation --

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: Sequence[Entry]
    ) -> int | None:
        """Append ``ents`` after ``(index, log_term)`` if the log matches there (paper §5.3).

        Returns the index of the last new entry, or None on mismatch. Conflicting entries are
        truncated; entries already present are not rewritten.
        """
        # match_term, find_conflict and commit_to, sharing one last_index() lookup, with the
        # usual cases of term() inlined: in the unstable tail, or the entry just before it.
        u = self.unstable
        off = u.offset
        tail = u.entries
        last = off + len(tail) - 1
        if index > last:
            return None
        i = index - off
        if i >= 0:
            t = tail[i].term
        elif i == -1 and u.prev_term >= 0:
            t = u.prev_term
        else:
            try:
                t = self.term(index)
            except (CompactedError, UnavailableError):
                return None
        if t != log_term:
            return None
        last_new = index + len(ents)
        for e in ents:
            # An entry past our last index extends the log (no term lookup needed to know).
            if e.index > last or not self._match_term(e.index, e.term):
                ci = e.index
                if ci <= self.committed:
                    raise RaftInvariantError(
                        f"entry {ci} conflicts with committed entry (committed {self.committed})"
                    )
                if ci == last + 1:  # self.append(...): they follow our last entry, in the tail
                    new = ents[ci - index - 1 :]
                    tail.extend(new)
                    last += len(new)
                else:
                    self.replaced_from = ci
                    last = self.append(ents[ci - index - 1 :])
                break
        commit = committed if committed < last_new else last_new
        if commit > self.committed:
            if last < commit:
                raise RaftInvariantError(
                    f"commit {commit} is out of range [last index {last}]: "
                    "was the log corrupted, truncated or lost?"
                )
            self.committed = commit
        return last_new

    def _match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def append(self, ents: Sequence[Entry]) -> int:
        """Append ``ents`` (truncating any conflicting suffix); returns the new last index."""
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise RaftInvariantError(
                f"append after {after} is out of range (committed {self.committed})"
            )
        u = self.unstable
        u.truncate_and_append(ents)
        return u.offset + len(u.entries) - 1

    def commit_to(self, index: int) -> None:
        """Advance the commit index to ``index`` (never backwards)."""
        if index > self.committed:
            if self.last_index() < index:
                raise RaftInvariantError(
                    f"commit {index} is out of range [last index {self.last_index()}]: "
                    "was the log corrupted, truncated or lost?"
                )
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit ``index`` if it holds an entry of ``term`` (paper §5.4.2, Figure 8)."""
        if index <= self.committed:
            return False
        # zero_term and commit_to, sharing one last_index() lookup, the usual cases of term()
        # inlined as in maybe_append.
        u = self.unstable
        off = u.offset
        tail = u.entries
        last = off + len(tail) - 1
        i = index - off
        if 0 <= i < len(tail):
            t = tail[i].term
        elif i == -1 and u.prev_term >= 0:
            t = u.prev_term
        else:
            try:
                t = self.term(index)
            except (CompactedError, UnavailableError):
                t = 0
        if t != term:
            return False
        if last < index:
            raise RaftInvariantError(
                f"commit {index} is out of range [last index {last}]: "
                "was the log corrupted, truncated or lost?"
            )
        self.committed = index
        return True

    def applied_to(self, index: int) -> None:
        """Record that entries up to ``index`` were applied."""
        if index == 0:
            return
        if self.committed < index or index < self.applied:
            raise RaftInvariantError(
                f"applied {index} is out of range [prev applied {self.applied}, "
                f"committed {self.committed}]"
            )
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to ``(index, term)`` are durable."""
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        """The snapshot at ``index`` is durable."""
        self.unstable.stable_snap_to(index)

    def restore(self, snap: Snapshot) -> None:
        """Replace the log with ``snap`` (which is committed by definition)."""
        self.committed = snap.metadata.index
        self.unstable.restore(snap)

    # -- reads --

    def unstable_entries(self) -> list[Entry]:
        """Entries not yet handed out for persistence."""
        return list(self.unstable.entries)

    def has_next_committed_entries(self) -> bool:
        """Whether committed entries await application."""
        if self.committed <= self.applied or self.unstable.snapshot is not None:
            return False
        return self.committed >= self.storage.first_index()

    def next_committed_entries(self) -> list[Entry]:
        """Committed entries not yet applied, up to ``max_applying_size`` bytes."""
        u = self.unstable
        committed = self.committed
        if u.snapshot is not None or committed <= self.applied:
            return []
        if committed < u.offset:
            # Usually all in storage, from applied + 1 on: ask for them directly. Storage raises
            # CompactedError if it no longer has the first of them; then start at its first.
            try:
                return self.storage.entries(self.applied + 1, committed + 1, self.max_applying_size)
            except CompactedError:
                pass
        first = self.storage.first_index()
        lo = max(self.applied + 1, first)
        if committed < lo:
            return []
        return self._slice(
            lo, committed + 1, self.max_applying_size, first, u.offset + len(u.entries) - 1
        )

    def snapshot(self) -> Snapshot:
        """The pending snapshot, else storage's."""
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def entries(
        self, index: int, max_size: int | None, last: int | None = None, first: int | None = None
    ) -> list[Entry]:
        """Entries from ``index`` to the end, cut to ``max_size`` bytes (at least one).

        ``last`` and ``first`` are :meth:`last_index` and :meth:`first_index`, if the caller
        already has them.
        """
        if last is None:
            last = self.last_index()
        if index > last:
            return []
        return self._slice(
            index, last + 1, max_size, self.first_index() if first is None else first, last
        )

    def slice(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        """Entries ``[lo, hi)`` across storage and the unstable tail.

        Raises:
            CompactedError: ``lo`` is before the first available entry.
        """
        return self._slice(lo, hi, max_size, self.first_index(), self.last_index())

    def _slice(self, lo: int, hi: int, max_size: int | None, first: int, last: int) -> list[Entry]:
        """:meth:`slice`, given the current first and last index."""
        if lo > hi:
            raise RaftInvariantError(f"invalid slice {lo} > {hi}")
        if lo < first:
            raise CompactedError(f"slice from {lo} is compacted (first index {first})")
        if hi > last + 1:
            raise RaftInvariantError(f"slice[{lo},{hi}) out of bound last {last}")
        if lo == hi:
            return []
        off = self.unstable.offset
        if lo >= off:
            return _limit_owned(self.unstable.slice(lo, hi), max_size)
        ents = self.storage.entries(lo, min(hi, off), max_size)
        if hi <= off or len(ents) < min(hi, off) - lo:
            return ents
        ents.extend(self.unstable.slice(off, hi))
        return _limit_owned(ents, max_size)
