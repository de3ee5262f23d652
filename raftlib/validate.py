"""Checks on values built inside the process, before raftlib trusts them (internal).

:mod:`raftlib.codec` validates *bytes*: whatever it decodes has the right types and ranges. A value
a caller builds in the process has had no such check: ``Message(type=3, term=-1)`` constructs
fine (attrs classes do not check types), and would fail later with an ``AttributeError`` deep in
the protocol, after part of the node's state had changed, or be persisted and make the node
unable to restart. These functions are the object-side twin of the decoders, used at the public
entry points:

* :func:`check_message`: exactly what :func:`~raftlib.codec.decode_message` can produce (used by
  :meth:`~raftlib.RawNode.step` and :func:`~raftlib.codec.encode_message`).
* :func:`check_peer_message`: the shape a message's type requires, for messages from peers (a
  contiguous append, a usable snapshot, ...). Only ``step`` needs it: the codec carries any
  well-typed message.
* :func:`check_stepped_message`: both of the above in one call, the local types refused in
  between: what ``step`` checks.
* :func:`proposal_data` and :func:`check_conf_change`: the arguments of ``propose`` and
  ``propose_conf_change``; these are the caller's own mistakes, so they raise ``TypeError`` and
  ``ValueError`` as any Python API would.

:func:`check_message` is on the hot path of ``step``: a well-formed message costs one chain of
``type(x) is T`` tests plus one per entry. Only a failing message pays for a readable explanation.
"""

from __future__ import annotations

from raftlib.errors import InvalidMessageError, StepLocalMessageError
from raftlib.types import (
    _LOCAL,
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfChangeV2,
    ConfState,
    Entry,
    EntryType,
    ExternalSnapshotData,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

__all__ = [
    "check_conf_change",
    "check_message",
    "check_peer_message",
    "check_stepped_message",
    "conf_state_problem",
    "proposal_data",
]

MT = MessageType

_U64 = 1 << 64

# ``bool`` under a wider static type: mypy deems ``type(x) is bool`` always true for an ``x``
# declared ``bool`` (bool is final), but here ``x`` may hold anything at run time.
_BOOL: type = bool

_INT_FIELDS = ("to", "from_", "term", "log_term", "index", "commit", "reject_hint")

# Messages that raftlib never stamps with a term (etcd's raft likewise): a proposal or read
# request forwarded to the leader is a local request travelling, not a statement about terms.
_UNTERMED = frozenset({MT.PROP, MT.READ_INDEX})

# Module constants for the checks below (on Python 3.11 ``MT.X`` is a slow lookup).
_APP = MT.APP
_SNAP = MT.SNAP
_PROP = MT.PROP


def _is_u64(x: object) -> bool:
    return type(x) is int and 0 <= x < _U64


def _describe(x: object) -> str:
    if type(x) in (int, bool) or x is None:
        return repr(x)
    return type(x).__name__


def _u64_problem(x: object, what: str) -> str:
    if _is_u64(x):
        return ""
    return f"{what}: expected an unsigned 64-bit integer, got {_describe(x)}"


def _type_problem(x: object, expected: type, what: str) -> str:
    if type(x) is expected:
        return ""
    return f"{what}: expected {expected.__name__}, got {_describe(x)}"


# -- Message --


def check_message(m: object, *, app_entries: bool = True) -> Message:
    """Check that ``m`` is a :class:`~raftlib.Message` the codec could have decoded.

    That is: a ``Message`` whose ``type`` is a :class:`~raftlib.MessageType`; whose integer fields
    are ``int`` (not ``bool``) in 0..2**64-1; ``reject`` a ``bool``; ``context`` ``bytes``;
    ``entries`` a tuple of :class:`~raftlib.Entry` (integer fields as above, ``type`` an
    :class:`~raftlib.EntryType`, ``data`` ``bytes``); ``snapshot`` ``None`` or a
    :class:`~raftlib.Snapshot` of the same strictness (node ids as tuples of such integers).
    Exact types are required, as the decoder produces them: ``bytearray`` is not ``bytes`` here.

    Args:
        m: the value to check.
        app_entries: False leaves the entries of an ``APP`` message unchecked, for a caller
            that passes ``m`` to :func:`check_peer_message` next, which checks them in the one
            loop that also checks that they follow on (``step``'s hot path).

    Returns:
        ``m``, typed as a ``Message``.

    Raises:
        InvalidMessageError: ``m`` is not such a message; the error names the first bad field.
    """
    if type(m) is not Message:
        raise InvalidMessageError(f"expected a Message, got {_describe(m)}")
    # One boolean chain for the common, well-formed case; explained only when it fails. The
    # fields are read once into locals, and their types compared in one chain of ``is``.
    to, frm, term, log_term, index, commit, hint = (
        m.to,
        m.from_,
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.reject_hint,
    )
    if not (
        type(m.type) is MessageType
        and type(to)
        is type(frm)
        is type(term)
        is type(log_term)
        is type(index)
        is type(commit)
        is type(hint)
        is int
        # All seven in 0..2**64-1 at once: an OR of ints is negative if any of them is, and
        # (when none is) below 2**64 exactly when all of them are.
        and 0 <= to | frm | term | log_term | index | commit | hint < _U64
        and type(m.reject) is _BOOL
        and type(m.context) is bytes
        and type(m.entries) is tuple
    ):
        raise InvalidMessageError(_message_problem(m))
    if m.entries and (app_entries or m.type is not _APP):
        _check_entries(m.entries)
    snap = m.snapshot
    if snap is not None:
        problem = _snapshot_problem(snap, "Message.snapshot")
        if problem:
            raise InvalidMessageError(problem)
    return m


def _check_entries(entries: tuple[Entry, ...]) -> None:
    for e in entries:
        if not (
            type(e) is Entry
            and type(e.term) is int
            and 0 <= e.term < _U64
            and type(e.index) is int
            and 0 <= e.index < _U64
            and type(e.type) is EntryType
            and type(e.data) is bytes
        ):
            raise InvalidMessageError(_entries_problem(entries))


def _message_problem(m: Message) -> str:
    problem = _type_problem(m.type, MessageType, "Message.type")
    for name in _INT_FIELDS:
        problem = problem or _u64_problem(getattr(m, name), f"Message.{name}")
    return (
        problem
        or _type_problem(m.reject, bool, "Message.reject")
        or _type_problem(m.context, bytes, "Message.context")
        or _type_problem(m.entries, tuple, "Message.entries")
    )


def _entry_problem(e: object, what: str) -> str:
    """Why ``e`` is not an :class:`~raftlib.Entry` the codec could have decoded ("" if it is)."""
    if type(e) is not Entry:
        return f"{what}: expected Entry, got {_describe(e)}"
    return (
        _u64_problem(e.term, f"{what}.term")
        or _u64_problem(e.index, f"{what}.index")
        or _type_problem(e.type, EntryType, f"{what}.type")
        or _type_problem(e.data, bytes, f"{what}.data")
    )


def _entries_problem(entries: tuple[Entry, ...]) -> str:
    for i, e in enumerate(entries):
        problem = _entry_problem(e, f"Message.entries[{i}]")
        if problem:
            return problem
    return ""


def _snapshot_problem(s: object, what: str, *, external: bool = False) -> str:
    """Why ``s`` is not a :class:`~raftlib.Snapshot` the codec could have decoded ("" if it is).

    With ``external``, data that is an :class:`~raftlib.ExternalSnapshotData` is accepted too
    (what ``step`` takes; the codec cannot encode it).
    """
    if type(s) is not Snapshot:
        return f"{what}: expected Snapshot, got {_describe(s)}"
    if not (external and isinstance(s.data, ExternalSnapshotData)):
        problem = _type_problem(s.data, bytes, f"{what}.data")
        if problem:
            return problem
    md = s.metadata
    if type(md) is not SnapshotMetadata:
        return f"{what}.metadata: expected SnapshotMetadata, got {_describe(md)}"
    problem = _u64_problem(md.index, f"{what}.metadata.index") or _u64_problem(
        md.term, f"{what}.metadata.term"
    )
    if problem:
        return problem
    cs = md.conf_state
    what = f"{what}.metadata.conf_state"
    if type(cs) is not ConfState:
        return f"{what}: expected ConfState, got {_describe(cs)}"
    for name in ("voters", "learners", "voters_outgoing", "learners_next"):
        ids = getattr(cs, name)
        if type(ids) is not tuple:
            return f"{what}.{name}: expected tuple, got {_describe(ids)}"
        for i, node in enumerate(ids):
            problem = _u64_problem(node, f"{what}.{name}[{i}]")
            if problem:
                return problem
    return _type_problem(cs.auto_leave, bool, f"{what}.auto_leave")


# -- the shape a message from a peer must have --


def check_peer_message(m: Message) -> None:
    """Check that ``m`` has the shape its type requires of a message from a peer.

    ``m`` must have passed :func:`check_message`, with or without ``app_entries``: the entries
    of an append are checked here in any case, types and order in one loop.

    A message from a peer must name its sender, and carry a term unless it is a forwarded
    proposal or read request (which never carry one: a term there would make this node adopt it
    before refusing the request). An append's entries must follow on from ``(index, log_term)``
    with consecutive indexes and non-decreasing terms no newer than the message's; a snapshot
    message needs a non-empty snapshot at a term no newer than the message's, whose configuration
    raftlib can restore (see :func:`conf_state_problem`); a proposal needs entries. Anything else
    would corrupt the log if trusted, or fail half way through changing it.

    Raises:
        InvalidMessageError: ``m`` does not have that shape.
    """
    t = m.type
    frm = m.from_
    term = m.term
    if frm == 0:
        raise InvalidMessageError(f"{t.name} without a sender")
    if t in _UNTERMED:
        if term != 0:
            raise InvalidMessageError(
                f"{t.name} from {frm} carries term {term}: forwarded proposals and read "
                "requests travel without a term"
            )
    elif term == 0:
        raise InvalidMessageError(f"{t.name} from {frm} without a term")
    if t is _APP:
        if m.entries:
            _check_append_entries(m)
    elif t is _SNAP:
        _check_snapshot_message(m)
    elif t is _PROP and not m.entries:
        raise InvalidMessageError(f"PROP from {frm} without entries")


def check_stepped_message(m: object) -> Message:
    """Everything :meth:`~raftlib.RawNode.step` checks before looking at the node, in one call.

    The same checks, in the same order and with the same errors, as
    ``check_message(m, app_entries=False)`` (except that a snapshot's data may also be an
    :class:`~raftlib.ExternalSnapshotData`), then refusing a type only raftlib itself creates
    (``StepLocalMessageError``), then ``check_peer_message(m)``; the fields are read once
    (``step``'s hot path). Keep it in step with those three.

    Returns:
        ``m``, typed as a ``Message``.

    Raises:
        InvalidMessageError: ``m`` is malformed, or not of the shape a peer's message must have.
        StepLocalMessageError: ``m`` is of a local type.
    """
    if type(m) is not Message:
        raise InvalidMessageError(f"expected a Message, got {_describe(m)}")
    t = m.type
    to, frm, term, log_term, index, commit, hint = (
        m.to,
        m.from_,
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.reject_hint,
    )
    entries = m.entries
    # check_message(m, app_entries=False)
    if not (
        type(t) is MessageType
        and type(to)
        is type(frm)
        is type(term)
        is type(log_term)
        is type(index)
        is type(commit)
        is type(hint)
        is int
        and 0 <= to | frm | term | log_term | index | commit | hint < _U64
        and type(m.reject) is _BOOL
        and type(m.context) is bytes
        and type(entries) is tuple
    ):
        raise InvalidMessageError(_message_problem(m))
    if entries and t is not _APP:
        _check_entries(entries)
    snap = m.snapshot
    if snap is not None:
        problem = _snapshot_problem(snap, "Message.snapshot", external=True)
        if problem:
            raise InvalidMessageError(problem)
    if t in _LOCAL:
        raise StepLocalMessageError(f"cannot step raft local message {t.name}")
    # check_peer_message(m)
    if frm == 0:
        raise InvalidMessageError(f"{t.name} without a sender")
    if t in _UNTERMED:
        if term != 0:
            raise InvalidMessageError(
                f"{t.name} from {frm} carries term {term}: forwarded proposals and read "
                "requests travel without a term"
            )
    elif term == 0:
        raise InvalidMessageError(f"{t.name} from {frm} without a term")
    if t is _APP:
        if entries:
            _check_append_entries(m)
    elif t is _SNAP:
        _check_snapshot_message(m)
    elif t is _PROP and not entries:
        raise InvalidMessageError(f"PROP from {frm} without entries")
    return m


def _check_append_entries(m: Message) -> None:
    """The entries of an append follow on from ``(index, log_term)``, within its term."""
    term = m.term
    expect = m.index + 1
    prev_term = m.log_term
    for e in m.entries:
        # Types first; then the ranges follow from the order: log_term <= e.term <= term,
        # and e.index == expect, which only the last entry of a log could push past 2**64-1.
        if not (
            type(e) is Entry
            and type(e.term) is int
            and type(e.index) is int
            and type(e.type) is EntryType
            and type(e.data) is bytes
            and e.index == expect
            and prev_term <= e.term <= term
        ):
            raise InvalidMessageError(_append_problem(m, e, expect, prev_term))
        expect += 1
        prev_term = e.term
    if expect > _U64:
        raise InvalidMessageError(f"APP from {m.from_}: entry index {expect - 1} >= 2**64")


def _check_snapshot_message(m: Message) -> None:
    """A snapshot message carries a snapshot raftlib can install."""
    snap = m.snapshot
    if snap is None or snap.is_empty():
        raise InvalidMessageError(f"SNAP from {m.from_} without a snapshot")
    md = snap.metadata
    if not 0 < md.term <= m.term:
        raise InvalidMessageError(
            f"SNAP from {m.from_}: snapshot term {md.term} is not in 1..{m.term}"
        )
    problem = conf_state_problem(md.conf_state)
    if problem:
        raise InvalidMessageError(f"SNAP from {m.from_}: {problem}")


def _append_problem(m: Message, e: Entry, expect: int, prev_term: int) -> str:
    problem = _entry_problem(e, f"Message.entries[{expect - m.index - 1}]")
    if problem:
        return problem
    return (
        f"APP from {m.from_}: entry (index {e.index}, term {e.term}) does not follow "
        f"(index {expect - 1}, term {prev_term}) at term {m.term}"
    )


def conf_state_problem(cs: ConfState) -> str:
    """Why raftlib could not restore ``cs`` exactly from a snapshot ("" if it can).

    ``cs`` must already have the right types (see :func:`check_message`). The rules are those of
    etcd's configuration invariants: node ids are non-zero and listed once; no learner is also a
    voter (incoming or outgoing); ``learners_next`` holds only outgoing voters that are not
    incoming voters; a non-joint configuration has no ``learners_next`` and no ``auto_leave``;
    and there are incoming voters whenever there are learners or outgoing voters.
    """
    voters = set(cs.voters)
    learners = set(cs.learners)
    outgoing = set(cs.voters_outgoing)
    nxt = set(cs.learners_next)
    for name, ids, as_set in (
        ("voters", cs.voters, voters),
        ("learners", cs.learners, learners),
        ("voters_outgoing", cs.voters_outgoing, outgoing),
        ("learners_next", cs.learners_next, nxt),
    ):
        if 0 in as_set:
            return f"conf state: node id 0 in {name}"
        if len(as_set) != len(ids):
            return f"conf state: duplicate node ids in {name}"
    if learners & voters:
        return f"conf state: nodes {sorted(learners & voters)} are both learners and voters"
    if learners & outgoing:
        return (
            f"conf state: nodes {sorted(learners & outgoing)} are both learners and outgoing voters"
        )
    if not nxt <= outgoing - voters:
        return (
            f"conf state: learners_next {sorted(nxt)} must be outgoing voters that are not "
            "incoming voters"
        )
    if not outgoing and cs.auto_leave:
        return "conf state: auto_leave is set but the configuration is not joint"
    if not voters and (learners or outgoing):
        return "conf state: learners or outgoing voters without any incoming voter"
    return ""


# -- the arguments of propose and propose_conf_change --


def proposal_data(data: object) -> bytes:
    """``data`` as ``bytes``, for :meth:`~raftlib.RawNode.propose`.

    Only bytes-like values are accepted: ``bytes``, ``bytearray`` and ``memoryview`` (copied into
    ``bytes``, so later changes to a mutable buffer do not reach the log). Anything else, text
    above all, is refused here: an entry whose data is not ``bytes`` cannot be encoded, and one
    persisted anyway would stop the node from restarting.

    Raises:
        TypeError: ``data`` is not bytes-like.
    """
    if type(data) is bytes:
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    hint = " (encode text first, e.g. data.encode())" if isinstance(data, str) else ""
    raise TypeError(
        f"proposal data must be bytes, bytearray or memoryview, got {type(data).__name__}{hint}"
    )


def _cc_int(x: object, what: str) -> None:
    if type(x) is not int:
        raise TypeError(f"{what} must be an int, got {type(x).__name__}")
    if not 0 <= x < _U64:
        raise ValueError(f"{what} must be in 0..2**64-1, got {x}")


def _cc_enum(x: object, enum_type: type, what: str) -> None:
    if type(x) is not enum_type:
        raise TypeError(f"{what} must be a {enum_type.__name__}, got {_describe(x)}")


def _cc_context(x: object, what: str) -> None:
    if type(x) is not bytes:
        raise TypeError(f"{what} must be bytes, got {type(x).__name__}")


def check_conf_change(cc: object) -> ConfChange | ConfChangeV2:
    """Check a membership change given to :meth:`~raftlib.RawNode.propose_conf_change`.

    ``cc`` must be a :class:`~raftlib.ConfChange` or :class:`~raftlib.ConfChangeV2` whose
    ``type``/``transition`` are members of their enums, node ids and ``id`` ints in 0..2**64-1
    (0 is the "vetoed change" id etcd uses, so it is allowed), ``context`` ``bytes`` and, for a
    ``ConfChangeV2``, ``changes`` a tuple of :class:`~raftlib.ConfChangeSingle`. This is what the
    leader (and every member applying the entry) can decode again; whether the change fits the
    current configuration is decided later, by the leader and by ``apply_conf_change``.

    Returns:
        ``cc``, typed.

    Raises:
        TypeError: ``cc`` or one of its fields has the wrong type.
        ValueError: an id is out of range.
    """
    if type(cc) is ConfChange:
        _cc_enum(cc.type, ConfChangeType, "ConfChange.type")
        _cc_int(cc.node_id, "ConfChange.node_id")
        _cc_context(cc.context, "ConfChange.context")
        _cc_int(cc.id, "ConfChange.id")
        return cc
    if type(cc) is ConfChangeV2:
        _cc_enum(cc.transition, ConfChangeTransition, "ConfChangeV2.transition")
        if type(cc.changes) is not tuple:
            raise TypeError(
                f"ConfChangeV2.changes must be a tuple, got {type(cc.changes).__name__}"
            )
        for i, c in enumerate(cc.changes):
            what = f"ConfChangeV2.changes[{i}]"
            if type(c) is not ConfChangeSingle:
                raise TypeError(f"{what} must be a ConfChangeSingle, got {type(c).__name__}")
            _cc_enum(c.type, ConfChangeType, f"{what}.type")
            _cc_int(c.node_id, f"{what}.node_id")
        _cc_context(cc.context, "ConfChangeV2.context")
        return cc
    raise TypeError(f"expected a ConfChange or ConfChangeV2, got {type(cc).__name__}")
