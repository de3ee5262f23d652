"""kvapp's protocols on uvloop, whose transports implement asyncio's interface without
subclassing ``asyncio.Transport``.

An application that embeds kvapp's servers may run them on uvloop. kvapp's protocols once asserted
that the transport was an ``asyncio.Transport``, so on uvloop every peer link, gRPC connection and
TLS acceptance failed in ``connection_made``. These tests run each of those protocols on a uvloop
loop: plain peer links, TLS peer links, and a gRPC call to the h2 server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from kvapp.server.grpc_h2 import GrpcH2Server
from tests.kvapp.test_grpc_h2 import _GRPC_HEADERS, Echo, _raw_call
from tests.kvapp.test_tls_transport import pki, tls_kwargs  # noqa: F401 - pki is a fixture
from tests.kvapp.test_transport import Member, app, cluster, eventually, wait_for


def on_uvloop(fn: Callable[[], Coroutine[Any, Any, None]], timeout: float = 30.0) -> None:
    """Run ``fn`` on a fresh uvloop loop, failing (not hanging) after ``timeout`` seconds."""

    async def main() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        async with asyncio.timeout(timeout):
            await fn()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_peer_links_carry_messages_both_ways_on_uvloop() -> None:
    async def main() -> None:
        async with cluster(1, 2) as ms:
            a, b = ms[1], ms[2]
            for i in range(20):
                a.t.send([app(1, 2, i)])
                b.t.send([app(2, 1, 100 + i)])
                await asyncio.sleep(0)
            await eventually(lambda: len(a.received) == len(b.received) == 20, "20 each way")
            assert b.indexes_from(1) == list(range(20))
            assert a.indexes_from(2) == list(range(100, 120))

    on_uvloop(main)


def test_tls_peer_links_carry_messages_on_uvloop(pki: dict[str, Any]) -> None:  # noqa: F811
    async def main() -> None:
        members = {i: Member(i, **tls_kwargs(pki[f"m{i}"], pki["ca"])) for i in (1, 2)}
        try:
            for m in members.values():
                await m.t.start()
            members[1].t.add_peer(2, members[2].t.address)
            members[2].t.add_peer(1, members[1].t.address)
            await wait_for(members[1].t.wait_connected(2), "1 linked to 2 over TLS")
            await wait_for(members[2].t.wait_connected(1), "2 linked to 1 over TLS")
            for i in range(1, 11):
                members[1].t.send([app(1, 2, i)])
                members[2].t.send([app(2, 1, i)])
            await eventually(
                lambda: members[2].indexes_from(1) == members[1].indexes_from(2) == [*range(1, 11)],
                "every message, in order, both ways over TLS",
            )
        finally:
            for m in members.values():
                await m.t.stop()

    on_uvloop(main)


def test_the_grpc_server_answers_a_call_on_uvloop() -> None:
    async def main() -> None:
        server = GrpcH2Server(Echo().services())
        await server.start()
        try:
            answer = await _raw_call(server.port, _GRPC_HEADERS, b"olleh")
        finally:
            await server.stop(grace=0)
        assert answer.get(":status") == "200"
        assert answer.get("grpc-status") == "0", answer

    on_uvloop(main)
