"""In-process kvapp members (kvapp.node.Member on MemoryStorage) whose peer links are TLS.

Each member has its own TcpTransport on 127.0.0.1 with ``https://`` peer URLs and mutual TLS
(peer client certificate authentication on), all on one event loop. Waits are bounded and fail
with a message; every member and transport is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kvapp.mvcc.types import PutRequest, RangeRequest
from kvapp.node import Member, MemberConfig, cluster_id_for, member_id_for
from kvapp.service import MemberInfo
from kvapp.tls import TlsInfo
from kvapp.transport import TcpTransport, TransportConfig
from raftlib import MemoryStorage, Message
from tests.kvapp.test_member import aio
from tests.kvapp.tls_certs import Issued, TestCA

CLUSTER = cluster_id_for("tls")
FAST = TransportConfig(backoff_base=0.02, backoff_max=0.2, handshake_timeout=2.0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d: Path = tmp_path_factory.mktemp("pki")
    ca = TestCA(d, "ca")
    rogue = TestCA(d, "rogue")
    return {
        "ca": ca,
        "leaves": [ca.issue(f"m{i}") for i in (1, 2, 3)],
        "intruder": rogue.issue("intruder"),
    }


@contextlib.asynccontextmanager
async def tls_members(
    leaves: list[Issued], ca: TestCA
) -> AsyncIterator[tuple[list[Member], list[MemberInfo]]]:
    """Members with ``leaves`` as their peer certificates, started; stopped on exit."""
    socks = []
    for _ in leaves:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    infos = []
    for i, s in enumerate(socks):
        urls = (f"https://127.0.0.1:{s.getsockname()[1]}",)
        infos.append(MemberInfo(member_id_for(urls, CLUSTER), f"m{i + 1}", urls))
    members: list[Member] = []
    transports: list[TcpTransport] = []
    try:
        for info, sock, leaf in zip(infos, socks, leaves, strict=True):
            tls = TlsInfo(leaf.cert, leaf.key, ca.cert, client_cert_auth=True)
            box: list[Member] = []

            def on_message(m: Message, box: list[Member] = box) -> None:
                if box:
                    box[0].receive(m)

            def on_unreachable(peer: int, box: list[Member] = box) -> None:
                if box:
                    box[0].report_unreachable(peer)

            def on_snapshot(peer: int, ok: bool, box: list[Member] = box) -> None:
                if box:
                    box[0].report_snapshot(peer, success=ok)

            t = TcpTransport(
                info.id,
                CLUSTER,
                listen=sock,
                on_message=on_message,
                on_unreachable=on_unreachable,
                on_snapshot_status=on_snapshot,
                config=FAST,
                server_ssl=tls.server_context(),
                client_ssl=tls.client_context(),
            )
            config = MemberConfig(
                name=info.name,
                member_id=info.id,
                cluster_id=CLUSTER,
                initial_members=tuple(infos),
                tick_interval=0.02,
                request_timeout=3.0,
            )
            m = Member(config, MemoryStorage(), t)
            box.append(m)
            await t.start()
            transports.append(t)
            await m.start()
            members.append(m)
        yield members, infos
    finally:
        for t in transports:
            await t.stop()
        for m in members:
            await m.stop(transfer=False)
        for s in socks:
            s.close()


async def wait_leader(members: list[Member], within: float = 15.0) -> Member:
    """The member all of ``members`` name as leader, once they agree."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        leaders = {m.node.leader_id for m in members}
        if len(leaders) == 1 and 0 not in leaders:
            (lead,) = leaders
            return next(m for m in members if m.id == lead)
        if loop.time() > deadline:
            raise AssertionError(f"no agreed leader within {within}s: {leaders}")
        await asyncio.sleep(0.02)


def test_members_replicate_over_tls_peer_links(pki: dict[str, Any]) -> None:
    @aio
    async def main() -> None:
        async with tls_members(pki["leaves"], pki["ca"]) as (members, _):
            await wait_leader(members)
            for i, m in enumerate(members):
                await m.write(PutRequest(b"k%d" % i, b"v%d" % i))
            for m in members:
                got = await m.range(RangeRequest(b"k", b"l"))
                assert [kv.value for kv in got.kvs] == [b"v0", b"v1", b"v2"]

    main()


def test_a_member_with_a_certificate_from_another_ca_is_refused_and_the_rest_carry_on(
    pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kvapp.transport")
    leaves = [*pki["leaves"][:2], pki["intruder"]]
    ports: list[int] = []

    @aio
    async def main() -> None:
        async with tls_members(leaves, pki["ca"]) as (members, infos):
            ports.append(int(infos[2].peer_urls[0].rsplit(":", 1)[1]))
            valid = members[:2]
            leader = await wait_leader(valid)
            for i in range(5):
                await leader.write(PutRequest(b"k%d" % i, b"v"))
            for m in valid:
                got = await m.range(RangeRequest(b"k", b"l"))
                assert len(got.kvs) == 5
            intruder = members[2]
            got = await intruder.range(RangeRequest(b"k", b"l", serializable=True))
            assert not got.kvs, "the intruder got data"
            assert intruder.node.leader_id != leader.id

    main()
    lines = [r.getMessage() for r in caplog.records]
    refused = [
        line for line in lines if ": peer links: refused a connection from 127.0.0.1:" in line
    ]
    assert refused, "\n".join(lines)
    assert any(
        "certificate verify failed: unable to get local issuer certificate" in line
        for line in refused
    ), refused
    # the valid members name the intruder's address when their dials to it fail
    failed = [
        line
        for line in lines
        if f"at 127.0.0.1:{ports[0]} failed the TLS handshake: certificate verify failed" in line
    ]
    assert failed, "\n".join(lines)
