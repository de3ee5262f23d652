"""A client that stops reading its watch stream, over the native protocol and the etcd gRPC API.

The member must hold a bounded queue for it (the hub's per-stream bound), whatever the number
of its watchers and of the puts meanwhile; once the client reads again every watcher gets
every event exactly once, in order, or, if the history it missed was compacted meanwhile, the
cancel with ``compact_revision`` that a watcher created at a compacted revision gets. Both
servers run in-process over :class:`~tests.kvapp.fake_service.FakeCluster`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from kvapp.etcdconv import watch_response_from_pb
from kvapp.etcdpb import rpc_pb2
from kvapp.mvcc.types import CompactRequest, PutRequest, RangeRequest
from kvapp.server import native as wire
from kvapp.watch import WatchHub, WatchResponse, WatchStream
from tests.kvapp.etcd.helpers import FakeEtcdCluster
from tests.kvapp.fake_service import FakeCluster
from tests.kvapp.test_native import Raw, req, run, serving

pb = rpc_pb2

BOUND = 32 << 10
WATCHERS = 60
PUTS = 200
VALUE = 1000  # 60 x 200 x 1 kB: far more than socket buffers and HTTP/2 windows hold


def value(i: int) -> bytes:
    return b"%04d" % i + b"x" * (VALUE - 4)


def only_stream(hub: WatchHub) -> WatchStream:
    [stream] = hub._streams
    return stream


class Seen:
    """What each watcher received: revisions, then maybe a cancel; checks order as it goes."""

    def __init__(self, watch_ids: list[int], first: int) -> None:
        self.first = first
        self.revs: dict[int, list[int]] = {w: [] for w in watch_ids}
        self.cancels: dict[int, WatchResponse] = {}

    def add(self, r: WatchResponse) -> None:
        assert r.watch_id in self.revs, r
        assert r.watch_id not in self.cancels, "nothing after a cancel"
        if r.canceled:
            self.cancels[r.watch_id] = r
        for e in r.events:
            assert e.kv.value[:4] == b"%04d" % (e.kv.mod_revision - self.first)
            self.revs[r.watch_id].append(e.kv.mod_revision)

    def done(self, last: int) -> bool:
        return all(
            w in self.cancels or (revs and revs[-1] >= last) for w, revs in self.revs.items()
        )

    def check(self, first: int, last: int, compacted: int) -> None:
        for w, revs in self.revs.items():
            assert revs == list(range(first, first + len(revs))), f"watcher {w}: {revs[:5]}..."
            if w in self.cancels:
                assert compacted, f"watcher {w} cancelled: {self.cancels[w]}"
                assert self.cancels[w].compact_revision == compacted
                assert not revs or revs[-1] < compacted
            else:
                assert revs[-1] == last, f"watcher {w} ends at {revs[-1]}, not {last}"
        if compacted:
            assert self.cancels, "the compaction cancelled nobody"


async def stalled_then_resumed(
    cluster: FakeCluster,
    put: Callable[[int], Awaitable[int]],
    compact: Callable[[int], Awaitable[None]],
    *,
    compaction: bool,
) -> tuple[int, int, int]:
    """Puts ``PUTS`` values while the watching client reads nothing; checks the member's queue
    for it; compacts if asked. Returns the first and last put's revisions and the compacted
    revision (0 for none)."""
    hub = cluster.state.watches
    first = last = await put(0)
    for i in range(1, PUTS):
        last = await put(i)
        assert only_stream(hub).buffered_bytes <= BOUND
    assert hub.set_aside >= WATCHERS, "the client's backpressure never reached the hub"
    compacted = 0
    if compaction:
        compacted = last
        await compact(compacted)
    return first, last, compacted


@pytest.mark.parametrize("compaction", [False, True], ids=["caught-up", "compacted"])
@run(60.0)
async def test_native_stalled_stream(compaction: bool) -> None:
    cluster = FakeCluster()
    cluster.state.watches.max_stream_bytes = BOUND
    async with serving(cluster) as (server, _):
        raw = await Raw.open(server.port)
        await raw.send([req(n + 1, wire.WatchCreateRequest(b"k")) for n in range(WATCHERS)])
        ids = [a[3][0] for a in (await raw.answers(WATCHERS)).values()]
        writer = await Raw.open(server.port)
        no = 0

        async def call(request: wire.OpRequest) -> list[object]:
            nonlocal no
            no += 1
            await writer.send([req(no, request)])
            answer = (await writer.answers(1))[no]
            assert answer[0] == wire.ITEM_OK, answer
            return answer

        async def put(i: int) -> int:
            answer = await call(PutRequest(b"k", value(i)))
            return int(wire.decode_header(answer[2]).revision)

        async def compact(rev: int) -> None:
            await call(CompactRequest(rev))

        first, last, compacted = await stalled_then_resumed(
            cluster, put, compact, compaction=compaction
        )
        seen = Seen(ids, first)
        stream = only_stream(cluster.state.watches)
        while not seen.done(last):
            for item in await raw.recv():
                if item[0] == wire.ITEM_WATCH:
                    resp = wire.decode_watch_response(item)
                    if not resp.created:
                        seen.add(resp)
            assert stream.buffered_bytes <= BOUND
        seen.check(first, last, compacted)
        # Nothing more: the next frame holds the answer to a read, and no watch item.
        await raw.send([req(10**6, RangeRequest(b"k"))])
        [item] = await raw.recv()
        assert item[:2] == [wire.ITEM_OK, 10**6]
        if compacted:  # the same cancel as a watcher created at a compacted revision
            await raw.send([req(10**6 + 1, wire.WatchCreateRequest(b"k", start_revision=first))])
            cancel = None
            while cancel is None:
                for item in await raw.recv():
                    if item[0] == wire.ITEM_WATCH:
                        r = wire.decode_watch_response(item)
                        cancel = r if r.canceled else None
            some = next(iter(seen.cancels.values()))
            assert (cancel.canceled, cancel.compact_revision, cancel.cancel_reason) == (
                some.canceled,
                some.compact_revision,
                some.cancel_reason,
            )
        await raw.close()
        await writer.close()


@pytest.mark.parametrize("compaction", [False, True], ids=["caught-up", "compacted"])
@run(60.0)
async def test_etcd_grpc_stalled_stream(compaction: bool) -> None:
    c = await FakeEtcdCluster().start(1)
    try:
        c.cluster.state.watches.max_stream_bytes = BOUND
        kv = c.leader.client
        stream = kv.stream("Watch", "Watch", pb.WatchRequest, pb.WatchResponse)
        for _ in range(WATCHERS):
            await stream.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k")))
        ids = []
        for _ in range(WATCHERS):
            created = await stream.read()
            assert created.created
            ids.append(created.watch_id)

        async def put(i: int) -> int:
            return int((await kv.put(b"k", value(i))).header.revision)

        async def compact(rev: int) -> None:
            await kv.call(
                "KV", "Compact", pb.CompactionRequest(revision=rev), pb.CompactionResponse
            )

        first, last, compacted = await stalled_then_resumed(
            c.cluster, put, compact, compaction=compaction
        )
        seen = Seen(ids, first)
        member_stream = only_stream(c.cluster.state.watches)
        while not seen.done(last):
            seen.add(watch_response_from_pb(await stream.read()))
            assert member_stream.buffered_bytes <= BOUND
        seen.check(first, last, compacted)
        # Nothing more: the next response answers a progress request (etcd sends it once every
        # watcher is synced).
        await stream.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        progress = await stream.read()
        assert (progress.watch_id, len(progress.events), progress.canceled) == (-1, 0, False)
        if compacted:
            await stream.write(
                pb.WatchRequest(
                    create_request=pb.WatchCreateRequest(key=b"k", start_revision=first)
                )
            )
            assert (await stream.read()).created
            cancel = await stream.read()
            some = next(iter(seen.cancels.values()))
            assert (cancel.canceled, cancel.compact_revision, cancel.cancel_reason) == (
                some.canceled,
                some.compact_revision,
                some.cancel_reason,
            )
        stream.cancel()
    finally:
        await c.close()
