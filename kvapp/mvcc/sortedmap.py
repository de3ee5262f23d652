"""A map from bytes keys, kept in key order: the key index's storage.

Why not ``sortedcontainers.SortedDict`` (or a ``SortedList`` of keys beside a dict, as the
index had): those keep every key twice, once in a hash table. At a million keys the dict's
table alone was about 50 bytes per key, more than the key object itself. Here keys and values
sit in parallel sorted sublists (a few hundred to two thousand keys each), about 18 bytes per
key for both, and a lookup is two C-level bisections (the sublists' last keys, then one
sublist) instead of a hash: a little slower per lookup, still O(log n), and range scans start
the same way sortedcontainers' do.

Not thread-safe. Iterators are invalid once the map's keys change (replacing a value is
fine).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["SortedMap"]

V = TypeVar("V")

_LOAD = 1000
"""Target sublist length: a sublist splits above twice this, and merges into its neighbour
below half of it."""


class SortedMap(Generic[V]):
    """Bytes keys to values, iterated in key order.

    Invariants: ``_keys[i]`` and ``_vals[i]`` have the same length (never zero), every key of
    ``_keys[i]`` is below every key of ``_keys[i + 1]``, and ``_maxes[i] == _keys[i][-1]``.
    """

    __slots__ = ("_keys", "_len", "_maxes", "_vals")

    def __init__(self, items: Iterable[tuple[bytes, V]] = ()) -> None:
        """A map of ``items``; they need not be sorted, a key given twice keeps its last value."""
        pairs = dict(items)
        keys = sorted(pairs)
        self._fill(keys, [pairs[k] for k in keys])

    @classmethod
    def from_sorted(cls, keys: list[bytes], values: list[V]) -> SortedMap[V]:
        """A map of ``keys[i]`` to ``values[i]``; ``keys`` strictly increasing (not checked)."""
        m: SortedMap[V] = cls()
        m._fill(keys, values)
        return m

    def _fill(self, keys: list[bytes], values: list[V]) -> None:
        self._keys = [keys[i : i + _LOAD] for i in range(0, len(keys), _LOAD)]
        self._vals = [values[i : i + _LOAD] for i in range(0, len(values), _LOAD)]
        self._maxes = [part[-1] for part in self._keys]
        self._len = len(keys)

    def __len__(self) -> int:
        return self._len

    def get(self, key: bytes) -> V | None:
        """The value of ``key``, or None if it is absent."""
        maxes = self._maxes
        i = bisect_left(maxes, key)
        if i == len(maxes):
            return None
        part = self._keys[i]
        j = bisect_left(part, key)
        return self._vals[i][j] if part[j] == key else None

    def __getitem__(self, key: bytes) -> V:
        maxes = self._maxes
        i = bisect_left(maxes, key)
        if i < len(maxes):
            part = self._keys[i]
            j = bisect_left(part, key)
            if part[j] == key:
                return self._vals[i][j]
        raise KeyError(key)

    def setdefault(self, key: bytes, value: V) -> V:
        """The value of ``key``; if it is absent, ``value``, stored first (as ``dict``'s)."""
        maxes = self._maxes
        i = bisect_left(maxes, key)
        if i == len(maxes):
            self._append(key, value)
            return value
        part = self._keys[i]
        j = bisect_left(part, key)
        if part[j] == key:
            return self._vals[i][j]
        self._insert(i, j, key, value)
        return value

    def __setitem__(self, key: bytes, value: V) -> None:
        maxes = self._maxes
        i = bisect_left(maxes, key)
        if i == len(maxes):
            self._append(key, value)
            return
        part = self._keys[i]
        j = bisect_left(part, key)
        if part[j] == key:
            self._vals[i][j] = value
        else:
            self._insert(i, j, key, value)

    def _append(self, key: bytes, value: V) -> None:
        """Add ``key``, above every key in the map."""
        maxes = self._maxes
        if not maxes:
            self._keys.append([key])
            self._vals.append([value])
            maxes.append(key)
        else:
            self._keys[-1].append(key)
            self._vals[-1].append(value)
            maxes[-1] = key
        self._len += 1
        if len(self._keys[-1]) > 2 * _LOAD:
            self._split(len(maxes) - 1)

    def _insert(self, i: int, j: int, key: bytes, value: V) -> None:
        """Add ``key`` at position ``j`` of sublist ``i`` (below that sublist's last key)."""
        part = self._keys[i]
        part.insert(j, key)
        self._vals[i].insert(j, value)
        self._len += 1
        if len(part) > 2 * _LOAD:
            self._split(i)

    def __delitem__(self, key: bytes) -> None:
        maxes = self._maxes
        i = bisect_left(maxes, key)
        if i == len(maxes):
            raise KeyError(key)
        part = self._keys[i]
        j = bisect_left(part, key)
        if part[j] != key:
            raise KeyError(key)
        del part[j]
        del self._vals[i][j]
        self._len -= 1
        if not part:
            del self._keys[i], self._vals[i], maxes[i]
            return
        maxes[i] = part[-1]
        if len(part) < _LOAD // 2 and len(maxes) > 1:
            self._merge(i if i + 1 < len(maxes) else i - 1)

    def _split(self, i: int) -> None:
        keys, vals = self._keys[i], self._vals[i]
        self._keys[i : i + 1] = [keys[:_LOAD], keys[_LOAD:]]
        self._vals[i : i + 1] = [vals[:_LOAD], vals[_LOAD:]]
        self._maxes[i : i + 1] = [keys[_LOAD - 1], keys[-1]]

    def _merge(self, i: int) -> None:
        """Join sublists ``i`` and ``i + 1``, splitting the result again if it is too long."""
        self._keys[i : i + 2] = [self._keys[i] + self._keys[i + 1]]
        self._vals[i : i + 2] = [self._vals[i] + self._vals[i + 1]]
        self._maxes[i : i + 2] = [self._keys[i][-1]]
        if len(self._keys[i]) > 2 * _LOAD:
            self._split(i)

    def irange(self, low: bytes, high: bytes | None) -> Iterator[tuple[bytes, V]]:
        """The items with ``low <= key < high`` (no upper bound if ``high`` is None), in order."""
        maxes = self._maxes
        i = bisect_left(maxes, low)
        if i == len(maxes):
            return
        j = bisect_left(self._keys[i], low)
        while i < len(maxes):
            keys, vals = self._keys[i], self._vals[i]
            end = len(keys)
            last = high is not None and maxes[i] >= high
            if last:
                assert high is not None
                end = bisect_left(keys, high)
            for t in range(j, end):
                yield keys[t], vals[t]
            if last:
                return
            i += 1
            j = 0

    def keys(self) -> Iterator[bytes]:
        """Every key, in order."""
        for part in self._keys:
            yield from part

    def values(self) -> Iterator[V]:
        """Every value, in key order."""
        for part in self._vals:
            yield from part

    def items(self) -> Iterator[tuple[bytes, V]]:
        """Every item, in key order."""
        for keys, vals in zip(self._keys, self._vals, strict=True):
            yield from zip(keys, vals, strict=True)
