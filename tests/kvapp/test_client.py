"""kvapp.client against native servers over 127.0.0.1, backed by in-memory fake members.

The scenarios marked ``both_protocols`` also run over etcd's v3 gRPC API (kvapp's etcd server
on the same fakes); what only etcd's API does differently is in test_client_grpc.py.

Several servers may serve one :class:`FakeCluster` (one shared state), modelling replicas, so
failover can be tested without Raft. Every async test runs its own loop under an overall
timeout; waiting is bounded (``asyncio.timeout``, or polling with a bound and a message).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import attrs
import pytest

from kvapp import snapfile
from kvapp.client import (
    AsyncClient,
    Client,
    KeepAlive,
    LeaseLoss,
    OutcomeUnknown,
    Unavailable,
)
from kvapp.client import txn as tx
from kvapp.client.native import NativeLink
from kvapp.errors import (
    CompactedError,
    DuplicateKeyError,
    EmptyKeyError,
    EtcdError,
    FutureRevisionError,
    GrpcCode,
    LeaseNotFoundError,
    MemberNotFoundError,
    MemberNotLearnerError,
    NoLeaderError,
    RequestTooLargeError,
    TooManyOpsError,
)
from kvapp.mvcc.types import Event, EventType, PutRequest, SortOrder, SortTarget
from kvapp.requests import RequestIdExpiredError, UnknownEtcdError
from kvapp.server.etcd import EtcdGrpcServer, publish_grpc_urls
from kvapp.server.native import NativeServer
from kvapp.service import MemberInfo, WriteRequest
from tests.kvapp.fake_service import FakeCluster, FakeService


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


async def eventually(cond: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll ``cond`` every 10 ms; fail with ``what`` if it is not true ``within`` seconds."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)


PROTOCOLS = ("native", "etcd")
both_protocols = pytest.mark.parametrize("protocol", PROTOCOLS)
"""Runs a scenario over kvapp's native protocol and over etcd's v3 gRPC API."""


class Members:
    """A fake cluster served by one server per member: native, or etcd's gRPC API."""

    def __init__(self, cluster: FakeCluster, services: list[FakeService], protocol: str) -> None:
        self.cluster = cluster
        self.services = services
        self.protocol = protocol
        self.servers: list[Any] = []

    @property
    def endpoints(self) -> list[str]:
        return [s.endpoint for s in self.servers]

    async def stop_server(self, i: int) -> None:
        """Stop member ``i``'s server; its open connections and streams end at once."""
        if self.protocol == "etcd":
            await self.servers[i].stop(grace=0)
        else:
            await self.servers[i].stop()

    async def lose_answer(self, i: int) -> None:
        """Called by a member's handler: cut its connections so that its answer is lost."""
        if self.protocol == "etcd":  # a gRPC server cannot drop a call: stop it under the call
            asyncio.get_running_loop().create_task(self.servers[i].stop(grace=0))
            await asyncio.sleep(30)
        else:
            self.servers[i].drop_connections()


@contextlib.asynccontextmanager
async def members(
    n: int = 1, *, leader: int = 0, protocol: str = "native", **options: Any
) -> AsyncIterator[Members]:
    """``n`` fake members; over etcd's API each publishes its gRPC URL (followers forward
    lease calls to it)."""
    cluster = FakeCluster()
    services = [cluster.service(0x100 + i) for i in range(n)]
    cluster.leader_id = services[leader].member_id
    m = Members(cluster, services, protocol)
    try:
        for service in services:
            if protocol == "etcd":
                server: Any = EtcdGrpcServer(service, host="127.0.0.1", port=0, **options)
            else:
                server = NativeServer(service, host="127.0.0.1", port=0, **options)
            await server.start()
            m.servers.append(server)
            if protocol == "etcd":
                info = cluster.members[service.member_id]
                cluster.members[service.member_id] = attrs.evolve(
                    info, client_urls=publish_grpc_urls((f"http://{server.endpoint}",))
                )
        yield m
    finally:
        for i in range(len(m.servers)):
            await m.stop_server(i)


def client_for(m: Members, **options: Any) -> AsyncClient:
    options.setdefault("request_timeout", 5.0)
    options.setdefault("connect_timeout", 2.0)
    return AsyncClient(m.endpoints, protocol=m.protocol, **options)  # type: ignore[arg-type]


async def collect(watch: AsyncIterator[Event], n: int, within: float = 5.0) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(within):
        while len(out) < n:
            out.append(await anext(watch))
    return out


# -- operations -------------------------------------------------------------------------------


@both_protocols
@run()
async def test_kv_operations(protocol: str) -> None:
    async with members(protocol=protocol) as m, client_for(m) as client:
        put = await client.put(b"a/1", b"x")
        assert put.revision == 2
        assert (await client.put("a/2", "y", prev_kv=True)).prev_kv is None
        again = await client.put(b"a/1", b"z", prev_kv=True)
        assert again.prev_kv is not None
        assert again.prev_kv.value == b"x"
        await client.put(b"b", b"w")

        got = await client.get(b"a/1")
        assert [(kv.key, kv.value, kv.version) for kv in got.kvs] == [(b"a/1", b"z", 2)]
        assert got.revision == 5
        prefix = await client.get(b"a/", prefix=True, sort_order=SortOrder.DESCEND)
        assert [kv.key for kv in prefix.kvs] == [b"a/2", b"a/1"]
        assert prefix.count == 2
        everything = await client.get(b"", prefix=True, keys_only=True, serializable=True)
        assert [kv.key for kv in everything.kvs] == [b"a/1", b"a/2", b"b"]
        assert all(kv.value == b"" for kv in everything.kvs)
        assert (await client.get(b"a", b"c", count_only=True)).count == 3
        limited = await client.get(b"a", b"c", limit=1, sort_target=SortTarget.MOD)
        assert (len(limited.kvs), limited.more) == (1, True)
        old = await client.get(b"a/1", revision=2)
        assert old.kvs[0].value == b"x"

        deleted = await client.delete(b"a/", prefix=True, prev_kv=True)
        assert deleted.deleted == 2
        assert sorted(kv.key for kv in deleted.prev_kvs) == [b"a/1", b"a/2"]
        assert (await client.get(b"a/", prefix=True)).kvs == ()

        won = await client.txn(
            [tx.version(b"lock", "==", 0)],
            [tx.put(b"lock", b"me"), tx.get(b"lock"), tx.txn([], [tx.get(b"b")])],
            [tx.get(b"lock")],
        )
        assert won.succeeded
        inner = won.responses[2]
        assert inner.responses[0].kvs[0].value == b"w"  # type: ignore[union-attr]
        lost = await client.txn(
            [tx.version(b"lock", "==", 0)], [tx.put(b"lock", b"you")], [tx.get(b"lock")]
        )
        assert not lost.succeeded
        assert lost.responses[0].kvs[0].value == b"me"  # type: ignore[union-attr]
        compacted = await client.compact(won.revision)
        assert compacted.revision == won.revision
        with pytest.raises(CompactedError):
            await client.get(b"b", revision=2)
        if protocol == "etcd":  # nothing carries a request id: the member saw etcd's requests
            assert {c for (c, _) in m.cluster.applied} <= {0}


@both_protocols
@run()
async def test_lease_operations(protocol: str) -> None:
    async with members(protocol=protocol) as m, client_for(m) as client:
        grant = await client.lease_grant(30)
        await client.put(b"owned", b"v", lease=grant.id)
        assert await client.leases() == [grant.id]
        ttl = await client.lease_time_to_live(grant.id, keys=True)
        assert (ttl.granted_ttl, ttl.keys) == (30, (b"owned",))
        assert 28 <= ttl.ttl <= 30
        renewed = await client.keep_alive_once(grant.id)
        assert (renewed.id, renewed.ttl) == (grant.id, 30)
        revoked = await client.lease_revoke(grant.id)
        assert revoked.revision == grant.revision + 2
        assert (await client.get(b"owned")).kvs == ()
        assert await client.leases() == []
        with pytest.raises(LeaseNotFoundError):
            await client.lease_revoke(grant.id)
        with pytest.raises(LeaseNotFoundError):  # etcd answers TTL 0; the client raises
            await client.keep_alive_once(grant.id)


@both_protocols
@run()
async def test_cluster_and_status_operations(protocol: str) -> None:
    async with members(2, protocol=protocol) as m, client_for(m) as client:
        listed = await client.member_list()
        assert [x.id for x in listed] == [0x100, 0x101]
        if protocol == "etcd":  # MemberList shows the gRPC URLs (kvapp's "grpc+" marking removed)
            assert [x.client_urls for x in listed] == [(f"http://{e}",) for e in m.endpoints]
        added = await client.member_add(["http://127.0.0.1:7001"], is_learner=True)
        assert added.is_learner
        assert added.name == ""
        await client.member_promote(added.id)
        assert not m.cluster.members[added.id].is_learner
        await client.member_remove(added.id)
        assert added.id not in {x.id for x in await client.member_list()}

        second = await client.status(m.endpoints[1])
        assert second.header.member_id == 0x101
        assert second.leader == 0x100
        assert second.version
        any_status = await client.status()
        assert any_status.header.cluster_id == m.cluster.cluster_id


@both_protocols
@run()
async def test_errors_are_the_members_classes_with_etcds_texts(protocol: str) -> None:
    async with members(protocol=protocol) as m, client_for(m) as client:
        await client.put(b"k", b"v")
        await client.put(b"k", b"w")
        await client.compact(3)
        cases: list[tuple[Coroutine[Any, Any, object], type[EtcdError]]] = [
            (client.get(b"k", revision=99), FutureRevisionError),
            (client.get(b"k", revision=2), CompactedError),
            (client.put(b"", b"v"), EmptyKeyError),
            (client.get(b""), EmptyKeyError),
            (client.txn([tx.version(b"k", ">", 0)] * 129), TooManyOpsError),
            (client.txn([], [tx.put(b"d", b"1"), tx.put(b"d", b"2")]), DuplicateKeyError),
            (client.lease_revoke(12345), LeaseNotFoundError),
            (client.lease_time_to_live(12345), LeaseNotFoundError),
            (client.member_remove(999), MemberNotFoundError),
            (client.member_promote(0x100), MemberNotLearnerError),
        ]
        for call, cls in cases:
            with pytest.raises(EtcdError) as info:
                await call
            assert type(info.value) is cls
            assert str(info.value) == cls.message
            assert info.value.code == cls.code
        # A refused watch create arrives with the member's reason and code.
        with pytest.raises(UnknownEtcdError) as unknown:
            await client.watch(b"b", b"a")
        assert str(unknown.value) == "mvcc: watcher range is empty"
        assert unknown.value.code == GrpcCode.INVALID_ARGUMENT
        # The connection survived every error.
        assert (await client.get(b"k")).kvs[0].value == b"w"
        assert len(client._links) == 1


@run()
async def test_too_large_requests() -> None:
    async with members(max_request_bytes=1000) as m, client_for(m) as client:
        await client.put(b"k", b"v")
        link = client._links[m.endpoints[0]]
        assert isinstance(link, NativeLink)
        with pytest.raises(RequestTooLargeError) as server_said:
            await client.put(b"k", b"x" * 2000)  # fits in a frame: the server refuses it
        assert str(server_said.value) == "etcdserver: request is too large"
        sent = link.requests_sent
        with pytest.raises(RequestTooLargeError):
            await client.put(b"k", b"x" * (m.servers[0].max_frame_bytes + 1))  # refused here
        assert link.requests_sent == sent
        # The connection is still the same, and usable.
        assert (await client.get(b"k")).kvs[0].value == b"v"
        assert client._links[m.endpoints[0]] is link
        assert m.servers[0].stats.connections == 1
        assert m.cluster.writes_applied == 1


# -- pipelining -------------------------------------------------------------------------------


@run()
async def test_concurrent_requests_are_pipelined_in_shared_frames() -> None:
    async with members() as m, client_for(m) as client:
        await client.put(b"warm", b"up")
        n = 300
        puts = await asyncio.gather(*(client.put(b"k%03d" % i, b"v") for i in range(n)))
        assert sorted(p.revision for p in puts) == list(range(3, n + 3))
        gets = await asyncio.gather(*(client.get(b"k%03d" % i) for i in range(n)))
        assert all(g.kvs[0].key == b"k%03d" % i for i, g in enumerate(gets))
        stats = m.servers[0].stats
        assert stats.requests == 2 * n + 2  # and the Status of the first write's leader search
        assert stats.frames_received < stats.requests / 10, stats
        assert stats.frames_sent < stats.requests / 10, stats
        assert stats.errors == 0


# -- watch ------------------------------------------------------------------------------------


@both_protocols
@run()
async def test_watch_delivers_in_order_and_cancel_ends_it(protocol: str) -> None:
    async with members(protocol=protocol) as m, client_for(m) as client:
        watch = await client.watch(b"w/", prefix=True, prev_kv=True)
        other = await client.watch(b"w/5")
        await asyncio.gather(*(client.put(b"w/%d" % i, b"v") for i in range(10)))
        await client.put(b"w/5", b"again")
        await client.delete(b"w/5")
        events = await collect(watch, 12)
        assert [e.kv.mod_revision for e in events] == list(range(2, 14))
        assert [e.type for e in events[-2:]] == [EventType.PUT, EventType.DELETE]
        assert events[-1].prev_kv is not None
        assert events[-1].prev_kv.value == b"again"
        assert [(e.type, e.kv.key) for e in await collect(other, 3)] == [
            (EventType.PUT, b"w/5"),
            (EventType.PUT, b"w/5"),
            (EventType.DELETE, b"w/5"),
        ]
        assert m.services[0].calls.count("open_watch_stream") == 1, "one stream for both"

        await watch.cancel()
        await client.put(b"w/after", b"v")
        rest = [e async for e in watch]
        assert rest == [], "nothing after cancel"
        await client.put(b"w/5", b"still watched")
        assert [e.kv.value for e in await collect(other, 1)] == [b"still watched"]
        await other.cancel()


@both_protocols
@run()
async def test_watch_from_a_past_revision_replays_history_and_compaction_ends_it(
    protocol: str,
) -> None:
    async with members(protocol=protocol) as m, client_for(m) as client:
        for i in range(5):
            await client.put(b"h", b"%d" % i)
        replay = await client.watch(b"h", start_revision=3)
        assert [e.kv.value for e in await collect(replay, 4)] == [b"1", b"2", b"3", b"4"]
        await replay.cancel()
        await client.compact(5)
        gone = await client.watch(b"h", start_revision=2)
        with pytest.raises(CompactedError):
            await collect(gone, 1)
        assert gone.compact_revision == 5


# -- failover and retries ---------------------------------------------------------------------


@both_protocols
@run()
async def test_failover_continues_on_the_next_endpoint_and_watch_loses_and_repeats_nothing(
    protocol: str,
) -> None:
    async with members(2, protocol=protocol) as m, client_for(m) as client:
        watch = await client.watch(b"f/", prefix=True)
        for i in range(5):
            await client.put(b"f/%d" % i, b"before")
        first = await collect(watch, 5)
        assert client._current == 0

        await m.stop_server(0)
        # Written while the watch has no connection: it must fetch these from history.
        for i in range(5, 8):
            await m.services[1].write(PutRequest(b"f/%d" % i, b"gap"))
        # A read first (retried on the next endpoint): over etcd's API a write sent just as the
        # connection breaks would be OutcomeUnknown, as it cannot be deduplicated.
        assert (await client.get(b"f/7")).kvs[0].value == b"gap"
        assert client._current == 1
        for i in range(8, 12):
            await client.put(b"f/%d" % i, b"after")
        assert client._current == 1
        rest = await collect(watch, 7)

        events = first + rest
        assert [e.kv.key for e in events] == [b"f/%d" % i for i in range(12)]
        revisions = [e.kv.mod_revision for e in events]
        assert revisions == sorted(set(revisions)), "no event repeated or out of order"
        assert watch.resumes >= 1
        await client.put(b"f/12", b"last")
        assert [e.kv.key for e in await collect(watch, 1)] == [b"f/12"]
        assert m.cluster.writes_applied == 13


@run()
async def test_a_write_whose_answer_is_lost_is_retried_under_its_id_and_applied_once() -> None:
    async with members() as m, client_for(m) as client:
        dropped: list[tuple[int, int]] = []

        async def lose_answer(
            service: FakeService, request: WriteRequest, client_id: int, request_id: int
        ) -> None:
            if not dropped:
                dropped.append((client_id, request_id))
                m.servers[0].drop_connections()

        m.cluster.after_apply = lose_answer
        put = await client.put(b"once", b"v")
        assert dropped == [(client.client_id, dropped[0][1])]
        assert m.cluster.write_calls == 2, "the write was retried"
        assert m.cluster.writes_applied == 1, "and applied once"
        kv = (await client.get(b"once")).kvs[0]
        assert (kv.version, kv.mod_revision) == (1, put.revision)
        assert (await client.get(b"once")).revision == put.revision
        assert m.servers[0].stats.connections == 2


@run()
async def test_a_write_that_stays_ambiguous_raises_outcome_unknown() -> None:
    async with members() as m, client_for(m, max_attempts=3, retry_backoff=0.01) as client:

        async def always_lose(service: FakeService, *_: object) -> None:
            m.servers[0].drop_connections()

        m.cluster.after_apply = always_lose
        with pytest.raises(OutcomeUnknown):
            await client.put(b"maybe", b"v")
        assert m.cluster.write_calls == 3
        assert m.cluster.writes_applied == 1
        assert len({rid for (_, rid) in m.cluster.applied}) == 1, "one request id throughout"


@both_protocols
@run()
async def test_unreachable_endpoints_raise_unavailable_even_for_writes(protocol: str) -> None:
    async with members(protocol=protocol) as m:
        endpoint = m.endpoints[0]
    async with AsyncClient(
        [endpoint],
        protocol=protocol,  # type: ignore[arg-type]
        max_attempts=2,
        retry_backoff=0.01,
        connect_timeout=2,
    ) as client:
        with pytest.raises(Unavailable):
            await client.get(b"k")
        with pytest.raises(Unavailable):  # never sent, so certainly not applied
            await client.put(b"k", b"v")
        with pytest.raises(Unavailable):
            await client.status(endpoint)


@run()
async def test_unavailable_members_are_skipped_for_reads_and_writes() -> None:
    async with members(2) as m, client_for(m, retry_backoff=0.01) as client:
        m.services[0].unavailable = NoLeaderError()
        assert (await client.get(b"k")).kvs == ()
        await client.put(b"k", b"v")
        assert m.cluster.writes_applied == 1
        assert "range" in m.services[1].calls
        m.services[1].unavailable = NoLeaderError()
        with pytest.raises(NoLeaderError):
            await client.get(b"k")


def publish(m: Members, i: int, *, name: str = "", learner: bool = False) -> str:
    """Give fake member ``i`` the client URLs a started member publishes; its URL for ``m``'s
    protocol (the other protocol's URL is a dead address, which a sync must not take)."""
    service = m.services[i]
    url = f"http://{m.endpoints[i]}"
    dead = "http://127.0.0.1:1"
    native, grpc = (url, dead) if m.protocol == "native" else (dead, url)
    m.cluster.members[service.member_id] = attrs.evolve(
        m.cluster.members[service.member_id],
        name=name or f"m{i}",
        client_urls=(native, *publish_grpc_urls((grpc,))),
        is_learner=learner,
    )
    return url


@both_protocols
@run()
async def test_sync_endpoints_takes_the_client_urls_of_the_started_voting_members(
    protocol: str,
) -> None:
    async with members(4, protocol=protocol) as m:
        urls = [publish(m, i) for i in range(2)]
        publish(m, 2, learner=True)
        unstarted = m.services[3].member_id
        m.cluster.members[unstarted] = attrs.evolve(
            m.cluster.members[unstarted], name="", client_urls=(f"http://{m.endpoints[3]}",)
        )
        async with AsyncClient(
            [m.endpoints[0]],
            protocol=protocol,  # type: ignore[arg-type]
            retry_backoff=0.01,
            connect_timeout=2,
        ) as client:
            synced = await client.sync_endpoints()
            assert synced == client.endpoints == (m.endpoints[0], urls[1])  # spelling kept
            await m.stop_server(0)
            assert (await client.get(b"k")).kvs == ()
            assert client.endpoints[client._current] == urls[1]

            for i in range(2):  # nobody publishes a URL: the list stays
                info = m.cluster.members[m.services[i].member_id]
                m.cluster.members[info.id] = attrs.evolve(info, client_urls=())
            assert await client.sync_endpoints() == (m.endpoints[0], urls[1])


@both_protocols
@run()
async def test_a_sync_while_members_are_starting_does_not_shrink_the_list(protocol: str) -> None:
    async with (
        members(3, protocol=protocol) as m,
        AsyncClient(
            m.endpoints,
            protocol=protocol,  # type: ignore[arg-type]
            retry_backoff=0.01,
            connect_timeout=2,
        ) as client,
    ):
        publish(m, 0)  # the others have not published their client URLs yet
        assert await client.sync_endpoints() == tuple(m.endpoints)
        for i in (1, 2):
            publish(m, i)
        assert await client.sync_endpoints() == tuple(m.endpoints)  # spellings kept
        del m.cluster.members[m.services[2].member_id]  # removed, never connected to
        assert await client.sync_endpoints() == tuple(m.endpoints[:2])
        await m.stop_server(0)
        await client.get(b"k")  # now connected to member 1
        first = m.cluster.members.pop(m.services[0].member_id)
        assert await client.sync_endpoints() == (m.endpoints[1],)
        m.cluster.members[first.id] = attrs.evolve(first, is_learner=True)
        assert await client.sync_endpoints() == (m.endpoints[1],)  # learners give none


@both_protocols
@run()
async def test_a_client_syncing_on_its_own_outlives_the_members_it_was_given(
    protocol: str,
) -> None:
    async with members(3, protocol=protocol) as m:
        urls = [publish(m, i) for i in range(3)]
        async with AsyncClient(
            [m.endpoints[0]],
            protocol=protocol,  # type: ignore[arg-type]
            auto_sync_interval=0.05,
            retry_backoff=0.01,
            connect_timeout=2,
        ) as client:
            watch = await client.watch(b"w/", prefix=True)
            await eventually(lambda: len(client.endpoints) == 3, "the client synced its list")
            assert client.endpoints == (m.endpoints[0], urls[1], urls[2])
            await client.put(b"w/1", b"a")
            await m.stop_server(0)
            await m.services[1].write(PutRequest(b"w/2", b"b"))
            assert (await client.get(b"w/2")).kvs[0].value == b"b"
            await client.put(b"w/3", b"c")
            events = await collect(watch, 3)
            assert [e.kv.key for e in events] == [b"w/1", b"w/2", b"w/3"]
            assert client._auto_sync is not None
        assert client._auto_sync.done(), "close() stops the background sync"


def test_the_auto_sync_interval_is_checked() -> None:
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="auto_sync_interval"):
            AsyncClient(["127.0.0.1:2379"], auto_sync_interval=bad)


# -- writes to the leader ---------------------------------------------------------------------


def writes_on(m: Members) -> list[int]:
    """How many writes each member was asked to make."""
    return [s.calls.count("write") for s in m.services]


@run()
async def test_writes_go_to_the_leader_and_reads_to_the_current_endpoint() -> None:
    async with members(3, leader=2) as m, client_for(m) as client:
        for i in range(5):
            await client.put(b"k%d" % i, b"v")
            await client.get(b"k%d" % i)
        assert writes_on(m) == [0, 0, 5]
        assert [s.calls.count("range") for s in m.services] == [5, 0, 0]
        assert [s.calls.count("status") for s in m.services] == [1, 0, 0], "found once"
    async with members(3, leader=2) as m, client_for(m, writes_to_leader=False) as client:
        await client.put(b"k", b"v")
        assert writes_on(m) == [1, 0, 0]
        assert "status" not in m.services[0].calls


@run()
async def test_an_answer_from_a_later_term_makes_the_next_write_look_for_the_leader() -> None:
    async with members(3, leader=1) as m, client_for(m) as client:
        await client.put(b"k", b"1")
        assert writes_on(m) == [0, 1, 0]
        m.cluster.leader_id = m.services[2].member_id  # an election the client did not see
        m.cluster.term += 1
        await client.put(b"k", b"2")  # the old leader takes it (a member forwards it)
        assert writes_on(m) == [0, 2, 0]
        await client.put(b"k", b"3")  # its answer had the new term: the client looked again
        await client.put(b"k", b"4")
        assert writes_on(m) == [0, 2, 2]
        assert m.services[0].calls.count("status") == 2


@run()
async def test_a_leader_found_through_a_lagging_member_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The member asked reports an older term than the leader's own answers carry."""
    async with members(3, leader=1) as m, client_for(m) as client:
        asked = m.services[0]
        real_status = asked.status

        def lagging_status() -> Any:
            status = real_status()
            old = attrs.evolve(status.header, raft_term=status.header.raft_term - 1)
            return attrs.evolve(status, header=old, raft_term=old.raft_term)

        monkeypatch.setattr(asked, "status", lagging_status)
        for i in range(4):
            await client.put(b"k", b"%d" % i)
        assert writes_on(m) == [0, 4, 0]
        assert asked.calls.count("status") == 1, "the leader was looked for once"


@run()
async def test_writes_go_to_the_current_endpoint_while_no_leader_can_be_found() -> None:
    async with members(2, leader=1) as m, client_for(m) as client:
        m.cluster.leader_id = 0  # every member says it knows no leader
        await client.put(b"k", b"1")
        await client.put(b"k", b"2")
        assert writes_on(m) == [2, 0]
        assert m.services[0].calls.count("status") == 1, "no new search within a second"


# -- leases -----------------------------------------------------------------------------------


@run()
async def test_keep_alives_and_time_to_live_go_to_the_leader() -> None:
    async with members(2, leader=1) as m, client_for(m) as client:
        grant = await client.lease_grant(1)
        ka = await client.keep_alive(grant.id)
        await eventually(lambda: ka.renewals >= 4, "four renewals of a 1 s lease")
        ttl = await client.lease_time_to_live(grant.id)
        assert ttl.granted_ttl == 1
        assert ka.alive
        follower, leader = m.services
        assert "lease_keep_alive" not in follower.calls
        assert "lease_time_to_live" not in follower.calls
        assert follower.calls.count("status") == 1, "the leader was found once"
        assert leader.calls.count("lease_keep_alive") >= 4
        await ka.stop()
        still_alive: bool = ka.alive  # (a fresh name: mypy kept the narrowing from above)
        assert not still_alive
        assert ka.reason is None


@run()
async def test_leader_discovery_never_dials_the_leaders_grpc_urls() -> None:
    """A member publishes its etcd gRPC URLs (``grpc+http://``) among its client URLs."""
    dialed: list[int] = []

    async def trap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialed.append(1)
        writer.close()

    grpc_port = await asyncio.start_server(trap, "127.0.0.1", 0)
    try:
        async with members(2, leader=1) as m:
            follower, leader = m.services
            info = m.cluster.members[leader.member_id]
            m.cluster.members[leader.member_id] = MemberInfo(
                info.id,
                info.name,
                info.peer_urls,
                (
                    f"grpc+http://127.0.0.1:{grpc_port.sockets[0].getsockname()[1]}",
                    f"http://{m.endpoints[1]}",
                ),
            )
            async with AsyncClient([m.endpoints[0]], request_timeout=5.0) as client:
                grant = await client.lease_grant(5)
                assert (await client.lease_time_to_live(grant.id)).granted_ttl == 5
            assert "lease_time_to_live" in leader.calls
            assert "lease_time_to_live" not in follower.calls
    finally:
        grpc_port.close()
        await grpc_port.wait_closed()
    assert dialed == [], "the client dialed the leader's gRPC URL with its native protocol"


@both_protocols
@run()
async def test_keep_alive_reports_a_revoked_lease(protocol: str) -> None:
    async with members(protocol=protocol) as m, client_for(m) as client:
        grant = await client.lease_grant(1)
        lost: list[KeepAlive] = []
        ka = await client.keep_alive(grant.id, on_lost=lost.append)
        await client.lease_revoke(grant.id)
        async with asyncio.timeout(3):
            assert await ka.wait_lost() is LeaseLoss.GONE
        assert lost == [ka]
        assert isinstance(ka.error, LeaseNotFoundError)
        assert not ka.alive
        with pytest.raises(LeaseNotFoundError):
            await client.keep_alive(grant.id)


@both_protocols
@run()
async def test_keep_alive_reports_loss_once_renewals_fail_for_a_whole_ttl(protocol: str) -> None:
    async with members(protocol=protocol) as m, client_for(m, request_timeout=0.5) as client:
        grant = await client.lease_grant(2)
        ka = await client.keep_alive(grant.id)
        await eventually(lambda: ka.renewals >= 2, "a background renewal")
        for i in range(len(m.servers)):
            await m.stop_server(i)
        async with asyncio.timeout(5):
            assert await ka.wait_lost() is LeaseLoss.RENEWALS_FAILED
        lost_after = time.monotonic() - ka.last_renewal
        assert lost_after >= 2.0, "not reported before the TTL ran out"
        assert lost_after < 3.5, "reported soon after"
        assert ka.error is not None


# -- sync client ------------------------------------------------------------------------------


@contextlib.contextmanager
def served_in_thread(protocol: str = "native") -> Iterator[tuple[FakeCluster, list[str]]]:
    """Serve a fake member (native, or etcd's gRPC API) from a loop in a background thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cluster = FakeCluster()
    service = cluster.service(0x200)
    server: Any = (
        EtcdGrpcServer(service, port=0) if protocol == "etcd" else NativeServer(service, port=0)
    )
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
        yield cluster, [server.endpoint]
    finally:
        stop = server.stop(grace=0) if protocol == "etcd" else server.stop()
        asyncio.run_coroutine_threadsafe(stop, loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@both_protocols
def test_the_sync_client(protocol: str) -> None:
    with (
        served_in_thread(protocol) as (cluster, endpoints),
        Client(endpoints, protocol=protocol) as client,
    ):
        watch = client.watch(b"s/", prefix=True)
        assert client.put(b"s/1", b"one").revision == 2
        assert client.get(b"s/1").kvs[0].value == b"one"
        assert client.txn([tx.value(b"s/1", "==", b"one")], [tx.delete(b"s/1")]).succeeded
        event = watch.get(timeout=5)
        assert event is not None
        assert (event.type, event.kv.key) == (EventType.PUT, b"s/1")
        assert next(watch).type is EventType.DELETE
        assert watch.get(timeout=0.05) is None
        watch.cancel()
        with pytest.raises(StopIteration):
            next(watch)

        grant = client.lease_grant(1)
        ka = client.keep_alive(grant.id)
        assert ka.alive
        assert client.lease_time_to_live(grant.id).granted_ttl == 1
        client.lease_revoke(grant.id)
        assert ka.wait_lost(timeout=5) is LeaseLoss.GONE
        with pytest.raises(LeaseNotFoundError):
            client.lease_revoke(grant.id)
        assert client.status(endpoints[0]).header.member_id == 0x200
        assert cluster.writes_applied == 4

        url = f"http://{endpoints[0]}"
        info = cluster.members[0x200]
        cluster.members[0x200] = attrs.evolve(
            info, name="s", client_urls=(url if protocol == "native" else f"grpc+{url}",)
        )
        assert client.sync_endpoints() == client.endpoints == (endpoints[0],)
    with pytest.raises(RuntimeError, match="closed"):
        client.get(b"k")


@run()
async def test_a_member_saying_outcome_unknown_gets_the_same_request_id_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with members() as m, client_for(m, retry_backoff=0.01) as client:
        service = m.services[0]
        real_write = service.write
        seen: list[int] = []

        async def unsure_once(request: WriteRequest, *, client_id: int = 0, request_id: int = 0):
            seen.append(request_id)
            if len(seen) == 1:
                await real_write(request, client_id=client_id, request_id=request_id)
                raise OutcomeUnknown("the leader changed")
            return await real_write(request, client_id=client_id, request_id=request_id)

        monkeypatch.setattr(service, "write", unsure_once)
        put = await client.put(b"k", b"v")
        assert len(seen) == 2
        assert seen[0] == seen[1]
        assert m.cluster.writes_applied == 1
        assert (await client.get(b"k")).kvs[0].mod_revision == put.revision


@run()
async def test_an_expired_retry_window_is_outcome_unknown_under_a_new_client_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with members() as m, client_for(m) as client:
        await client.put(b"k", b"v")
        old_id = client.client_id

        async def expired(request: WriteRequest, **_: int) -> Any:
            raise RequestIdExpiredError

        monkeypatch.setattr(m.services[0], "write", expired)
        with pytest.raises(OutcomeUnknown):
            await client.put(b"k", b"w")
        assert client.client_id != old_id
        monkeypatch.undo()
        await client.put(b"k", b"x")
        clients = {c for (c, _) in m.cluster.applied}
        assert clients == {old_id, client.client_id}, "later writes go under the new id"


@both_protocols
@run()
async def test_membership_changes_go_to_the_leader_over_the_native_protocol(protocol: str) -> None:
    # A follower would forward them through Raft, whose leader drops a change it refuses (one
    # at a time) without a word; the leader itself says so at once. With no leader to be found
    # they go to the current endpoint, as writes do. etcd's members forward.
    async with members(2, leader=1, protocol=protocol) as m, client_for(m) as client:
        follower, leader = m.services
        added = await client.member_add(["http://127.0.0.1:7003"], is_learner=True)
        await client.member_update(added.id, ["http://127.0.0.1:7004"])
        await client.member_remove(added.id)
        changes = {"member_add", "member_update", "member_remove"}
        on_leader, on_follower = changes & set(leader.calls), changes & set(follower.calls)
        assert (on_leader, on_follower) == (
            (changes, set()) if protocol == "native" else (set(), changes)
        )
        m.cluster.leader_id = 0  # nobody knows a leader (an election, or a member just up)
        async with client_for(m) as fresh:
            await fresh.member_add(["http://127.0.0.1:7005"], is_learner=True)
        assert follower.calls.count("member_add") == (1 if protocol == "native" else 2)


@both_protocols
@run()
async def test_a_membership_change_whose_answer_is_lost_is_not_retried(protocol: str) -> None:
    async with members(2, protocol=protocol) as m, client_for(m) as client:
        real_add = m.services[0].member_add
        calls = 0

        async def add_then_drop(peer_urls: tuple[str, ...], *, is_learner: bool = False) -> Any:
            nonlocal calls
            calls += 1
            info = await real_add(peer_urls, is_learner=is_learner)
            await m.lose_answer(0)
            return info

        m.services[0].member_add = add_then_drop  # type: ignore[method-assign]
        with pytest.raises(OutcomeUnknown):
            await client.member_add(["http://127.0.0.1:7002"])
        assert calls == 1, "no blind retry of a non-idempotent request"
        assert len(m.cluster.members) == 3


@run()
async def test_write_request_ids_count_from_one_whatever_else_was_sent() -> None:
    async with members() as m, client_for(m) as client:
        for _ in range(5):
            await client.get(b"k")
        grant = await client.lease_grant(30)
        await client.keep_alive_once(grant.id)
        w = await client.watch(b"k")
        await client.put(b"k", b"v")
        await client.delete(b"k")
        # Dense per client id, as kvapp.dedup's session window expects of a new client.
        assert sorted(m.cluster.applied) == [(client.client_id, i) for i in (1, 2, 3)]
        await w.cancel()


@run()
async def test_writes_in_flight_stay_within_the_dedup_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with members() as m, client_for(m, max_inflight_writes=8) as client:
        service = m.services[0]
        real_write = service.write
        inflight = 0
        most = 0
        eight_in = asyncio.Event()
        gate = asyncio.Event()

        async def gated(request: WriteRequest, *, client_id: int = 0, request_id: int = 0):
            nonlocal inflight, most
            inflight += 1
            most = max(most, inflight)
            if inflight == 8:
                eight_in.set()
            await gate.wait()
            inflight -= 1
            return await real_write(request, client_id=client_id, request_id=request_id)

        monkeypatch.setattr(service, "write", gated)
        puts = [asyncio.create_task(client.put(b"k%d" % i, b"v")) for i in range(20)]
        await asyncio.wait_for(eight_in.wait(), 5)
        gate.set()
        await asyncio.gather(*puts)
        assert most == 8
        assert sorted(rid for (_, rid) in m.cluster.applied) == list(range(1, 21))


# -- snapshots ----------------------------------------------------------------------------------


@both_protocols
@run()
async def test_snapshot_streams_a_verifiable_file_into_the_sink(protocol: str) -> None:
    async with members(2, protocol=protocol) as m, client_for(m) as client:
        for i in range(40):
            await client.put(b"k%02d" % i, b"v" * 50)
        for service in m.services:
            service.snapshot_chunk = 300
        pieces: list[bytes] = []
        size = await client.snapshot(pieces.append, endpoint=m.endpoints[1])
        data = b"".join(pieces)
        assert size == len(data)
        assert len(pieces) > 5
        assert m.services[1].calls.count("snapshot") == 1
        assert data.startswith(snapfile.MAGIC)
        assert hashlib.sha256(data[:-32]).digest() == data[-32:]
        # The link stays usable; a sink that fails ends the call with its error, and only it.
        assert (await client.get(b"k00")).count == 1

        def full(_: bytes) -> None:
            raise OSError(28, "No space left on device")

        with pytest.raises(OSError, match="No space left"):
            await client.snapshot(full, endpoint=m.endpoints[1])
        assert (await client.get(b"k01")).count == 1


@run()
async def test_snapshot_errors_are_the_members_and_unreachable_endpoints_are_unavailable() -> None:
    async with members(1) as m, client_for(m) as client:
        m.services[0].unavailable = NoLeaderError()
        with pytest.raises(NoLeaderError):
            await client.snapshot(lambda _: None)
        with pytest.raises(Unavailable, match=r"snapshot from 127\.0\.0\.1:1"):
            await client.snapshot(lambda _: None, endpoint="127.0.0.1:1")


def test_retry_jitter_comes_from_the_injected_rng() -> None:
    """A seam for deterministic simulation: equally seeded clients pause alike."""
    pauses = [
        [AsyncClient(["127.0.0.1:1"], rng=random.Random(seed))._backoff(n) for n in (1, 2, 3)]
        for seed in (3, 3, 4)
    ]
    assert pauses[0] == pauses[1] != pauses[2]
