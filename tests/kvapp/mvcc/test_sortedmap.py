"""SortedMap against a dict and sorted(): every operation, with sublists small enough that
sequences of a few dozen operations split and merge them many times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvapp.mvcc import sortedmap
from kvapp.mvcc.sortedmap import SortedMap

keys = st.binary(max_size=3)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), keys, st.integers()),
        st.tuples(st.just("del"), keys, st.just(0)),
    ),
    max_size=200,
)


@pytest.fixture(autouse=True)
def _small_sublists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sortedmap, "_LOAD", 4)


def check(m: SortedMap[int], model: dict[bytes, int]) -> None:
    assert len(m) == len(model)
    assert list(m.items()) == sorted(model.items())
    assert list(m.keys()) == sorted(model)
    assert list(m.values()) == [model[k] for k in sorted(model)]
    # The structure's own invariants: non-empty sublists, in order, maxes their last keys.
    assert all(m._keys)
    assert [p[-1] for p in m._keys] == m._maxes
    assert [len(p) for p in m._keys] == [len(v) for v in m._vals]
    assert all(len(p) <= 2 * sortedmap._LOAD for p in m._keys)


@given(ops, st.lists(st.tuples(keys, st.integers()), max_size=30))
def test_behaves_as_a_dict_in_key_order(
    operations: list[tuple[str, bytes, int]], initial: list[tuple[bytes, int]]
) -> None:
    m = SortedMap(initial)
    model = dict(initial)
    check(m, model)
    for op, key, value in operations:
        if op == "set" and value % 2:
            m[key] = value
            model[key] = value
        elif op == "set":
            assert m.setdefault(key, value) == model.setdefault(key, value)
        elif key in model:
            del m[key]
            del model[key]
        else:
            with pytest.raises(KeyError):
                del m[key]
        check(m, model)
        assert m.get(key) == model.get(key)
        if key in model:
            assert m[key] == model[key]
        else:
            with pytest.raises(KeyError):
                m[key]


@given(st.lists(st.tuples(keys, st.integers()), max_size=60), keys, st.none() | keys)
def test_irange_is_the_half_open_interval(
    items: list[tuple[bytes, int]], low: bytes, high: bytes | None
) -> None:
    m = SortedMap(items)
    model = dict(items)
    want = [(k, model[k]) for k in sorted(model) if low <= k and (high is None or k < high)]
    assert list(m.irange(low, high)) == want


@given(st.lists(keys, unique=True))
def test_from_sorted_keys_and_values(ks: list[bytes]) -> None:
    ks.sort()
    m = SortedMap.from_sorted(ks, list(range(len(ks))))
    check(m, {k: i for i, k in enumerate(ks)})


def test_an_empty_map() -> None:
    m: SortedMap[int] = SortedMap()
    assert len(m) == 0
    assert m.get(b"a") is None
    assert list(m.irange(b"", None)) == []
    with pytest.raises(KeyError):
        del m[b"a"]
    m[b"a"] = 1
    del m[b"a"]
    check(m, {})
