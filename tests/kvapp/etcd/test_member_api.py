"""The etcd API over real in-process members (kvapp.node.Member on an in-memory network).

Each member gets its own EtcdGrpcServer on 127.0.0.1 with MemberMaintenance; the members
publish their gRPC URLs as ``kvapp serve`` does, so followers can forward lease calls.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

from kvapp.etcdpb import rpc_pb2
from kvapp.node import Member
from kvapp.server.etcd import EtcdGrpcServer, MemberMaintenance, publish_grpc_urls
from kvapp.service import MemberInfo
from tests.kvapp.etcd.helpers import Etcd, aio
from tests.kvapp.test_member import Clock, Hub, Links, infos, leader_of, make_member, stop_all

pb = rpc_pb2


async def _start(**cfg: Any) -> tuple[list[Member], list[EtcdGrpcServer], list[Etcd]]:
    hub, clock = Hub(), Clock()
    initial = infos(3)
    servers = [EtcdGrpcServer(None, host="127.0.0.1", port=0) for _ in initial]  # type: ignore[arg-type]
    for s in servers:
        await s.start()  # bound first: each member publishes its URL from the start
    members = [
        make_member(
            hub,
            info,
            initial,
            clock,
            client_urls=publish_grpc_urls((f"http://{s.endpoint}",)),
            **cfg,
        )
        for info, s in zip(initial, servers, strict=True)
    ]
    for m, s in zip(members, servers, strict=True):
        s.api.service = m
        s.api.maintenance = MemberMaintenance(m, transfer_timeout=3.0)
        await m.start()
    await asyncio.wait_for(members[0].node.wait_leader(timeout=5), 6)
    return members, servers, [Etcd(s.endpoint) for s in servers]


async def _stop(members: list[Member], servers: list[EtcdGrpcServer], clients: list[Etcd]) -> None:
    for c in clients:
        await c.close()
    for s in servers:
        await s.stop(grace=0)
    await stop_all(members)


async def _published(members: list[Member]) -> None:
    for _ in range(500):
        infos_now = members[0].member_list()
        if all(any(u.startswith("grpc+") for u in i.client_urls) for i in infos_now):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"members did not publish their gRPC URLs: {members[0].member_list()}")


@aio
async def test_kv_lease_and_maintenance_on_real_members() -> None:
    members, servers, clients = await _start()
    try:
        await _published(members)
        lead = leader_of(members)
        i_lead = members.index(lead)
        follower = clients[(i_lead + 1) % 3]
        put = await follower.put(b"k", b"v")
        assert put.header.revision == 2
        got = await clients[i_lead].range(b"k")
        assert got.kvs[0].value == b"v"
        assert got.header.member_id == lead.id
        grant = await follower.call(
            "Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=20), pb.LeaseGrantResponse
        )
        ttl = await follower.call(  # a follower forwards it to the leader
            "Lease",
            "LeaseTimeToLive",
            pb.LeaseTimeToLiveRequest(ID=grant.ID),
            pb.LeaseTimeToLiveResponse,
        )
        assert ttl.grantedTTL == 20
        stream = follower.stream(
            "Lease", "LeaseKeepAlive", pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse
        )
        await stream.write(pb.LeaseKeepAliveRequest(ID=grant.ID))
        assert (await stream.read()).TTL == 20
        stream.cancel()
        hashes = {
            (
                await c.call(
                    "Maintenance", "HashKV", pb.HashKVRequest(revision=2), pb.HashKVResponse
                )
            ).hash
            for c in clients
        }
        assert len(hashes) == 1
        alarms = await follower.call("Maintenance", "Alarm", pb.AlarmRequest(), pb.AlarmResponse)
        assert not alarms.alarms
        status = await follower.call("Maintenance", "Status", pb.StatusRequest(), pb.StatusResponse)
        assert status.leader == lead.id
        listed = await follower.call(
            "Cluster", "MemberList", pb.MemberListRequest(), pb.MemberListResponse
        )
        assert sorted(u for m in listed.members for u in m.clientURLs) == sorted(
            f"http://{s.endpoint}" for s in servers
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await follower.call(
                "Maintenance",
                "MoveLeader",
                pb.MoveLeaderRequest(targetID=lead.id),
                pb.MoveLeaderResponse,
            )
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "etcdserver: not leader",
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await clients[i_lead].call(
                "Maintenance", "MoveLeader", pb.MoveLeaderRequest(targetID=1), pb.MoveLeaderResponse
            )
        assert info.value.details() == "etcdserver: bad leader transferee"
        target = members[(i_lead + 1) % 3].id
        await clients[i_lead].call(
            "Maintenance",
            "MoveLeader",
            pb.MoveLeaderRequest(targetID=target),
            pb.MoveLeaderResponse,
        )
        assert lead.node.leader_id == target
    finally:
        await _stop(members, servers, clients)


@aio
async def test_a_follower_forwards_member_promote_to_the_leader() -> None:
    """Only the leader knows whether a learner is in sync: a follower hands the request on,
    so the answer is the leader's ("not in sync" for a learner that never started), not
    "not leader"."""
    members, servers, clients = await _start()
    try:
        await _published(members)
        lead = leader_of(members)
        i_follower = (members.index(lead) + 1) % 3
        follower = clients[i_follower]
        added = await follower.call(
            "Cluster",
            "MemberAdd",
            pb.MemberAddRequest(peerURLs=["http://127.0.0.1:29998"], isLearner=True),
            pb.MemberAddResponse,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await follower.call(
                "Cluster",
                "MemberPromote",
                pb.MemberPromoteRequest(ID=added.member.ID),
                pb.MemberPromoteResponse,
            )
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "etcdserver: can only promote a learner member which is in sync with leader",
        )
    finally:
        await _stop(members, servers, clients)


@aio
async def test_a_promotion_forwarded_by_a_follower_answers_with_the_leaders_member_list() -> None:
    # The leader must not promote the learner itself before the request arrives.
    members, servers, clients = await _start(auto_promote=False)
    newcomer: Member | None = None
    try:
        await _published(members)
        lead = leader_of(members)
        i_follower = (members.index(lead) + 1) % 3
        urls = ("http://127.0.0.1:29997",)
        added = await members[i_follower].member_add(urls, is_learner=True)
        info = MemberInfo(added.id, "m4", urls, is_learner=True)
        initial = [m for m in lead.member_list() if m.id != added.id] + [info]
        newcomer = make_member(
            cast("Links", members[0]._network).hub,
            info,
            initial,
            Clock(),
            new_cluster=False,
            auto_promote=False,
        )
        await newcomer.start()
        for _ in range(500):
            if lead._learner_caught_up(added.id):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the learner never caught up")
        promoted = await clients[i_follower].call(
            "Cluster",
            "MemberPromote",
            pb.MemberPromoteRequest(ID=added.id),
            pb.MemberPromoteResponse,
        )
        assert not next(m for m in promoted.members if added.id == m.ID).isLearner
    finally:
        if newcomer is not None:
            await newcomer.stop(transfer=False)
        await _stop(members, servers, clients)
