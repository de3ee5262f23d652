"""MemoryStorage: the Storage contract and the write side."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftlib import (
    CompactedError,
    ConfState,
    Entry,
    MemoryStorage,
    RaftInvariantError,
    SnapshotOutOfDateError,
    Storage,
    UnavailableError,
)
from raftlib.storage import EntryWindow

from .helpers import snapshot_at


def _storage(terms: list[tuple[int, int]]) -> MemoryStorage:
    """A storage compacted to the first pair, holding the rest: pairs are (index, term)."""
    s = MemoryStorage()
    first_index, first_term = terms[0]
    if first_index:
        s.apply_snapshot(snapshot_at(first_index, first_term))
    s.append([Entry(term=t, index=i, data=b"x" * 10) for i, t in terms[1:]])
    return s


def test_memory_storage_satisfies_the_protocol() -> None:
    assert isinstance(MemoryStorage(), Storage)


def test_term_bounds() -> None:
    s = _storage([(3, 3), (4, 4), (5, 5)])
    with pytest.raises(CompactedError):
        s.term(2)
    assert [s.term(i) for i in (3, 4, 5)] == [3, 4, 5]
    with pytest.raises(UnavailableError):
        s.term(6)


def test_entries_bounds_and_size_limit() -> None:
    s = _storage([(3, 3), (4, 4), (5, 5), (6, 6)])
    with pytest.raises(CompactedError):
        s.entries(3, 5)
    assert [e.index for e in s.entries(4, 7)] == [4, 5, 6]
    assert [e.index for e in s.entries(4, 7, max_size=0)] == [4]  # always at least one
    assert [e.index for e in s.entries(4, 7, max_size=52)] == [4, 5]  # 26 bytes each
    with pytest.raises(UnavailableError):
        s.entries(4, 8)


def test_first_and_last_index() -> None:
    s = _storage([(3, 3), (4, 4), (5, 5)])
    assert (s.first_index(), s.last_index()) == (4, 5)
    s.compact(4)
    assert (s.first_index(), s.last_index()) == (5, 5)


def test_compact() -> None:
    s = _storage([(3, 3), (4, 4), (5, 5)])
    with pytest.raises(CompactedError):
        s.compact(3)
    with pytest.raises(ValueError, match="after last"):
        s.compact(6)
    s.compact(5)
    assert s.term(5) == 5
    with pytest.raises(UnavailableError):
        s.entries(6, 6)


def test_create_snapshot() -> None:
    s = _storage([(3, 3), (4, 4), (5, 5)])
    cs = ConfState(voters=(1, 2, 3))
    snap = s.create_snapshot(4, cs, b"data")
    assert (snap.metadata.index, snap.metadata.term, snap.metadata.conf_state) == (4, 4, cs)
    assert s.snapshot() == snap
    with pytest.raises(SnapshotOutOfDateError):
        s.create_snapshot(3, cs, b"")


def test_apply_snapshot_replaces_the_log() -> None:
    s = _storage([(0, 0), (1, 1), (2, 1)])
    s.apply_snapshot(snapshot_at(10, 3))
    assert (s.first_index(), s.last_index(), s.term(10)) == (11, 10, 3)
    with pytest.raises(SnapshotOutOfDateError):
        s.apply_snapshot(snapshot_at(9, 3))
    assert s.initial_state()[1] == ConfState(voters=(1, 2, 3))


@pytest.mark.parametrize(
    ("append", "expected"),
    [
        ([(3, 3), (4, 4), (5, 5)], [(3, 3), (4, 4), (5, 5)]),
        ([(3, 3), (4, 6), (5, 6)], [(3, 3), (4, 6), (5, 6)]),
        ([(3, 3), (4, 4), (5, 5), (6, 5)], [(3, 3), (4, 4), (5, 5), (6, 5)]),
        ([(2, 3), (3, 3), (4, 5)], [(3, 3), (4, 5)]),  # compacted prefix skipped
        ([(4, 5)], [(3, 3), (4, 5)]),  # conflict truncates
        ([(6, 5)], [(3, 3), (4, 4), (5, 5), (6, 5)]),
    ],
)
def test_append_truncates_conflicts(
    append: list[tuple[int, int]], expected: list[tuple[int, int]]
) -> None:
    s = _storage([(3, 3), (4, 4), (5, 5)])
    s.append([Entry(term=t, index=i) for i, t in append])
    assert [(i, s.term(i)) for i in range(3, s.last_index() + 1)] == expected


def test_append_with_a_gap_is_an_invariant_error() -> None:
    s = _storage([(3, 3), (4, 4)])
    with pytest.raises(RaftInvariantError):
        s.append([Entry(term=4, index=6)])


def test_create_snapshot_of_a_compacted_index_is_refused() -> None:
    s = _storage([(3, 3), (4, 4), (5, 5), (6, 6)])
    s.compact(5)  # past the snapshot at 3
    with pytest.raises(CompactedError):
        s.create_snapshot(4, None, b"")


def test_append_refuses_non_consecutive_entries() -> None:
    s = _storage([(3, 3), (4, 4)])
    with pytest.raises(RaftInvariantError):
        s.append([Entry(term=4, index=5), Entry(term=4, index=7)])


def test_entry_window_checks_change_nothing_until_applied() -> None:
    from raftlib.storage import EntryWindow

    w = EntryWindow([Entry(term=2, index=3), Entry(term=2, index=4), Entry(term=3, index=5)])
    checked = w.check_append([Entry(term=4, index=5), Entry(term=4, index=6)])
    kept = w.check_compact(4)
    assert (w.last_index(), w.term(5), w.first_index()) == (5, 3, 4)
    w.apply_append(checked)
    assert (w.last_index(), w.term(5)) == (6, 4)
    w.apply_compact(kept)
    assert (w.first_index(), w.placeholder, w.last) == (5, Entry(term=2, index=4), checked[-1])
    with pytest.raises(RaftInvariantError):
        w.check_append([Entry(term=4, index=9)])


def _window_outcome(window: EntryWindow, write: Callable[[], None]) -> object:
    try:
        write()
    except RaftInvariantError as exc:
        return str(exc)
    return [(e.index, e.term) for e in window._ents]


@given(
    placeholder=st.integers(0, 6),
    held=st.integers(0, 5),
    lo=st.integers(0, 14),
    terms=st.lists(st.integers(1, 3), max_size=5),
    gap=st.booleans(),
)
def test_entry_window_append_is_check_then_apply(
    placeholder: int, held: int, lo: int, terms: list[int], gap: bool
) -> None:
    """The one-pass append does what check_append then apply_append (kvapp's path) do."""
    start = [Entry(index=placeholder + i, term=1) for i in range(held + 1)]
    ents = [Entry(index=lo + i, term=t) for i, t in enumerate(terms)]
    if gap and len(ents) > 1:
        ents[-1] = Entry(index=ents[-1].index + 1, term=ents[-1].term)
    one, two = EntryWindow(start), EntryWindow(start)
    assert _window_outcome(one, lambda: one.append(tuple(ents))) == _window_outcome(
        two, lambda: two.apply_append(two.check_append(ents))
    )
