"""kvapp.server.etcd.lockservice: etcd's Lock and Election services over gRPC.

Real gRPC on 127.0.0.1 against fake members sharing one state (tests/kvapp/fake_service.py),
and against three real in-process members whose lease clock the test moves: fairness, lease
loss, cancellation, etcd's answers and error texts (the same as real etcd 3.4's,
tests/kvapp/etcd/test_lockservice_etcd.py compares them), and the JSON gateway's paths.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest

from kvapp.etcdpb import kv_pb2, rpc_pb2, v3election_pb2, v3lock_pb2
from kvapp.mvcc.keyrange import prefix_range_end
from kvapp.node import Member
from kvapp.server.etcd import EtcdGrpcServer, publish_grpc_urls
from kvapp.server.etcd.gateway import EtcdGateway
from tests.kvapp.etcd.helpers import Etcd, FakeEtcdCluster, aio
from tests.kvapp.test_member import Clock, Hub, infos, leader_of, make_member, stop_all

lpb, epb = v3lock_pb2, v3election_pb2

_R = TypeVar("_R")


class Concurrency:
    """Calls the Lock and Election services over a member's channel (typed, for tests)."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self.channel = etcd.channel

    async def _call(
        self, rpc: str, request: Any, response: type[_R], deadline: float | None = 10
    ) -> _R:
        method = self.channel.unary_unary(
            rpc,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,  # type: ignore[attr-defined]
        )
        result: _R = await method(request, timeout=deadline)
        return result

    async def lock(
        self, name: bytes, lease: int, *, deadline: float | None = 10
    ) -> v3lock_pb2.LockResponse:
        return await self._call(
            "/v3lockpb.Lock/Lock",
            lpb.LockRequest(name=name, lease=lease),
            lpb.LockResponse,
            deadline,
        )

    async def unlock(self, key: bytes) -> v3lock_pb2.UnlockResponse:
        return await self._call(
            "/v3lockpb.Lock/Unlock", lpb.UnlockRequest(key=key), lpb.UnlockResponse
        )

    async def campaign(
        self, name: bytes, lease: int, value: bytes, *, deadline: float | None = 10
    ) -> v3election_pb2.CampaignResponse:
        return await self._call(
            "/v3electionpb.Election/Campaign",
            epb.CampaignRequest(name=name, lease=lease, value=value),
            epb.CampaignResponse,
            deadline,
        )

    async def proclaim(
        self, leader: v3election_pb2.LeaderKey | None, value: bytes
    ) -> v3election_pb2.ProclaimResponse:
        return await self._call(
            "/v3electionpb.Election/Proclaim",
            epb.ProclaimRequest(leader=leader, value=value),
            epb.ProclaimResponse,
        )

    async def leader(self, name: bytes) -> v3election_pb2.LeaderResponse:
        return await self._call(
            "/v3electionpb.Election/Leader", epb.LeaderRequest(name=name), epb.LeaderResponse
        )

    async def resign(
        self, leader: v3election_pb2.LeaderKey | None
    ) -> v3election_pb2.ResignResponse:
        return await self._call(
            "/v3electionpb.Election/Resign", epb.ResignRequest(leader=leader), epb.ResignResponse
        )

    def observe(self, name: bytes) -> Any:
        """The Observe stream (iterate it; ``cancel()`` it when done)."""
        return self.channel.unary_stream(
            "/v3electionpb.Election/Observe",
            request_serializer=epb.LeaderRequest.SerializeToString,
            response_deserializer=epb.LeaderResponse.FromString,
        )(epb.LeaderRequest(name=name), timeout=20)

    async def grant(self, ttl: int = 60) -> int:
        resp = await self.etcd.call(
            "Lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl), rpc_pb2.LeaseGrantResponse
        )
        return resp.ID

    async def revoke(self, lease: int) -> None:
        await self.etcd.call(
            "Lease",
            "LeaseRevoke",
            rpc_pb2.LeaseRevokeRequest(ID=lease),
            rpc_pb2.LeaseRevokeResponse,
        )

    async def queue(self, name: bytes) -> list[kv_pb2.KeyValue]:
        """The keys under ``name/``, oldest first."""
        prefix = name + b"/"
        got = await self.etcd.range(
            prefix,
            range_end=prefix_range_end(prefix),
            sort_target=rpc_pb2.RangeRequest.CREATE,
            sort_order=rpc_pb2.RangeRequest.ASCEND,
        )
        return list(got.kvs)


async def error_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 5.0) -> None:
    """Poll ``check`` every 20 ms; fail naming ``what`` if it is not true ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)


async def still_waiting(task: asyncio.Task[Any], for_: float = 0.3) -> bool:
    """Whether ``task`` is still not done after ``for_`` seconds."""
    done, _ = await asyncio.wait([task], timeout=for_)
    return not done


async def queued(c: Concurrency, name: bytes, n: int) -> None:
    async def enough() -> bool:
        return len(await c.queue(name)) >= n

    await until(enough, f"{n} keys queued under {name!r}")


def two(c: FakeEtcdCluster) -> tuple[Concurrency, Concurrency]:
    """Clients of the leader and of the follower."""
    return Concurrency(c.leader.client), Concurrency(c.follower.client)


# -- Lock ------------------------------------------------------------------------------------------


@aio
async def test_the_lock_is_granted_in_request_order_and_unlock_hands_it_to_the_next() -> None:
    c = await FakeEtcdCluster().start()
    try:
        lead, follow = two(c)
        a, b, d = [await lead.grant() for _ in range(3)]
        first = await lead.lock(b"jobs", a)
        assert first.key == b"jobs/%x" % a
        created = (await lead.queue(b"jobs"))[0]
        assert first.header.revision == created.create_revision  # the put's revision
        assert (first.header.cluster_id, first.header.member_id) == (c.cluster.cluster_id, 0x100)
        assert created.lease == a
        assert created.value == b""

        second = asyncio.create_task(follow.lock(b"jobs", b))  # through a follower
        await queued(lead, b"jobs", 2)
        third = asyncio.create_task(lead.lock(b"jobs", d))
        await queued(lead, b"jobs", 3)
        assert await still_waiting(second)
        assert await still_waiting(third)

        unlocked = await lead.unlock(first.key)
        got = await asyncio.wait_for(second, 5)
        assert got.key == b"jobs/%x" % b
        # the revision at which the waiter found the lock free: the unlock's
        assert got.header.revision == unlocked.header.revision
        assert got.header.member_id == 0x101
        assert await still_waiting(third)
        await follow.unlock(got.key)
        got3 = await asyncio.wait_for(third, 5)
        assert got3.key == b"jobs/%x" % d
        await lead.unlock(got3.key)
        assert await lead.queue(b"jobs") == []
        # unlocking a key that is not there is not an error
        assert (await lead.unlock(got3.key)).header.revision == got3.header.revision + 1
    finally:
        await c.close()


@aio
async def test_locking_again_with_the_same_lease_is_the_same_acquisition() -> None:
    c = await FakeEtcdCluster().start()
    try:
        lead, follow = two(c)
        a, b = await lead.grant(), await lead.grant()
        held = await lead.lock(b"again", a)
        again = await follow.lock(b"again", a)
        assert again.key == held.key
        assert len(await lead.queue(b"again")) == 1
        waiting = asyncio.create_task(lead.lock(b"again", b))
        await queued(lead, b"again", 2)
        waiting_again = asyncio.create_task(follow.lock(b"again", b))  # joins, does not requeue
        assert await still_waiting(waiting_again)
        assert len(await lead.queue(b"again")) == 2
        await lead.unlock(held.key)
        assert (await asyncio.wait_for(waiting, 5)).key == b"again/%x" % b
        assert (await asyncio.wait_for(waiting_again, 5)).key == b"again/%x" % b
    finally:
        await c.close()


@aio
async def test_lease_0_locks_with_a_new_lease_of_60_seconds_and_an_empty_name_is_a_name() -> None:
    c = await FakeEtcdCluster().start()
    try:
        lead, _ = two(c)
        got = await lead.lock(b"zero", 0)
        name, lease_hex = got.key.split(b"/")
        assert name == b"zero"
        ttl = await lead.etcd.call(
            "Lease",
            "LeaseTimeToLive",
            rpc_pb2.LeaseTimeToLiveRequest(ID=int(lease_hex, 16)),
            rpc_pb2.LeaseTimeToLiveResponse,
        )
        assert ttl.grantedTTL == 60
        a = await lead.grant()
        assert (await lead.lock(b"", a)).key == b"/%x" % a  # etcd's queue for "" is "/"
    finally:
        await c.close()


@aio
async def test_errors_are_etcds_texts_with_code_unknown() -> None:
    c = await FakeEtcdCluster().start()
    try:
        lead, follow = two(c)
        for who in (lead, follow):
            assert await error_of(who.lock(b"l", 12345)) == (
                grpc.StatusCode.UNKNOWN,
                "etcdserver: requested lease not found",
            )
            assert await error_of(who.lock(b"l", -1)) == (
                grpc.StatusCode.UNKNOWN,
                "etcdserver: requested lease not found",
            )
            assert await error_of(who.unlock(b"")) == (
                grpc.StatusCode.UNKNOWN,
                "etcdserver: key is not provided",
            )
        assert await lead.queue(b"l") == []
    finally:
        await c.close()


@aio
async def test_a_lock_call_given_up_by_its_client_leaves_the_queue() -> None:
    c = await FakeEtcdCluster().start()
    try:
        lead, follow = two(c)
        a, b, d = [await lead.grant() for _ in range(3)]
        held = await lead.lock(b"gone", a)
        code, _ = await error_of(follow.lock(b"gone", b, deadline=0.5))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED

        async def only_the_holder() -> bool:
            return [kv.key for kv in await lead.queue(b"gone")] == [held.key]

        await until(only_the_holder, "the abandoned contender's key to be deleted")
        later = asyncio.create_task(lead.lock(b"gone", d))
        await queued(lead, b"gone", 2)
        await lead.unlock(held.key)
        assert (await asyncio.wait_for(later, 5)).key == b"gone/%x" % d
    finally:
        await c.close()


@aio
async def test_a_lost_lease_frees_the_lock_and_fails_a_waiter_whose_lease_it_was() -> None:
    """A holder's lease revoked (as when it expires): the next waiter gets the lock. A
    waiter's lease lost while it waits: it answers etcd 3.5's "mutex: session is expired"
    once its turn comes, instead of a lock that nobody holds (etcd 3.4, issue 11456)."""
    c = await FakeEtcdCluster().start()
    try:
        lead, follow = two(c)
        a, b, d, e = [await lead.grant() for _ in range(4)]
        await lead.lock(b"lost", a)
        second = asyncio.create_task(lead.lock(b"lost", b))
        await queued(lead, b"lost", 2)
        third = asyncio.create_task(follow.lock(b"lost", d))  # confirms through the leader
        await queued(lead, b"lost", 3)
        await lead.revoke(a)
        got = await asyncio.wait_for(second, 5)
        assert got.key == b"lost/%x" % b
        await lead.revoke(d)  # the third waiter's lease goes while it waits
        assert await still_waiting(third)
        await lead.unlock(got.key)
        assert await asyncio.wait_for(error_of(third), 5) == (
            grpc.StatusCode.UNKNOWN,
            "mutex: session is expired",
        )
        assert (await lead.lock(b"lost", e)).key == b"lost/%x" % e  # free for the next
    finally:
        await c.close()


# -- Election --------------------------------------------------------------------------------------


@aio
async def test_campaign_proclaim_leader_observe_and_resign() -> None:
    c = await FakeEtcdCluster().start()
    try:
        lead, follow = two(c)
        a, b = await lead.grant(), await lead.grant()
        observed = follow.observe(b"svc")
        seen: asyncio.Queue[v3election_pb2.LeaderResponse] = asyncio.Queue()

        async def watch() -> None:
            async for resp in observed:
                seen.put_nowait(resp)

        watcher = asyncio.create_task(watch())
        try:
            won = await lead.campaign(b"svc", a, b"http://a")
            leader = won.leader
            assert (leader.name, leader.key, leader.lease) == (b"svc", b"svc/%x" % a, a)
            assert leader.rev == won.header.revision  # its key's create revision
            first = await asyncio.wait_for(seen.get(), 5)
            assert (first.kv.key, first.kv.value) == (leader.key, b"http://a")
            assert first.header.revision == first.kv.mod_revision

            now = await follow.leader(b"svc")
            assert (now.kv.key, now.kv.value, now.kv.create_revision) == (
                leader.key,
                b"http://a",
                leader.rev,
            )
            challenger = asyncio.create_task(follow.campaign(b"svc", b, b"http://b"))
            await queued(lead, b"svc", 2)
            assert await still_waiting(challenger)

            proclaimed = await follow.proclaim(leader, b"http://a2")
            second = await asyncio.wait_for(seen.get(), 5)
            assert (second.kv.value, second.kv.mod_revision) == (
                b"http://a2",
                proclaimed.header.revision,
            )
            assert (await lead.leader(b"svc")).kv.value == b"http://a2"

            resigned = await lead.resign(leader)
            taken = await asyncio.wait_for(challenger, 5)
            assert taken.leader.key == b"svc/%x" % b
            assert taken.leader.rev < resigned.header.revision
            assert taken.header.revision == taken.leader.rev  # the campaign's own put
            third = await asyncio.wait_for(seen.get(), 5)
            assert (third.kv.key, third.kv.value) == (taken.leader.key, b"http://b")
            assert seen.empty()
        finally:
            observed.cancel()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    finally:
        await c.close()


@aio
async def test_election_answers_and_errors_as_etcds() -> None:
    c = await FakeEtcdCluster().start()
    try:
        lead, _ = two(c)
        a = await lead.grant()
        unknown = grpc.StatusCode.UNKNOWN
        assert await error_of(lead.leader(b"none")) == (unknown, "election: no leader")
        missing = (unknown, '"leader" field must be provided')
        assert await error_of(lead.proclaim(None, b"x")) == missing
        assert await error_of(lead.resign(None)) == missing
        assert await error_of(lead.campaign(b"e", 999, b"x")) == (
            unknown,
            "etcdserver: requested lease not found",
        )

        won = await lead.campaign(b"e", a, b"one")
        again = await lead.campaign(b"e", a, b"two")  # the same candidate, a new value
        assert again.leader == won.leader
        assert again.header.revision == won.header.revision  # it found the key there
        current = (await lead.leader(b"e")).kv
        assert (current.value, current.version) == (b"two", 2)

        stale = epb.LeaderKey()
        stale.CopyFrom(won.leader)
        stale.rev = won.leader.rev - 1
        assert await error_of(lead.proclaim(stale, b"x")) == (unknown, "election: not leader")
        before = (await lead.leader(b"e")).kv
        resigned = await lead.resign(stale)  # not the leader: nothing happens, no error
        assert resigned.header.revision == before.mod_revision
        assert (await lead.leader(b"e")).kv == before
        await lead.resign(won.leader)
        assert await error_of(lead.leader(b"e")) == (unknown, "election: no leader")
        assert await error_of(lead.proclaim(won.leader, b"x")) == (unknown, "election: not leader")
    finally:
        await c.close()


@aio
async def test_a_candidate_losing_its_lease_while_waiting_is_told_and_one_given_up_leaves() -> None:
    c = await FakeEtcdCluster().start()
    try:
        lead, follow = two(c)
        a, b, d = [await lead.grant() for _ in range(3)]
        won = await lead.campaign(b"cl", a, b"a")
        doomed = asyncio.create_task(follow.campaign(b"cl", b, b"b"))
        await queued(lead, b"cl", 2)
        await lead.revoke(b)
        code, _ = await error_of(follow.campaign(b"cl", d, b"d", deadline=0.5))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED

        async def only_the_leader() -> bool:
            return [kv.key for kv in await lead.queue(b"cl")] == [won.leader.key]

        await until(only_the_leader, "the lost and the abandoned candidates' keys to go")
        await lead.resign(won.leader)
        assert await asyncio.wait_for(error_of(doomed), 5) == (
            grpc.StatusCode.UNKNOWN,
            "election: session expired",
        )
    finally:
        await c.close()


# -- the JSON gateway ------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@aio
async def test_the_gateway_serves_the_lock_and_election_paths() -> None:
    c = await FakeEtcdCluster().start()
    gateway = EtcdGateway(c.leader.service)
    try:
        lead, _ = two(c)
        a = await lead.grant()

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            route = gateway.route(path)
            assert route is not None, path
            answer: dict[str, Any] = json.loads(
                await gateway.unary(route, json.dumps(body).encode())
            )
            return answer

        for path in ("/v3/lock/lock", "/v3/election/observe", "/v3/election/resign"):
            assert gateway.unserved(path) is None
        locked = await post("/v3/lock/lock", {"name": b64(b"gw"), "lease": str(a)})
        assert base64.b64decode(locked["key"]) == b"gw/%x" % a
        assert set(locked["header"]) == {"cluster_id", "member_id", "revision", "raft_term"}
        await post("/v3/lock/unlock", {"key": locked["key"]})
        assert await lead.queue(b"gw") == []

        won = await post(
            "/v3/election/campaign", {"name": b64(b"gwe"), "lease": a, "value": b64(b"v")}
        )
        assert won["leader"]["lease"] == str(a)
        chunks = gateway.stream(
            gateway.routes["/v3/election/observe"], b'{"name": "%s"}' % b64(b"gwe").encode()
        )
        status, chunk = await asyncio.wait_for(anext(chunks), 5)
        await chunks.aclose()
        assert status == 200
        assert base64.b64decode(json.loads(chunk)["result"]["kv"]["value"]) == b"v"
        leader = await post("/v3/election/leader", {"name": b64(b"gwe")})
        assert leader["kv"]["key"] == won["leader"]["key"]
        await post("/v3/election/resign", {"leader": won["leader"]})
        with pytest.raises(Exception, match="election: no leader") as info:
            await post("/v3/election/leader", {"name": b64(b"gwe")})
        assert getattr(info.value, "http_status", None) == 500  # UNKNOWN, as grpc-gateway maps it
    finally:
        await gateway.close()
        await c.close()


# -- real members ----------------------------------------------------------------------------------


class RealMembers:
    """Three in-process kvapp members on one injected lease clock, each serving etcd's API."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.members: list[Member] = []
        self.servers: list[EtcdGrpcServer] = []

    async def start(self) -> RealMembers:
        hub, initial = Hub(), infos(3)
        self.servers = [EtcdGrpcServer(None, port=0) for _ in initial]  # type: ignore[arg-type]
        for s in self.servers:
            await s.start()
        for info, s in zip(initial, self.servers, strict=True):
            urls = publish_grpc_urls((f"http://{s.endpoint}",))
            member = make_member(hub, info, initial, self.clock, client_urls=urls)
            s.api.service = member
            self.members.append(member)
        for m in self.members:
            await m.start()
        await asyncio.wait_for(self.members[0].node.wait_leader(timeout=5), 6)
        return self

    async def close(self) -> None:
        for s in self.servers:
            await s.stop(grace=0)
        await stop_all(self.members)


@aio
async def test_on_real_members_an_expired_holders_lock_goes_to_the_waiter_on_a_follower() -> None:
    real = await RealMembers().start()
    clients = [Etcd(s.endpoint) for s in real.servers]
    try:
        lead = leader_of(real.members)
        li = real.members.index(lead)
        fi = (li + 1) % 3
        on_leader, on_follower = Concurrency(clients[li]), Concurrency(clients[fi])
        short, long_ = await on_leader.grant(2), await on_leader.grant(60)
        held = await on_follower.lock(b"real", short)
        waiting = asyncio.create_task(on_follower.lock(b"real", long_))
        await queued(on_leader, b"real", 2)
        assert await still_waiting(waiting)
        real.clock.now += 10  # the leader's lease clock: the holder's lease expires
        got = await asyncio.wait_for(waiting, 10)
        assert got.key == b"real/%x" % long_
        assert [kv.key for kv in await on_leader.queue(b"real")] == [got.key]
        assert held.key not in [kv.key for kv in await on_leader.queue(b"real")]
        won = await on_follower.campaign(b"real-e", long_, b"x")
        assert (await on_leader.leader(b"real-e")).kv.key == won.leader.key
    finally:
        for cl in clients:
            await cl.close()
        await real.close()
