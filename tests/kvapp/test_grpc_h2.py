"""kvapp's own gRPC server (kvapp.server.grpc_h2), driven by grpcio clients on loopback.

The etcd API's tests (tests/kvapp/etcd) exercise it through every etcd service, etcdctl and
aetcd; these check the transport's own contract: statuses and their texts, deadlines and
cancellation reaching the handler, flow control both ways, bad input closing one connection
only, and a graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from urllib.parse import quote

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from kvapp.server.grpc_h2 import _CONN_WINDOW, STREAM_BUFFER, GrpcH2Server
from tests.kvapp.test_member import aio

_MB = 1 << 20


def _raw(data: bytes) -> bytes:
    return data


class Echo:
    """Handlers on raw bytes (no protobuf): what each call saw, and hooks to hold calls."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.metadata: list[tuple[str, Any]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.read = 0

    async def unary(self, request: bytes, context: Any) -> bytes:
        self.metadata = list(context.invocation_metadata())
        if request == b"fail":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "100% ünicode\nline")
        if request == b"crash":
            raise RuntimeError("boom")
        if request == b"inner cancel":  # e.g. a dropped proposal's future, cancelled elsewhere
            inner = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(inner.cancel)
            await inner
        if request == b"hold":
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append("hold")
                raise
        return request[::-1]

    async def download(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        count, size = map(int, request.split(b","))
        for i in range(count):
            yield bytes([i % 256]) * size

    async def sink(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        await self.release.wait()
        async for r in requests:
            self.read += len(r)
            yield b"%d" % len(r)

    def services(self) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
        kw: dict[str, Callable[[bytes], bytes]] = {
            "request_deserializer": _raw,
            "response_serializer": _raw,
        }
        return {
            "test.Echo": {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary, **kw),
                "Download": grpc.unary_stream_rpc_method_handler(self.download, **kw),
                "Sink": grpc.stream_stream_rpc_method_handler(self.sink, **kw),
            }
        }


def served(
    fn: Callable[[Echo, GrpcH2Server, grpc.aio.Channel], Coroutine[Any, Any, None]],
    max_receive: int = 2 * _MB,
) -> Callable[[], None]:
    """Run ``fn`` against a started server and a channel to it; stop both afterwards."""

    @aio
    async def test() -> None:
        echo = Echo()
        server = GrpcH2Server(echo.services(), max_receive=max_receive)
        await server.start()
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}",
            options=[
                ("grpc.max_send_message_length", 16 * _MB),
                ("grpc.max_receive_message_length", 16 * _MB),
            ],
        )
        try:
            await fn(echo, server, channel)
        finally:
            echo.release.set()
            await channel.close()
            await server.stop(grace=0)

    test.__name__ = fn.__name__
    return test


def unary(channel: grpc.aio.Channel, path: str = "/test.Echo/Unary") -> Any:
    return channel.unary_unary(path, request_serializer=_raw, response_deserializer=_raw)


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


@served
async def test_answers_and_statuses_as_grpc_go_sends_them(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    assert await unary(channel)(b"abc", metadata=(("who", "me"), ("raw-bin", b"\x00\xff"))) == (
        b"cba"
    )
    assert ("who", "me") in echo.metadata
    assert ("raw-bin", b"\x00\xff") in echo.metadata
    assert await unary(channel)(b"") == b""
    # Details with "%", non-ASCII and a newline survive gRPC's percent-encoding.
    assert await status_of(unary(channel)(b"fail")) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "100% ünicode\nline",
    )
    assert await status_of(unary(channel, "/test.Echo/Nope")(b"")) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "unknown method Nope for service test.Echo",
    )
    assert await status_of(unary(channel, "/test.Other/Unary")(b"")) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "unknown service test.Other",
    )
    assert await unary(channel)(b"still serving") == b"gnivres llits"


@served
async def test_a_handler_that_raises_answers_unknown_and_is_logged(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    logger = logging.getLogger("kvapp.server.grpc_h2")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        code, _ = await status_of(unary(channel)(b"crash"))
    finally:
        logger.removeHandler(handler)
    assert code == grpc.StatusCode.UNKNOWN
    assert [r.exc_info[1] for r in seen if r.exc_info] != []
    assert await unary(channel)(b"ok") == b"ko"


@served
async def test_messages_above_the_limit_are_refused_and_the_connection_serves_on(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    big = b"x" * (2 * _MB)
    assert await unary(channel)(big) == big  # exactly the limit
    code, details = await status_of(unary(channel)(big + b"y"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == f"grpc: received message larger than max ({2 * _MB + 1} vs. {2 * _MB})"
    assert await unary(channel)(b"ok") == b"ko"


def big_limit(
    fn: Callable[[Echo, GrpcH2Server, grpc.aio.Channel], Coroutine[Any, Any, None]],
) -> Callable[[], None]:
    return served(fn, max_receive=12 * _MB)


@big_limit
async def test_a_message_larger_than_a_streams_buffer_still_arrives(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    # Regression: the part of a message received so far counted as unread, so past
    # STREAM_BUFFER the window stayed shut with no whole message for the handler to read.
    value = bytes(range(256)) * (10 * _MB // 256)
    assert value.__len__() > STREAM_BUFFER
    assert await unary(channel)(value, timeout=10) == value[::-1]


@served
async def test_gzip_compressed_requests_are_read_and_never_inflated_past_the_limit(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    value = b"compress me " * 1000
    got = await unary(channel)(value, compression=grpc.Compression.Gzip)
    assert got == value[::-1]
    # Regression: 300 KB of gzip that inflates to 300 MB was inflated whole on the loop.
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    bomber = grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}", options=[("grpc.max_send_message_length", 400 * _MB)]
    )
    try:
        code, details = await status_of(
            unary(bomber)(b"\0" * (300 * _MB), compression=grpc.Compression.Gzip, timeout=60)
        )
    finally:
        await bomber.close()
    assert (code, details) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"grpc: received message after decompression larger than max (more than {2 * _MB})",
    )
    assert await unary(channel)(b"ok") == b"ko"
    assert loop.time() - t0 < 30


@served
async def test_a_handler_whose_own_await_is_cancelled_still_answers(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    # Regression: a CancelledError the call's task was not asked for was taken for a gone
    # stream, and the client (no deadline) waited forever.
    code, _ = await status_of(asyncio.wait_for(unary(channel)(b"inner cancel"), 5))
    assert code == grpc.StatusCode.CANCELLED
    assert not server.tasks - {t for t in server.tasks if t.done()}


@served
async def test_a_deadline_or_a_cancel_cancels_the_handler(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    async def handlers_cancelled(n: int, what: str) -> None:
        for _ in range(200):
            if echo.cancelled == ["hold"] * n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{what}: handlers cancelled {echo.cancelled}")

    code, _ = await status_of(unary(channel)(b"hold", timeout=0.3))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    await handlers_cancelled(1, "the handler of a call past its deadline kept running")
    echo.started.clear()
    call = unary(channel)(b"hold")
    await asyncio.wait_for(echo.started.wait(), 5)
    call.cancel()
    await handlers_cancelled(2, "a cancelled call's handler kept running")
    assert not server.tasks - {t for t in server.tasks if t.done()}


@served
async def test_large_server_streams_arrive_whole_through_flow_control(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    download = channel.unary_stream(
        "/test.Echo/Download", request_serializer=_raw, response_deserializer=_raw
    )
    got = [m async for m in download(b"24,1048576")]  # 24 MiB: past every window
    assert [len(m) for m in got] == [_MB] * 24
    assert all(m == bytes([i]) * _MB for i, m in enumerate(got))


@served
async def test_a_stream_its_handler_does_not_read_holds_its_client_back(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    sink = channel.stream_stream(
        "/test.Echo/Sink", request_serializer=_raw, response_deserializer=_raw
    )
    call = sink()
    sent = 0
    chunk = b"z" * (256 * 1024)

    async def flood() -> None:
        nonlocal sent
        for _ in range(200):  # 50 MiB if nothing held it back
            await call.write(chunk)
            sent += len(chunk)

    writer = asyncio.create_task(flood())
    await asyncio.sleep(1.0)
    held = sent
    assert held < STREAM_BUFFER + 4 * _MB, f"{held} bytes taken while the handler read none"
    assert not writer.done()
    # Others are served meanwhile, on the same connection.
    assert await unary(channel)(b"ab") == b"ba"
    echo.release.set()
    answers = 0
    async with asyncio.timeout(20):
        while answers < 200:
            assert await call.read() == b"%d" % len(chunk)
            answers += 1
    await writer
    await call.done_writing()
    assert echo.read == 200 * len(chunk)


@served
async def test_garbage_closes_its_own_connection_only(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    assert await unary(channel)(b"ab") == b"ba"
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    # An HTTP/1 request, a wrong preface, a frame header declaring 16 MiB (refused at once,
    # not buffered until that much arrived).
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 100, preface + b"\xff" * 30):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(junk)
        await writer.drain()
        async with asyncio.timeout(5):
            while await reader.read(4096):
                pass  # the server answers (a GOAWAY at most) and closes
        writer.close()
    assert await unary(channel)(b"cd") == b"dc"
    assert len(server.connections) == 1


@aio
async def test_stop_lets_calls_finish_within_the_grace_then_cancels_them() -> None:
    echo = Echo()
    server = GrpcH2Server(echo.services())
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        quick = asyncio.ensure_future(unary(channel)(b"hold"))
        await asyncio.wait_for(echo.started.wait(), 5)
        stopping = asyncio.create_task(server.stop(grace=5))
        await asyncio.sleep(0.2)
        echo.release.set()  # finishes within the grace: answered
        assert await asyncio.wait_for(quick, 5) == b"dloh"
        await asyncio.wait_for(stopping, 10)
    echo = Echo()
    server = GrpcH2Server(echo.services())
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        slow = asyncio.ensure_future(unary(channel)(b"hold"))
        await asyncio.wait_for(echo.started.wait(), 5)
        await asyncio.wait_for(server.stop(grace=0.2), 10)
        assert echo.cancelled == ["hold"]
        code, _ = await status_of(slow)
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert not server.connections


async def _raw_call(
    port: int, headers: list[tuple[str, str]], message: bytes | None = None
) -> dict[str, str]:
    """Open one stream with exactly ``headers`` (and ``message``) and return the answer's
    headers and trailers."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=message is None)
    if message is not None:
        conn.send_data(1, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(conn.data_to_send())
    answer: dict[str, str] = {}
    try:
        async with asyncio.timeout(5):
            while True:
                data = await reader.read(65536)
                assert data, f"connection closed before an answer; got {answer}"
                for ev in conn.receive_data(data):
                    if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                        answer.update((str(k), str(v)) for k, v in ev.headers or ())
                    if isinstance(ev, h2.events.StreamEnded):
                        return answer
                writer.write(conn.data_to_send())
    finally:
        writer.close()


_GRPC_HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/test.Echo/Unary"),
    (":authority", "localhost"),
    ("content-type", "application/grpc"),
]


def _with(**changes: str) -> list[tuple[str, str]]:
    out = [(k, changes.pop(k, v)) for k, v in _GRPC_HEADERS]
    return out + list(changes.items())


# grpc-go's own table (TestHeadersHTTPStatusGRPCStatus): HTTP status, gRPC status, message.
@pytest.mark.parametrize(
    ("headers", "http_status", "grpc_status", "message"),
    [
        (
            _with(**{":method": "PUT"}),
            "405",
            "13",
            "http2Server.operateHeaders parsed a :method field: PUT which should be POST",
        ),
        (
            _with(**{"content-type": "application/json"}),
            "415",
            "3",
            'invalid gRPC request content-type "application/json"',
        ),
        (
            [h for h in _GRPC_HEADERS if h[0] != "content-type"],
            "415",
            "3",
            'invalid gRPC request content-type ""',
        ),
        (
            _with(**{"grpc-timeout": "18f6n"}),
            "400",
            "13",
            'malformed grpc-timeout: strconv.ParseInt: parsing "18f6": invalid syntax',
        ),
        (
            _with(**{"grpc-timeout": "1x"}),
            "400",
            "13",
            'malformed grpc-timeout: transport: timeout unit is not recognized: "1x"',
        ),
        (
            _with(**{"foobar-bin": "X()3e@#$-"}),
            "400",
            "13",
            'malformed binary metadata "X()3e@#$-" in header "foobar-bin": '
            "illegal base64 data at input byte 1",
        ),
    ],
    ids=["method", "content-type", "no-content-type", "timeout", "timeout-unit", "binary"],
)
def test_requests_grpc_go_refuses_get_its_statuses_and_the_handler_never_runs(
    headers: list[tuple[str, str]], http_status: str, grpc_status: str, message: str
) -> None:
    @served
    async def check(echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel) -> None:
        answer = await _raw_call(server.port, headers)
        got = (answer.get(":status"), answer.get("grpc-status"), answer.get("grpc-message"))
        assert got == (http_status, grpc_status, quote(message, safe=_SAFE)), answer
        assert echo.metadata == []  # the handler never ran
        assert await unary(channel)(b"ok") == b"ko"  # the server serves on

    check()


_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


@served
async def test_a_valid_call_with_binary_metadata_and_a_timeout_is_served(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    headers = _with(**{"grpc-timeout": "5S", "trace-bin": "AAEC", "te": "trailers"})
    answer = await _raw_call(server.port, headers, b"ab")
    assert (answer.get(":status"), answer.get("grpc-status")) == ("200", "0"), answer
    assert ("trace-bin", b"\x00\x01\x02") in echo.metadata


@served
async def test_a_stream_over_the_concurrent_limit_is_refused_alone(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    # A client that ignores the server's SETTINGS (never fed them) opens 6 streams too many,
    # each left open (no END_STREAM), and sends a request on each of those 6 at once: they get
    # REFUSED_STREAM, the connection goes on.
    limit = 1 << 10
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
    conn.initiate_connection()
    for i in range(limit + 6):
        conn.send_headers(1 + 2 * i, _GRPC_HEADERS)
    for i in range(limit, limit + 6):
        conn.send_data(1 + 2 * i, b"\x00\x00\x00\x00\x02ab", end_stream=True)
    conn.ping(b"12345678")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(conn.data_to_send())
    refused: list[int] = []
    try:
        async with asyncio.timeout(10):
            pinged = False
            while not pinged:
                data = await reader.read(65536)
                assert data, f"connection closed; refused so far: {refused}"
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.StreamReset):
                        assert ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM, ev
                        refused.append(ev.stream_id or 0)
                    pinged = pinged or isinstance(ev, h2.events.PingAckReceived)
                writer.write(conn.data_to_send())
    finally:
        writer.close()
    assert refused == [1 + 2 * i for i in range(limit, limit + 6)]
    assert await unary(channel)(b"ok") == b"ko"


@served
async def test_a_malformed_request_resets_its_own_stream_and_the_connection_serves_on(
    echo: Echo, server: GrpcH2Server, channel: grpc.aio.Channel
) -> None:
    # RFC 9113 8.1.1: a malformed request is a stream error. Stream 1 has a content-length that
    # is no number; streams 3, 5, ... send more body than their content-length says, with
    # enough DATA in all to exhaust the connection's window unless the dropped frames are
    # credited; the last stream is a valid call on the same connection.
    config = h2.config.H2Configuration(header_encoding="utf-8", validate_outbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(conn.data_to_send())
    resets: dict[int, int] = {}
    answers: dict[int, dict[str, str]] = {}
    pinged = False

    async def exchange(until: Callable[[], bool]) -> None:
        nonlocal pinged
        while not until():
            data = await reader.read(65536)
            assert data, f"connection closed; resets {sorted(resets)[-3:]}, answers {answers}"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.StreamReset):
                    resets[ev.stream_id or 0] = ev.error_code or 0
                if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    got = answers.setdefault(ev.stream_id or 0, {})
                    got.update((str(k), str(v)) for k, v in ev.headers or ())
                pinged = pinged or isinstance(ev, h2.events.PingAckReceived)
            writer.write(conn.data_to_send())

    def room_for(stream_id: int, size: int) -> Callable[[], bool]:
        return lambda: conn.local_flow_control_window(stream_id) >= size

    try:
        async with asyncio.timeout(30):
            conn.send_headers(1, [*_GRPC_HEADERS, ("content-length", "x")], end_stream=True)
            sid, sent = 3, 0
            body = b"\x00" * 16_000
            while sent <= 2 * _CONN_WINDOW:
                await exchange(lambda: conn.open_outbound_streams < 512)  # as resets arrive
                conn.send_headers(sid, [*_GRPC_HEADERS, ("content-length", "5")])
                writer.write(conn.data_to_send())
                await exchange(room_for(sid, len(body)))
                conn.send_data(sid, body, end_stream=True)
                sent += len(body)
                sid += 2
            conn.send_headers(sid, _GRPC_HEADERS)
            conn.send_data(sid, b"\x00\x00\x00\x00\x02ab", end_stream=True)
            writer.write(conn.data_to_send())
            await exchange(lambda: "grpc-status" in answers.get(sid, {}))
            conn.ping(b"12345678")
            writer.write(conn.data_to_send())
            await exchange(lambda: pinged)
    finally:
        writer.close()
    assert resets == dict.fromkeys(range(1, sid, 2), h2.errors.ErrorCodes.PROTOCOL_ERROR)
    assert list(answers) == [sid]
    assert (answers[sid].get(":status"), answers[sid].get("grpc-status")) == ("200", "0")
    assert await unary(channel)(b"ok") == b"ko"
