"""The tail of the log not yet handed to storage: new entries, or a snapshot to install. Internal.

``entries[i]`` has index ``offset + i``. A pending ``snapshot`` precedes ``entries`` (then
``offset == snapshot.metadata.index + 1``). ``prev_term`` is the term of the entry at
``offset - 1`` (the last one storage holds, or the pending snapshot's), once known: the tail and
the entry it follows, as etcd-io/raft's ``logSlice.prev`` keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence

from raftlib.errors import RaftInvariantError
from raftlib.types import Entry, Snapshot


class Unstable:
    """Entries and a snapshot the application has not yet confirmed persisted."""

    __slots__ = ("entries", "offset", "prev_term", "snapshot")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset
        self.prev_term = -1
        """The term of entry ``offset - 1``; -1 until known (read from storage on first use)."""

    def maybe_first_index(self) -> int | None:
        """The first index of the log if a snapshot is pending (index after it), else None."""
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        """The last index held here (entries, else the pending snapshot), else None."""
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, index: int) -> int | None:
        """The term of ``index`` if held here, else None."""
        if index < self.offset:
            snap = self.snapshot
            if snap is not None and snap.metadata.index == index:
                return snap.metadata.term
            return None
        i = index - self.offset
        if i < len(self.entries):
            return self.entries[i].term
        return None

    def stable_to(self, index: int, term: int) -> None:
        """Drop entries up to ``index`` now persisted, if ``index`` still holds ``term``.

        A mismatch means the entries were overwritten after being handed out; keep them for the
        next Ready.
        """
        i = index - self.offset
        if i < 0 or i >= len(self.entries) or self.entries[i].term != term:
            return
        del self.entries[: i + 1]
        self.offset = index + 1
        self.prev_term = term

    def stable_snap_to(self, index: int) -> None:
        """Forget the pending snapshot once persisted."""
        if self.snapshot is not None and self.snapshot.metadata.index == index:
            self.snapshot = None

    def restore(self, snap: Snapshot) -> None:
        """Replace everything with ``snap``."""
        self.offset = snap.metadata.index + 1
        self.entries = []
        self.snapshot = snap
        self.prev_term = snap.metadata.term

    def truncate_and_append(self, ents: Sequence[Entry]) -> None:
        """Append ``ents``, first discarding any held entries at or after ``ents[0].index``."""
        after = ents[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif after <= self.offset:
            # The whole unstable tail is replaced (the stable part is truncated by storage).
            if after < self.offset:
                self.prev_term = -1  # entry after - 1 is older: storage knows its term
            self.offset = after
            self.entries = list(ents)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``[lo, hi)``; the range must lie within this tail."""
        if lo > hi or lo < self.offset or hi > self.offset + len(self.entries):
            raise RaftInvariantError(
                f"unstable.slice[{lo},{hi}) out of bound [{self.offset},"
                f"{self.offset + len(self.entries)}]"
            )
        return self.entries[lo - self.offset : hi - self.offset]
