"""Client-facing TLS: the native protocol server and the etcd gRPC API, over fake members.

Each test makes its own throwaway CA (tests/kvapp/tls_certs.py), serves on 127.0.0.1 under an
overall timeout and stops what it starts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest

from kvapp.etcdpb import rpc_pb2
from kvapp.mvcc.types import PutRequest, RangeRequest, RangeResponse
from kvapp.server import native as wire
from kvapp.server.etcd import EtcdGrpcServer, publish_grpc_urls
from kvapp.server.etcd.gateway import EtcdGateway
from kvapp.server.etcd.gateway_http import GatewayHttpServer
from kvapp.server.native import NativeServer, Op
from kvapp.tls import TlsInfo, client_context
from tests.kvapp.etcd.helpers import Etcd, StateMaintenance
from tests.kvapp.fake_service import FakeCluster
from tests.kvapp.test_native import CLIENT_ID, Raw, ok_result, req, run
from tests.kvapp.tls_certs import TestCA

pb = rpc_pb2
NATIVE_LOG = "kvapp.server.native"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d: Path = tmp_path_factory.mktemp("pki")
    ca = TestCA(d, "ca")
    rogue = TestCA(d, "rogue")
    return {
        "ca": ca,
        "server": ca.issue("server"),
        "follower": ca.issue("follower"),
        "client": ca.issue("client"),
        "intruder": rogue.issue("intruder"),
    }


def server_tls(pki: dict[str, Any], *, client_cert_auth: bool, leaf: str = "server") -> TlsInfo:
    return TlsInfo(pki[leaf].cert, pki[leaf].key, pki["ca"].cert, client_cert_auth)


def client_ctx(pki: dict[str, Any], leaf: str | None) -> ssl.SSLContext:
    """A client context trusting the CA, presenting ``leaf``'s certificate (None: none)."""
    if leaf is None:
        return client_context(ca_file=pki["ca"].cert)
    return client_context(ca_file=pki["ca"].cert, cert_file=pki[leaf].cert, key_file=pki[leaf].key)


# -- the native protocol --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def native_tls(tls: TlsInfo) -> AsyncIterator[NativeServer]:
    cluster = FakeCluster()
    server = NativeServer(cluster.service(cluster.new_member_id()), tls=tls.server_context())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def open_native(port: int, context: ssl.SSLContext | None) -> Raw:
    """A native-protocol connection (over TLS with ``context``), its handshake done."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    raw = Raw(reader, writer)
    try:
        await raw.send([wire.MAGIC, wire.VERSION, CLIENT_ID])
        raw.hello = await raw.recv()
    except BaseException:
        await raw.close()
        raise
    return raw


_WRITE_IDS = itertools.count(1)


async def put_and_get(raw: Raw, value: bytes) -> None:
    write = req(1, PutRequest(b"k", value), request_id=next(_WRITE_IDS))
    await raw.send([write])
    ok_result((await raw.answers(1))[1], Op.PUT)
    await raw.send([req(2, RangeRequest(b"k"))])  # a read pipelined with the write may miss it
    _, result = ok_result((await raw.answers(1))[2], Op.RANGE)
    assert isinstance(result, RangeResponse)
    assert [kv.value for kv in result.kvs] == [value]


async def assert_refused(port: int, context: ssl.SSLContext | None) -> None:
    """The server closes the connection instead of answering the native handshake."""
    try:
        raw = await open_native(port, context)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return
    await raw.close()
    raise AssertionError(f"the server answered the handshake: {raw.hello!r}")


@pytest.mark.parametrize("client_cert_auth", [False, True], ids=["server-auth", "mutual"])
def test_native_protocol_over_tls(
    client_cert_auth: bool, pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=NATIVE_LOG)

    @run()
    async def main() -> None:
        async with native_tls(server_tls(pki, client_cert_auth=client_cert_auth)) as server:
            raw = await open_native(server.port, client_ctx(pki, "client"))
            await put_and_get(raw, b"with a client certificate")
            await raw.close()
            if client_cert_auth:
                await assert_refused(server.port, client_ctx(pki, None))
                await assert_refused(server.port, client_ctx(pki, "intruder"))
            else:  # no client certificate needed
                raw = await open_native(server.port, client_ctx(pki, None))
                await put_and_get(raw, b"without one")
                await raw.close()
            await assert_refused(server.port, None)  # plaintext
            # a client that does not trust the server's CA refuses the server
            other = client_context(ca_file=pki["intruder"].cert.parent / "rogue.pem")
            with pytest.raises(ssl.SSLCertVerificationError):
                await open_native(server.port, other)
            # the server still serves
            raw = await open_native(server.port, client_ctx(pki, "client"))
            await put_and_get(raw, b"still serving")
            await raw.close()

    main()
    refusals = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert any("the other side does not speak TLS" in line for line in refusals), refusals
    if client_cert_auth:
        assert any("no certificate presented" in line for line in refusals), refusals
        assert any(
            "certificate verify failed: unable to get local issuer certificate" in line
            for line in refusals
        ), refusals
    assert all(line.startswith("native: refused a connection from 127.0.0.1:") for line in refusals)


# -- the etcd gRPC API ----------------------------------------------------------------------


class TlsEtcd(Etcd):
    """The tests' etcd client over a TLS channel."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials) -> None:
        self.channel = grpc.aio.secure_channel(target, credentials)


def channel_credentials(pki: dict[str, Any], leaf: str | None) -> grpc.ChannelCredentials:
    ca = pki["ca"].cert.read_bytes()
    if leaf is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=pki[leaf].key.read_bytes(),
        certificate_chain=pki[leaf].cert.read_bytes(),
    )


@contextlib.asynccontextmanager
async def grpc_tls(pki: dict[str, Any], *, client_cert_auth: bool) -> AsyncIterator[list[str]]:
    """A leader and a follower serving etcd's API over TLS; yields their endpoints."""
    cluster = FakeCluster()
    maintenance = StateMaintenance(cluster.state)
    servers = []
    try:
        for i, leaf in enumerate(("server", "follower")):
            member_id = 0x100 + i
            service = cluster.service(member_id, name=f"m{i + 1}")
            server = EtcdGrpcServer(
                service,
                maintenance=maintenance,
                tls=server_tls(pki, client_cert_auth=client_cert_auth, leaf=leaf),
            )
            await server.start()
            servers.append(server)
            info = cluster.members[member_id]
            cluster.members[member_id] = attrs.evolve(
                info, client_urls=publish_grpc_urls((f"https://{server.endpoint}",))
            )
        yield [s.endpoint for s in servers]
    finally:
        for s in servers:
            await s.stop(grace=0)


async def unavailable(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    return info.value.details() or ""


@pytest.mark.parametrize("client_cert_auth", [False, True], ids=["server-auth", "mutual"])
def test_etcd_grpc_api_over_tls(client_cert_auth: bool, pki: dict[str, Any]) -> None:
    @run()
    async def main() -> None:
        async with grpc_tls(pki, client_cert_auth=client_cert_auth) as (leader, follower):
            good = TlsEtcd(leader, channel_credentials(pki, "client"))
            bare = TlsEtcd(leader, channel_credentials(pki, None))
            plain = Etcd(leader)
            on_follower = TlsEtcd(follower, channel_credentials(pki, "client"))
            try:
                await good.put(b"k", b"v")
                got = await good.range(b"k")
                assert [kv.value for kv in got.kvs] == [b"v"]
                if client_cert_auth:
                    await unavailable(bare.range(b"k"))
                else:
                    assert (await bare.range(b"k")).kvs[0].value == b"v"
                await unavailable(plain.range(b"k"))
                # a follower forwards lease calls to the leader's https URL, over TLS with
                # its own certificate
                grant = await good.call(
                    "Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=30), pb.LeaseGrantResponse
                )
                ttl = await on_follower.call(
                    "Lease",
                    "LeaseTimeToLive",
                    pb.LeaseTimeToLiveRequest(ID=grant.ID),
                    pb.LeaseTimeToLiveResponse,
                )
                assert ttl.grantedTTL == 30
            finally:
                for c in (good, bare, plain, on_follower):
                    await c.close()

    main()


# -- the etcd JSON gateway ------------------------------------------------------------------


async def https_post(port: int, path: str, body: dict[str, str], context: ssl.SSLContext) -> Any:
    """POST a JSON body over TLS (one connection); the decoded JSON answer of a 200."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(head.encode() + data)
        async with asyncio.timeout(10):
            answer = await reader.read(-1)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 200"), answer
    return json.loads(rest.partition(b"\r\n\r\n")[2])


def test_etcd_json_gateway_over_tls(pki: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kvapp.server.etcd.gateway_http")

    @run()
    async def main() -> None:
        cluster = FakeCluster()
        gateway = EtcdGateway(
            cluster.service(cluster.new_member_id()), StateMaintenance(cluster.state)
        )
        tls = server_tls(pki, client_cert_auth=True).server_context()
        server = GatewayHttpServer(gateway, tls=tls)
        await server.start()
        try:
            assert server.url.startswith("https://127.0.0.1:")
            key = base64.b64encode(b"k").decode()
            value = base64.b64encode(b"v").decode()
            good = client_ctx(pki, "client")
            await https_post(server.port, "/v3/kv/put", {"key": key, "value": value}, good)
            got = await https_post(server.port, "/v3/kv/range", {"key": key}, good)
            assert got["kvs"][0]["value"] == value
            with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
                await https_post(server.port, "/v3/kv/range", {"key": key}, client_ctx(pki, None))
        finally:
            await server.stop()

    main()
    assert "etcd JSON gateway: refused a connection from 127.0.0.1:" in caplog.text
    assert "no certificate presented" in caplog.text
