"""The native protocol server, spoken to byte by byte: handshake, frames, pipelining, bad input.

Every test runs its own loop with ``asyncio.run`` under an overall timeout, serves a
:class:`~tests.kvapp.fake_service.FakeService` on 127.0.0.1 and stops what it starts. Reads
wait with explicit timeouts; nothing sleeps until something happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import cbor2
import pytest

from kvapp import requests as kvreq
from kvapp import snapfile
from kvapp.errors import CompactedError, FutureRevisionError, GrpcCode, NoLeaderError
from kvapp.lease import (
    LeaseGrantRequest,
    LeaseKeepAliveResponse,
    LeaseRevokeRequest,
    LeaseTimeToLiveResponse,
)
from kvapp.mvcc.types import (
    CompactRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    Event,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    TxnRequest,
)
from kvapp.server import native as wire
from kvapp.server.native import NativeServer, Op
from kvapp.service import MemberInfo, ResponseHeader, StatusInfo
from kvapp.watch import WatchFilter
from tests.kvapp.fake_service import FakeCluster, FakeService

CLIENT_ID = 0x1234
WRITES = {
    PutRequest,
    DeleteRangeRequest,
    TxnRequest,
    CompactRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
}


def run(timeout: float = 30.0) -> Callable[[Callable[..., Coroutine[Any, Any, None]]], Any]:
    """Run an async test on a fresh loop, failing (not hanging) after ``timeout`` seconds."""

    def wrap(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
        @functools.wraps(fn)
        def runner(*args: Any, **kwargs: Any) -> None:
            async def main() -> None:
                async with asyncio.timeout(timeout):
                    await fn(*args, **kwargs)

            asyncio.run(main())

        return runner

    return wrap


@contextlib.asynccontextmanager
async def serving(
    cluster: FakeCluster | None = None, **options: Any
) -> AsyncIterator[tuple[NativeServer, FakeService]]:
    cluster = cluster or FakeCluster()
    service = cluster.service(cluster.new_member_id())
    server = NativeServer(service, host="127.0.0.1", port=0, **options)
    await server.start()
    try:
        yield server, service
    finally:
        await server.stop()


class Raw:
    """A hand-driven connection: frames in, frames out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.hello: list[Any] = []

    @classmethod
    async def open(cls, port: int, *, handshake: bool = True) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        if handshake:
            await raw.send([wire.MAGIC, wire.VERSION, CLIENT_ID])
            raw.hello = await raw.recv()
        return raw

    async def send(self, obj: object) -> None:
        self.writer.write(wire.encode_frame(obj))
        await self.writer.drain()

    async def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, within: float = 5.0) -> Any:
        async with asyncio.timeout(within):
            (n,) = wire.LENGTH.unpack(await self.reader.readexactly(4))
            return cbor2.loads(await self.reader.readexactly(n))

    async def answers(self, count: int, within: float = 5.0) -> dict[int, list[Any]]:
        """Collect ``count`` answer items (kinds 0 and 1) by request number."""
        got: dict[int, list[Any]] = {}
        while len(got) < count:
            for item in await self.recv(within):
                if item[0] in (wire.ITEM_OK, wire.ITEM_ERROR):
                    assert item[1] not in got, f"request {item[1]} answered twice"
                    got[item[1]] = item
        return got

    async def expect_closed(self, within: float = 5.0) -> None:
        """Read to EOF (a reset counts); fails with TimeoutError if the peer keeps it open."""
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(within):
                while await self.reader.read(65536):
                    pass

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def req(req_no: int, request: wire.OpRequest, request_id: int = 0) -> list[object]:
    return [req_no, wire.op_of(request).value, wire.encode_body(request, request_id)]


def ok_result(item: list[Any], op: Op) -> tuple[ResponseHeader, wire.OpResult]:
    assert item[0] == wire.ITEM_OK, f"expected success, got {item}"
    header = wire.decode_header(item[2])
    return header, wire.decode_result(op, header, item[3])


# -- codec ------------------------------------------------------------------------------------


ALL_REQUESTS: list[wire.OpRequest] = [
    RangeRequest(b"a", b"z", limit=3, serializable=True),
    PutRequest(b"k", b"v", lease=5, prev_kv=True),
    DeleteRangeRequest(b"a", b"\0", prev_kv=True),
    CompactRequest(5, physical=True),
    LeaseGrantRequest(10, 3),
    LeaseRevokeRequest(3),
    TxnRequest(
        [Compare(b"k", CompareTarget.VALUE, CompareResult.EQUAL, b"v")],
        [PutRequest(b"k", b"w"), TxnRequest([], [RangeRequest(b"k")], [])],
        [DeleteRangeRequest(b"k")],
    ),
    wire.LeaseKeepAliveRequest(7),
    wire.LeaseTimeToLiveRequest(7, keys=True),
    wire.LeaseLeasesRequest(),
    wire.WatchCreateRequest(
        b"k", b"l", 3, [WatchFilter.NODELETE], prev_kv=True, progress_notify=True, watch_id=4
    ),
    wire.WatchCancelRequest(4),
    wire.WatchProgressRequest(),
    wire.MemberListRequest(),
    wire.MemberAddRequest(("http://127.0.0.1:1",), is_learner=True),
    wire.MemberRemoveRequest(9),
    wire.MemberPromoteRequest(9),
    wire.StatusRequest(),
    wire.SnapshotRequest(linearizable=False),
]


@pytest.mark.parametrize("request_", ALL_REQUESTS, ids=lambda r: type(r).__name__)
def test_every_request_body_round_trips(request_: wire.OpRequest) -> None:
    op = wire.op_of(request_)
    assert wire.decode_body(op, wire.encode_body(request_)) == (request_, 0)
    if type(request_) in WRITES:
        assert wire.decode_body(op, wire.encode_body(request_, 77)) == (request_, 77)
    else:
        with pytest.raises(ValueError, match="carries no request id"):
            wire.encode_body(request_, 77)


def test_results_round_trip() -> None:
    header = ResponseHeader(1, 2, 3, 4)
    member = MemberInfo(5, "m", ("http://a:1",), ("http://a:2",), True)
    cases: list[tuple[Op, wire.OpResult]] = [
        (Op.PUT, PutResponse(3, None)),
        (Op.LEASE_KEEP_ALIVE, LeaseKeepAliveResponse(7, 10, 0)),
        (Op.LEASE_TIME_TO_LIVE, LeaseTimeToLiveResponse(7, 9, 10, (b"a", b"b"))),
        (Op.LEASE_LEASES, wire.LeaseLeasesResult((1, 2))),
        (Op.WATCH_CREATE, wire.WatchCreateResult(3)),
        (Op.WATCH_CANCEL, wire.WatchCancelResult(True)),
        (Op.MEMBER_LIST, wire.MemberListResult((member,))),
        (Op.MEMBER_ADD, wire.MemberAddResult(member)),
        (Op.MEMBER_REMOVE, wire.EmptyResult()),
        (Op.STATUS, StatusInfo(header, "v", 2, 10, 4, 9, False, ("NOSPACE",))),
        (Op.SNAPSHOT, wire.SnapshotResult(12345)),
    ]
    for op, result in cases:
        encoded = cbor2.loads(cbor2.dumps(wire.encode_result(result)))
        assert wire.decode_result(op, header, encoded) == result


def test_a_replicated_body_must_match_its_operation_and_carry_no_client_id() -> None:
    put = kvreq.encode_request(kvreq.Request(0, 0, PutRequest(b"k")))
    with pytest.raises(kvreq.RequestDecodeError, match="body is a PutRequest"):
        wire.decode_body(Op.RANGE, put)
    with_ids = kvreq.encode_request(kvreq.Request(5, 6, PutRequest(b"k")))
    with pytest.raises(kvreq.RequestDecodeError, match="client_id must be 0"):
        wire.decode_body(Op.PUT, with_ids)
    read_with_id = kvreq.encode_request(kvreq.Request(0, 6, RangeRequest(b"k")))
    with pytest.raises(kvreq.RequestDecodeError, match="no request id"):
        wire.decode_body(Op.RANGE, read_with_id)


# -- serving ----------------------------------------------------------------------------------


@run()
async def test_handshake_then_pipelined_requests_in_one_frame() -> None:
    async with serving() as (server, service):
        raw = await Raw.open(server.port)
        magic, version, header, max_request, max_frame = raw.hello
        assert (magic, version) == (wire.MAGIC, wire.VERSION)
        assert wire.decode_header(header).member_id == service.member_id
        assert (max_request, max_frame) == (kvreq.MAX_REQUEST_BYTES, server.max_frame_bytes)

        n = 50
        await raw.send([req(i, PutRequest(f"k{i:02}".encode(), b"v")) for i in range(1, n + 1)])
        got = await raw.answers(n)
        revisions = {}
        for i in range(1, n + 1):
            hdr, result = ok_result(got[i], Op.PUT)
            assert isinstance(result, PutResponse)
            assert hdr.revision == result.revision
            assert (hdr.cluster_id, hdr.member_id) == (0xC1C1, service.member_id)
            revisions[i] = result.revision
        # Writes are handed to the member in the order received: revision order = request order.
        assert [revisions[i] for i in range(1, n + 1)] == list(range(2, n + 2))
        assert service.cluster.write_calls == n
        conn = server.connections[0]
        assert conn.frames_received == 1
        assert conn.requests == n
        assert conn.frames_sent < n, "answers ready together share frames"
        await raw.close()


@run()
async def test_a_range_answer_carries_its_read_revision() -> None:
    async with serving() as (server, _):
        raw = await Raw.open(server.port)
        await raw.send([req(1, PutRequest(b"a", b"1")), req(2, PutRequest(b"b", b"2"))])
        await raw.answers(2)
        await raw.send([req(3, RangeRequest(b"a", b"c"))])
        header, result = ok_result((await raw.answers(1))[3], Op.RANGE)
        assert header.revision == 3
        assert [kv.key for kv in result.kvs] == [b"a", b"b"]  # type: ignore[union-attr]
        await raw.close()


@run()
async def test_errors_carry_etcd_code_and_text_and_the_connection_stays_usable() -> None:
    async with serving() as (server, _):
        raw = await Raw.open(server.port)
        await raw.send(
            [
                req(1, RangeRequest(b"k", revision=99)),
                req(2, PutRequest(b"")),
                [3, "frobnicate", b""],
                [4, "put", b"\xff\xfe"],
                [5, "put", "not bytes"],
                req(6, wire.LeaseKeepAliveRequest(404)),
            ]
        )
        got = await raw.answers(6)
        assert got[1][1:] == [
            1,
            GrpcCode.OUT_OF_RANGE,
            FutureRevisionError.message,
        ]
        assert got[2][2:] == [GrpcCode.INVALID_ARGUMENT, "etcdserver: key is not provided"]
        assert got[3][2] == GrpcCode.UNIMPLEMENTED
        assert "unknown operation" in got[3][3]
        assert got[4][2] == GrpcCode.INVALID_ARGUMENT
        assert got[4][3].startswith("kvapp: malformed request:")
        assert got[5][2] == GrpcCode.INVALID_ARGUMENT
        assert got[6][2:] == [GrpcCode.NOT_FOUND, "etcdserver: requested lease not found"]
        assert all(item[0] == wire.ITEM_ERROR for item in got.values())
        assert server.connections[0].errors == 6

        await raw.send([req(7, PutRequest(b"k", b"v"))])
        assert (await raw.answers(1))[7][0] == wire.ITEM_OK
        await raw.close()


@run()
async def test_a_request_over_max_request_bytes_is_refused_and_the_connection_stays_open() -> None:
    async with serving(max_request_bytes=1000) as (server, service):
        raw = await Raw.open(server.port)
        await raw.send([req(1, PutRequest(b"k", b"x" * 2000)), req(2, PutRequest(b"k", b"ok"))])
        got = await raw.answers(2)
        assert got[1][2:] == [GrpcCode.INVALID_ARGUMENT, "etcdserver: request is too large"]
        assert got[2][0] == wire.ITEM_OK
        assert service.cluster.writes_applied == 1
        await raw.close()


@run()
async def test_an_oversized_frame_is_refused_and_only_that_connection_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving(max_request_bytes=1000) as (server, _):
        other = await Raw.open(server.port)
        raw = await Raw.open(server.port)
        too_big = server.max_frame_bytes + 1
        with caplog.at_level(logging.WARNING, logger="kvapp.server.native"):
            await raw.send_bytes(wire.LENGTH.pack(too_big) + b"\0" * too_big)
            frame = await raw.recv()
            assert frame == [
                [wire.ITEM_FATAL, GrpcCode.INVALID_ARGUMENT, "etcdserver: request is too large"]
            ]
            await raw.expect_closed()
        assert "exceeds the limit" in caplog.text
        await other.send([req(1, PutRequest(b"k", b"v"))])
        assert (await other.answers(1))[1][0] == wire.ITEM_OK
        assert server.stats.rejected == 1
        await other.close()
        await raw.close()


@run()
async def test_garbage_on_the_port_closes_only_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serving() as (server, _):
        good = await Raw.open(server.port)
        cases = [
            b"\x7f\xff\xff\xff and more",  # a huge "length"
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # HTTP: told where it is (below)
            wire.LENGTH.pack(5) + b"\xff\xff\xff\xff\xff",  # not CBOR
            wire.encode_frame(["not-kvapp", 1, 5]),  # wrong magic
        ]
        for garbage in cases:
            with caplog.at_level(logging.WARNING, logger="kvapp.server.native"):
                bad = await Raw.open(server.port, handshake=False)
                await bad.send_bytes(garbage)
                await bad.expect_closed()
                await bad.close()
        assert caplog.text.count("closing") >= len(cases)
        # After a good handshake, a frame that is not an array of requests also closes.
        bad = await Raw.open(server.port)
        await bad.send({"not": "a list"})
        assert (await bad.recv())[0][0] == wire.ITEM_FATAL
        await bad.expect_closed()
        await bad.close()
        bad = await Raw.open(server.port)
        await bad.send_bytes(wire.LENGTH.pack(3) + b"\x9f\x01\x02")  # an unterminated array
        assert (await bad.recv())[0][0] == wire.ITEM_FATAL
        await bad.close()

        await good.send([req(1, RangeRequest(b"k"))])
        assert (await good.answers(1))[1][0] == wire.ITEM_OK
        assert server.stats.rejected == len(cases) + 2
        await good.close()


@run()
async def test_an_http_request_on_the_native_port_is_told_what_the_port_is() -> None:
    """Someone curling the client port, as they would etcd's, gets a 400 saying where etcd's
    gateway and gRPC API are, not an empty reply."""
    async with serving() as (server, _):
        raw = await Raw.open(server.port, handshake=False)
        await raw.send_bytes(b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n\r\n{}")
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(5):
                while chunk := await raw.reader.read(65536):
                    answer += chunk
        await raw.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ")
        assert b"native client port" in body
        assert b"--listen-client-http-urls" in body
        assert f"Content-Length: {len(body)}".encode() in head
        assert server.stats.rejected == 1


@run()
async def test_an_unsupported_version_is_told_before_closing() -> None:
    async with serving() as (server, _):
        raw = await Raw.open(server.port, handshake=False)
        await raw.send([wire.MAGIC, 99, CLIENT_ID])
        [[kind, code, message]] = await raw.recv()
        assert (kind, code) == (wire.ITEM_FATAL, GrpcCode.FAILED_PRECONDITION)
        assert "version 99" in message
        await raw.expect_closed()
        await raw.close()


@run()
async def test_watch_events_are_pushed_in_order_and_cancel_stops_them() -> None:
    async with serving() as (server, _):
        raw = await Raw.open(server.port)
        await raw.send([req(1, wire.WatchCreateRequest(b"w", b"x", prev_kv=True, watch_id=5))])
        header, created = ok_result((await raw.answers(1))[1], Op.WATCH_CREATE)
        assert created == wire.WatchCreateResult(5)
        writer = await Raw.open(server.port)
        await writer.send([req(i, PutRequest(b"w%d" % i, b"v")) for i in range(1, 6)])
        await writer.answers(5)

        events: list[Event] = []
        while len(events) < 5:
            for item in await raw.recv():
                if item[0] == wire.ITEM_WATCH:
                    resp = wire.decode_watch_response(item)
                    assert resp.watch_id == 5
                    events.extend(resp.events)
        assert [e.kv.key for e in events] == [b"w%d" % i for i in range(1, 6)]
        assert [e.kv.mod_revision for e in events] == list(
            range(header.revision + 1, header.revision + 6)
        )

        await raw.send([req(2, wire.WatchCancelRequest(5))])
        canceled = False
        answered = False
        while not (canceled and answered):
            for item in await raw.recv():
                if item[0] == wire.ITEM_WATCH:
                    canceled = canceled or wire.decode_watch_response(item).canceled
                elif item[1] == 2:
                    answered = ok_result(item, Op.WATCH_CANCEL)[1] == wire.WatchCancelResult(True)
        await writer.send([req(9, PutRequest(b"w9", b"v"))])
        await writer.answers(1)
        # Nothing more for the cancelled watcher: the next frame is the answer to this read.
        await raw.send([req(3, RangeRequest(b"w9"))])
        [item] = await raw.recv()
        assert item[:2] == [wire.ITEM_OK, 3]
        await raw.close()
        await writer.close()


@run()
async def test_a_failed_watch_create_is_answered_with_the_reason() -> None:
    async with serving() as (server, _):
        raw = await Raw.open(server.port)
        await raw.send([req(1, wire.WatchCreateRequest(b"b", b"a", watch_id=1))])
        [item] = await raw.recv()
        assert item == [
            wire.ITEM_ERROR,
            1,
            GrpcCode.INVALID_ARGUMENT,
            "mvcc: watcher range is empty",
        ]
        await raw.send([req(2, wire.WatchCreateRequest(b"a", watch_id=1))])
        await raw.send([req(3, wire.WatchCreateRequest(b"a", watch_id=1))])
        got = await raw.answers(2)
        assert got[2][0] == wire.ITEM_OK
        assert got[3][3] == "mvcc: duplicate watch ID provided on the WatchStream"
        await raw.close()


@run()
async def test_lease_member_and_status_operations() -> None:
    cluster = FakeCluster()
    async with serving(cluster) as (server, service):
        raw = await Raw.open(server.port)
        await raw.send([req(1, LeaseGrantRequest(30, 77))])
        await raw.answers(1)
        await raw.send([req(2, PutRequest(b"lk", b"v", lease=77))])
        await raw.answers(1)
        await raw.send(
            [
                req(3, wire.LeaseKeepAliveRequest(77)),
                req(4, wire.LeaseTimeToLiveRequest(77, keys=True)),
                req(5, wire.LeaseLeasesRequest()),
                req(6, wire.MemberListRequest()),
                req(7, wire.StatusRequest()),
                req(8, wire.MemberAddRequest(("http://127.0.0.1:9999",), is_learner=True)),
            ]
        )
        got = await raw.answers(6)
        assert ok_result(got[3], Op.LEASE_KEEP_ALIVE)[1] == LeaseKeepAliveResponse(77, 30, 0)
        ttl = ok_result(got[4], Op.LEASE_TIME_TO_LIVE)[1]
        assert isinstance(ttl, LeaseTimeToLiveResponse)
        assert (ttl.granted_ttl, ttl.keys) == (30, (b"lk",))
        assert 28 <= ttl.ttl <= 30
        assert ok_result(got[5], Op.LEASE_LEASES)[1] == wire.LeaseLeasesResult((77,))
        members = ok_result(got[6], Op.MEMBER_LIST)[1]
        assert members == wire.MemberListResult(tuple(service.member_list()[:1]))
        header, status = ok_result(got[7], Op.STATUS)
        assert isinstance(status, StatusInfo)
        assert status.header == header
        assert status.leader == service.member_id
        added = ok_result(got[8], Op.MEMBER_ADD)[1]
        assert isinstance(added, wire.MemberAddResult)
        assert added.member.is_learner

        new_id = added.member.id
        await raw.send(
            [req(9, wire.MemberPromoteRequest(new_id)), req(10, wire.MemberRemoveRequest(new_id))]
        )
        got = await raw.answers(2)
        assert ok_result(got[9], Op.MEMBER_PROMOTE)[1] == wire.EmptyResult()
        assert ok_result(got[10], Op.MEMBER_REMOVE)[1] == wire.EmptyResult()
        assert new_id not in cluster.members
        await raw.close()


@run()
async def test_writes_are_deduplicated_by_connection_client_id_and_body_request_id() -> None:
    async with serving() as (server, service):
        raw = await Raw.open(server.port)
        await raw.send([req(1, PutRequest(b"k", b"v"), request_id=41)])
        first = ok_result((await raw.answers(1))[1], Op.PUT)[1]
        await raw.close()
        raw = await Raw.open(server.port)  # a retry on a new connection: same request id
        await raw.send([req(9, PutRequest(b"k", b"v"), request_id=41)])
        again = ok_result((await raw.answers(1))[9], Op.PUT)[1]
        assert again == first
        assert service.cluster.writes_applied == 1
        assert (CLIENT_ID, 41) in service.cluster.applied
        # Request id 0: no deduplication, each copy applies.
        await raw.send([req(10, PutRequest(b"k", b"v")), req(11, PutRequest(b"k", b"v"))])
        await raw.answers(2)
        assert service.cluster.writes_applied == 3
        await raw.close()


@run()
async def test_stop_closes_open_connections() -> None:
    cluster = FakeCluster()
    server = NativeServer(cluster.service(1), port=0)
    await server.start()
    raw = await Raw.open(server.port)
    await raw.send([req(1, wire.WatchCreateRequest(b"k", watch_id=1))])
    await raw.answers(1)
    await server.stop()
    await raw.expect_closed()
    assert server.connections == []
    await raw.close()


@run()
async def test_a_failing_service_call_is_answered_internal_and_the_connection_survives(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving() as (server, service):

        def broken_status() -> StatusInfo:
            raise RuntimeError("bug")

        def broken_range(request: RangeRequest) -> Any:
            raise RuntimeError("bug")

        monkeypatch.setattr(service, "status", broken_status)
        monkeypatch.setattr(service, "range_now", broken_range)
        raw = await Raw.open(server.port)
        with caplog.at_level(logging.ERROR, logger="kvapp.server.native"):
            await raw.send([req(1, wire.StatusRequest()), req(2, RangeRequest(b"k"))])
            got = await raw.answers(2)
        for n in (1, 2):
            assert got[n][2:] == [GrpcCode.INTERNAL, "kvapp: internal error"]
        assert caplog.text.count("RuntimeError: bug") == 2
        await raw.send([req(3, PutRequest(b"k", b"v"))])
        assert (await raw.answers(1))[3][0] == wire.ITEM_OK
        await raw.close()


@run()
async def test_reads_waiting_on_one_barrier_are_served_together_once_it_is_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serving() as (server, service):
        await service.write(PutRequest(b"k", b"v1"))
        await service.write(PutRequest(b"k", b"v2"))
        await service.write(CompactRequest(2))
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waited: list[RangeRequest] = []

        def barrier(request: RangeRequest) -> asyncio.Future[None]:
            waited.append(request)
            return gate

        monkeypatch.setattr(service, "read_barrier", barrier)
        raw = await Raw.open(server.port)
        await raw.send(
            [
                req(1, RangeRequest(b"k")),
                req(2, RangeRequest(b"k", revision=1)),  # compacted: its own error
                req(3, RangeRequest(b"k")),
            ]
        )
        with pytest.raises(TimeoutError):
            await raw.answers(1, within=0.05)
        assert len(waited) == 3
        gate.set_result(None)
        got = await raw.answers(3)
        for n in (1, 3):
            _, read = ok_result(got[n], Op.RANGE)
            assert isinstance(read, RangeResponse)
            assert [kv.value for kv in read.kvs] == [b"v2"]
        assert got[2][2:] == [GrpcCode.OUT_OF_RANGE, CompactedError.message]
        await raw.close()


@run()
async def test_a_failed_barrier_answers_its_error_to_every_read_waiting_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serving() as (server, service):
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        monkeypatch.setattr(service, "read_barrier", lambda request: gate)
        raw = await Raw.open(server.port)
        await raw.send([req(1, RangeRequest(b"a")), req(2, RangeRequest(b"b"))])
        await asyncio.sleep(0.01)
        gate.set_exception(NoLeaderError())
        got = await raw.answers(2)
        for n in (1, 2):
            assert got[n][2:] == [GrpcCode.UNAVAILABLE, NoLeaderError().message]
        await raw.send([req(3, PutRequest(b"k", b"v"))])
        assert (await raw.answers(1))[3][0] == wire.ITEM_OK
        await raw.close()


@run()
async def test_a_connection_with_too_many_unanswered_requests_is_not_read() -> None:
    async with serving(max_inflight=2) as (server, service):
        release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entered: list[RangeRequest] = []
        two_entered = asyncio.Event()

        def slow_barrier(request: RangeRequest) -> asyncio.Future[None]:
            entered.append(request)
            if len(entered) == 2:
                two_entered.set()
            return release

        service.read_barrier = slow_barrier  # type: ignore[method-assign]
        raw = await Raw.open(server.port)
        for frame in range(3):
            await raw.send([req(frame * 2 + i + 1, RangeRequest(b"k")) for i in range(2)])
        # The first frame fills the window; the others wait unread in the socket.
        await asyncio.wait_for(two_entered.wait(), 5)
        # All three frames are in the server's socket by now (loopback, drained): give a
        # reader that ignored the limit ample time to read them before checking it did not.
        await asyncio.sleep(0.05)
        assert server.connections[0].frames_received == 1
        assert len(entered) == 2
        release.set_result(None)
        got = await raw.answers(6)
        assert sorted(got) == [1, 2, 3, 4, 5, 6]
        assert server.connections[0].frames_received == 3
        await raw.close()


@run()
async def test_stop_is_prompt_with_a_connection_held_back_by_backpressure() -> None:
    cluster = FakeCluster()
    service = cluster.service(1)
    entered = asyncio.Event()

    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def stuck_barrier(request: RangeRequest) -> asyncio.Future[None]:
        entered.set()
        return never

    service.read_barrier = stuck_barrier  # type: ignore[method-assign]
    server = NativeServer(service, port=0, max_inflight=1)
    await server.start()
    raw = await Raw.open(server.port)
    await raw.send([req(1, RangeRequest(b"k"))])
    await raw.send([req(2, RangeRequest(b"k"))])
    await asyncio.wait_for(entered.wait(), 5)
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 1.0, "stop waited for the grace period"
    await raw.expect_closed()
    await raw.close()


# -- snapshot streams ---------------------------------------------------------------------------


async def snapshot_stream(raw: Raw, req_no: int, within: float = 5.0) -> tuple[bytes, list[Any]]:
    """Read a snapshot stream's pieces and its final answer (other items are ignored)."""
    pieces: list[bytes] = []
    while True:
        for item in await raw.recv(within):
            if item[0] == wire.ITEM_CHUNK and item[1] == req_no:
                pieces.append(item[2])
            elif item[0] in (wire.ITEM_OK, wire.ITEM_ERROR) and item[1] == req_no:
                return b"".join(pieces), item


@run()
async def test_a_snapshot_is_streamed_in_pieces_beside_other_requests() -> None:
    cluster = FakeCluster()
    async with serving(cluster) as (server, service):
        for i in range(50):
            await service.write(PutRequest(b"k%02d" % i, b"v" * 100))
        service.snapshot_chunk = 500
        raw = await Raw.open(server.port)
        await raw.send([req(1, wire.SnapshotRequest()), req(2, RangeRequest(b"k00"))])
        data, final = await snapshot_stream(raw, 1)
        header, result = ok_result(final, Op.SNAPSHOT)
        assert result == wire.SnapshotResult(len(data))
        assert header.member_id == service.member_id
        assert data.startswith(snapfile.MAGIC)
        assert hashlib.sha256(data[:-32]).digest() == data[-32:]
        assert len(data) > 10 * 500
        assert service.calls.count("snapshot") == 1
        await raw.send([req(3, RangeRequest(b"k01"))])
        assert ok_result((await raw.answers(1))[3], Op.RANGE)
        await raw.close()


@run()
async def test_a_snapshot_stream_waits_for_a_slow_reader() -> None:
    cluster = FakeCluster()
    async with serving(cluster) as (server, service):
        produced = 0
        piece = b"x" * (1 << 20)

        async def big_snapshot(*, linearizable: bool = True) -> AsyncIterator[bytes]:
            nonlocal produced
            for _ in range(64):
                produced += 1
                yield piece

        service.snapshot = big_snapshot  # type: ignore[assignment]
        raw = await Raw.open(server.port)
        await raw.send([req(1, wire.SnapshotRequest())])
        await asyncio.sleep(0.3)  # a reader that does not read: the stream must not run ahead
        held = produced
        assert held < 32, f"{held} MiB produced for a reader that read nothing"
        data, final = await snapshot_stream(raw, 1)
        assert ok_result(final, Op.SNAPSHOT)[1] == wire.SnapshotResult(64 << 20)
        assert len(data) == 64 << 20
        await raw.close()


@run()
async def test_a_snapshot_that_fails_midway_is_answered_with_the_error() -> None:
    cluster = FakeCluster()
    async with serving(cluster) as (server, service):

        async def failing(*, linearizable: bool = True) -> AsyncIterator[bytes]:
            yield b"KVAPPSNP"
            raise NoLeaderError

        service.snapshot = failing  # type: ignore[assignment]
        raw = await Raw.open(server.port)
        await raw.send([req(1, wire.SnapshotRequest())])
        data, final = await snapshot_stream(raw, 1)
        assert data == b"KVAPPSNP"
        assert final[0] == wire.ITEM_ERROR
        assert final[3] == str(NoLeaderError())
        await raw.send([req(2, RangeRequest(b"k"))])
        assert (await raw.answers(1))[2][0] == wire.ITEM_OK
        await raw.close()
