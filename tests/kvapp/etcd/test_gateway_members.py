"""etcd's JSON gateway over real in-process members (kvapp.node.Member on an in-memory network).

Each member has an EtcdGrpcServer (published, so followers forward lease calls to the leader)
and a GatewayHttpServer on 127.0.0.1; requests are plain HTTP/1.1 (tests/kvapp/etcd/
test_gateway.py's curl-like client).
"""

from __future__ import annotations

import asyncio

import attrs

from kvapp.node import Member
from kvapp.server.etcd import EtcdGrpcServer, MemberMaintenance, publish_grpc_urls
from kvapp.server.etcd.gateway import EtcdGateway
from kvapp.server.etcd.gateway_http import GatewayHttpServer
from tests.kvapp.etcd.helpers import aio
from tests.kvapp.etcd.test_gateway import b64, ok, post, stream, unb64
from tests.kvapp.test_member import Clock, Hub, infos, leader_of, make_member, stop_all

MAX_REQUEST = 4096


@attrs.define
class Cluster:
    members: list[Member]
    grpc: list[EtcdGrpcServer]
    http: list[GatewayHttpServer]

    def port(self, m: Member) -> int:
        return self.http[self.members.index(m)].port

    async def stop(self) -> None:
        for h in self.http:
            await h.stop()
        for s in self.grpc:
            await s.stop(grace=0)
        await stop_all(self.members)


async def _start() -> Cluster:
    hub, clock = Hub(), Clock()
    initial = infos(3)
    grpc = [EtcdGrpcServer(None, host="127.0.0.1", port=0) for _ in initial]  # type: ignore[arg-type]
    for s in grpc:
        await s.start()
    members = [
        make_member(
            hub,
            info,
            initial,
            clock,
            client_urls=publish_grpc_urls((f"http://{s.endpoint}",)),
            max_request_bytes=MAX_REQUEST,
        )
        for info, s in zip(initial, grpc, strict=True)
    ]
    http = []
    for m, s in zip(members, grpc, strict=True):
        s.api.service = m
        s.api.maintenance = MemberMaintenance(m)
        gateway = EtcdGateway(m, MemberMaintenance(m), max_request_bytes=MAX_REQUEST)
        server = GatewayHttpServer(gateway, host="127.0.0.1", port=0)
        await server.start()
        http.append(server)
        await m.start()
    await asyncio.wait_for(members[0].node.wait_leader(timeout=5), 6)
    c = Cluster(members, grpc, http)
    for _ in range(500):  # every member publishes its gRPC URL once it has joined
        if all(any(u.startswith("grpc+") for u in i.client_urls) for i in members[0].member_list()):
            return c
        await asyncio.sleep(0.02)
    await c.stop()
    raise AssertionError(f"members did not publish their gRPC URLs: {members[0].member_list()}")


@aio
async def test_the_gateway_on_real_members() -> None:
    c = await _start()
    try:
        lead = leader_of(c.members)
        follower = next(m for m in c.members if m is not lead)
        at_lead, at_follower = c.port(lead), c.port(follower)
        async with stream(
            at_follower, "/v3/watch", {"create_request": {"key": b64("k"), "prev_kv": True}}
        ) as watch:
            assert (await watch.result())["created"] is True
            put = await ok(at_follower, "/v3/kv/put", {"key": b64("k"), "value": b64("v1")})
            assert put["header"]["member_id"] == str(follower.id)
            await ok(at_lead, "/v3/kv/put", {"key": b64("k"), "value": b64("v2")})
            first, second = await watch.result(), await watch.result()
            assert unb64(first["events"][0]["kv"]["value"]) == b"v1"
            assert unb64(second["events"][0]["prev_kv"]["value"]) == b"v1"
        got = await ok(at_lead, "/v3/kv/range", {"key": b64("k")})
        assert (unb64(got["kvs"][0]["value"]), got["kvs"][0]["version"]) == (b"v2", "2")
        big = await post(at_follower, "/v3/kv/put", {"key": b64("k"), "value": b64(b"x" * 5000)})
        assert (big.status, big.json()["error"]) == (400, "etcdserver: request is too large")

        lease = (await ok(at_follower, "/v3/lease/grant", {"TTL": 20}))["ID"]
        keep = await post(at_follower, "/v3/lease/keepalive", {"ID": lease})
        assert keep.json()["result"]["TTL"] == "20"  # forwarded to the leader over gRPC
        ttl = await ok(at_follower, "/v3/kv/lease/timetolive", {"ID": lease})
        assert ttl["grantedTTL"] == "20"
        await ok(at_follower, "/v3/kv/lease/revoke", {"ID": lease})

        status = await ok(at_follower, "/v3/maintenance/status", {})
        assert status["leader"] == str(lead.id)
        listed = await ok(at_follower, "/v3/cluster/member/list", {})
        assert sorted(u for m in listed["members"] for u in m["clientURLs"]) == sorted(
            f"http://{s.endpoint}" for s in c.grpc
        )
        moved = await post(
            at_follower, "/v3/maintenance/transfer-leadership", {"targetID": str(follower.id)}
        )
        assert (moved.status, moved.json()["error"]) == (400, "etcdserver: not leader")
    finally:
        await c.stop()
