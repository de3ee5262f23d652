"""The member's client-facing API, independent of any wire protocol.

Every client protocol (the native cbor2 protocol, later etcd's gRPC services and JSON gateway) is
a thin translation onto one :class:`KvService`: it decodes a request, calls the service, and
encodes what comes back. Keeping this surface small and typed is what lets two protocols share
one member core and behave identically.

Errors: methods raise the :class:`~kvapp.errors.EtcdError` subclass etcd would answer with
(its code and text are what the protocols send), or :class:`OutcomeUnknown` when a write may or
may not have been applied (the connection or the member failed after it was proposed; only a
retry with the same ``(client_id, request_id)`` is safe, because the member deduplicates it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import TYPE_CHECKING, Protocol, TypeAlias

import attrs

from kvapp.errors import KvappError
from kvapp.lease import (
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseKeepAliveResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    LeaseTimeToLiveResponse,
)
from kvapp.mvcc.types import (
    CompactRequest,
    CompactResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    TxnRequest,
    TxnResponse,
)
from kvapp.watch import WatchStream

if TYPE_CHECKING:  # kvapp.requests imports this module
    from kvapp.requests import AlarmAction, AlarmMember, AlarmResponse, AlarmType

__all__ = [
    "KvService",
    "MemberInfo",
    "OutcomeUnknown",
    "ResponseHeader",
    "StatusInfo",
    "WriteRequest",
    "WriteResponse",
    "alarm_text",
]

WriteRequest: TypeAlias = (
    PutRequest
    | DeleteRangeRequest
    | TxnRequest
    | CompactRequest
    | LeaseGrantRequest
    | LeaseRevokeRequest
)
"""A request that goes through the Raft log."""

WriteResponse: TypeAlias = (
    PutResponse
    | DeleteRangeResponse
    | TxnResponse
    | CompactResponse
    | LeaseGrantResponse
    | LeaseRevokeResponse
)
"""What a :data:`WriteRequest` returns (the type matches the request's)."""


class OutcomeUnknown(KvappError):
    """A write may or may not have been applied; retry only with the same request id."""


@attrs.frozen
class MemberInfo:
    """One cluster member, as etcd's ``Member`` message describes it.

    Attributes:
        id: the member id (non-zero, 64-bit).
        name: its human-readable name (empty for a member added but not yet started).
        peer_urls: where its peers reach it (``http://host:port``).
        client_urls: where clients reach it.
        is_learner: a non-voting member catching up before promotion.
    """

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False

    @property
    def native_client_urls(self) -> tuple[str, ...]:
        """The client URLs that speak kvapp's native protocol.

        A member serving etcd's gRPC API too publishes those URLs among its client URLs with
        a ``grpc+`` scheme prefix (see :mod:`kvapp.server.etcd.convert`); they are left out.
        """
        return tuple(u for u in self.client_urls if not u.startswith("grpc+"))


@attrs.frozen
class ResponseHeader:
    """etcd's ``ResponseHeader``: which cluster and member answered, at which revision/term."""

    cluster_id: int
    member_id: int
    revision: int
    raft_term: int


def _alarm_members(items: Iterable[AlarmMember]) -> tuple[AlarmMember, ...]:
    return tuple(items)


@attrs.frozen
class StatusInfo:
    """etcd's ``StatusResponse`` (its database-size field is the member's snapshot size here).

    Attributes:
        header: the response header.
        version: the server version string.
        leader: the leader's member id, or 0 if none is known.
        raft_index: the highest log index this member knows to be committed (etcd 3.4's
            ``raftIndex``, its Raft node's committed index).
        raft_term: this member's term.
        raft_applied_index: the last index applied to the state machine.
        is_learner: whether this member is a learner.
        errors: the raised alarms' types (e.g. ``"NOSPACE"``), empty when healthy.
        db_size: etcd's ``dbSize``: the size in bytes of the replicated state as this member
            last wrote it to disk (its newest Raft snapshot's data; 0 before its first one).
        alarms: the raised alarms, with the member each is about (what etcd's ``errors``
            describe); empty when the status came over kvapp's native protocol, which carries
            only ``errors``.
    """

    header: ResponseHeader
    version: str
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    is_learner: bool
    errors: tuple[str, ...] = ()
    db_size: int = 0
    alarms: tuple[AlarmMember, ...] = attrs.field(default=(), converter=_alarm_members)


def alarm_text(alarm: AlarmMember) -> str:
    """An alarm as etcd 3.4 describes it: ``memberID:<decimal id> alarm:<TYPE> ``.

    That is gogo/protobuf's compact text of etcd's ``AlarmMember`` message, which etcd puts in
    Status ``errors`` and etcdctl prints for ``alarm list``: each set field followed by a space
    (the trailing space included), fields at their zero value (member 0, type NONE) left out.
    """
    text = f"memberID:{alarm.member_id} " if alarm.member_id else ""
    if alarm.alarm:
        text += f"alarm:{alarm.alarm.name} "
    return text


class KvService(Protocol):
    """What a client protocol needs from a member. All methods run on the member's loop."""

    def header(self) -> ResponseHeader:
        """The header for a response produced now."""
        ...

    async def write(
        self, request: WriteRequest, *, client_id: int = 0, request_id: int = 0
    ) -> WriteResponse:
        """Propose ``request`` through Raft; return its result once applied on this member.

        A non-zero ``(client_id, request_id)`` makes a retry of the same write apply once and
        return the first result.

        Raises:
            EtcdError: etcd's answer (too large, no leader, timeout, key errors, NOSPACE, ...).
            OutcomeUnknown: it may or may not have been applied.
        """
        ...

    def submit_write(
        self, request: WriteRequest, *, client_id: int = 0, request_id: int = 0
    ) -> asyncio.Future[WriteResponse]:
        """The task-free form of :meth:`write`: propose now, return the result's future.

        For protocols that answer many writes from callbacks. What :meth:`write` would raise
        before proposing (too large, NOSPACE, the member not serving) is raised here; the
        rest settles the future. Cancelling the future gives up waiting, as cancelling
        :meth:`write` does: the write may still be applied.
        """
        ...

    async def range(self, request: RangeRequest) -> RangeResponse:
        """Read: linearizable (a ReadIndex barrier first) unless ``request.serializable``.

        The same as awaiting :meth:`read_barrier` (when it is not None), then
        :meth:`range_now`.

        Raises:
            EtcdError: e.g. compacted/future revision, no leader, timeout.
        """
        ...

    def read_barrier(self, request: RangeRequest) -> asyncio.Future[None] | None:
        """What a read must wait for before :meth:`range_now` may serve it; None: nothing.

        The task-free half of :meth:`range`, for protocols that serve many reads at once:
        the future may be shared by many reads (never cancel it; add a done callback). It
        fails with the read's EtcdError (no leader, timeout).

        Raises:
            EtcdError: the member cannot serve reads now.
        """
        ...

    def range_now(self, request: RangeRequest) -> RangeResponse:
        """Serve a read from this member's store now (after :meth:`read_barrier`).

        Raises:
            EtcdError: e.g. compacted/future revision.
        """
        ...

    async def lease_keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        """Renew a lease on the leader; returns once the renewal is durable.

        Raises:
            EtcdError: ``LeaseNotFoundError``; ``NotLeaderError`` on a follower (the client
                sends keep-alives to the leader).
        """
        ...

    async def lease_time_to_live(
        self, lease_id: int, *, keys: bool = False
    ) -> LeaseTimeToLiveResponse:
        """A lease's remaining time, from the leader.

        Raises:
            EtcdError: ``LeaseNotFoundError``; ``NotLeaderError`` on a follower.
        """
        ...

    def leases(self) -> list[int]:
        """The ids of every lease, sorted."""
        ...

    def open_watch_stream(self, on_pending: Callable[[], None]) -> WatchStream:
        """A new watch stream for one client connection; close it when the client goes."""
        ...

    def member_list(self) -> list[MemberInfo]:
        """Every member of the cluster as this member knows it, sorted by id."""
        ...

    async def member_add(
        self, peer_urls: tuple[str, ...], *, is_learner: bool = False
    ) -> MemberInfo:
        """Add a member (etcd's MemberAdd); returns it once the change is applied here.

        Raises:
            EtcdError: invalid or duplicate peer URLs, too many learners, no leader, timeout.
        """
        ...

    async def member_remove(self, member_id: int) -> None:
        """Remove a member once the change is applied here.

        Raises:
            EtcdError: unknown member, no leader, timeout.
        """
        ...

    async def member_promote(self, member_id: int) -> None:
        """Promote a learner to voter.

        Raises:
            EtcdError: not a learner, learner not caught up, no leader, timeout;
                ``NotLeaderError`` on a follower (the client or API layer forwards it).
        """
        ...

    async def member_update(self, member_id: int, peer_urls: tuple[str, ...]) -> None:
        """Change a member's peer URLs (etcd's MemberUpdate) once the change is applied here.

        The other members dial the new URLs from then on; the member itself keeps listening
        where it was started (restart it with the new ``--listen-peer-urls``).

        Raises:
            EtcdError: unknown member, invalid URLs, a URL another member has, no leader,
                timeout.
        """
        ...

    async def alarm(self, action: AlarmAction, member_id: int, alarm: AlarmType) -> AlarmResponse:
        """List, raise or clear alarms through Raft (etcd's Maintenance.Alarm).

        GET lists the raised alarms of type ``alarm`` (NONE: every type), after a read barrier;
        ACTIVATE raises ``alarm`` for ``member_id`` and DEACTIVATE clears it, both applied by
        every member. The member id is taken as given (0 included), as etcd does.

        Returns:
            The alarms listed; the one raised (also if it already was); the one cleared
            (nothing if it was not raised).

        Raises:
            EtcdError: no leader, timeout.
            OutcomeUnknown: a change may or may not have been applied (repeating it is safe).
        """
        ...

    def status(self) -> StatusInfo:
        """This member's status (etcd's Maintenance.Status)."""
        ...

    def snapshot(self, *, linearizable: bool = True) -> AsyncGenerator[bytes, None]:
        """Stream a snapshot file (:mod:`kvapp.snapfile`) of the state, in chunks, in order.

        etcd's Maintenance.Snapshot. With ``linearizable`` the state includes every write
        acknowledged before the call (a read barrier first); without, it is this member's
        state now. Close the iterator if you stop early.

        Raises:
            EtcdError: no leader or timeout (the barrier), the member is stopping.
            KvappError: the snapshot could not be made.
        """
        ...
