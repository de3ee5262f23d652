r"""``Node``: an asyncio driver around :class:`~raftlib.RawNode`.

This is the one raftlib module that imports ``asyncio`` (and ``concurrent.futures`` for its
single persistence thread). It still opens no sockets and no files: the application hands it a
storage (:class:`NodeStorage`: raftlib's ``MemoryStorage``, kvapp's ``RaftStore`` or its own), a
``send`` callable (its transport) and either an ``apply`` callable or a consumer of
:meth:`Node.committed`. ``Node`` then:

* ticks the RawNode on the event loop's clock, every ``tick_interval`` seconds;
* steps every message the transport passes to :meth:`Node.receive`;
* runs the Ready loop exactly as ``docs/ready.md`` says: ``messages`` go out at once,
  ``storage.save_ready(rd)`` runs (see "Where writes run"), ``persisted_messages`` go out only
  once that returned, committed entries are applied in order, exactly once, and ``advance`` is
  called;
* matches committed entries to the proposals waiting for them (see "Envelope" below), answers
  read barriers, publishes leadership changes, and snapshots and compacts the log.

**Where writes run.** A Ready that only moves the commit index (``must_sync`` false) is saved on
the loop: storages must not fsync those. Any other write runs on the loop too while the
storage is fast, that is while its previous synced write took less than
``save_on_loop_below`` (2 ms by default): handing a write to a thread and back costs two
thread wake-ups and GIL hand-offs, which on a busy machine take longer than a fast fsync (on
a 2-core VM, 18% off a lone write's latency and 25% off the CPU it costs three members).
Before such a write the node yields one loop turn, so that a transport flushing once per turn
sends the Ready's ``messages`` (a leader's appends) before the write, not after. A slower
write goes to the node's worker thread instead, so the loop keeps serving meanwhile; committed
entries that were durable before the Ready are then applied while it is being written, so the
state machine's work overlaps the fsync. ``save_on_loop_below=0`` always uses the thread.

**Threads.** RawNode and the storages raftlib and kvapp ship are not thread-safe, and RawNode
reads storage while stepping. So only ``save_ready`` (and snapshot creation and compaction) run
in the worker thread, and while one runs the driver does not touch the RawNode (nor the storage,
except a snapshot thread's :meth:`StagingStorage.stage_snapshot`): messages,
proposals and ticks that arrive meanwhile are queued and fed in, in arrival order, as soon as the
write returns. That is also the group commit: every proposal that arrived during one write goes
into the next Ready, hence the next single write (and fsync).

**Envelope.** A follower forwards a proposal to the leader, so at proposal time nobody knows the
index it will get. ``Node`` therefore prefixes every proposal's data with a 28-byte header (see
:func:`wrap_proposal`): a magic ``b"\xffRN1"``, the proposing node's id, a random 64-bit id of
this run of the ``Node`` object and a per-run sequence number, all big-endian. When an entry
commits, the driver strips the header, delivers the user's bytes and wakes the proposer whose
(node, run, sequence) it carries. Configuration changes carry the same header in their
``context``. Entries without the header (a new leader's empty entry, entries written by other
means) are delivered unchanged with ``proposal=None``.

**A full disk.** A storage write that raises :class:`~raftlib.StorageFullError` (the storage
is out of space but still usable) does not stop the node. A ``save_ready`` that raises it is
made again, for the same Ready, after 50 ms, then after twice as long each time up to 1 s, until
it succeeds; meanwhile the driver leaves the RawNode alone exactly as while a write runs (inputs
queue up, nothing is acknowledged), and it logs one warning when such an episode starts and one
line when it ends. A snapshot (or the compaction after it) that raises it is skipped and tried
again later (after 1 s, doubling up to 30 s). ``on_storage_full`` is told when an episode
starts, and :attr:`Node.storage_full` says whether one is going on. Any other exception from the
storage stops the node (:attr:`Node.failure`); a failed ``fsync`` must be such an exception.

**No retries.** The driver never re-proposes anything, so it never makes a proposal appear twice.
(The network still can: a transport that duplicates a forwarded proposal message can get it
appended twice. Raft leaves that to the application, thesis §6.3; TCP streams do not duplicate,
and :attr:`Committed.proposal` lets an application deduplicate if its transport does.)

**Randomness.** raftlib's core never touches global randomness: election jitter comes from the
injected ``rng``. As the I/O-side driver, ``Node`` creates a system-seeded ``random.Random()``
when none is given, and draws its run id from ``random.SystemRandom`` unless given one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import functools
import heapq
import inspect
import logging
import random
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar, cast, runtime_checkable

import attrs

from raftlib.codec import decode_conf_change
from raftlib.config import Config
from raftlib.errors import (
    ConfigError,
    ProposalDropped,
    RaftError,
    RaftInvariantError,
    StepPeerNotFoundError,
    StorageFullError,
)
from raftlib.raft import _Raft
from raftlib.rawnode import RawNode, Ready
from raftlib.read_only import ReadOnlyOption
from raftlib.status import Status
from raftlib.storage import Storage
from raftlib.types import (
    ConfChange,
    ConfChangeV2,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
)

__all__ = [
    "ENVELOPE_MAGIC",
    "Committed",
    "ConfChangeRefused",
    "Leadership",
    "Node",
    "NodeError",
    "NodeStopped",
    "NodeStorage",
    "NodeTimeout",
    "NotLeader",
    "OutcomeUnknown",
    "ProposalId",
    "ProposalLost",
    "ProposalTimeout",
    "StagingStorage",
    "unwrap_proposal",
    "wrap_proposal",
]

logger = logging.getLogger(__name__)

_MiB = 1024 * 1024
_T = TypeVar("_T")
_R = TypeVar("_R")

ENVELOPE_MAGIC = b"\xffRN1"
"""The first four bytes of every proposal ``Node`` makes; the ``1`` is the envelope version."""

_HEADER = struct.Struct(">4sQQQ")  # magic, origin node id, run id, sequence: 28 bytes

# Back-off (seconds) for storage writes that raise StorageFullError: the same save_ready is
# written again after _FULL_RETRY_FIRST, doubling up to _FULL_RETRY_MAX; a skipped snapshot is
# tried again after _SNAPSHOT_RETRY_FIRST, doubling up to _SNAPSHOT_RETRY_MAX.
_FULL_RETRY_FIRST = 0.05
_FULL_RETRY_MAX = 1.0
_SNAPSHOT_RETRY_FIRST = 1.0
_SNAPSHOT_RETRY_MAX = 30.0


# -- errors --


class NodeError(RaftError):
    """Root of the errors :class:`Node` raises itself.

    Attributes:
        outcome_known: for a proposal, True when it is certain the proposal was *not* applied
            and never will be (it is safe to propose it again); False when it may or may not be
            applied (only an idempotent or deduplicated retry is safe).
    """

    def __init__(self, message: str, *, outcome_known: bool = True) -> None:
        super().__init__(message)
        self.outcome_known = outcome_known


class NotLeader(ProposalDropped):
    """No leader was known, so nothing was proposed: the outcome is known (never applied).

    Attributes:
        leader_id: the leader this node knows of, or 0.
        outcome_known: always True.
    """

    outcome_known = True

    def __init__(self, message: str, *, leader_id: int = 0) -> None:
        super().__init__(message)
        self.leader_id = leader_id


class ProposalLost(NodeError):
    """The proposal was appended, but a new leader's log replaced it: it will never be applied.

    Detected for proposals made on the leader, whose index is known: another entry committed at
    that index.
    """


class ConfChangeRefused(NodeError):
    """The configuration change was committed or replaced without changing the configuration.

    The leader refuses a change while another is unapplied or when it does not fit the current
    (joint or simple) configuration, and every node refuses one that is invalid when applied.
    The outcome is known: the configuration did not change.
    """


class OutcomeUnknown(NodeError):
    """It cannot be known whether the proposal was applied (a snapshot covered its index)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, outcome_known=False)


class NodeTimeout(NodeError, TimeoutError):
    """An operation did not complete within its timeout."""


class ProposalTimeout(NodeTimeout):
    """The proposal was not applied locally within its timeout.

    ``outcome_known`` is False once the proposal was handed to Raft: it may still commit (and be
    applied) later. It is True only if the node was too busy to propose it at all.
    """


class NodeStopped(NodeError):
    """The node was stopped (or failed) before the operation completed.

    ``outcome_known`` is False for a proposal that was already handed to Raft.
    """


# -- values --


@attrs.frozen(slots=True)
class ProposalId:
    """Who proposed an entry: node id, the proposing ``Node`` object's run id, and a sequence.

    Unique across the cluster's lifetime with overwhelming probability (the run id is random),
    so an application whose transport can duplicate messages can deduplicate on it.
    """

    origin: int
    run: int
    seq: int


@attrs.frozen(slots=True)
class Committed:
    """One committed entry, as :class:`Node` delivers it to the application.

    Attributes:
        index: the entry's log index.
        term: the entry's term.
        data: the proposer's bytes, with the envelope removed; ``b""`` for raftlib's internal
            empty entries (delivered only with ``deliver_empty=True``) and for conf changes.
        proposal: who proposed it, or None for entries ``Node`` did not propose.
        conf_change: for a configuration change, the change (context without envelope).
        conf_state: for a configuration change, the configuration once applied; None if the
            change was refused.
    """

    index: int
    term: int
    data: bytes = b""
    proposal: ProposalId | None = None
    conf_change: ConfChange | ConfChangeV2 | None = None
    conf_state: ConfState | None = None

    @property
    def is_conf_change(self) -> bool:
        """Whether this entry is a configuration change."""
        return self.conf_change is not None

    @property
    def is_empty(self) -> bool:
        """Whether this is one of raftlib's internal empty entries (e.g. a new leader's)."""
        return self.conf_change is None and self.proposal is None and not self.data


@attrs.frozen(slots=True)
class Leadership:
    """Who leads, as this node sees it.

    Attributes:
        leader_id: the known leader, or 0 when none is known (election, stopped node).
        term: this node's term when the view last changed.
        is_leader: whether this node is the leader.
    """

    leader_id: int
    term: int
    is_leader: bool


@runtime_checkable
class NodeStorage(Storage, Protocol):
    """What :class:`Node` needs of a storage: raftlib's read side plus three writes.

    ``MemoryStorage`` and kvapp's ``RaftStore`` implement it. The writes are called from the
    node's worker thread or from the loop (see the module docstring), never concurrently with
    each other or with the RawNode's reads.
    """

    def save_ready(self, rd: Ready) -> None:
        """Persist ``rd``'s snapshot, entries and hard state, durably when ``rd.must_sync``."""
        ...

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """Record a snapshot of the applied state ``data`` at ``index``."""
        ...

    def compact(self, compact_index: int) -> None:
        """Discard log entries up to and including ``compact_index``."""
        ...


@runtime_checkable
class StagingStorage(NodeStorage, Protocol):
    """A :class:`NodeStorage` that can write a snapshot's data before it is recorded.

    A storage that writes snapshots to disk implements it (kvapp's ``RaftStore`` does) so that
    writing a large snapshot does not hold up the Ready loop: :class:`Node` calls
    :meth:`stage_snapshot` in its snapshot thread, concurrently with every other storage call,
    then :meth:`adopt_snapshot` in its worker thread under the usual rules.
    """

    def stage_snapshot(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` durably without recording it; safe beside any other call.

        A staged snapshot that is never adopted must be harmless (e.g. removed as an orphan).
        """
        ...

    def adopt_snapshot(self, snapshot: Snapshot) -> None:
        """Record a snapshot :meth:`stage_snapshot` wrote, as ``create_snapshot`` would.

        Raises:
            SnapshotOutOfDateError: ``snapshot`` is not after the current snapshot.
        """
        ...


def wrap_proposal(pid: ProposalId, data: bytes) -> bytes:
    """``data`` behind the envelope header carrying ``pid`` (see the module docstring)."""
    return _HEADER.pack(ENVELOPE_MAGIC, pid.origin, pid.run, pid.seq) + data


def unwrap_proposal(data: bytes) -> tuple[ProposalId | None, bytes]:
    """Split what :func:`wrap_proposal` made; data without the header comes back unchanged."""
    if len(data) >= _HEADER.size and data.startswith(ENVELOPE_MAGIC):
        _, origin, run, seq = _HEADER.unpack_from(data)
        return ProposalId(origin, run, seq), data[_HEADER.size :]
    return None, data


# -- internals --


class _Stage(enum.Enum):
    QUEUED = "queued"  # waiting in the inbox for the run task
    PARKED = "parked"  # waiting for a leader to be known
    PROPOSED = "proposed"  # handed to the RawNode


class _Proposal(Generic[_T]):
    __slots__ = ("future", "payload", "seq", "stage", "timeout")

    def __init__(self, future: asyncio.Future[_T], seq: int) -> None:
        self.future = future
        self.seq = seq
        self.stage = _Stage.QUEUED
        self.payload: bytes | ConfChange | ConfChangeV2 = b""
        self.timeout = 0.0


class _Read:
    __slots__ = ("ctxs", "future", "index", "issued_at")

    def __init__(self, future: asyncio.Future[int]) -> None:
        self.future = future
        self.ctxs: list[bytes] = []
        self.index: int | None = None
        self.issued_at = -1


_Offer = tuple[Committed, "asyncio.Future[None]"]


def _durable_prefix(rd: Ready) -> int:
    """How many of ``rd``'s committed entries may be applied while ``rd`` is being saved.

    Those already in storage before this Ready (below its first new entry) are committed and
    durable here, so applying them beside the write changes nothing a crash could expose; it
    overlaps the state machine's work with the fsync, as etcd's server does. The run stops at
    the first configuration change (applying it touches the RawNode, which must stay idle while
    storage is written) and is empty when the Ready installs a snapshot.
    """
    if rd.snapshot is not None:
        return 0
    limit = rd.entries[0].index if rd.entries else None
    n = 0
    for e in rd.committed_entries:
        if e.type != EntryType.NORMAL or (limit is not None and e.index >= limit):
            break
        n += 1
    return n


def _peek(raw: RawNode) -> _Raft:
    # The driver lives in raftlib and reads two live fields RawNode does not expose (role and
    # last index right after a proposal, the leader known between Readys); it never writes.
    return raw._raft


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Node:
    """One Raft member on an asyncio event loop, driving a :class:`~raftlib.RawNode`.

    Create it, then :meth:`start` it from inside the running loop (or use ``async with``), feed
    it peer messages with :meth:`receive`, and :meth:`stop` it. All methods must be called from
    the loop's thread (use ``loop.call_soon_threadsafe`` from elsewhere).

    Raft defaults are the safe ones: PreVote and CheckQuorum on, election timeouts randomized in
    ``[election_tick, 2 * election_tick)`` ticks, at most ``max_inflight_msgs`` appends in flight
    per follower, and a 64 MiB cap on the leader's uncommitted tail (further proposals raise
    :class:`~raftlib.ProposalDropped` instead of growing memory without bound).

    Args:
        node_id: this member's id (non-zero).
        storage: the log, hard state and snapshot; see :class:`NodeStorage`.
        send: called with a batch of messages to send; it must not block (queue them in the
            transport). Exceptions are logged and the messages counted as lost (reported as
            unreachable), which Raft tolerates. For every snapshot message
            (``MessageType.SNAP``) the transport must call :meth:`report_snapshot` once it
            knows whether it arrived: until then the leader sends that peer nothing else.
        apply: called with each :class:`Committed` entry in order, on the loop; it may be a
            coroutine function (awaited before the next entry). Without it, consume
            :meth:`committed` instead. The Ready loop waits for it, so a slow ``apply`` delays
            this member's heartbeats and acknowledgements (keep it short, or hand work off);
            it must not await this node's own ``propose``/``read_index`` (that would wait for
            itself). An exception here stops the node (see :attr:`failure`).
        peers: bootstrap a brand-new cluster with these voters if ``storage`` is empty (the
            alternative is a storage created with the starting ``ConfState``).
        tick_interval: seconds per Raft tick. Election timeout is ``election_tick`` ticks,
            heartbeats every ``heartbeat_tick`` ticks; see ``docs/embedding.md``.
        election_tick: see :class:`~raftlib.Config`.
        heartbeat_tick: see :class:`~raftlib.Config`.
        pre_vote: see :class:`~raftlib.Config`.
        check_quorum: see :class:`~raftlib.Config`.
        read_only_option: see :class:`~raftlib.Config`.
        max_size_per_msg: see :class:`~raftlib.Config`.
        max_inflight_msgs: see :class:`~raftlib.Config`.
        max_uncommitted_entries_size: see :class:`~raftlib.Config`.
        rng: election jitter source; default a system-seeded ``random.Random()``.
        applied: the index the application's state machine already holds (a durable state
            machine). ``None`` (the default): the state machine is rebuilt from the storage's
            snapshot with ``restore`` and the entries after it are applied again.
        snapshot: returns the state machine's state as bytes, at the applied index; called on
            the loop when a snapshot is due (every ``snapshot_every`` applied entries, and after
            every applied configuration change so that new members get it). For a large state
            it may instead return a zero-argument callable: a point-in-time image captured
            cheaply on the loop, called in a separate thread to produce the bytes while the
            loop goes on (it must not read the live state). The snapshot is then written in
            that thread too if the storage is a :class:`StagingStorage`; only recording it and
            compacting the log wait for the Ready loop. That callable may return, instead of
            bytes, any object the storage takes as a snapshot's data: raftlib never looks
            inside (kvapp's storage takes the parts of a file to assemble).
        restore: replaces the state machine's state with a snapshot's bytes (at start, and when
            the leader sends a snapshot). Required if snapshots are used anywhere.
        snapshot_every: take a snapshot and compact the log every this many applied entries;
            0 disables (then the log grows without bound).
        keep_entries: entries kept before a snapshot when compacting, so slow followers can
            catch up from the log instead of needing the whole snapshot.
        deliver_empty: also deliver raftlib's internal empty entries (a new leader's first
            entry, a refused configuration change's placeholder).
        request_timeout: default timeout, in seconds, of propose, read and wait calls.
        logger: passed to :class:`~raftlib.Config`.
        on_storage_full: called on the loop with the error when a storage write starts failing
            with :class:`~raftlib.StorageFullError` (once per episode: again only after a write
            succeeded in between). The node retries or skips that write by itself (see the
            module docstring); this is for the application to react, e.g. to stop taking
            writes. Exceptions it raises are logged and ignored.
        save_on_loop_below: seconds; a synced write runs on the loop while the previous one
            took less than this, else in the worker thread (see the module docstring). 0: always
            in the worker, so the loop never waits on an fsync.
        executor: where the node's blocking work runs (storage writes not made on the loop,
            snapshots being encoded and staged, adopting them). ``None`` (the default): two
            worker threads of the node's own, shut down by :meth:`stop`. Given, it runs all of
            that (the node still never runs two storage writes at once) and :meth:`stop`
            waits for the node's jobs in it but never shuts it down. A thread pool needs two
            workers, or encoding a snapshot holds up the writes behind it. A simulation under
            a virtual-time loop passes one that runs each job at once on the loop's thread, so
            a run depends on nothing but its inputs and seeds.
        run_id: tells this run's proposals from those an earlier run of the node left in the
            log; it must differ on every start. ``None`` (the default): 64 bits from
            ``random.SystemRandom``. A simulation draws it from its seeded generator.

    Raises:
        ConfigError: an option is invalid.
        ValueError: the storage holds a snapshot but no ``restore`` was given.
    """

    def __init__(
        self,
        node_id: int,
        storage: NodeStorage,
        *,
        send: Callable[[Sequence[Message]], object],
        apply: Callable[[Committed], object] | None = None,
        peers: Sequence[int] | None = None,
        tick_interval: float = 0.1,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        read_only_option: ReadOnlyOption = ReadOnlyOption.SAFE,
        max_size_per_msg: int = _MiB,
        max_inflight_msgs: int = 256,
        max_uncommitted_entries_size: int = 64 * _MiB,
        rng: random.Random | None = None,
        applied: int | None = None,
        snapshot: Callable[[], bytes | Callable[[], bytes]] | None = None,
        restore: Callable[[bytes], object] | None = None,
        snapshot_every: int = 0,
        keep_entries: int = 1000,
        deliver_empty: bool = False,
        request_timeout: float = 5.0,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        on_storage_full: Callable[[StorageFullError], object] | None = None,
        save_on_loop_below: float = 0.002,
        executor: concurrent.futures.Executor | None = None,
        run_id: int | None = None,
    ) -> None:
        if not tick_interval > 0:
            raise ConfigError("tick_interval must be positive")
        if not save_on_loop_below >= 0:
            raise ConfigError("save_on_loop_below must not be negative")
        if not request_timeout > 0:
            raise ConfigError("request_timeout must be positive")
        if snapshot_every < 0 or keep_entries < 0:
            raise ConfigError("snapshot_every and keep_entries must not be negative")
        if snapshot_every and snapshot is None:
            raise ConfigError("snapshot_every needs a snapshot callback")
        self._id = node_id
        self._storage = storage
        snap = storage.snapshot()
        hard, conf = storage.initial_state()
        rebuild = applied is None
        start_applied = snap.metadata.index if applied is None else applied
        self._raw = RawNode(
            Config(
                id=node_id,
                storage=storage,
                election_tick=election_tick,
                heartbeat_tick=heartbeat_tick,
                rng=rng if rng is not None else random.Random(),
                applied=start_applied,
                max_size_per_msg=max_size_per_msg,
                max_inflight_msgs=max_inflight_msgs,
                max_uncommitted_entries_size=max_uncommitted_entries_size,
                check_quorum=check_quorum,
                pre_vote=pre_vote,
                read_only_option=read_only_option,
                logger=logger,
            )
        )
        self._conf_state = conf
        if peers and storage.last_index() == 0 and hard.is_empty() and not conf.voters:
            self._raw.bootstrap(list(peers))
        if rebuild and not snap.is_empty():
            if restore is None:
                raise ValueError("storage holds a snapshot but no restore callback was given")
            restore(snap.data)
        elif start_applied > snap.metadata.index:
            self._replay_conf_changes(snap.metadata.index + 1, start_applied + 1)
        self._applied = start_applied
        self._send_fn = send
        self._apply_fn = apply
        self._snapshot_fn = snapshot
        self._restore_fn = restore
        self._snapshot_every = snapshot_every
        self._keep_entries = keep_entries
        self._snapshot_due = False
        self._deadlines: list[tuple[float, int, _Proposal[int] | _Proposal[ConfState]]] = []
        self._expiry: asyncio.TimerHandle | None = None
        self._snapshot_job: asyncio.Task[None] | None = None
        self._snapshot_made: Snapshot | None = None
        self._given_executor = executor
        self._jobs: set[concurrent.futures.Future[object]] = set()  # submitted, not finished
        self._snap_executor: concurrent.futures.Executor | None = executor
        self._snapshot_retry_at: float | None = None
        self._snapshot_backoff = _SNAPSHOT_RETRY_FIRST
        self._on_storage_full = on_storage_full
        self._save_on_loop_below = save_on_loop_below
        self._last_save = 0.0  # seconds the last synced write took
        self._clock: Callable[[], float] = lambda: 0.0  # the loop's clock, from start()
        self._storage_full = False
        self._full_failures = 0
        self._deliver_empty = deliver_empty
        self._tick_interval = tick_interval
        self._election_tick = election_tick
        self._request_timeout = request_timeout
        self._run_id = random.SystemRandom().getrandbits(64) if run_id is None else run_id
        self._seq = 0
        self._read_seq = 0
        self._ticks = 0
        self._ticks_due = 0
        # Inputs in arrival order: callables, and proposals (batched when consecutive).
        self._inbox: deque[Callable[[], None] | _Proposal[int] | _Proposal[ConfState]] = deque()
        self._wake = asyncio.Event()
        self._in_ready = False
        self._between: list[asyncio.Future[None]] = []
        self._props: dict[int, _Proposal[int]] = {}
        self._conf_props: dict[int, _Proposal[ConfState]] = {}
        self._by_index: dict[int, _Proposal[int] | _Proposal[ConfState]] = {}
        self._parked: deque[_Proposal[int] | _Proposal[ConfState]] = deque()
        self._reads: dict[_Read, None] = {}  # a set in arrival order: re-issued in that order
        self._read_ctx: dict[bytes, _Read] = {}
        self._read_wait: list[_Read] = []
        self._term = hard.term
        soft = self._raw.status().soft_state
        self._leadership = Leadership(soft.lead, hard.term, soft.raft_state == StateType.LEADER)
        self._leader_version = 0
        self._leader_event = asyncio.Event()
        self._consumer: asyncio.Queue[_Offer | None] | None = (
            asyncio.Queue() if apply is None else None
        )
        self._consumer_taken = False
        self._state = _State.NEW
        self._closed = False
        self._failure: BaseException | None = None
        self._executor: concurrent.futures.Executor | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None

    # -- lifecycle --

    def start(self) -> None:
        """Start ticking and the Ready loop on the running event loop.

        Raises:
            RuntimeError: no running event loop, or the node was already started.
        """
        if self._state != _State.NEW:
            raise RuntimeError(f"node {self._id} was already started")
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._executor = self._given_executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"raftlib-node-{self._id}"
        )
        self._state = _State.RUNNING
        self._runner = loop.create_task(self._run(), name=f"raftlib-node-{self._id}-ready")
        self._ticker = loop.create_task(self._tick_loop(), name=f"raftlib-node-{self._id}-tick")

    async def stop(self) -> None:
        """Stop the node: cancel its tasks, wait for an ongoing write, fail pending calls.

        Pending proposals raise :class:`NodeStopped` (``outcome_known`` False for those already
        handed to Raft: the cluster may still commit them), pending reads and waits raise
        :class:`NodeStopped`, and :meth:`committed` and :meth:`leadership` iterators end. The
        storage holds exactly what was persisted, so a new ``Node`` over it is a restart.
        Idempotent.

        Raises:
            RuntimeError: called from inside ``apply`` (it would wait for itself); schedule it
                with ``asyncio.create_task`` instead.
        """
        if self._state in (_State.STOPPING, _State.STOPPED):
            return
        if self._state == _State.NEW:
            self._state = _State.STOPPED
            self._close(f"node {self._id} stopped")
            return
        if self._runner is not None and asyncio.current_task() is self._runner:
            raise RuntimeError("Node.stop() called from inside apply; use asyncio.create_task")
        self._state = _State.STOPPING
        tasks = [t for t in (self._runner, self._ticker, self._snapshot_job) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._jobs:
            # A job that already started runs to its end even when its waiter is cancelled;
            # the storage must be left alone until it has (the node's own workers are shut
            # down with wait=True below; a given executor is not the node's to shut down).
            await asyncio.to_thread(concurrent.futures.wait, list(self._jobs))
        if self._snap_executor is not None and self._snap_executor is not self._given_executor:
            # A snapshot being encoded or staged finishes; it is simply never adopted.
            await asyncio.to_thread(self._snap_executor.shutdown, wait=True)
        if self._executor is not None and self._executor is not self._given_executor:
            # Waits for a write already running in the worker; nothing new is submitted.
            await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._state = _State.STOPPED
        reason = f"node {self._id} stopped"
        if self._failure is not None:
            reason += f" after a failure: {self._failure!r}"
        self._close(reason)

    async def __aenter__(self) -> Node:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- properties --

    @property
    def id(self) -> int:
        """This node's id."""
        return self._id

    @property
    def leader_id(self) -> int:
        """The leader this node knows of, or 0."""
        return self._leadership.leader_id

    @property
    def is_leader(self) -> bool:
        """Whether this node is the leader (as of its last Ready)."""
        return self._leadership.is_leader

    @property
    def leadership_state(self) -> Leadership:
        """The current :class:`Leadership` view."""
        return self._leadership

    @property
    def applied(self) -> int:
        """The last index applied to the state machine (including skipped empty entries)."""
        return self._applied

    @property
    def conf_state(self) -> ConfState:
        """The configuration as of :attr:`applied`."""
        return self._conf_state

    @property
    def running(self) -> bool:
        """Whether the node is started and has neither stopped nor failed."""
        return self._state == _State.RUNNING and self._failure is None

    @property
    def failure(self) -> BaseException | None:
        """The exception that stopped the node (storage, ``apply``, invariant), if any."""
        return self._failure

    @property
    def storage_full(self) -> bool:
        """Whether the last storage write raised :class:`~raftlib.StorageFullError`.

        True from such a failure until a storage write succeeds again; while it is True because
        of a ``save_ready``, the node is paused retrying it (see the module docstring).
        """
        return self._storage_full

    def status(self) -> Status:
        """The RawNode's :class:`~raftlib.Status` (role, term, commit, per-peer progress)."""
        return self._raw.status()

    # -- inputs --

    def receive(self, message: Message) -> None:
        """Hand over a message from a peer. Never blocks; messages to a stopped node are lost.

        Invalid messages (malformed, from unknown peers) are logged and dropped.
        """
        if self._state == _State.RUNNING:
            self._inbox.append(lambda: self._step(message))
            self._wake.set()

    def report_unreachable(self, node_id: int) -> None:
        """Tell Raft the last message to ``node_id`` could not be delivered (leader backs off)."""
        self._input(lambda: self._raw.report_unreachable(node_id))

    def request_snapshot(self) -> None:
        """Take a snapshot (and compact the log) as if ``snapshot_every`` entries had passed.

        For an application whose entries differ widely in what they carry, e.g. one that
        batches many commands per entry: it counts its own measure and asks. Called from
        ``apply``, the snapshot is taken once the Ready being applied is done; otherwise after
        the next Ready. Ignored without a ``snapshot`` callback; a snapshot already being
        written is finished first.
        """
        if self._snapshot_fn is not None:
            self._snapshot_due = True

    def report_snapshot(self, node_id: int, *, success: bool) -> None:
        """Tell Raft whether the snapshot sent to ``node_id`` was delivered."""
        self._input(lambda: self._raw.report_snapshot(node_id, success=success))

    async def propose(self, data: bytes, *, timeout: float | None = None) -> int:  # noqa: ASYNC109 - see _submit
        """Propose ``data``; return its log index once it is committed and applied locally.

        Works on any member: a follower forwards to the leader. While no leader is known the
        proposal waits (within ``timeout``) for one. It is never retried by the driver.

        Args:
            data: the command; delivered to every member's ``apply`` as ``Committed.data``.
            timeout: seconds; default ``request_timeout``.

        Raises:
            NotLeader: no leader became known within ``timeout``; nothing was proposed.
            ProposalDropped: Raft refused it (leadership transfer in progress, uncommitted-size
                limit, this node removed); it was not appended.
            ProposalLost: a new leader replaced it in the log; it will never be applied.
            ProposalTimeout: not applied within ``timeout``; the outcome is unknown
                (``outcome_known`` False) unless the node never got to propose it.
            OutcomeUnknown: a snapshot covered its index before it was seen applied.
            NodeStopped: the node stopped first (see ``outcome_known``).
        """
        loop = self._check_running()
        w: _Proposal[int] = _Proposal(loop.create_future(), self._next_seq())
        w.payload = wrap_proposal(ProposalId(self._id, self._run_id, w.seq), data)
        self._props[w.seq] = w
        self._submit(w, lambda: self._props.pop(w.seq, None), timeout)
        return await w.future

    async def propose_conf_change(
        self,
        cc: ConfChange | ConfChangeV2,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - errors say whether the outcome is known
    ) -> ConfState:
        """Propose a membership change; return the new configuration once applied locally.

        The driver applies committed changes to the RawNode itself and also delivers them (as
        :attr:`Committed.conf_change`), so the application sees every membership change.

        Raises:
            ConfChangeRefused: the leader or the configuration refused it; nothing changed.
            NotLeader: as for :meth:`propose` (and likewise ProposalDropped, ProposalLost,
                ProposalTimeout, OutcomeUnknown and NodeStopped).
        """
        loop = self._check_running()
        w: _Proposal[ConfState] = _Proposal(loop.create_future(), self._next_seq())
        envelope = wrap_proposal(ProposalId(self._id, self._run_id, w.seq), cc.context)
        w.payload = attrs.evolve(cc, context=envelope)
        self._conf_props[w.seq] = w
        self._submit(w, lambda: self._conf_props.pop(w.seq, None), timeout)
        return await w.future

    async def between_readies(self) -> None:
        """Return when the Ready loop is between two Readys: at once if it is not handling one.

        While a Ready is written and applied, proposals can only queue, and the ones queued
        when it ends all go into the next Ready. An application that packs many requests into
        one proposal can await this before it closes a pack, so that everything that arrives
        during a Ready (an fsync, say) shares one entry, at no extra latency. The waiter is
        resumed before the loop takes its next inputs, so a proposal made right after this
        returns joins the next Ready. Also returns once the node has stopped (a propose then
        raises :class:`NodeStopped`).
        """
        if not self._in_ready or self._closed:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._between.append(fut)
        await fut

    async def read_index(self, *, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Wait for a linearizable read point: return once the local state machine has applied it.

        State read after this returns reflects every write acknowledged before the call. Safe
        to call on followers. The request is re-sent when the leader changes or after an
        election timeout without an answer (reads are idempotent, unlike proposals).

        Returns:
            The read index: the leader's commit index when the request was confirmed.

        Raises:
            NodeTimeout: not confirmed within ``timeout`` (e.g. no quorum reachable).
            NodeStopped: the node stopped first.
        """
        loop = self._check_running()
        r = _Read(loop.create_future())
        self._reads[r] = None
        r.future.add_done_callback(lambda _: self._forget_read(r))
        self._input(lambda: self._issue_read(r))
        t = self._timeout(timeout)
        timer = loop.call_later(t, self._expire_read, r, t)
        try:
            return await r.future
        finally:
            timer.cancel()

    async def wait_leader(self, *, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Return the leader's id once one is known.

        Raises:
            NodeTimeout: no leader within ``timeout``.
            NodeStopped: the node stopped first.
        """
        self._check_running()
        t = self._timeout(timeout)
        try:
            async with asyncio.timeout(t):
                while self._leadership.leader_id == 0:
                    await self._wait_leadership_change()
        except TimeoutError:
            raise NodeTimeout(f"node {self._id}: no leader known within {t}s") from None
        return self._leadership.leader_id

    async def transfer_leader(self, target: int, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Ask the leader to hand leadership to ``target``; return once this node sees it.

        Raises:
            NodeTimeout: ``target`` did not become leader within ``timeout`` (Raft ignores a
                transfer it cannot do, e.g. to a learner or unknown node).
            NodeStopped: the node stopped first.
        """
        self._check_running()
        self._input(lambda: self._raw.transfer_leader(target))
        t = self._timeout(timeout)
        try:
            async with asyncio.timeout(t):
                while self._leadership.leader_id != target:
                    await self._wait_leadership_change()
        except TimeoutError:
            raise NodeTimeout(
                f"node {self._id}: {target} did not become leader within {t}s "
                f"(leader is {self._leadership.leader_id})"
            ) from None

    # -- outputs --

    async def leadership(self) -> AsyncIterator[Leadership]:
        """Yield the current :class:`Leadership`, then each change, until the node stops.

        A slow consumer sees the latest state, not a backlog: nothing is queued per change.
        After :meth:`stop` it yields a last view with ``leader_id`` 0 and ends.
        """
        seen = -1
        while True:
            if self._leader_version != seen:
                seen = self._leader_version
                yield self._leadership
                continue
            if self._closed:
                return
            await self._leader_event.wait()

    def committed(self) -> AsyncIterator[Committed]:
        """The committed entries, in order, for a node created without ``apply``.

        An entry counts as applied when the consumer asks for the next one, so propose and
        read calls resolve then, and the node waits for the consumer (backpressure). Only one
        consumer may iterate; it ends when the node stops.

        Raises:
            RuntimeError: the node has an ``apply`` callback, or the iterator was already taken.
        """
        if self._consumer is None:
            raise RuntimeError("this node delivers committed entries to its apply callback")
        if self._consumer_taken:
            raise RuntimeError("committed() can be consumed by one iterator only")
        self._consumer_taken = True
        return _CommittedIterator(self._consumer)

    # -- run loop --

    async def _run(self) -> None:
        raw = self._raw
        try:
            while True:
                self._feed()
                if raw.has_ready():
                    self._in_ready = True
                    try:
                        await self._handle_ready(raw.ready())
                    finally:
                        self._ready_done()
                    await asyncio.sleep(0)  # let the transport and timers run between Readys
                elif self._snapshot_made is not None or self._snapshot_retry_due():
                    await self._maybe_snapshot()
                elif not self._inbox and not self._ticks_due:
                    self._wake.clear()
                    await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the node's failure boundary: logged, kept in .failure
            self._fail(exc)

    def _ready_done(self) -> None:
        self._in_ready = False
        waiters, self._between = self._between, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _tick_loop(self) -> None:
        # Ticks follow the loop clock: a stalled loop catches up on resume (those ticks really
        # passed), instead of drifting late as a sleep-per-tick loop would.
        loop = asyncio.get_running_loop()
        start = loop.time()
        done = 0
        while True:
            await asyncio.sleep(max(0.0, start + (done + 1) * self._tick_interval - loop.time()))
            # The slack: a clock that lands exactly on the deadline (a simulator's virtual one)
            # may compute a hair under a whole tick there, and would then never move on.
            due = int((loop.time() - start) / self._tick_interval + 1e-6) - done
            if due > 0:
                done += due
                self._ticks_due += due
                self._wake.set()

    def _feed(self) -> None:
        """Hand everything that arrived since the last Ready to the RawNode, in order."""
        inbox = self._inbox
        while inbox:
            item = inbox.popleft()
            try:
                if isinstance(item, _Proposal):
                    # Group commit: consecutive proposals go to the RawNode in one call.
                    run: list[_Proposal[int] | _Proposal[ConfState]] = [item]
                    while inbox:
                        nxt = inbox[0]
                        if not isinstance(nxt, _Proposal):
                            break
                        run.append(nxt)
                        inbox.popleft()
                    self._propose_all(run)
                else:
                    item()
            except RaftInvariantError:
                raise
            except RaftError as exc:
                # An input RawNode refused changed nothing (e.g. a report about an unknown
                # peer); the caller's own waiters time out if it mattered.
                logger.warning("node %d: input refused: %s", self._id, exc)
        n, self._ticks_due = self._ticks_due, 0
        for _ in range(n):
            self._raw.tick()
        self._ticks += n
        if self._parked and _peek(self._raw).lead:
            parked, self._parked = self._parked, deque()
            self._propose_all(parked)
        if n and self._reads:
            for r in list(self._reads):
                if r.index is None and self._ticks - r.issued_at >= self._election_tick:
                    self._issue_read(r)

    async def _handle_ready(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self._term = rd.hard_state.term
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        self._send(rd.messages)
        committed = rd.committed_entries
        full: StorageFullError | None = None
        try:
            written = await self._saved_on_loop(rd)
        except StorageFullError as exc:
            written, full = False, exc  # written again through the worker, with its back-off
        if not written:
            if self._executor is None:
                raise RaftError("node has no worker")
            executor = self._executor
            if full is None:
                saving = asyncio.wrap_future(
                    self._run_job(executor, functools.partial(self._timed_save, rd))
                )
            else:
                saving = asyncio.get_running_loop().create_future()
                saving.set_exception(full)
            early = _durable_prefix(rd)
            try:
                for e in committed[:early]:
                    await self._apply_entry(e)
            except BaseException:
                with contextlib.suppress(StorageFullError):
                    await saving
                raise
            await self._saved(saving, rd, executor)
            committed = committed[early:]
        self._send(rd.persisted_messages)
        if rd.snapshot is not None:
            self._install_snapshot(rd.snapshot)
        for e in committed:
            await self._apply_entry(e)
        for rs in rd.read_states:
            self._on_read_state(rs)
        self._raw.advance(rd)
        await self._maybe_snapshot()

    def _run_job(
        self, executor: concurrent.futures.Executor, fn: Callable[[], _R]
    ) -> concurrent.futures.Future[_R]:
        """``executor.submit(fn)``, remembered until it finishes (see :meth:`stop`)."""
        job = executor.submit(fn)
        if not job.done():
            tracked = cast("concurrent.futures.Future[object]", job)
            self._jobs.add(tracked)
            tracked.add_done_callback(self._jobs.discard)
        return job

    async def _saved(
        self,
        saving: asyncio.Future[None],
        rd: Ready,
        executor: concurrent.futures.Executor,
    ) -> None:
        """Wait for ``rd``'s write; while it raises StorageFullError, write it again.

        The storage left nothing of a failed write behind, so the same Ready is written again,
        after a back-off. The RawNode is not touched meanwhile, exactly as while a write runs.
        """
        delay = _FULL_RETRY_FIRST
        while True:
            try:
                await saving
            except StorageFullError as exc:
                self._storage_full_hit(exc, "writing the log; retrying until it succeeds")
                await asyncio.sleep(delay)
                delay = min(delay * 2, _FULL_RETRY_MAX)
                saving = asyncio.wrap_future(
                    self._run_job(executor, functools.partial(self._timed_save, rd))
                )
            else:
                self._storage_writable()
                return

    async def _saved_on_loop(self, rd: Ready) -> bool:
        """Save ``rd`` on the loop if it should be (module docstring); whether it was saved.

        True also when ``rd`` writes nothing. A Ready that only moves the commit index needs
        no fsync, so writing it costs next to nothing; a synced one is written here while the
        storage is fast. The worker is idle (the Ready loop waits for each write), so the
        one-writer rule holds. StorageFullError propagates: nothing of ``rd`` was kept.
        """
        if rd.snapshot is not None:
            return False
        if rd.must_sync or rd.entries:
            if self._last_save >= self._save_on_loop_below:
                return False
            if rd.messages:
                await asyncio.sleep(0)  # the transport's flush of rd.messages goes first
            self._timed_save(rd)
        elif rd.hard_state is not None:
            self._storage.save_ready(rd)
        return True

    def _timed_save(self, rd: Ready) -> None:
        """Write ``rd`` and remember how long it took (on the loop or in the worker)."""
        clock = self._clock
        t0 = clock()
        self._storage.save_ready(rd)
        self._last_save = clock() - t0

    def _storage_full_hit(self, exc: StorageFullError, doing: str) -> None:
        self._full_failures += 1
        if self._storage_full:
            return
        self._storage_full = True
        logger.warning("node %d: storage full while %s: %s", self._id, doing, exc)
        if self._on_storage_full is not None:
            try:
                self._on_storage_full(exc)
            except Exception:  # the application's hook must not stop the node
                logger.exception("node %d: on_storage_full raised", self._id)

    def _storage_writable(self) -> None:
        if self._storage_full:
            logger.info(
                "node %d: storage writable again after %d failed write(s)",
                self._id,
                self._full_failures,
            )
            self._storage_full = False
            self._full_failures = 0

    def _send(self, msgs: Sequence[Message]) -> None:
        if not msgs:
            return
        try:
            result = self._send_fn(msgs)
        except Exception:
            logger.exception("node %d: send failed; %d messages lost", self._id, len(msgs))
            raw = self._raw
            for to in sorted({m.to for m in msgs}):
                self._inbox.append(functools.partial(raw.report_unreachable, to))
            for m in msgs:
                if m.type == MessageType.SNAP:  # else the leader would wait for it forever
                    self._inbox.append(functools.partial(raw.report_snapshot, m.to, success=False))
            return
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError("Node's send must be a plain function, not a coroutine function")

    def _step(self, m: Message) -> None:
        try:
            self._raw.step(m)
        except ProposalDropped as exc:
            logger.debug("node %d: dropped forwarded proposal from %d: %s", self._id, m.from_, exc)
        except (ValueError, StepPeerNotFoundError) as exc:
            # Malformed, misrouted or local-only messages (all ValueErrors), or a sender that is
            # not a member: RawNode changed nothing, so drop the message like a lost one.
            logger.warning("node %d: ignoring %s from %d: %s", self._id, m.type.name, m.from_, exc)

    # -- proposals --

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _submit(
        self,
        w: _Proposal[int] | _Proposal[ConfState],
        unregister: Callable[[], object],
        timeout: float | None,
    ) -> None:
        """Queue ``w`` for the run task and arm its timeout; ``unregister`` runs when it is done."""
        t = self._timeout(timeout)
        self._arm_timeout(w, t)
        w.future.add_done_callback(lambda _: unregister())
        self._check_running()
        self._inbox.append(w)
        self._wake.set()

    def _arm_timeout(self, w: _Proposal[int] | _Proposal[ConfState], t: float) -> None:
        """Expire ``w`` after ``t`` seconds unless it is done by then.

        One timer serves every pending proposal (a heap of deadlines, the resolved ones dropped
        lazily) rather than a timer handle per proposal: on the propose hot path that is a
        heap push instead of a handle to schedule and later cancel.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t
        w.timeout = t
        heap = self._deadlines
        heapq.heappush(heap, (deadline, w.seq, w))
        expiry = self._expiry
        if expiry is None or deadline < expiry.when():
            if expiry is not None:
                expiry.cancel()
            self._expiry = loop.call_at(deadline, self._expire_due)
        if len(heap) > 2 * (len(self._props) + len(self._conf_props)) + 64:
            self._deadlines = [x for x in heap if not x[2].future.done()]
            heapq.heapify(self._deadlines)

    def _expire_due(self) -> None:
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._deadlines
        while heap and (heap[0][2].future.done() or heap[0][0] <= now):
            _, _, w = heapq.heappop(heap)
            self._expire_proposal(w, w.timeout)
        if heap:
            self._expiry = loop.call_at(heap[0][0], self._expire_due)

    def _propose_all(self, ws: Iterable[_Proposal[int] | _Proposal[ConfState]]) -> None:
        """Propose ``ws`` in order; each run of consecutive data proposals in one batch."""
        run: list[tuple[_Proposal[int], bytes]] = []
        for w in ws:
            if w.future.done():
                continue  # timed out or cancelled while waiting
            if isinstance(w.payload, bytes):
                run.append((w, w.payload))  # type: ignore[arg-type]  # bytes payload: _Proposal[int]
                continue
            self._propose_batch(run)
            run = []
            self._propose_now(w)
        self._propose_batch(run)

    def _propose_batch(self, run: list[tuple[_Proposal[int], bytes]]) -> None:
        """Propose data proposals with one ``propose_many``; same outcomes as one at a time."""
        if len(run) <= 1:
            for w, _ in run:
                self._propose_now(w)
            return
        r = _peek(self._raw)
        if r.lead == 0:
            for w, _ in run:
                w.stage = _Stage.PARKED
                self._parked.append(w)
            return
        try:
            self._raw.propose_many([data for _, data in run])
        except ProposalDropped:
            # Nothing was appended (all or nothing). One at a time, each proposal gets the
            # outcome it would have had alone (some may still fit under the size limit).
            for w, _ in run:
                self._propose_now(w)
            return
        first = r.log.last_index() - len(run) + 1
        leader = r.state == StateType.LEADER
        for i, (w, _) in enumerate(run, first):
            w.stage = _Stage.PROPOSED
            if leader:
                # Appended locally at a known index: if another entry commits there, it is lost.
                self._by_index[i] = w

    def _propose_now(self, w: _Proposal[int] | _Proposal[ConfState]) -> None:
        if w.future.done():
            return  # timed out or cancelled while waiting
        r = _peek(self._raw)
        if r.lead == 0:
            w.stage = _Stage.PARKED
            self._parked.append(w)
            return
        w.stage = _Stage.PROPOSED
        try:
            if isinstance(w.payload, bytes):
                self._raw.propose(w.payload)
            else:
                self._raw.propose_conf_change(w.payload)
        except ProposalDropped as exc:
            if r.state != StateType.LEADER and r.lead == 0:
                w.future.set_exception(NotLeader(f"no leader at term {r.term}: {exc}"))
            else:
                w.future.set_exception(exc)
            return
        except (TypeError, ValueError) as exc:  # an invalid conf change: RawNode changed nothing
            w.future.set_exception(exc)
            return
        if r.state == StateType.LEADER:
            # Appended locally at a known index: if another entry commits there, it is lost.
            self._by_index[r.log.last_index()] = w

    def _expire_proposal(self, w: _Proposal[int] | _Proposal[ConfState], t: float) -> None:
        if w.future.done():
            return
        err: RaftError
        if w.stage == _Stage.PARKED:
            err = NotLeader(f"node {self._id}: no leader known within {t}s; nothing was proposed")
        elif w.stage == _Stage.QUEUED:
            err = ProposalTimeout(
                f"node {self._id}: not proposed within {t}s (node busy); it was never proposed",
                outcome_known=True,
            )
        else:
            err = ProposalTimeout(
                f"node {self._id}: proposal not applied within {t}s; outcome unknown "
                "(it may still commit and be applied)",
                outcome_known=False,
            )
        w.future.set_exception(err)

    # -- applying --

    async def _apply_entry(self, e: Entry) -> None:
        c: Committed | None = None
        normal: _Proposal[int] | None = None
        conf: _Proposal[ConfState] | None = None
        cs: ConfState | None = None
        mine = self._id, self._run_id
        if e.type == EntryType.NORMAL:
            if e.data:
                pid, data = unwrap_proposal(e.data)
                c = Committed(e.index, e.term, data, pid)
                if pid is not None and (pid.origin, pid.run) == mine:
                    normal = self._props.get(pid.seq)
            elif self._deliver_empty:
                c = Committed(e.index, e.term)
        else:
            pid, cc = self._decode_conf_change(e)
            if cc is not None:
                try:
                    cs = self._raw.apply_conf_change(cc)
                except ConfigError as exc:
                    logger.warning("node %d: conf change at %d refused: %s", self._id, e.index, exc)
                else:
                    self._conf_state = cs
                    self._snapshot_due = self._snapshot_fn is not None
            c = Committed(e.index, e.term, b"", pid, cc, cs)
            if pid is not None and (pid.origin, pid.run) == mine:
                conf = self._conf_props.get(pid.seq)
        if c is not None:
            await self._deliver(c)
        self._applied = e.index
        if normal is not None and not normal.future.done():
            normal.future.set_result(e.index)
        if conf is not None and not conf.future.done():
            if cs is not None:
                conf.future.set_result(cs)
            else:
                conf.future.set_exception(
                    ConfChangeRefused(f"configuration change at {e.index} was refused")
                )
        lost = self._by_index.pop(e.index, None)
        if lost is not None and lost is not normal and lost is not conf and not lost.future.done():
            if isinstance(lost.payload, bytes):
                lost.future.set_exception(
                    ProposalLost(f"entry {e.index} was replaced by a new leader; never applied")
                )
            else:
                lost.future.set_exception(
                    ConfChangeRefused(f"entry {e.index} was refused or replaced; nothing changed")
                )
        self._serve_reads()

    def _decode_conf_change(self, e: Entry) -> tuple[ProposalId | None, ConfChange | ConfChangeV2]:
        if e.type == EntryType.CONF_CHANGE_V2 and not e.data:
            return None, ConfChangeV2()  # the leader's automatic leave-joint proposal
        cc = decode_conf_change(e.type, e.data)
        pid, ctx = unwrap_proposal(cc.context)
        return pid, attrs.evolve(cc, context=ctx) if pid is not None else cc

    def _replay_conf_changes(self, lo: int, hi: int) -> None:
        """Apply the configuration changes in ``[lo, hi)`` to the RawNode, without delivering.

        Used when ``applied`` is above the snapshot: those entries are not handed out again, but
        the RawNode's configuration must include the changes among them.
        """
        if hi <= lo:
            return
        for e in self._storage.entries(lo, hi):
            if e.type != EntryType.NORMAL:
                _, cc = self._decode_conf_change(e)
                with contextlib.suppress(ConfigError):
                    self._conf_state = self._raw.apply_conf_change(cc)

    async def _deliver(self, c: Committed) -> None:
        if self._apply_fn is not None:
            result = self._apply_fn(c)
            if result is not None and inspect.isawaitable(result):
                await result
            return
        if self._consumer is None:
            raise RaftError("node has neither apply nor a committed() queue")
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._consumer.put_nowait((c, ack))
        await ack

    def _install_snapshot(self, snap: Snapshot) -> None:
        if self._restore_fn is None:
            raise RaftError(
                f"node {self._id} received a snapshot at {snap.metadata.index} but has no restore"
            )
        self._restore_fn(snap.data)
        index = snap.metadata.index
        self._applied = index
        self._conf_state = snap.metadata.conf_state
        for i in [i for i in self._by_index if i <= index]:
            w = self._by_index.pop(i)
            if not w.future.done():
                w.future.set_exception(
                    OutcomeUnknown(f"a snapshot at {index} covered the proposal's index {i}")
                )
        self._serve_reads()

    async def _maybe_snapshot(self) -> None:
        if self._snapshot_fn is None or self._executor is None:
            return
        made = self._snapshot_made
        if made is not None:
            # Cleared only once adopted, so "none made and none pending" means the storage
            # holds the newest snapshot.
            try:
                await asyncio.wrap_future(
                    self._run_job(self._executor, functools.partial(self._adopt_and_compact, made))
                )
            except StorageFullError as exc:
                self._snapshot_made = None
                self._snapshot_skipped(exc, made.metadata.index)
            else:
                self._snapshot_made = None
                self._snapshot_written()
        if self._snapshot_job is not None:
            return
        loop = asyncio.get_running_loop()
        if self._snapshot_retry_at is not None:
            if loop.time() < self._snapshot_retry_at:
                return
            self._snapshot_retry_at = None  # set again if this attempt is skipped too
        snap_index = self._storage.snapshot().metadata.index
        due = self._snapshot_due or (
            self._snapshot_every and self._applied - snap_index >= self._snapshot_every
        )
        if not due or self._applied <= snap_index:
            return
        self._snapshot_due = False
        data = self._snapshot_fn()
        if not callable(data):
            try:
                await asyncio.wrap_future(
                    self._run_job(
                        self._executor,
                        functools.partial(
                            self._snapshot_and_compact, self._applied, self._conf_state, data
                        ),
                    )
                )
            except StorageFullError as exc:
                self._snapshot_skipped(exc, self._applied)
            else:
                self._snapshot_written()
            return
        md = SnapshotMetadata(
            conf_state=self._conf_state,
            index=self._applied,
            term=self._storage.term(self._applied),
        )
        self._snapshot_job = loop.create_task(
            self._make_snapshot(md, data), name=f"raftlib-node-{self._id}-snapshot"
        )

    async def _make_snapshot(self, md: SnapshotMetadata, image: Callable[[], bytes]) -> None:
        """Encode (and stage) a snapshot off the loop; the Ready loop adopts it afterwards."""
        if self._snap_executor is None:
            self._snap_executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"raftlib-node-{self._id}-snapshot"
            )
        storage = self._storage
        stage = storage.stage_snapshot if isinstance(storage, StagingStorage) else None

        def make() -> Snapshot:
            data: object = image()
            if isinstance(data, bytearray | memoryview):
                data = bytes(data)
            snap = Snapshot(data=cast("bytes", data), metadata=md)
            if stage is not None:
                stage(snap)
            return snap

        try:
            snap = await asyncio.wrap_future(self._run_job(self._snap_executor, make))
        except asyncio.CancelledError:
            raise
        except StorageFullError as exc:
            self._snapshot_job = None
            self._snapshot_skipped(exc, md.index)
            return
        except Exception as exc:  # noqa: BLE001 - a broken state machine or disk stops the node
            self._snapshot_job = None
            if self._runner is not None:
                self._runner.cancel()
            self._fail(exc)
            return
        self._snapshot_job = None
        self._snapshot_made = snap
        self._wake.set()

    def _snapshot_skipped(self, exc: StorageFullError, index: int) -> None:
        """A snapshot write ran out of space: try again (a newer one) after a back-off."""
        delay = self._snapshot_backoff
        self._snapshot_backoff = min(delay * 2, _SNAPSHOT_RETRY_MAX)
        self._snapshot_retry_at = asyncio.get_running_loop().time() + delay
        self._snapshot_due = True
        self._storage_full_hit(exc, f"writing the snapshot at {index}; skipped, retried later")
        logger.info("node %d: snapshot at %d skipped; next try in %.1fs", self._id, index, delay)

    def _snapshot_retry_due(self) -> bool:
        """Whether a skipped snapshot's back-off is over (the next tick then tries again)."""
        at = self._snapshot_retry_at
        return (
            at is not None
            and self._snapshot_job is None
            and asyncio.get_running_loop().time() >= at
        )

    def _snapshot_written(self) -> None:
        self._snapshot_retry_at = None
        self._snapshot_backoff = _SNAPSHOT_RETRY_FIRST
        self._storage_writable()

    def _adopt_and_compact(self, snap: Snapshot) -> None:
        st = self._storage
        index = snap.metadata.index
        if index <= st.snapshot().metadata.index:
            return  # a newer snapshot (e.g. the leader's) was installed meanwhile
        if isinstance(st, StagingStorage):
            st.adopt_snapshot(snap)
        else:
            st.create_snapshot(index, snap.metadata.conf_state, snap.data)
        compact_to = index - self._keep_entries
        if compact_to >= st.first_index():
            st.compact(compact_to)

    def _snapshot_and_compact(self, index: int, cs: ConfState, data: bytes) -> None:
        st = self._storage
        st.create_snapshot(index, cs, data)
        compact_to = index - self._keep_entries
        if compact_to >= st.first_index():
            st.compact(compact_to)

    # -- reads --

    def _issue_read(self, r: _Read) -> None:
        if r.future.done() or r.index is not None:
            return
        r.issued_at = self._ticks
        if _peek(self._raw).lead == 0:
            return  # re-issued on the next leader change or election timeout
        self._read_seq += 1
        ctx = struct.pack(">QQ", self._run_id, self._read_seq)
        r.ctxs.append(ctx)
        self._read_ctx[ctx] = r
        self._raw.read_index(ctx)

    def _on_read_state(self, rs: ReadState) -> None:
        r = self._read_ctx.get(rs.request_ctx)
        if r is None or r.future.done() or r.index is not None:
            return
        r.index = rs.index
        self._read_wait.append(r)
        self._serve_reads()

    def _serve_reads(self) -> None:
        if not self._read_wait:
            return
        still = []
        for r in self._read_wait:
            if r.future.done():
                continue
            if r.index is not None and r.index <= self._applied:
                r.future.set_result(r.index)
            else:
                still.append(r)
        self._read_wait = still

    def _forget_read(self, r: _Read) -> None:
        self._reads.pop(r, None)
        for ctx in r.ctxs:
            self._read_ctx.pop(ctx, None)

    def _expire_read(self, r: _Read, t: float) -> None:
        if not r.future.done():
            r.future.set_exception(
                NodeTimeout(f"node {self._id}: read index not confirmed within {t}s")
            )

    # -- leadership --

    def _on_soft_state(self, ss: SoftState) -> None:
        old = self._leadership
        new = Leadership(ss.lead, self._term, ss.raft_state == StateType.LEADER)
        if new != old:
            self._publish(new)
        if ss.lead and ss.lead != old.leader_id:
            for r in list(self._reads):
                self._issue_read(r)

    def _publish(self, view: Leadership) -> None:
        self._leadership = view
        self._leader_version += 1
        event, self._leader_event = self._leader_event, asyncio.Event()
        event.set()

    async def _wait_leadership_change(self) -> None:
        if self._closed:
            raise NodeStopped(f"node {self._id} stopped")
        await self._leader_event.wait()
        if self._closed:
            raise NodeStopped(f"node {self._id} stopped")

    # -- helpers --

    def _input(self, fn: Callable[[], None]) -> None:
        self._check_running()
        self._inbox.append(fn)
        self._wake.set()

    def _check_running(self) -> asyncio.AbstractEventLoop:
        if self._state != _State.RUNNING or self._failure is not None:
            reason = "was not started" if self._state == _State.NEW else "is stopped"
            if self._failure is not None:
                reason = f"failed: {self._failure!r}"
            raise NodeStopped(f"node {self._id} {reason}; nothing was done", outcome_known=True)
        return asyncio.get_running_loop()

    def _timeout(self, timeout: float | None) -> float:
        t = self._request_timeout if timeout is None else timeout
        if not t > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        return t

    def _fail(self, exc: BaseException) -> None:
        logger.error("node %d failed; stopping", self._id, exc_info=exc)
        self._failure = exc
        if self._ticker is not None:
            self._ticker.cancel()
        self._close(f"node {self._id} failed: {exc!r}")

    def _close(self, reason: str) -> None:
        """Fail every pending call with ``NodeStopped`` and end the iterators. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._deadlines = []
        waiters: list[_Proposal[int] | _Proposal[ConfState]] = [
            *self._props.values(),
            *self._conf_props.values(),
        ]
        for w in waiters:
            if not w.future.done():
                known = w.stage != _Stage.PROPOSED
                tail = "it was never proposed" if known else "outcome unknown"
                w.future.set_exception(NodeStopped(f"{reason}; {tail}", outcome_known=known))
        for r in list(self._reads):
            if not r.future.done():
                r.future.set_exception(NodeStopped(reason))
        self._parked.clear()
        self._by_index.clear()
        self._ready_done()
        self._inbox.clear()
        if self._leadership.leader_id or self._leadership.is_leader:
            self._publish(Leadership(0, self._term, is_leader=False))
        else:
            self._leader_event.set()  # wake waiters so they see the node stopped
        if self._consumer is not None:
            self._consumer.put_nowait(None)


class _CommittedIterator:
    """Async iterator over committed entries; asking for the next one acknowledges the last."""

    def __init__(self, queue: asyncio.Queue[_Offer | None]) -> None:
        self._queue = queue
        self._ack: asyncio.Future[None] | None = None
        self._ended = False

    def __aiter__(self) -> _CommittedIterator:
        return self

    async def __anext__(self) -> Committed:
        if self._ack is not None and not self._ack.done():
            self._ack.set_result(None)
        self._ack = None
        if self._ended:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._ended = True
            raise StopAsyncIteration
        c, self._ack = item
        return c
