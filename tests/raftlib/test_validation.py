"""Inputs at the boundary: what RawNode.propose, propose_conf_change and step refuse, with which
error, and that a refusal changes nothing.

Also home to :func:`maybe_malformed`, the strategy that corrupts well-formed messages, and
:func:`round_trips_raw`, the independent oracle for "the codec could carry this message";
test_codec.py and test_fuzz_step.py import both.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import attrs
import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import raftlib
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
    ExternalSnapshotData,
    InvalidMessageError,
    Message,
    MessageType,
    MisroutedMessageError,
    RaftError,
    RawNode,
    Snapshot,
    SnapshotMetadata,
    codec,
)
from raftlib.confchange import Changer, restore
from raftlib.tracker.tracker import ProgressTracker
from raftlib.validate import conf_state_problem

from .helpers import drain, elect, new_node, snapshot_at, storage_with

MT = MessageType

# -- strategies and oracles shared with test_codec.py and test_fuzz_step.py --

# Values of the wrong type (or range) for at least some field; a few are right for others.
JUNK: list[object] = [
    None,
    -1,
    1 << 64,
    True,
    0,
    1.5,
    "s",
    b"b",
    bytearray(b"b"),
    memoryview(b"m"),
    [],
    (),
    [1],
    {1},
    MessageType.APP,
    EntryType.NORMAL,
    Entry(),
    ConfState(),
]
junk = st.sampled_from(JUNK)

_MESSAGE_FIELDS = [f.name for f in attrs.fields(Message)]
_ENTRY_FIELDS = [f.name for f in attrs.fields(Entry)]
_CS_FIELDS = [f.name for f in attrs.fields(ConfState)]


def _set(obj: object, name: str, value: object) -> object:
    """A copy of frozen attrs instance ``obj`` with ``name`` set to ``value``, no checks run."""
    dup = copy.copy(obj)
    object.__setattr__(dup, name, value)
    return dup


@st.composite
def _corrupt_snapshot(draw: st.DrawFn, snap: object) -> object:
    if not (
        type(snap) is Snapshot
        and type(snap.metadata) is SnapshotMetadata
        and type(snap.metadata.conf_state) is ConfState
    ):
        snap = snapshot_at(3, 1)
    where = draw(st.sampled_from(["whole", "data", "metadata", "md_field", "cs", "cs_field"]))
    md = snap.metadata
    match where:
        case "whole":
            return draw(junk)
        case "data":
            return _set(snap, "data", draw(junk))
        case "metadata":
            return _set(snap, "metadata", draw(junk))
        case "md_field":
            return _set(
                snap, "metadata", _set(md, draw(st.sampled_from(["index", "term"])), draw(junk))
            )
        case "cs":
            return _set(snap, "metadata", _set(md, "conf_state", draw(junk)))
        case _:
            name = draw(st.sampled_from(_CS_FIELDS))
            value = draw(junk | st.tuples(junk))  # a bad collection, or one bad id
            return _set(snap, "metadata", _set(md, "conf_state", _set(md.conf_state, name, value)))


@st.composite
def _corrupt(draw: st.DrawFn, m: Message) -> object:
    where = draw(st.sampled_from(["whole", "field", "entries", "entry", "entry_field", "snapshot"]))
    match where:
        case "whole":
            return draw(junk)
        case "field":
            return _set(m, draw(st.sampled_from(_MESSAGE_FIELDS)), draw(junk))
        case "entries":
            as_list = list(m.entries) if type(m.entries) is tuple else [Entry()]
            return _set(m, "entries", draw(st.sampled_from([as_list, None, "e"])))
        case "entry" | "entry_field":
            ents: list[object] = list(m.entries) if type(m.entries) is tuple else []
            ents = ents or [Entry(term=1, index=1)]
            i = draw(st.integers(0, len(ents) - 1))
            if where == "entry" or type(ents[i]) is not Entry:
                ents[i] = draw(junk)
            else:
                ents[i] = _set(ents[i], draw(st.sampled_from(_ENTRY_FIELDS)), draw(junk))
            return _set(m, "entries", tuple(ents))
        case _:
            return _set(m, "snapshot", draw(_corrupt_snapshot(m.snapshot)))


@st.composite
def maybe_malformed(draw: st.DrawFn, base: st.SearchStrategy[Message]) -> object:
    """A message from ``base``, left alone or with one to three fields (possibly nested) made
    wrong: the wrong type, out of range, or not a Message at all."""
    obj: object = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        if type(obj) is not Message:
            break
        obj = draw(_corrupt(obj))
    return obj


def typed(x: object) -> object:
    """``x`` as nested (type, value) pairs: equal only if equal *and* of the same types."""
    cls = type(x)
    if attrs.has(cls):
        return (cls, tuple(typed(getattr(x, f.name)) for f in attrs.fields(cls)))
    if isinstance(x, (tuple, list)):
        return (type(x), tuple(typed(i) for i in x))
    return (type(x), x)


def round_trips_raw(m: object) -> bool:
    """Whether ``m``, encoded *without* any check, decodes back to a value identical to it.

    The oracle for what encode_message may accept and step must refuse: it shares no code with
    raftlib.validate.
    """
    try:
        frame = cbor2.dumps([codec.FORMAT_VERSION, *codec.message_to_array(m)])  # type: ignore[arg-type]
        return typed(codec.decode_message(frame)) == typed(m)
    except Exception:  # noqa: BLE001 - any failure means "does not round-trip"
        return False


# -- error classes --


def test_error_hierarchy() -> None:
    for cls in (InvalidMessageError, MisroutedMessageError):
        assert issubclass(cls, RaftError)
        assert issubclass(cls, ValueError)
        assert not issubclass(cls, DecodeError)
        assert not issubclass(DecodeError, cls)
        assert cls.__name__ in raftlib.__all__


# -- propose --


def _leader() -> tuple[RawNode, raftlib.MemoryStorage]:
    s = storage_with(entries=[(1, 1), (1, 2), (2, 3)], term=2, commit=2)
    node = new_node(1, s)
    drain(node, s)
    elect(node, s)
    return node, s


def _durable(node: RawNode) -> object:
    """What a step or proposal must not change when it is refused."""
    r = node._raft
    log = r.log
    return (
        r.hard_state(),
        tuple(log.slice(log.first_index(), log.last_index() + 1, None)),
        tuple(log.unstable.entries),
        log.unstable.snapshot,
        log.snapshot().metadata,
        r.pending_conf_index,
    )


@pytest.mark.parametrize("data", ["text", None, 5, [1, 2], 1.5, bytearray, object()])
def test_propose_refuses_data_that_is_not_bytes_like(data: object) -> None:
    node, _ = _leader()
    before = _durable(node)
    with pytest.raises(TypeError, match="bytes, bytearray or memoryview"):
        node.propose(data)  # type: ignore[arg-type]
    assert _durable(node) == before
    assert not node.has_ready()


def test_propose_of_text_says_to_encode_it() -> None:
    node, _ = _leader()
    with pytest.raises(TypeError, match=r"data\.encode\(\)"):
        node.propose("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview])
def test_propose_stores_bytes_like_data_as_bytes(make: Callable[[bytes], object]) -> None:
    node, _ = _leader()
    buf = make(b"payload")
    node.propose(buf)  # type: ignore[arg-type]
    if isinstance(buf, bytearray):
        buf[0:1] = b"X"  # a later change to the caller's buffer does not reach the log
    rd = node.ready()
    assert [e.data for e in rd.entries] == [b"payload"]
    assert all(type(e.data) is bytes for e in rd.entries)
    # and it can be encoded, as any entry bound for disk or the wire must be
    assert codec.decode_entry(codec.encode_entry(rd.entries[0])) == rd.entries[0]


# -- propose_conf_change --


def _cc(**kw: object) -> ConfChange:
    cc = ConfChange(ConfChangeType.ADD_NODE, 4)
    for k, v in kw.items():
        cc = _set(cc, k, v)  # type: ignore[assignment]
    return cc


def _cc2(**kw: object) -> ConfChangeV2:
    cc = ConfChangeV2(changes=(ConfChangeSingle(ConfChangeType.ADD_NODE, 4),))
    for k, v in kw.items():
        cc = _set(cc, k, v)  # type: ignore[assignment]
    return cc


@pytest.mark.parametrize(
    ("cc", "error", "match"),
    [
        (None, TypeError, "ConfChange or ConfChangeV2, got NoneType"),
        (ConfChangeSingle(ConfChangeType.ADD_NODE, 4), TypeError, "got ConfChangeSingle"),
        ({"type": 0, "node_id": 4}, TypeError, "got dict"),
        (_cc(type=0), TypeError, r"ConfChange\.type must be a ConfChangeType"),
        (_cc(type=None), TypeError, r"ConfChange\.type"),
        (_cc(node_id="4"), TypeError, r"ConfChange\.node_id must be an int, got str"),
        (_cc(node_id=True), TypeError, r"ConfChange\.node_id must be an int, got bool"),
        (_cc(node_id=None), TypeError, r"ConfChange\.node_id"),
        (_cc(node_id=-1), ValueError, r"ConfChange\.node_id must be in 0\.\.2\*\*64-1"),
        (_cc(node_id=1 << 64), ValueError, r"ConfChange\.node_id"),
        (_cc(context="ctx"), TypeError, r"ConfChange\.context must be bytes, got str"),
        (_cc(context=None), TypeError, r"ConfChange\.context"),
        (_cc(id=-5), ValueError, r"ConfChange\.id"),
        (_cc2(transition=1), TypeError, r"ConfChangeV2\.transition must be a"),
        (_cc2(changes=[ConfChangeSingle(ConfChangeType.ADD_NODE, 4)]), TypeError, "tuple"),
        (_cc2(changes=(None,)), TypeError, r"changes\[0\] must be a ConfChangeSingle"),
        (
            _cc2(changes=(_set(ConfChangeSingle(ConfChangeType.ADD_NODE, 4), "type", 3),)),
            TypeError,
            r"changes\[0\]\.type",
        ),
        (
            _cc2(changes=(ConfChangeSingle(ConfChangeType.ADD_NODE, -4),)),
            ValueError,
            r"changes\[0\]\.node_id",
        ),
        (_cc2(context=bytearray(b"c")), TypeError, r"ConfChangeV2\.context"),
    ],
)
def test_propose_conf_change_refuses_malformed_changes(
    cc: object, error: type[Exception], match: str
) -> None:
    node, _ = _leader()
    before = _durable(node)
    with pytest.raises(error, match=match):
        node.propose_conf_change(cc)  # type: ignore[arg-type]
    assert _durable(node) == before
    assert not node.has_ready()


@pytest.mark.parametrize(
    "cc",
    [
        ConfChange(ConfChangeType.ADD_LEARNER_NODE, 4, b"ctx", id=(1 << 64) - 1),
        ConfChange(ConfChangeType.REMOVE_NODE, 0),  # node id 0: etcd's vetoed change
        ConfChangeV2(
            ConfChangeTransition.JOINT_EXPLICIT,
            (ConfChangeSingle(ConfChangeType.ADD_NODE, 4),),
            b"c",
        ),
    ],
)
def test_propose_conf_change_accepts_well_formed_changes(cc: ConfChange | ConfChangeV2) -> None:
    node, _ = _leader()
    node.propose_conf_change(cc)
    rd = node.ready()
    assert len(rd.entries) == 1
    assert codec.decode_conf_change(rd.entries[0].type, rd.entries[0].data) == cc


# -- step: objects of the wrong type or range --

_HB = Message(MT.HEARTBEAT, to=1, from_=2, term=2, commit=2)
_APP = Message(
    MT.APP, to=1, from_=2, term=2, index=3, log_term=2, entries=(Entry(2, 4, data=b"x"),)
)
_SNAP = Message(MT.SNAP, to=1, from_=2, term=3, snapshot=snapshot_at(9, 2))


def _snap_with(**md: object) -> Message:
    snap = snapshot_at(9, 2)
    meta: object = snap.metadata
    for k, v in md.items():
        if k in _CS_FIELDS:
            meta = _set(meta, "conf_state", _set(snap.metadata.conf_state, k, v))
        else:
            meta = _set(meta, k, v)
    return _set(_SNAP, "snapshot", _set(snap, "metadata", meta))  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("m", "match"),
    [
        (None, "expected a Message, got None"),
        ({"type": 8}, "expected a Message, got dict"),
        (Entry(), "expected a Message, got Entry"),
        (_set(_HB, "type", 8), r"Message\.type: expected MessageType, got 8"),
        (_set(_HB, "type", None), r"Message\.type: expected MessageType, got None"),
        (_set(_HB, "type", EntryType.NORMAL), r"Message\.type: expected MessageType"),
        (_set(_HB, "term", -1), r"Message\.term: expected an unsigned 64-bit integer, got -1"),
        (_set(_HB, "term", 1 << 64), r"Message\.term: expected an unsigned 64-bit integer"),
        (_set(_HB, "term", True), r"Message\.term: .* got True"),
        (_set(_HB, "term", None), r"Message\.term: .* got None"),
        (_set(_HB, "term", "2"), r"Message\.term: .* got str"),
        (_set(_HB, "term", 2.0), r"Message\.term: .* got float"),
        (_set(_HB, "to", None), r"Message\.to"),
        (_set(_HB, "from_", "2"), r"Message\.from_"),
        (_set(_HB, "commit", -3), r"Message\.commit"),
        (_set(_HB, "log_term", None), r"Message\.log_term"),
        (_set(_HB, "index", -1), r"Message\.index"),
        (_set(_HB, "reject_hint", None), r"Message\.reject_hint"),
        (_set(_HB, "reject", 0), r"Message\.reject: expected bool, got 0"),
        (_set(_HB, "context", "ctx"), r"Message\.context: expected bytes, got str"),
        (_set(_HB, "context", bytearray()), r"Message\.context: expected bytes, got bytearray"),
        (_set(_APP, "entries", list(_APP.entries)), r"Message\.entries: expected tuple"),
        (_set(_APP, "entries", None), r"Message\.entries: expected tuple, got None"),
        (_set(_APP, "entries", (None,)), r"Message\.entries\[0\]: expected Entry, got None"),
        (
            _set(_APP, "entries", (_set(Entry(2, 4), "data", "x"),)),
            r"Message\.entries\[0\]\.data: expected bytes, got str",
        ),
        (
            _set(_APP, "entries", (_set(Entry(2, 4), "data", None),)),
            r"Message\.entries\[0\]\.data",
        ),
        (_set(_APP, "entries", (_set(Entry(2, 4), "term", -2),)), r"entries\[0\]\.term"),
        (_set(_APP, "entries", (_set(Entry(2, 4), "index", None),)), r"entries\[0\]\.index"),
        (_set(_APP, "entries", (_set(Entry(2, 4), "type", 0),)), r"entries\[0\]\.type"),
        (_set(_SNAP, "snapshot", Entry()), r"Message\.snapshot: expected Snapshot, got Entry"),
        (_set(_SNAP, "snapshot", _set(snapshot_at(9, 2), "data", "s")), r"snapshot\.data"),
        (_set(_SNAP, "snapshot", _set(snapshot_at(9, 2), "metadata", None)), r"\.metadata"),
        (_snap_with(index=-9), r"snapshot\.metadata\.index"),
        (_snap_with(term=None), r"snapshot\.metadata\.term"),
        (_snap_with(conf_state=None), r"metadata\.conf_state: expected ConfState"),
        (_snap_with(voters=[1, 2, 3]), r"conf_state\.voters: expected tuple, got list"),
        (_snap_with(voters=(1, "2")), r"conf_state\.voters\[1\]"),
        (_snap_with(learners=(-1,)), r"conf_state\.learners\[0\]"),
        (_snap_with(auto_leave=None), r"conf_state\.auto_leave: expected bool"),
    ],
)
def test_step_refuses_malformed_objects_with_invalid_message_error(m: object, match: str) -> None:
    for role in ("follower", "leader"):
        node, _ = _leader() if role == "leader" else _follower()
        before = _durable(node)
        status = node.status()
        with pytest.raises(InvalidMessageError, match=match):
            node.step(m)  # type: ignore[arg-type]
        assert _durable(node) == before
        assert node.status() == status
        assert not node.has_ready()


def _follower() -> tuple[RawNode, raftlib.MemoryStorage]:
    s = storage_with(entries=[(1, 1), (1, 2), (2, 3)], term=2, commit=2)
    node = new_node(1, s)
    drain(node, s)
    return node, s


# -- step: well-typed messages of the wrong shape for a peer --


def test_forwarded_proposal_with_a_term_is_refused_before_the_term_is_adopted() -> None:
    # It used to move the follower to term 5 and only then drop the proposal (no leader).
    node, _ = _follower()
    before = _durable(node)
    with pytest.raises(InvalidMessageError, match="carries term 5"):
        node.step(Message(MT.PROP, to=1, from_=2, term=5, entries=(Entry(data=b"x"),)))
    assert _durable(node) == before
    assert node.status().hard_state.term == 2


def test_read_index_with_a_term_is_refused() -> None:
    node, _ = _follower()
    before = _durable(node)
    with pytest.raises(InvalidMessageError, match="travel without a term"):
        node.step(Message(MT.READ_INDEX, to=1, from_=2, term=7, context=b"r"))
    assert _durable(node) == before


@pytest.mark.parametrize(
    ("cs", "match"),
    [
        (ConfState(learners=(1,)), "without any incoming voter"),
        (ConfState(voters=(1, 2), learners=(2,)), "both learners and voters"),
        (ConfState(voters=(1, 2), voters_outgoing=(3,), learners=(3,)), "outgoing voters"),
        (ConfState(voters=(1, 0)), "node id 0"),
        (ConfState(voters=(1, 1)), "duplicate"),
        (ConfState(voters=(1,), learners_next=(2,)), "learners_next"),
        (ConfState(voters=(1,), auto_leave=True), "auto_leave"),
        (ConfState(voters=(), voters_outgoing=(1, 2)), "without any incoming voter"),
    ],
)
def test_snapshot_with_an_unrestorable_configuration_is_refused_before_it_is_installed(
    cs: ConfState, match: str
) -> None:
    # It used to install the snapshot (log and commit index replaced) and only then fail to
    # restore its configuration, with a RaftInvariantError blaming our own storage.
    node, _ = _follower()
    before = _durable(node)
    snap = Snapshot(b"s", SnapshotMetadata(conf_state=cs, index=9, term=2))
    with pytest.raises(InvalidMessageError, match=match):
        node.step(Message(MT.SNAP, to=1, from_=2, term=3, snapshot=snap))
    assert _durable(node) == before


@pytest.mark.parametrize("snap_term", [0, 4])
def test_snapshot_term_must_be_within_the_message_term(snap_term: int) -> None:
    node, _ = _follower()
    before = _durable(node)
    m = Message(MT.SNAP, to=1, from_=2, term=3, snapshot=snapshot_at(9, snap_term))
    with pytest.raises(InvalidMessageError, match="snapshot term"):
        node.step(m)
    assert _durable(node) == before


def test_well_formed_snapshot_still_installs() -> None:
    node, _ = _follower()
    node.step(_SNAP)
    assert node.ready().snapshot == _SNAP.snapshot


class _SpooledData(ExternalSnapshotData):
    """Snapshot data an application keeps outside memory (a spool file, say)."""

    def __len__(self) -> int:
        return 1 << 30


def _external_snap() -> Message:
    snap = attrs.evolve(snapshot_at(9, 2), data=_SpooledData())  # type: ignore[arg-type]
    return attrs.evolve(_SNAP, snapshot=snap)


def test_a_snapshot_with_external_data_installs_and_its_data_reaches_the_ready_untouched() -> None:
    node, _ = _follower()
    m = _external_snap()
    assert m.snapshot is not None
    node.step(m)
    rd = node.ready()
    assert rd.snapshot is not None
    assert rd.snapshot.data is m.snapshot.data
    assert rd.snapshot.metadata == m.snapshot.metadata


def test_the_codec_refuses_external_snapshot_data() -> None:
    # A transport sends such data by its own means; encoding it would lose it.
    with pytest.raises(InvalidMessageError, match=r"Message\.snapshot\.data: expected bytes"):
        codec.encode_message(_external_snap())


@pytest.mark.parametrize("data", [bytearray(b"snap"), memoryview(b"snap"), "snap", object()])
def test_snapshot_data_is_bytes_or_external_data_nothing_else(data: object) -> None:
    node, _ = _follower()
    before = _durable(node)
    snap = attrs.evolve(snapshot_at(9, 2), data=data)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match=r"Message\.snapshot\.data: expected bytes"):
        node.step(attrs.evolve(_SNAP, snapshot=snap))
    assert _durable(node) == before


@pytest.mark.parametrize(
    "m",
    [
        Message(MT.HEARTBEAT, to=2, from_=3, term=2),
        Message(MT.HEARTBEAT, to=0, from_=3, term=2),
        Message(MT.APP, to=1, from_=1, term=2, index=3, log_term=2),
    ],
)
def test_misrouted_messages_raise_misrouted_message_error(m: Message) -> None:
    node, _ = _follower()
    before = _durable(node)
    with pytest.raises(MisroutedMessageError):
        node.step(m)
    assert _durable(node) == before


def test_append_past_the_last_representable_index_is_refused() -> None:
    # step checks an append's entries in the loop that checks their order, where the index
    # range follows from m.index except for the very last one.
    node, _ = _follower()
    top = (1 << 64) - 1
    m = Message(MT.APP, to=1, from_=2, term=2, index=top, log_term=2, entries=(Entry(2, top + 1),))
    with pytest.raises(InvalidMessageError, match="2\\*\\*64"):
        node.step(m)
    with pytest.raises(InvalidMessageError, match=r"entries\[0\]\.index"):
        codec.encode_message(m)


def test_malformed_takes_precedence_over_misrouted() -> None:
    node, _ = _follower()
    bad_entry = _set(Entry(2, 4), "data", "x")
    for m in (
        _set(_set(_APP, "to", 9), "entries", (bad_entry,)),
        _set(_set(_HB, "to", 9), "context", "x"),
        Message(MT.APP, to=9, from_=0, term=2),
    ):
        with pytest.raises(InvalidMessageError):
            node.step(m)  # type: ignore[arg-type]


def test_well_formed_messages_still_work() -> None:
    node, s = _follower()
    node.step(_APP)
    drain(node, s)
    assert s.last_index() == 4
    assert s.term(4) == 2


# -- the configuration rules are exactly what restore() can rebuild --

_ids = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@given(
    st.builds(
        ConfState,
        voters=_ids,
        learners=_ids,
        voters_outgoing=_ids,
        learners_next=_ids,
        auto_leave=st.booleans(),
    )
)
def test_conf_state_rules_match_what_restore_rebuilds(cs: ConfState) -> None:
    restorable = False
    with contextlib.suppress(raftlib.ConfigError):
        cfg, _ = restore(Changer(ProgressTracker(256, 0), 0), cs)
        restorable = cfg.conf_state().equivalent(cs)
    assert (conf_state_problem(cs) == "") == restorable, conf_state_problem(cs)


# -- the oracle and the strategy themselves --


def test_oracle_accepts_well_formed_and_rejects_malformed() -> None:
    assert round_trips_raw(_APP)
    assert round_trips_raw(_SNAP)
    assert not round_trips_raw(_set(_HB, "term", -1))
    assert not round_trips_raw(_set(_HB, "context", bytearray(b"c")))
    assert not round_trips_raw(_set(_HB, "type", EntryType.NORMAL))  # equal as ints, not typed
    assert not round_trips_raw(None)
