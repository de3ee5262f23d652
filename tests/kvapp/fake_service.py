"""An in-memory :class:`~kvapp.service.KvService` over a real :class:`~kvapp.kvstate.KvState`.

No Raft: a write applies at once, deterministically. Several :class:`FakeService` members may
share one :class:`FakeCluster` (one state, one dedup table, one membership), which models
replicas that are always in sync: enough to test protocols and clients, failover included.

Like the real member, writes with a non-zero ``(client_id, request_id)`` apply once: a retry
returns (or raises) what the first attempt did. Leader-only lease calls raise
:class:`~kvapp.errors.NotLeaderError` on any member but the cluster's leader.

Hooks for fault injection: :attr:`FakeCluster.after_apply` runs after a write applied (or was
found applied already, for a retry) and before its result is returned (e.g. to drop the
client's connection, losing the answer), and
:attr:`FakeService.unavailable` makes a member answer every call with an error.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import cast

from kvapp.dedup import Applier
from kvapp.errors import (
    EtcdError,
    MemberBadUrlsError,
    MemberNotFoundError,
    MemberNotLearnerError,
    NotLeaderError,
    PeerUrlExistsError,
)
from kvapp.kvstate import KvState
from kvapp.lease import LeaseKeepAliveResponse, LeaseTimeToLiveResponse
from kvapp.mvcc.types import (
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RangeResponse,
    TxnRequest,
)
from kvapp.mvcc.validate import DEFAULT_MAX_TXN_OPS, check_request
from kvapp.requests import AlarmAction, AlarmMember, AlarmResponse, AlarmType
from kvapp.service import (
    MemberInfo,
    ResponseHeader,
    StatusInfo,
    WriteRequest,
    WriteResponse,
)
from kvapp.snapfile import SnapshotHeader, SnapshotWriter
from kvapp.watch import WatchStream

AfterApply = Callable[["FakeService", WriteRequest, int, int], Awaitable[None]]


class FakeCluster:
    """The state every fake member shares.

    Args:
        cluster_id: the cluster id in headers.
        term: the Raft term in headers and status.
        min_ttl: the lessor's minimum TTL (1 s, so lease tests stay short).
        clock: the lessor's clock.
    """

    def __init__(
        self,
        *,
        cluster_id: int = 0xC1C1,
        term: int = 3,
        min_ttl: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster_id = cluster_id
        self.term = term
        self.state = KvState(clock, grace=0.0, min_ttl=min_ttl)
        self.state.lessor.promote()
        self.leader_id = 0
        self.members: dict[int, MemberInfo] = {}
        self.applied: dict[tuple[int, int], WriteResponse | EtcdError] = {}
        self.writes_applied = 0
        self.write_calls = 0
        self.after_apply: AfterApply | None = None
        self.alarms: set[AlarmMember] = set()
        self._next_member_id = 0x1000

    def new_member_id(self) -> int:
        """A member id not used yet."""
        self._next_member_id += 1
        return self._next_member_id

    def service(
        self, member_id: int, *, name: str = "", client_urls: tuple[str, ...] = ()
    ) -> FakeService:
        """Add a voting member and return its service; the first one added leads."""
        info = MemberInfo(
            member_id,
            name or f"m{member_id:x}",
            (f"http://127.0.0.1:{20000 + len(self.members)}",),
            client_urls,
        )
        self.members[member_id] = info
        if not self.leader_id:
            self.leader_id = member_id
        return FakeService(self, member_id)


class FakeService:
    """One fake member; see the module docstring.

    Attributes:
        unavailable: when set, every call raises it (e.g. ``NoLeaderError()``).
        calls: the name of every service method called, in order.
        snapshot_chunk: the size of the pieces :meth:`snapshot` yields.
    """

    def __init__(self, cluster: FakeCluster, member_id: int) -> None:
        self.cluster = cluster
        self.member_id = member_id
        self.unavailable: EtcdError | None = None
        self.calls: list[str] = []
        self.snapshot_chunk = 1000

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.unavailable is not None:
            raise self.unavailable

    def _leader_only(self) -> None:
        if self.member_id != self.cluster.leader_id:
            raise NotLeaderError

    # -- KvService ---------------------------------------------------------------------------

    def header(self) -> ResponseHeader:
        """The header: this member, the shared state's revision."""
        c = self.cluster
        return ResponseHeader(c.cluster_id, self.member_id, c.state.store.revision, c.term)

    async def write(
        self, request: WriteRequest, *, client_id: int = 0, request_id: int = 0
    ) -> WriteResponse:
        """Apply at once; a repeated non-zero (client_id, request_id) returns the first outcome."""
        self._enter("write")
        c = self.cluster
        c.write_calls += 1
        key = (client_id, request_id)
        if client_id and key in c.applied:
            earlier = c.applied[key]
            if isinstance(earlier, EtcdError):
                raise type(earlier)(earlier.detail)
            if c.after_apply is not None:
                await c.after_apply(self, request, client_id, request_id)
            return earlier
        if isinstance(request, PutRequest | DeleteRangeRequest | TxnRequest):
            check_request(request, DEFAULT_MAX_TXN_OPS)
        try:
            result = cast("WriteResponse", c.state.apply(request))
        except EtcdError as e:
            if client_id:
                c.applied[key] = e
            raise
        c.writes_applied += 1
        if client_id:
            c.applied[key] = result
        if c.after_apply is not None:
            await c.after_apply(self, request, client_id, request_id)
        return result

    def submit_write(
        self, request: WriteRequest, *, client_id: int = 0, request_id: int = 0
    ) -> asyncio.Future[WriteResponse]:
        """:meth:`write` in a task (the task-free form is the member's business)."""
        return asyncio.ensure_future(
            self.write(request, client_id=client_id, request_id=request_id)
        )

    async def range(self, request: RangeRequest) -> RangeResponse:
        """Read the shared store."""
        self.read_barrier(request)
        return self.range_now(request)

    def read_barrier(self, request: RangeRequest) -> asyncio.Future[None] | None:
        """Nothing to wait for: the shared state is always current."""
        self._enter("range")
        return None

    def range_now(self, request: RangeRequest) -> RangeResponse:
        """Read the shared store."""
        return cast("RangeResponse", self.cluster.state.store.apply(request))

    async def lease_keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        """Renew on the leader (durable at once: there is no log)."""
        self._enter("lease_keep_alive")
        self._leader_only()
        return self.cluster.state.lessor.keep_alive(lease_id)

    async def lease_time_to_live(
        self, lease_id: int, *, keys: bool = False
    ) -> LeaseTimeToLiveResponse:
        """Time to live, from the leader."""
        self._enter("lease_time_to_live")
        self._leader_only()
        return self.cluster.state.lessor.time_to_live(lease_id, keys=keys)

    def leases(self) -> list[int]:
        """Every lease id."""
        self._enter("leases")
        return self.cluster.state.lessor.leases()

    def open_watch_stream(self, on_pending: Callable[[], None]) -> WatchStream:
        """A stream on the shared watch hub."""
        self._enter("open_watch_stream")
        return self.cluster.state.watches.open_stream(on_pending)

    def member_list(self) -> list[MemberInfo]:
        """The members, by id."""
        self._enter("member_list")
        return [self.cluster.members[i] for i in sorted(self.cluster.members)]

    async def member_add(
        self, peer_urls: tuple[str, ...], *, is_learner: bool = False
    ) -> MemberInfo:
        """Add a member with a fresh id (no name until it starts, as in etcd)."""
        self._enter("member_add")
        if not peer_urls or any("://" not in u for u in peer_urls):
            raise MemberBadUrlsError
        taken = {u for m in self.cluster.members.values() for u in m.peer_urls}
        if taken & set(peer_urls):
            raise PeerUrlExistsError
        info = MemberInfo(self.cluster.new_member_id(), "", peer_urls, (), is_learner)
        self.cluster.members[info.id] = info
        return info

    async def member_remove(self, member_id: int) -> None:
        """Remove a member."""
        self._enter("member_remove")
        if member_id not in self.cluster.members:
            raise MemberNotFoundError
        del self.cluster.members[member_id]

    async def member_promote(self, member_id: int) -> None:
        """Promote a learner."""
        self._enter("member_promote")
        info = self.cluster.members.get(member_id)
        if info is None:
            raise MemberNotFoundError
        if not info.is_learner:
            raise MemberNotLearnerError
        self.cluster.members[member_id] = MemberInfo(
            info.id, info.name, info.peer_urls, info.client_urls, False
        )

    async def member_update(self, member_id: int, peer_urls: tuple[str, ...]) -> None:
        """Give a member new peer URLs."""
        self._enter("member_update")
        info = self.cluster.members.get(member_id)
        if info is None:
            raise MemberNotFoundError
        if not peer_urls or any("://" not in u for u in peer_urls):
            raise MemberBadUrlsError
        taken = {u for m in self.cluster.members.values() if m.id != member_id for u in m.peer_urls}
        if taken & set(peer_urls):
            raise PeerUrlExistsError
        self.cluster.members[member_id] = MemberInfo(
            info.id, info.name, peer_urls, info.client_urls, info.is_learner
        )

    async def alarm(self, action: AlarmAction, member_id: int, alarm: AlarmType) -> AlarmResponse:
        """List, raise or clear an alarm of the shared table (as kvapp.dedup applies them)."""
        self._enter("alarm")
        alarms = self.cluster.alarms
        item = AlarmMember(member_id, alarm)
        match action:
            case AlarmAction.GET:
                return AlarmResponse(self._alarms(alarm))
            case AlarmAction.ACTIVATE if alarm is not AlarmType.NONE:
                alarms.add(item)
                return AlarmResponse([item])
            case AlarmAction.DEACTIVATE if item in alarms:
                alarms.discard(item)
                return AlarmResponse([item])
        return AlarmResponse()

    def _alarms(self, alarm: AlarmType = AlarmType.NONE) -> tuple[AlarmMember, ...]:
        raised = sorted(self.cluster.alarms, key=lambda a: (a.member_id, a.alarm))
        return tuple(a for a in raised if alarm in (AlarmType.NONE, a.alarm))

    def status(self) -> StatusInfo:
        """A status whose indexes count the writes applied."""
        self._enter("status")
        c = self.cluster
        me = c.members.get(self.member_id)
        alarms = self._alarms()
        return StatusInfo(
            header=self.header(),
            version="3.5.0-kvapp-fake",
            leader=c.leader_id,
            raft_index=c.writes_applied,
            raft_term=c.term,
            raft_applied_index=c.writes_applied,
            is_learner=bool(me and me.is_learner),
            errors=tuple(a.alarm.name for a in alarms),
            db_size=1000 + c.writes_applied,
            alarms=alarms,
        )

    async def snapshot(self, *, linearizable: bool = True) -> AsyncGenerator[bytes, None]:
        """A snapshot file of the shared state, in pieces of :attr:`snapshot_chunk` bytes."""
        self._enter("snapshot")
        c = self.cluster
        out = io.BytesIO()
        header = SnapshotHeader(
            c.cluster_id, self.member_id, c.writes_applied, c.term, c.state.store.revision
        )
        writer = SnapshotWriter(out, header)
        Applier(c.state).snapshot(writer)  # type: ignore[arg-type]  # writes are all it needs
        writer.finish()
        data = out.getvalue()
        for i in range(0, len(data), self.snapshot_chunk):
            yield data[i : i + self.snapshot_chunk]
            await asyncio.sleep(0)
