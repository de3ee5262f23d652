"""The public driving surface: :class:`RawNode` and the :class:`Ready` batches it hands out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from raftlib.codec import encode_conf_change
from raftlib.config import Config
from raftlib.errors import (
    MisroutedMessageError,
    RaftError,
    StepPeerNotFoundError,
)
from raftlib.raft import _Raft
from raftlib.status import ProgressStatus, Status
from raftlib.types import (
    _RESPONSES,
    ConfChange,
    ConfChangeType,
    ConfChangeV2,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SoftState,
    StateType,
)
from raftlib.validate import check_conf_change, check_stepped_message, proposal_data

__all__ = ["Peer", "RawNode", "Ready"]

MT = MessageType
_LEADER = StateType.LEADER
_CANDIDATE = StateType.CANDIDATE
_TRANSFER_LEADER = MT.TRANSFER_LEADER
_READ_INDEX = MT.READ_INDEX


@attrs.frozen(slots=True)
class Ready:
    """One batch of work for the application, from :meth:`RawNode.ready`.

    Handle a Ready in this order, then pass it back to :meth:`RawNode.advance`:

    1. Send ``messages`` at any time, even before persisting anything: they depend on nothing
       this Ready makes durable. (Appends a leader sends to followers are among them: the leader
       writes its own log in parallel with replicating it, thesis §10.2.1, because raftlib only
       counts the leader's own copy toward a commit after ``advance``.)
    2. Persist, durably (fsync when ``must_sync``): ``snapshot`` if set (install it first),
       then ``entries`` (appending them may overwrite a conflicting suffix of the stored log),
       then ``hard_state`` if set.
    3. Only then send ``persisted_messages``: votes, vote requests and append acknowledgements,
       which promise that the persisted state exists.
    4. Apply ``committed_entries`` in order, each exactly once, and only after step 2. Entries
       here may include some from this same Ready's ``entries``; raftlib never reports an entry
       as committed before it was handed out for persistence.
    5. Serve ``read_states`` once applied up to each one's index.
    6. Call :meth:`RawNode.advance` with this Ready.

    Attributes:
        soft_state: leader and role, if changed since the last Ready.
        hard_state: term, vote and commit to persist, if changed since the last Ready.
        entries: log entries to persist.
        snapshot: a snapshot received from the leader, to install and persist.
        committed_entries: entries to apply to the state machine.
        messages: messages to send now.
        persisted_messages: messages to send once this Ready's state is durable.
        read_states: answered ReadIndex requests.
        must_sync: whether step 2 must be synchronous (term, vote, entries or snapshot changed).
    """

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    committed_entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    persisted_messages: tuple[Message, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool

    def all_messages(self) -> tuple[Message, ...]:
        """Both message lists, for callers that send only after persisting anyway."""
        return self.messages + self.persisted_messages


class _ReadyDraft(Ready):
    """A Ready under construction, which :meth:`RawNode.ready` turns into a :class:`Ready`.

    By class assignment, as ``raftlib.types._new_message`` does for messages: a frozen attrs
    class sets its nine fields through ``object.__setattr__``, at about three times the cost.
    """

    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    # Writable here (the annotations only tell type checkers so).
    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    committed_entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    persisted_messages: tuple[Message, ...]
    read_states: tuple[ReadState, ...]
    must_sync: bool


_object_new = object.__new__


@attrs.frozen(slots=True)
class Peer:
    """A node to bootstrap a cluster with, and optional context for its configuration entry."""

    id: int
    context: bytes = b""


class RawNode:
    """One Raft node, driven by the application. Not thread-safe: call it from one thread.

    The application owns time (:meth:`tick`), the network (:meth:`step` for every message
    received; send what :meth:`ready` returns) and storage (persist what :meth:`ready` returns,
    then :meth:`advance`). A restart is simply a new ``RawNode`` over storage holding the
    persisted state.
    """

    def __init__(self, config: Config) -> None:
        """Create a node from ``config``; its storage's state is the node's starting point.

        Raises:
            ConfigError: the configuration is invalid.
        """
        self._raft = _Raft(config)
        self._prev_soft = self._raft.soft_state()
        self._prev_hard = self._raft.hard_state()
        self._prev_key = self._key()
        self._pending: Ready | None = None
        self._quiet = False
        """has_ready() said False and no input came since: it would say so again."""

    def _key(self) -> tuple[int, StateType, int, int, int]:
        """The last soft and hard state handed out, as one tuple (compared in ``has_ready``)."""
        ps = self._prev_soft
        ph = self._prev_hard
        return (ps.lead, ps.raft_state, ph.term, ph.vote, ph.commit)

    @property
    def id(self) -> int:
        """This node's id."""
        return self._raft.id

    # -- inputs --

    def tick(self) -> None:
        """Advance logical time by one tick (elections and heartbeats are counted in ticks)."""
        self._quiet = False
        self._raft.tick()

    def campaign(self) -> None:
        """Start an election now (with PreVote if configured), as if the election timer fired."""
        self._quiet = False
        self._raft.step(Message(MT.HUP, from_=self._raft.id))

    def propose(self, data: bytes | bytearray | memoryview) -> None:
        """Propose ``data`` to be appended to the log.

        ``data`` is bytes-like; a ``bytearray`` or ``memoryview`` is copied into ``bytes``. On a
        follower the proposal is forwarded to the leader; there is no confirmation that it was
        appended: watch ``committed_entries`` for it.

        Raises:
            TypeError: ``data`` is not bytes-like (a ``str``, say); nothing changed.
            ProposalDropped: it was not taken (no leader, transfer in progress, size limit,
                forwarding disabled, or this node was removed).
        """
        self._quiet = False
        self._raft.propose_one(data if type(data) is bytes else proposal_data(data))

    def propose_many(self, datas: Iterable[bytes | bytearray | memoryview]) -> None:
        """Propose several entries at once: one log entry per element of ``datas``, in order.

        The same as calling :meth:`propose` for each element, but all or nothing, and cheaper:
        the batch travels as one proposal message (forwarded as one from a follower) and a
        leader appends it in one step. Each element is bytes-like, as for :meth:`propose`; an
        empty ``datas`` proposes nothing.

        Raises:
            TypeError: ``datas`` is itself bytes-like or text (use :meth:`propose`), or an
                element is not bytes-like; checked before anything changes, nothing changed.
            ProposalDropped: the batch was not taken (as for :meth:`propose`); no element of it
                was appended.
        """
        self._quiet = False
        if isinstance(datas, (bytes, bytearray, memoryview, str)):
            raise TypeError(
                "propose_many takes a collection of proposals, got a single "
                f"{type(datas).__name__} (use propose for one proposal)"
            )
        payloads = [proposal_data(d) for d in datas]
        if payloads:
            self._raft.propose(payloads)

    def propose_conf_change(self, cc: ConfChange | ConfChangeV2) -> None:
        """Propose a membership change; apply it with :meth:`apply_conf_change` once committed.

        A leader refuses (turns into an empty entry) a change proposed while an earlier one is
        not yet applied, or one that does not fit the current joint/non-joint state.

        Raises:
            TypeError: ``cc`` is not a ``ConfChange``/``ConfChangeV2``, or a field of it has the
                wrong type (see :func:`raftlib.validate.check_conf_change`); nothing changed.
            ValueError: a node id or ``id`` is outside 0..2**64-1; nothing changed.
            ProposalDropped: as for :meth:`propose`.
        """
        self._quiet = False
        cc = check_conf_change(cc)
        t = EntryType.CONF_CHANGE if isinstance(cc, ConfChange) else EntryType.CONF_CHANGE_V2
        entry = Entry(type=t, data=encode_conf_change(cc))
        self._raft.step(Message(MT.PROP, from_=self._raft.id, entries=(entry,)))

    def step(self, m: Message) -> None:
        """Process a message received from a peer.

        ``m`` is checked before anything is done with it: a refused message (any of the errors
        below except ``RaftInvariantError``) has changed nothing, and the caller may drop it and
        carry on.

        Raises:
            InvalidMessageError: ``m`` is malformed: not a ``Message``, a field of the wrong type
                or out of range (as :func:`raftlib.codec.decode_message` would refuse), or the
                wrong shape for its type (no sender; a term where none belongs or none where one
                does; entries that are not a contiguous run after ``index``; a snapshot message
                without a restorable snapshot; a proposal without entries).
            StepLocalMessageError: ``m`` is of a type only raftlib itself creates.
            MisroutedMessageError: ``m`` is addressed to another node, or claims to come from
                this node itself.
            StepPeerNotFoundError: ``m`` answers something, but its sender is not a member.
            ProposalDropped: ``m`` is a forwarded proposal this leader cannot take.
            RaftInvariantError: ``m`` contradicts this node's durable state (a leader reports
                a commit index beyond our log: our storage lost acknowledged entries). Treat
                the node's storage as damaged.
        """
        self._quiet = False
        # Malformed before misrouted: check_message(m, app_entries=False), local types refused,
        # then check_peer_message(m) (an append's entries are checked with its shape).
        check_stepped_message(m)
        t = m.type
        r = self._raft
        if m.to != r.id:
            raise MisroutedMessageError(f"{t.name} addressed to {m.to}, not to this node")
        # A forwarded transfer request names its target as sender, and a forwarded read its
        # origin: either may be us.
        if m.from_ == r.id and t is not _TRANSFER_LEADER and t is not _READ_INDEX:
            raise MisroutedMessageError(f"{t.name} claims to come from this node itself")
        if t in _RESPONSES and m.from_ not in r.trk.progress:  # is_response_message(t)
            raise StepPeerNotFoundError(f"{t.name} from unknown peer {m.from_}")
        r.step(m)

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read point; the answer arrives in ``Ready.read_states``.

        ``ctx`` identifies the request and must be unique among pending reads and non-empty.
        A request made when no leader is known is silently dropped (retry on a timeout).
        """
        self._quiet = False
        if not ctx:
            raise ValueError("read_index context must be non-empty")
        self._raft.step(Message(MT.READ_INDEX, context=ctx))

    def transfer_leader(self, transferee: int) -> None:
        """Ask the leader to hand leadership to ``transferee`` (ignored if not possible)."""
        self._quiet = False
        self._raft.step(Message(MT.TRANSFER_LEADER, from_=transferee))

    def apply_conf_change(self, cc: ConfChange | ConfChangeV2) -> ConfState:
        """Apply a committed membership change; returns the new configuration to persist.

        Raises:
            ConfigError: the change is invalid for the current configuration (nothing changes).
        """
        self._quiet = False
        return self._raft.apply_conf_change(cc.as_v2())

    def report_unreachable(self, node: int) -> None:
        """Tell the leader that the last message to ``node`` could not be delivered."""
        self._quiet = False
        self._raft.step(Message(MT.UNREACHABLE, from_=node))

    def report_snapshot(self, node: int, *, success: bool) -> None:
        """Tell the leader whether the snapshot it sent to ``node`` was delivered and applied."""
        self._quiet = False
        self._raft.step(Message(MT.SNAP_STATUS, from_=node, reject=not success))

    def bootstrap(self, peers: Sequence[Peer | int]) -> None:
        """Initialise a brand-new cluster member with the starting configuration ``peers``.

        Appends one committed ``ADD_NODE`` configuration entry per peer (at term 1) for the
        application to persist and apply through the usual Ready cycle.

        Raises:
            ValueError: ``peers`` is empty or storage is not empty.
        """
        self._quiet = False
        if not peers:
            raise ValueError("must provide at least one peer to bootstrap")
        r = self._raft
        if r.log.storage.last_index() != 0:
            raise ValueError("can't bootstrap a nonempty Storage")
        self._prev_hard = HardState()
        self._prev_key = self._key()
        r._become_follower(1, 0)
        ps = [p if isinstance(p, Peer) else Peer(p) for p in peers]
        ents = [
            Entry(
                term=1,
                index=i + 1,
                type=EntryType.CONF_CHANGE,
                data=encode_conf_change(ConfChange(ConfChangeType.ADD_NODE, p.id, p.context)),
            )
            for i, p in enumerate(ps)
        ]
        r.log.append(ents)
        # Apply them now so the node can campaign at once; the application will apply them again
        # from committed_entries, which is harmless (adding a present voter changes nothing).
        r.log.committed = len(ents)
        for p in ps:
            r.apply_conf_change(ConfChange(ConfChangeType.ADD_NODE, p.id).as_v2())

    # -- outputs --

    def has_ready(self) -> bool:
        """Whether :meth:`ready` has something to hand out (False while a Ready is pending)."""
        if self._quiet or self._pending is not None:
            return False
        r = self._raft
        if r.bcast_pending or r.read_round is not None:
            r.flush()
        if r.msgs or r.msgs_after_append or r.read_states:
            return True
        log = r.log
        u = log.unstable
        if u.entries or u.snapshot is not None:
            return True
        # Soft or hard state changed since the last Ready: one tuple comparison.
        if (r.lead, r.state, r.term, r.vote, log.committed) != self._prev_key:
            return True
        if log.committed > log.applied and log.has_next_committed_entries():
            return True
        # Nothing changes without an input (every method that takes one clears this), so the
        # answer stays False until then.
        self._quiet = True
        return False

    def ready(self) -> Ready:
        """Hand out the next batch of work. See :class:`Ready` for what to do with it.

        Raises:
            RaftError: the previous Ready has not been passed to :meth:`advance` yet.
        """
        if self._pending is not None:
            raise RaftError("ready() called again before advance() of the previous Ready")
        r = self._raft
        if r.bcast_pending or r.read_round is not None:
            r.flush()
        log = r.log
        soft: SoftState | None = None
        ps = self._prev_soft
        if r.lead != ps.lead or r.state is not ps.raft_state:
            soft = r.soft_state()
            self._prev_soft = soft
        hard: HardState | None = None
        ph = self._prev_hard
        must_sync = r.term != ph.term or r.vote != ph.vote
        if must_sync or log.committed != ph.commit:
            hard = r.hard_state()
            self._prev_hard = hard
        if soft is not None or hard is not None:
            ps = self._prev_soft  # self._key(), inlined
            ph = self._prev_hard
            self._prev_key = (ps.lead, ps.raft_state, ph.term, ph.vote, ph.commit)
        u = log.unstable
        entries = tuple(u.entries) if u.entries else ()
        snapshot = u.snapshot
        if entries or snapshot is not None:
            must_sync = True
        committed = tuple(log.next_committed_entries())
        if committed:
            r.applying = committed[-1].index
        # Empty lists stay in place: only a non-empty one is handed out and replaced.
        msgs = r.msgs
        if msgs:
            r.msgs = []
        after = r.msgs_after_append
        if after:
            r.msgs_after_append = []
        reads = r.read_states
        if reads:
            r.read_states = []
        # Ready(soft, hard, entries, ...), built as a draft (see _ReadyDraft)
        rd = _object_new(_ReadyDraft)
        rd.soft_state = soft
        rd.hard_state = hard
        rd.entries = entries
        rd.snapshot = snapshot
        rd.committed_entries = committed
        rd.messages = tuple(msgs) if msgs else ()
        rd.persisted_messages = tuple(after) if after else ()
        rd.read_states = tuple(reads) if reads else ()
        rd.must_sync = must_sync
        rd.__class__ = Ready  # type: ignore[assignment]  # the draft becomes a Ready
        self._pending = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """Report that ``rd`` was handled: persisted, sent and applied.

        Raises:
            RaftError: ``rd`` is not the Ready last returned by :meth:`ready`.
        """
        self._quiet = False
        if rd is not self._pending:
            raise RaftError("advance() must be given the Ready last returned by ready()")
        self._pending = None
        r = self._raft
        ents = rd.entries
        if ents:
            last = ents[-1]
            r.log.unstable.stable_to(last.index, last.term)  # r.log.stable_to
        snap = rd.snapshot
        if snap is not None:
            r.log.stable_snap_to(snap.metadata.index)
        applied = rd.committed_entries
        if applied:
            if r.max_uncommitted_size:
                r.reduce_uncommitted_size(applied)
            r.applied_to(applied[-1].index)
        elif snap is not None:
            r.applied_to(snap.metadata.index)
        state = r.state
        if state is _LEADER or state is _CANDIDATE:  # on_persisted ignores other roles
            r.on_persisted(rd.hard_state)

    def status(self) -> Status:
        """The node's current state, with per-peer progress when it is the leader.

        Side-effect free: appends a leader has scheduled but not yet built (they are built when
        the next Ready is taken) are not yet reflected in the peers' progress.
        """
        r = self._raft
        progress: dict[int, ProgressStatus] = {}
        if r.state == StateType.LEADER:
            for node, pr in r.trk.progress.items():
                progress[node] = ProgressStatus(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state,
                    paused=pr.is_paused(),
                    pending_snapshot=pr.pending_snapshot,
                    recent_active=pr.recent_active,
                    is_learner=pr.is_learner,
                    inflight=pr.inflights.count(),
                    inflight_bytes=pr.inflights.bytes,
                )
        return Status(
            id=r.id,
            hard_state=r.hard_state(),
            soft_state=r.soft_state(),
            applied=r.log.applied,
            lead_transferee=r.lead_transferee,
            config=r.trk.config.conf_state(),
            progress=progress,
        )
