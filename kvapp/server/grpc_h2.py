"""gRPC over HTTP/2 on the member's own event loop, with the ``h2`` protocol state machine.

Why not grpcio's server: it runs threads of its own beside the loop, and on a member they fight
the loop for the GIL. Measured on a 1-member kvapp (fsync off, goload puts at 64 in flight,
same machine, same run): grpcio's asyncio server cost about 450 µs of CPU per put and served
1,500-2,200 puts/s; this server about 175 µs and 5,000 puts/s, where the member's own work is
about 40 µs. Clients are unaffected: they speak gRPC over HTTP/2 either way (grpc-go's etcdctl,
grpcio, aetcd), and kvapp still uses grpcio as a *client* (lease calls forwarded to the leader).

The server takes grpcio's handler shape (``grpc.RpcMethodHandler``: unary-unary, unary-stream,
stream-stream, with request deserializer and response serializer), so the servicers are
unchanged; their context offers what they use, :meth:`ServicerContext.invocation_metadata` and
:meth:`ServicerContext.abort`. What the wire gets, as grpc-go's server sends it (etcd's):

- a response is ``:status 200`` and ``content-type: application/grpc`` headers, its messages
  (5-byte prefix: compressed flag and length), then trailers with ``grpc-status`` and a
  percent-encoded ``grpc-message``; a call that fails before any message gets one header block
  with the status (a "trailers-only" response);
- an unknown service or method: UNIMPLEMENTED "unknown service S" / "unknown method M for
  service S"; a message above the receive limit: RESOURCE_EXHAUSTED "grpc: received message
  larger than max (N vs. M)"; a compressed message whose ``grpc-encoding`` is not gzip:
  UNIMPLEMENTED; a ``grpc-timeout`` that passes: DEADLINE_EXCEEDED, the handler cancelled;
- before any handler runs, requests grpc-go refuses are refused with its HTTP status, gRPC
  status and text: a ``:method`` other than POST, a content-type other than
  ``application/grpc[+codec]``, a malformed ``grpc-timeout`` or ``-bin`` metadata value;
- a client's RST_STREAM (a cancelled call, a deadline passed on its side) cancels the handler;
- flow control both ways: a stream's requests are acknowledged (WINDOW_UPDATE) only while its
  handler has read all but :data:`STREAM_BUFFER` bytes of them and the connection's streams
  all but :data:`CONNECTION_BUFFER`, so a client that floods streams their handlers read
  slowly is held back by HTTP/2 and never buffered without bound; responses wait for the
  client's windows, and a client that does not read what it is sent (h2's own answers to its
  PINGs included) is not read from until it does;
- a gzip-compressed request is inflated no further than the receive limit;
- a stream beyond the advertised concurrent-stream limit (1,024) is refused alone
  (RST_STREAM REFUSED_STREAM, as RFC 9113 requires), the connection's other calls go on;
- HTTP/2 errors (garbage on the port, a bad preface, protocol violations) close that
  connection only; PINGs are answered (h2 does it) at any rate, as etcd permits.

:meth:`GrpcH2Server.stop` sends GOAWAY, lets calls in progress finish for ``grace`` seconds,
then cancels the rest and closes every connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final, NoReturn, cast
from urllib.parse import quote

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hyperframe.frame

__all__ = ["CONNECTION_BUFFER", "STREAM_BUFFER", "Aborted", "GrpcH2Server", "ServicerContext"]

log = logging.getLogger(__name__)

STREAM_BUFFER: Final = 4 << 20
"""Bytes of whole requests a stream may hold unread by its handler before its window stays
shut. A message being received is not counted: its size is checked against the limit first."""

CONNECTION_BUFFER: Final = 32 << 20
"""Bytes of whole requests all of a connection's streams may hold unread before every one of
their windows stays shut (the connection's own window is given back as data arrives, so one
slow stream never blocks the others)."""

_CONN_WINDOW: Final = 16 << 20
_READ_BUFFER: Final = 64 << 10
_INITIAL_STREAM_WINDOW: Final = 1 << 18
_MAX_STREAMS: Final = 1 << 10
_WINDOW_UPDATE_MIN: Final = _INITIAL_STREAM_WINDOW // 2
"""A stream's window is given back in steps of at least this: a unary call's few hundred
bytes then cost no WINDOW_UPDATE frame (grpc-go ends its request with a separate frame)."""

_CONFIG: Final = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    # Our headers are fixed and valid; a client's are read field by field (only :path,
    # grpc-timeout, grpc-encoding and metadata matter), and h2's checks of them cost about a
    # sixth of a call.
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
)
_RESPONSE: Final = ((b":status", b"200"), (b"content-type", b"application/grpc"))
_OK: Final = ((b"grpc-status", b"0"),)
_TIMEOUT_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Request headers that are transport, not metadata (grpcio leaves them out of the metadata too).
_NOT_METADATA: Final = frozenset(
    (b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding")
)


class _Stream(h2.stream.H2Stream):
    """h2's stream, for which a malformed request is an error of this stream only.

    RFC 9113 (8.1.1) makes a malformed request (a bad header field, a body that does not match
    its content-length) a stream error of type PROTOCOL_ERROR; h2 raises a ProtocolError that
    closes the connection, with every call on it. Here the stream resets itself and raises
    h2's own StreamClosedError for a stream closed by reset, which h2 turns into RST_STREAM
    (crediting the connection's flow-control window for a dropped DATA frame). h2 4 internals.
    """

    malformed: list[tuple[int, str]] | None = None  # the connection's list, set on creation

    def receive_headers(self, *args: Any, **kwargs: Any) -> Any:
        return self._malformed_resets(super().receive_headers, *args, **kwargs)

    def receive_data(self, *args: Any, **kwargs: Any) -> Any:
        return self._malformed_resets(super().receive_data, *args, **kwargs)

    def _malformed_resets(self, receive: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return receive(*args, **kwargs)
        except h2.exceptions.StreamClosedError:
            raise
        except h2.exceptions.ProtocolError as e:
            raise self._reset_malformed(e) from None

    def _reset_malformed(self, e: Exception) -> h2.exceptions.StreamClosedError:
        self.state_machine.process_input(h2.stream.StreamInputs.SEND_RST_STREAM)
        if self.malformed is not None:
            self.malformed.append((self.stream_id, str(e)))
        closed = h2.exceptions.StreamClosedError(self.stream_id)
        closed.error_code = h2.errors.ErrorCodes.PROTOCOL_ERROR
        return closed


class _H2Server(h2.connection.H2Connection):
    """h2's connection, refusing one stream over the advertised limit instead of the connection.

    RFC 9113 (5.1.2) makes a HEADERS frame that exceeds the concurrent stream limit a stream
    error (REFUSED_STREAM: the client may retry it); h2 raises before it has decoded the header
    block and closes the connection, with every call on it. Here the block is decoded (HPACK's
    state must follow every block) and only that stream is reset. Relies on h2 4's internals
    (``_receive_headers_frame``, ``_closed_streams``); the test of it fails if they change.
    Its streams are :class:`_Stream` s (``_begin_new_stream``), so that a malformed request
    resets its own stream only.
    """

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config)
        self.malformed: list[tuple[int, str]] = []
        """Streams reset as malformed since the caller last emptied it: (stream id, reason)."""

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> h2.stream.H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = _Stream
        cast("_Stream", stream).malformed = self.malformed
        return stream

    def _receive_headers_frame(self, frame: Any) -> Any:
        sid = frame.stream_id
        if (
            sid not in self.streams
            and sid % 2 == 1
            and sid > self.highest_inbound_stream_id
            and self.open_inbound_streams >= self.local_settings.max_concurrent_streams
        ):
            self.state_machine.process_input(h2.connection.ConnectionInputs.RECV_HEADERS)
            h2.connection._decode_headers(self.decoder, frame.data)
            self.highest_inbound_stream_id = sid
            self._closed_streams[sid] = h2.stream.StreamClosedBy.SEND_RST_STREAM
            refusal = hyperframe.frame.RstStreamFrame(sid)
            refusal.error_code = h2.errors.ErrorCodes.REFUSED_STREAM
            return [refusal], []
        return super()._receive_headers_frame(frame)


class Aborted(grpc.aio.AbortError):  # type: ignore[misc]
    """What :meth:`ServicerContext.abort` raises: a servicer ended its RPC with this status.

    An ``AbortError``, so the servicers' ``is_abort`` lets it through as it lets grpcio's own.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ServicerContext:
    """The part of ``grpc.aio.ServicerContext`` the servicers use.

    This server's calls get one, and so do the HTTP/JSON gateway's.
    """

    __slots__ = ("_metadata",)

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The call's metadata (request headers that are not HTTP/2's or gRPC's own)."""
        return self._metadata

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()
    ) -> NoReturn:
        """End the call with ``code`` and ``details``.

        Raises:
            Aborted: always.
        """
        raise Aborted(code, details)


# gRPC's percent-encoding of grpc-message: printable ASCII except "%" stays as it is.
_MESSAGE_SAFE: Final = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _status_headers(code: grpc.StatusCode, details: str) -> list[tuple[bytes, bytes]]:
    out = [(b"grpc-status", b"%d" % code.value[0])]
    if details:
        out.append((b"grpc-message", quote(details, safe=_MESSAGE_SAFE).encode()))
    return out


def _timeout(value: bytes) -> float:
    """A ``grpc-timeout`` value in seconds.

    Raises:
        ValueError: malformed, with grpc-go's whole status text.
    """
    text = value.decode("latin-1")
    why = ""
    if len(text) < 2:
        why = f"transport: timeout string is too short: {_go_quote(text)}"
    elif len(text) > 9:  # eight digits and the unit
        why = f"transport: timeout string is too long: {_go_quote(text)}"
    elif text[-1] not in _TIMEOUT_UNITS:
        why = f"transport: timeout unit is not recognized: {_go_quote(text)}"
    elif not text[:-1].isascii() or not text[:-1].isdigit():
        why = f"strconv.ParseInt: parsing {_go_quote(text[:-1])}: invalid syntax"
    if why:
        raise ValueError(f"malformed grpc-timeout: {why}")
    return int(text[:-1]) * _TIMEOUT_UNITS[text[-1]]


def _go_quote(text: str) -> str:
    """``text`` as Go's ``%q`` prints it, for the printable ASCII that error texts carry."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _binary_header(name: str, value: bytes) -> bytes:
    """A ``-bin`` metadata value decoded (base64, padded or not).

    Raises:
        ValueError: not base64, with grpc-go's whole status text.
    """
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
    except ValueError:
        bad = next((i for i, c in enumerate(value) if c not in _BASE64), len(value))
        raw = value.decode("latin-1")
        raise ValueError(
            f"malformed binary metadata {_go_quote(raw)} in header {_go_quote(name)}: "
            f"illegal base64 data at input byte {bad}"
        ) from None


_BASE64: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _is_grpc(content_type: bytes) -> bool:
    """``application/grpc``, alone or with a ``+codec`` or ``;parameters`` (as grpc-go accepts)."""
    value = content_type.lower()
    return value == b"application/grpc" or (
        value.startswith(b"application/grpc") and value[16:17] in (b"+", b";")
    )


class _Call:
    """One stream: its handler task, the requests it has not read, its flow-control state."""

    __slots__ = (
        "buffer",
        "buffered",
        "conn",
        "deadline",
        "ended",
        "gzip",
        "headers_sent",
        "inbox",
        "method",
        "reset",
        "sid",
        "task",
        "unacked",
        "wake",
    )

    def __init__(self, conn: _Connection, sid: int, method: grpc.RpcMethodHandler) -> None:
        self.conn = conn
        self.sid = sid
        self.method = method
        self.buffer = bytearray()  # bytes of the message being received
        self.buffered = 0  # request bytes received and not yet read by the handler
        self.unacked = 0  # of those, bytes whose stream window is not yet given back
        self.inbox: deque[tuple[bytes, int]] = deque()  # whole messages not yet read, wire sizes
        self.ended = False  # the client half-closed
        self.gzip = False  # the client's grpc-encoding is gzip
        self.reset = False  # the stream is gone (reset by either side, or finished)
        self.headers_sent = False
        self.wake: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.deadline: asyncio.TimerHandle | None = None

    def received(self, data: bytes, flow: int) -> None:
        self.buffered += len(data)
        self.conn.buffered += len(data)
        self.buffer += data
        limit = self.conn.server.max_receive
        while len(self.buffer) >= 5:
            size = int.from_bytes(self.buffer[1:5], "big")
            if size > limit:
                self.fail(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"grpc: received message larger than max ({size} vs. {limit})",
                )
                return
            if len(self.buffer) < 5 + size:
                break
            flag = self.buffer[0]
            payload = bytes(self.buffer[5 : 5 + size])
            del self.buffer[: 5 + size]
            if flag:
                if not self.gzip:
                    self.fail(
                        grpc.StatusCode.INTERNAL,
                        "grpc: compressed flag set with identity or empty encoding",
                    )
                    return
                payload = self.conn.decompress(self, payload)
                if self.reset:
                    return
            self.inbox.append((payload, 5 + size))
        self.give_window(flow)
        self.notify()

    def give_window(self, flow: int) -> None:
        """Give ``flow`` bytes back to the client's stream window.

        Held back while the handler has more than :data:`STREAM_BUFFER` bytes unread.
        """
        self.unacked += flow
        if not self.unacked or self.ended or self.reset:
            return
        if self.unacked < _WINDOW_UPDATE_MIN:
            return  # the client has half its window or more left: no frame needed yet
        unread = self.buffered - len(self.buffer)  # whole messages the handler has not read
        if unread <= STREAM_BUFFER and self.conn.buffered <= CONNECTION_BUFFER:
            n, self.unacked = self.unacked, 0
            with contextlib.suppress(h2.exceptions.H2Error):
                self.conn.h2.increment_flow_control_window(n, self.sid)
            self.conn.flush_soon()

    def notify(self) -> None:
        wake, self.wake = self.wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def next_request(self) -> bytes | None:
        """The next whole request, or None once the client half-closed after its last."""
        while not self.inbox:
            if self.ended or self.reset:
                if self.buffer and not self.reset:
                    self.fail(grpc.StatusCode.INTERNAL, "grpc: client sent a partial message")
                return None
            self.wake = asyncio.get_running_loop().create_future()
            await self.wake
        payload, size = self.inbox.popleft()
        self.buffered -= size
        self.conn.consumed(size)
        self.give_window(0)
        return payload

    async def requests(self) -> AsyncIterator[Any]:
        while (payload := await self.next_request()) is not None:
            yield self.decode(payload)

    def decode(self, payload: bytes) -> Any:
        decode = self.method.request_deserializer
        if decode is None:
            return payload
        try:
            return decode(payload)
        except Exception as e:  # noqa: BLE001 - the client's bytes, not our fault
            raise Aborted(
                grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {e}"
            ) from None

    def fail(self, code: grpc.StatusCode, details: str) -> None:
        """End the call with ``code`` now, from the connection's side (bad input)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.conn.finish(self, code, details)


class _Connection(asyncio.BufferedProtocol):
    """One client connection: h2's state machine, its calls, and what waits on windows.

    A buffered protocol, reading into one buffer it keeps: a plain protocol gets a fresh
    256 KiB ``bytes`` per read from asyncio, which under ``kvapp serve``'s allocator settings
    (:mod:`kvapp.memtrim`) is an mmap and an munmap per read.
    """

    def __init__(self, server: GrpcH2Server) -> None:
        self.server = server
        self.h2 = _H2Server(_CONFIG)
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, _Call] = {}
        self.window_waiters: list[asyncio.Future[None]] = []
        self.flush_pending = False
        self.closed = False
        self.stopping = False
        self.conn_unacked = 0
        self.buffered = 0  # request bytes received on every stream and not yet read
        self.paused = False
        self.resume: asyncio.Future[None] | None = None
        self.peer = "?"
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.read_buffer = memoryview(bytearray(_READ_BUFFER))

    # -- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast("asyncio.Transport", transport)  # uvloop's do not subclass it
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.server.connections.add(self)
        codes = h2.settings.SettingCodes
        # Initial values, in force from the first frame on (h2 reads them as it opens each
        # stream). The frame size and header list size stay at h2's defaults: it sized its
        # frame reader and header decoder from those when it was made.
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: _MAX_STREAMS,
                codes.INITIAL_WINDOW_SIZE: _INITIAL_STREAM_WINDOW,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_CONN_WINDOW - 65_535)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        self.server.connections.discard(self)
        for call in list(self.calls.values()):
            call.reset = True
            call.notify()
            if call.task is not None and not call.task.done():
                call.task.cancel()
            self.forget(call)
        self.calls.clear()
        self.wake_writers()
        if self.resume is not None and not self.resume.done():
            self.resume.set_result(None)

    def consumed(self, size: int) -> None:
        """A handler read ``size`` bytes: give windows held for the connection's budget back."""
        before = self.buffered
        self.buffered -= size
        if before > CONNECTION_BUFFER >= self.buffered:
            for call in list(self.calls.values()):
                if call.unacked:
                    call.give_window(0)

    def pause_writing(self) -> None:
        # The client does not read what we send, including h2's own answers to its PINGs and
        # SETTINGS: read no more from it until it does, so our output cannot grow unbounded.
        self.paused = True
        if not self.closed and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if not self.closed and self.transport is not None:
            self.transport.resume_reading()
        resume, self.resume = self.resume, None
        if resume is not None and not resume.done():
            resume.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except Exception as e:  # noqa: BLE001 - any bad input closes this connection only
            log.info("gRPC connection from %s: HTTP/2 error, closing it: %s", self.peer, e)
            self.flush()
            self.close()
            return
        for ev in events:
            self.on_event(ev)
        if self.h2.malformed:
            self.drop_malformed()
        if self.oversized_frame_pending():
            log.info("gRPC connection from %s: a frame above the size limit, closing it", self.peer)
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.close_connection(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
            self.close()
            return
        self.flush_soon()  # with the answers of this loop turn: one write, not two

    def drop_malformed(self) -> None:
        """Forget the calls of streams h2 reset as malformed (it sent their RST_STREAM)."""
        for sid, reason in self.h2.malformed:
            log.debug(  # the client hears it (RST_STREAM); a flood must not fill the log
                "gRPC connection from %s: stream %d malformed, reset: %s", self.peer, sid, reason
            )
            self.on_event(h2.events.StreamReset(stream_id=sid))
        self.h2.malformed.clear()

    def oversized_frame_pending(self) -> bool:
        """Whether the frame h2 is waiting to read whole declares a size above the limit.

        h2 checks a frame's size only once all of it arrived, so a header declaring 16 MiB
        would have it buffer that much first; this looks at the header of the frame it holds
        (h2's own buffer: an h2 without it makes this check a no-op, and the test of it fail).
        """
        pending = getattr(self.h2.incoming_buffer, "_data", None)
        if not isinstance(pending, (bytes, bytearray)) or len(pending) < 3:
            return False
        return int.from_bytes(pending[:3], "big") > self.h2.max_inbound_frame_size

    def on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            assert ev.stream_id is not None
            self.on_request(ev.stream_id, ev.headers or (), ev.stream_ended is not None)
        elif isinstance(ev, h2.events.DataReceived):
            flow = ev.flow_controlled_length or 0
            self.conn_unacked += flow
            if self.conn_unacked >= _CONN_WINDOW // 4:
                self.h2.increment_flow_control_window(self.conn_unacked)
                self.conn_unacked = 0
            call = self.calls.get(ev.stream_id or 0)
            if call is not None and not call.reset:
                if ev.stream_ended is not None:
                    call.ended = True
                call.received(ev.data or b"", flow)
        elif isinstance(ev, h2.events.StreamEnded):
            call = self.calls.get(ev.stream_id or 0)
            if call is not None:
                call.ended = True
                call.notify()
        elif isinstance(ev, h2.events.StreamReset):
            call = self.calls.pop(ev.stream_id or 0, None)
            if call is not None:
                call.reset = True
                self.forget(call)
                call.notify()
                if call.task is not None and not call.task.done():
                    call.task.cancel()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.wake_writers()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.close()

    def on_request(self, sid: int, headers: Iterable[tuple[bytes, bytes]], ended: bool) -> None:
        if self.stopping:  # opened before our GOAWAY reached the client: it may retry
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        path = b""
        http_method = b""
        content_type = b""
        timeout: float | None = None
        encoding = b""
        malformed = ""
        metadata: list[tuple[str, str | bytes]] = []
        for name, value in headers:
            try:
                if name[:1] == b":":
                    if name == b":path":
                        path = value
                    elif name == b":method":
                        http_method = value
                elif name == b"content-type":
                    content_type = value
                elif name == b"grpc-timeout":
                    timeout = _timeout(value)
                elif name == b"grpc-encoding":
                    encoding = value
                elif name not in _NOT_METADATA:
                    key = name.decode("latin-1")
                    if key.endswith("-bin"):
                        metadata.append((key, _binary_header(key, value)))
                    else:
                        metadata.append((key, value.decode("latin-1")))
            except ValueError as e:
                malformed = malformed or str(e)
        # What grpc-go's server checks before it looks for the method, and how it answers.
        if not _is_grpc(content_type):
            shown = _go_quote(content_type.decode("latin-1"))
            details = f"invalid gRPC request content-type {shown}"
            self.refuse(sid, grpc.StatusCode.INVALID_ARGUMENT, details, ended=ended, http=b"415")
            return
        if malformed:
            self.refuse(sid, grpc.StatusCode.INTERNAL, malformed, ended=ended, http=b"400")
            return
        if http_method != b"POST":
            shown = http_method.decode("latin-1")
            details = f"http2Server.operateHeaders parsed a :method field: {shown} which should"
            details += " be POST"
            self.refuse(sid, grpc.StatusCode.INTERNAL, details, ended=ended, http=b"405")
            return
        text = path.decode("utf-8", "replace")
        method = self.server.methods.get(text)
        if method is None:
            self.refuse(sid, grpc.StatusCode.UNIMPLEMENTED, self.server.unknown(text), ended=ended)
            return
        call = _Call(self, sid, method)
        call.ended = ended
        self.calls[sid] = call
        call.gzip = encoding == b"gzip"
        if encoding not in (b"", b"identity", b"gzip"):
            enc = encoding.decode("latin-1")
            call.fail(
                grpc.StatusCode.UNIMPLEMENTED,
                f'grpc: Decompressor is not installed for grpc-encoding "{enc}"',
            )
            return
        context = ServicerContext(tuple(metadata))
        call.task = asyncio.get_running_loop().create_task(self.serve(call, context))
        self.server.tasks.add(call.task)
        call.task.add_done_callback(self.server.tasks.discard)
        if timeout is not None:
            call.deadline = asyncio.get_running_loop().call_later(
                timeout, call.fail, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
            )

    def decompress(self, call: _Call, payload: bytes) -> bytes:
        """``payload`` gunzipped, never inflated past the receive limit.

        A small request can decompress to gigabytes: inflating stops one byte past the limit.
        """
        limit = self.server.max_receive
        out = bytearray()
        data = payload
        try:
            while data:
                d = zlib.decompressobj(wbits=31)
                out += d.decompress(data, limit + 1 - len(out))
                if len(out) > limit:
                    call.fail(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "grpc: received message after decompression larger than max "
                        f"(more than {limit})",
                    )
                    return b""
                if not d.eof:
                    raise zlib.error("truncated gzip data")
                data = d.unused_data
        except zlib.error as e:
            call.fail(grpc.StatusCode.INTERNAL, f"grpc: failed to decompress the message: {e}")
            return b""
        return bytes(out)

    # -- calls

    async def serve(self, call: _Call, context: ServicerContext) -> None:
        method = call.method
        code, details = grpc.StatusCode.OK, ""
        try:
            if method.unary_unary is not None or method.unary_stream is not None:
                payload = await call.next_request()
                if payload is None:
                    if call.reset:
                        return
                    raise Aborted(
                        grpc.StatusCode.INTERNAL,
                        "grpc: error while marshaling: request has no message",
                    )
                request = call.decode(payload)
                if method.unary_unary is not None:
                    response = await method.unary_unary(request, context)
                    await self.send(call, method.response_serializer(response))
                else:
                    async for response in method.unary_stream(request, context):
                        await self.send(call, method.response_serializer(response))
            elif method.stream_stream is not None:
                async for response in method.stream_stream(call.requests(), context):
                    await self.send(call, method.response_serializer(response))
            else:
                requests = call.requests()
                response = await method.stream_unary(requests, context)
                await self.send(call, method.response_serializer(response))
        except Aborted as e:
            code, details = e.code, e.details
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if call.reset or self.closed or (task is not None and task.cancelling()):
                raise  # the stream is gone, or fail() answered it
            # The handler's own await was cancelled, not this call: answer it all the same.
            code, details = grpc.StatusCode.CANCELLED, "handler cancelled"
        except _StreamGone:
            return
        except Exception:
            log.exception("gRPC %s: handler failed", self.server.method_name(method))
            code, details = grpc.StatusCode.UNKNOWN, "Exception calling application"
        self.finish(call, code, details)

    async def send(self, call: _Call, body: bytes) -> None:
        """Send one response message, waiting for flow-control windows as needed."""
        data = b"\x00" + len(body).to_bytes(4, "big") + body
        if not call.headers_sent:
            call.headers_sent = True
            self.guard(call, lambda: self.h2.send_headers(call.sid, _RESPONSE))
        view = memoryview(data)
        while view:
            if call.reset or self.closed:
                raise _StreamGone
            try:
                window = min(
                    self.h2.local_flow_control_window(call.sid), self.h2.max_outbound_frame_size
                )
            except h2.exceptions.StreamClosedError:
                raise _StreamGone from None
            if window <= 0:
                self.flush()
                waiter = asyncio.get_running_loop().create_future()
                self.window_waiters.append(waiter)
                await waiter
                continue
            chunk, view = view[:window], view[window:]
            self.guard(call, lambda c=chunk: self.h2.send_data(call.sid, bytes(c)))
        if not self.paused:
            self.flush_soon()
            return
        self.flush()  # the transport's buffer is full: wait until it drains
        if not self.closed:
            self.resume = self.resume or asyncio.get_running_loop().create_future()
            await self.resume

    def guard(self, call: _Call, action: Any) -> None:
        try:
            action()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            call.reset = True
            raise _StreamGone from None

    def forget(self, call: _Call) -> None:
        """Drop what ``call`` held: its deadline, its unread requests (from the budget)."""
        if call.deadline is not None:
            call.deadline.cancel()
            call.deadline = None
        if call.buffered:
            size, call.buffered = call.buffered, 0
            call.inbox.clear()
            call.buffer.clear()
            self.consumed(size)

    def finish(self, call: _Call, code: grpc.StatusCode, details: str) -> None:
        """End ``call`` with its status (trailers, or a trailers-only response)."""
        self.forget(call)
        if call.reset or self.closed:
            self.calls.pop(call.sid, None)
            return
        call.reset = True
        self.calls.pop(call.sid, None)
        status = _status_headers(code, details)
        headers = status if call.headers_sent else [*_RESPONSE, *status]
        try:
            self.h2.send_headers(call.sid, headers, end_stream=True)
            if not call.ended:
                # The client still sends: stop it (grpc-go does the same after its status).
                self.h2.reset_stream(call.sid, h2.errors.ErrorCodes.NO_ERROR)
        except h2.exceptions.H2Error:
            pass
        call.notify()
        self.flush_soon()

    def refuse(
        self, sid: int, code: grpc.StatusCode, details: str, *, ended: bool, http: bytes = b"200"
    ) -> None:
        """Answer stream ``sid`` with a status alone (HTTP status ``http``), running nothing."""
        with contextlib.suppress(h2.exceptions.H2Error):
            response = _RESPONSE if http == b"200" else ((b":status", http), _RESPONSE[1])
            headers = [*response, *_status_headers(code, details)]
            self.h2.send_headers(sid, headers, end_stream=True)
            if not ended:
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.NO_ERROR)
        self.flush_soon()

    # -- output

    def wake_writers(self) -> None:
        waiters, self.window_waiters = self.window_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def flush_soon(self) -> None:
        if not self.flush_pending:
            self.flush_pending = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def goaway(self) -> None:
        """Tell the client to open no more streams here; the open ones go on.

        Written as a raw frame: h2's ``close_connection`` would also stop this side from
        sending, and calls in progress still have answers to send.
        """
        self.stopping = True
        frame = hyperframe.frame.GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id
        self.flush()
        if self.transport is not None and not self.closed:
            self.transport.write(frame.serialize())

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            if self.h2.state_machine.state != h2.connection.ConnectionState.CLOSED:
                with contextlib.suppress(h2.exceptions.H2Error):
                    self.h2.close_connection()
            self.flush()
            self.transport.close()


class _StreamGone(Exception):
    """The stream a response was being sent on is gone (reset, or the connection closed)."""


class GrpcH2Server:
    """A gRPC server on the running event loop.

    Args:
        services: ``{service name: {method name: handler}}``, e.g.
            ``{"etcdserverpb.KV": {"Put": grpc.unary_unary_rpc_method_handler(...)}}``.
        host: the address to listen on.
        port: the port (0: any free one; :attr:`port` has the bound one once started).
        max_receive: the largest request message accepted, in bytes.
        ssl_context: serve TLS with this context (ALPN ``h2`` is set on it).
    """

    def __init__(
        self,
        services: Mapping[str, Mapping[str, grpc.RpcMethodHandler]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_receive: int = 4 << 20,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.methods = {
            f"/{service}/{name}": handler
            for service, methods in services.items()
            for name, handler in methods.items()
        }
        self._names = {id(h): path for path, h in self.methods.items()}
        self.services = frozenset(services)
        self.host = host
        self.port = port
        self.max_receive = max_receive
        self.ssl_context = ssl_context
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    def unknown(self, path: str) -> str:
        """grpc-go's text for a path nothing serves."""
        service, _, method = path.lstrip("/").rpartition("/")
        if service in self.services:
            return f"unknown method {method} for service {service}"
        return f"unknown service {service or method}"

    def method_name(self, handler: grpc.RpcMethodHandler) -> str:
        """The path ``handler`` serves (for logs)."""
        return self._names.get(id(handler), "?")

    async def start(self) -> None:
        """Bind and listen.

        Raises:
            OSError: the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving.

        No new connections; GOAWAY to clients; ``grace`` seconds for calls in progress; then
        what is left is cancelled and every connection closed.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self.connections):
            conn.goaway()
        pending = [t for t in self.tasks if not t.done()]
        if pending and grace:
            await asyncio.wait(pending, timeout=grace)
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)
        closing = list(self.connections)
        for conn in closing:
            conn.close()
        if closing:  # until every socket is closed (connection_lost runs on a later turn)
            await asyncio.wait([conn.lost for conn in closing], timeout=5)
        await server.wait_closed()
