"""etcd's JSON gateway (kvapp.server.etcd.gateway + gateway_http) over fake members.

Real HTTP/1.1 on 127.0.0.1 from a curl-like client on asyncio streams; the fake members
(tests/kvapp/fake_service.py) share one state and serve gRPC too, so a follower's gateway can
forward lease calls to the leader as the gRPC API does.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvapp.cli import UsageError, parse_serve_args
from kvapp.errors import GrpcCode, NoLeaderError
from kvapp.launcher import plan_cluster, serve_args
from kvapp.server.etcd.gateway import EtcdGateway, GatewayError
from kvapp.server.etcd.gateway_http import GatewayHttpServer, HttpError, HttpRequest, parse_head
from tests.kvapp.etcd.helpers import FakeEtcdCluster, aio


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _parse_response(data: bytes) -> Response:
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b"".join(_dechunk(rest))
    else:
        body = rest[: int(headers.get("content-length", len(rest)))]
    return Response(int(lines[0].split()[1]), headers, body)


def _dechunk(data: bytes) -> list[bytes]:
    chunks = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(data[:size])
        data = data[size + 2 :]
    return chunks


class Gateways:
    """Fake members, each with its gRPC server and an HTTP gateway; the first leads."""

    def __init__(self, **server_kw: Any) -> None:
        self.etcd = FakeEtcdCluster()
        self.servers: list[GatewayHttpServer] = []
        self.server_kw = server_kw

    async def start(self, size: int = 2, **gateway_kw: Any) -> Gateways:
        await self.etcd.start(size)
        for m in self.etcd.members:
            gw = EtcdGateway(m.service, self.etcd.maintenance, **gateway_kw)
            server = GatewayHttpServer(gw, host="127.0.0.1", port=0, **self.server_kw)
            await server.start()
            self.servers.append(server)
        return self

    async def close(self) -> None:
        for s in self.servers:
            await s.stop()
        await self.etcd.close()

    @property
    def leader(self) -> int:
        return self.servers[0].port

    @property
    def follower(self) -> int:
        return self.servers[1].port


def gateways(
    size: int = 2, server_kw: dict[str, Any] | None = None, **gateway_kw: Any
) -> Callable[
    [Callable[[Gateways], Coroutine[Any, Any, None]]], Callable[[], Coroutine[Any, Any, None]]
]:
    """Run the test with started Gateways, closed afterwards."""

    def wrap(
        fn: Callable[[Gateways], Coroutine[Any, Any, None]],
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            g = await Gateways(**(server_kw or {})).start(size, **gateway_kw)
            try:
                await fn(g)
            finally:
                await g.close()

        run.__name__ = fn.__name__
        return run

    return wrap


async def raw(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything the server sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(-1)
    finally:
        writer.close()


async def post(
    port: int, path: str, body: object = None, *, headers: tuple[str, ...] = ()
) -> Response:
    """curl -X POST http://127.0.0.1:port/path -d JSON (one connection, then closed)."""
    data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    extra = "".join(f"{h}\r\n" for h in headers)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return _parse_response(await raw(port, head.encode() + data))


async def ok(port: int, path: str, body: object = None) -> Any:
    resp = await post(port, path, body)
    assert resp.status == 200, resp
    assert resp.headers["content-type"] == "application/json"
    return resp.json()


class Stream:
    """A streaming POST read chunk by chunk (each chunk one JSON line, as etcd sends them)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(cls, port: int, path: str, *bodies: object) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = b"".join(json.dumps(b).encode() + b"\n" for b in bodies)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        s = cls(reader, writer)
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        s.status = int(lines[0].split()[1])
        s.headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        return s

    async def chunk(self, wait: float = 10) -> bytes | None:
        """The next chunk's data (within ``wait`` seconds); None for the last chunk."""
        async with asyncio.timeout(wait):
            size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return None
            data = await self.reader.readexactly(size)
            assert await self.reader.readexactly(2) == b"\r\n"
            return data

    async def result(self) -> Any:
        data = await self.chunk()
        assert data is not None, "the stream ended"
        assert data.endswith(b"\n"), data
        assert data.count(b"\n") == 1, data
        return json.loads(data)["result"]

    async def nothing_for(self, seconds: float) -> None:
        with pytest.raises(TimeoutError):
            await self.chunk(seconds)

    def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def stream(port: int, path: str, *bodies: object) -> AsyncIterator[Stream]:
    s = await Stream.open(port, path, *bodies)
    try:
        yield s
    finally:
        s.close()


async def until(check: Callable[[], bool], what: str) -> None:
    """Wait up to 5 s for ``check()``."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# -- KV --------------------------------------------------------------------------------------------


@aio
@gateways()
async def test_put_and_range_in_etcds_json(g: Gateways) -> None:
    c = g.etcd.cluster
    put = await ok(g.leader, "/v3/kv/put", {"key": b64("foo"), "value": b64("bar")})
    assert put == {
        "header": {
            "cluster_id": str(c.cluster_id),
            "member_id": str(0x100),
            "revision": "2",
            "raft_term": str(c.term),
        }
    }
    got = await ok(g.leader, "/v3/kv/range", {"key": b64("foo")})
    # int64 as strings, bytes as base64, default values (version 1 is not one) left out
    assert got["kvs"] == [
        {
            "key": "Zm9v",
            "create_revision": "2",
            "mod_revision": "2",
            "version": "1",
            "value": "YmFy",
        }
    ]
    assert got["count"] == "1"
    assert "more" not in got
    # the follower serves the same state with its own member id; numbers and camelCase accepted
    for i, key in enumerate(["a/1", "a/3", "a/2", "b"]):
        await ok(g.follower, "/v3/kv/put", {"key": b64(key), "value": b64(f"v{i}")})
    prefix = await ok(
        g.follower,
        "/v3/kv/range",
        {"key": b64("a/"), "rangeEnd": b64("a0"), "limit": 2, "sort_order": "DESCEND"},
    )
    assert prefix["header"]["member_id"] == str(0x101)
    assert [unb64(kv["key"]) for kv in prefix["kvs"]] == [b"a/3", b"a/2"]
    assert (prefix["more"], prefix["count"]) == (True, "3")
    keys = await ok(
        g.leader,
        "/v3/kv/range",
        {"key": b64("\0"), "range_end": b64("\0"), "keys_only": True, "sort_target": 0},
    )
    assert [unb64(kv["key"]) for kv in keys["kvs"]] == [b"a/1", b"a/2", b"a/3", b"b", b"foo"]
    assert all("value" not in kv for kv in keys["kvs"])
    everything = {"key": "AA==", "range_end": "AA==", "count_only": True}
    counted = await ok(g.leader, "/v3/kv/range", everything)
    assert (counted["count"], "kvs" in counted) == ("5", False)
    old = await ok(g.leader, "/v3/kv/range", {"key": b64("a/1"), "revision": "3"})
    assert unb64(old["kvs"][0]["value"]) == b"v0"
    prev = await ok(g.leader, "/v3/kv/put", {"key": b64("b"), "value": b64("new"), "prev_kv": True})
    assert unb64(prev["prev_kv"]["value"]) == b"v3"


@aio
@gateways()
async def test_txn_deleterange_and_compaction(g: Gateways) -> None:
    create = {
        "compare": [
            {"key": b64("lock"), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
        ],
        "success": [{"request_put": {"key": b64("lock"), "value": b64("me")}}],
        "failure": [{"request_range": {"key": b64("lock")}}],
    }
    first = await ok(g.leader, "/v3/kv/txn", create)
    assert first["succeeded"] is True
    assert first["responses"] == [{"response_put": {"header": {"revision": "2"}}}]
    second = await ok(g.follower, "/v3/kv/txn", create)
    assert "succeeded" not in second  # false is a default value: left out
    ranged = second["responses"][0]["response_range"]
    assert unb64(ranged["kvs"][0]["value"]) == b"me"
    nested = await ok(
        g.leader,
        "/v3/kv/txn",
        {"success": [{"request_txn": {"success": [{"request_put": {"key": b64("n")}}]}}]},
    )
    assert nested["responses"][0]["response_txn"]["succeeded"] is True
    for key in ("p/1", "p/2", "q"):
        await ok(g.leader, "/v3/kv/put", {"key": b64(key), "value": b64("x")})
    deleted = await ok(
        g.leader,
        "/v3/kv/deleterange",
        {"key": b64("p/"), "range_end": b64("p0"), "prev_kv": True},
    )
    assert deleted["deleted"] == "2"
    assert [unb64(kv["key"]) for kv in deleted["prev_kvs"]] == [b"p/1", b"p/2"]
    rev = int(deleted["header"]["revision"])
    compacted = await ok(g.leader, "/v3/kv/compaction", {"revision": str(rev)})
    assert compacted["header"]["revision"] == str(rev)
    gone = await post(g.leader, "/v3/kv/range", {"key": b64("q"), "revision": 2})
    assert (gone.status, gone.json()) == (
        400,
        {
            "error": "etcdserver: mvcc: required revision has been compacted",
            "message": "etcdserver: mvcc: required revision has been compacted",
            "code": 11,
        },
    )


# -- Lease -----------------------------------------------------------------------------------------


@aio
@gateways()
async def test_lease_grant_keepalive_timetolive_revoke_and_leases(g: Gateways) -> None:
    grant = await ok(g.follower, "/v3/lease/grant", {"TTL": 30})
    lease = grant["ID"]
    assert grant["TTL"] == "30"
    await ok(g.leader, "/v3/kv/put", {"key": b64("leased"), "value": b64("v"), "lease": lease})
    # a follower forwards keep-alives and time-to-live to the leader, as over gRPC
    for port in (g.leader, g.follower):
        keep = await post(port, "/v3/lease/keepalive", {"ID": lease})
        assert keep.status == 200
        assert keep.headers["transfer-encoding"] == "chunked"
        assert keep.body.count(b"\n") == 1
        assert keep.json()["result"]["ID"] == lease
        assert keep.json()["result"]["TTL"] == "30"
    for path in ("/v3/lease/timetolive", "/v3/kv/lease/timetolive"):
        ttl = await ok(g.follower, path, {"ID": lease, "keys": True})
        assert (ttl["grantedTTL"], [unb64(k) for k in ttl["keys"]]) == ("30", [b"leased"])
        assert 0 < int(ttl["TTL"]) <= 30
    for path in ("/v3/lease/leases", "/v3/kv/lease/leases"):
        assert (await ok(g.leader, path, {}))["leases"] == [{"ID": lease}]
    # several requests in one body: one answer each, in order, then the stream ends
    async with stream(g.leader, "/v3/lease/keepalive", {"ID": lease}, {"ID": "99"}) as s:
        assert s.headers["content-type"] == "application/json"
        assert (await s.result())["TTL"] == "30"
        assert (await s.result()) == {  # an unknown lease: TTL 0, left out
            "header": {
                "cluster_id": str(g.etcd.cluster.cluster_id),
                "member_id": str(0x100),
                "revision": "2",
                "raft_term": str(g.etcd.cluster.term),
            },
            "ID": "99",
        }
        assert await s.chunk() is None
    await ok(g.follower, "/v3/kv/lease/revoke", {"ID": lease})
    assert "kvs" not in await ok(g.leader, "/v3/kv/range", {"key": b64("leased")})
    assert (await ok(g.leader, "/v3/lease/timetolive", {"ID": lease}))["TTL"] == "-1"
    revoked = await post(g.leader, "/v3/lease/revoke", {"ID": lease})
    assert revoked.status == 404
    assert revoked.json() == {
        "error": "etcdserver: requested lease not found",
        "message": "etcdserver: requested lease not found",
        "code": 5,
    }
    assert "leases" not in await ok(g.leader, "/v3/lease/leases")


# -- Cluster and Maintenance -----------------------------------------------------------------------


@aio
@gateways()
async def test_members_status_and_maintenance(g: Gateways) -> None:
    members = (await ok(g.follower, "/v3/cluster/member/list", {}))["members"]
    assert [m["name"] for m in members] == ["m1", "m2"]
    assert members[0]["ID"] == str(0x100)
    assert members[0]["clientURLs"] == [f"http://{g.etcd.leader.server.endpoint}"]
    assert "isLearner" not in members[0]
    added = await ok(
        g.leader,
        "/v3/cluster/member/add",
        {"peerURLs": ["http://127.0.0.1:1"], "isLearner": True},
    )
    assert added["member"]["isLearner"] is True
    assert len(added["members"]) == 3
    await ok(g.leader, "/v3/cluster/member/remove", {"ID": added["member"]["ID"]})
    update = await post(g.leader, "/v3/cluster/member/update", {"ID": str(0x100)})
    assert (update.status, update.json()["code"]) == (400, 3)  # no peer URL
    updated = await ok(
        g.leader,
        "/v3/cluster/member/update",
        {"ID": str(0x100), "peerURLs": ["http://127.0.0.1:2"]},
    )
    assert updated["members"][0]["peerURLs"] == ["http://127.0.0.1:2"]
    status = await ok(g.follower, "/v3/maintenance/status", {})
    assert status["leader"] == str(0x100)
    assert status["header"]["member_id"] == str(0x101)
    assert await ok(g.leader, "/v3/maintenance/alarm", {}) == {}  # etcd 3.4 sets no header
    raised = await ok(g.leader, "/v3/maintenance/alarm", {"action": "ACTIVATE", "alarm": "NOSPACE"})
    assert raised == {"alarms": [{"alarm": "NOSPACE"}]}
    status = await ok(g.follower, "/v3/maintenance/status", {})
    assert status["errors"] == ["alarm:NOSPACE "]
    assert "hash" in await ok(g.leader, "/v3/maintenance/hash", {})
    assert "compact_revision" in await ok(g.leader, "/v3/maintenance/hashkv", {})
    # etcd 3.4.23's gateway answered {} (maintenanceServer.Defragment sets no header)
    assert await ok(g.leader, "/v3/maintenance/defragment", {}) == {}
    await ok(g.leader, "/v3/maintenance/transfer-leadership", {"targetID": str(0x101)})
    assert g.etcd.maintenance.moved_to == [0x101]


@aio
@gateways()
async def test_snapshot_streams_the_members_snapshot_in_base64_pieces(g: Gateways) -> None:
    for i in range(20):
        await ok(g.leader, "/v3/kv/put", {"key": b64(f"k{i}"), "value": b64("v" * 100)})
    g.etcd.leader.service.snapshot_chunk = 700
    resp = await post(g.leader, "/v3/maintenance/snapshot", {})
    assert resp.status == 200
    pieces = [json.loads(line)["result"] for line in resp.body.splitlines()]
    assert len(pieces) > 2
    blob = b"".join(unb64(p["blob"]) for p in pieces)
    expected = b"".join([c async for c in g.etcd.leader.service.snapshot()])
    assert blob == expected
    assert "remaining_bytes" not in pieces[-1]
    assert not any("header" in p for p in pieces)  # etcd 3.4's pieces carry none


# -- Watch -----------------------------------------------------------------------------------------


@aio
@gateways()
async def test_watch_streams_each_response_as_one_json_line(g: Gateways) -> None:
    watches = g.etcd.cluster.state.watches
    await ok(g.leader, "/v3/kv/put", {"key": b64("w/old"), "value": b64("1")})
    create = {
        "create_request": {
            "key": b64("w/"),
            "range_end": b64("w0"),
            "start_revision": 2,
            "prev_kv": True,
        }
    }
    async with stream(g.follower, "/v3/watch", create) as s:
        assert (s.status, s.headers["transfer-encoding"]) == (200, "chunked")
        created = await s.result()
        assert created["created"] is True
        assert "watch_id" not in created  # watch id 0: a default value, left out
        history = await s.result()
        assert [unb64(e["kv"]["key"]) for e in history["events"]] == [b"w/old"]
        assert "type" not in history["events"][0]  # PUT is the default event type
        await ok(g.leader, "/v3/kv/put", {"key": b64("w/new"), "value": b64("2")})
        await ok(g.leader, "/v3/kv/put", {"key": b64("other"), "value": b64("x")})
        await ok(g.leader, "/v3/kv/deleterange", {"key": b64("w/new")})
        put = await s.result()
        assert unb64(put["events"][0]["kv"]["value"]) == b"2"
        assert put["header"]["revision"] == "3"
        deleted = await s.result()
        assert deleted["events"][0]["type"] == "DELETE"
        assert unb64(deleted["events"][0]["prev_kv"]["value"]) == b"2"
        await s.nothing_for(0.2)
        assert watches.watcher_count == 1
    # the client went away: its watcher is gone
    await until(lambda: watches.watcher_count == 0, "the watcher to be cancelled")


@aio
@gateways()
async def test_watch_body_with_several_requests_and_a_failed_create(g: Gateways) -> None:
    create = {"create_request": {"key": b64("a"), "watch_id": 7}}
    async with stream(g.leader, "/v3/watch", create, create, {"progress_request": {}}) as s:
        assert (await s.result())["watch_id"] == "7"
        refused = await s.result()  # a duplicate id is refused in the stream, as etcd does
        assert (refused["watch_id"], refused["created"], refused["canceled"]) == ("-1", True, True)
        assert refused["cancel_reason"]
        progress = await s.result()
        assert "events" not in progress
        await ok(g.leader, "/v3/kv/put", {"key": b64("a"), "value": b64("1")})
        assert (await s.result())["watch_id"] == "7"


@aio
@gateways()
async def test_streams_requiring_a_leader_fail_without_one(g: Gateways) -> None:
    g.etcd.cluster.leader_id = 0
    body = json.dumps({"create_request": {"key": b64("a")}}).encode()
    resp = await post(g.follower, "/v3/watch", body, headers=("Grpc-Metadata-Hasleader: true",))
    assert resp.status == 503
    assert resp.json() == {
        "error": {
            "grpc_code": 14,
            "http_code": 503,
            "message": NoLeaderError.message,
            "http_status": "Service Unavailable",
        }
    }


# -- errors, limits and HTTP -----------------------------------------------------------------------


@aio
@gateways()
async def test_errors_are_etcds_and_the_member_keeps_serving(g: Gateways) -> None:
    port = g.leader

    async def refused(path: str, body: object, status: int, code: int, text: str) -> None:
        resp = await post(port, path, body)
        assert (resp.status, resp.headers["content-type"]) == (status, "application/json"), resp
        error = resp.json()
        assert (error["code"], error["error"]) == (code, error["message"])
        assert text in error["message"], error

    await refused("/v3/kv/put", {"value": b64("v")}, 400, 3, "etcdserver: key is not provided")
    await refused("/v3/kv/range", b'{"key": ', 400, 3, "invalid JSON")
    await refused("/v3/kv/range", b"[1, 2]", 400, 3, "expected a JSON object")
    await refused("/v3/kv/range", b"\xff\xfe", 400, 3, "not UTF-8")
    await refused("/v3/kv/put", {"key": "foo"}, 400, 3, "PutRequest.key")
    await refused("/v3/kv/put", {"key": b64("k"), "lease": "x"}, 400, 3, "lease")
    await refused("/v3/kv/put", {"key": b64("k"), "lease": str(2**63)}, 400, 3, "lease")
    await refused("/v3/kv/range", {"key": b64("k"), "sort_order": "UP"}, 400, 3, "sort_order")
    await refused(
        "/v3/kv/txn",
        {"compare": [{"key": "!"}]},
        400,
        3,
        "TxnRequest.compare[0].key",
    )
    nested: dict[str, Any] = {}
    for _ in range(150):
        nested = {"success": [{"request_txn": nested}]}
    await refused("/v3/kv/txn", nested, 400, 3, "nested too deeply")
    await refused("/v3/kv/range", b"[" * 100_000, 400, 3, "")
    await refused("/v3/kv/range", {"key": b64("k"), "revision": 99}, 400, 11, "future revision")
    await refused("/v3/lock/unlock", {}, 500, 2, "etcdserver: key is not provided")
    await refused("/v3/auth/user/add", {}, 501, 12, "unknown service etcdserverpb.Auth")
    await refused("/v3/maintenance/alarm", {"action": 7}, 400, 3, "invalid request")
    too_many = {"success": [{"request_put": {"key": b64(f"k{i}")}} for i in range(129)]}
    await refused("/v3/kv/txn", too_many, 400, 3, "too many operations in txn request")
    # unknown fields are ignored; an empty body is an empty request
    assert "kvs" not in await ok(port, "/v3/kv/range", {"key": b64("k"), "bogus": {"x": 1}})
    await refused("/v3/kv/range", None, 400, 3, "key is not provided")
    # unknown paths and methods: grpc-gateway's and Go's plain-text answers
    for path, status, text in [
        ("/v3/kv/nope", 404, b"Not Found\n"),
        ("/v3alpha/kv/range", 404, b"404 page not found\n"),
        ("/", 404, b"404 page not found\n"),
    ]:
        resp = await post(port, path, {})
        assert (resp.status, resp.body) == (status, text)
        assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    get = _parse_response(await raw(port, b"GET /v3/kv/range HTTP/1.0\r\n\r\n"))
    assert (get.status, get.body) == (405, b"Method Not Allowed\n")
    assert (await ok(port, "/v3/kv/put", {"key": b64("still"), "value": b64("ok")}))["header"]


@aio
@gateways(max_request_bytes=4096, server_kw={"max_body_bytes": 64 * 1024})
async def test_request_size_limits(g: Gateways) -> None:
    port = g.leader
    # (above --max-request-bytes the member refuses it: see test_gateway_members.py)
    over = await post(port, "/v3/kv/put", {"key": b64("k"), "value": b64(b"x" * 70_000)})
    assert over.status == 413
    assert over.json()["code"] == 8
    # a declared length above the limit is refused before the body is read
    head = b"POST /v3/kv/put HTTP/1.1\r\nContent-Length: 10000000\r\nExpect: 100-continue\r\n\r\n"
    refused = _parse_response(await raw(port, head))
    assert refused.status == 413
    assert "larger than the 65536 bytes accepted" in refused.json()["message"]
    # a chunked body is counted as it arrives
    chunk = b"%x\r\n%s\r\n" % (40_000, b" " * 40_000)
    chunked = b"POST /v3/kv/put HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2
    assert _parse_response(await raw(port, chunked)).status == 413
    header = b"POST /v3/kv/put HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert _parse_response(await raw(port, header)).status == 431
    assert (await ok(port, "/v3/kv/put", {"key": b64("k"), "value": b64("fine")}))["header"]


@aio
@gateways(max_request_bytes=1024)
async def test_a_message_above_grpcs_limit_is_refused_as_etcd_refuses_it(g: Gateways) -> None:
    limit = 1024 + 512 * 1024
    resp = await post(g.leader, "/v3/kv/put", {"key": b64("k"), "value": b64(b"x" * limit)})
    assert resp.status == 429
    assert resp.json()["message"].startswith("grpc: received message larger than max (")
    assert resp.json()["message"].endswith(f" vs. {limit})")


@aio
@gateways()
async def test_keep_alive_chunked_bodies_continue_version_and_v3beta(g: Gateways) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", g.leader)
    try:
        body = json.dumps({"key": b64("k"), "value": b64("v")}).encode()
        writer.write(
            b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\n\r\n" % len(body)
        )
        async with asyncio.timeout(5):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        # then a chunked request, then one on the 3.3 prefix, on the same connection
        range_body = json.dumps({"key": b64("k")}).encode()
        writer.write(
            b"POST /v3/kv/range HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x;ext=1\r\n%s\r\n" % (5, range_body[:5])
            + b"%x\r\n%s\r\n0\r\nX-Trailer: y\r\n\r\n" % (len(range_body) - 5, range_body[5:])
        )
        writer.write(
            b"POST /v3beta/kv/range HTTP/1.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(range_body), range_body)
        )
        async with asyncio.timeout(10):
            data = await reader.read(-1)
    finally:
        writer.close()
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200"] * 3
    for a in answers[1:]:
        assert b'"value":"dg=="' in a
    assert b"Connection: close" in answers[2]
    version = _parse_response(await raw(g.leader, b"GET /version HTTP/1.0\r\n\r\n"))
    assert version.status == 200
    assert version.json()["etcdserver"] == "3.4.0"
    assert version.json()["etcdcluster"] == "3.4.0"


@aio
@gateways(server_kw={"idle_timeout": 0.2, "read_timeout": 0.3})
async def test_idle_and_stalled_connections_are_closed(g: Gateways) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", g.leader)
    async with asyncio.timeout(5):
        assert await reader.read(-1) == b""  # idle: closed without an answer
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", g.leader)
    writer.write(b"POST /v3/kv/range HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    async with asyncio.timeout(5):
        assert await reader.read(-1) == b""  # the body never came
    writer.close()
    assert "header" in await ok(g.leader, "/v3/maintenance/status", {})


@aio
@gateways()
async def test_malformed_requests_get_a_json_400_and_a_closed_connection(g: Gateways) -> None:
    for data, status in [
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /v3/kv/range HTTP/2.0\r\n\r\n", 505),
        (b"POST /v3/kv/range HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"POST /v3/kv/range HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /v3/kv/range HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST /v3/kv/range HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /v3/kv/range HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ]:
        resp = _parse_response(await raw(g.leader, data))
        assert resp.status == status, (data, resp)
        assert resp.headers["connection"] == "close"
        assert resp.json()["message"]
    assert "header" in await ok(g.leader, "/v3/maintenance/status", {})


def test_parse_head() -> None:
    req = parse_head(
        b"POST /v3beta/kv/range?x=1 HTTP/1.0\r\nConnection: Keep-Alive\r\n"
        b"Grpc-Metadata-Hasleader: true\r\nContent-Length: 12\r\n\r\n"
    )
    assert (req.method, req.path, req.version, req.content_length) == (
        "POST",
        "/v3beta/kv/range",
        (1, 0),
        12,
    )
    assert req.keep_alive
    assert req.metadata() == (("hasleader", "true"),)
    assert not parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive
    with pytest.raises(HttpError) as info:
        parse_head(b"GET / HTTP/1.1\r\n folded\r\n\r\n")
    assert info.value.status == 400


def test_kvapp_serve_takes_listen_client_http_urls(tmp_path: Path) -> None:
    base = ["--name", "m", "--data-dir", str(tmp_path / "m")]
    opts, _ = parse_serve_args([*base, "--listen-client-http-urls", "http://127.0.0.1:2381"])
    assert opts.client_http_urls == ("http://127.0.0.1:2381",)
    assert parse_serve_args(base)[0].client_http_urls == ()
    with pytest.raises(UsageError, match="--listen-client-http-urls"):
        parse_serve_args([*base, "--listen-client-http-urls", "127.0.0.1"])


# -- properties: any input is a request or the documented refusal ----------------------------------

_REQUESTS = sorted(
    {route.request for route in EtcdGateway(None).routes.values()},  # type: ignore[arg-type]
    key=lambda cls: cls.DESCRIPTOR.name,
)
_NAMES = sorted(
    {n for cls in _REQUESTS for f in cls.DESCRIPTOR.fields for n in (f.name, f.json_name)}
    | {"key", "request_put", "request_txn", "create_request", "success", "compare"}
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["Zm9v", "Zm9", "Zm9v\n", "-_-_", "DESCEND", "DELETE", "NOPUT", "0x10"])
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(_NAMES) | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=24,
)


@given(st.sampled_from(_REQUESTS), _JSON)
def test_any_json_is_a_request_or_an_invalid_argument(cls: Any, value: object) -> None:
    gateway = EtcdGateway(None)  # type: ignore[arg-type]
    outcome: list[Any] | GatewayError
    try:
        outcome = gateway.decode(cls, json.dumps(value).encode(), first_only=False)
    except GatewayError as e:
        outcome = e
    if isinstance(outcome, GatewayError):
        assert outcome.code == GrpcCode.INVALID_ARGUMENT
        assert outcome.message
    else:
        assert all(isinstance(m, cls) for m in outcome)


_HEAD_PARTS = st.sampled_from(
    [
        "POST", "GET", " ", "/v3/kv/range", "http://[::1", "http://h/v3/x", "//x/y", "*",
        "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "\r\n", ":", "Content-Length", "Host",
        "Transfer-Encoding", "chunked", "Connection", "close", "12", "-1", "\u00b2", "\t", "\n",
        "Grpc-Metadata-Hasleader", "%2F", "?q=1", "x",
    ]
)  # fmt: skip


@given(st.lists(_HEAD_PARTS, max_size=20).map("".join) | st.text(max_size=60))
def test_any_head_is_a_request_or_refused_with_a_status(text: str) -> None:
    outcome: HttpRequest | HttpError
    try:
        outcome = parse_head(text.encode("utf-8", "replace") + b"\r\n\r\n")
    except HttpError as e:
        outcome = e
    if isinstance(outcome, HttpError):
        assert outcome.status in (400, 501, 505)
    else:
        assert outcome.path.startswith("/")
        assert outcome.content_length >= 0
        assert isinstance(outcome.keep_alive, bool)


def test_kvapp_cluster_plans_a_gateway_port_per_member(tmp_path: Path) -> None:
    _, members = plan_cluster(3, tmp_path / "new")
    ports = [p for m in members for p in (m.peer_port, m.client_port, m.grpc_port, m.http_port)]
    assert len(set(ports)) == 12
    assert "--listen-client-http-urls" in serve_args(members[0], members, tmp_path, "t")
    # a plan written before the gateway keeps its ports and token and gets gateway ports
    old = tmp_path / "old"
    old.mkdir()
    before = [attrs.asdict(m) for m in members]
    for m in before:
        del m["http_port"]
    (old / "cluster.json").write_text(json.dumps({"token": "tok", "members": before}))
    token, again = plan_cluster(3, old)
    assert token == "tok"
    assert [attrs.evolve(m, http_port=0) for m in again] == [
        attrs.evolve(m, http_port=0) for m in members
    ]
    assert all(m.http_port for m in again)
    assert plan_cluster(3, old) == (token, again)  # kept in cluster.json
