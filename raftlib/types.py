"""The values raftlib exchanges with its caller: log entries, states, snapshots and messages.

Every type here is a frozen ``attrs`` class with slots (or an ``IntEnum``). Immutability is what
lets the same :class:`Entry` sit in storage, in a message and in a :class:`~raftlib.Ready` at once
without copies. Change a value with :func:`attrs.evolve`.

The integer values of the enums match etcd's raft protobuf enums, so logs and traces read the
same way and the wire codec (:mod:`raftlib.codec`) stores small integers.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable

import attrs

__all__ = [
    "ENTRY_OVERHEAD",
    "ConfChange",
    "ConfChangeSingle",
    "ConfChangeTransition",
    "ConfChangeType",
    "ConfChangeV2",
    "ConfState",
    "Entry",
    "EntryType",
    "ExternalSnapshotData",
    "HardState",
    "Message",
    "MessageType",
    "ReadState",
    "Snapshot",
    "SnapshotMetadata",
    "SoftState",
    "StateType",
    "entry_size",
    "is_local_message",
    "is_response_message",
    "vote_response_type",
]

ENTRY_OVERHEAD = 16
"""Bytes charged for an entry on top of its payload when sizing messages and fetches.

It stands in for the encoded term, index and type, so that ``max_size`` limits also bound the
number of empty entries (etcd charges the protobuf size for the same reason).
"""


class EntryType(enum.IntEnum):
    """What an entry's ``data`` holds."""

    NORMAL = 0
    CONF_CHANGE = 1
    CONF_CHANGE_V2 = 2


class MessageType(enum.IntEnum):
    """Message kinds, numbered as in etcd's raftpb.MessageType.

    ``HUP``, ``BEAT``, ``UNREACHABLE``, ``SNAP_STATUS`` and ``CHECK_QUORUM`` are local: the library
    makes them from ``tick()``/``campaign()``/``report_*`` calls and they never travel between
    nodes.
    """

    HUP = 0
    BEAT = 1
    PROP = 2
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    SNAP = 7
    HEARTBEAT = 8
    HEARTBEAT_RESP = 9
    UNREACHABLE = 10
    SNAP_STATUS = 11
    CHECK_QUORUM = 12
    TRANSFER_LEADER = 13
    TIMEOUT_NOW = 14
    READ_INDEX = 15
    READ_INDEX_RESP = 16
    PRE_VOTE = 17
    PRE_VOTE_RESP = 18


_LOCAL = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
        MessageType.CHECK_QUORUM,
    }
)
_RESPONSES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.UNREACHABLE,
        MessageType.READ_INDEX_RESP,
        MessageType.PRE_VOTE_RESP,
    }
)


def is_local_message(t: MessageType) -> bool:
    """Whether ``t`` is made inside the library and must never arrive from a peer."""
    return t in _LOCAL


def is_response_message(t: MessageType) -> bool:
    """Whether ``t`` answers an earlier message (and so needs a known sender)."""
    return t in _RESPONSES


def vote_response_type(t: MessageType) -> MessageType:
    """The response type for a vote or pre-vote request."""
    if t == MessageType.VOTE:
        return MessageType.VOTE_RESP
    if t == MessageType.PRE_VOTE:
        return MessageType.PRE_VOTE_RESP
    raise ValueError(f"not a vote message type: {t!r}")


class StateType(enum.IntEnum):
    """A node's role."""

    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


class ConfChangeType(enum.IntEnum):
    """One membership operation."""

    ADD_NODE = 0
    REMOVE_NODE = 1
    UPDATE_NODE = 2
    ADD_LEARNER_NODE = 3


class ConfChangeTransition(enum.IntEnum):
    """How a :class:`ConfChangeV2` moves between configurations.

    ``AUTO`` uses joint consensus only when the change needs it (more than one voter changes) and
    then leaves the joint configuration automatically. ``JOINT_IMPLICIT`` always goes through a
    joint configuration and leaves it automatically; ``JOINT_EXPLICIT`` waits for the application
    to propose an empty :class:`ConfChangeV2` to leave.
    """

    AUTO = 0
    JOINT_IMPLICIT = 1
    JOINT_EXPLICIT = 2


def _int_tuple(value: object) -> tuple[int, ...]:
    if isinstance(value, tuple):
        return value
    if isinstance(value, (list, set, frozenset)):
        return tuple(sorted(value))
    raise TypeError(f"expected a collection of node ids, got {type(value).__name__}")


@attrs.frozen(slots=True)
class Entry:
    """One log entry. ``data`` is opaque to raftlib unless ``type`` is a configuration change."""

    term: int = 0
    index: int = 0
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


def entry_size(entry: Entry) -> int:
    """Bytes charged for ``entry`` against size limits: payload plus :data:`ENTRY_OVERHEAD`."""
    return len(entry.data) + ENTRY_OVERHEAD


@attrs.frozen(slots=True)
class HardState:
    """What a node must persist before it may send the messages that depend on it."""

    term: int = 0
    vote: int = 0
    commit: int = 0

    def is_empty(self) -> bool:
        """Whether this is the zero hard state of a node that has never run."""
        return self.term == 0 and self.vote == 0 and self.commit == 0


@attrs.frozen(slots=True)
class SoftState:
    """Volatile state worth reporting to the application: who leads, and our role."""

    lead: int = 0
    raft_state: StateType = StateType.FOLLOWER


@attrs.frozen(slots=True)
class ConfState:
    """The membership configuration, as stored in snapshots and returned by ``apply_conf_change``.

    ``voters_outgoing`` is non-empty only in a joint configuration; ``learners_next`` holds voters
    that become learners when the joint configuration is left. Id collections are sorted tuples.
    """

    voters: tuple[int, ...] = attrs.field(default=(), converter=_int_tuple)
    learners: tuple[int, ...] = attrs.field(default=(), converter=_int_tuple)
    voters_outgoing: tuple[int, ...] = attrs.field(default=(), converter=_int_tuple)
    learners_next: tuple[int, ...] = attrs.field(default=(), converter=_int_tuple)
    auto_leave: bool = False

    def equivalent(self, other: ConfState) -> bool:
        """Whether both describe the same configuration, ignoring the order of ids."""
        return (
            sorted(self.voters) == sorted(other.voters)
            and sorted(self.learners) == sorted(other.learners)
            and sorted(self.voters_outgoing) == sorted(other.voters_outgoing)
            and sorted(self.learners_next) == sorted(other.learners_next)
            and self.auto_leave == other.auto_leave
        )


@attrs.frozen(slots=True)
class SnapshotMetadata:
    """Where a snapshot sits in the log, and the configuration in force at that point."""

    conf_state: ConfState = ConfState()
    index: int = 0
    term: int = 0


class ExternalSnapshotData(abc.ABC):
    """Snapshot data that stays outside memory (a file, say); raftlib passes it through unread.

    A snapshot can be as large as the whole replicated state. An application whose transport
    spools an incoming snapshot to disk can step the snapshot message with such data instead of
    reading it into ``bytes``: :meth:`~raftlib.RawNode.step` accepts a
    :class:`Snapshot` whose ``data`` is ``bytes`` or an instance of a subclass of this (or of a
    class registered with :meth:`~abc.ABCMeta.register`). raftlib then hands the same object
    to the storage (``Ready.snapshot``) and to the application's restore, so both must understand
    it. The wire codec refuses it: a transport sends such data by its own means.
    """

    __slots__ = ()

    @abc.abstractmethod
    def __len__(self) -> int:
        """The data's size in bytes."""


@attrs.frozen(slots=True)
class Snapshot:
    """A state-machine snapshot. ``data`` is the application's; raftlib never looks inside.

    ``data`` is ``bytes``, or, in a snapshot message given to
    :meth:`~raftlib.RawNode.step`, an :class:`ExternalSnapshotData`.
    """

    data: bytes = b""
    metadata: SnapshotMetadata = SnapshotMetadata()

    def is_empty(self) -> bool:
        """Whether this is the placeholder of a log that has never been compacted."""
        return self.metadata.index == 0


@attrs.frozen(slots=True)
class ConfChangeSingle:
    """One step of a :class:`ConfChangeV2`."""

    type: ConfChangeType
    node_id: int


def _changes_tuple(value: Iterable[ConfChangeSingle]) -> tuple[ConfChangeSingle, ...]:
    return value if isinstance(value, tuple) else tuple(value)


@attrs.frozen(slots=True)
class ConfChange:
    """A one-node membership change (etcd's original ConfChange)."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""
    id: int = 0

    def as_v2(self) -> ConfChangeV2:
        """The equivalent :class:`ConfChangeV2`."""
        return ConfChangeV2(
            changes=(ConfChangeSingle(self.type, self.node_id),), context=self.context
        )


@attrs.frozen(slots=True)
class ConfChangeV2:
    """A membership change of any number of nodes; see :class:`ConfChangeTransition`.

    An empty ``changes`` means "leave the current joint configuration".
    """

    transition: ConfChangeTransition = ConfChangeTransition.AUTO
    changes: tuple[ConfChangeSingle, ...] = attrs.field(default=(), converter=_changes_tuple)
    context: bytes = b""

    def as_v2(self) -> ConfChangeV2:
        """Itself; lets callers treat both change types alike."""
        return self

    def enter_joint(self) -> tuple[bool, bool]:
        """Whether applying this change enters a joint configuration, and if so, auto-leaves.

        Returns:
            ``(use_joint, auto_leave)``.
        """
        if self.transition != ConfChangeTransition.AUTO or len(self.changes) > 1:
            if self.transition in (ConfChangeTransition.AUTO, ConfChangeTransition.JOINT_IMPLICIT):
                return True, True
            return True, False
        return False, False

    def leave_joint(self) -> bool:
        """Whether this is the empty change that leaves a joint configuration (context ignored)."""
        return not self.changes and self.transition == ConfChangeTransition.AUTO


@attrs.frozen(slots=True)
class Message:
    """A message between nodes, or a local event stepped into a node.

    Fields follow etcd's raftpb.Message. ``log_term``/``index`` name the entry preceding
    ``entries`` in APP, the candidate's last entry in (PRE_)VOTE, and the rejected index in a
    rejecting APP_RESP; ``reject_hint`` is the follower's hint for fast back-off; ``context``
    carries a ReadIndex request's id, or the campaign kind in a transfer-triggered VOTE.
    """

    type: MessageType
    to: int = 0
    from_: int = 0
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


@attrs.frozen(slots=True)
class ReadState:
    """An answered ReadIndex request: serve the read once applied up to ``index``."""

    index: int
    request_ctx: bytes


# -- building frozen values on raftlib's hot paths --
#
# A frozen attrs class sets each field in ``__init__`` through ``object.__setattr__`` (a C call
# that packs its arguments into a tuple): twelve of them make a Message cost about four times a
# plain slotted object. The hot paths build Messages and HardStates as a "draft" instead: an
# instance of a private subclass that adds nothing but ordinary attribute setting, filled in and
# then turned into the frozen class by class assignment (CPython allows it, the subclass adding
# nothing to the instance layout). The result is the object ``Message(...)`` builds: same class,
# fields, equality, hash, repr, frozenness, weak references, pickling and ``attrs.evolve``.
# Neither class has converters, validators or ``__attrs_post_init__`` to skip.


class _MessageDraft(Message):
    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    # Writable here (the annotations only tell type checkers so).
    type: MessageType
    to: int
    from_: int
    term: int
    log_term: int
    index: int
    entries: tuple[Entry, ...]
    commit: int
    snapshot: Snapshot | None
    reject: bool
    reject_hint: int
    context: bytes


class _HardStateDraft(HardState):
    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    term: int
    vote: int
    commit: int


_object_new = object.__new__


def _new_message(  # noqa: PLR0917 - Message's own positional fields
    type: MessageType,
    to: int,
    from_: int,
    term: int = 0,
    log_term: int = 0,
    index: int = 0,
    entries: tuple[Entry, ...] = (),
    commit: int = 0,
    snapshot: Snapshot | None = None,
    reject: bool = False,
    reject_hint: int = 0,
    context: bytes = b"",
) -> Message:
    """``Message(type, to, from_, ...)``, for raftlib's hot paths (see above)."""
    m = _object_new(_MessageDraft)
    m.type = type
    m.to = to
    m.from_ = from_
    m.term = term
    m.log_term = log_term
    m.index = index
    m.entries = entries
    m.commit = commit
    m.snapshot = snapshot
    m.reject = reject
    m.reject_hint = reject_hint
    m.context = context
    m.__class__ = Message  # type: ignore[assignment]  # the draft becomes a Message
    return m


def _new_hard_state(term: int, vote: int, commit: int) -> HardState:
    """``HardState(term, vote, commit)``, for raftlib's hot paths (see above)."""
    h = _object_new(_HardStateDraft)
    h.term = term
    h.vote = vote
    h.commit = commit
    h.__class__ = HardState  # type: ignore[assignment]
    return h
