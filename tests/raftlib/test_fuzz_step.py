"""Every role x every message type, with arbitrary field values: stepping either works and leaves
a consistent node, or raises one of the documented exceptions. Never KeyError, IndexError,
TypeError or the like (STYLE item 12)."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from raftlib import (
    DecodeError,
    Entry,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    RaftInvariantError,
    StepLocalMessageError,
    StepPeerNotFoundError,
)
from raftlib.types import ConfState, Snapshot, SnapshotMetadata

from .helpers import drain, elect, new_node, storage_with

DOCUMENTED = (
    DecodeError,
    StepLocalMessageError,
    StepPeerNotFoundError,
    ProposalDropped,
    RaftInvariantError,
)

small = st.integers(min_value=0, max_value=8)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    index = draw(small)
    n = draw(st.integers(min_value=0, max_value=3))
    log_term = draw(small)
    terms = sorted(draw(st.lists(small, min_size=n, max_size=n)))
    contiguous = draw(st.booleans())
    entries = tuple(
        Entry(
            term=t if contiguous else draw(small),
            index=index + 1 + i if contiguous else draw(small),
            type=draw(st.sampled_from(EntryType)),
            data=draw(st.binary(max_size=4)),
        )
        for i, t in enumerate(terms)
    )
    snap = None
    if draw(st.booleans()):
        snap = Snapshot(
            data=b"s",
            metadata=SnapshotMetadata(
                conf_state=ConfState(voters=draw(st.sets(st.integers(1, 4), max_size=4))),
                index=draw(small),
                term=draw(small),
            ),
        )
    return Message(
        type=draw(st.sampled_from(MessageType)),
        to=1,
        from_=draw(st.integers(min_value=0, max_value=4)),
        term=draw(small),
        log_term=log_term,
        index=index,
        entries=entries,
        commit=draw(small),
        snapshot=snap,
        reject=draw(st.booleans()),
        reject_hint=draw(small),
        context=draw(st.binary(max_size=3)),
    )


@settings(max_examples=300)
@given(
    role=st.sampled_from(["follower", "pre_candidate", "candidate", "leader"]),
    msgs=st.lists(messages(), min_size=1, max_size=8),
)
def test_any_message_in_any_role_is_handled_or_refused_cleanly(
    role: str, msgs: list[Message]
) -> None:
    s = storage_with(entries=[(1, 1), (1, 2), (2, 3)], term=2, commit=2)
    node = new_node(1, s, pre_vote=role == "pre_candidate", check_quorum=True)
    drain(node, s)
    if role in ("candidate", "pre_candidate"):
        node.campaign()
        drain(node, s)
    elif role == "leader":
        elect(node, s)
    prev_term = node.status().hard_state.term
    prev_commit = node.status().hard_state.commit
    for m in msgs:
        with contextlib.suppress(*DOCUMENTED):
            node.step(m)
        drain(node, s)
        st_ = node.status()
        assert st_.hard_state.term >= prev_term
        assert st_.hard_state.commit >= prev_commit
        assert st_.applied <= st_.hard_state.commit <= s.last_index()
        prev_term, prev_commit = st_.hard_state.term, st_.hard_state.commit
