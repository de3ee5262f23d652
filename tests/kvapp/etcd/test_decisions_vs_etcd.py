"""The requests issue 12 singles out, sent to kvapp and to a real etcd 3.4: the same answers.

A differential test once found kvapp's store deciding these differently from etcd (a from-key
delete with a put in one txn, ``Compact(0)`` before any compaction, which of two failed checks
is reported, a nested txn's header revision, a negative revision inside a txn). Each has a
store-level test; this one sends the same sequence over gRPC to a one-member kvapp (an
in-process member behind kvapp's gRPC server) and to a one-member etcd, and compares every
answer whole, apart from the header's cluster id, member id and Raft term.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message  # type: ignore[import-untyped]

from kvapp.etcdpb import rpc_pb2
from kvapp.server.etcd import EtcdGrpcServer, MemberMaintenance
from tests.kvapp.etcd.helpers import Etcd
from tests.kvapp.test_client_grpc_etcd import EtcdCluster, etcd_binary
from tests.kvapp.test_member import Clock, Hub, infos, make_member, stop_all

__all__ = ["etcd_binary"]  # the fixture, imported for pytest

pb = rpc_pb2
UNKNOWN_LEASE = 0x7E57


def _scrub(msg: Message) -> Message:
    """``msg`` with every header's cluster id, member id and Raft term cleared."""
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        items = value if isinstance(value, Sequence) else [value]
        for item in items:
            if field.message_type.name == "ResponseHeader":
                item.cluster_id = item.member_id = item.raft_term = 0
            else:
                _scrub(item)
    return msg


def _txn(*ops: pb.RequestOp, compare: tuple[pb.Compare, ...] = ()) -> pb.TxnRequest:
    return pb.TxnRequest(compare=list(compare), success=list(ops))


def _put(key: bytes, value: bytes = b"v", **kw: Any) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, **kw))


def _range(key: bytes, **kw: Any) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, **kw))


SEQUENCE: list[tuple[str, str, Message, type[Message]]] = [
    ("KV", "Put", pb.PutRequest(key=b"a", value=b"1"), pb.PutResponse),
    ("KV", "Put", pb.PutRequest(key=b"b", value=b"1"), pb.PutResponse),
    # negative revisions in a txn, never compacted: -1 reads now, -2 is "compacted"
    ("KV", "Txn", _txn(_range(b"b", revision=-1)), pb.TxnResponse),
    ("KV", "Txn", _txn(_range(b"b", revision=-2)), pb.TxnResponse),
    ("KV", "Range", pb.RangeRequest(key=b"b", revision=-2), pb.RangeResponse),
    # Compact(0) before any compaction is a no-op; after it every negative one is compacted
    ("KV", "Compact", pb.CompactionRequest(revision=0), pb.CompactionResponse),
    ("KV", "Txn", _txn(_range(b"b", revision=-1)), pb.TxnResponse),
    # a from-key delete and a put of a key after its start, in one txn
    (
        "KV",
        "Txn",
        _txn(
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"a", range_end=b"\0")),
            _put(b"b"),
        ),
        pb.TxnResponse,
    ),
    # which failed check is reported
    ("KV", "Put", pb.PutRequest(key=b"c", lease=UNKNOWN_LEASE), pb.PutResponse),
    (
        "KV",
        "Put",
        pb.PutRequest(key=b"missing", ignore_value=True, lease=UNKNOWN_LEASE),
        pb.PutResponse,
    ),
    (
        "KV",
        "Txn",
        _txn(_range(b"b", revision=1000), _put(b"d", lease=UNKNOWN_LEASE)),
        pb.TxnResponse,
    ),
    (
        "KV",
        "Txn",
        _txn(_range(b"b", revision=1000), _put(b"missing", ignore_value=True)),
        pb.TxnResponse,
    ),
    # a nested txn's header
    (
        "KV",
        "Txn",
        _txn(pb.RequestOp(request_txn=_txn(_put(b"e"), _range(b"e")))),
        pb.TxnResponse,
    ),
    ("KV", "Compact", pb.CompactionRequest(revision=3), pb.CompactionResponse),
    ("KV", "Compact", pb.CompactionRequest(revision=0), pb.CompactionResponse),
    ("KV", "Range", pb.RangeRequest(key=b"\0", range_end=b"\0"), pb.RangeResponse),
]


async def _answers(target: str) -> list[object]:
    client = Etcd(target)
    out: list[object] = []
    try:
        for service, method, request, response in SEQUENCE:
            try:
                out.append(_scrub(await client.call(service, method, request, response)))
            except grpc.aio.AioRpcError as e:
                out.append((e.code(), e.details()))
    finally:
        await client.channel.close()
    return out


@contextlib.asynccontextmanager
async def _kvapp_server() -> AsyncIterator[str]:
    """A one-member kvapp (in-process, in-memory) behind kvapp's gRPC server: its endpoint."""
    hub, clock = Hub(), Clock()
    (info,) = infos(1)
    server = EtcdGrpcServer(None, host="127.0.0.1", port=0)  # type: ignore[arg-type]
    await server.start()
    member = make_member(hub, info, [info], clock)
    server.api.service = member
    server.api.maintenance = MemberMaintenance(member, transfer_timeout=3.0)
    await member.start()
    try:
        await asyncio.wait_for(member.node.wait_leader(timeout=5), 6)
        yield server.endpoint
    finally:
        await server.stop(grace=0)
        await stop_all([member])


async def _kvapp_answers() -> list[object]:
    async with _kvapp_server() as endpoint:
        return await _answers(endpoint)


def test_the_singled_out_requests_get_etcds_answers(etcd_binary: str, tmp_path: Path) -> None:
    cluster = EtcdCluster(etcd_binary, tmp_path, 1)
    try:
        cluster.wait_ready()
        etcd = asyncio.run(asyncio.wait_for(_answers(cluster.endpoints[0]), 60))
    finally:
        cluster.close()
    kvapp = asyncio.run(asyncio.wait_for(_kvapp_answers(), 60))
    differ = [
        f"{method} {request}: etcd {e!r}, kvapp {k!r}"
        for (_, method, request, _), e, k in zip(SEQUENCE, etcd, kvapp, strict=True)
        if e != k
    ]
    assert not differ, "\n".join(differ)
    assert any(isinstance(a, tuple) for a in etcd), "no request failed: the checks went untested"
