"""A deterministic simulated cluster: RawNodes, a lossy network, crashes, and clients.

:class:`Cluster` runs ``RawNode``s over ``MemoryStorage`` the way a careful application would,
with every source of nondeterminism turned into an explicit :class:`~raftlib.testing.events.Event`:

* **Network.** Messages a node sends go *in flight*; an event delivers, drops or duplicates a
  chosen one, so any loss, duplication, reordering or delay is expressible. Links can be cut one
  way (:class:`~raftlib.testing.events.Cut`) or between groups
  (:class:`~raftlib.testing.events.Partition`). Like etcd's transport, the cluster reports to the
  sender a message sent into a cut link (``report_unreachable``) and the fate of every snapshot
  (``report_snapshot``); a message dropped in flight is lost silently.
* **Disk.** Taking a Ready sends its ``messages`` at once and starts a *pending write*; a
  :class:`~raftlib.testing.events.Sync` finishes it: persist snapshot, entries and hard state into
  the node's ``MemoryStorage`` (which is its disk), send ``persisted_messages``, apply the
  committed entries, ``advance``. A :class:`~raftlib.testing.events.Crash` in between loses the
  pending write, or tears it (a prefix reaches the disk). With
  :attr:`ClusterConfig.unsynced_commits`, a Ready that need not be fsynced (``must_sync`` false:
  only the commit index changed) is written without fsync: its hard state stays in a volatile
  layer (the page cache) until a later synced write flushes it, and a crash loses it. A restart
  builds a new ``RawNode`` from the storage alone and rebuilds the state machine from the latest
  snapshot, or, with :attr:`ClusterConfig.durable_apply`, keeps the state machine (durable up to
  what it applied) and passes its applied index as ``Config.applied``.
* **Time.** Each node is ticked individually, so clocks can run at different speeds.
* **Clients.** :class:`~raftlib.testing.events.Write` proposes a command and waits for the node
  it was sent to to apply it; :class:`~raftlib.testing.events.Read` uses ``read_index`` and
  answers from the local state machine once applied far enough (read states are taken when the
  Ready is, before its committed entries are applied, as etcd does);
  :class:`~raftlib.testing.events.Retry` reads again with the context of the node's latest
  read. All are recorded in :attr:`Cluster.history` for the linearizability checker.

After every delivered message, tick and Ready the :class:`~raftlib.testing.invariants.
SafetyChecker` inspects the nodes involved and raises
:class:`~raftlib.testing.invariants.InvariantViolation` at the first unsafe state. Every executed
event is recorded; :meth:`Cluster.script` prints them as a schedule that
:meth:`Cluster.replay` (and ``python -m raftlib.testing.replay``) runs again, step for step.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import cbor2

from raftlib.codec import decode_conf_change
from raftlib.config import Config
from raftlib.errors import ConfigError, ProposalDropped, StepPeerNotFoundError
from raftlib.raft import _Raft
from raftlib.rawnode import RawNode, Ready
from raftlib.read_only import ReadOnlyOption
from raftlib.storage import MemoryStorage
from raftlib.testing.events import (
    Campaign,
    Compact,
    Conf,
    Crash,
    Cut,
    Deliver,
    Drop,
    Duplicate,
    Event,
    Heal,
    Liveness,
    MessageSelector,
    Partition,
    Read,
    Restart,
    Retry,
    Run,
    ScriptError,
    Stabilize,
    Sync,
    Tick,
    Transfer,
    Write,
    format_event,
    parse_event,
)
from raftlib.testing.invariants import (
    LivenessViolation,
    NodeObservation,
    SafetyChecker,
)
from raftlib.testing.linearizability import History, LinearizabilityResult, Model
from raftlib.testing.linearizability import check_linearizability as _check_lin
from raftlib.testing.statemachine import KVStateMachine, StateMachine, kv_model
from raftlib.types import (
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
    StateType,
)

__all__ = [
    "Cluster",
    "ClusterConfig",
    "ClusterNode",
    "InFlight",
    "format_script",
    "membership_changes",
    "parse_script",
]

SCRIPT_HEADER = "# raftlib.testing schedule v1"


def _ids(value: object) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(int(x) for x in value.split(",") if x)
    if isinstance(value, Iterable):
        return tuple(int(x) for x in value)
    raise TypeError(f"expected node ids, got {value!r}")


@attrs.frozen
class ClusterConfig:
    """The shape of a simulated cluster and the ``Config`` of its nodes.

    Attributes:
        voters: the initial voters.
        learners: the initial learners.
        spares: nodes that run from the start outside the configuration, ready to be added.
        seed: seeds every node's election jitter (a restarted node gets a fresh, derived seed).
        pre_vote: ``Config.pre_vote``.
        check_quorum: ``Config.check_quorum``.
        election_tick: ``Config.election_tick``.
        heartbeat_tick: ``Config.heartbeat_tick``.
        max_size_per_msg: ``Config.max_size_per_msg`` (small, to exercise batching).
        max_inflight_msgs: ``Config.max_inflight_msgs`` (small, to exercise flow control).
        max_uncommitted_entries_size: ``Config.max_uncommitted_entries_size``.
        lease_reads: use ``ReadOnlyOption.LEASE_BASED`` (needs ``check_quorum``). Lease reads are
            only linearizable if clocks are bounded; per-node tick skew can break them.
        auto_sync: every Ready is persisted as soon as it is taken (no pending writes).
        snapshot_every: a node snapshots and compacts its log whenever this many applied
            entries follow its last snapshot; 0 means only on :class:`~raftlib.testing.events.
            Compact`.
        unsynced_commits: a Ready with ``must_sync`` false (only the commit index changed) is
            written without fsync, as the Ready contract allows: a crash loses its hard state
            unless a later synced write flushed it, so a node may restart with a durable commit
            index behind what it applied and acknowledged.
        durable_apply: the state machine is durable up to what it applied (as etcd's backend):
            a restarted node keeps it and passes its applied index as ``Config.applied``, instead
            of rebuilding it from the latest snapshot.
    """

    voters: tuple[int, ...] = attrs.field(default=(1, 2, 3), converter=_ids)
    learners: tuple[int, ...] = attrs.field(default=(), converter=_ids)
    spares: tuple[int, ...] = attrs.field(default=(), converter=_ids)
    seed: int = 0
    pre_vote: bool = True
    check_quorum: bool = True
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_size_per_msg: int = 256
    max_inflight_msgs: int = 4
    max_uncommitted_entries_size: int = 0
    lease_reads: bool = False
    auto_sync: bool = False
    snapshot_every: int = 0
    unsynced_commits: bool = False
    durable_apply: bool = False

    @property
    def node_ids(self) -> tuple[int, ...]:
        """Every node id, sorted."""
        return tuple(sorted({*self.voters, *self.learners, *self.spares}))

    def to_line(self) -> str:
        """The ``cluster key=value ...`` line of a schedule."""
        words = ["cluster"]
        for f in attrs.fields(ClusterConfig):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                if not v and f.name != "voters":
                    continue
                text = ",".join(map(str, v))
            elif isinstance(v, bool):
                text = str(int(v))
            else:
                text = str(v)
            words.append(f"{f.name}={text}")
        return " ".join(words)

    @classmethod
    def from_line(cls, line: str) -> ClusterConfig:
        """Parse a line made by :meth:`to_line`.

        Raises:
            ScriptError: it is not a valid ``cluster`` line.
        """
        words = line.split()
        if not words or words[0] != "cluster":
            raise ScriptError(f"expected a 'cluster ...' line, got {line!r}")
        kwargs: dict[str, Any] = {}
        fields = {f.name: f for f in attrs.fields(ClusterConfig)}
        for w in words[1:]:
            k, _, v = w.partition("=")
            f = fields.get(k)
            if f is None:
                raise ScriptError(f"unknown cluster setting {k!r}")
            default = f.default
            if isinstance(default, tuple):
                kwargs[k] = _ids(v)
            elif isinstance(default, bool):
                kwargs[k] = v not in ("0", "false", "False")
            else:
                kwargs[k] = int(v)
        return cls(**kwargs)


@attrs.frozen
class InFlight:
    """A message on the wire; ``seq`` orders messages by when they were sent."""

    seq: int
    msg: Message


_NO_OP = -1
"""Operation id of an entry that carries no client command (the liveness probe)."""


class ClusterNode:
    """One simulated node: its disk (``storage``) and, while running, its volatile state.

    Attributes:
        id: the node id.
        storage: everything the node has made durable; it survives crashes.
        raw: the running ``RawNode``, or ``None`` while crashed.
        sm: the application state machine (volatile; rebuilt from the snapshot on restart).
        applied: the index the state machine reflects.
        conf_state: the configuration as of ``applied``.
        incarnation: how many times the node has (re)started.
        pending: the Ready taken but not yet durable, if any.
        unsynced: a hard state written without fsync (``ClusterConfig.unsynced_commits``) and
            not yet flushed by a synced write; a crash loses it.
        read_ctxs: the request contexts of this incarnation's reads, latest last.
    """

    def __init__(self, node_id: int, storage: MemoryStorage) -> None:
        self.id = node_id
        self.storage = storage
        self.raw: RawNode | None = None
        self.sm: StateMachine | None = None
        self.applied = 0
        self.conf_state = storage.snapshot().metadata.conf_state
        self.incarnation = 0
        self.pending: Ready | None = None
        self.unsynced: HardState | None = None
        self.seen_ops: set[int] = set()
        self.own_ops: set[int] = set()
        self.pending_reads: dict[bytes, list[int]] = {}
        """The reads waiting for a ReadState, per request context, first come first served."""
        self.read_ctxs: list[bytes] = []
        self.read_query: dict[bytes, bytes] = {}
        self.leader_only: set[bytes] = set()
        """Contexts every request of which was made while this node led (see ``Retry``)."""
        self.waiting_reads: list[tuple[int, int]] = []
        self.results: dict[int, bytes] = {}
        self.kept_sm: StateMachine | None = None
        """With ``durable_apply``, the state machine as the crash left it on disk."""

    @property
    def up(self) -> bool:
        """Whether the node is running."""
        return self.raw is not None

    def running(self) -> RawNode:
        """The running ``RawNode``.

        Raises:
            RuntimeError: the node is crashed.
        """
        if self.raw is None:
            raise RuntimeError(f"node {self.id} is down")
        return self.raw

    def running_config(self) -> ConfState:
        """The running node's active configuration.

        Raises:
            RuntimeError: the node is crashed.
        """
        return _peek(self.running()).trk.config.conf_state()

    @property
    def role(self) -> StateType | None:
        """The node's role, or ``None`` while crashed."""
        return None if self.raw is None else _peek(self.raw).state

    @property
    def term(self) -> int:
        """The node's current term (its durable one while crashed)."""
        if self.raw is None:
            return self.storage.hard_state.term
        return _peek(self.raw).term

    @property
    def commit(self) -> int:
        """The node's commit index (its durable one while crashed)."""
        if self.raw is None:
            return self.storage.hard_state.commit
        return _peek(self.raw).log.committed

    @property
    def config(self) -> ConfState | None:
        """The node's active configuration, or ``None`` while crashed."""
        return None if self.raw is None else _peek(self.raw).trk.config.conf_state()

    def log(self) -> list[Entry]:
        """The node's log after its snapshot: durable plus not yet persisted entries."""
        if self.raw is None:
            st = self.storage
            if st.last_index() < st.first_index():
                return []
            return st.entries(st.first_index(), st.last_index() + 1)
        log = _peek(self.raw).log
        first, last = log.first_index(), log.last_index()
        return log.slice(first, last + 1, None) if last >= first else []


def _peek(raw: RawNode) -> _Raft:
    """The protocol state behind ``raw``, to observe without side effects.

    ``RawNode.status()`` is not a pure observer (it flushes coalesced broadcasts), and the
    simulator must not perturb the runs it observes; this is its only access to internals.
    """
    return raw._raft


def _envelope(op_id: int | None, command: bytes) -> bytes:
    return cbor2.dumps([op_id, command])


def _unwrap(data: bytes) -> tuple[int | None, bytes]:
    op_id, command = cbor2.loads(data)
    return op_id, command


class Cluster:
    """A deterministic simulated cluster; see the module docstring.

    Args:
        config: the cluster's shape and the nodes' configuration.
        state_machine: makes a node's application state machine.
        model: the linearizability model of the state machine's client operations, for
            :meth:`check_linearizability`. By default :func:`kv_model` for the default
            :class:`KVStateMachine`, and none (no check) for any other state machine.
        check: run the safety checker after every step.
    """

    def __init__(
        self,
        config: ClusterConfig | None = None,
        *,
        state_machine: Callable[[], StateMachine] = KVStateMachine,
        model: Model | None = None,
        check: bool = True,
    ) -> None:
        self.config = config = config if config is not None else ClusterConfig()
        self.state_machine = state_machine
        if model is None and state_machine is KVStateMachine:
            model = kv_model()
        self.model = model
        self.check = check
        self.checker = SafetyChecker(durable=self._durable)
        self.nodes: dict[int, ClusterNode] = {}
        self.in_flight: list[InFlight] = []
        self.cuts: set[tuple[int, int]] = set()
        self.history = History()
        self.events: list[Event] = []
        self.now = 0
        self.trace: Callable[[Event], None] | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "delivered",
                "dropped",
                "duplicated",
                "crashes",
                "restarts",
                "syncs",
                "readys",
                "snapshots",
            ),
            0,
        )
        self._seq = 0
        self._probe = 0
        self._read_owner: dict[bytes, int] = {}
        self._probe_reads: dict[bytes, bool] = {}
        initial = ConfState(voters=config.voters, learners=config.learners)
        for i in config.node_ids:
            node = ClusterNode(i, MemoryStorage(initial))
            self.nodes[i] = node
            self._start(node)
        self._settle()

    # -- recording and replay --

    def script(self) -> str:
        """The events executed so far, as a schedule :meth:`replay` runs again."""
        return format_script(self.config, self.events)

    @classmethod
    def replay(
        cls,
        script: str,
        *,
        state_machine: Callable[[], StateMachine] = KVStateMachine,
        model: Model | None = None,
        trace: Callable[[Cluster, Event], None] | None = None,
    ) -> Cluster:
        """Build a cluster from a schedule's ``cluster`` line and run its events.

        Args:
            script: text made by :meth:`script` (comments and blank lines are ignored).
            state_machine: as for :class:`Cluster`.
            model: as for :class:`Cluster`.
            trace: called after each event (also when it raised), e.g. to print the nodes.

        Raises:
            ScriptError: the script does not parse.
            InvariantViolation: a safety property failed (the events up to it ran).
        """
        config, events = parse_script(script)
        cluster = cls(config, state_machine=state_machine, model=model)
        for e in events:
            try:
                cluster.execute(e)
            finally:
                if trace is not None:
                    trace(cluster, e)
        return cluster

    # -- the one entry point --

    def execute(self, event: Event) -> None:
        """Run one event, then let nodes take their Readys; check invariants throughout.

        Raises:
            InvariantViolation: a safety property failed.
            LivenessViolation: a :class:`~raftlib.testing.events.Liveness` bound was exceeded,
                or the cluster did not quiesce within a stabilize.
        """
        self.events.append(event)
        self.now += 1
        self._dispatch(event)
        self._settle()
        if self.trace is not None:
            self.trace(event)

    def _dispatch(self, e: Event) -> None:
        match e:
            case Tick(node, n):
                nd = self.nodes[node]
                for _ in range(n):
                    if nd.raw is None:
                        return
                    nd.raw.tick()
                    self._observe(nd)
                    self._settle()
            case Deliver(sel):
                self._deliver(self._take(sel))
            case Drop(sel):
                f = self._take(sel)
                if f is not None:
                    self._lost(f.msg)
            case Duplicate(sel):
                f = self._find(sel)
                if f is not None:
                    self._seq += 1
                    self.in_flight.append(InFlight(self._seq, f.msg))
                    self.stats["duplicated"] += 1
            case Sync(node):
                self._sync(self.nodes[node])
            case Crash(node, torn):
                self._crash(self.nodes[node], torn)
            case Restart(node):
                nd = self.nodes[node]
                if nd.raw is None:
                    self.stats["restarts"] += 1
                    self._start(nd)
            case Partition(groups):
                for i, g in enumerate(groups):
                    for h in groups[i + 1 :]:
                        for a in g:
                            for b in h:
                                self.cuts |= {(a, b), (b, a)}
            case Cut(frm, to):
                self.cuts.add((frm, to))
            case Heal():
                self.cuts.clear()
            case Campaign(node):
                raw = self.nodes[node].raw
                if raw is not None:
                    raw.campaign()
                    self._observe(self.nodes[node])
            case Write(node, command):
                self._write(self.nodes[node], command)
            case Read(node, query):
                self._read(self.nodes[node], query)
            case Retry(node):
                self._retry(self.nodes[node])
            case Transfer(node, target):
                raw = self.nodes[node].raw
                if raw is not None:
                    raw.transfer_leader(target)
                    self._observe(self.nodes[node])
            case Conf(node, changes, transition):
                self._propose_conf(self.nodes[node], changes, transition)
            case Compact(node):
                self._compact(self.nodes[node])
            case Stabilize():
                self._stabilize()
            case Run(n):
                for _ in range(n):
                    self._tick_all()
                    self._stabilize()
            case Liveness(ticks):
                self._liveness(ticks)

    # -- convenience wrappers (each records one event) --

    def tick(self, node: int, n: int = 1) -> None:
        """Tick ``node`` ``n`` times."""
        self.execute(Tick(node, n))

    def deliver(self, frm: int, to: int, type: Any = None, nth: int = 1) -> None:
        """Deliver the ``nth`` in-flight message from ``frm`` to ``to`` (of ``type``)."""
        self.execute(Deliver(MessageSelector(frm, to, type, nth)))

    def drop(self, frm: int, to: int, type: MessageType | None = None, nth: int = 1) -> None:
        """Lose the ``nth`` in-flight message from ``frm`` to ``to`` (of ``type``)."""
        self.execute(Drop(MessageSelector(frm, to, type, nth)))

    def duplicate(self, frm: int, to: int, type: MessageType | None = None, nth: int = 1) -> None:
        """Duplicate the ``nth`` in-flight message from ``frm`` to ``to`` (of ``type``)."""
        self.execute(Duplicate(MessageSelector(frm, to, type, nth)))

    def sync(self, node: int) -> None:
        """Finish ``node``'s pending write."""
        self.execute(Sync(node))

    def crash(self, node: int, torn: int | None = None) -> None:
        """Crash ``node``; ``torn`` items of its pending write still reach the disk."""
        self.execute(Crash(node, torn))

    def restart(self, node: int) -> None:
        """Restart ``node`` from its durable storage."""
        self.execute(Restart(node))

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between different groups."""
        self.execute(Partition(tuple(tuple(g) for g in groups)))

    def cut(self, frm: int, to: int) -> None:
        """Cut the one-way link ``frm -> to``."""
        self.execute(Cut(frm, to))

    def heal(self) -> None:
        """Restore every link."""
        self.execute(Heal())

    def campaign(self, node: int) -> None:
        """Make ``node`` campaign."""
        self.execute(Campaign(node))

    def write(self, node: int, command: bytes) -> None:
        """A client submits ``command`` at ``node``."""
        self.execute(Write(node, command))

    def read(self, node: int, query: bytes) -> None:
        """A client reads ``query`` at ``node`` through ``read_index``."""
        self.execute(Read(node, query))

    def put(self, node: int, key: str, value: str) -> None:
        """A client writes ``key=value`` (default KV state machine) at ``node``."""
        self.write(node, cbor2.dumps(["put", key, value]))

    def get(self, node: int, key: str) -> None:
        """A client reads ``key`` (default KV state machine) at ``node``."""
        self.read(node, cbor2.dumps(["get", key]))

    def retry(self, node: int) -> None:
        """A client reads at ``node`` again with the context of ``node``'s latest read."""
        self.execute(Retry(node))

    def transfer_leader(self, node: int, target: int) -> None:
        """Ask ``node`` to hand leadership to ``target``."""
        self.execute(Transfer(node, target))

    def conf_change(self, node: int, *changes: str, transition: str = "auto") -> None:
        """Propose ``changes`` (``v<id>``, ``l<id>``, ``r<id>``) at ``node``."""
        self.execute(Conf(node, tuple(changes), transition))

    def compact(self, node: int) -> None:
        """Snapshot and compact ``node``'s log at its applied index."""
        self.execute(Compact(node))

    def stabilize(self) -> None:
        """Deliver and sync until quiet."""
        self.execute(Stabilize())

    def run(self, n: int = 1) -> None:
        """``n`` rounds of ticking every node and stabilizing."""
        self.execute(Run(n))

    def check_liveness(self, ticks: int = 200) -> None:
        """Heal everything, restart every node, and require progress within ``ticks`` rounds.

        Raises:
            LivenessViolation: no leader was elected, or a fresh write was not applied by every
                member, within the bound.
        """
        self.execute(Liveness(ticks))

    # -- observation --

    def leader(self) -> int | None:
        """The running leader of the highest term, if any."""
        best: tuple[int, int] | None = None
        for i, nd in self.nodes.items():
            if nd.raw is None:
                continue
            r = _peek(nd.raw)
            if r.state == StateType.LEADER and (best is None or r.term > best[0]):
                best = (r.term, i)
        return None if best is None else best[1]

    def select(self, position: int) -> MessageSelector:
        """The selector naming ``in_flight[position]``."""
        m = self.in_flight[position].msg
        nth = 1
        for f in self.in_flight[:position]:
            if f.msg.from_ == m.from_ and f.msg.to == m.to and f.msg.type == m.type:
                nth += 1
        return MessageSelector(m.from_, m.to, m.type, nth)

    def check_linearizability(self) -> LinearizabilityResult:
        """Check the client history so far against the cluster's model.

        Raises:
            ValueError: the cluster has no model (a custom state machine, and none was given).
        """
        if self.model is None:
            raise ValueError("no linearizability model: pass Cluster(model=...)")
        return _check_lin(self.history.operations(), self.model)

    def describe(self) -> str:
        """One line per node: role, term, commit, applied, log (terms run-length encoded)."""
        lines = [f"  {i}: {self.describe_node(i)}" for i in sorted(self.nodes)]
        if self.in_flight:
            msgs = ", ".join(
                f"{f.msg.from_}->{f.msg.to} {f.msg.type.name}" for f in self.in_flight[:12]
            )
            more = f" (+{len(self.in_flight) - 12})" if len(self.in_flight) > 12 else ""
            lines.append(f"  in flight: {msgs}{more}")
        if self.cuts:
            lines.append("  cut: " + " ".join(f"{a}->{b}" for a, b in sorted(self.cuts)))
        return "\n".join(lines)

    def describe_node(self, node: int) -> str:
        """One node's summary line."""
        nd = self.nodes[node]
        snap = nd.storage.snapshot().metadata
        if nd.raw is None:
            return (
                f"DOWN term={nd.storage.hard_state.term} durable: "
                f"{_render_log(snap.index, snap.term, nd.log())}"
            )
        r = _peek(nd.raw)
        first = r.log.first_index()
        role = r.state.name.lower()
        pend = " (write pending)" if nd.pending is not None else ""
        if nd.unsynced is not None:
            pend += f" (durable commit={nd.storage.hard_state.commit})"
        return (
            f"{role:<13} term={r.term} vote={r.vote} "
            f"commit={r.log.committed} applied={nd.applied} "
            f"log={_render_log(first - 1, r.log.zero_term(first - 1), nd.log())}{pend}"
        )

    # -- internals: nodes --

    def observations(self) -> list[NodeObservation]:
        """The current state of every running node, as the safety checker sees it."""
        return [o for o in (self._observation(nd) for nd in self.nodes.values()) if o is not None]

    def _durable(self, node: int) -> MemoryStorage | None:
        nd = self.nodes.get(node)
        return None if nd is None else nd.storage

    def _start(self, nd: ClusterNode) -> None:
        c = self.config
        nd.incarnation += 1
        snap = nd.storage.snapshot()
        kept = nd.kept_sm
        nd.kept_sm = None
        if kept is not None and nd.applied < snap.metadata.index:
            kept = None  # a snapshot newer than the state machine reached the disk: restore it
        cfg = Config(
            id=nd.id,
            storage=nd.storage,
            # The state machine restarts from the snapshot, which may be ahead of the log's
            # compaction point: entries up to it must not be handed out again. A durable state
            # machine restarts where it was, possibly beyond the durable commit index.
            applied=nd.applied if kept is not None else snap.metadata.index,
            election_tick=c.election_tick,
            heartbeat_tick=c.heartbeat_tick,
            rng=random.Random(f"{c.seed}/{nd.id}/{nd.incarnation}"),
            max_size_per_msg=c.max_size_per_msg,
            max_inflight_msgs=c.max_inflight_msgs,
            max_uncommitted_entries_size=c.max_uncommitted_entries_size,
            check_quorum=c.check_quorum,
            pre_vote=c.pre_vote,
            read_only_option=ReadOnlyOption.LEASE_BASED if c.lease_reads else ReadOnlyOption.SAFE,
        )
        nd.raw = RawNode(cfg)
        if kept is not None:
            nd.sm = kept  # with its applied index, configuration and client sessions
        else:
            nd.sm = self.state_machine()
            nd.seen_ops = set()
            if snap.data:
                self._restore_sm(nd, snap)
            nd.applied = snap.metadata.index
            nd.conf_state = snap.metadata.conf_state
        if self.check:
            self.checker.on_restart(nd.id)
            self.checker.on_applied_base(nd.id, nd.applied)
        self._observe(nd)

    def _restore_sm(self, nd: ClusterNode, snap: Snapshot) -> None:
        sm_data, seen = cbor2.loads(snap.data)
        if nd.sm is not None:
            nd.sm.restore(sm_data)
        nd.seen_ops = set(seen)

    def _crash(self, nd: ClusterNode, torn: int | None) -> None:
        if nd.raw is None:
            return
        rd = nd.pending
        if rd is not None and torn:
            self._persist(nd, rd, limit=torn)
        nd.raw = None
        nd.kept_sm = nd.sm if self.config.durable_apply else None
        nd.sm = None
        nd.pending = None
        nd.unsynced = None  # never fsynced: lost
        nd.own_ops.clear()
        nd.pending_reads.clear()
        nd.read_ctxs.clear()
        nd.read_query.clear()
        nd.leader_only.clear()
        nd.waiting_reads.clear()
        self.stats["crashes"] += 1
        if self.check:
            self.checker.on_restart(nd.id)

    def _observation(self, nd: ClusterNode) -> NodeObservation | None:
        if nd.raw is None:
            return None
        r = _peek(nd.raw)
        log = r.log
        first, last = log.first_index(), log.last_index()
        return NodeObservation(
            id=nd.id,
            incarnation=nd.incarnation,
            role=r.state,
            term=r.term,
            commit=log.committed,
            applied=nd.applied,
            first_index=first,
            prev_term=log.zero_term(first - 1),
            entries=log.slice(first, last + 1, None) if last >= first else [],
            config=r.trk.config.conf_state(),
        )

    def _observe(self, nd: ClusterNode) -> None:
        if self.check:
            o = self._observation(nd)
            if o is not None:
                self.checker.observe(o)

    def _settle(self) -> None:
        """Let every running node without a pending write take its Ready."""
        again = True
        while again:
            again = False
            for nd in self.nodes.values():
                raw = nd.raw
                if raw is None or nd.pending is not None or not raw.has_ready():
                    continue
                rd = raw.ready()
                self.stats["readys"] += 1
                self._send(nd, rd.messages)
                nd.pending = rd
                self._take_read_states(nd, rd)
                if self.config.auto_sync:
                    self._sync(nd)
                    again = True

    def _persist(self, nd: ClusterNode, rd: Ready, limit: int | None = None) -> None:
        """Write ``rd`` to ``nd``'s disk, or only its first ``limit`` items (a torn write)."""
        budget = limit if limit is not None else 1 << 62
        st = nd.storage
        if limit is None and self.config.unsynced_commits:
            if not rd.must_sync:
                # Only the commit index changed: written, not fsynced (the Ready contract allows
                # it). It sits in the page cache until the next fsync; a crash loses it.
                if rd.hard_state is not None:
                    nd.unsynced = rd.hard_state
                return
            if nd.unsynced is not None:
                # This write's fsync flushes the earlier unsynced one too.
                if rd.hard_state is None:
                    st.set_hard_state(nd.unsynced)
                    if self.check:
                        self.checker.on_persist(nd.id, nd.unsynced)
                nd.unsynced = None
        if rd.snapshot is not None:
            if budget <= 0:
                return
            st.apply_snapshot(rd.snapshot)
            budget -= 1
        ents = rd.entries[:budget]
        st.append(ents)
        budget -= len(ents)
        if rd.hard_state is not None and budget > 0:
            st.set_hard_state(rd.hard_state)
            if self.check:
                self.checker.on_persist(nd.id, rd.hard_state)

    def _sync(self, nd: ClusterNode) -> None:
        rd = nd.pending
        raw = nd.raw
        if rd is None or raw is None:
            return
        self.now += 1
        self.stats["syncs"] += 1
        nd.pending = None
        self._persist(nd, rd)
        self._send(nd, rd.persisted_messages)
        if rd.snapshot is not None:
            self.stats["snapshots"] += 1
            self._restore_sm(nd, rd.snapshot)
            nd.applied = rd.snapshot.metadata.index
            nd.conf_state = rd.snapshot.metadata.conf_state
            if self.check:
                self.checker.on_applied_base(nd.id, nd.applied)
        commit = _peek(raw).log.committed
        for e in rd.committed_entries:
            if self.check:
                self.checker.on_apply(nd.id, e, commit)
            self._apply(nd, raw, e)
        raw.advance(rd)
        self._serve_reads(nd)
        self._observe(nd)
        every = self.config.snapshot_every
        if every and nd.applied - nd.storage.first_index() + 1 >= every:
            self._compact(nd)

    def _apply(self, nd: ClusterNode, raw: RawNode, e: Entry) -> None:
        nd.applied = e.index
        if e.type == EntryType.NORMAL:
            if not e.data:
                return
            op_id, command = _unwrap(e.data)
            if op_id is None or op_id in nd.seen_ops:
                return  # a probe, or a command the network or a client submitted twice
            nd.seen_ops.add(op_id)
            if nd.sm is not None:
                result = nd.sm.apply(command)
                if op_id in nd.own_ops:
                    nd.own_ops.discard(op_id)
                    self.history.complete(op_id, result, self.now)
            return
        cc = decode_conf_change(e.type, e.data) if e.data else ConfChangeV2()
        outcome: ConfState | str
        try:
            outcome = nd.conf_state = raw.apply_conf_change(cc)
        except ConfigError:
            outcome = "refused"
        else:
            # A snapshot sent to a new member must include it in its ConfState, or the member
            # ignores it (raft's restore); etcdserver sends a fresh "merged" snapshot for this.
            self._snapshot(nd)
        if self.check:
            self.checker.on_conf_applied(nd.id, e.index, outcome)

    def _take_read_states(self, nd: ClusterNode, rd: Ready) -> None:
        """Hand ``rd``'s read states to the reads waiting for them (at once, as etcd does)."""
        for rs in rd.read_states:
            ctx = rs.request_ctx
            if self.check:
                self.checker.on_read_state(nd.id, ctx, self._read_owner.get(ctx))
            if ctx in self._probe_reads:
                self._probe_reads[ctx] = True
                continue
            ops = nd.pending_reads.get(ctx)
            if ops:
                nd.waiting_reads.append((rs.index, ops.pop(0)))
        self._serve_reads(nd)

    def _serve_reads(self, nd: ClusterNode) -> None:
        if not nd.waiting_reads or nd.sm is None:
            return
        still = []
        for index, op in nd.waiting_reads:
            if index <= nd.applied:
                query = self.history.input(op)[1]
                self.history.complete(op, nd.sm.query(query), self.now)
            else:
                still.append((index, op))
        nd.waiting_reads = still

    def _snapshot(self, nd: ClusterNode) -> int:
        """Snapshot ``nd``'s state machine into its storage at its applied index."""
        st = nd.storage
        index = min(nd.applied, st.last_index())
        if nd.sm is not None and index > st.snapshot().metadata.index:
            data = cbor2.dumps([nd.sm.snapshot(), sorted(nd.seen_ops)])
            st.create_snapshot(index, nd.conf_state, data)
        return st.snapshot().metadata.index

    def _compact(self, nd: ClusterNode) -> None:
        if nd.raw is None:
            return
        index = self._snapshot(nd)
        if index >= nd.storage.first_index():
            nd.storage.compact(index)

    # -- internals: network --

    def _send(self, nd: ClusterNode, msgs: Iterable[Message]) -> None:
        for m in msgs:
            if self.check:
                self.checker.on_send(nd.id, m, nd.storage)
            if (m.from_, m.to) in self.cuts:
                self._lost(m)
                # The link is down: a transport knows it could not send, and tells the node.
                if nd.raw is not None:
                    nd.raw.report_unreachable(m.to)
                continue
            self._seq += 1
            self.in_flight.append(InFlight(self._seq, m))

    def _find(self, sel: MessageSelector) -> InFlight | None:
        n = 0
        for f in self.in_flight:
            m = f.msg
            if m.from_ == sel.frm and m.to == sel.to and (sel.type is None or m.type == sel.type):
                n += 1
                if n == sel.nth:
                    return f
        return None

    def _take(self, sel: MessageSelector) -> InFlight | None:
        f = self._find(sel)
        if f is not None:
            self.in_flight.remove(f)
        return f

    def _deliver(self, f: InFlight | None) -> None:
        if f is None:
            return
        m = f.msg
        nd = self.nodes.get(m.to)
        if nd is None or nd.raw is None or (m.from_, m.to) in self.cuts:
            self._lost(m)
            return
        self.now += 1
        self.stats["delivered"] += 1
        with contextlib.suppress(ProposalDropped, StepPeerNotFoundError):
            nd.raw.step(m)
        self._observe(nd)
        if m.type == MessageType.SNAP:
            self._report_snapshot(m, success=True)

    def _lost(self, m: Message) -> None:
        """A message was lost; a snapshot's sender learns it, as etcd's transport reports."""
        self.stats["dropped"] += 1
        if m.type == MessageType.SNAP:
            self._report_snapshot(m, success=False)

    def _report_snapshot(self, m: Message, *, success: bool) -> None:
        sender = self.nodes.get(m.from_)
        if sender is not None and sender.raw is not None:
            sender.raw.report_snapshot(m.to, success=success)
            self._observe(sender)

    # -- internals: clients and operators --

    def _write(self, nd: ClusterNode, command: bytes) -> None:
        op = self.history.invoke(nd.id, ("write", command), self.now)
        if nd.raw is None:
            self.history.fail(op)
            return
        try:
            nd.raw.propose(_envelope(op, command))
        except ProposalDropped:
            self.history.fail(op)
            return
        nd.own_ops.add(op)
        self._observe(nd)

    def _read(self, nd: ClusterNode, query: bytes) -> None:
        op = self.history.invoke(nd.id, ("read", query), self.now)
        if nd.raw is None:
            self.history.fail(op)
            return
        ctx = f"read-{op}".encode()
        self._read_owner[ctx] = nd.id
        nd.read_ctxs.append(ctx)
        nd.read_query[ctx] = query
        nd.pending_reads[ctx] = [op]
        if _peek(nd.raw).state == StateType.LEADER:
            nd.leader_only.add(ctx)
        nd.raw.read_index(ctx)

    def _retry(self, nd: ClusterNode) -> None:
        """Read again at ``nd`` with the context of its latest read.

        A leader handles each ``read_index`` call itself, at most one ReadState each, in call
        order: while every call with the context was made leading, read states can be matched
        to calls first come first served, and the retry is a read of its own, invoked now. A
        call made otherwise is forwarded, and forwarded requests and answers can be duplicated:
        from then on a read state could come from any earlier call, so only the earliest waiting
        read (invoked before every call) may take it; later ones are dropped from the history.
        """
        if nd.raw is None or not nd.read_ctxs:
            return
        ctx = nd.read_ctxs[-1]
        ops = nd.pending_reads.setdefault(ctx, [])
        if _peek(nd.raw).state == StateType.LEADER and ctx in nd.leader_only:
            ops.append(self.history.invoke(nd.id, ("read", nd.read_query[ctx]), self.now))
        else:
            nd.leader_only.discard(ctx)
            for op in ops[1:]:
                self.history.fail(op)  # a read has no effect: leaving it out hides nothing
            del ops[1:]
        nd.raw.read_index(ctx)

    def _propose_conf(self, nd: ClusterNode, changes: tuple[str, ...], transition: str) -> None:
        if nd.raw is None:
            return
        kinds = {
            "v": ConfChangeType.ADD_NODE,
            "l": ConfChangeType.ADD_LEARNER_NODE,
            "r": ConfChangeType.REMOVE_NODE,
        }
        singles = tuple(ConfChangeSingle(kinds[c[0]], int(c[1:])) for c in changes)
        trans = {
            "auto": ConfChangeTransition.AUTO,
            "implicit": ConfChangeTransition.JOINT_IMPLICIT,
            "explicit": ConfChangeTransition.JOINT_EXPLICIT,
        }[transition]
        with contextlib.suppress(ProposalDropped):
            nd.raw.propose_conf_change(ConfChangeV2(transition=trans, changes=singles))
        self._observe(nd)

    def _tick_all(self) -> None:
        for nd in self.nodes.values():
            if nd.raw is not None:
                nd.raw.tick()
                self._observe(nd)
        self._settle()

    def _stabilize(self, max_rounds: int = 1_000) -> None:
        for _ in range(max_rounds):
            progressed = False
            for nd in self.nodes.values():
                if nd.pending is not None and nd.raw is not None:
                    self._sync(nd)
                    progressed = True
            self._settle()
            batch, self.in_flight = self.in_flight, []
            for f in batch:
                self._deliver(f)
                progressed = True
            self._settle()
            if not progressed:
                return
        raise LivenessViolation(f"the cluster did not quiesce within {max_rounds} rounds")

    def _liveness(self, ticks: int) -> None:
        self.cuts.clear()
        for nd in self.nodes.values():
            if nd.raw is None:
                self._start(nd)
        self._settle()
        self._stabilize()
        probe: tuple[int, int] | None = None  # (node it was proposed at, its index)
        reads: dict[bytes, int] = {}  # the probe reads of this probe, by context: their node
        for _ in range(ticks):
            self._tick_all()
            self._stabilize()
            lead = self.leader()
            if lead is None:
                continue
            if probe is None or probe[0] != lead:
                probe = self._propose_probe(lead)
                reads = {}
                self._stabilize()
                if probe is None:
                    continue
            if not self._probe_applied_everywhere(lead, probe[1]):
                continue
            if not reads:
                # Every member reads once; each must be answered, to the member that asked.
                reads = self._probe_read_everywhere(lead)
                self._stabilize()
            if all(self._probe_reads[ctx] for ctx in reads):
                return
        unanswered = sorted(n for ctx, n in reads.items() if not self._probe_reads[ctx])
        raise LivenessViolation(
            f"no progress within {ticks} reliable rounds after healing (leader: "
            f"{self.leader()}; reads not answered at: {unanswered or 'none'}):\n{self.describe()}"
        )

    def _probe_read_everywhere(self, lead: int) -> dict[bytes, int]:
        cs = _peek(self.nodes[lead].running()).trk.config.conf_state()
        members = {*cs.voters, *cs.voters_outgoing, *cs.learners, *cs.learners_next}
        out: dict[bytes, int] = {}
        for m in sorted(members):
            nd = self.nodes.get(m)
            if nd is None or nd.raw is None:
                continue
            self._probe += 1
            ctx = f"probe-read-{self._probe}".encode()
            self._read_owner[ctx] = m
            self._probe_reads[ctx] = False
            out[ctx] = m
            nd.raw.read_index(ctx)
        self._settle()
        return out

    def _propose_probe(self, lead: int) -> tuple[int, int] | None:
        raw = self.nodes[lead].running()
        self._probe += 1
        try:
            raw.propose(_envelope(None, f"probe-{self._probe}".encode()))
        except ProposalDropped:
            return None
        last = _peek(raw).log.last_index()
        self._observe(self.nodes[lead])
        return lead, last

    def _probe_applied_everywhere(self, lead: int, index: int) -> bool:
        cs = _peek(self.nodes[lead].running()).trk.config.conf_state()
        members = {*cs.voters, *cs.voters_outgoing, *cs.learners, *cs.learners_next}
        return all(self.nodes[m].applied >= index for m in members if m in self.nodes)


def membership_changes(
    cs: ConfState, node_ids: Sequence[int], min_voters: int, max_swap: int = 1
) -> list[tuple[str, ...]]:
    """Sensible membership changes to ``cs``, as ``Conf`` change words.

    Add a node as learner or voter, promote a learner, demote or remove a voter or learner, or
    swap a voter for a new one (two changes: joint consensus). With ``max_swap`` > 1, also swap
    up to that many voters at once (``{1,2,3}`` to ``{1,4,5}``): the incoming and outgoing
    halves of the joint configuration then differ in a majority, so a quorum of one half is no
    quorum of the other. Changes that would leave fewer than ``min_voters`` voters are left out.
    """
    voters, learners = set(cs.voters), set(cs.learners)
    others = [n for n in node_ids if n not in voters and n not in learners]
    options: list[tuple[str, ...]] = []
    for n in others:
        options += [(f"l{n}",), (f"v{n}",)]
    for n in sorted(learners):
        options += [(f"v{n}",), (f"r{n}",)]
    if len(voters) > min_voters:
        for n in sorted(voters):
            options += [(f"r{n}",), (f"l{n}",)]
    if len(voters) >= min_voters:
        options += [(f"v{n}", f"r{v}") for n in others for v in sorted(voters)]
        for k in range(2, min(max_swap, len(others), len(voters)) + 1):
            for new in itertools.combinations(others, k):
                for gone in itertools.combinations(sorted(voters), k):
                    options.append((*(f"v{n}" for n in new), *(f"r{v}" for v in gone)))
    return options


def format_script(config: ClusterConfig, events: Iterable[Event]) -> str:
    """The text of a schedule: header, ``cluster`` line, one event per line."""
    lines = [SCRIPT_HEADER, config.to_line()]
    lines.extend(format_event(e) for e in events)
    return "\n".join(lines) + "\n"


def parse_script(script: str) -> tuple[ClusterConfig, list[Event]]:
    """Split a schedule into its cluster configuration and its events.

    Raises:
        ScriptError: a line does not parse, or the ``cluster`` line is missing.
    """
    config: ClusterConfig | None = None
    events: list[Event] = []
    for n, raw_line in enumerate(script.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("cluster"):
                config = ClusterConfig.from_line(line)
            else:
                events.append(parse_event(line))
        except ScriptError as exc:
            raise ScriptError(f"line {n}: {exc}") from None
    if config is None:
        raise ScriptError("the schedule has no 'cluster ...' line")
    return config, events


def _render_log(snap_index: int, snap_term: int, entries: list[Entry]) -> str:
    parts = []
    if snap_index:
        parts.append(f"snap@{snap_index}/t{snap_term}")
    run_start = run_term = 0
    prev = 0
    for e in entries:
        if e.term != run_term:
            if run_term:
                parts.append(_run(run_start, prev, run_term))
            run_start, run_term = e.index, e.term
        prev = e.index
    if run_term:
        parts.append(_run(run_start, prev, run_term))
    return "[" + " ".join(parts) + "]"


def _run(lo: int, hi: int, term: int) -> str:
    return f"{lo}@t{term}" if lo == hi else f"{lo}-{hi}@t{term}"
