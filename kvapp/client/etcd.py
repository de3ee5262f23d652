"""The etcd v3 gRPC transport: a :class:`~kvapp.client.transport.Link` over one gRPC channel.

It speaks etcd's own API (:mod:`kvapp.etcdpb`, grpcio's asyncio API), so
:class:`~kvapp.client.AsyncClient` works against real etcd (3.4 and later) as well as against
kvapp members serving that API (``kvapp serve --listen-grpc-urls``). Select it with
``AsyncClient(endpoints, protocol="etcd")``; the endpoints are then the members' gRPC
addresses (``host:port``, ``http://host:port``, or ``https://host:port`` with ``tls=``).

One channel per member. Unary calls map one to one (Range, Put, DeleteRange, Txn, Compact,
LeaseGrant, LeaseRevoke, LeaseTimeToLive, LeaseLeases, MemberList/Add/Remove/Promote, Status);
lease keep-alives share one LeaseKeepAlive stream per channel, watchers one Watch stream per
channel (created one at a time, with ids the member picks, as etcd's own client does), and
Snapshot streams its pieces into the caller's sink.

What etcd's API cannot do, and how this transport makes up for it or says so:

- **No write deduplication.** etcd has no client or request ids, so a write whose answer is
  lost may have been applied; the connector's traits say so and the client never retries such
  a write: it raises :class:`~kvapp.service.OutcomeUnknown`. A write is retried only when it
  certainly reached no member: the channel was not connected, or the member refused it before
  proposing ("no leader" under ``hasleader``, "rpc not supported for learner", "not capable",
  "unhealthy cluster"). Every other "unavailable" answer to a write ("request timed out", its
  variants, "leader changed", "server stopped") is raised as ``OutcomeUnknown`` by the link.
- **Leader-only calls are forwarded by the member** (keep-alive, time-to-live), so the client
  does no leader discovery with this transport.
- **hasleader.** Writes, linearizable reads, lease and membership calls and watch streams
  carry etcd's ``hasleader`` metadata (clientv3's ``WithRequireLeader``): a member that knows
  no leader refuses them at once ("etcdserver: no leader") instead of timing out, so the client
  moves to another member. Serializable reads, Status and MemberList do not need a leader.
- **Snapshots** are what the member streams: a bbolt database from etcd (what
  ``etcdctl snapshot save`` writes), a kvapp snapshot file from kvapp. etcd's Snapshot call has
  no linearizable option: the ``linearizable`` argument is ignored.
- **Unknown leases.** etcd answers a keep-alive of an unknown lease with TTL 0 and its
  time-to-live with TTL -1 (and no granted TTL); the link raises
  :class:`~kvapp.errors.LeaseNotFoundError` for both, as the native protocol does.
- **Failed watch creates** (an empty range) come back as a cancelled create with a reason;
  the link raises it as an :class:`~kvapp.errors.EtcdError` with INVALID_ARGUMENT. Stream-wide
  progress responses (watch id -1) are ignored: the client never asks for them, and etcd 3.4
  answers them with the store's revision even for watchers still catching up.

Errors: a gRPC status whose text is etcd's becomes the matching
:class:`~kvapp.errors.EtcdError` subclass (unknown texts keep their code and text, see
:class:`~kvapp.requests.UnknownEtcdError`); a transport failure (UNAVAILABLE, CANCELLED or
DEADLINE_EXCEEDED without an ``etcdserver:`` text) loses the link and raises
:class:`~kvapp.client.errors.LinkClosed`, with ``sent=False`` only when the call was never
started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import grpc

from kvapp import etcdconv as conv
from kvapp.client.errors import ClientError, LinkClosed, ProtocolError
from kvapp.client.transport import (
    ConnectorTraits,
    LinkIdentity,
    WatchSink,
    WatchSpec,
    WatchStarted,
)
from kvapp.errors import (
    EtcdError,
    GrpcCode,
    LeaseNotFoundError,
    NoLeaderError,
    RequestTooLargeError,
)
from kvapp.etcdpb import rpc_pb2
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
    PutRequest,
    RangeRequest,
    RangeResponse,
    TxnRequest,
)
from kvapp.requests import AlarmAction, AlarmMember, AlarmResponse, AlarmType, ErrorResult
from kvapp.service import (
    MemberInfo,
    OutcomeUnknown,
    StatusInfo,
    WriteRequest,
    WriteResponse,
)
from kvapp.tls import ClientTls

__all__ = ["ETCD_TRAITS", "EtcdConnector", "EtcdLink", "error_from_status", "grpc_target"]

log = logging.getLogger(__name__)

ETCD_TRAITS: Final = ConnectorTraits(deduplicates_writes=False, forwards_to_leader=True)
"""etcd's API: no write deduplication; members forward leader-only lease calls themselves."""

MAX_RECEIVE_BYTES: Final = 2**31 - 1
"""The largest message accepted from a member (etcd's clients receive up to 2 GiB)."""

MAX_SEND_BYTES: Final = 2 * 1024 * 1024
"""The largest request sent (etcd's Go client's default); larger ones are refused here."""

_HAS_LEADER: Final = (("hasleader", "true"),)
_NONE: Final[tuple[tuple[str, str], ...]] = ()

# Refused by etcd before anything was proposed (its API layer, or learner/capability checks).
_REFUSED_UNPROPOSED: Final = frozenset(
    {
        NoLeaderError.message,
        "etcdserver: rpc not supported for learner",
        "etcdserver: not capable",
        "etcdserver: unhealthy cluster",
    }
)
_TRANSPORT_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
_SERVER_TEXTS: Final = ("etcdserver:", "kvapp:")
_NOT_CONNECTED: Final = "failed to connect to all addresses"
_CLOSE_GRACE: Final = 0.5

_WRITE_FAILED: Final = (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError)
"""What writing to a stream that has ended raises (its reader reports how it ended)."""

_CHANNEL_OPTIONS: Final = (
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_BYTES),
    # A channel of its own per link: a fresh link must not inherit the reconnect back-off of a
    # subchannel another link saw fail (grpc shares subchannels between channels otherwise).
    ("grpc.use_local_subchannel_pool", 1),
    # Pings find a dead member under a quiet watch or keep-alive stream. etcd accepts them
    # down to every 5 s, and only while a call is open (its PermitWithoutStream is false).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
)

_WRITES: Final[dict[type, tuple[str, Callable[[Any], Any], Callable[[Any], WriteResponse]]]] = {
    PutRequest: ("/etcdserverpb.KV/Put", conv.put_to_pb, conv.put_response_from_pb),
    DeleteRangeRequest: (
        "/etcdserverpb.KV/DeleteRange",
        conv.delete_range_to_pb,
        conv.delete_range_response_from_pb,
    ),
    TxnRequest: ("/etcdserverpb.KV/Txn", conv.txn_to_pb, conv.txn_response_from_pb),
    CompactRequest: (
        "/etcdserverpb.KV/Compact",
        lambda r: rpc_pb2.CompactionRequest(revision=r.revision, physical=r.physical),
        lambda r: CompactResponse(r.header.revision),
    ),
    LeaseGrantRequest: (
        "/etcdserverpb.Lease/LeaseGrant",
        lambda r: rpc_pb2.LeaseGrantRequest(TTL=r.ttl, ID=r.id),
        lambda r: LeaseGrantResponse(r.ID, r.TTL, r.header.revision),
    ),
    LeaseRevokeRequest: (
        "/etcdserverpb.Lease/LeaseRevoke",
        lambda r: rpc_pb2.LeaseRevokeRequest(ID=r.id),
        lambda r: LeaseRevokeResponse(r.header.revision),
    ),
}

_RESPONSES: Final[dict[str, type]] = {
    "/etcdserverpb.KV/Range": rpc_pb2.RangeResponse,
    "/etcdserverpb.KV/Put": rpc_pb2.PutResponse,
    "/etcdserverpb.KV/DeleteRange": rpc_pb2.DeleteRangeResponse,
    "/etcdserverpb.KV/Txn": rpc_pb2.TxnResponse,
    "/etcdserverpb.KV/Compact": rpc_pb2.CompactionResponse,
    "/etcdserverpb.Lease/LeaseGrant": rpc_pb2.LeaseGrantResponse,
    "/etcdserverpb.Lease/LeaseRevoke": rpc_pb2.LeaseRevokeResponse,
    "/etcdserverpb.Lease/LeaseTimeToLive": rpc_pb2.LeaseTimeToLiveResponse,
    "/etcdserverpb.Lease/LeaseLeases": rpc_pb2.LeaseLeasesResponse,
    "/etcdserverpb.Cluster/MemberList": rpc_pb2.MemberListResponse,
    "/etcdserverpb.Cluster/MemberAdd": rpc_pb2.MemberAddResponse,
    "/etcdserverpb.Cluster/MemberRemove": rpc_pb2.MemberRemoveResponse,
    "/etcdserverpb.Cluster/MemberPromote": rpc_pb2.MemberPromoteResponse,
    "/etcdserverpb.Cluster/MemberUpdate": rpc_pb2.MemberUpdateResponse,
    "/etcdserverpb.Maintenance/Status": rpc_pb2.StatusResponse,
    "/etcdserverpb.Maintenance/Alarm": rpc_pb2.AlarmResponse,
}


def grpc_target(endpoint: str) -> str:
    """The gRPC target of ``host:port``, ``[v6]:port``, ``http://host:port`` or ``https://...``.

    Whether the channel uses TLS is the connector's ``tls``, not the scheme.

    Raises:
        ValueError: no host or port, or a scheme other than http and https.
    """
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if parts.scheme not in ("", "http", "https"):
        raise ValueError(f"endpoint {endpoint!r}: the scheme must be http or https")
    if not parts.hostname or parts.port is None:
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}"


def error_from_status(code: grpc.StatusCode, details: str) -> EtcdError:
    """The :class:`~kvapp.errors.EtcdError` a member's status stands for (etcd's text and code)."""
    try:
        grpc_code = GrpcCode(code.value[0])
    except ValueError:
        grpc_code = GrpcCode.UNKNOWN
    if grpc_code == GrpcCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        return RequestTooLargeError(details)  # grpc's own message size limit, either side
    return ErrorResult(grpc_code, details).to_exception()


def _is_transport_failure(code: grpc.StatusCode, details: str) -> bool:
    return code in _TRANSPORT_CODES and not details.startswith(_SERVER_TEXTS)


async def _wait_ready(channel: grpc.aio.Channel, endpoint: str) -> None:
    """Wait until ``channel`` is connected; OSError as soon as connecting fails."""
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            raise ConnectionRefusedError(f"{endpoint}: cannot connect ({state.value[1]})")
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


class EtcdConnector:
    """Opens :class:`EtcdLink` channels to members serving etcd's v3 gRPC API.

    Args:
        connect_timeout: seconds a link may wait for its channel to reconnect before a call
            (then the call fails unsent, with ``LinkClosed``).
        tls: connect over TLS (the CA, and a client certificate if given); the member's
            certificate must name the endpoint's host.

    Raises:
        kvapp.tls.TlsConfigError: a TLS file is missing, unreadable or unusable.
    """

    traits: Final = ETCD_TRAITS

    def __init__(self, *, connect_timeout: float = 5.0, tls: ClientTls | None = None) -> None:
        self.connect_timeout = connect_timeout
        self._credentials: grpc.ChannelCredentials | None = None
        if tls is not None:
            ca, key, cert = tls.pem()
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )

    async def connect(self, endpoint: str, *, client_id: int) -> EtcdLink:
        """Connect to ``endpoint`` and ask its Status (which names the member).

        ``client_id`` is kept only as the link's: etcd's API carries none.

        Raises:
            OSError: the endpoint cannot be reached.
            ValueError: ``endpoint`` is not host:port, or is an https URL and the connector
                has no TLS.
            ProtocolError: it does not serve etcd's API (Status failed).
        """
        target = grpc_target(endpoint)
        if self._credentials is None and endpoint.lower().startswith("https://"):
            raise ValueError(f"endpoint {endpoint!r} is https: the client needs tls=")
        options = list(_CHANNEL_OPTIONS)
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(target, options=options)
        else:
            channel = grpc.aio.secure_channel(target, self._credentials, options=options)
        try:
            await _wait_ready(channel, endpoint)
            link = EtcdLink(
                endpoint, channel, client_id=client_id, connect_timeout=self.connect_timeout
            )
            try:
                status = await link.status()
            except (EtcdError, LinkClosed) as e:
                raise ProtocolError(f"{endpoint}: Status failed: {e}") from e
        except BaseException:
            await channel.close(None)
            raise
        link._member_id = status.header.member_id
        link.cluster_id = status.header.cluster_id
        return link


class InvalidResponseError(EtcdError):
    """A member's answer this client cannot make sense of (the stream carrying it is ended)."""

    message = "kvapp client: invalid response"
    code = GrpcCode.INTERNAL


class _Stream:
    """One bidirectional stream of a link, with its reader task and a write lock."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.write_lock = asyncio.Lock()
        self.reader: asyncio.Task[None] | None = None
        self.ended = False

    async def write(self, message: object) -> None:
        async with self.write_lock:
            await self.call.write(message)

    def cancel(self) -> None:
        self.ended = True
        self.call.cancel()
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()


class EtcdLink(LinkIdentity):
    """One gRPC channel to one member; see :class:`~kvapp.client.transport.Link`.

    Attributes:
        cluster_id: the cluster id from the member's Status at connect time.
    """

    def __init__(
        self,
        endpoint: str,
        channel: grpc.aio.Channel,
        *,
        client_id: int,
        connect_timeout: float = 5.0,
    ) -> None:
        self._endpoint = endpoint
        self._connect_timeout = connect_timeout
        self._channel = channel
        self._client_id = client_id
        self._member_id = 0
        self.cluster_id = 0
        self._lost: ClientError | None = None
        self._methods: dict[str, Any] = {}
        self._keep_alive: _Stream | None = None
        self._keep_alive_waiters: deque[asyncio.Future[rpc_pb2.LeaseKeepAliveResponse]] = deque()
        self._watch: _Stream | None = None
        self._watch_create_lock = asyncio.Lock()
        self._creating: tuple[asyncio.Future[tuple[int, int]], WatchSink] | None = None
        self._sinks: dict[int, WatchSink] = {}

    # -- plumbing ----------------------------------------------------------------------------

    def _lose(self, error: ClientError) -> None:
        """Mark the link lost: fail what waits on its streams, tell every watch sink."""
        if self._lost is not None:
            return
        self._lost = error
        self._end_keep_alives(LinkClosed(self._endpoint, str(error), sent=True))
        self._end_watches(error)

    async def _ready(self) -> None:
        """Make sure the channel is connected before a call; else the link is lost.

        Raises:
            LinkClosed: (``sent=False``) the link is lost, or the channel cannot connect.
        """
        if self._lost is None:
            state = self._channel.get_state(try_to_connect=False)
            if state is not grpc.ChannelConnectivity.READY:
                try:
                    async with asyncio.timeout(self._connect_timeout):
                        await _wait_ready(self._channel, self._endpoint)
                except (OSError, TimeoutError) as e:
                    self._lose(ClientError(f"connection lost: {e!r}"))
        if self._lost is not None:
            raise LinkClosed(self._endpoint, str(self._lost), sent=False)

    def _failure(self, e: grpc.aio.AioRpcError) -> BaseException:
        """What a failed call raises: the member's EtcdError, or LinkClosed for the transport.

        grpc says "failed to connect to all addresses" only for a call that found no
        connection to go out on (after its transparent retries): that one was not sent.
        """
        code, details = e.code(), e.details() or ""
        if _is_transport_failure(code, details):
            self._lose(ClientError(f"connection lost: {code.name} {details}"))
            sent = not details.startswith(_NOT_CONNECTED)
            return LinkClosed(self._endpoint, f"{code.name}: {details}", sent=sent)
        return error_from_status(code, details)

    def _method(self, path: str, request: type) -> Any:
        method = self._methods.get(path)
        if method is None:
            method = self._channel.unary_unary(
                path,
                request_serializer=request.SerializeToString,  # type: ignore[attr-defined]
                response_deserializer=_RESPONSES[path].FromString,  # type: ignore[attr-defined]
            )
            self._methods[path] = method
        return method

    async def _unary(
        self, path: str, request: object, metadata: tuple[tuple[str, str], ...] = _HAS_LEADER
    ) -> Any:
        await self._ready()
        try:
            return await self._method(path, type(request))(request, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            raise self._failure(e) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._lost is None or (task is not None and task.cancelling()):
                raise  # the caller was cancelled
            # The channel was closed under the call (the link is lost).
            raise LinkClosed(self._endpoint, str(self._lost), sent=True) from None

    # -- calls -------------------------------------------------------------------------------

    async def write(self, request: WriteRequest, *, request_id: int) -> WriteResponse:
        """Send a write (``request_id`` is not sent: etcd has none).

        Raises:
            OutcomeUnknown: the member answered "unavailable" after it may have proposed it.
        """
        path, to_pb, from_pb = _WRITES[type(request)]
        try:
            resp = await self._unary(path, to_pb(request))
        except EtcdError as e:
            if e.code == GrpcCode.UNAVAILABLE and str(e) not in _REFUSED_UNPROPOSED:
                raise OutcomeUnknown(f"{self._endpoint}: {e}") from e
            raise
        self._raft_term = max(self._raft_term, resp.header.raft_term)
        return from_pb(resp)

    async def range(self, request: RangeRequest) -> RangeResponse:
        """Send a read (a serializable one does not need the member to know a leader)."""
        metadata = _NONE if request.serializable else _HAS_LEADER
        resp = await self._unary("/etcdserverpb.KV/Range", conv.range_to_pb(request), metadata)
        return conv.range_response_from_pb(resp)

    async def lease_time_to_live(self, lease_id: int, *, keys: bool) -> LeaseTimeToLiveResponse:
        """A lease's remaining time (the member forwards it to the leader).

        Raises:
            LeaseNotFoundError: the lease does not exist (etcd answers TTL -1).
        """
        resp = await self._unary(
            "/etcdserverpb.Lease/LeaseTimeToLive",
            rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys),
        )
        if resp.TTL == -1 and resp.grantedTTL == 0:
            raise LeaseNotFoundError(f"lease {lease_id:x}")
        return LeaseTimeToLiveResponse(resp.ID, resp.TTL, resp.grantedTTL, tuple(resp.keys))

    async def leases(self) -> list[int]:
        """Every lease id."""
        resp = await self._unary("/etcdserverpb.Lease/LeaseLeases", rpc_pb2.LeaseLeasesRequest())
        return [lease.ID for lease in resp.leases]

    async def member_list(self) -> list[MemberInfo]:
        """The members (as the member knows them)."""
        resp = await self._unary(
            "/etcdserverpb.Cluster/MemberList", rpc_pb2.MemberListRequest(), _NONE
        )
        return [conv.member_from_pb(m) for m in resp.members]

    async def member_add(self, peer_urls: tuple[str, ...], *, is_learner: bool) -> MemberInfo:
        """Add a member."""
        resp = await self._unary(
            "/etcdserverpb.Cluster/MemberAdd",
            rpc_pb2.MemberAddRequest(peerURLs=list(peer_urls), isLearner=is_learner),
        )
        return conv.member_from_pb(resp.member)

    async def member_remove(self, member_id: int) -> None:
        """Remove a member."""
        await self._unary(
            "/etcdserverpb.Cluster/MemberRemove", rpc_pb2.MemberRemoveRequest(ID=member_id)
        )

    async def member_promote(self, member_id: int) -> None:
        """Promote a learner."""
        await self._unary(
            "/etcdserverpb.Cluster/MemberPromote", rpc_pb2.MemberPromoteRequest(ID=member_id)
        )

    async def member_update(self, member_id: int, peer_urls: tuple[str, ...]) -> None:
        """Give a member new peer URLs."""
        await self._unary(
            "/etcdserverpb.Cluster/MemberUpdate",
            rpc_pb2.MemberUpdateRequest(ID=member_id, peerURLs=list(peer_urls)),
        )

    async def alarm(self, action: AlarmAction, member_id: int, alarm: AlarmType) -> AlarmResponse:
        """List, raise or clear alarms."""
        resp = await self._unary(
            "/etcdserverpb.Maintenance/Alarm",
            rpc_pb2.AlarmRequest(action=int(action), memberID=member_id, alarm=int(alarm)),  # type: ignore[arg-type]
        )
        return AlarmResponse(
            AlarmMember(a.memberID, AlarmType(a.alarm))
            for a in resp.alarms
            if a.alarm in AlarmType._value2member_map_
        )

    async def status(self) -> StatusInfo:
        """The member's status."""
        resp = await self._unary("/etcdserverpb.Maintenance/Status", rpc_pb2.StatusRequest(), _NONE)
        return StatusInfo(
            header=conv.header_from_pb(resp.header),
            version=resp.version,
            leader=resp.leader,
            raft_index=resp.raftIndex,
            raft_term=resp.raftTerm,
            raft_applied_index=resp.raftAppliedIndex,
            is_learner=resp.isLearner,
            errors=tuple(resp.errors),
            db_size=resp.dbSize,
        )

    async def snapshot(self, sink: Callable[[bytes], object], *, linearizable: bool) -> int:
        """Stream the member's snapshot into ``sink``; returns its size (``linearizable``: unused).

        An exception from ``sink`` cancels the stream and ends the call with it.
        """
        await self._ready()
        call = self._channel.unary_stream(
            "/etcdserverpb.Maintenance/Snapshot",
            request_serializer=rpc_pb2.SnapshotRequest.SerializeToString,
            response_deserializer=rpc_pb2.SnapshotResponse.FromString,
        )(rpc_pb2.SnapshotRequest())
        received = 0
        try:
            async for piece in call:
                received += len(piece.blob)
                sink(piece.blob)
        except grpc.aio.AioRpcError as e:
            raise self._failure(e) from None
        finally:
            call.cancel()
        return received

    # -- lease keep-alive stream -------------------------------------------------------------

    async def lease_keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        """Renew a lease on the link's keep-alive stream (the member forwards it to the leader).

        Answers come in the order of the requests. A caller cancelled while writing its
        request cancels the stream (grpc does), so no answer is ever matched to the wrong one.

        Raises:
            LeaseNotFoundError: the lease does not exist (etcd answers TTL 0).
        """
        await self._ready()
        stream = self._keep_alive
        if stream is None or stream.ended:
            stream = self._open_stream(
                "/etcdserverpb.Lease/LeaseKeepAlive",
                rpc_pb2.LeaseKeepAliveRequest,
                rpc_pb2.LeaseKeepAliveResponse,
            )
            stream.reader = asyncio.create_task(self._read_keep_alives(stream))
            self._keep_alive = stream
        waiter: asyncio.Future[rpc_pb2.LeaseKeepAliveResponse] = (
            asyncio.get_running_loop().create_future()
        )
        async with stream.write_lock:
            if stream.ended:
                raise LinkClosed(self._endpoint, "the keep-alive stream ended", sent=False)
            self._keep_alive_waiters.append(waiter)
            try:
                await stream.call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
            except _WRITE_FAILED:
                if not waiter.done():  # the reader reports the cause to the others
                    waiter.set_exception(
                        LinkClosed(self._endpoint, "the keep-alive stream failed", sent=True)
                    )
            except asyncio.CancelledError:
                waiter.cancel()
                raise
        resp = await waiter
        if lease_id != resp.ID:
            error = ProtocolError(f"{self._endpoint}: keep-alive of {lease_id:x} answered for "
                                  f"{resp.ID:x}")  # fmt: skip
            self._lose(error)
            raise LinkClosed(self._endpoint, str(error), sent=True)
        if resp.TTL <= 0:
            raise LeaseNotFoundError(f"lease {lease_id:x}")
        return LeaseKeepAliveResponse(resp.ID, resp.TTL, 0)

    def _open_stream(self, path: str, request: type, response: type) -> _Stream:
        call = self._channel.stream_stream(
            path,
            request_serializer=request.SerializeToString,  # type: ignore[attr-defined]
            response_deserializer=response.FromString,  # type: ignore[attr-defined]
        )(metadata=_HAS_LEADER)
        return _Stream(call)

    def _stream_failure(self, stream: _Stream, e: grpc.aio.AioRpcError) -> BaseException:
        """How a stream ended: cancelled here (the stream only), or as :meth:`_failure` says."""
        if stream.ended or (e.code() == grpc.StatusCode.CANCELLED and stream.call.cancelled()):
            return LinkClosed(self._endpoint, "the stream was cancelled", sent=True)
        return self._failure(e)

    async def _read_keep_alives(self, stream: _Stream) -> None:
        error: BaseException
        try:
            while True:
                resp = await stream.call.read()
                if resp is grpc.aio.EOF:
                    error = LinkClosed(self._endpoint, "the keep-alive stream ended", sent=True)
                    break
                if self._keep_alive is stream and self._keep_alive_waiters:
                    waiter = self._keep_alive_waiters.popleft()
                    if not waiter.done():  # else its caller gave up
                        waiter.set_result(resp)
        except grpc.aio.AioRpcError as e:
            error = self._stream_failure(stream, e)
        except asyncio.CancelledError:
            error = LinkClosed(self._endpoint, "closed by the client", sent=True)
        if self._keep_alive is stream:
            self._end_keep_alives(error)

    def _end_keep_alives(self, error: BaseException) -> None:
        stream, self._keep_alive = self._keep_alive, None
        waiters, self._keep_alive_waiters = self._keep_alive_waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
        if stream is not None:
            stream.cancel()

    # -- watch stream ------------------------------------------------------------------------

    async def watch(self, spec: WatchSpec, sink: WatchSink) -> WatchStarted:
        """Create a watcher on the link's watch stream, one create at a time.

        The member picks the watch id and answers creates in order, so the next "created"
        response is this create's. A caller that gives up while its create is pending ends the
        stream (its other watchers are told the link is lost, and resume), so a late answer is
        never taken for another create's.

        Raises:
            EtcdError: the member refused it (INVALID_ARGUMENT with its reason, e.g. an empty
                range), or the stream failed with an etcd error (e.g. "no leader").
            LinkClosed: the connection was lost.
        """
        async with self._watch_create_lock:
            await self._ready()
            stream = self._watch
            if stream is None or stream.ended:
                stream = self._open_stream(
                    "/etcdserverpb.Watch/Watch", rpc_pb2.WatchRequest, rpc_pb2.WatchResponse
                )
                stream.reader = asyncio.create_task(self._read_watches(stream))
                self._watch = stream
            created: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
            self._creating = (created, sink)
            request = rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(
                    key=spec.key,
                    range_end=spec.range_end,
                    start_revision=spec.start_revision,
                    progress_notify=spec.progress_notify,
                    filters=[int(f) for f in spec.filters],  # type: ignore[misc]
                    prev_kv=spec.prev_kv,
                )
            )
            try:
                try:
                    await stream.write(request)
                except _WRITE_FAILED:
                    if not created.done():  # the reader reports the cause to the others
                        created.set_exception(
                            LinkClosed(self._endpoint, "the watch stream failed", sent=True)
                        )
                watch_id, revision = await created
            except BaseException:
                if self._is_creating(created):  # abandoned, or the write failed
                    self._creating = None
                    if self._watch is stream:
                        self._end_watches(ClientError("a watch create was abandoned"))
                raise
        return WatchStarted(watch_id, revision)

    def _is_creating(self, created: asyncio.Future[tuple[int, int]]) -> bool:
        return self._creating is not None and self._creating[0] is created

    async def watch_cancel(self, watch_id: int) -> None:
        """Cancel a watcher; its sink is forgotten at once (the member's answer is not awaited)."""
        if self._sinks.pop(watch_id, None) is None:
            return
        stream = self._watch
        if stream is None or stream.ended or self._lost is not None:
            return
        request = rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch_id))
        with contextlib.suppress(*_WRITE_FAILED):
            await stream.write(request)

    async def _read_watches(self, stream: _Stream) -> None:
        error: ClientError | EtcdError
        try:
            while True:
                resp = await stream.call.read()
                if resp is grpc.aio.EOF:
                    error = ClientError("the watch stream ended")
                    break
                if self._watch is stream:
                    self._on_watch_response(stream, resp)
        except grpc.aio.AioRpcError as e:
            failure = self._stream_failure(stream, e)
            error = failure if isinstance(failure, EtcdError) else ClientError(str(failure))
        except asyncio.CancelledError:
            error = ClientError("closed by the client")
        except EtcdError as e:  # an event kvapp cannot represent: this stream is unusable
            log.warning("etcd client: %s sent a bad watch response: %s", self._endpoint, e)
            error = ProtocolError(f"{self._endpoint}: bad watch response: {e}")
        if self._watch is stream:
            self._end_watches(error)

    def _on_watch_response(self, stream: _Stream, resp: rpc_pb2.WatchResponse) -> None:
        if resp.created:
            creating, self._creating = self._creating, None
            if creating is None or creating[0].done():
                raise InvalidResponseError(f"an unexpected created response {resp.watch_id}")
            if resp.canceled:
                reason = resp.cancel_reason or "watch create refused"
                creating[0].set_exception(
                    ErrorResult(GrpcCode.INVALID_ARGUMENT, reason).to_exception()
                )
            else:
                self._sinks[resp.watch_id] = creating[1]
                creating[0].set_result((resp.watch_id, resp.header.revision))
            return
        if resp.watch_id == -1:
            return  # stream-wide progress: never asked for (see the module docstring)
        sink = (
            self._sinks.pop(resp.watch_id, None)
            if resp.canceled
            else self._sinks.get(resp.watch_id)
        )
        if sink is None:
            return  # cancelled here already
        response = conv.watch_response_from_pb(resp)
        try:
            sink.on_watch_response(response)
        except Exception:
            log.exception("etcd client: a watch sink failed")

    def _end_watches(self, error: ClientError | EtcdError) -> None:
        stream, self._watch = self._watch, None
        creating, self._creating = self._creating, None
        if creating is not None and not creating[0].done():
            if isinstance(error, EtcdError):
                creating[0].set_exception(error)
            else:
                creating[0].set_exception(LinkClosed(self._endpoint, str(error), sent=True))
        sinks = list(self._sinks.values())
        self._sinks.clear()
        for sink in sinks:
            try:
                sink.on_link_lost(error)
            except Exception:
                log.exception("etcd client: a watch sink failed")
        if stream is not None:
            stream.cancel()

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channel; pending calls fail, watch sinks are told."""
        tasks = [s.reader for s in (self._keep_alive, self._watch) if s and s.reader]
        self._lose(ClientError("closed by the client"))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Calls still in flight get a moment to end on their own (a call on a dead connection
        # fails by itself, and says whether it went out) before the channel cancels them.
        await self._channel.close(_CLOSE_GRACE)
