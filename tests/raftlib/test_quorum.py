"""Quorum arithmetic against obviously-correct slow twins."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from raftlib.quorum import (
    NO_LIMIT,
    VoteResult,
    joint_committed_index,
    joint_vote_result,
    majority_committed_index,
    majority_vote_result,
)

voter_sets = st.sets(st.integers(min_value=1, max_value=9), max_size=7)


def _naive_committed(voters: set[int], acked: dict[int, int]) -> int:
    if not voters:
        return NO_LIMIT
    best = 0
    for idx in {acked.get(v, 0) for v in voters}:
        if sum(acked.get(v, 0) >= idx for v in voters) > len(voters) // 2:
            best = max(best, idx)
    return best


def _naive_vote(voters: set[int], votes: dict[int, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON
    missing = [v for v in voters if v not in votes]
    outcomes = set()
    for fill in itertools.product([True, False], repeat=len(missing)):
        full = {**votes, **dict(zip(missing, fill, strict=True))}
        outcomes.add(sum(full[v] for v in voters) > len(voters) // 2)
    if outcomes == {True}:
        return VoteResult.WON
    if outcomes == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING


@given(voter_sets, st.dictionaries(st.integers(1, 9), st.integers(0, 20)))
def test_majority_committed_index_matches_naive(voters: set[int], acked: dict[int, int]) -> None:
    assert majority_committed_index(voters, acked) == _naive_committed(voters, acked)


@given(voter_sets, st.dictionaries(st.integers(1, 9), st.booleans()))
def test_majority_vote_result_matches_naive(voters: set[int], votes: dict[int, bool]) -> None:
    assert majority_vote_result(voters, votes) == _naive_vote(voters, votes)


@given(voter_sets, voter_sets, st.dictionaries(st.integers(1, 9), st.integers(0, 20)))
def test_joint_committed_index_needs_both_halves(
    a: set[int], b: set[int], acked: dict[int, int]
) -> None:
    idx = joint_committed_index(a, b, acked)
    if not b:
        assert idx == _naive_committed(a, acked)
    else:
        assert idx == min(_naive_committed(a, acked), _naive_committed(b, acked))


@given(voter_sets, voter_sets, st.dictionaries(st.integers(1, 9), st.booleans()))
def test_joint_vote_needs_both_halves(a: set[int], b: set[int], votes: dict[int, bool]) -> None:
    r = joint_vote_result(a, b, votes)
    ra, rb = _naive_vote(a, votes), _naive_vote(b, votes)
    if VoteResult.LOST in (ra, rb):
        assert r == VoteResult.LOST
    elif ra == rb == VoteResult.WON:
        assert r == VoteResult.WON
    else:
        assert r == VoteResult.PENDING
