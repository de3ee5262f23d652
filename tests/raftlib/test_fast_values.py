"""The hot paths' builders of frozen values (``raftlib.types._new_message``, ``_new_hard_state``
and the Ready draft in ``RawNode.ready``) make exactly the objects the public constructors make."""

from __future__ import annotations

import copy
import pickle
import weakref

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftlib import Entry, EntryType, HardState, Message, MessageType, Ready
from raftlib.types import _new_hard_state, _new_message

from .helpers import drain, elect, new_node, storage_with

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
entries = st.tuples(st.builds(Entry, u64, u64, st.sampled_from(EntryType), st.binary(max_size=4)))
message_fields = st.tuples(
    st.sampled_from(MessageType),
    u64,
    u64,
    u64,
    u64,
    u64,
    entries,
    u64,
    st.none(),
    st.booleans(),
    u64,
    st.binary(max_size=4),
)


def _same_value(fast: attrs.AttrsInstance, public: attrs.AttrsInstance) -> None:
    assert type(fast) is type(public)
    assert fast == public
    assert hash(fast) == hash(public)
    assert repr(fast) == repr(public)
    assert attrs.astuple(fast, recurse=False) == attrs.astuple(public, recurse=False)
    assert weakref.ref(fast)() is fast
    assert pickle.loads(pickle.dumps(fast)) == public
    assert copy.copy(fast) == public
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.term = 7  # type: ignore[attr-defined]


@given(message_fields)
def test_new_message_is_the_message_the_constructor_makes(fields: tuple[object, ...]) -> None:
    fast = _new_message(*fields)  # type: ignore[arg-type]
    public = Message(*fields)  # type: ignore[arg-type]
    _same_value(fast, public)
    assert attrs.evolve(fast, to=9) == attrs.evolve(public, to=9)


def test_new_message_defaults_are_the_constructor_defaults() -> None:
    _same_value(_new_message(MessageType.APP, 2, 1), Message(MessageType.APP, 2, 1))


@given(u64, u64, u64)
def test_new_hard_state_is_the_hard_state_the_constructor_makes(t: int, v: int, c: int) -> None:
    _same_value(_new_hard_state(t, v, c), HardState(t, v, c))


def test_ready_is_a_ready() -> None:
    s = storage_with()
    node = new_node(1, s)
    elect(node, s)
    node.propose(b"x")
    rd = node.ready()
    _same_value(rd, Ready(*attrs.astuple(rd, recurse=False)))
    node.advance(rd)
    assert drain(node, s) == []
