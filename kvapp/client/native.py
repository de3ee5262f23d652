"""The native-protocol transport: a :class:`~kvapp.client.transport.Link` over one TCP connection.

The wire format is :mod:`kvapp.server.native`'s. Requests are pipelined: each call queues its
request and a writer task sends everything queued in one frame (as many requests as fit under
the server's ``max_frame_bytes``), so concurrent calls share frames. A reader task matches the
answers by request number and hands watch responses to their sinks.

A request whose body alone would not fit in a frame is refused here with etcd's ``request is too
large``, without sending it; one that fits in a frame but exceeds ``max_request_bytes`` is sent,
and the server refuses it with the same error (the connection stays usable).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Final, TypeVar
from urllib.parse import urlsplit

import cbor2

from kvapp import requests as kvreq
from kvapp.client.errors import ClientError, LinkClosed, ProtocolError
from kvapp.client.transport import LinkIdentity, WatchSink, WatchSpec, WatchStarted
from kvapp.errors import GrpcCode, KvappError, RequestDecodeError, RequestTooLargeError
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
from kvapp.server import native as wire
from kvapp.service import (
    MemberInfo,
    OutcomeUnknown,
    ResponseHeader,
    StatusInfo,
    WriteRequest,
    WriteResponse,
)

__all__ = ["NativeConnector", "NativeLink", "error_from_wire", "parse_endpoint"]

log = logging.getLogger(__name__)

MAX_RECEIVE_FRAME: Final = (1 << 31) - 1
"""The largest frame the client accepts from a server (etcd's clients receive up to 2 GiB)."""

_ITEM_OVERHEAD: Final = 64
_HANDSHAKE_REPLY_MAX: Final = 64 * 1024

_WRITE_RESULTS: Final[dict[type, type]] = {
    PutRequest: PutResponse,
    DeleteRangeRequest: DeleteRangeResponse,
    TxnRequest: TxnResponse,
    CompactRequest: CompactResponse,
    LeaseGrantRequest: LeaseGrantResponse,
    LeaseRevokeRequest: LeaseRevokeResponse,
}

_T = TypeVar("_T")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port``, ``[v6]:port`` or a URL such as ``http://host:port``.

    Raises:
        ValueError: no host or port.
    """
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if not parts.hostname or parts.port is None:
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    return parts.hostname, parts.port


def error_from_wire(code: object, message: object) -> KvappError:
    """The exception an error item stands for: the member's EtcdError class, or OutcomeUnknown.

    Raises:
        RequestDecodeError: ``code`` or ``message`` is malformed.
    """
    if type(code) is not int or type(message) is not str:
        raise RequestDecodeError(f"error item: bad code or message {code!r:.20} {message!r:.60}")
    if code == GrpcCode.UNKNOWN and message == wire.OUTCOME_UNKNOWN_MESSAGE:
        return OutcomeUnknown(message)
    try:
        grpc_code = GrpcCode(code)
    except ValueError:
        grpc_code = GrpcCode.UNKNOWN
    return kvreq.ErrorResult(grpc_code, message).to_exception()


class _Fatal(Exception):
    """The server closed the connection with a connection error."""

    def __init__(self, error: KvappError) -> None:
        super().__init__(str(error))
        self.error = error


class _Pending:
    __slots__ = ("abandoned", "chunks", "future", "op", "sent")

    def __init__(
        self,
        future: asyncio.Future[tuple[ResponseHeader, wire.OpResult]],
        op: wire.Op,
        chunks: Callable[[bytes], object] | None = None,
    ):
        self.future = future
        self.op = op
        self.sent = False
        self.abandoned = False
        self.chunks = chunks  # takes the pieces of a streamed answer


class NativeConnector:
    """Opens :class:`NativeLink` connections.

    Args:
        tls: connect over TLS with this context (:meth:`kvapp.tls.ClientTls.context`); the
            member's certificate must name the endpoint's host.
    """

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls

    async def open_stream(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The byte stream to a member: a TCP connection (over TLS if configured).

        The network seam: a simulation overrides it with in-memory streams.

        Raises:
            OSError: the endpoint cannot be reached.
        """
        return await asyncio.open_connection(host, port, ssl=self.tls)

    async def connect(self, endpoint: str, *, client_id: int) -> NativeLink:
        """Connect to ``endpoint`` and handshake as ``client_id``.

        Raises:
            OSError: the endpoint cannot be reached.
            ValueError: ``endpoint`` is not host:port.
            ProtocolError: the peer does not speak the protocol or refused the handshake
                (an EtcdError it sent is the cause).
        """
        host, port = parse_endpoint(endpoint)
        reader, writer = await self.open_stream(host, port)
        try:
            writer.write(wire.encode_frame([wire.MAGIC, wire.VERSION, client_id]))
            await writer.drain()
            try:
                (n,) = wire.LENGTH.unpack(await reader.readexactly(wire.LENGTH.size))
                if n > _HANDSHAKE_REPLY_MAX:
                    raise ProtocolError(f"{endpoint}: handshake answer of {n} bytes")
                reply = cbor2.loads(await reader.readexactly(n))
            except asyncio.IncompleteReadError:
                raise ProtocolError(f"{endpoint}: closed during the handshake") from None
            except (cbor2.CBORDecodeError, ValueError) as e:
                raise ProtocolError(f"{endpoint}: malformed handshake answer: {e}") from e
            header, max_request, max_frame = _check_hello(endpoint, reply)
        except BaseException:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            raise
        return NativeLink(
            endpoint,
            reader,
            writer,
            client_id=client_id,
            header=header,
            max_request_bytes=max_request,
            max_frame_bytes=max_frame,
        )


def _check_hello(endpoint: str, reply: object) -> tuple[ResponseHeader, int, int]:
    if type(reply) is list and reply and type(reply[0]) is list:
        # The server refused with a connection error, e.g. an unsupported version.
        for item in reply:
            if type(item) is list and len(item) == 3 and item[0] == wire.ITEM_FATAL:
                try:
                    cause = error_from_wire(item[1], item[2])
                except RequestDecodeError:
                    break
                raise ProtocolError(f"{endpoint}: handshake refused: {cause}") from cause
        raise ProtocolError(f"{endpoint}: handshake refused")
    if (
        type(reply) is not list
        or len(reply) != 5
        or reply[0] != wire.MAGIC
        or reply[1] != wire.VERSION
        or type(reply[3]) is not int
        or type(reply[4]) is not int
        or not 0 < reply[3] <= reply[4]
    ):
        raise ProtocolError(f"{endpoint}: not a kvapp native handshake answer: {reply!r:.80}")
    try:
        header = wire.decode_header(reply[2])
    except RequestDecodeError as e:
        raise ProtocolError(f"{endpoint}: {e}") from e
    return header, reply[3], reply[4]


class NativeLink(LinkIdentity):
    """One native-protocol connection; see :class:`~kvapp.client.transport.Link`.

    Attributes:
        frames_sent: frames written after the handshake.
        requests_sent: requests written.
    """

    def __init__(
        self,
        endpoint: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client_id: int,
        header: ResponseHeader,
        max_request_bytes: int,
        max_frame_bytes: int,
    ) -> None:
        self._endpoint = endpoint
        self._client_id = client_id
        self._reader = reader
        self._writer = writer
        self._member_id = header.member_id
        self._raft_term = header.raft_term
        self.cluster_id = header.cluster_id
        self.max_request_bytes = max_request_bytes
        self.max_frame_bytes = max_frame_bytes
        self._req_nos = itertools.count(1)
        self._next_watch_id = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._queue: deque[tuple[int, wire.Op, bytes, _Pending]] = deque()
        self._sinks: dict[int, WatchSink] = {}
        self._wake = asyncio.Event()
        self._lost: ClientError | None = None
        self.frames_sent = 0
        self.requests_sent = 0
        self._reader_task = asyncio.create_task(self._read_loop())
        self._writer_task = asyncio.create_task(self._write_loop())

    # -- calls -------------------------------------------------------------------------------

    async def _call(
        self,
        request: wire.OpRequest,
        request_id: int = 0,
        chunks: Callable[[bytes], object] | None = None,
    ) -> tuple[ResponseHeader, wire.OpResult]:
        if self._lost is not None:
            raise LinkClosed(self._endpoint, str(self._lost), sent=False)
        op = wire.op_of(request)
        body = wire.encode_body(request, request_id)
        if len(body) + _ITEM_OVERHEAD > self.max_frame_bytes:
            raise RequestTooLargeError(f"{len(body)} bytes cannot fit in a frame")
        req_no = next(self._req_nos)
        fut: asyncio.Future[tuple[ResponseHeader, wire.OpResult]] = (
            asyncio.get_running_loop().create_future()
        )
        pending = _Pending(fut, op, chunks)
        self._pending[req_no] = pending
        self._queue.append((req_no, op, body, pending))
        self._wake.set()
        try:
            return await fut
        finally:
            if not fut.done():  # the caller gave up (cancelled): forget the request
                pending.abandoned = True
                if self._pending.get(req_no) is pending:
                    del self._pending[req_no]

    async def _typed(self, request: wire.OpRequest, cls: type[_T], request_id: int = 0) -> _T:
        _, result = await self._call(request, request_id)
        if not isinstance(result, cls):
            raise self._violation(
                f"answer to {type(request).__name__} is a {type(result).__name__}"
            )
        return result

    def _violation(self, what: str) -> LinkClosed:
        """Close the link for a protocol violation; the LinkClosed for the caller to raise."""
        error = ProtocolError(f"{self._endpoint}: {what}")
        self._fail(error)
        link_closed = LinkClosed(self._endpoint, str(error), sent=True)
        link_closed.__cause__ = error
        return link_closed

    async def write(self, request: WriteRequest, *, request_id: int) -> WriteResponse:
        """Send a write under ``request_id``. See the transport contract."""
        result: WriteResponse = await self._typed(
            request, _WRITE_RESULTS[type(request)], request_id
        )
        return result

    async def range(self, request: RangeRequest) -> RangeResponse:
        """Send a read."""
        return await self._typed(request, RangeResponse)

    async def lease_keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        """Renew a lease."""
        return await self._typed(wire.LeaseKeepAliveRequest(lease_id), LeaseKeepAliveResponse)

    async def lease_time_to_live(self, lease_id: int, *, keys: bool) -> LeaseTimeToLiveResponse:
        """A lease's remaining time."""
        return await self._typed(
            wire.LeaseTimeToLiveRequest(lease_id, keys), LeaseTimeToLiveResponse
        )

    async def leases(self) -> list[int]:
        """Every lease id."""
        result = await self._typed(wire.LeaseLeasesRequest(), wire.LeaseLeasesResult)
        return list(result.ids)

    async def member_list(self) -> list[MemberInfo]:
        """The members."""
        result = await self._typed(wire.MemberListRequest(), wire.MemberListResult)
        return list(result.members)

    async def member_add(self, peer_urls: tuple[str, ...], *, is_learner: bool) -> MemberInfo:
        """Add a member."""
        request = wire.MemberAddRequest(peer_urls, is_learner)
        return (await self._typed(request, wire.MemberAddResult)).member

    async def member_remove(self, member_id: int) -> None:
        """Remove a member."""
        await self._typed(wire.MemberRemoveRequest(member_id), wire.EmptyResult)

    async def member_promote(self, member_id: int) -> None:
        """Promote a learner."""
        await self._typed(wire.MemberPromoteRequest(member_id), wire.EmptyResult)

    async def member_update(self, member_id: int, peer_urls: tuple[str, ...]) -> None:
        """Give a member new peer URLs."""
        await self._typed(kvreq.MemberUpdateRequest(member_id, peer_urls), wire.EmptyResult)

    async def alarm(
        self, action: kvreq.AlarmAction, member_id: int, alarm: kvreq.AlarmType
    ) -> kvreq.AlarmResponse:
        """List, raise or clear alarms."""
        request = kvreq.AlarmRequest(action, member_id, alarm)
        return await self._typed(request, kvreq.AlarmResponse)

    async def status(self) -> StatusInfo:
        """The member's status."""
        return await self._typed(wire.StatusRequest(), StatusInfo)

    async def snapshot(self, sink: Callable[[bytes], object], *, linearizable: bool) -> int:
        """Stream the member's snapshot file into ``sink``; returns its size.

        ``sink`` runs in the link's reader, so a slow sink slows the stream (and this link).
        An exception from ``sink`` ends the call with it; the rest of the stream is dropped.
        """
        received = 0

        def piece(data: bytes) -> None:
            nonlocal received
            received += len(data)
            sink(data)

        _, result = await self._call(wire.SnapshotRequest(linearizable), chunks=piece)
        if not isinstance(result, wire.SnapshotResult) or result.size != received:
            raise self._violation(f"snapshot of {received} bytes answered with {result!r:.60}")
        return received

    async def watch(self, spec: WatchSpec, sink: WatchSink) -> WatchStarted:
        """Create a watcher under a link-chosen id; ``sink`` is registered before sending."""
        watch_id = next(self._next_watch_id)
        self._sinks[watch_id] = sink
        request = wire.WatchCreateRequest(
            key=spec.key,
            range_end=spec.range_end,
            start_revision=spec.start_revision,
            filters=spec.filters,
            prev_kv=spec.prev_kv,
            progress_notify=spec.progress_notify,
            watch_id=watch_id,
        )
        try:
            header, result = await self._call(request)
        except BaseException:
            self._sinks.pop(watch_id, None)
            raise
        if not isinstance(result, wire.WatchCreateResult) or result.watch_id != watch_id:
            raise self._violation(f"bad answer to a watch create: {result!r:.60}")
        return WatchStarted(watch_id, header.revision)

    async def watch_cancel(self, watch_id: int) -> None:
        """Cancel a watcher; its sink is forgotten at once."""
        if self._sinks.pop(watch_id, None) is None:
            return
        await self._typed(wire.WatchCancelRequest(watch_id), wire.WatchCancelResult)

    async def close(self) -> None:
        """Close the connection; pending calls fail with LinkClosed (``sent`` as it was)."""
        self._fail(ClientError("closed by the client"))
        tasks = [self._reader_task, self._writer_task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    # -- the connection's tasks --------------------------------------------------------------

    def _fail(self, error: ClientError) -> None:
        """Mark the link lost: fail every pending call, tell every sink, close the socket."""
        if self._lost is not None:
            return
        self._lost = error
        reason = str(error)
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(LinkClosed(self._endpoint, reason, sent=pending.sent))
        self._pending.clear()
        self._queue.clear()
        sinks = list(self._sinks.values())
        self._sinks.clear()
        for sink in sinks:
            try:
                sink.on_link_lost(error)
            except Exception:
                log.exception("native client: a watch sink failed")
        self._wake.set()
        self._writer.close()
        current = asyncio.current_task()
        if current is not self._writer_task:
            self._writer_task.cancel()

    async def _write_loop(self) -> None:
        queue = self._queue
        writer = self._writer
        try:
            while self._lost is None:
                await self._wake.wait()
                self._wake.clear()
                items: list[list[object]] = []
                size = 16
                while queue:
                    req_no, op, body, pending = queue[0]
                    if pending.abandoned:
                        queue.popleft()
                        continue
                    cost = len(body) + _ITEM_OVERHEAD
                    if items and size + cost > self.max_frame_bytes:
                        break
                    queue.popleft()
                    items.append([req_no, op.value, body])
                    pending.sent = True
                    size += cost
                if items and self._lost is None:
                    writer.write(wire.encode_frame(items))
                    self.frames_sent += 1
                    self.requests_sent += len(items)
                    if queue:
                        self._wake.set()
                    await writer.drain()
        except (ConnectionError, OSError) as e:
            self._fail(ClientError(f"cannot send: {e}"))

    async def _read_loop(self) -> None:
        reader = self._reader
        error: ClientError
        try:
            while True:
                (n,) = wire.LENGTH.unpack(await reader.readexactly(wire.LENGTH.size))
                if n > MAX_RECEIVE_FRAME:
                    raise RequestDecodeError(f"frame of {n} bytes")
                payload = await reader.readexactly(n)
                try:
                    items = cbor2.loads(payload)
                except Exception as e:  # cbor2 raises many exception types on bad input
                    raise RequestDecodeError(f"malformed CBOR: {e}") from e
                if type(items) is not list:
                    raise RequestDecodeError("a frame is not an array")
                for item in items:
                    self._on_item(item)
        except asyncio.IncompleteReadError:
            error = ClientError("connection closed by the server")
        except (ConnectionError, OSError) as e:
            error = ClientError(f"connection lost: {e}")
        except RequestDecodeError as e:
            log.warning("native client: %s sent a malformed frame: %s", self._endpoint, e)
            error = ProtocolError(f"malformed answer: {e}")
        except _Fatal as f:
            log.warning("native client: %s closed the connection: %s", self._endpoint, f)
            error = ClientError(f"the server closed the connection: {f}")
        except asyncio.CancelledError:
            error = ClientError("closed by the client")
            self._fail(error)
            raise
        self._fail(error)

    def _on_item(self, item: object) -> None:
        if type(item) is not list or not item or type(item[0]) is not int:
            raise RequestDecodeError(f"not an answer item: {item!r:.40}")
        kind = item[0]
        if kind in (wire.ITEM_OK, wire.ITEM_ERROR):
            if len(item) != 4 or type(item[1]) is not int:
                raise RequestDecodeError(f"malformed answer item {item!r:.60}")
            pending = self._pending.pop(item[1], None)
            if kind == wire.ITEM_OK:
                header = wire.decode_header(item[2])
                self._raft_term = max(self._raft_term, header.raft_term)
                if pending is None:
                    return  # abandoned by its caller
                outcome: tuple[ResponseHeader, wire.OpResult] | BaseException = (
                    header,
                    wire.decode_result(pending.op, header, item[3]),
                )
            else:
                outcome = error_from_wire(item[2], item[3])
                if pending is None:
                    return
            if pending.future.done():
                return
            if isinstance(outcome, BaseException):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        elif kind == wire.ITEM_WATCH:
            response = wire.decode_watch_response(item)
            if response.watch_id == -1:  # stream-wide progress: every watcher is up to date
                sinks = list(self._sinks.values())
            else:
                sink = (
                    self._sinks.pop(response.watch_id, None)
                    if response.canceled
                    else self._sinks.get(response.watch_id)
                )
                sinks = [] if sink is None else [sink]
            for s in sinks:
                try:
                    s.on_watch_response(response)
                except Exception:
                    log.exception("native client: a watch sink failed")
        elif kind == wire.ITEM_CHUNK:
            if len(item) != 3 or type(item[1]) is not int or type(item[2]) is not bytes:
                raise RequestDecodeError(f"malformed stream item {item!r:.60}")
            pending = self._pending.get(item[1])
            if pending is None or pending.future.done():
                return  # abandoned by its caller, or its sink failed
            if pending.chunks is None:
                raise RequestDecodeError(f"a stream piece for request {item[1]}, which streams")
            try:
                pending.chunks(item[2])
            except Exception as e:  # noqa: BLE001 - the caller's sink: its error ends the call
                del self._pending[item[1]]
                pending.future.set_exception(e)
        elif kind == wire.ITEM_FATAL:
            if len(item) != 3:
                raise RequestDecodeError(f"malformed connection error {item!r:.60}")
            raise _Fatal(error_from_wire(item[1], item[2]))
        else:
            raise RequestDecodeError(f"unknown answer kind {kind!r:.20}")
