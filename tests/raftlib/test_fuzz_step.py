"""Every role x every message type, with arbitrary field values: stepping either works and leaves
a consistent node, or raises one of the documented exceptions. Never KeyError, IndexError,
TypeError or the like (STYLE item 12). Arbitrary objects too (fields of the wrong type, not a
Message at all): refused with a named error, and a refusal changes nothing durable."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftlib import (
    Entry,
    EntryType,
    InvalidMessageError,
    MemoryStorage,
    Message,
    MessageType,
    MisroutedMessageError,
    ProposalDropped,
    RaftInvariantError,
    RawNode,
    StepLocalMessageError,
    StepPeerNotFoundError,
)
from raftlib.types import _LOCAL, ConfState, Snapshot, SnapshotMetadata
from raftlib.validate import check_message, check_peer_message, check_stepped_message

from .helpers import drain, elect, new_node, storage_with
from .test_validation import maybe_malformed, round_trips_raw

# Refusals: the input was bad, and the node is exactly as it was.
REFUSALS = (
    InvalidMessageError,
    MisroutedMessageError,
    StepLocalMessageError,
    StepPeerNotFoundError,
    ProposalDropped,
)
# RaftInvariantError is not a refusal: the message contradicts what this node made durable, so
# its storage is suspect and the application must stop the node.
DOCUMENTED = (*REFUSALS, RaftInvariantError)

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


ROLES = st.sampled_from(["follower", "pre_candidate", "candidate", "leader"])


def node_in_role(role: str) -> tuple[RawNode, MemoryStorage]:
    s = storage_with(entries=[(1, 1), (1, 2), (2, 3)], term=2, commit=2)
    node = new_node(1, s, pre_vote=role == "pre_candidate", check_quorum=True)
    drain(node, s)
    if role in ("candidate", "pre_candidate"):
        node.campaign()
        drain(node, s)
    elif role == "leader":
        elect(node, s)
    return node, s


def durable(node: RawNode) -> object:
    """Hard state, the whole log (stable and unstable), and the snapshots, as one value."""
    r = node._raft
    log = r.log
    return (
        r.hard_state(),
        tuple(log.slice(log.first_index(), log.last_index() + 1, None)),
        tuple(log.unstable.entries),
        log.unstable.snapshot,
        log.snapshot().metadata,
    )


@settings(max_examples=300)
@given(role=ROLES, msgs=st.lists(messages(), min_size=1, max_size=8))
def test_any_message_in_any_role_is_handled_or_refused_cleanly(
    role: str, msgs: list[Message]
) -> None:
    node, s = node_in_role(role)
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


@settings(max_examples=300)
@given(role=ROLES, objs=st.lists(maybe_malformed(messages()), min_size=1, max_size=8))
def test_arbitrary_objects_in_any_role_are_refused_by_name_and_change_nothing_durable(
    role: str, objs: list[object]
) -> None:
    node, s = node_in_role(role)
    for obj in objs:
        before = durable(node)
        if not round_trips_raw(obj):
            # What the codec could not carry is refused as malformed, whatever else is wrong.
            with pytest.raises(InvalidMessageError):
                node.step(obj)  # type: ignore[arg-type]
            assert durable(node) == before
            continue
        try:
            node.step(obj)  # type: ignore[arg-type]
        except REFUSALS:
            assert durable(node) == before
        except RaftInvariantError:
            return  # the node reports damaged storage; the application stops it
        drain(node, s)


def _checked_the_long_way(m: object) -> None:
    """What RawNode.step checked before check_stepped_message: three steps."""
    msg = check_message(m, app_entries=False)
    if msg.type in _LOCAL:
        raise StepLocalMessageError(f"cannot step raft local message {msg.type.name}")
    check_peer_message(msg)


def _outcome(check: Callable[[object], object], m: object) -> tuple[type, str] | None:
    try:
        check(m)
    except (InvalidMessageError, StepLocalMessageError) as exc:
        return type(exc), str(exc)
    return None


@settings(max_examples=500)
@given(maybe_malformed(messages()))
def test_check_stepped_message_is_the_three_checks_it_replaces(m: object) -> None:
    """Same verdict and same error text as check_message, the local-type refusal, then
    check_peer_message, on well-formed and corrupted messages of every type."""
    assert _outcome(check_stepped_message, m) == _outcome(_checked_the_long_way, m)
