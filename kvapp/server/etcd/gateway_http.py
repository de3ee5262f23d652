"""An HTTP/1.1 server for etcd's JSON gateway (``kvapp serve --listen-client-http-urls``).

A small server on asyncio streams, no framework, serving one :class:`EtcdGateway` plus
``GET /version`` (and ``GET /health`` when given a health check), as etcd serves them on its
client URLs:

- ``POST /v3/...`` (and ``/v3beta/...``, which etcd 3.4 rewrites to ``/v3/``): the gateway. A
  unary answer has a ``Content-Length``; a stream is sent with ``Transfer-Encoding: chunked``,
  one chunk per JSON line (clients such as etcd3gw parse chunk by chunk), and the connection
  closes after it. A client that disconnects cancels its stream.
- An unknown ``/v3/`` path answers 404 ``Not Found``, another method on a gateway path 405
  ``Method Not Allowed``, any other path 404 ``404 page not found``: plain text, as etcd's
  grpc-gateway and Go's ``ServeMux`` answer them.
- Limits: a request head (request line and headers) of at most ``max_header_bytes`` (else 431),
  a body of at most ``max_body_bytes`` (else 413, before reading it when the length is
  declared), ``Content-Length`` or chunked bodies only, ``Expect: 100-continue`` honoured;
  ``idle_timeout`` to start the next request on a kept-alive connection, ``read_timeout`` to
  receive a whole request once started and for each write to drain. A malformed request gets a
  400 with a JSON error in the gateway's format and the connection is closed; nothing a client
  sends can stop the member.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import re
import ssl
from collections.abc import AsyncGenerator, Callable
from typing import Final
from urllib.parse import unquote, urlsplit

import attrs

from kvapp.errors import GrpcCode
from kvapp.server.etcd.gateway import (
    ETCD_API_VERSION,
    EtcdGateway,
    GatewayError,
    Kind,
    Metadata,
    Route,
)
from kvapp.tls import TlsAcceptor, start_tls_server
from raftlib import __version__ as _KVAPP_VERSION

__all__ = ["GatewayHttpServer", "HttpError", "HttpRequest", "parse_head"]

log = logging.getLogger(__name__)

MAX_HEADER_BYTES: Final = 64 * 1024
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION: Final = re.compile(r"HTTP/([0-9])\.([0-9])")
_CHUNK_SIZE: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
_METADATA_PREFIX: Final = "grpc-metadata-"
_MAX_TRAILERS: Final = 64


class HttpError(Exception):
    """A request this server refuses before the gateway sees it: status, gRPC code, text."""

    def __init__(
        self, status: int, message: str, code: GrpcCode = GrpcCode.INVALID_ARGUMENT
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = GatewayError(code, message)


@attrs.frozen
class HttpRequest:
    """A parsed request head.

    Attributes:
        method: the method, as sent (``POST``).
        target: the request target, as sent.
        path: the target's path, percent-decoded, without a query.
        version: ``(major, minor)``: (1, 0) or (1, 1).
        headers: ``(name, value)`` pairs in order, names lower-cased.
    """

    method: str
    target: str
    path: str
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The value of the first header called ``name`` (lower-case), or None."""
        return next((v for k, v in self.headers if k == name), None)

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may serve another request after this one."""
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens

    @property
    def chunked(self) -> bool:
        """Whether the body comes with ``Transfer-Encoding: chunked``."""
        return self.header("transfer-encoding") is not None

    @property
    def content_length(self) -> int:
        """The declared body length (0 without a ``Content-Length``)."""
        value = self.header("content-length")
        return int(value) if value is not None else 0

    def metadata(self) -> Metadata:
        """GRPC metadata from ``Grpc-Metadata-<key>`` headers, as grpc-gateway passes them."""
        n = len(_METADATA_PREFIX)
        return tuple((k[n:], v) for k, v in self.headers if k.startswith(_METADATA_PREFIX))


def parse_head(head: bytes) -> HttpRequest:
    """Parse a request head (request line and header lines, CRLF-terminated).

    Raises:
        HttpError: 400 for anything malformed (including conflicting or invalid body framing),
            501 for a transfer coding other than chunked, 505 for an HTTP version other than
            1.0 and 1.1.
    """
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}")
    method, target, proto = parts
    version = _VERSION.fullmatch(proto)
    if version is None:
        raise HttpError(400, f"malformed HTTP version {proto[:20]!r}")
    major, minor = int(version.group(1)), int(version.group(2))
    if (major, minor) not in ((1, 0), (1, 1)):
        raise HttpError(505, f"HTTP version {proto} is not supported", GrpcCode.UNIMPLEMENTED)
    try:
        path = unquote(urlsplit(target).path)
    except ValueError:
        path = ""
    if not path.startswith("/") or not target.startswith(("/", "http://", "https://")):
        raise HttpError(400, f"malformed request target {target[:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        headers.append((name.lower(), value.strip(" \t")))
    request = HttpRequest(method, target, path, (major, minor), tuple(headers))
    _check_framing(request)
    return request


def _check_framing(request: HttpRequest) -> None:
    lengths = {v for k, v in request.headers if k == "content-length"}
    codings = [v for k, v in request.headers if k == "transfer-encoding"]
    if codings and lengths:
        raise HttpError(400, "both Content-Length and Transfer-Encoding given")
    if codings and (len(codings) > 1 or codings[0].lower() != "chunked"):
        raise HttpError(
            501,
            f"Transfer-Encoding {', '.join(codings)[:40]!r} (only chunked)",
            GrpcCode.UNIMPLEMENTED,
        )
    if len(lengths) > 1 or any(not re.fullmatch("[0-9]{1,18}", v) for v in lengths):
        raise HttpError(400, f"invalid Content-Length {', '.join(lengths)[:40]!r}")


class GatewayHttpServer:
    """Serves :class:`EtcdGateway` over HTTP/1.1 (see the module docstring).

    Args:
        gateway: the gateway.
        host: the address to bind.
        port: the port; 0 picks a free one (see :attr:`port` once started).
        max_body_bytes: the largest request body taken. Default: twice the gateway's gRPC
            message limit (base64 makes bytes a third longer, and JSON adds field names).
        max_header_bytes: the largest request head taken.
        idle_timeout: seconds a kept-alive connection may wait for its next request.
        read_timeout: seconds a request may take to arrive once started, and a write to drain.
        health: ``GET /health``'s check, returning ``(healthy, reason)`` (None: no /health).
        tls: serve HTTPS with this context (:meth:`kvapp.tls.TlsInfo.server_context`); a
            refused TLS handshake is logged with the client's address and the reason.
    """

    def __init__(
        self,
        gateway: EtcdGateway,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int | None = None,
        max_header_bytes: int = MAX_HEADER_BYTES,
        idle_timeout: float = 120.0,
        read_timeout: float = 30.0,
        health: Callable[[], tuple[bool, str]] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.gateway = gateway
        self.host = host
        self._port = port
        self.max_body_bytes = (
            max_body_bytes if max_body_bytes is not None else 2 * gateway.max_message_bytes
        )
        self.max_header_bytes = max_header_bytes
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self._health = health
        self.tls = tls
        self._acceptor: TlsAcceptor | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port listened on (the bound one once started)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` (``https://`` with TLS)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self._port}"

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            OSError: the address cannot be bound.
        """
        if self.tls is None:
            self._server = await asyncio.start_server(
                self._connected, self.host, self._port, limit=self.max_header_bytes
            )
        else:
            self._server, self._acceptor = await start_tls_server(
                self._connected,
                self.host,
                self._port,
                self.tls,
                what="etcd JSON gateway",
                handshake_timeout=self.read_timeout,
                limit=self.max_header_bytes,
                log=log,
            )
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("etcd JSON gateway listening on %s", self.url)

    async def stop(self) -> None:
        """Stop serving: close the listener and every connection (streams are cancelled)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._acceptor is not None:
            await self._acceptor.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        await self.gateway.close()

    async def __aenter__(self) -> GatewayHttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- connections ---------------------------------------------------------------------------

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own task rather than a coroutine callback: asyncio (3.11) logs an error when it
        # finds the task it made for one cancelled, and stop() cancels connections.
        task = asyncio.create_task(self._connection(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or stalled: nothing to answer
        except Exception:
            log.exception("etcd JSON gateway: connection failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # closed between requests (or mid-head: nothing to answer)
            except asyncio.LimitOverrunError:
                await self._error(writer, HttpError(431, "request header too large"))
                return
            try:
                request = parse_head(head)
                async with asyncio.timeout(self.read_timeout):
                    body = await self._body(request, reader, writer)
            except HttpError as e:
                await self._error(writer, e)
                return
            if not await self._dispatch(request, body, reader, writer):
                return

    async def _body(
        self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        if not request.chunked and request.content_length > self.max_body_bytes:
            raise HttpError(
                413,
                f"request body of {request.content_length} bytes is larger than the "
                f"{self.max_body_bytes} bytes accepted",
                GrpcCode.RESOURCE_EXHAUSTED,
            )
        if (request.header("expect") or "").lower() == "100-continue" and request.version >= (1, 1):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        if not request.chunked:
            return await reader.readexactly(request.content_length)
        return await self._chunked(reader)

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError:
                raise HttpError(400, "malformed chunk size line") from None
            size_text = line[:-2].split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise HttpError(400, f"malformed chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if len(body) + size > self.max_body_bytes:
                raise HttpError(
                    413,
                    f"request body is larger than the {self.max_body_bytes} bytes accepted",
                    GrpcCode.RESOURCE_EXHAUSTED,
                )
            if size == 0:
                break
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise HttpError(400, "malformed chunk (no CRLF after its data)")
        for _ in range(_MAX_TRAILERS):
            try:
                if await reader.readuntil(b"\r\n") == b"\r\n":
                    return bytes(body)
            except asyncio.LimitOverrunError:
                break
        raise HttpError(400, "malformed chunked body trailer")

    async def _dispatch(
        self,
        request: HttpRequest,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; whether the connection may serve another."""
        keep = request.keep_alive
        path = request.path
        if path.startswith("/v3beta/"):  # etcd 3.4 serves its 3.3 prefix as /v3/
            path = "/v3/" + path[len("/v3beta/") :]
        if path == "/version" or (path == "/health" and self._health is not None):
            if request.method != "GET":
                return await self._text(writer, 405, "Method Not Allowed", keep)
            if path == "/version":
                info = {"etcdserver": ETCD_API_VERSION, "etcdcluster": ETCD_API_VERSION}
                return await self._send(writer, 200, _json(info | {"kvapp": _KVAPP_VERSION}), keep)
            assert self._health is not None
            ok, reason = self._health()
            health = {"health": "true" if ok else "false", "reason": reason}
            return await self._send(writer, 200 if ok else 503, _json(health), keep)
        if not path.startswith("/v3/"):
            return await self._text(writer, 404, "404 page not found", keep)
        route = self.gateway.route(path)
        unserved = self.gateway.unserved(path) if route is None else None
        if route is None and unserved is None:
            return await self._text(writer, 404, "Not Found", keep)
        if request.method != "POST":
            return await self._text(writer, 405, "Method Not Allowed", keep)
        if unserved is not None:
            return await self._send(writer, unserved.http_status, unserved.body(), keep)
        assert route is not None
        if route.kind is Kind.UNARY:
            try:
                answer = await self.gateway.unary(route, body, request.metadata())
            except GatewayError as e:
                return await self._send(writer, e.http_status, e.body(), keep)
            return await self._send(writer, 200, answer, keep)
        await self._stream(request, route, body, reader, writer)
        return False

    async def _stream(
        self,
        request: HttpRequest,
        route: Route,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            chunks = self.gateway.stream(route, body, request.metadata())
        except GatewayError as e:
            await self._send(writer, e.http_status, e.body(), keep_alive=False)
            return
        chunked = request.version >= (1, 1)
        pump = asyncio.create_task(self._pump(chunks, writer, chunked=chunked))
        closed = asyncio.create_task(_until_closed(reader))
        try:
            await asyncio.wait((pump, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (pump, closed):
                t.cancel()
            await asyncio.gather(pump, closed, return_exceptions=True)
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            log.debug("etcd JSON gateway: %s stream ended: %s", route.rpc, pump.exception())

    async def _pump(
        self,
        chunks: AsyncGenerator[tuple[int, bytes], None],
        writer: asyncio.StreamWriter,
        *,
        chunked: bool,
    ) -> None:
        started = False
        try:
            async for status, data in chunks:
                if not started:
                    writer.write(_head(status, "application/json", chunked=chunked))
                    started = True
                writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                await self._drain(writer)
            if not started:
                writer.write(_head(200, "application/json", chunked=chunked))
            if chunked:
                writer.write(b"0\r\n\r\n")
            await self._drain(writer)
        finally:
            await chunks.aclose()

    # -- answers -------------------------------------------------------------------------------

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(self.read_timeout):
            await writer.drain()

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        keep_alive: bool,
        *,
        content_type: str = "application/json",
        extra: str = "",
    ) -> bool:
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\n{extra}Content-Length: {len(body)}\r\n"
            + ("" if keep_alive else "Connection: close\r\n")
            + "\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await self._drain(writer)
        return keep_alive

    async def _text(self, writer: asyncio.StreamWriter, status: int, text: str, keep: bool) -> bool:
        """Go's ``http.Error``: plain text and a newline."""
        return await self._send(
            writer,
            status,
            text.encode() + b"\n",
            keep,
            content_type="text/plain; charset=utf-8",
            extra="X-Content-Type-Options: nosniff\r\n",
        )

    async def _error(self, writer: asyncio.StreamWriter, e: HttpError) -> None:
        log.debug("etcd JSON gateway: refused a request: %s", e)
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self._send(writer, e.status, e.error.body(), keep_alive=False)


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Return when the client closes its side (anything it sends meanwhile is ignored)."""
    while await reader.read(65536):
        pass


def _head(status: int, content_type: str, *, chunked: bool) -> bytes:
    framing = "Transfer-Encoding: chunked\r\n" if chunked else ""
    return (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
        f"{framing}Connection: close\r\n\r\n"
    ).encode("latin-1")


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
