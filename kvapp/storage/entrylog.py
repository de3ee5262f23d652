"""The log a :class:`~kvapp.storage.RaftStore` holds in memory, older entries' data left in the WAL.

Raft's storage must answer for every entry after the latest snapshot, but it is asked for old
ones only by a follower that lags behind (and a restart reads the WAL anyway). With entries
that batch hundreds of writes, the ``snapshot_count + keep_entries`` entries behind the newest
one can hold as many bytes as the whole key-value state. So :class:`DiskBackedLog` keeps the
data of the newest entries up to ``hot_bytes`` (and of every entry not yet committed), and for
older ones only their index, term and type, with where their WAL record is: ``entries()`` reads
those back from the WAL, checking each record's checksum and each entry's index and term.

Entries become cold oldest first and only once committed (a committed entry is never replaced
by a conflicting append), so the cold ones are always the run from the first entry up to
:attr:`DiskBackedLog.cold_until`; the WAL keeps every segment holding an entry after the
compaction point (:meth:`kvapp.storage.wal.Wal.release`), so their records stay readable.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvapp.storage.errors import WalCorruptError
from kvapp.storage.fs import OS, FileSystem
from kvapp.storage.wal import BatchRecord, RecordAt, read_record_at
from raftlib.storage import EntryWindow, limit_size
from raftlib.types import ENTRY_OVERHEAD, Entry

__all__ = ["DEFAULT_HOT_BYTES", "DiskBackedLog"]

DEFAULT_HOT_BYTES = 16 * 1024 * 1024
"""Entry data kept in memory behind the newest entry (the rest is read back from the WAL)."""


_EVICT_STEP = 256
"""Entries looked at per slice of the window while evicting (not the whole hot run each save)."""


class DiskBackedLog:
    """An :class:`~raftlib.storage.EntryWindow` whose older committed entries' data is on disk.

    Args:
        entries: the window's entries, its placeholder first (as ``EntryWindow``).
        where: where each entry after the placeholder is in the WAL (its batch record).
        hot_bytes: entry data to keep in memory, newest first; the rest of the committed
            entries' data is dropped and read back when asked for.
        fs: the file layer the WAL is read back through.
    """

    def __init__(
        self, entries: list[Entry], where: Sequence[RecordAt], hot_bytes: int, fs: FileSystem = OS
    ) -> None:
        self._fs = fs
        if len(where) != len(entries) - 1:
            raise ValueError(f"{len(where)} record locations for {len(entries) - 1} entries")
        self.window = EntryWindow(entries)
        pairs = zip(entries[1:], where, strict=True)
        self._where: dict[int, RecordAt] = {e.index: at for e, at in pairs}
        self._cold_sizes: dict[int, int] = {}
        self._cold_until = entries[0].index
        self._hot = sum(len(e.data) for e in entries[1:])
        self._limit = hot_bytes

    @property
    def cold_until(self) -> int:
        """The entries from the first one up to this index are held without their data."""
        return max(self._cold_until, self.window.placeholder.index)

    @property
    def hot_bytes(self) -> int:
        """The data held in memory."""
        return self._hot

    def data_size(self) -> int:
        """The data of every entry held, in memory or not."""
        return self._hot + sum(self._cold_sizes.values())

    # -- reads --

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """See :meth:`raftlib.storage.Storage.entries`; cold entries are read from the WAL.

        Raises:
            WalCorruptError: a cold entry's record is damaged or holds another entry.
            OSError: reading the WAL failed.
        """
        if lo > self.cold_until:
            return self.window.entries(lo, hi, max_size)
        held = self.window.entries(lo, hi)
        out: list[Entry] = []
        size = 0
        loaded: dict[RecordAt, dict[int, Entry]] = {}
        for e in held:
            entry = self._read_back(e, loaded) if e.index <= self._cold_until else e
            out.append(entry)
            size += len(entry.data) + ENTRY_OVERHEAD
            if max_size is not None and size > max_size:
                break
        return limit_size(out, max_size)

    def _read_back(self, stand_in: Entry, loaded: dict[RecordAt, dict[int, Entry]]) -> Entry:
        at = self._where[stand_in.index]
        batch = loaded.get(at)
        if batch is None:
            rec = read_record_at(at, self._fs)
            if not isinstance(rec, BatchRecord):
                raise WalCorruptError(at.path, at.offset, "entry record is not a batch record")
            batch = loaded[at] = {e.index: e for e in rec.entries}
        entry = batch.get(stand_in.index)
        if entry is None or entry.term != stand_in.term or entry.type != stand_in.type:
            raise WalCorruptError(
                at.path, at.offset, f"record does not hold entry {stand_in.index} as logged"
            )
        return entry

    # -- writes: EntryWindow's, keeping track of where entries are --

    def apply_append(self, entries: Sequence[Entry], at: RecordAt | None) -> None:
        """Append checked ``entries`` (``EntryWindow.check_append``), written in record ``at``."""
        if not entries:
            return
        lo = entries[0].index
        for i in range(lo, self.window.last_index() + 1):  # the conflicting suffix goes
            self._forget(i)
        self._cold_until = min(self._cold_until, lo - 1)
        self.window.apply_append(entries)
        for e in entries:
            self._hot += len(e.data)
            if at is not None:
                self._where[e.index] = at

    def apply_compact(self, kept: Entry) -> None:
        """``EntryWindow.apply_compact``."""
        for i in range(self.window.first_index(), kept.index + 1):
            self._forget(i)
        self.window.apply_compact(kept)

    def reset(self, index: int, term: int) -> None:
        """``EntryWindow.reset``."""
        self.window.reset(index, term)
        self._where.clear()
        self._cold_sizes.clear()
        self._cold_until = index
        self._hot = 0

    def _forget(self, index: int) -> None:
        self._where.pop(index, None)
        size = self._cold_sizes.pop(index, None)
        if size is None:
            self._hot -= len(self.window.entries(index, index + 1)[0].data)

    def evict(self, commit: int) -> None:
        """Drop the data of the oldest committed entries until at most ``hot_bytes`` is held."""
        if self._hot <= self._limit:
            return
        window = self.window
        start = self.cold_until + 1
        stop = min(commit, window.last_index())
        if start > stop:
            return
        while start <= stop and self._hot > self._limit:
            stand_ins = []
            for e in window.entries(start, min(stop, start + _EVICT_STEP - 1) + 1):
                if self._hot <= self._limit or e.index not in self._where:
                    break
                stand_ins.append(Entry(term=e.term, index=e.index, type=e.type))
                self._cold_sizes[e.index] = len(e.data)
                self._hot -= len(e.data)
            if not stand_ins:
                return
            window.replace(stand_ins)
            self._cold_until = stand_ins[-1].index
            start = self._cold_until + 1
