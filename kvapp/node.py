"""A kvapp member: one :class:`raftlib.Node` over a Raft storage, applying requests to a KvState.

The member is where the client protocols, Raft and the state machine meet (DESIGN.md): a protocol
calls a :class:`~kvapp.service.KvService` method; writes are encoded as one
:class:`~kvapp.requests.Request` each and proposed; every member applies committed requests to
its :class:`~kvapp.kvstate.KvState` in log order (deduplicating retried writes); the proposer's
waiter gets the result its own member computed. Reads are served locally after a ReadIndex
barrier that many reads share (one heartbeat round per batch, as etcd's linearizable read loop
does).

Client writes that arrive in the same event-loop turn are proposed as one entry, a
:class:`~kvapp.requests.RequestBatch` (up to 512 requests or 1 MiB), so Raft's per-entry costs
are paid once per batch; every member applies its requests in order at the entry's index, each
with its own dedup and its own result or error, which the proposer hands to that write's caller.
A lone write is proposed as a plain request entry. The member's own proposals (alarms, lease
revokes and checkpoints) are not batched: they are few, and keep their plain entries.

Seams, so whole clusters can run under simulation later: the member takes its storage (raftlib's
``NodeStorage``: kvapp's ``RaftStore`` or ``MemoryStorage``), its peer network (anything with
``send``, ``add_peer`` and ``remove_peer``; :class:`PeerLinks`), its clock and its view of the
free disk space (``disk_free``) as arguments, and touches no sockets, files or wall clocks itself.

A full disk raises etcd's NOSPACE alarm instead of stopping the member (:mod:`kvapp.diskspace`):
this member proposes it when its disk's free space drops below
:attr:`MemberConfig.min_free_disk_bytes` or a storage write fails for lack of space (raftlib's
``Node`` retries that write), and clears it once space is back. While any member's NOSPACE alarm
is raised, every member refuses puts and lease grants before proposing them.

Membership: the table of members (name, peer and client URLs, learner flag) is replicated: it
starts from the initial members and changes only by applying configuration-change entries, whose
context carries the member's description. It is part of every snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import io
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Sequence
from typing import IO, Protocol, cast
from urllib.parse import urlsplit

import attrs
import cbor2

from kvapp import requests as kvreq
from kvapp.dedup import Applier
from kvapp.diskspace import (
    DEFAULT_CHECK_INTERVAL,
    DEFAULT_FREE_MARGIN,
    DEFAULT_MIN_FREE_BYTES,
    DiskGuard,
)
from kvapp.errors import (
    EtcdError,
    KvappError,
    LeaderChangedError,
    LearnerNotReadyError,
    LeaseNotFoundError,
    MemberBadUrlsError,
    MemberNotFoundError,
    MemberNotLearnerError,
    NoLeaderError,
    NotLeaderError,
    PeerUrlExistsError,
    RequestDecodeError,
    RequestTimeoutError,
    RequestTooLargeError,
    StoppedError,
    TooManyLearnersError,
    TooManyRequestsError,
)
from kvapp.kvstate import KvState
from kvapp.lease import (
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseKeepAliveResponse,
    LeaseRevokeRequest,
    LeaseTimeToLiveResponse,
)
from kvapp.mvcc.types import (
    CompactRequest,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RangeResponse,
    TxnRequest,
)
from kvapp.mvcc.validate import check_request
from kvapp.service import (
    MemberInfo,
    OutcomeUnknown,
    ResponseHeader,
    StatusInfo,
    WriteRequest,
    WriteResponse,
)
from kvapp.snapfile import SnapshotHeader, SnapshotWriter
from kvapp.storage.snapdata import FileSnapshotData, open_snapshot_data, snapshot_bytes
from kvapp.storage.snapparts import SnapshotParts
from kvapp.watch import WatchStream
from raftlib import (
    Committed,
    ConfChange,
    ConfChangeRefused,
    ConfChangeType,
    Message,
    Node,
    NodeStopped,
    NodeStorage,
    NodeTimeout,
    NotLeader,
    ProposalDropped,
    ProposalLost,
    ProposalTimeout,
    StateType,
    StorageError,
    StorageFullError,
)
from raftlib import OutcomeUnknown as RaftOutcomeUnknown

__all__ = [
    "MAX_REQUEST_BYTES",
    "Member",
    "MemberConfig",
    "PeerLinks",
    "cluster_id_for",
    "encode_member_info",
    "member_id_for",
    "member_snapshot_data",
    "member_snapshot_members",
    "parse_peer_url",
]

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
MAX_REQUEST_BYTES = 1_572_864
"""etcd's default ``--max-request-bytes`` (1.5 MiB)."""

# A Raft snapshot's data. Version 2: the CBOR item [format, 2, members] followed by the applier's
# stream (kvapp.dedup), written once into one buffer so that the next snapshot can copy its
# unchanged part (KvState.keep_encoded). Version 1 (still read): [format, 1, members, stream].
_SNAPSHOT_FORMAT = "kvapp.member"
_SNAPSHOT_VERSION = 2
_RESULT_CAP = 65_536
_SNAPSHOT_CHUNK = 1 << 20
_SNAPSHOT_QUEUE = 4
_REFUSED_CAP = 64
_BATCH_MAX_BYTES = 1 << 20
"""A write batch is closed once it holds this many bytes of requests (raftlib sends at most
1 MiB of entries per append message, one entry always; requests alone may be 1.5 MiB)."""
_BATCH_MAX_REQUESTS = 512
_BATCH_HOLD_MAX = 0.05
"""Seconds a write batch waits at most for the Ready being written (see _batch_write)."""
_READ_ROUNDS = 2
"""ReadIndex rounds in flight at once for linearizable reads (each shared by the reads that
arrived before it was issued)."""
_WRITE_TYPES = (
    PutRequest,
    DeleteRangeRequest,
    TxnRequest,
    CompactRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
)


class PeerLinks(Protocol):
    """What the member needs of its peer network (kvapp.transport implements it)."""

    def send(self, messages: Sequence[Message]) -> None:
        """Queue messages for their peers; never blocks."""
        ...

    def add_peer(self, member_id: int, address: tuple[str, int]) -> None:
        """Start linking to a member."""
        ...

    def remove_peer(self, member_id: int, *, removed_at: int = 0) -> None:
        """Stop linking to a member; refuse it as removed by the entry at ``removed_at``."""
        ...


def member_id_for(peer_urls: Iterable[str], cluster_id: int) -> int:
    """A member id derived from its peer URLs and the cluster id (non-zero, 63-bit).

    Deterministic, so every member computes the same ids from ``--initial-cluster``, and a
    member added at run time gets the id its own ``kvapp serve`` will compute.
    """
    text = "\n".join(sorted(peer_urls)) + f"\0{cluster_id:x}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1 or 1


def cluster_id_for(cluster_token: str) -> int:
    """The cluster id: a hash of the cluster token (``--initial-cluster-token``), 63-bit.

    Every member of a cluster, including ones that join later, is started with the same token,
    so each computes the id on its own; clusters must use distinct tokens, as with etcd.
    """
    return int.from_bytes(hashlib.sha256(cluster_token.encode()).digest()[:8], "big") >> 1 or 1


def parse_peer_url(url: str) -> tuple[str, int]:
    """``http://host:port`` as ``(host, port)``.

    Raises:
        ValueError: not a URL with a host and a port.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"bad URL {url!r}: want http://host:port")
    return parts.hostname, parts.port


@attrs.frozen
class MemberConfig:
    """A member's settings.

    Attributes:
        name: this member's name.
        member_id: this member's id.
        cluster_id: the cluster's id (peers with another id are refused by the transport).
        initial_members: the members the cluster started with (every member must be given the
            same list); later changes come from the log.
        tick_interval: seconds per Raft tick.
        election_tick: ticks without a leader before an election.
        heartbeat_tick: ticks between heartbeats.
        snapshot_count: take a snapshot and compact the log every this many applied requests
            (etcd's "committed transactions"; one entry may carry many batched requests), key
            versions written (a txn counts each key it changes) or entries, whichever first.
        keep_entries: log entries kept behind a snapshot for slow followers.
        request_timeout: seconds a request may wait for its commit or read barrier.
        lease_tick: seconds between the leader's lease expiry and checkpoint checks.
        lease_checkpoint_interval: seconds between the leader's checkpoints of every lease's
            remaining time. A member restarted from its log counts each lease from the last
            checkpoint it applied, so this bounds how long a lease can outlive its TTL when such
            a member becomes leader.
        max_request_bytes: the largest encoded request accepted.
        max_learners: how many learners the cluster may have at once.
        auto_promote: promote a learner to voter once it has caught up (False: as etcd, a
            learner stays one until a member promote request).
        progress_notify_interval: seconds between progress notifications to idle watchers
            that asked for them (etcd's ``--experimental-watch-progress-notify-interval``).
        client_urls: where clients reach this member; published to the cluster (etcd's
            member attributes) once a leader is known, so clients can find the leader.
        new_cluster: bootstrap a new cluster from ``initial_members`` if the storage is empty
            (etcd's ``--initial-cluster-state new``); False joins an existing cluster, whose
            leader sends this member the log (``existing``).
        min_free_disk_bytes: raise this member's NOSPACE alarm when its data directory's file
            system has fewer bytes free (``kvapp serve --min-free-disk-bytes``); 0 raises it
            only when a write fails for lack of space.
        free_disk_margin_bytes: clear the alarm once at least ``min_free_disk_bytes`` plus this
            many bytes are free again.
        disk_check_interval: seconds between two looks at the free space.
    """

    name: str
    member_id: int
    cluster_id: int
    initial_members: tuple[MemberInfo, ...]
    tick_interval: float = 0.1
    election_tick: int = 10
    heartbeat_tick: int = 1
    snapshot_count: int = 100_000
    keep_entries: int = 5_000
    request_timeout: float = 5.0
    lease_tick: float = 0.5
    lease_checkpoint_interval: float = 1.0
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_learners: int = 1
    auto_promote: bool = True
    progress_notify_interval: float = attrs.field(default=600.0, validator=attrs.validators.gt(0))
    new_cluster: bool = True
    client_urls: tuple[str, ...] = ()
    min_free_disk_bytes: int = DEFAULT_MIN_FREE_BYTES
    free_disk_margin_bytes: int = DEFAULT_FREE_MARGIN
    disk_check_interval: float = DEFAULT_CHECK_INTERVAL


class Member:
    """One cluster member: implements :class:`~kvapp.service.KvService`.

    Create it, wire the peer network's incoming messages to :meth:`receive` (and its failure
    reports to :meth:`report_unreachable` / :meth:`report_snapshot`), then ``await start()``
    inside the running loop; ``await stop()`` hands leadership over first when it can.

    Args:
        config: the member's settings.
        storage: the Raft log, hard state and snapshots.
        network: the peer links.
        clock: monotonic seconds (for lease clocks).
        disk_free: bytes free on the file system of the data directory, called a few times a
            second in a worker thread (``kvapp serve`` passes
            :func:`kvapp.storage.fileutil.free_bytes` of its data directory). ``None`` (a
            storage that is not on disk): NOSPACE is raised only when a storage write fails for
            lack of space, and cleared once writes succeed again.
        rng: Raft's election jitter (seed it for reproducible runs, e.g. under a simulated
            event loop); default a system-seeded ``random.Random()``.
        executor: where blocking work runs: the Raft node's (see ``raftlib.Node``'s
            ``executor``) and the ``disk_free`` calls. ``None``: worker threads. A simulation
            passes one that runs each job at once on the loop's thread. (:meth:`snapshot`, the
            Maintenance snapshot stream, always encodes in a thread of its own.)
        run_id: see ``raftlib.Node``'s ``run_id`` (different on every start; ``None``: random).
    """

    def __init__(
        self,
        config: MemberConfig,
        storage: NodeStorage,
        network: PeerLinks,
        *,
        clock: Callable[[], float] = time.monotonic,
        disk_free: Callable[[], int] | None = None,
        rng: random.Random | None = None,
        executor: concurrent.futures.Executor | None = None,
        run_id: int | None = None,
    ) -> None:
        self.config = config
        self.id = config.member_id
        self._storage = storage
        self._takes_parts = bool(getattr(storage, "takes_snapshot_parts", False))
        self._network = network
        self._clock = clock
        election_s = config.tick_interval * config.election_tick
        self.kv = KvState(
            clock, grace=election_s, checkpoint_interval=config.lease_checkpoint_interval
        )
        self.applier = Applier(self.kv)
        if hasattr(storage, "on_snapshot_kept"):  # a RaftStore, bare or wrapped
            # Its snapshot's bytes go once written to their file; the kept prefix follows them.
            storage.on_snapshot_kept = self.kv.move_encoded
        self._members: dict[int, MemberInfo] = {m.id: m for m in config.initial_members}
        self._results: collections.OrderedDict[int, object] = collections.OrderedDict()
        self._renewals: list[tuple[int, int, asyncio.Future[None]]] = []
        self._renewal_flush = False
        self._open_batch: _WriteBatch | None = None
        self.writes_proposed = 0
        """Client writes this member proposed (each counted once, however it ended)."""
        self.write_entries_proposed = 0
        """Log entries those writes went out in (fewer than the writes when batched)."""
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._barrier_next: asyncio.Future[None] | None = None
        self._barrier_tasks: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[object]] = set()
        self._promoting = False
        self._refused_updates: collections.OrderedDict[bytes, EtcdError] = collections.OrderedDict()
        self.removed = False
        self._removed_seen = asyncio.Event()  # set with ``removed``, for a self-removal's caller
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []  # resolved past index
        self._stopping = False
        self._unsnapshotted = 0  # requests applied since the last snapshot
        self._log_mark = 0  # the store's change-log size at the last snapshot
        hard, conf = storage.initial_state()
        self._start_commit = hard.commit
        self._caught_up = asyncio.Event()
        new = storage.last_index() == 0 and hard.is_empty() and not conf.voters
        voters = [m.id for m in config.initial_members if not m.is_learner]
        if self.id not in self._members:
            raise ValueError(f"member {self.id:x} is not among the initial members")
        self.node = Node(
            self.id,
            storage,
            send=network.send,
            apply=self._apply,
            peers=voters if new and config.new_cluster else None,
            tick_interval=config.tick_interval,
            election_tick=config.election_tick,
            heartbeat_tick=config.heartbeat_tick,
            snapshot=self._snapshot,
            restore=self._restore,
            snapshot_every=config.snapshot_count,
            keep_entries=config.keep_entries,
            deliver_empty=True,
            request_timeout=config.request_timeout,
            logger=logging.LoggerAdapter(logging.getLogger("raftlib"), {"member": config.name}),
            on_storage_full=self._on_storage_full,
            rng=rng,
            executor=executor,
            run_id=run_id,
        )
        # A RaftStore keeps the data of entries not applied yet (kvapp.storage.entrylog).
        note = getattr(storage, "note_applied", None)
        self._note_applied: Callable[[int], object] | None = note if callable(note) else None
        if self._note_applied is not None:
            self._note_applied(self.node.applied)
        self.disk = DiskGuard(
            name=config.name,
            disk_free=disk_free,
            min_free=config.min_free_disk_bytes,
            margin=config.free_disk_margin_bytes,
            interval=config.disk_check_interval,
            raised=self._nospace_raised,
            storage_full=lambda: self.node.storage_full,
            propose=self._own_nospace,
            executor=executor,
        )
        for m in self._members.values():
            self._link(m)

    # -- lifecycle --

    async def start(self) -> None:
        """Start Raft, the lease clock and the leadership watcher on the running loop."""
        self.node.start()
        self._tasks = [
            asyncio.create_task(self._watch_leadership(), name=f"{self.config.name}-leadership"),
            asyncio.create_task(self._lease_loop(), name=f"{self.config.name}-leases"),
            asyncio.create_task(self._progress_loop(), name=f"{self.config.name}-progress"),
            asyncio.create_task(self._publish(), name=f"{self.config.name}-publish"),
            asyncio.create_task(self.disk.run(), name=f"{self.config.name}-disk"),
        ]

    async def stop(self, *, transfer: bool = True) -> None:
        """Stop; a leader first hands leadership to the most up-to-date voter if it can."""
        if self._stopping:
            return
        self._stopping = True
        if transfer and self.node.running and self.node.is_leader:
            await self._transfer_away()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for side in list(self._side_tasks):
            side.cancel()
        await self.node.stop()
        self.kv.lessor.demote()
        logger.info(
            "%s: stopped; proposed %d client writes in %d entries",
            self.config.name,
            self.writes_proposed,
            self.write_entries_proposed,
        )

    async def transfer_leadership_away(self) -> None:
        """If leading, hand leadership to the most up-to-date voter (bounded wait)."""
        if self.node.running and self.node.is_leader:
            await self._transfer_away()

    @property
    def failure(self) -> BaseException | None:
        """What stopped the member on its own (e.g. a storage error), if anything."""
        return self.node.failure

    # -- peer input --

    def receive(self, message: Message) -> None:
        """A message from a peer.

        A snapshot whose data is a file (spooled by the peer transport, or the sender's own
        file passed on by an in-process network; see :mod:`kvapp.storage.snapdata`) stays in
        it when the storage copies snapshot files itself (``takes_snapshot_parts``: a
        RaftStore). For any other storage it is read into bytes first.
        """
        snap = message.snapshot
        if snap is not None and not self._takes_parts:
            data: object = snap.data
            if isinstance(data, FileSnapshotData):
                snap = attrs.evolve(snap, data=snapshot_bytes(data))
                message = attrs.evolve(message, snapshot=snap)
        self.node.receive(message)

    def report_unreachable(self, member_id: int) -> None:
        """A message to ``member_id`` could not be sent (ignored once stopped)."""
        if self.node.running:
            self.node.report_unreachable(member_id)

    def report_snapshot(self, member_id: int, *, success: bool) -> None:
        """Whether a snapshot sent to ``member_id`` arrived (ignored once stopped)."""
        if self.node.running:
            self.node.report_snapshot(member_id, success=success)

    def report_removed(self, member_id: int, index: int) -> None:
        """Peer ``member_id`` refused this member as removed from the cluster at log ``index``.

        A member can be removed before the entry removing it reaches it (the others commit it
        without it), and then Raft never tells it: it campaigns alone for ever. etcd's peers
        answer such a member "removed" and it stops; so does this one, once its own state
        cannot contradict the claim: it has no leader (none replicates to it any more) and has
        applied less than ``index`` (else it would have applied the removal itself, or a later
        re-addition under the same id, which a lagging peer may not know of yet).
        """
        if self.removed or not self.node.running:
            return
        if self.node.leader_id != 0 or self.node.applied >= index:
            return
        logger.warning(
            "%s: member %x says this member was removed from the cluster (at index %d)",
            self.config.name,
            member_id,
            index,
        )
        self._set_removed(True)

    # -- KvService --

    def header(self) -> ResponseHeader:
        """The header for a response produced now."""
        return ResponseHeader(
            cluster_id=self.config.cluster_id,
            member_id=self.id,
            revision=self.kv.store.revision,
            raft_term=self.node.leadership_state.term,
        )

    async def write(
        self, request: WriteRequest, *, client_id: int = 0, request_id: int = 0
    ) -> WriteResponse:
        """Propose ``request``; return its result once applied here. See KvService."""
        return await self.submit_write(request, client_id=client_id, request_id=request_id)

    def submit_write(
        self, request: WriteRequest, *, client_id: int = 0, request_id: int = 0
    ) -> asyncio.Future[WriteResponse]:
        """Propose ``request`` now; the future of its result. See KvService."""
        self._check_serving()
        if not isinstance(request, _WRITE_TYPES):
            raise TypeError(f"not a write request: {type(request).__name__}")
        if isinstance(request, (PutRequest, DeleteRangeRequest, TxnRequest)):
            check_request(request, 128)
        req = kvreq.Request(client_id, request_id, request)
        self.applier.check_alarms(req)  # NOSPACE: refused here, not after a round through Raft
        data = kvreq.encode_request(req)
        if len(data) > self.config.max_request_bytes:
            raise RequestTooLargeError
        fut: asyncio.Future[WriteResponse] = asyncio.get_running_loop().create_future()
        self._batch_write(data, cast("asyncio.Future[object]", fut))
        return fut

    async def range(self, request: RangeRequest) -> RangeResponse:
        """Serve a read. See KvService."""
        barrier = self.read_barrier(request)
        if barrier is not None:
            await asyncio.shield(barrier)
        return self.range_now(request)

    def read_barrier(self, request: RangeRequest) -> asyncio.Future[None] | None:
        """What ``request`` waits for before :meth:`range_now` serves it. See KvService."""
        self._check_serving()
        if not request.serializable:
            return self._barrier()
        if self.node.applied >= self._start_commit:
            return None
        return asyncio.ensure_future(self._wait_caught_up())

    def range_now(self, request: RangeRequest) -> RangeResponse:
        """Serve a read from the local store at once. See KvService."""
        resp = self.kv.store.apply(request)
        if not isinstance(resp, RangeResponse):
            raise TypeError(f"range answered with {type(resp).__name__}")
        return resp

    async def lease_keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        """Renew a lease on the leader, once durable. See KvService."""
        self._check_serving()
        resp = self.kv.lessor.keep_alive(lease_id)
        if self.kv.lessor.renewal_durable(lease_id, resp.ticket):
            return resp
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._renewals.append((lease_id, resp.ticket, fut))
        if not self._renewal_flush:  # the keep-alives of one loop turn share a checkpoint
            self._renewal_flush = True
            loop.call_soon(self._checkpoint_renewals)
        try:
            async with asyncio.timeout(self.config.request_timeout):
                await fut
        except TimeoutError:
            raise RequestTimeoutError from None
        return resp

    async def lease_time_to_live(
        self, lease_id: int, *, keys: bool = False
    ) -> LeaseTimeToLiveResponse:
        """A lease's remaining time, from the leader. See KvService."""
        self._check_serving()
        return self.kv.lessor.time_to_live(lease_id, keys=keys)

    def leases(self) -> list[int]:
        """Every lease id, sorted."""
        return sorted(self.kv.lessor.leases())

    def open_watch_stream(self, on_pending: Callable[[], None]) -> WatchStream:
        """A new watch stream for one client connection."""
        return self.kv.watches.open_stream(on_pending)

    def member_list(self) -> list[MemberInfo]:
        """Every member, sorted by id."""
        return [self._members[i] for i in sorted(self._members)]

    async def member_add(
        self, peer_urls: tuple[str, ...], *, is_learner: bool = False
    ) -> MemberInfo:
        """Add a member through Raft. See KvService."""
        self._check_serving()
        for url in peer_urls:
            try:
                parse_peer_url(url)
            except ValueError as e:
                raise MemberBadUrlsError(str(e)) from None
        taken = {u for m in self._members.values() for u in m.peer_urls}
        if not peer_urls or taken & set(peer_urls):
            raise PeerUrlExistsError
        if is_learner:
            learners = sum(1 for m in self._members.values() if m.is_learner)
            if learners >= self.config.max_learners:
                raise TooManyLearnersError
        new_id = member_id_for(peer_urls, self.config.cluster_id)
        info = MemberInfo(id=new_id, name="", peer_urls=tuple(peer_urls), is_learner=is_learner)
        kind = ConfChangeType.ADD_LEARNER_NODE if is_learner else ConfChangeType.ADD_NODE
        await self._conf_change(ConfChange(kind, new_id, _encode_member(info)))
        return self._members.get(new_id, info)

    async def member_remove(self, member_id: int) -> None:
        """Remove a member through Raft. See KvService.

        The leader's removal starts with a hand-over, so the others are not left leaderless
        for an election timeout once it is applied: a leader removing itself hands
        leadership to the most up-to-date voter (as on :meth:`stop`); a voter asked to remove
        the leader takes leadership itself. Either way the removal is then proposed (through
        the new leader if the hand-over worked; if it did not, as it is).
        """
        self._check_serving()
        me = self._members.get(self.id)
        if member_id not in self._members:
            raise MemberNotFoundError
        if member_id == self.node.leader_id and self.node.running:
            if member_id == self.id:
                mine = self.node.status().progress.get(self.id)
                await self._transfer_away()
                if mine is not None and not self.node.is_leader:
                    await self._until_applied_past(mine.match)
            elif me is not None and not me.is_learner:
                await self._transfer_to(self.id)
        change = self._conf_change(ConfChange(ConfChangeType.REMOVE_NODE, member_id))
        if member_id == self.id:
            await self._removal_of_self(change)
        else:
            await change

    async def _until_applied_past(self, index: int) -> None:
        """Wait, at most two election timeouts, until an entry after ``index`` is applied here.

        After handing leadership over, ``index + 1`` is the new leader's first entry. Until it
        has applied every entry it held when elected, a leader refuses configuration changes
        (one at a time, as etcd's raft), and a refused change forwarded by a follower is
        dropped unreported: the proposer would time out. That entry applied here was committed,
        so the leader applied it before it steps anything this member sends afterwards.
        """
        if self.node.applied > index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (index, fut)
        self._applied_waiters.append(waiter)
        try:
            async with asyncio.timeout(self.config.tick_interval * self.config.election_tick * 2):
                await fut
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._applied_waiters.remove(waiter)

    async def _removal_of_self(self, change: Coroutine[object, object, None]) -> None:
        """Wait for this member's own removal: applied here, or learned from a peer.

        The others commit the removal without this member and stop replicating to it, so it
        may never apply the entry (and the proposal would time out): a peer saying it was
        removed (:meth:`report_removed`) answers the call just as well.
        """
        proposal = asyncio.ensure_future(change)
        told = asyncio.ensure_future(self._removed_seen.wait())
        try:
            await asyncio.wait((proposal, told), return_when=asyncio.FIRST_COMPLETED)
        finally:
            told.cancel()
            if not proposal.done():
                proposal.cancel()
        try:
            await proposal
        except (asyncio.CancelledError, EtcdError, OutcomeUnknown):
            if not self.removed:
                raise

    def _set_removed(self, removed: bool) -> None:
        self.removed = removed
        if removed:
            self._removed_seen.set()
        else:
            self._removed_seen.clear()

    async def member_promote(self, member_id: int) -> None:
        """Promote a caught-up learner. See KvService.

        Only the leader knows whether the learner is in sync; a follower raises
        ``NotLeaderError`` so the API layer forwards the request, as etcd does.
        """
        self._check_serving()
        m = self._members.get(member_id)
        if m is None:
            raise MemberNotFoundError
        if not m.is_learner:
            raise MemberNotLearnerError
        if not self.node.is_leader:
            raise NotLeaderError
        if not self._learner_caught_up(member_id):
            raise LearnerNotReadyError
        info = attrs.evolve(m, is_learner=False)
        await self._conf_change(
            ConfChange(ConfChangeType.ADD_NODE, member_id, _encode_member(info))
        )

    async def member_update(self, member_id: int, peer_urls: tuple[str, ...]) -> None:
        """Change a member's peer URLs through Raft (etcd's MemberUpdate). See KvService.

        The change is a configuration change (UPDATE_NODE) whose context describes the member
        with its new peer URLs and no name (a member publishing its name and client URLs sends
        its name: see :meth:`_apply_update`). It is checked here and again when applied,
        as etcd checks it: the member must exist and no other member may have one of the URLs.
        """
        self._check_serving()
        urls = tuple(peer_urls)
        if member_id not in self._members:
            raise MemberNotFoundError
        if not urls:
            raise MemberBadUrlsError("no peer URL given")
        for url in urls:
            try:
                parse_peer_url(url)
            except ValueError as e:
                raise MemberBadUrlsError(str(e)) from None
        refused = self._update_refusal(member_id, urls)
        if refused is not None:
            raise refused
        old = self._members[member_id]
        info = MemberInfo(id=member_id, name="", peer_urls=urls, is_learner=old.is_learner)
        context = _encode_member(info)
        await self._conf_change(ConfChange(ConfChangeType.UPDATE_NODE, member_id, context))
        refused = self._refused_updates.pop(context, None)
        if refused is not None:
            raise refused

    def _update_refusal(self, member_id: int, urls: tuple[str, ...]) -> EtcdError | None:
        """Why giving ``member_id`` the peer URLs ``urls`` is refused now (etcd's checks)."""
        if member_id not in self._members:
            return MemberNotFoundError()
        taken = {u for m in self._members.values() if m.id != member_id for u in m.peer_urls}
        if taken & set(urls):
            return PeerUrlExistsError()
        return None

    async def snapshot(self, *, linearizable: bool = True) -> AsyncGenerator[bytes, None]:
        """Stream a snapshot file (:mod:`kvapp.snapfile`) of this member's state, in chunks.

        The state is captured on the loop when the first chunk is asked for (after a
        linearizable read barrier, so it holds every write acknowledged before; without
        ``linearizable``, once a restarted member has applied its durable commit index) and
        encoded in a worker thread, a few chunks ahead of the consumer at most: a slow consumer
        holds up only the encoding, never the member. Close the iterator (``aclosing``) if
        you stop early.

        Raises:
            EtcdError: no leader or timeout (the read barrier), stopping or removed.
        """
        self._check_serving()
        if linearizable:
            await self._read_barrier()
        else:
            await self._wait_caught_up()
        header = SnapshotHeader(
            cluster_id=self.config.cluster_id,
            member_id=self.id,
            raft_index=self.node.applied,
            raft_term=self.node.leadership_state.term,
            revision=self.kv.store.revision,
        )
        image = self.applier.snapshot_image()
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(_SNAPSHOT_QUEUE)
        sink = _ChunkSink(loop, chunks)

        def produce() -> None:
            try:
                writer = SnapshotWriter(sink, header)
                image.write(writer)  # type: ignore[arg-type]  # writes are all it needs
                writer.finish()
                sink.flush()
            except _Abandoned:
                return
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                sink.put(e)
                return
            sink.put(None)

        worker = loop.run_in_executor(None, produce)
        try:
            while (item := await chunks.get()) is not None:
                if isinstance(item, BaseException):
                    raise KvappError(f"member {self.config.name}: snapshot failed: {item}")
                yield item
            await worker
        finally:
            sink.abandoned = True
            while not worker.done():  # unblock a worker waiting for room, until it sees it
                with contextlib.suppress(asyncio.QueueEmpty):
                    chunks.get_nowait()
                await asyncio.sleep(0.001)

    def status(self) -> StatusInfo:
        """This member's status."""
        st = self.node.status()
        me = self._members.get(self.id)
        alarms = self.applier.alarms()
        return StatusInfo(
            header=self.header(),
            version=VERSION,
            leader=self.node.leader_id,
            raft_index=st.hard_state.commit,  # etcd 3.4's raftIndex: the committed index
            raft_term=st.hard_state.term,
            raft_applied_index=self.node.applied,
            is_learner=bool(me and me.is_learner),
            errors=tuple(a.alarm.name for a in alarms),
            db_size=self._storage_size(),
            alarms=alarms,
        )

    def _storage_size(self) -> int:
        """What Status reports as etcd's dbSize: the newest snapshot's and later entries' data.

        That is what the member keeps of its Raft storage, and what a restart reads back. etcd
        reports the size of its backend database file; this member's state lives in memory and
        reaches the disk as these snapshots and log entries.
        """
        storage = self._storage
        sized = getattr(storage, "data_size", None)
        if callable(sized):  # a RaftStore's: without reading entries left in the WAL
            total: object = sized()
            if isinstance(total, int):
                return total
        try:
            size = len(storage.snapshot().data)
            first, last = storage.first_index(), storage.last_index()
            if last >= first:
                size += sum(len(e.data) for e in storage.entries(first, last + 1))
        except StorageError:  # compacted or snapshotting meanwhile: next time
            return 0
        return size

    async def alarm(
        self,
        action: kvreq.AlarmAction,
        member_id: int = 0,
        alarm: kvreq.AlarmType = kvreq.AlarmType.NONE,
    ) -> kvreq.AlarmResponse:
        """List, raise or clear alarms: etcd's Alarm. See KvService.

        GET is answered from this member's state after a linearizable read barrier (etcd 3.4
        sends it through Raft); ACTIVATE and DEACTIVATE go through Raft.

        Args:
            action: GET, ACTIVATE or DEACTIVATE.
            member_id: the member the alarm is about (ignored by GET), taken as given (etcd
                records an alarm for member 0 too).
            alarm: the alarm type; NONE with GET lists every alarm.

        Returns:
            The alarms listed, raised or cleared (cleared: empty if it was not raised).

        Raises:
            EtcdError: no leader, timeout, stopping or removed.
            OutcomeUnknown: it may or may not have been applied (it is idempotent).
        """
        self._check_serving()
        if action is kvreq.AlarmAction.GET:
            await self._read_barrier()
            return kvreq.AlarmResponse(self.applier.alarms(alarm))
        body = kvreq.AlarmRequest(action, member_id, alarm)
        result = await self._propose(kvreq.encode_request(kvreq.Request(0, 0, body)))
        if not isinstance(result, kvreq.AlarmResponse):
            raise TypeError(f"an alarm request answered with {type(result).__name__}")
        return result

    # -- disk space --

    def _nospace_raised(self) -> bool:
        return any(a.member_id == self.id for a in self.applier.alarms(kvreq.AlarmType.NOSPACE))

    async def _own_nospace(self, action: kvreq.AlarmAction) -> None:
        await self.alarm(action, self.id, kvreq.AlarmType.NOSPACE)

    def _on_storage_full(self, exc: StorageFullError) -> None:
        """A write ran out of space: the Node retries (or skips) it; raise NOSPACE too."""
        logger.error("%s: a storage write ran out of space: %s", self.config.name, exc)
        self.disk.note_full()

    # -- writes --

    def _batch_write(self, data: bytes, fut: asyncio.Future[object]) -> None:
        """Add an encoded client write to this loop turn's batch (opened by the first one).

        The batch is proposed by its own task, which closes it once the Raft node is between
        two Readys (at once when it is idle; else the writes arriving while a Ready is written
        join it: group commit), unless it filled up first; a write that would overfill it opens
        a new one. A batch of one request is proposed as that request's plain entry.
        """
        batch = self._open_batch
        if batch is not None and (
            batch.size + len(data) > _BATCH_MAX_BYTES or len(batch.data) >= _BATCH_MAX_REQUESTS
        ):
            self._open_batch = batch = None
        if batch is None:
            batch = self._open_batch = _WriteBatch()
            task = asyncio.create_task(self._propose_batch(batch))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)
        batch.data.append(data)
        batch.waiters.append(fut)
        batch.size += len(data)

    async def _propose_batch(self, batch: _WriteBatch) -> None:
        """Propose ``batch`` as one entry; settle each waiter with its own outcome, once.

        An error of the proposal (no leader, lost, timeout, stopped...) goes to every waiter,
        mapped as :meth:`_propose` maps it; each request's own result or EtcdError goes to its
        waiter alone.
        """
        with contextlib.suppress(TimeoutError):  # a Ready stuck (a full disk) holds no batch long
            async with asyncio.timeout(_BATCH_HOLD_MAX):
                await self.node.between_readies()
        if self._open_batch is batch:
            self._open_batch = None
        waiters = batch.waiters
        data = batch.data[0] if len(batch.data) == 1 else kvreq.encode_batch(batch.data)
        self.writes_proposed += len(waiters)
        self.write_entries_proposed += 1
        try:
            index = await self.node.propose(data)
        except _PROPOSAL_ERRORS as e:
            for fut in waiters:
                _settle_with(fut, self._proposal_error(e))
            return
        except BaseException:
            for fut in waiters:
                _settle_with(fut, OutcomeUnknown(f"member {self.config.name}: write abandoned"))
            raise
        result = self._results.pop(index, None)
        if len(waiters) == 1:
            outcomes: list[object] = [result]
        elif isinstance(result, list) and len(result) == len(waiters):
            outcomes = result
        else:
            outcomes = [None] * len(waiters)
        for fut, outcome in zip(waiters, outcomes, strict=True):
            if fut.done():
                continue
            if isinstance(outcome, EtcdError):
                fut.set_exception(outcome)
            elif outcome is None:
                fut.set_exception(
                    OutcomeUnknown(f"member {self.config.name}: result of index {index} was lost")
                )
            else:
                fut.set_result(outcome)

    def _proposal_error(self, e: BaseException) -> Exception:
        """The error a client gets when raftlib's ``propose`` raised ``e``."""
        if isinstance(e, NotLeader):
            return NoLeaderError()
        if isinstance(e, ProposalLost):
            return LeaderChangedError()
        if isinstance(e, ProposalDropped):
            return NoLeaderError(str(e))
        if isinstance(e, ProposalTimeout):
            return NoLeaderError() if e.outcome_known else RequestTimeoutError()
        return OutcomeUnknown(f"member {self.config.name}: {e}")

    async def _propose(self, data: bytes) -> object:
        try:
            index = await self.node.propose(data)
        except _PROPOSAL_ERRORS as e:
            raise self._proposal_error(e) from None
        result = self._results.pop(index, None)
        if isinstance(result, EtcdError):
            raise result
        if result is None:
            raise OutcomeUnknown(f"member {self.config.name}: result of index {index} was lost")
        return result

    async def _conf_change(self, cc: ConfChange) -> None:
        try:
            await self.node.propose_conf_change(cc)
        except ConfChangeRefused as e:
            # Raft takes one change at a time: the client may retry once the last one applied.
            raise TooManyRequestsError(str(e)) from None
        except NotLeader:
            raise NoLeaderError from None
        except ProposalLost:
            raise LeaderChangedError from None
        except ProposalDropped as e:
            raise NoLeaderError(str(e)) from None
        except (ProposalTimeout, NodeTimeout):
            raise RequestTimeoutError from None
        except (RaftOutcomeUnknown, NodeStopped) as e:
            raise OutcomeUnknown(f"member {self.config.name}: {e}") from None

    # -- reads --

    async def _read_barrier(self) -> None:
        """Wait for a ReadIndex round issued after this call (see :meth:`_barrier`)."""
        await asyncio.shield(self._barrier())

    def _barrier(self) -> asyncio.Future[None]:
        """The end of a ReadIndex round issued after this call, shared with concurrent reads.

        The reads arriving in one loop turn share a round. Up to :data:`_READ_ROUNDS` rounds
        may be in flight, so a read arriving during a round waits for a round of its own
        rather than for that one to end first; beyond that, reads gather for the next. The
        future is shared: waiters must not cancel it.
        """
        fut = self._barrier_next
        if fut is None:
            fut = self._barrier_next = asyncio.get_running_loop().create_future()
            if len(self._barrier_tasks) < _READ_ROUNDS:
                self._start_round()
        return fut

    def _start_round(self) -> None:
        task = asyncio.create_task(self._read_round())
        self._barrier_tasks.add(task)
        task.add_done_callback(self._round_done)

    def _round_done(self, task: asyncio.Task[None]) -> None:
        self._barrier_tasks.discard(task)
        if self._barrier_next is not None and len(self._barrier_tasks) < _READ_ROUNDS:
            self._start_round()

    async def _read_round(self) -> None:
        fut, self._barrier_next = self._barrier_next, None
        if fut is None:
            return
        try:
            await self.node.read_index()
        except NodeTimeout:
            exc: BaseException = RequestTimeoutError() if self.node.leader_id else NoLeaderError()
            _settle(fut, exc)
        except NodeStopped as e:
            _settle(fut, OutcomeUnknown(str(e)))
        except asyncio.CancelledError:
            fut.cancel()  # the member is stopping
            raise
        else:
            _settle(fut, None)

    async def _wait_caught_up(self) -> None:
        """A restarted member serves local reads only once it applied its durable commit index."""
        if self.node.applied >= self._start_commit:
            return
        try:
            async with asyncio.timeout(self.config.request_timeout):
                await self._caught_up.wait()
        except TimeoutError:
            raise RequestTimeoutError from None

    # -- the state machine --

    def _apply(self, c: Committed) -> None:
        if self._note_applied is not None:
            self._note_applied(c.index)
        if self._applied_waiters:
            for index, fut in self._applied_waiters:
                if c.index > index and not fut.done():
                    fut.set_result(None)
        if c.index >= self._start_commit:
            self._caught_up.set()
        if c.conf_change is not None:
            self._apply_conf_change(c)
            return
        if c.is_empty:
            self._maybe_promote_lessor(c)
            return
        try:
            entry = kvreq.decode_entry(c.data)
        except RequestDecodeError as e:
            # Every member would skip it alike only if they all ran the same code; a member of
            # an older version (or a damaged log) must stop rather than diverge silently.
            raise KvappError(
                f"{self.config.name}: cannot apply committed entry {c.index} ({e}); was it "
                "written by a newer kvapp? Stopping rather than diverging from the cluster"
            ) from e
        result: object
        if isinstance(entry, kvreq.RequestBatch):
            result = self.applier.apply_batch(entry.requests, c.index)
            checkpoint = any(isinstance(r.body, LeaseCheckpointRequest) for r in entry.requests)
            self._unsnapshotted += len(entry.requests)
        else:
            self._unsnapshotted += 1
            try:
                result = self.applier.apply(entry, c.index)
            except EtcdError as e:
                result = e
            checkpoint = isinstance(entry.body, LeaseCheckpointRequest)
        if c.proposal is not None and c.proposal.origin == self.id:
            self._results[c.index] = result
            if len(self._results) > _RESULT_CAP:
                self._results.popitem(last=False)
        if checkpoint and self._renewals:
            self._check_renewals()
        count = self.config.snapshot_count
        logged = self.kv.store.log_size
        self._log_mark = min(self._log_mark, logged)  # a compaction shrank the log
        if self._unsnapshotted >= count or logged - self._log_mark >= count:
            # etcd counts requests, not entries, and a snapshot here encodes every key version
            # written since the last: a state grown by batched entries or by large txns must
            # not leave its snapshot, seconds of encoding, to whoever writes next.
            self.node.request_snapshot()

    def _checkpoint_renewals(self) -> None:
        self._renewal_flush = False
        for proposal in self.kv.lessor.checkpoint_renewed():
            self._spawn(self._propose_quietly(proposal))

    def _check_renewals(self) -> None:
        still: list[tuple[int, int, asyncio.Future[None]]] = []
        lessor = self.kv.lessor
        for lease_id, ticket, fut in self._renewals:
            if fut.done():
                continue
            if not lessor.exists(lease_id):
                fut.set_exception(LeaseNotFoundError())
            elif lessor.renewal_durable(lease_id, ticket):
                fut.set_result(None)
            else:
                still.append((lease_id, ticket, fut))
        self._renewals = still

    def _apply_conf_change(self, c: Committed) -> None:
        cc = c.conf_change
        if c.conf_state is None or not isinstance(cc, ConfChange):
            return
        if cc.type in (ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER_NODE):
            learner = cc.type == ConfChangeType.ADD_LEARNER_NODE
            info = _decode_member(cc.context) if cc.context else None
            old = self._members.get(cc.node_id)
            if info is None:
                info = old or MemberInfo(id=cc.node_id, name="", peer_urls=())
            if old is not None and old.name and not info.name:
                info = attrs.evolve(info, name=old.name, client_urls=old.client_urls)
            info = attrs.evolve(info, id=cc.node_id, is_learner=learner)
            self._members[cc.node_id] = info
            if cc.node_id == self.id and self.removed:
                # Re-added under the same id (its peer URLs): a member replaying the log from
                # scratch meets its old removal first. It is a member again.
                logger.info("%s: this member was added to the cluster again", self.config.name)
                self._set_removed(False)
            self._link(info)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            self._members.pop(cc.node_id, None)
            self.applier.member_removed(cc.node_id)
            if cc.node_id == self.id:
                logger.warning("%s: this member was removed from the cluster", self.config.name)
                self._set_removed(True)
            else:
                self._network.remove_peer(cc.node_id, removed_at=c.index)
        elif cc.context:  # UPDATE_NODE
            self._apply_update(c, cc)

    def _apply_update(self, c: Committed, cc: ConfChange) -> None:
        """An UPDATE_NODE: a member publishing its name and client URLs, or new peer URLs.

        The two are told apart by the name in the context, and each changes only its own
        fields, so a publication and a peer URL update committed in either order both hold
        (etcd sends the former as a raft request and the latter as a configuration change).
        """
        info = _decode_member(cc.context)
        old = self._members.get(cc.node_id)
        if info is None:
            return
        if info.name:
            if old is not None:
                new = attrs.evolve(old, name=info.name, client_urls=info.client_urls)
                self._members[cc.node_id] = new
            return
        refused = self._update_refusal(cc.node_id, info.peer_urls)
        if refused is not None:
            logger.warning(
                "%s: peer URL update of member %x refused: %s",
                self.config.name,
                cc.node_id,
                refused,
            )
            if c.proposal is not None and c.proposal.origin == self.id:
                self._refused_updates[cc.context] = refused
                while len(self._refused_updates) > _REFUSED_CAP:
                    self._refused_updates.popitem(last=False)
            return
        if old is None:  # pragma: no cover - _update_refusal refuses an unknown member
            return
        new = attrs.evolve(old, peer_urls=info.peer_urls)
        self._members[cc.node_id] = new
        logger.info(
            "%s: member %x now has peer URLs %s",
            self.config.name,
            cc.node_id,
            ",".join(info.peer_urls),
        )
        self._link(new)

    def _link(self, m: MemberInfo) -> None:
        if m.id == self.id or not m.peer_urls:
            return
        try:
            addr = parse_peer_url(m.peer_urls[0])
        except ValueError:
            logger.warning(
                "%s: member %x has a bad peer URL %r", self.config.name, m.id, m.peer_urls
            )
            return
        self._network.add_peer(m.id, addr)

    def _snapshot_counts_restart(self) -> None:
        """The state is now a snapshot's: count requests and key versions from here."""
        self._unsnapshotted = 0
        self._log_mark = self.kv.store.log_size

    def _snapshot(self) -> Callable[[], bytes]:
        """Capture the state on the loop; raftlib's Node encodes it in its snapshot thread.

        The bytes produced are the Raft snapshot's data, which raftlib's storage keeps; the
        KvState keeps a reference to them so the next snapshot copies their unchanged part.
        """
        self._snapshot_counts_restart()
        members = [_member_to_list(m) for m in self.member_list()]
        image = self.applier.snapshot_image()
        kv = self.kv
        as_parts = self._takes_parts

        def encode() -> bytes:
            head = cbor2.dumps([_SNAPSHOT_FORMAT, _SNAPSHOT_VERSION, members])
            if as_parts:
                # What the last snapshot already wrote is referenced, not copied: its file
                # range goes into the new file by the kernel (kvapp.storage.snapparts).
                parts = SnapshotParts()
                parts.write(head)
                span = image.write(cast("IO[bytes]", parts))
                kv.keep_encoded(image.state, parts, span.shifted(len(head)))
                return cast("bytes", parts)  # raftlib passes it on to the storage unread
            buf = io.BytesIO()
            buf.write(head)
            span = image.write(buf)
            data = buf.getvalue()
            kv.keep_encoded(image.state, data, span.shifted(len(head)))
            return data

        return encode

    def _restore(self, data: bytes) -> None:
        parsed, state = _read_member_snapshot(data)
        with state:
            self.applier.restore(state)
        self._snapshot_counts_restart()
        table = {m.id: m for m in parsed}
        for gone in set(self._members) - set(table):
            if gone != self.id:
                self._network.remove_peer(gone)
        self._members = table
        for m in table.values():
            self._link(m)

    # -- leadership, leases, learners --

    def _maybe_promote_lessor(self, c: Committed) -> None:
        lead = self.node.leadership_state
        if lead.is_leader and c.term == lead.term and not self.kv.lessor.is_primary:
            self.kv.lessor.promote()

    async def _watch_leadership(self) -> None:
        async for view in self.node.leadership():
            if not view.is_leader and self.kv.lessor.is_primary:
                self.kv.lessor.demote()
            logger.info("%s: leader is %x at term %d", self.config.name, view.leader_id, view.term)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_tick)
            if not self.node.running:
                return
            if self.kv.lessor.is_primary:
                for proposal in self.kv.lessor.tick():
                    self._spawn(self._propose_quietly(proposal))
            if self.config.auto_promote and self.node.is_leader and not self._promoting:
                for m in self._members.values():
                    if m.is_learner and self._learner_caught_up(m.id):
                        self._promoting = True
                        self._spawn(self._auto_promote(m.id))
                        break

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_notify_interval)
            if not self.node.running:
                return
            self.kv.watches.progress_tick()

    async def _propose_quietly(self, body: kvreq.Body) -> None:
        data = kvreq.encode_request(kvreq.Request(0, 0, body))
        with contextlib.suppress(EtcdError, OutcomeUnknown):
            await self._propose(data)

    async def _auto_promote(self, member_id: int) -> None:
        try:
            await self.member_promote(member_id)
            logger.info("%s: promoted learner %x to voter", self.config.name, member_id)
        except (EtcdError, OutcomeUnknown, KvappError) as e:
            logger.info("%s: promoting learner %x failed: %s", self.config.name, member_id, e)
        finally:
            self._promoting = False

    def _learner_caught_up(self, member_id: int) -> bool:
        st = self.node.status()
        if st.soft_state.raft_state != StateType.LEADER:
            return False
        pr = st.progress.get(member_id)
        return pr is not None and pr.match >= st.hard_state.commit

    async def _publish(self) -> None:
        """Record this member's name and client URLs in the replicated member table."""
        while not self.removed:
            me = self._members.get(self.id)
            if me is not None and (me.name, me.client_urls) == (
                self.config.name,
                self.config.client_urls,
            ):
                return
            if me is not None:
                info = attrs.evolve(me, name=self.config.name, client_urls=self.config.client_urls)
                try:
                    await self._conf_change(
                        ConfChange(ConfChangeType.UPDATE_NODE, self.id, _encode_member(info))
                    )
                    continue
                except (EtcdError, OutcomeUnknown) as e:
                    logger.debug("%s: publishing attributes failed: %s", self.config.name, e)
            await asyncio.sleep(self.config.tick_interval * self.config.election_tick)

    async def _transfer_away(self) -> None:
        st = self.node.status()
        voters = [
            (pr.match, node)
            for node, pr in st.progress.items()
            if node != self.id and not pr.is_learner
        ]
        if voters:
            await self._transfer_to(max(voters)[1])

    async def _transfer_to(self, target: int) -> None:
        """Ask for leadership to move to ``target``; wait at most two election timeouts."""
        with contextlib.suppress(NodeTimeout, NodeStopped):
            await self.node.transfer_leader(
                target, timeout=self.config.tick_interval * self.config.election_tick * 2
            )

    def _spawn(self, coro: Coroutine[object, object, object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _check_serving(self) -> None:
        if self.removed:
            raise StoppedError(f"member {self.config.name} was removed from the cluster")
        if self._stopping:
            raise StoppedError(f"member {self.config.name} is stopping")


_PROPOSAL_ERRORS = (
    NotLeader,
    ProposalLost,
    ProposalDropped,
    ProposalTimeout,
    RaftOutcomeUnknown,
    NodeStopped,
)


class _WriteBatch:
    """Client writes proposed together as one entry: their encodings and their waiters."""

    __slots__ = ("data", "size", "waiters")

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.waiters: list[asyncio.Future[object]] = []
        self.size = 0


class _Abandoned(Exception):
    """The consumer of a snapshot stream went away."""


class _ChunkSink:
    """A file-like sink, in a worker thread, cutting what it gets into chunks for the loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[bytes | BaseException | None],
    ) -> None:
        self._loop = loop
        self._queue = queue
        self._buf = bytearray()
        self.abandoned = False

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buf += data
        while len(self._buf) >= _SNAPSHOT_CHUNK:
            self.put(bytes(self._buf[:_SNAPSHOT_CHUNK]))
            del self._buf[:_SNAPSHOT_CHUNK]
        return len(data)

    def flush(self) -> None:
        if self._buf:
            self.put(bytes(self._buf))
            self._buf.clear()

    def put(self, item: bytes | BaseException | None) -> None:
        """Queue ``item`` for the loop, waiting for room (the consumer's backpressure)."""
        if self.abandoned:
            raise _Abandoned
        asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop).result()


def member_snapshot_data(members: Iterable[MemberInfo], state: bytes) -> bytes:
    """A Raft snapshot's data as :class:`Member` writes and restores it.

    Args:
        members: the member table.
        state: the replicated state (what :meth:`kvapp.dedup.Applier.snapshot` writes).
    """
    table = [_member_to_list(m) for m in members]
    return cbor2.dumps([_SNAPSHOT_FORMAT, _SNAPSHOT_VERSION, table]) + state


def member_snapshot_members(data: bytes) -> list[MemberInfo]:
    """The member table of a Raft snapshot's data that :class:`Member` wrote (any version).

    Raises:
        KvappError: ``data`` is not such a snapshot.
    """
    members, state = _read_member_snapshot(data)
    state.close()
    return members


def _read_member_snapshot(data: bytes) -> tuple[list[MemberInfo], IO[bytes]]:
    """The member table of a Raft snapshot's data, and the applier stream, unread.

    ``data`` may be a :class:`~kvapp.storage.snapdata.FileSnapshotData` (what a
    :class:`~kvapp.storage.RaftStore` holds): it is then read from its file as a stream.

    Raises:
        KvappError: ``data`` is not a member snapshot of version 1 or 2 (the stream itself is
            checked when the applier restores it).
    """
    try:
        src = open_snapshot_data(data)
    except TypeError as e:
        raise KvappError(f"bad member snapshot: {e}") from e
    try:
        head = cbor2.CBORDecoder(src).decode()
        if not isinstance(head, list) or len(head) not in (3, 4):
            raise KvappError("not a [format, version, members, ...] array")
        fmt, version, members, *rest = head
        if fmt != _SNAPSHOT_FORMAT or (version, len(head)) not in ((1, 4), (2, 3)):
            raise KvappError(f"format {fmt!r:.40} version {version!r:.10}")
        if version == 1:
            if not isinstance(rest[0], bytes):
                raise KvappError("version 1 state is not a byte string")
            src.close()
            src = io.BytesIO(rest[0])
        return [_member_from_list(x) for x in members], src
    except (cbor2.CBORDecodeError, ValueError, TypeError, KvappError) as e:
        raise KvappError(f"bad member snapshot: {e}") from e


def encode_member_info(m: MemberInfo) -> bytes:
    """A member's description as a configuration change's context carries it."""
    return _encode_member(m)


def _settle_with(fut: asyncio.Future[object], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


def _member_to_list(m: MemberInfo) -> list[object]:
    return [m.id, m.name, list(m.peer_urls), list(m.client_urls), m.is_learner]


def _member_from_list(x: object) -> MemberInfo:
    if not isinstance(x, list) or len(x) != 5:
        raise KvappError(f"bad member record {x!r}")
    mid, name, peers, clients, learner = x
    if not (
        isinstance(mid, int)
        and isinstance(name, str)
        and isinstance(peers, list)
        and isinstance(clients, list)
        and isinstance(learner, bool)
        and all(isinstance(u, str) for u in [*peers, *clients])
    ):
        raise KvappError(f"bad member record {x!r}")
    return MemberInfo(mid, name, tuple(peers), tuple(clients), learner)


def _encode_member(m: MemberInfo) -> bytes:
    return cbor2.dumps(_member_to_list(m))


def _decode_member(data: bytes) -> MemberInfo | None:
    try:
        return _member_from_list(cbor2.loads(data))
    except (cbor2.CBORDecodeError, ValueError, TypeError, KvappError):
        logger.warning("undecodable member description in a configuration change")
        return None
