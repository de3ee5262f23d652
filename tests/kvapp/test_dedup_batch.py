"""kvapp.dedup: Applier.apply_batch (a batch entry's requests at one index) against apply."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvapp.dedup import Applier
from kvapp.errors import EtcdError, KeyNotFoundError, LeaseNotFoundError
from kvapp.mvcc import PutRequest, PutResponse
from kvapp.requests import Request, RequestIdExpiredError
from tests.kvapp.test_dedup import body_for, new_state, outcome

WINDOW = 3


def outcomes(applier: Applier, requests: list[Request], index: int) -> list[Any]:
    """apply_batch's outcomes, errors as their class and text (as ``outcome`` gives them)."""
    return [
        (type(r), str(r)) if isinstance(r, EtcdError) else r
        for r in applier.apply_batch(requests, index)
    ]


entries = st.lists(
    st.lists(st.tuples(st.sampled_from([0, 1, 2, 3]), st.integers(1, 8)), min_size=1, max_size=6),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(entries, st.integers(0, 25))
def test_a_batch_applies_as_its_requests_would_one_entry_each(
    drawn: list[list[tuple[int, int]]], split: int
) -> None:
    """Same outcomes and state as the one-request-per-entry path (no expiry in play)."""
    batched = Applier(new_state(), window=WINDOW)
    single = Applier(new_state(), window=WINDOW)
    replica = Applier(new_state(), window=WINDOW)
    single_index = 0
    for n, group in enumerate(drawn):
        requests = [Request(c, rid if c else 0, body_for(c, rid)) for c, rid in group]
        if n == split:  # a member that joins from a snapshot of the batched applier
            replica.restore_bytes(batched.snapshot_bytes())
        got = outcomes(batched, requests, n + 1)
        expected = []
        for request in requests:
            single_index += 1
            expected.append(outcome(single, request, single_index))
        assert got == expected
        if n >= split:
            assert outcomes(replica, requests, n + 1) == got
    assert batched.state.hash() == single.state.hash()
    if split >= len(drawn):
        replica.restore_bytes(batched.snapshot_bytes())
    assert replica.hash() == batched.hash()
    assert replica.snapshot_bytes() == batched.snapshot_bytes()


def test_one_failing_request_does_not_fail_the_others() -> None:
    a = Applier(new_state())
    got = a.apply_batch(
        [
            Request(1, 1, PutRequest(b"a", b"1")),
            Request(1, 2, PutRequest(b"b", b"2", lease=99)),
            Request(2, 1, PutRequest(b"c", ignore_value=True)),
            Request(0, 0, PutRequest(b"d", b"4")),
        ],
        5,
    )
    assert got[0] == PutResponse(2)
    assert isinstance(got[1], LeaseNotFoundError)
    assert isinstance(got[2], KeyNotFoundError)
    assert got[3] == PutResponse(3)
    assert a.applied_index == 5
    # Retries of the failures raise the first errors, from a later entry or the same batch.
    again = a.apply_batch([Request(1, 2, PutRequest(b"b")), Request(1, 1, PutRequest(b"a"))], 6)
    assert isinstance(again[0], LeaseNotFoundError)
    assert again[1] == PutResponse(2)


def test_a_request_repeated_inside_one_batch_applies_once() -> None:
    a = Applier(new_state())
    first, second = a.apply_batch([Request(7, 1, PutRequest(b"k", b"v"))] * 2, 1)
    assert first == second == PutResponse(2)
    assert a.state.store.revision == 2


def test_a_batch_index_must_increase() -> None:
    a = Applier(new_state())
    a.apply_batch([Request(0, 0, PutRequest(b"k"))], 3)
    with pytest.raises(ValueError, match="out of order"):
        a.apply_batch([Request(0, 0, PutRequest(b"k"))], 3)
    with pytest.raises(ValueError, match="out of order"):
        a.apply(Request(0, 0, PutRequest(b"k")), 3)


def test_sessions_of_one_batch_expire_together_and_snapshot_with_equal_indexes() -> None:
    a = Applier(new_state(), idle_entries=10)
    a.apply_batch([Request(c, 1, PutRequest(b"k%d" % c)) for c in (1, 2, 3)], 5)
    a.apply(Request(4, 1, PutRequest(b"x")), 12)
    twin = Applier(new_state(), idle_entries=10)
    twin.restore_bytes(a.snapshot_bytes())  # three sessions share last index 5
    assert twin.hash() == a.hash()
    for applier in (a, twin):
        assert all(applier.has_session(c) for c in (1, 2, 3, 4))
        applier.apply(Request(0, 0, PutRequest(b"y")), 16)  # 5 < 16 - 10: all three expire
        assert [c for c in (1, 2, 3, 4) if applier.has_session(c)] == [4]
        with pytest.raises(RequestIdExpiredError):
            applier.apply(Request(1, 70, PutRequest(b"z")), 17)
