"""raftlib.codec: round trips for every value, DecodeError (only) for any bad input, and
InvalidMessageError from encode_message for exactly what decoding would not give back."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftlib import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfChangeV2,
    ConfState,
    DecodeError,
    Entry,
    EntryType,
    HardState,
    InvalidMessageError,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    codec,
)

from .test_validation import maybe_malformed, round_trips_raw, typed

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
small = st.integers(min_value=0, max_value=1000)
ids = st.lists(st.integers(min_value=1, max_value=(1 << 64) - 1), max_size=5, unique=True)

entries = st.builds(
    Entry, term=u64, index=u64, type=st.sampled_from(EntryType), data=st.binary(max_size=64)
)
conf_states = st.builds(
    ConfState,
    voters=ids.map(tuple),
    learners=ids.map(tuple),
    voters_outgoing=ids.map(tuple),
    learners_next=ids.map(tuple),
    auto_leave=st.booleans(),
)
snapshots = st.builds(
    Snapshot,
    data=st.binary(max_size=64),
    metadata=st.builds(SnapshotMetadata, conf_state=conf_states, index=u64, term=u64),
)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=u64,
    from_=u64,
    term=u64,
    log_term=u64,
    index=u64,
    entries=st.lists(entries, max_size=4).map(tuple),
    commit=u64,
    snapshot=st.none() | snapshots,
    reject=st.booleans(),
    reject_hint=u64,
    context=st.binary(max_size=16),
)
conf_changes = st.builds(
    ConfChange,
    type=st.sampled_from(ConfChangeType),
    node_id=u64,
    context=st.binary(max_size=8),
    id=u64,
)
conf_changes_v2 = st.builds(
    ConfChangeV2,
    transition=st.sampled_from(ConfChangeTransition),
    changes=st.lists(
        st.builds(ConfChangeSingle, type=st.sampled_from(ConfChangeType), node_id=u64), max_size=4
    ).map(tuple),
    context=st.binary(max_size=8),
)


@given(messages)
def test_message_round_trip(m: Message) -> None:
    assert codec.decode_message(codec.encode_message(m)) == m


@given(st.lists(messages, max_size=4))
def test_message_batch_round_trip(ms: list[Message]) -> None:
    assert codec.decode_messages(codec.encode_messages(ms)) == ms


@given(entries)
def test_entry_round_trip(e: Entry) -> None:
    assert codec.decode_entry(codec.encode_entry(e)) == e
    assert codec.entry_from_array(codec.entry_to_array(e)) == e


@given(st.builds(HardState, term=u64, vote=u64, commit=u64))
def test_hard_state_round_trip(hs: HardState) -> None:
    assert codec.decode_hard_state(codec.encode_hard_state(hs)) == hs


@given(snapshots)
def test_snapshot_round_trip(s: Snapshot) -> None:
    assert codec.decode_snapshot(codec.encode_snapshot(s)) == s


@given(conf_states)
def test_conf_state_round_trip(cs: ConfState) -> None:
    assert codec.decode_conf_state(codec.encode_conf_state(cs)) == cs


@given(conf_changes)
def test_conf_change_round_trip(cc: ConfChange) -> None:
    assert codec.decode_conf_change(EntryType.CONF_CHANGE, codec.encode_conf_change(cc)) == cc


@given(conf_changes_v2)
def test_conf_change_v2_round_trip(cc: ConfChangeV2) -> None:
    data = codec.encode_conf_change(cc)
    assert codec.decode_conf_change(EntryType.CONF_CHANGE_V2, data) == cc


_DECODERS: list[Callable[[bytes], object]] = [
    codec.decode_message,
    codec.decode_messages,
    codec.decode_entry,
    codec.decode_hard_state,
    codec.decode_snapshot,
    codec.decode_conf_state,
    lambda b: codec.decode_conf_change(EntryType.CONF_CHANGE, b),
    lambda b: codec.decode_conf_change(EntryType.CONF_CHANGE_V2, b),
]


@given(st.binary(max_size=200), st.sampled_from(_DECODERS))
def test_arbitrary_bytes_raise_only_decode_error(
    data: bytes, decode: Callable[[bytes], object]
) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@given(messages, st.data())
def test_truncated_frames_raise_decode_error(m: Message, data: st.DataObject) -> None:
    frame = codec.encode_message(m)
    cut = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    with pytest.raises(DecodeError):
        codec.decode_message(frame[:cut])


@given(messages, st.data())
def test_corrupted_frames_raise_only_decode_error(m: Message, data: st.DataObject) -> None:
    frame = bytearray(codec.encode_message(m))
    pos = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    frame[pos] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    with contextlib.suppress(DecodeError):
        codec.decode_message(bytes(frame))


_plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=8) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=13),
    max_leaves=40,
)


@given(_plain)
def test_wrongly_shaped_cbor_raises_only_decode_error(obj: object) -> None:
    for decode in _DECODERS:
        for frame in (cbor2.dumps(obj), cbor2.dumps([codec.FORMAT_VERSION, obj])):
            with contextlib.suppress(DecodeError):
                decode(frame)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (b"", "malformed"),
        (cbor2.dumps([2, 3, 0, 0, 0, 0, 0, [], 0, None, False, 0, b""]), "version"),
        (codec.encode_message(Message(MessageType.APP)) + b"\x00", "trailing"),
        (cbor2.dumps([1, 99, 0, 0, 0, 0, 0, [], 0, None, False, 0, b""]), "unknown type"),
        (cbor2.dumps([1, 3, -1, 0, 0, 0, 0, [], 0, None, False, 0, b""]), "unsigned"),
        (cbor2.dumps([1, 3, 1 << 64, 0, 0, 0, 0, [], 0, None, False, 0, b""]), "unsigned"),
        (cbor2.dumps([1, 3, True, 0, 0, 0, 0, [], 0, None, False, 0, b""]), "unsigned"),
        (cbor2.dumps([1, 3, 0, 0, 0, 0, 0, [], 0, None, 0, 0, b""]), "bool"),
        (cbor2.dumps([1, 3, 0, 0, 0, 0, 0, [], 0, None, False, 0, "s"]), "bytes"),
        (cbor2.dumps({"type": 3}), "array"),
        (b"\x81" * 1000 + b"\x01", "malformed"),
        (b"\x5b" + (1 << 60).to_bytes(8, "big") + b"abc", "malformed"),
    ],
)
def test_specific_bad_frames_have_clear_messages(frame: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        codec.decode_message(frame)


def test_encoding_is_a_compact_versioned_array() -> None:
    frame = codec.encode_message(Message(MessageType.HEARTBEAT, to=2, from_=1, term=3, commit=7))
    assert cbor2.loads(frame) == [1, 8, 2, 1, 3, 0, 0, [], 7, None, False, 0, b""]
    assert len(frame) < 20


@given(maybe_malformed(messages))
def test_encode_succeeds_exactly_when_decode_gives_the_message_back(m: object) -> None:
    # The oracle encodes without any check: whatever it cannot carry, encode_message refuses,
    # and whatever encode_message accepts decodes to an equal message of the same types.
    try:
        frame = codec.encode_message(m)  # type: ignore[arg-type]
    except InvalidMessageError:
        assert not round_trips_raw(m)
        return
    assert typed(codec.decode_message(frame)) == typed(m)
    assert codec.decode_messages(codec.encode_messages([m, m])) == [m, m]  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("m", "match"),
    [
        (Message(MessageType.APP, term=-1), r"Message\.term"),
        (Message(MessageType.APP, context="ctx"), r"Message\.context"),  # type: ignore[arg-type]
        (Message(MessageType.APP, entries=(Entry(data="x"),)), r"entries\[0\]\.data"),  # type: ignore[arg-type]
        (Message(MessageType.APP, entries=[Entry()]), r"Message\.entries"),  # type: ignore[arg-type]
        (Message(3), r"Message\.type"),  # type: ignore[arg-type]
        (Message(MessageType.APP, commit=1 << 64), r"Message\.commit"),
        (Message(MessageType.SNAP, snapshot=b"snap"), r"Message\.snapshot"),  # type: ignore[arg-type]
        (None, "expected a Message"),
    ],
)
def test_encode_refuses_malformed_messages(m: Message, match: str) -> None:
    # These used to encode (or fail with cbor2's or Python's own errors) into frames that
    # every receiver would reject.
    with pytest.raises(InvalidMessageError, match=match):
        codec.encode_message(m)
    with pytest.raises(InvalidMessageError, match=match):
        codec.encode_messages([Message(MessageType.HEARTBEAT), m])
