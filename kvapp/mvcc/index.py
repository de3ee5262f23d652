"""The key index: every key in sorted order, each with its history of versions.

This is the in-memory counterpart of etcd's ``treeIndex`` (a B-tree of ``keyIndex`` records)
plus the revision-keyed backend that holds the values: here a key's history is a list of
records (:mod:`kvapp.mvcc.record`) in revision order, tombstones included, and the values live
in them. The index takes and gives :class:`~kvapp.mvcc.types.KeyValue` objects; records stay
inside, apart from :meth:`KeyIndex.append`'s (the store's change log shares it) and
:meth:`KeyIndex.at_or_below`'s (for snapshots).

Why a :class:`~kvapp.mvcc.sortedmap.SortedMap` for the keys and their histories: it keeps them
in sorted sublists (about 1,000 keys each), so insertion and removal cost O(log n) with small
constants in pure Python, and a prefix or interval scan starts with two bisections instead of
walking the keyspace. A range therefore costs O(log n + k) for k keys in it, and a single key
two bisections; the benchmark in ``benchmarks/mvcc.py`` measures this for 10k to 1M keys. (A
sorted key list beside a dict, as before, held every key in a hash table too: about 50 bytes
per key more at a million keys.)

A key stays in the index while it has any history, including only a tombstone; compaction
removes what is no longer visible at or after the compacted revision, and drops a key whose
last version at that revision is a tombstone.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import TypeAlias

from kvapp.mvcc.keyrange import upper_bound
from kvapp.mvcc.record import mod_of, pack, unpack, version_of
from kvapp.mvcc.sortedmap import SortedMap
from kvapp.mvcc.types import KeyValue

__all__ = ["KeyIndex"]


_Hist: TypeAlias = "bytes | list[bytes]"
"""A key's retained versions: the one record itself, or a list of two or more, oldest first."""


def _versions(h: bytes | list[bytes]) -> list[bytes]:
    return h if isinstance(h, list) else [h]


def _visible(h: bytes | list[bytes], revision: int) -> bytes | None:
    """The record of ``h`` visible at ``revision`` (a tombstone too), None if none was then."""
    if isinstance(h, list):
        rec = h[-1]
        if mod_of(rec) > revision:
            i = bisect_right(h, revision, key=mod_of) - 1
            if i < 0:
                return None
            rec = h[i]
        return rec
    return None if mod_of(h) > revision else h


class KeyIndex:
    """Sorted keys with their version histories; reads at any retained revision.

    Not thread-safe. Histories are append-only between compactions; callers append versions
    in revision order (several writes of one key in one main revision are allowed and keep
    their order).
    """

    __slots__ = ("_hist", "_touched")

    def __init__(self) -> None:
        self._hist: SortedMap[_Hist] = SortedMap()
        # Keys that compaction may shrink: more than one version, or ending in a tombstone.
        # Keys written once and never again (the bulk of most keyspaces) cost compaction nothing.
        self._touched: set[bytes] = set()

    @classmethod
    def from_histories(cls, histories: dict[bytes, bytes | list[bytes]]) -> KeyIndex:
        """Build an index from complete histories of records, taking ownership of ``histories``.

        A history is a key's one record, or a list of two or more in revision order. Building
        at once sorts the keys a single time, much faster than inserting them one by one.
        """
        index = cls()
        index._touched = {
            k for k, h in histories.items() if isinstance(h, list) or version_of(h) == 0
        }
        keys = sorted(histories)
        index._hist = SortedMap.from_sorted(keys, list(map(histories.__getitem__, keys)))
        return index

    def __len__(self) -> int:
        """Number of keys with any retained history (tombstoned keys included)."""
        return len(self._hist)

    def latest(self, key: bytes) -> KeyValue | None:
        """The newest version of ``key``, or None if it does not exist now."""
        h = self._hist.get(key)
        if h is None:
            return None
        rec = h[-1] if isinstance(h, list) else h
        return None if version_of(rec) == 0 else unpack(rec)

    def exists(self, key: bytes) -> bool:
        """Whether ``key`` exists now (cheaper than :meth:`latest`: nothing is unpacked)."""
        h = self._hist.get(key)
        if h is None:
            return False
        return version_of(h[-1] if isinstance(h, list) else h) != 0

    def get(self, key: bytes, revision: int) -> KeyValue | None:
        """The version of ``key`` visible at ``revision``, or None if it did not exist then."""
        h = self._hist.get(key)
        if h is None:
            return None
        rec = _visible(h, revision)
        return None if rec is None or version_of(rec) == 0 else unpack(rec)

    def history(self, key: bytes) -> tuple[KeyValue, ...]:
        """Every retained version of ``key``, oldest first (tombstones included)."""
        h = self._hist.get(key)
        return () if h is None else tuple(map(unpack, _versions(h)))

    def append(self, kv: KeyValue) -> bytes:
        """Record a new version (or tombstone) of ``kv.key`` as its newest; its record."""
        key = kv.key
        rec = pack(kv)
        h = self._hist.setdefault(key, rec)
        if h is rec:
            if kv.version == 0:
                self._touched.add(key)
        else:
            if isinstance(h, list):
                h.append(rec)
            else:
                self._hist[key] = [h, rec]
            self._touched.add(key)
        return rec

    def range(self, key: bytes, range_end: bytes, revision: int) -> Iterator[KeyValue]:
        """Yield the versions live at ``revision`` of the keys in the range, in key order.

        The range follows etcd's conventions (see :mod:`kvapp.mvcc.keyrange`). The caller must
        not modify the index while iterating.
        """
        if not range_end:
            kv = self.get(key, revision)
            if kv is not None:
                yield kv
            return
        end = upper_bound(key, range_end)
        if end is not None and end <= key:
            return
        for _, h in self._hist.irange(key, end):
            rec = _visible(h, revision)
            if rec is not None and version_of(rec) != 0:
                yield unpack(rec)

    def compact(self, revision: int) -> None:
        """Forget every version not visible at or after ``revision``.

        For each key the version visible at ``revision`` is kept (unless it is a tombstone) with
        everything newer; older versions go. A key left with no history leaves the index.
        """
        still_touched: set[bytes] = set()
        for key in self._touched:
            hist = _versions(self._hist[key])
            if mod_of(hist[-1]) <= revision:
                i = len(hist) - 1
            else:
                i = bisect_right(hist, revision, key=mod_of) - 1
                if i < 0:
                    still_touched.add(key)
                    continue
            if version_of(hist[i]) == 0:
                i += 1
            if i == len(hist):
                del self._hist[key]
                continue
            if i:
                del hist[:i]
            if len(hist) == 1:
                self._hist[key] = hist[0]
            else:
                self._hist[key] = hist
            if len(hist) > 1 or version_of(hist[-1]) == 0:
                still_touched.add(key)
        self._touched = still_touched

    def at_or_below(self, revision: int) -> Iterator[bytes]:
        """Yield, in key order, each key's oldest retained version's record if at or below it.

        Right after ``compact(revision)`` these are exactly the versions kept from before the
        compaction point: what a snapshot must carry besides the change log.
        """
        for h in self._hist.values():
            rec = h[0] if isinstance(h, list) else h
            if mod_of(rec) <= revision:
                yield rec

    def keys(self) -> Iterable[bytes]:
        """All keys with retained history, in order."""
        return self._hist.keys()
