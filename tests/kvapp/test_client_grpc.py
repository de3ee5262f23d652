"""kvapp.client over etcd's v3 gRPC API (``protocol="etcd"``), against kvapp's etcd servers.

The same scenarios as tests/kvapp/test_client.py where etcd's API allows them, over in-memory
fake members (:class:`FakeCluster`, one shared state) each behind an
:class:`~kvapp.server.etcd.EtcdGrpcServer` on 127.0.0.1, and one over real in-process members.
Where etcd's API differs the tests assert the difference: a write whose outcome is unknown is
never retried (no request ids), any member serves lease calls (it forwards them). Waiting is
bounded everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, ClassVar

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
from kvapp.client.etcd import EtcdLink, grpc_target
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
    RequestTimeoutError,
    RequestTooLargeError,
    TooManyOpsError,
)
from kvapp.mvcc.types import EventType, PutRequest, SortOrder, SortTarget
from kvapp.node import Member
from kvapp.requests import UnknownEtcdError
from kvapp.server.etcd import EtcdGrpcServer, MemberMaintenance, publish_grpc_urls
from kvapp.service import StatusInfo, WriteRequest
from tests.kvapp.fake_service import FakeCluster, FakeService
from tests.kvapp.test_client import collect, eventually, run
from tests.kvapp.test_member import Clock, Hub, infos, leader_of, make_member, stop_all


class Members:
    """A fake cluster, one etcd gRPC server per member."""

    def __init__(self, cluster: FakeCluster, services: list[FakeService]) -> None:
        self.cluster = cluster
        self.services = services
        self.servers: list[EtcdGrpcServer] = []

    @property
    def endpoints(self) -> list[str]:
        return [s.endpoint for s in self.servers]


@contextlib.asynccontextmanager
async def members(n: int = 1, *, leader: int = 0, **options: Any) -> AsyncIterator[Members]:
    """``n`` fake members; each publishes its gRPC URL, so followers forward lease calls."""
    cluster = FakeCluster()
    services = [cluster.service(0x100 + i) for i in range(n)]
    cluster.leader_id = services[leader].member_id
    m = Members(cluster, services)
    try:
        for service in services:
            server = EtcdGrpcServer(service, host="127.0.0.1", port=0, **options)
            await server.start()
            m.servers.append(server)
            info = cluster.members[service.member_id]
            cluster.members[service.member_id] = attrs.evolve(
                info, client_urls=publish_grpc_urls((f"http://{server.endpoint}",))
            )
        yield m
    finally:
        for server in m.servers:
            await server.stop(grace=0)


def client_for(m: Members, **options: Any) -> AsyncClient:
    options.setdefault("request_timeout", 5.0)
    options.setdefault("connect_timeout", 2.0)
    return AsyncClient(m.endpoints, protocol="etcd", **options)


class UnsureError(EtcdError):
    """An "unavailable" text kvapp does not know (etcd has several 'timed out' variants)."""

    message = "etcdserver: request timed out, possibly due to previous leader failure"
    code = GrpcCode.UNAVAILABLE


# -- choosing the transport ---------------------------------------------------------------------


def test_the_protocol_is_chosen_explicitly_and_endpoints_are_grpc_targets() -> None:
    assert grpc_target("127.0.0.1:2379") == "127.0.0.1:2379"
    assert grpc_target("http://10.0.0.1:2379") == "10.0.0.1:2379"
    assert grpc_target("[::1]:2379") == "[::1]:2379"
    for bad in ("https://127.0.0.1:2379", "127.0.0.1", "unix:///tmp/sock"):
        with pytest.raises(ValueError, match="endpoint"):
            grpc_target(bad)
    with pytest.raises(ValueError, match="protocol"):
        AsyncClient(["127.0.0.1:2379"], protocol="grpc")  # type: ignore[arg-type]


# -- operations ---------------------------------------------------------------------------------


@run()
async def test_kv_operations() -> None:
    async with members() as m, client_for(m) as client:
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
        # Nothing carries a request id: the member saw plain etcd requests.
        assert {c for (c, _) in m.cluster.applied} <= {0}


@run()
async def test_lease_operations() -> None:
    async with members() as m, client_for(m) as client:
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


@run()
async def test_cluster_and_status_operations() -> None:
    async with members(2) as m, client_for(m) as client:
        listed = await client.member_list()
        assert [x.id for x in listed] == [0x100, 0x101]
        # etcd's MemberList shows the gRPC URLs (kvapp's "grpc+" marking removed).
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


@run()
async def test_errors_are_the_members_classes_with_etcds_texts() -> None:
    async with members() as m, client_for(m) as client:
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
        # A refused watch create arrives with the member's reason, as over the native protocol.
        with pytest.raises(UnknownEtcdError) as unknown:
            await client.watch(b"b", b"a")
        assert str(unknown.value) == "mvcc: watcher range is empty"
        assert unknown.value.code == GrpcCode.INVALID_ARGUMENT
        # The connection survived every error.
        assert (await client.get(b"k")).kvs[0].value == b"w"
        assert len(client._links) == 1


@run()
async def test_too_large_requests_are_refused_by_the_member_or_before_sending() -> None:
    async with members(max_request_bytes=1000) as m, client_for(m) as client:
        await client.put(b"k", b"v")
        link = client._links[m.endpoints[0]]
        assert isinstance(link, EtcdLink)
        calls = m.cluster.write_calls
        # Above the member's gRPC limit (--max-request-bytes + 512 KiB, as etcd's): refused there.
        with pytest.raises(RequestTooLargeError) as server_said:
            await client.put(b"k", b"x" * (600 * 1024))
        assert str(server_said.value) == "etcdserver: request is too large"
        assert "larger than max" in server_said.value.detail
        # Above grpc's send limit here (2 MiB, as etcd's Go client): never sent.
        with pytest.raises(RequestTooLargeError):
            await client.put(b"k", b"x" * (3 * 1024 * 1024))
        assert m.cluster.write_calls == calls
        assert (await client.get(b"k")).kvs[0].value == b"v"
        assert client._links[m.endpoints[0]] is link
        assert m.cluster.writes_applied == 1


# -- watch --------------------------------------------------------------------------------------


@run()
async def test_watch_delivers_in_order_and_cancel_ends_it() -> None:
    async with members() as m, client_for(m) as client:
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


@run()
async def test_watch_from_a_past_revision_replays_history_and_compaction_ends_it() -> None:
    async with members() as m, client_for(m) as client:
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


# -- failover and retries -----------------------------------------------------------------------


@run()
async def test_failover_continues_on_the_next_endpoint_and_watch_loses_and_repeats_nothing() -> (
    None
):
    async with members(2) as m, client_for(m) as client:
        watch = await client.watch(b"f/", prefix=True)
        for i in range(5):
            await client.put(b"f/%d" % i, b"before")
        first = await collect(watch, 5)
        assert client._current == 0

        await m.servers[0].stop(grace=0)
        # Written while the watch has no connection: it must fetch these from history.
        for i in range(5, 8):
            await m.services[1].write(PutRequest(b"f/%d" % i, b"gap"))
        # A read first (retried on the next endpoint): a write sent just as the connection
        # breaks would be OutcomeUnknown, since etcd's API cannot deduplicate it.
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
async def test_a_watch_stream_failing_with_no_leader_moves_to_another_member() -> None:
    async with members(2, leader_check_interval=0.05) as m, client_for(m) as client:
        watch = await client.watch(b"n/", prefix=True)
        await client.put(b"n/0", b"v")
        assert [e.kv.key for e in await collect(watch, 1)] == [b"n/0"]
        lone = m.services[0]
        real_status = lone.status

        def leaderless() -> StatusInfo:
            return attrs.evolve(real_status(), leader=0)

        lone.status = leaderless  # type: ignore[method-assign]
        # hasleader: member 0's stream fails with "no leader"; the watch resumes on member 1.
        await eventually(lambda: "open_watch_stream" in m.services[1].calls, "a resumed watch")
        for i in range(1, 4):
            await m.services[1].write(PutRequest(b"n/%d" % i, b"v"))
        events = await collect(watch, 3)
        assert [e.kv.key for e in events] == [b"n/1", b"n/2", b"n/3"]
        assert watch.resumes >= 1
        assert m.endpoints[0] in client._links, "the link itself was not dropped"


@run()
async def test_a_write_whose_answer_is_lost_raises_outcome_unknown_and_is_not_retried() -> None:
    async with members(2) as m, client_for(m) as client:

        async def lose_answer(service: FakeService, *_: object) -> None:
            if service is m.services[0]:
                asyncio.get_running_loop().create_task(m.servers[0].stop(grace=0))
                await asyncio.sleep(30)  # cancelled by the server's stop

        m.cluster.after_apply = lose_answer
        with pytest.raises(OutcomeUnknown):
            await client.put(b"once", b"v")
        assert m.cluster.write_calls == 1, "never retried: etcd would apply it twice"
        assert m.cluster.writes_applied == 1
        # The client continues on the next member.
        kv = (await client.get(b"once")).kvs[0]
        assert kv.version == 1


@run()
async def test_a_write_whose_answer_times_out_is_outcome_unknown() -> None:
    async with members(2) as m, client_for(m, request_timeout=0.5) as client:
        release = asyncio.Event()

        async def hang(service: FakeService, *_: object) -> None:
            await release.wait()

        m.cluster.after_apply = hang
        with pytest.raises(OutcomeUnknown):
            await client.put(b"slow", b"v")
        assert m.cluster.write_calls == 1
        release.set()


@pytest.mark.parametrize("error", [RequestTimeoutError, UnsureError])
def test_a_member_saying_unavailable_after_proposing_is_outcome_unknown(
    error: type[EtcdError],
) -> None:
    @run()
    async def scenario() -> None:
        async with members(2) as m, client_for(m, retry_backoff=0.01) as client:
            calls: list[int] = []

            async def unsure(request: WriteRequest, **_: int) -> Any:
                calls.append(1)
                raise error

            m.services[0].write = unsure  # type: ignore[method-assign]
            with pytest.raises(OutcomeUnknown) as info:
                await client.put(b"k", b"v")
            said = info.value.__cause__  # the link's OutcomeUnknown, from the member's error
            assert isinstance(said, OutcomeUnknown)
            assert type(said.__cause__) is error
            assert str(said.__cause__) == error.message
            assert calls == [1], "not retried"
            assert m.cluster.write_calls == 0
            assert "write" not in m.services[1].calls

    scenario()


@run()
async def test_a_write_refused_for_want_of_a_leader_is_retried_on_the_next_member() -> None:
    async with members(2) as m, client_for(m, retry_backoff=0.01) as client:
        m.services[0].unavailable = NoLeaderError()
        assert (await client.get(b"k")).kvs == ()
        await client.put(b"k", b"v")
        assert m.cluster.writes_applied == 1
        assert "write" in m.services[1].calls
        m.services[1].unavailable = NoLeaderError()
        with pytest.raises(NoLeaderError):
            await client.get(b"k")
        with pytest.raises(NoLeaderError):  # certainly not applied: not OutcomeUnknown
            await client.put(b"k", b"w")
        assert m.cluster.writes_applied == 1


@run()
async def test_unreachable_endpoints_raise_unavailable_even_for_writes() -> None:
    async with members() as m:
        endpoint = m.endpoints[0]
    async with AsyncClient(
        [endpoint], protocol="etcd", max_attempts=2, retry_backoff=0.01, connect_timeout=2
    ) as client:
        with pytest.raises(Unavailable):
            await client.get(b"k")
        with pytest.raises(Unavailable):  # never sent, so certainly not applied
            await client.put(b"k", b"v")
        with pytest.raises(Unavailable):
            await client.status(endpoint)


@run()
async def test_a_membership_change_whose_answer_is_lost_is_not_retried() -> None:
    async with members(2) as m, client_for(m) as client:
        real_add = m.services[0].member_add
        calls = 0

        async def add_then_drop(peer_urls: tuple[str, ...], *, is_learner: bool = False) -> Any:
            nonlocal calls
            calls += 1
            info = await real_add(peer_urls, is_learner=is_learner)
            asyncio.get_running_loop().create_task(m.servers[0].stop(grace=0))
            await asyncio.sleep(30)
            return info

        m.services[0].member_add = add_then_drop  # type: ignore[method-assign]
        with pytest.raises(OutcomeUnknown):
            await client.member_add(["http://127.0.0.1:7002"])
        assert calls == 1, "no blind retry of a non-idempotent request"
        assert len(m.cluster.members) == 3


# -- leases -------------------------------------------------------------------------------------


@run()
async def test_keep_alives_and_time_to_live_go_to_any_member_which_forwards_them() -> None:
    async with members(2, leader=1) as m, client_for(m) as client:
        grant = await client.lease_grant(1)
        ka = await client.keep_alive(grant.id)
        await eventually(lambda: ka.renewals >= 4, "four renewals of a 1 s lease")
        ttl = await client.lease_time_to_live(grant.id)
        assert ttl.granted_ttl == 1
        assert ka.alive
        follower, leader = m.services
        assert set(client._links) == {m.endpoints[0]}, "no leader discovery: one link only"
        assert follower.calls.count("lease_keep_alive") >= 4, "asked the follower"
        assert leader.calls.count("lease_keep_alive") >= 4, "which forwarded to the leader"
        await ka.stop()
        still_alive: bool = ka.alive
        assert not still_alive
        assert ka.reason is None


@run()
async def test_keep_alive_reports_a_revoked_lease() -> None:
    async with members() as m, client_for(m) as client:
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


@run()
async def test_keep_alive_reports_loss_once_renewals_fail_for_a_whole_ttl() -> None:
    async with members() as m, client_for(m, request_timeout=0.5) as client:
        grant = await client.lease_grant(2)
        ka = await client.keep_alive(grant.id)
        await eventually(lambda: ka.renewals >= 2, "a background renewal")
        for server in m.servers:
            await server.stop(grace=0)
        async with asyncio.timeout(5):
            assert await ka.wait_lost() is LeaseLoss.RENEWALS_FAILED
        lost_after = time.monotonic() - ka.last_renewal
        assert lost_after >= 2.0, "not reported before the TTL ran out"
        assert lost_after < 3.5, "reported soon after"
        assert ka.error is not None


@run()
async def test_keep_alive_continues_on_the_next_member_after_a_failover() -> None:
    async with members(2, leader=1) as m, client_for(m) as client:
        grant = await client.lease_grant(1)
        ka = await client.keep_alive(grant.id)
        await eventually(lambda: ka.renewals >= 2, "a background renewal")
        assert set(client._links) == {m.endpoints[0]}
        await m.servers[0].stop(grace=0)
        renewed, seen = ka.renewals, m.services[1].calls.count("lease_keep_alive")
        await eventually(lambda: ka.renewals >= renewed + 3, "renewals through member 1")
        assert ka.alive
        assert ka.reason is None
        assert m.services[1].calls.count("lease_keep_alive") >= seen + 3
        assert client.endpoints[client._current] == m.endpoints[1]
        dead = client._links.get(m.endpoints[0])
        assert dead is None or dead.closed


@run()
async def test_keep_alive_moves_on_when_its_member_answers_no_leader() -> None:
    async with members(2, leader=1) as m, client_for(m) as client:
        grant = await client.lease_grant(1)
        ka = await client.keep_alive(grant.id)
        await eventually(lambda: ka.renewals >= 2, "a background renewal")
        assert client._current == 0
        m.services[0].unavailable = NoLeaderError()
        renewed = ka.renewals
        await eventually(lambda: ka.renewals >= renewed + 3, "renewals through member 1")
        assert ka.alive
        assert client._current == 1
        assert isinstance(ka.error, NoLeaderError), "one renewal failed on member 0 first"


# -- snapshot -----------------------------------------------------------------------------------


@run()
async def test_snapshot_streams_kvapps_snapshot_file_into_the_sink() -> None:
    async with members(2) as m, client_for(m) as client:
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

        def full(_: bytes) -> None:
            raise OSError(28, "No space left on device")

        with pytest.raises(OSError, match="No space left"):
            await client.snapshot(full, endpoint=m.endpoints[1])
        assert (await client.get(b"k01")).count == 1


# -- sync client --------------------------------------------------------------------------------


@contextlib.contextmanager
def served_in_thread() -> Iterator[tuple[FakeCluster, list[str]]]:
    """Serve a fake member's etcd API from a loop in a background thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cluster = FakeCluster()
    server = EtcdGrpcServer(cluster.service(0x200), port=0)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
        yield cluster, [server.endpoint]
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=0), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_the_sync_client() -> None:
    with (
        served_in_thread() as (cluster, endpoints),
        Client(endpoints, protocol="etcd") as client,
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
    with pytest.raises(RuntimeError, match="closed"):
        client.get(b"k")


# -- real members -------------------------------------------------------------------------------


class RealMembers:
    """Three in-process kvapp members (kvapp.node.Member), each serving etcd's gRPC API."""

    size: ClassVar[int] = 3

    def __init__(self) -> None:
        self.members: list[Member] = []
        self.servers: list[EtcdGrpcServer] = []

    async def start(self) -> RealMembers:
        hub, clock = Hub(), Clock()
        initial = infos(self.size)
        self.servers = [
            EtcdGrpcServer(None, host="127.0.0.1", port=0)  # type: ignore[arg-type]
            for _ in initial
        ]
        for s in self.servers:
            await s.start()
        self.members = [
            make_member(
                hub, info, initial, clock, client_urls=publish_grpc_urls((f"http://{s.endpoint}",))
            )
            for info, s in zip(initial, self.servers, strict=True)
        ]
        for mem, s in zip(self.members, self.servers, strict=True):
            s.api.service = mem
            s.api.maintenance = MemberMaintenance(mem, transfer_timeout=3.0)
            await mem.start()
        await asyncio.wait_for(self.members[0].node.wait_leader(timeout=5), 6)
        return self

    async def stop(self, i: int) -> None:
        await self.servers[i].stop(grace=0)
        await self.members[i].stop(transfer=False)

    async def close(self) -> None:
        for s in self.servers:
            await s.stop(grace=0)
        await stop_all(self.members)  # stopping twice is a no-op


@run(60)
async def test_real_members_serve_the_client_and_survive_losing_the_members_it_is_on() -> None:
    real = await RealMembers().start()
    try:
        lead = leader_of(real.members)
        order = sorted(range(3), key=lambda i: real.members[i] is lead)  # followers first
        endpoints = [real.servers[i].endpoint for i in order]
        async with AsyncClient(endpoints, protocol="etcd", request_timeout=5) as client:
            watch = await client.watch(b"r/", prefix=True)
            grant = await client.lease_grant(30)
            ka = await client.keep_alive(grant.id)
            put = await client.put(b"r/0", b"v", lease=grant.id)
            first = await collect(watch, 1)
            assert (await client.lease_time_to_live(grant.id, keys=True)).keys == (b"r/0",)
            on = real.members[order[0]]
            assert not on.node.is_leader
            assert (await client.status()).header.member_id == on.id

            await real.stop(order[0])  # the follower the client is on
            assert (await client.get(b"r/0")).kvs[0].lease == grant.id  # a read fails over
            assert (await client.status()).header.member_id != on.id
            for i in range(1, 6):
                await client.put(b"r/%d" % i, b"v")
            rest = await collect(watch, 5)
            assert [e.kv.key for e in first + rest] == [b"r/%d" % i for i in range(6)]
            revisions = [e.kv.mod_revision for e in first + rest]
            assert revisions == list(range(put.revision, put.revision + 6))
            renewed = ka.renewals
            assert (await client.keep_alive_once(grant.id)).ttl == 30
            assert ka.alive
            assert renewed >= 1
            listed = await client.member_list()
            assert len(listed) == 3
    finally:
        await real.close()
