"""kvapp.client over etcd's v3 gRPC API (``protocol="etcd"``), against kvapp's etcd servers.

The scenarios both protocols share run over both in tests/kvapp/test_client.py; these are the
ones where etcd's API differs, over in-memory fake members (:class:`FakeCluster`, one shared
state) each behind an :class:`~kvapp.server.etcd.EtcdGrpcServer` on 127.0.0.1, and one over
real in-process members. The differences they assert: a write whose outcome is unknown is
never retried (no request ids), any member serves lease calls (it forwards them). Waiting is
bounded everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

import attrs
import pytest

from kvapp.client import (
    AsyncClient,
    OutcomeUnknown,
)
from kvapp.client.etcd import EtcdConnector, EtcdLink, grpc_target
from kvapp.errors import (
    EtcdError,
    GrpcCode,
    NoLeaderError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from kvapp.mvcc.types import PutRequest
from kvapp.node import Member
from kvapp.server.etcd import EtcdGrpcServer, MemberMaintenance, publish_grpc_urls
from kvapp.service import StatusInfo, WriteRequest
from tests.kvapp.fake_service import FakeService
from tests.kvapp.test_client import Members, client_for, collect, eventually, run
from tests.kvapp.test_client import members as any_members
from tests.kvapp.test_member import Clock, Hub, infos, leader_of, make_member, stop_all


def members(n: int = 1, **options: Any) -> contextlib.AbstractAsyncContextManager[Members]:
    """``n`` fake members behind etcd's gRPC API (see tests/kvapp/test_client.py)."""
    return any_members(n, protocol="etcd", **options)


class UnsureError(EtcdError):
    """An "unavailable" text kvapp does not know (etcd has several 'timed out' variants)."""

    message = "etcdserver: request timed out, possibly due to previous leader failure"
    code = GrpcCode.UNAVAILABLE


# -- choosing the transport ---------------------------------------------------------------------


def test_the_protocol_is_chosen_explicitly_and_endpoints_are_grpc_targets() -> None:
    assert grpc_target("127.0.0.1:2379") == "127.0.0.1:2379"
    assert grpc_target("http://10.0.0.1:2379") == "10.0.0.1:2379"
    assert grpc_target("[::1]:2379") == "[::1]:2379"
    assert grpc_target("https://10.0.0.1:2379") == "10.0.0.1:2379"  # TLS is the connector's
    for bad in ("127.0.0.1", "unix:///tmp/sock", "ftp://127.0.0.1:2379"):
        with pytest.raises(ValueError, match="endpoint"):
            grpc_target(bad)
    with pytest.raises(ValueError, match="protocol"):
        AsyncClient(["127.0.0.1:2379"], protocol="grpc")  # type: ignore[arg-type]


@run()
async def test_an_https_endpoint_without_tls_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="needs tls"):
        await EtcdConnector().connect("https://127.0.0.1:1", client_id=1)


# -- operations ---------------------------------------------------------------------------------


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


# -- failover and retries -----------------------------------------------------------------------


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


# -- sync client --------------------------------------------------------------------------------


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
