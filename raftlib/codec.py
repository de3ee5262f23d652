"""A stable, versioned ``cbor2`` encoding of raftlib's values, for the wire and for disk.

Every top-level encoding is a CBOR array whose first item is :data:`FORMAT_VERSION`; values are
compact positional arrays, never maps, so the field order below *is* the format:

=================  ===============================================================================
Entry              ``[term, index, type, data]``
HardState          ``[term, vote, commit]``
ConfState          ``[voters, learners, voters_outgoing, learners_next, auto_leave]``
SnapshotMetadata   ``[conf_state, index, term]``
Snapshot           ``[data, metadata]``
Message            ``[type, to, from, term, log_term, index, [entry...], commit, snapshot|null,
                   reject, reject_hint, context]``
ConfChange         ``[type, node_id, context, id]``
ConfChangeV2       ``[transition, [[type, node_id]...], context]``
=================  ===============================================================================

Decoding validates every field's type and range. Malformed, truncated, oversized-integer or
trailing-garbage input raises :class:`~raftlib.errors.DecodeError` and nothing else, so a node can
drop a bad frame from a peer and carry on.

Encoding a message checks it first (:func:`raftlib.validate.check_message`) and raises
:class:`~raftlib.errors.InvalidMessageError` for anything decoding would reject, so a message
that encodes always decodes back to an equal one: a bad message fails at its sender, not at
every receiver.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TypeAlias

import cbor2

from raftlib.errors import DecodeError
from raftlib.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfChangeV2,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    _new_message,
)
from raftlib.validate import check_message

__all__ = [
    "FORMAT_VERSION",
    "conf_state_from_array",
    "conf_state_to_array",
    "decode_conf_change",
    "decode_conf_state",
    "decode_entry",
    "decode_hard_state",
    "decode_message",
    "decode_messages",
    "decode_snapshot",
    "encode_conf_change",
    "encode_conf_state",
    "encode_entry",
    "encode_hard_state",
    "encode_message",
    "encode_messages",
    "encode_snapshot",
    "entry_from_array",
    "entry_to_array",
    "hard_state_from_array",
    "hard_state_to_array",
    "message_from_array",
    "message_to_array",
    "snapshot_from_array",
    "snapshot_to_array",
]

FORMAT_VERSION = 1
"""The version written first in every top-level encoding; decoders reject any other."""

_U64 = 1 << 64

# The enum members by value (their values are 0..n-1): indexing is cheaper than calling the enum.
_MESSAGE_TYPES = tuple(sorted(MessageType, key=int))
_ENTRY_TYPES = tuple(sorted(EntryType, key=int))

# The array-level helpers return nested lists of ints, bytes, bools and None: plain CBOR data.
Array: TypeAlias = list[object]


def _int(obj: object, what: str) -> int:
    if type(obj) is not int or not 0 <= obj < _U64:
        raise DecodeError(f"{what}: expected an unsigned 64-bit integer, got {obj!r:.60}")
    return obj


def _bytes(obj: object, what: str) -> bytes:
    if type(obj) is not bytes:
        raise DecodeError(f"{what}: expected bytes, got {type(obj).__name__}")
    return obj


def _bool(obj: object, what: str) -> bool:
    if type(obj) is not bool:
        raise DecodeError(f"{what}: expected a bool, got {obj!r:.60}")
    return obj


def _array(obj: object, what: str, length: int | None = None) -> list[object]:
    if type(obj) is not list:
        raise DecodeError(f"{what}: expected an array, got {type(obj).__name__}")
    if length is not None and len(obj) != length:
        raise DecodeError(f"{what}: expected {length} items, got {len(obj)}")
    return obj


def _ids(obj: object, what: str) -> tuple[int, ...]:
    return tuple(_int(x, what) for x in _array(obj, what))


def _loads(data: bytes, what: str) -> list[object]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    buf = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(buf).decode()
    except Exception as exc:  # cbor2 raises many types on hostile input
        raise DecodeError(f"{what}: malformed CBOR: {exc}") from exc
    if buf.tell() != len(data):
        raise DecodeError(f"{what}: {len(data) - buf.tell()} trailing bytes")
    top = _array(obj, what)
    if not top:
        raise DecodeError(f"{what}: empty frame")
    version = top[0]
    if version != FORMAT_VERSION or type(version) is not int:
        raise DecodeError(f"{what}: unsupported format version {version!r:.20}")
    return top


def _dumps(array: Array) -> bytes:
    return cbor2.dumps([FORMAT_VERSION, *array])


# -- Entry --


def entry_to_array(entry: Entry) -> Array:
    """``entry`` as a plain CBOR-ready array (for embedding in larger records)."""
    return [entry.term, entry.index, int(entry.type), entry.data]


def entry_from_array(obj: object) -> Entry:
    """The inverse of :func:`entry_to_array`. Raises :class:`DecodeError` on bad input."""
    a = _array(obj, "entry", 4)
    t = _int(a[2], "entry type")
    if t > EntryType.CONF_CHANGE_V2:
        raise DecodeError(f"entry: unknown type {t}")
    return Entry(
        _int(a[0], "entry term"),
        _int(a[1], "entry index"),
        _ENTRY_TYPES[t],  # EntryType(t)
        _bytes(a[3], "entry data"),
    )


def encode_entry(entry: Entry) -> bytes:
    """``entry`` as a versioned CBOR frame."""
    return _dumps(entry_to_array(entry))


def decode_entry(data: bytes) -> Entry:
    """The inverse of :func:`encode_entry`. Raises :class:`DecodeError` on bad input."""
    top = _loads(data, "entry")
    if len(top) != 5:
        raise DecodeError(f"entry: expected 4 fields, got {len(top) - 1}")
    return entry_from_array(top[1:])


# -- HardState --


def hard_state_to_array(hs: HardState) -> Array:
    """``hs`` as a plain CBOR-ready array."""
    return [hs.term, hs.vote, hs.commit]


def hard_state_from_array(obj: object) -> HardState:
    """The inverse of :func:`hard_state_to_array`."""
    a = _array(obj, "hard state", 3)
    return HardState(_int(a[0], "term"), _int(a[1], "vote"), _int(a[2], "commit"))


def encode_hard_state(hs: HardState) -> bytes:
    """``hs`` as a versioned CBOR frame."""
    return _dumps(hard_state_to_array(hs))


def decode_hard_state(data: bytes) -> HardState:
    """The inverse of :func:`encode_hard_state`."""
    return hard_state_from_array(_loads(data, "hard state")[1:])


# -- ConfState, Snapshot --


def conf_state_to_array(cs: ConfState) -> Array:
    """``cs`` as a plain CBOR-ready array."""
    return [
        list(cs.voters),
        list(cs.learners),
        list(cs.voters_outgoing),
        list(cs.learners_next),
        cs.auto_leave,
    ]


def conf_state_from_array(obj: object) -> ConfState:
    """The inverse of :func:`conf_state_to_array`."""
    a = _array(obj, "conf state", 5)
    return ConfState(
        voters=_ids(a[0], "voters"),
        learners=_ids(a[1], "learners"),
        voters_outgoing=_ids(a[2], "voters_outgoing"),
        learners_next=_ids(a[3], "learners_next"),
        auto_leave=_bool(a[4], "auto_leave"),
    )


def encode_conf_state(cs: ConfState) -> bytes:
    """``cs`` as a versioned CBOR frame."""
    return _dumps(conf_state_to_array(cs))


def decode_conf_state(data: bytes) -> ConfState:
    """The inverse of :func:`encode_conf_state`."""
    return conf_state_from_array(_loads(data, "conf state")[1:])


def snapshot_to_array(snap: Snapshot) -> Array:
    """``snap`` (data and metadata) as a plain CBOR-ready array."""
    md = snap.metadata
    return [snap.data, [conf_state_to_array(md.conf_state), md.index, md.term]]


def snapshot_from_array(obj: object) -> Snapshot:
    """The inverse of :func:`snapshot_to_array`."""
    a = _array(obj, "snapshot", 2)
    md = _array(a[1], "snapshot metadata", 3)
    return Snapshot(
        data=_bytes(a[0], "snapshot data"),
        metadata=SnapshotMetadata(
            conf_state=conf_state_from_array(md[0]),
            index=_int(md[1], "snapshot index"),
            term=_int(md[2], "snapshot term"),
        ),
    )


def encode_snapshot(snap: Snapshot) -> bytes:
    """``snap`` as a versioned CBOR frame."""
    return _dumps(snapshot_to_array(snap))


def decode_snapshot(data: bytes) -> Snapshot:
    """The inverse of :func:`encode_snapshot`."""
    return snapshot_from_array(_loads(data, "snapshot")[1:])


# -- Message --


def message_to_array(m: Message) -> Array:
    """``m`` as a plain CBOR-ready array."""
    return [
        int(m.type), m.to, m.from_, m.term, m.log_term, m.index,
        [[e.term, e.index, int(e.type), e.data] for e in m.entries],
        m.commit,
        None if m.snapshot is None else snapshot_to_array(m.snapshot),
        m.reject, m.reject_hint, m.context,
    ]  # fmt: skip


def message_from_array(obj: object) -> Message:
    """The inverse of :func:`message_to_array`."""
    a = _array(obj, "message", 12)
    t = _int(a[0], "message type")
    if t > MessageType.PRE_VOTE_RESP:
        raise DecodeError(f"message: unknown type {t}")
    snap = None if a[8] is None else snapshot_from_array(a[8])
    return _new_message(  # Message(...), the fields decoded in their order
        _MESSAGE_TYPES[t],  # type: MessageType(t)
        _int(a[1], "to"),
        _int(a[2], "from"),
        _int(a[3], "term"),
        _int(a[4], "log_term"),
        _int(a[5], "index"),
        tuple([entry_from_array(e) for e in _array(a[6], "entries")]),
        _int(a[7], "commit"),
        snap,
        _bool(a[9], "reject"),
        _int(a[10], "reject_hint"),
        _bytes(a[11], "context"),
    )


def encode_message(m: Message) -> bytes:
    """``m`` as a versioned CBOR frame, which :func:`decode_message` turns back into ``m``.

    Raises:
        InvalidMessageError: ``m`` is not a message :func:`decode_message` could return (a field
            of the wrong type or out of range); nothing is encoded.
    """
    return _dumps(message_to_array(check_message(m)))


def decode_message(data: bytes) -> Message:
    """The inverse of :func:`encode_message`. Raises only :class:`DecodeError` on bad input."""
    top = _loads(data, "message")
    if len(top) != 13:
        raise DecodeError(f"message: expected 12 fields, got {len(top) - 1}")
    return message_from_array(top[1:])


def encode_messages(messages: Sequence[Message]) -> bytes:
    """A batch of messages as one versioned CBOR frame (one frame per transport write).

    Raises:
        InvalidMessageError: one of ``messages`` is malformed, as for :func:`encode_message`.
    """
    return _dumps([message_to_array(check_message(m)) for m in messages])


def decode_messages(data: bytes) -> list[Message]:
    """The inverse of :func:`encode_messages`. Raises only :class:`DecodeError` on bad input."""
    return [message_from_array(m) for m in _loads(data, "message batch")[1:]]


# -- configuration changes (the data of CONF_CHANGE / CONF_CHANGE_V2 entries) --


def encode_conf_change(cc: ConfChange | ConfChangeV2) -> bytes:
    """``cc`` as entry data; use entry type ``CONF_CHANGE`` or ``CONF_CHANGE_V2`` to match."""
    if isinstance(cc, ConfChange):
        return _dumps([int(cc.type), cc.node_id, cc.context, cc.id])
    return _dumps([int(cc.transition), [[int(c.type), c.node_id] for c in cc.changes], cc.context])


def _cc_type(obj: object) -> ConfChangeType:
    t = _int(obj, "conf change type")
    if t > ConfChangeType.ADD_LEARNER_NODE:
        raise DecodeError(f"conf change: unknown type {t}")
    return ConfChangeType(t)


def decode_conf_change(entry_type: EntryType, data: bytes) -> ConfChange | ConfChangeV2:
    """Decode the data of a configuration-change entry of ``entry_type``.

    Raises:
        DecodeError: ``data`` is malformed, or ``entry_type`` is ``NORMAL``.
    """
    if entry_type == EntryType.CONF_CHANGE:
        a = _loads(data, "conf change")
        if len(a) != 5:
            raise DecodeError(f"conf change: expected 4 fields, got {len(a) - 1}")
        return ConfChange(
            type=_cc_type(a[1]),
            node_id=_int(a[2], "node_id"),
            context=_bytes(a[3], "context"),
            id=_int(a[4], "id"),
        )
    if entry_type == EntryType.CONF_CHANGE_V2:
        a = _loads(data, "conf change v2")
        if len(a) != 4:
            raise DecodeError(f"conf change v2: expected 3 fields, got {len(a) - 1}")
        tr = _int(a[1], "transition")
        if tr > ConfChangeTransition.JOINT_EXPLICIT:
            raise DecodeError(f"conf change v2: unknown transition {tr}")
        changes = []
        for c in _array(a[2], "changes"):
            pair = _array(c, "change", 2)
            changes.append(ConfChangeSingle(_cc_type(pair[0]), _int(pair[1], "node_id")))
        return ConfChangeV2(
            transition=ConfChangeTransition(tr),
            changes=tuple(changes),
            context=_bytes(a[3], "context"),
        )
    raise DecodeError(f"entry type {entry_type!r} does not hold a configuration change")
