"""etcd's KV, Lease, Cluster and Maintenance services: thin translations onto a KvService.

Each servicer method decodes etcd's request (:mod:`kvapp.server.etcd.convert`), calls the
member's :class:`~kvapp.service.KvService`, and encodes the answer with a response header
``{cluster_id, member_id, revision, raft_term}``; the revision is the result's own for KV and
lease writes and reads (as etcd's), the current one for the rest, and 0 for the Cluster service
(etcd's cluster server sets none). Errors become gRPC statuses with etcd's code and text
(:func:`abort_with`); a write whose outcome the member cannot know is answered as etcd answers
one, "etcdserver: request timed out" (UNAVAILABLE).

Lease keep-alives and time-to-live are served by the leader, whose lease clocks run: a follower
forwards them to the leader's gRPC URL (published in the member list, see
:data:`~kvapp.server.etcd.convert.GRPC_URL_PREFIX`), as etcd forwards them over its peer links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar
from urllib.parse import urlsplit

import grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from kvapp.errors import (
    EtcdError,
    LeaseNotFoundError,
    MemberBadUrlsError,
    NoLeaderError,
    NotLeaderError,
    RequestTimeoutError,
)
from kvapp.etcdpb import rpc_pb2
from kvapp.lease import LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest
from kvapp.mvcc.types import (
    CompactRequest,
    DeleteRangeResponse,
    PutResponse,
    TxnResponse,
)
from kvapp.requests import AlarmAction, AlarmType
from kvapp.server.etcd import convert
from kvapp.server.etcd.maintenance import MaintenanceBackend
from kvapp.service import (
    KvService,
    OutcomeUnknown,
    ResponseHeader,
    StatusInfo,
    WriteRequest,
    WriteResponse,
    alarm_text,
)

__all__ = [
    "FORWARDED_METADATA",
    "ClusterServicer",
    "EtcdApi",
    "KVServicer",
    "LeaseServicer",
    "MaintenanceServicer",
    "Unimplemented",
    "abort_with",
    "is_abort",
    "require_leader",
    "status_errors",
    "unary_handler",
]

log = logging.getLogger(__name__)

FORWARDED_METADATA: Final = "kvapp-forwarded"
"""Metadata key marking a request a follower forwarded to the leader (never forwarded again)."""

# grpc-go's texts (code INTERNAL) for a request that does not decode: a unary call's, and a
# stream message's (etcd 3.4's gRPC server answers so; grpcio's own answer would be UNKNOWN).
_UNMARSHAL_REQUEST: Final = "grpc: error unmarshalling request: "
_UNMARSHAL_MESSAGE: Final = "grpc: failed to unmarshal the received message "

_T = TypeVar("_T")
_W = TypeVar("_W", bound=WriteResponse)


class Unimplemented(Exception):
    """An RPC kvapp does not serve (yet); answered with UNIMPLEMENTED and the message."""


class _Remote(Exception):
    """The leader answered a forwarded request with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """End the RPC with the status etcd would send for ``exc`` (and log the unexpected)."""
    match exc:
        case EtcdError():
            await context.abort(convert.grpc_status(exc.code), str(exc))
        case OutcomeUnknown():
            await context.abort(grpc.StatusCode.UNAVAILABLE, RequestTimeoutError.message)
        case Unimplemented():
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, str(exc))
        case _Remote():
            await context.abort(exc.code, exc.details)
        case DecodeError():  # a stream's next message did not decode: the client's fault
            await context.abort(grpc.StatusCode.INTERNAL, f"{_UNMARSHAL_MESSAGE}{exc}")
        case _:
            log.error("etcd API: internal error", exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, "kvapp: internal error")
    raise AssertionError("context.abort returned")  # pragma: no cover


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {str(k): str(v) for k, v in context.invocation_metadata() or ()}


def require_leader(service: KvService, context: grpc.aio.ServicerContext) -> bool:
    """Whether the client asked for a leader (clientv3's ``WithRequireLeader``).

    Raises:
        NoLeaderError: it did and this member knows no leader (etcd fails such a stream at
            once rather than let it hang).
    """
    if _metadata(context).get("hasleader") != "true":
        return False
    if not service.status().leader:
        raise NoLeaderError
    return True


class EtcdApi:
    """What every servicer shares: the member, its maintenance backend, leader forwarding.

    Args:
        service: the member.
        maintenance: alarms, hashes and leader transfer (None: not available).
        request_timeout: seconds a forwarded request may take.
        channel_credentials: TLS for forwarding to a leader's ``https`` gRPC URL.
    """

    def __init__(
        self,
        service: KvService,
        maintenance: MaintenanceBackend | None = None,
        *,
        request_timeout: float = 5.0,
        channel_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.service = service
        self.maintenance = maintenance
        self.request_timeout = request_timeout
        self._credentials = channel_credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

    def header(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        """A response header from the member now, with ``revision`` if given."""
        h = self.service.header()
        return rpc_pb2.ResponseHeader(
            cluster_id=h.cluster_id,
            member_id=h.member_id,
            revision=h.revision if revision is None else revision,
            raft_term=h.raft_term,
        )

    def header_of(self, h: ResponseHeader) -> rpc_pb2.ResponseHeader:
        """A response header from a :class:`ResponseHeader`."""
        return convert.header_to_pb(h)

    async def write(self, request: WriteRequest, cls: type[_W]) -> _W:
        """Propose a write; its result, checked to be of ``cls``."""
        result = await self.service.write(request)
        if not isinstance(result, cls):
            raise TypeError(f"{type(request).__name__} answered with {type(result).__name__}")
        return result

    # -- forwarding to the leader ------------------------------------------------------------

    def _leader_channel(self) -> grpc.aio.Channel:
        leader = self.service.status().leader
        if not leader:
            raise NoLeaderError
        me = self.service.header().member_id
        members = {m.id: m for m in self.service.member_list()}
        info = members.get(leader)
        urls = convert.grpc_urls_of(info) if info is not None else ()
        if leader == me or not urls:
            raise NotLeaderError(f"leader {leader:x} publishes no gRPC URL")
        parts = urlsplit(urls[0])
        target = parts.netloc or urls[0]
        channel = self._channels.get(target)
        if channel is None:
            if parts.scheme == "https" and self._credentials is not None:
                channel = grpc.aio.secure_channel(target, self._credentials)
            else:
                channel = grpc.aio.insecure_channel(target)
            self._channels[target] = channel
        return channel

    async def forward(
        self,
        context: grpc.aio.ServicerContext,
        call: Callable[[grpc.aio.Channel, tuple[tuple[str, str], ...]], Awaitable[_T]],
    ) -> _T:
        """Run ``call`` against the leader, or re-raise NotLeaderError if it was forwarded."""
        if FORWARDED_METADATA in _metadata(context):
            raise NotLeaderError("a forwarded request reached a follower")
        channel = self._leader_channel()
        try:
            async with asyncio.timeout(self.request_timeout):
                return await call(channel, ((FORWARDED_METADATA, "1"),))
        except TimeoutError:
            raise RequestTimeoutError("forwarding to the leader") from None
        except grpc.aio.AioRpcError as e:
            details = e.details() or ""
            if e.code() == grpc.StatusCode.UNAVAILABLE and not details.startswith("etcdserver:"):
                raise RequestTimeoutError(f"leader unreachable: {details}") from None
            raise _Remote(e.code(), details) from None

    async def forward_unary(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        request: Any,
        response_type: type[_T],
    ) -> _T:
        """Send a unary ``request`` to the leader's ``method`` (see :meth:`forward`)."""

        def call(ch: grpc.aio.Channel, md: tuple[tuple[str, str], ...]) -> Awaitable[_T]:
            rpc = ch.unary_unary(
                method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,  # type: ignore[attr-defined]
            )
            return rpc(request, metadata=md)  # type: ignore[no-any-return]

        return await self.forward(context, call)

    async def close(self) -> None:
        """Close the channels to leaders."""
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            with contextlib.suppress(Exception):
                await ch.close()


def _unary(
    fn: Callable[[_T, grpc.aio.ServicerContext], Awaitable[object]],
) -> Callable[[_T, grpc.aio.ServicerContext], Awaitable[object]]:
    """Wrap a unary servicer method: any exception becomes etcd's status."""

    async def handler(request: _T, context: grpc.aio.ServicerContext) -> object:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INTERNAL, f"{_UNMARSHAL_REQUEST}{request.reason}")
        try:
            return await fn(request, context)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if is_abort(e):
                raise
            await abort_with(context, e)

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def is_abort(e: BaseException) -> bool:
    """Whether ``e`` is grpc's exception for an RPC already ended with ``context.abort``."""
    return isinstance(e, grpc.aio.AbortError)


class _Undecodable:
    """A unary request that did not decode, for the handler to answer as grpc-go does."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _decoder(request: type[object]) -> Callable[[bytes], object]:
    parse: Callable[[bytes], object] = request.FromString  # type: ignore[attr-defined]

    def decode(data: bytes) -> object:
        try:
            return parse(data)
        except DecodeError as e:  # e.g. a txn nested deeper than protobuf's depth limit
            return _Undecodable(str(e))

    return decode


def unary_handler(
    fn: Callable[[_T, grpc.aio.ServicerContext], Awaitable[object]],
    request: type[object],
    response: type[object],
) -> grpc.RpcMethodHandler:
    """A registered unary-unary handler for a servicer method.

    A request that does not decode is answered INTERNAL "grpc: error unmarshalling request:
    ...", as etcd's gRPC server answers it.
    """
    return grpc.unary_unary_rpc_method_handler(
        _unary(fn),
        request_deserializer=_decoder(request),
        response_serializer=response.SerializeToString,  # type: ignore[attr-defined]
    )


# -- KV --------------------------------------------------------------------------------------------


class KVServicer:
    """etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact."""

    def __init__(self, api: EtcdApi) -> None:
        self.api = api

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The method handlers to register under ``etcdserverpb.KV``."""
        pb = rpc_pb2
        return {
            "Range": unary_handler(self.Range, pb.RangeRequest, pb.RangeResponse),
            "Put": unary_handler(self.Put, pb.PutRequest, pb.PutResponse),
            "DeleteRange": unary_handler(
                self.DeleteRange, pb.DeleteRangeRequest, pb.DeleteRangeResponse
            ),
            "Txn": unary_handler(self.Txn, pb.TxnRequest, pb.TxnResponse),
            "Compact": unary_handler(self.Compact, pb.CompactionRequest, pb.CompactionResponse),
        }

    async def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.RangeResponse:
        """Read a key or range (linearizable unless ``serializable``)."""
        resp = await self.api.service.range(convert.range_from_pb(request))
        return convert.range_response_to_pb(resp, self.api.header(resp.revision))

    async def Put(
        self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.PutResponse:
        """Write a key."""
        resp = await self.api.write(convert.put_from_pb(request), PutResponse)
        return convert.put_response_to_pb(resp, self.api.header(resp.revision))

    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        """Delete a key or range."""
        resp = await self.api.write(convert.delete_range_from_pb(request), DeleteRangeResponse)
        return convert.delete_range_response_to_pb(resp, self.api.header(resp.revision))

    async def Txn(
        self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.TxnResponse:
        """A transaction (compares, then the success or failure operations)."""
        resp = await self.api.write(convert.txn_from_pb(request), TxnResponse)
        return convert.txn_response_to_pb(resp, self.api.header(resp.revision))

    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        """Drop the history before a revision."""
        from kvapp.mvcc.types import CompactResponse  # noqa: PLC0415

        req = CompactRequest(request.revision, request.physical)
        resp = await self.api.write(req, CompactResponse)
        return rpc_pb2.CompactionResponse(header=self.api.header(resp.revision))


# -- Lease -----------------------------------------------------------------------------------------


_KEEP_ALIVE: Final = "/etcdserverpb.Lease/LeaseKeepAlive"
_TIME_TO_LIVE: Final = "/etcdserverpb.Lease/LeaseTimeToLive"
_MEMBER_PROMOTE: Final = "/etcdserverpb.Cluster/MemberPromote"


class LeaseServicer:
    """etcdserverpb.Lease: grant, revoke, keep-alive stream, time-to-live, list."""

    def __init__(self, api: EtcdApi) -> None:
        self.api = api

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The method handlers to register under ``etcdserverpb.Lease``."""
        pb = rpc_pb2
        return {
            "LeaseGrant": unary_handler(
                self.LeaseGrant, pb.LeaseGrantRequest, pb.LeaseGrantResponse
            ),
            "LeaseRevoke": unary_handler(
                self.LeaseRevoke, pb.LeaseRevokeRequest, pb.LeaseRevokeResponse
            ),
            "LeaseKeepAlive": grpc.stream_stream_rpc_method_handler(
                self.LeaseKeepAlive,
                request_deserializer=pb.LeaseKeepAliveRequest.FromString,
                response_serializer=pb.LeaseKeepAliveResponse.SerializeToString,
            ),
            "LeaseTimeToLive": unary_handler(
                self.LeaseTimeToLive, pb.LeaseTimeToLiveRequest, pb.LeaseTimeToLiveResponse
            ),
            "LeaseLeases": unary_handler(
                self.LeaseLeases, pb.LeaseLeasesRequest, pb.LeaseLeasesResponse
            ),
        }

    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        """Create a lease (ID 0: the cluster picks one)."""
        resp = await self.api.write(LeaseGrantRequest(request.TTL, request.ID), LeaseGrantResponse)
        return rpc_pb2.LeaseGrantResponse(
            header=self.api.header(resp.revision), ID=resp.id, TTL=resp.ttl
        )

    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        """Delete a lease and its keys."""
        from kvapp.lease import LeaseRevokeResponse  # noqa: PLC0415

        resp = await self.api.write(LeaseRevokeRequest(request.ID), LeaseRevokeResponse)
        return rpc_pb2.LeaseRevokeResponse(header=self.api.header(resp.revision))

    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        """A lease's remaining time; TTL -1 for an unknown lease, as etcd answers."""
        try:
            resp = await self.api.service.lease_time_to_live(request.ID, keys=request.keys)
        except LeaseNotFoundError:
            return rpc_pb2.LeaseTimeToLiveResponse(header=self.api.header(), ID=request.ID, TTL=-1)
        except NotLeaderError:
            forwarded = await self.api.forward_unary(
                context, _TIME_TO_LIVE, request, rpc_pb2.LeaseTimeToLiveResponse
            )
            forwarded.header.CopyFrom(self.api.header())
            return forwarded
        return rpc_pb2.LeaseTimeToLiveResponse(
            header=self.api.header(),
            ID=resp.id,
            TTL=resp.ttl,
            grantedTTL=resp.granted_ttl,
            keys=list(resp.keys),
        )

    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        """Every lease."""
        return rpc_pb2.LeaseLeasesResponse(
            header=self.api.header(),
            leases=[rpc_pb2.LeaseStatus(ID=i) for i in self.api.service.leases()],
        )

    async def LeaseKeepAlive(
        self,
        requests: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        """Renew leases, one answer per request in order; TTL 0 for an unknown lease."""
        try:
            require_leader(self.api.service, context)
            async for request in requests:
                yield await self._keep_alive(request, context)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if is_abort(e):
                raise
            await abort_with(context, e)

    async def _keep_alive(
        self, request: rpc_pb2.LeaseKeepAliveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseKeepAliveResponse:
        header = self.api.header()
        try:
            resp = await self.api.service.lease_keep_alive(request.ID)
        except LeaseNotFoundError:
            return rpc_pb2.LeaseKeepAliveResponse(header=header, ID=request.ID, TTL=0)
        except NotLeaderError:

            async def once(
                ch: grpc.aio.Channel, md: tuple[tuple[str, str], ...]
            ) -> rpc_pb2.LeaseKeepAliveResponse:
                call = ch.stream_stream(
                    _KEEP_ALIVE,
                    request_serializer=rpc_pb2.LeaseKeepAliveRequest.SerializeToString,
                    response_deserializer=rpc_pb2.LeaseKeepAliveResponse.FromString,
                )(metadata=md)
                try:
                    await call.write(request)
                    answer = await call.read()
                finally:
                    call.cancel()
                if answer is grpc.aio.EOF:
                    raise RequestTimeoutError("the leader closed the keep-alive stream")
                return answer  # type: ignore[no-any-return]

            forwarded = await self.api.forward(context, once)
            return rpc_pb2.LeaseKeepAliveResponse(header=header, ID=forwarded.ID, TTL=forwarded.TTL)
        return rpc_pb2.LeaseKeepAliveResponse(header=header, ID=resp.id, TTL=resp.ttl)


# -- Cluster ---------------------------------------------------------------------------------------


class ClusterServicer:
    """etcdserverpb.Cluster: member list, add (learners too), remove, update, promote."""

    def __init__(self, api: EtcdApi) -> None:
        self.api = api

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The method handlers to register under ``etcdserverpb.Cluster``."""
        pb = rpc_pb2
        return {
            "MemberAdd": unary_handler(self.MemberAdd, pb.MemberAddRequest, pb.MemberAddResponse),
            "MemberRemove": unary_handler(
                self.MemberRemove, pb.MemberRemoveRequest, pb.MemberRemoveResponse
            ),
            "MemberUpdate": unary_handler(
                self.MemberUpdate, pb.MemberUpdateRequest, pb.MemberUpdateResponse
            ),
            "MemberList": unary_handler(
                self.MemberList, pb.MemberListRequest, pb.MemberListResponse
            ),
            "MemberPromote": unary_handler(
                self.MemberPromote, pb.MemberPromoteRequest, pb.MemberPromoteResponse
            ),
        }

    def _header(self) -> rpc_pb2.ResponseHeader:
        return self.api.header(revision=0)  # etcd's cluster server sets no revision

    def _members(self) -> list[rpc_pb2.Member]:
        return [convert.member_to_pb(m) for m in self.api.service.member_list()]

    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        """The members as this member knows them."""
        return rpc_pb2.MemberListResponse(header=self._header(), members=self._members())

    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        """Add a member (a learner if ``isLearner``)."""
        if not request.peerURLs:
            raise MemberBadUrlsError("no peer URL given")
        added = await self.api.service.member_add(
            tuple(request.peerURLs), is_learner=request.isLearner
        )
        return rpc_pb2.MemberAddResponse(
            header=self._header(),
            member=rpc_pb2.Member(
                ID=added.id, peerURLs=list(added.peer_urls), isLearner=added.is_learner
            ),
            members=self._members(),
        )

    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        """Remove a member."""
        await self.api.service.member_remove(request.ID)
        return rpc_pb2.MemberRemoveResponse(header=self._header(), members=self._members())

    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        """Give a member new peer URLs (the other members dial them from then on)."""
        await self.api.service.member_update(request.ID, tuple(request.peerURLs))
        return rpc_pb2.MemberUpdateResponse(header=self._header(), members=self._members())

    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        """Promote a caught-up learner to voter.

        A follower forwards it to the leader, which alone knows whether the learner is in
        sync (as etcd does), and answers with the leader's member list: its own may not show
        the promotion yet.
        """
        try:
            await self.api.service.member_promote(request.ID)
        except NotLeaderError:
            forwarded = await self.api.forward_unary(
                context, _MEMBER_PROMOTE, request, rpc_pb2.MemberPromoteResponse
            )
            forwarded.header.CopyFrom(self._header())
            return forwarded
        return rpc_pb2.MemberPromoteResponse(header=self._header(), members=self._members())


# -- Maintenance -----------------------------------------------------------------------------------


def status_errors(st: StatusInfo) -> list[str]:
    """Status ``errors`` as etcd 3.4's maintenance server makes them.

    "etcdserver: no leader" when the member knows no leader, then one :func:`alarm_text` per
    raised alarm.
    """
    errors = [] if st.leader else [NoLeaderError.message]
    errors += [alarm_text(a) for a in st.alarms]  # memberID:<id> alarm:NOSPACE
    return errors


class MaintenanceServicer:
    """etcdserverpb.Maintenance: Status, Alarm, HashKV, Hash, Defragment, MoveLeader, Snapshot."""

    def __init__(self, api: EtcdApi) -> None:
        self.api = api

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The method handlers to register under ``etcdserverpb.Maintenance``."""
        pb = rpc_pb2
        return {
            "Alarm": unary_handler(self.Alarm, pb.AlarmRequest, pb.AlarmResponse),
            "Status": unary_handler(self.Status, pb.StatusRequest, pb.StatusResponse),
            "Defragment": unary_handler(
                self.Defragment, pb.DefragmentRequest, pb.DefragmentResponse
            ),
            "Hash": unary_handler(self.Hash, pb.HashRequest, pb.HashResponse),
            "HashKV": unary_handler(self.HashKV, pb.HashKVRequest, pb.HashKVResponse),
            "Snapshot": grpc.unary_stream_rpc_method_handler(
                self.Snapshot,
                request_deserializer=pb.SnapshotRequest.FromString,
                response_serializer=pb.SnapshotResponse.SerializeToString,
            ),
            "MoveLeader": unary_handler(
                self.MoveLeader, pb.MoveLeaderRequest, pb.MoveLeaderResponse
            ),
        }

    def _backend(self, rpc: str) -> MaintenanceBackend:
        if self.api.maintenance is None:
            raise Unimplemented(f"kvapp: {rpc} is not available on this server")
        return self.api.maintenance

    async def Status(
        self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.StatusResponse:
        """This member's status; ``errors`` as etcd 3.4 writes them (:func:`status_errors`).

        ``dbSize`` and ``dbSizeInUse`` are both the size of the member's Raft storage
        (:attr:`kvapp.service.StatusInfo.db_size`): its newest snapshot and the log after it.
        """
        st = self.api.service.status()
        return rpc_pb2.StatusResponse(
            header=self.api.header_of(st.header),
            version=st.version,
            dbSize=st.db_size,
            leader=st.leader,
            raftIndex=st.raft_index,
            raftTerm=st.raft_term,
            raftAppliedIndex=st.raft_applied_index,
            errors=status_errors(st),
            dbSizeInUse=st.db_size,
            isLearner=st.is_learner,
        )

    async def Alarm(
        self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AlarmResponse:
        """List (GET), raise (ACTIVATE) or clear (DEACTIVATE) alarms, through Raft.

        Answered as etcd 3.4 answers: the alarms listed, the one raised (also when it already
        was), the one cleared (none if it was not raised); and no response header (etcd 3.4's
        apply layer builds this response without one). The member id is taken as given:
        etcd's client disarms every alarm by listing them, then deactivating each.
        """
        try:
            action = AlarmAction(request.action)
            alarm = AlarmType(request.alarm)
        except ValueError:
            raise convert.InvalidRequestError(
                f"unknown alarm action {request.action} or type {request.alarm}"
            ) from None
        resp = await self.api.service.alarm(action, request.memberID, alarm)
        return rpc_pb2.AlarmResponse(
            alarms=[
                rpc_pb2.AlarmMember(memberID=a.member_id, alarm=int(a.alarm))  # type: ignore[arg-type]
                for a in resp.alarms
            ],
        )

    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        """Nothing to do: the store lives in memory.

        The response has no header: etcd 3.4's has none (``maintenanceServer.Defragment``), so
        its gateway answers ``{}``.
        """
        return rpc_pb2.DefragmentResponse()

    async def Hash(
        self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashResponse:
        """A hash of the whole replicated state (kvapp's own; comparable between members)."""
        value = self._backend("Hash").hash()
        return rpc_pb2.HashResponse(header=self.api.header(), hash=value & 0xFFFFFFFF)

    async def HashKV(
        self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.HashKVResponse:
        """A hash of the key-value history up to a revision (0: the current one)."""
        h = self._backend("HashKV").hash_kv(request.revision)
        return rpc_pb2.HashKVResponse(
            header=self.api.header(),
            hash=h.hash,
            compact_revision=h.compact_revision,
            hash_revision=h.hash_revision,
        )

    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MoveLeaderResponse:
        """Hand leadership to another voter; must be sent to the leader."""
        await self._backend("MoveLeader").move_leader(request.targetID)
        return rpc_pb2.MoveLeaderResponse(header=self.api.header())

    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        """Stream a snapshot file of the member's state (kvapp's format, see kvapp.snapfile).

        The total size is not known in advance, so ``remaining_bytes`` is a lower bound (the
        next piece's size) until the last piece, which carries 0; etcd clients only read the
        blobs until the end of the stream. The pieces carry no header, as etcd 3.4's do not.
        """
        try:
            chunks = self.api.service.snapshot(linearizable=True)
            try:
                pending = await anext(chunks, None)
                while pending is not None:
                    following = await anext(chunks, None)
                    yield rpc_pb2.SnapshotResponse(
                        remaining_bytes=len(following) if following is not None else 0,
                        blob=pending,
                    )
                    pending = following
            finally:
                await chunks.aclose()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if is_abort(e):
                raise
            await abort_with(context, e)
