"""Majority and joint-majority arithmetic. Internal: pure functions over ids and indexes.

A joint configuration (thesis §4.3) is two majority configurations that must *both* agree:
the committed index is the smaller of the two, and an election is won only when both are won.
An empty majority configuration agrees with everything, so a non-joint configuration is simply a
joint one whose outgoing half is empty.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

NO_LIMIT = (1 << 64) - 1
"""The committed index of an empty configuration: it never holds back the other half."""


class VoteResult(enum.Enum):
    """The outcome of an election so far."""

    PENDING = 0
    LOST = 1
    WON = 2


def majority_committed_index(voters: Collection[int], acked: Mapping[int, int]) -> int:
    """The largest index acknowledged by a majority of ``voters`` (missing acks count as 0).

    An empty ``voters`` returns :data:`NO_LIMIT`, so that ``min`` with the other half of a joint
    configuration picks that half.
    """
    n = len(voters)
    if n == 0:
        return NO_LIMIT
    if n == 1:
        for v in voters:
            return acked.get(v, 0)
    srt = sorted([acked.get(v, 0) for v in voters])
    return srt[n - (n // 2 + 1)]


def majority_vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """Won once a majority granted, lost once a majority can no longer grant, else pending.

    An empty ``voters`` wins (it imposes no constraint).
    """
    if not voters:
        return VoteResult.WON
    granted = missing = 0
    for v in voters:
        vote = votes.get(v)
        if vote is None:
            missing += 1
        elif vote:
            granted += 1
    quorum = len(voters) // 2 + 1
    if granted >= quorum:
        return VoteResult.WON
    if granted + missing >= quorum:
        return VoteResult.PENDING
    return VoteResult.LOST


def joint_committed_index(
    incoming: Collection[int], outgoing: Collection[int], acked: Mapping[int, int]
) -> int:
    """The largest index acknowledged by a majority of *both* halves."""
    a = majority_committed_index(incoming, acked)
    if not outgoing:
        return a
    return min(a, majority_committed_index(outgoing, acked))


def joint_vote_result(
    incoming: Collection[int], outgoing: Collection[int], votes: Mapping[int, bool]
) -> VoteResult:
    """Won when both halves are won; lost as soon as either half is lost."""
    r1 = majority_vote_result(incoming, votes)
    r2 = majority_vote_result(outgoing, votes)
    if r1 == r2:
        return r1
    if VoteResult.LOST in (r1, r2):
        return VoteResult.LOST
    return VoteResult.PENDING
