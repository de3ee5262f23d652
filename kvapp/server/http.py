"""HTTP ``/health`` and ``/metrics`` for one member (etcd's ``--listen-metrics-urls``).

A deliberately tiny HTTP/1.1 server on asyncio streams: ``GET`` only, one request per
connection, bounded request size and read time, so a scraper or a load balancer's health check
costs a few microseconds and a misbehaving client cannot hold the loop. ``/health`` answers
``{"health":"true"}`` with 200 when this member knows a leader and no alarm is raised, else
``{"health":"false","reason":...}`` with 503, as etcd does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)

_MAX_REQUEST = 8192
_READ_TIMEOUT = 5.0


class HttpServer:
    """Serves ``GET /health`` and ``GET /metrics``.

    Args:
        health: returns ``(healthy, reason)``.
        metrics: returns the metrics in Prometheus' text format.
        host: the address to bind.
        port: the port; 0 picks a free one (see :attr:`port`).
    """

    def __init__(
        self,
        *,
        health: Callable[[], tuple[bool, str]],
        metrics: Callable[[], bytes],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._health = health
        self._metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and serve.

        Raises:
            OSError: the address cannot be bound.
        """
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop serving and close open connections."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, "text/plain", b"request header too large\n")
            return
        if len(head) > _MAX_REQUEST:
            await _respond(writer, 431, "text/plain", b"request header too large\n")
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await _respond(writer, 400, "text/plain", b"bad request\n")
            return
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method != "GET":
            await _respond(writer, 405, "text/plain", b"method not allowed\n")
            return
        if target == "/health":
            ok, reason = self._health()
            body = {"health": "true"} if ok else {"health": "false", "reason": reason}
            await _respond(
                writer, 200 if ok else 503, "application/json", json.dumps(body).encode()
            )
        elif target == "/metrics":
            await _respond(writer, 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics())
        else:
            await _respond(writer, 404, "text/plain", b"not found\n")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


async def _respond(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(head + body)
    await writer.drain()
