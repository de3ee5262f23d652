"""kvapp.server.etcd's Watch service over fake members: etcd's stream semantics."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from kvapp.etcdpb import kv_pb2, rpc_pb2
from kvapp.mvcc.keyrange import prefix_range_end
from kvapp.server.etcd.watch import fragments
from tests.kvapp.etcd.helpers import FakeEtcdCluster, aio

pb = rpc_pb2


def _open(c: FakeEtcdCluster, **kw: Any) -> Any:
    return c.leader.client.stream("Watch", "Watch", pb.WatchRequest, pb.WatchResponse, **kw)


def _create(key: bytes, **kw: Any) -> rpc_pb2.WatchRequest:
    return pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, **kw))


@aio
async def test_watchers_on_one_stream_get_events_prev_kvs_and_cancel() -> None:
    c = await FakeEtcdCluster().start()
    try:
        kv = c.leader.client
        await kv.put(b"a/1", b"old")
        stream = _open(c)
        await stream.write(
            _create(b"a/", range_end=prefix_range_end(b"a/"), prev_kv=True, watch_id=7)
        )
        created = await stream.read()
        assert (created.watch_id, created.created, created.header.revision) == (7, True, 2)
        assert created.header.member_id == 0x100
        await stream.write(_create(b"b", filters=[pb.WatchCreateRequest.NODELETE]))
        auto = await stream.read()
        assert auto.created
        assert auto.watch_id == 0  # etcd's auto ids start at 0, as kvapp's do
        await kv.put(b"a/1", b"new")
        ev = await stream.read()
        assert (ev.watch_id, ev.header.revision) == (7, 3)
        assert ev.events[0].type == kv_pb2.Event.PUT
        assert (ev.events[0].kv.value, ev.events[0].prev_kv.value) == (b"new", b"old")
        await kv.put(b"b", b"1")
        await kv.call("KV", "DeleteRange", pb.DeleteRangeRequest(key=b"b"), pb.DeleteRangeResponse)
        await kv.call(
            "KV", "DeleteRange", pb.DeleteRangeRequest(key=b"a/1"), pb.DeleteRangeResponse
        )
        put_b = await stream.read()
        assert (put_b.watch_id, put_b.events[0].kv.key) == (auto.watch_id, b"b")
        deleted = await stream.read()  # the NODELETE watcher saw no delete of b
        assert (deleted.watch_id, deleted.events[0].type) == (7, kv_pb2.Event.DELETE)
        assert deleted.events[0].kv.mod_revision == 6
        await stream.write(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=7)))
        canceled = await stream.read()
        assert (canceled.watch_id, canceled.canceled) == (7, True)
        await stream.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        progress = await stream.read()
        assert (progress.watch_id, progress.header.revision, len(progress.events)) == (-1, 6, 0)
        # A duplicate id is refused in-band: created and canceled, id -1, etcd's reason.
        await stream.write(_create(b"x", watch_id=9))
        assert (await stream.read()).watch_id == 9
        await stream.write(_create(b"x", watch_id=9))
        dup = await stream.read()
        assert (dup.watch_id, dup.created, dup.canceled) == (-1, True, True)
        assert dup.cancel_reason == "mvcc: duplicate watch ID provided on the WatchStream"
        # Closing our side does not end the stream: events still arrive until we cancel.
        await stream.done_writing()
        await kv.put(b"b", b"2")
        late = await stream.read()
        assert late.events[0].kv.value == b"2"
        stream.cancel()
    finally:
        await c.close()


@aio
async def test_history_from_a_start_revision_and_a_compacted_one() -> None:
    c = await FakeEtcdCluster().start()
    try:
        kv = c.follower.client
        for i in range(4):
            await kv.put(b"k", b"%d" % i)  # revisions 2..5
        stream = c.follower.client.stream("Watch", "Watch", pb.WatchRequest, pb.WatchResponse)
        await stream.write(_create(b"k", start_revision=3))
        assert (await stream.read()).created
        seen: list[tuple[int, bytes]] = []
        while len(seen) < 3:
            resp = await stream.read()
            seen += [(e.kv.mod_revision, e.kv.value) for e in resp.events]
        assert seen == [(3, b"1"), (4, b"2"), (5, b"3")]
        await kv.call("KV", "Compact", pb.CompactionRequest(revision=5), pb.CompactionResponse)
        await stream.write(_create(b"k", start_revision=2, watch_id=50))
        created = await stream.read()
        assert (created.watch_id, created.created) == (50, True)
        gone = await stream.read()
        assert (gone.watch_id, gone.canceled, gone.compact_revision) == (50, True, 5)
        # Every key: an empty key from "\0".
        await stream.write(_create(b"", range_end=b"\0", watch_id=51))
        assert (await stream.read()).watch_id == 51
        await kv.put(b"zz", b"!")
        ev = await stream.read()
        assert (ev.watch_id, ev.events[0].kv.key) == (51, b"zz")
        stream.cancel()
    finally:
        await c.close()


@aio
async def test_a_stream_requiring_a_leader_fails_without_one() -> None:
    c = await FakeEtcdCluster().start()
    try:
        c.cluster.leader_id = 0
        stream = _open(c, metadata=(("hasleader", "true"),))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.read()
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            "etcdserver: no leader",
        )
        # With a leader it opens, and fails once the leader has been gone for 3 checks.
        c.cluster.leader_id = 0x100
        stream = _open(c, metadata=(("hasleader", "true"),))
        await stream.write(_create(b"k"))
        assert (await stream.read()).created
        c.cluster.leader_id = 0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.read()
        assert info.value.details() == "etcdserver: no leader"
    finally:
        await c.close()


def test_fragments_split_like_etcd() -> None:
    events = [kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k%d" % i, value=b"x" * 100)) for i in range(10)]
    resp = pb.WatchResponse(watch_id=3, events=events)
    assert fragments(resp, 10_000) == [resp]
    one = pb.WatchResponse(watch_id=3, events=events[:1])
    assert fragments(one, 10) == [one]
    parts = fragments(resp, 350)
    assert len(parts) > 1
    assert [p.fragment for p in parts] == [True] * (len(parts) - 1) + [False]
    assert [e for p in parts for e in p.events] == events
    assert all(p.ByteSize() < 350 or len(p.events) == 1 for p in parts)
    assert all(p.watch_id == 3 for p in parts)


@aio
async def test_a_large_revision_is_fragmented_for_a_watcher_that_asked() -> None:
    c = await FakeEtcdCluster().start(size=1)
    try:
        c.leader.server.api.service  # noqa: B018 - the one member
        servicer = c.leader.server._servicers["etcdserverpb.Watch"]
        servicer.fragment_limit = 300  # type: ignore[attr-defined]
        stream = _open(c)
        await stream.write(_create(b"f/", range_end=prefix_range_end(b"f/"), fragment=True))
        assert (await stream.read()).created
        txn = pb.TxnRequest(
            success=[
                pb.RequestOp(request_put=pb.PutRequest(key=b"f/%d" % i, value=b"v" * 100))
                for i in range(6)
            ]
        )
        await c.leader.client.call("KV", "Txn", txn, pb.TxnResponse)
        got = []
        while True:
            part = await stream.read()
            got.append(part)
            if not part.fragment:
                break
        assert len(got) > 1
        assert [e.kv.key for p in got for e in p.events] == [b"f/%d" % i for i in range(6)]
        stream.cancel()
    finally:
        await c.close()
