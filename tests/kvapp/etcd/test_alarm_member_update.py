"""Alarms, MemberUpdate and Status over etcd's API, on real in-process members.

Alarms and peer URL updates go through Raft, so every member applies them; a member whose peer
URL changed is dialled at the new address by the others (its transport re-links). Members run
on one event loop: the alarm tests on an in-memory network with a gRPC server each, the
MemberUpdate test on real TCP peer links (TcpTransport on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import attrs
import grpc
import pytest

from kvapp.errors import MemberNotFoundError, PeerUrlExistsError, RequestDecodeError
from kvapp.etcdpb import rpc_pb2
from kvapp.mvcc.types import PutRequest, RangeRequest
from kvapp.node import Member, MemberConfig, cluster_id_for, encode_member_info, member_id_for
from kvapp.requests import AlarmAction, AlarmType
from kvapp.service import MemberInfo
from kvapp.transport import TcpTransport, TransportConfig
from raftlib import ConfChange, ConfChangeType, MemoryStorage, Message
from tests.kvapp.etcd.helpers import Etcd, aio
from tests.kvapp.etcd.test_member_api import _published, _start, _stop
from tests.kvapp.test_member import leader_of

pb = rpc_pb2


async def _eventually(
    check: Callable[[], Awaitable[bool]], what: str, within: float = 10.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)


async def _alarms(etcd: Etcd, action: int = 0, member_id: int = 0, alarm: int = 0) -> list[str]:
    resp = await etcd.call(
        "Maintenance",
        "Alarm",
        pb.AlarmRequest(action=action, memberID=member_id, alarm=alarm),  # type: ignore[arg-type]
        pb.AlarmResponse,
    )
    return [f"{a.memberID:x}:{pb.AlarmType.Name(a.alarm)}" for a in resp.alarms]


@aio
async def test_an_alarm_raised_through_the_api_holds_every_member_until_disarmed() -> None:
    members, servers, clients = await _start()
    try:
        await _published(members)
        lead = leader_of(members)
        follower = clients[(members.index(lead) + 1) % 3]
        assert await _alarms(follower) == []
        # Member 0: no member's disk check clears it (etcd records any member id).
        raised = await _alarms(follower, pb.AlarmRequest.ACTIVATE, 0, pb.NOSPACE)
        assert raised == ["0:NOSPACE"]
        for c in clients:  # applied by every member: each refuses puts
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.put(b"k", b"v")
            assert (info.value.code(), info.value.details()) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "etcdserver: mvcc: database space exceeded",
            )
            st = await c.call("Maintenance", "Status", pb.StatusRequest(), pb.StatusResponse)
            assert list(st.errors) == ["alarm:NOSPACE "]
        assert all(m.status().errors == ("NOSPACE",) for m in members)
        # etcdctl alarm disarm: list, then deactivate each one listed.
        for listed in await _alarms(clients[0]):
            member_hex, kind = listed.split(":")
            cleared = await _alarms(
                clients[0],
                pb.AlarmRequest.DEACTIVATE,
                int(member_hex, 16),
                pb.AlarmType.Value(kind),
            )
            assert cleared == [listed]
        assert await _alarms(follower) == []
        put = await follower.put(b"k", b"v")
        assert put.header.revision == 2
    finally:
        await _stop(members, servers, clients)


@aio
async def test_a_members_own_nospace_is_cleared_by_its_disk_check_once_space_is_there() -> None:
    """kvapp's NOSPACE describes a member's disk: raised for a member with room, it is cleared."""
    members, servers, clients = await _start()
    try:
        target = members[1]
        raised = await _alarms(clients[0], pb.AlarmRequest.ACTIVATE, target.id, pb.NOSPACE)
        assert raised == [f"{target.id:x}:NOSPACE"]

        async def cleared() -> bool:
            return await _alarms(clients[0]) == []

        await _eventually(cleared, f"{target.config.name} clearing its own NOSPACE")
    finally:
        await _stop(members, servers, clients)


@aio
async def test_status_reports_the_size_of_the_raft_storage() -> None:
    members, servers, clients = await _start()
    try:
        before = await clients[0].call(
            "Maintenance", "Status", pb.StatusRequest(), pb.StatusResponse
        )
        await clients[0].put(b"big", b"x" * 10_000)
        after = await clients[0].call(
            "Maintenance", "Status", pb.StatusRequest(), pb.StatusResponse
        )
        assert after.dbSize >= before.dbSize + 10_000
        assert after.dbSizeInUse == after.dbSize
        assert members[0].status().db_size >= 10_000
    finally:
        await _stop(members, servers, clients)


# -- MemberUpdate over real TCP peer links ---------------------------------------------------------

CLUSTER = cluster_id_for("member-update")
FAST = TransportConfig(backoff_base=0.02, backoff_max=0.2, handshake_timeout=2.0)


def _listener() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s


class TcpMember:
    """A Member on a TcpTransport listening on ``sock``; restartable on another socket."""

    def __init__(self, info: MemberInfo, initial: list[MemberInfo]) -> None:
        self.info = info
        self.initial = initial
        self.storage = MemoryStorage()
        self.member: Member | None = None
        self.transport: TcpTransport | None = None

    async def start(self, sock: socket.socket) -> Member:
        box: list[Member] = []

        def on_message(m: Message) -> None:
            if box:
                box[0].receive(m)

        def on_unreachable(peer: int) -> None:
            if box:
                box[0].report_unreachable(peer)

        def on_snapshot(peer: int, ok: bool) -> None:
            if box:
                box[0].report_snapshot(peer, success=ok)

        self.transport = TcpTransport(
            self.info.id,
            CLUSTER,
            listen=sock,
            on_message=on_message,
            on_unreachable=on_unreachable,
            on_snapshot_status=on_snapshot,
            config=FAST,
        )
        config = MemberConfig(
            name=self.info.name,
            member_id=self.info.id,
            cluster_id=CLUSTER,
            initial_members=tuple(self.initial),
            tick_interval=0.02,
            request_timeout=3.0,
        )
        self.member = Member(config, self.storage, self.transport)
        box.append(self.member)
        await self.transport.start()
        await self.member.start()
        return self.member

    async def stop(self) -> None:
        if self.transport is not None:
            await self.transport.stop()
        if self.member is not None:
            await self.member.stop(transfer=False)
        self.transport = self.member = None


@aio
async def test_member_update_moves_a_member_and_the_others_dial_its_new_url() -> None:
    socks = [_listener() for _ in range(3)]
    infos = []
    for i, s in enumerate(socks):
        urls = (f"http://127.0.0.1:{s.getsockname()[1]}",)
        infos.append(MemberInfo(member_id_for(urls, CLUSTER), f"m{i + 1}", urls))
    nodes = [TcpMember(info, infos) for info in infos]
    moved_sock = _listener()
    try:
        members = [await n.start(s) for n, s in zip(nodes, socks, strict=True)]
        await asyncio.wait_for(members[0].node.wait_leader(timeout=10), 11)
        lead = leader_of(members)
        mover = next(n for n in nodes if n.member is not lead)
        survivor = next(m for m in members if m is not lead and m is not mover.member)
        await lead.write(PutRequest(b"before", b"1"))
        new_url = f"http://127.0.0.1:{moved_sock.getsockname()[1]}"

        # etcd's checks, before and when applied: the member must exist, the URL be free.
        with pytest.raises(MemberNotFoundError):
            await survivor.member_update(12345, (new_url,))
        with pytest.raises(PeerUrlExistsError):
            await survivor.member_update(mover.info.id, _peer_urls(survivor, survivor.id) or ())

        await survivor.member_update(mover.info.id, (new_url,))

        others = [m for m in members if m is not mover.member]

        async def recorded() -> bool:
            # (The mover itself may not learn it yet: the others now send to its new URL,
            # where it does not listen until it is restarted, as with etcd.)
            return all(_peer_urls(m, mover.info.id) == (new_url,) for m in others)

        await _eventually(recorded, f"the other members to record {new_url}")
        # A member publishing its name and client URLs afterwards (an UPDATE_NODE carrying its
        # old peer URLs) does not undo the update.
        stale = attrs.evolve(mover.info, name="m-renamed")
        await lead._conf_change(  # what Member._publish proposes
            ConfChange(ConfChangeType.UPDATE_NODE, mover.info.id, encode_member_info(stale))
        )
        assert [m.name for m in lead.member_list() if m.id == mover.info.id] == ["m-renamed"]
        assert _peer_urls(lead, mover.info.id) == (new_url,)

        # Restart the mover listening on its new URL only: it catches up through the others,
        # which can reach it only there.
        await mover.stop()
        socks[nodes.index(mover)].close()
        await lead.write(PutRequest(b"while-moving", b"2"))
        restarted = await mover.start(moved_sock)
        await lead.write(PutRequest(b"after", b"3"))

        async def caught_up() -> bool:
            got = await restarted.range(RangeRequest(b"after", serializable=True))
            return [kv.value for kv in got.kvs] == [b"3"]

        await _eventually(caught_up, "the moved member to apply a write made after its move")
        assert _peer_urls(restarted, mover.info.id) == (new_url,)
        got = await restarted.range(RangeRequest(b"while-moving", serializable=True))
        assert [kv.value for kv in got.kvs] == [b"2"]
    finally:
        for n in nodes:
            await n.stop()
        for s in [*socks, moved_sock]:
            s.close()


def _peer_urls(m: Member, member_id: int) -> tuple[str, ...] | None:
    return next((i.peer_urls for i in m.member_list() if i.id == member_id), None)


def test_alarm_actions_match_etcds_numbers() -> None:
    assert [int(a) for a in AlarmAction] == [
        pb.AlarmRequest.GET,
        pb.AlarmRequest.ACTIVATE,
        pb.AlarmRequest.DEACTIVATE,
    ]
    assert [int(a) for a in AlarmType] == [pb.NONE, pb.NOSPACE, pb.CORRUPT]


def test_the_native_protocol_carries_alarms_and_member_updates() -> None:
    from kvapp import requests as kvreq
    from kvapp.server import native as wire
    from kvapp.service import ResponseHeader

    header = ResponseHeader(1, 2, 3, 4)
    cases: list[tuple[wire.OpRequest, wire.OpResult]] = [
        (
            kvreq.AlarmRequest(AlarmAction.ACTIVATE, 0, AlarmType.NOSPACE),
            kvreq.AlarmResponse([kvreq.AlarmMember(0, AlarmType.NOSPACE)]),
        ),
        (kvreq.AlarmRequest(AlarmAction.GET), kvreq.AlarmResponse()),
        (kvreq.MemberUpdateRequest(7, ("http://127.0.0.1:9",)), wire.EmptyResult()),
    ]
    for request, result in cases:
        op = wire.op_of(request)
        assert wire.decode_body(op, wire.encode_body(request)) == (request, 0)
        assert wire.decode_result(op, header, wire.encode_result(result)) == result
    bad = wire.encode_body(kvreq.AlarmRequest(AlarmAction.GET)).replace(b"\x00", b"\x07", 1)
    with pytest.raises(RequestDecodeError, match="alarm"):
        wire.decode_body(wire.Op.ALARM, bad)


@aio
async def test_the_clients_etcd_transport_lists_disarms_and_updates() -> None:
    from kvapp.client import AsyncClient
    from kvapp.requests import AlarmMember
    from tests.kvapp.etcd.helpers import FakeEtcdCluster

    c = await FakeEtcdCluster().start()
    try:
        endpoints = [m.server.endpoint for m in c.members]
        async with AsyncClient(endpoints, protocol="etcd") as client:
            assert await client.alarm_list() == []
            raised = [AlarmMember(0x100, AlarmType.NOSPACE), AlarmMember(0, AlarmType.CORRUPT)]
            for a in raised:
                await c.leader.service.alarm(AlarmAction.ACTIVATE, a.member_id, a.alarm)
            assert await client.alarm_list() == sorted(raised, key=lambda a: a.member_id)
            assert await client.alarm_disarm(raised[0]) == [raised[0]]
            assert await client.alarm_disarm() == [raised[1]]
            assert await client.alarm_list() == []
            await client.member_update(0x101, ["http://127.0.0.1:7"])
            listed = {m.id: m.peer_urls for m in await client.member_list()}
            assert listed[0x101] == ("http://127.0.0.1:7",)
            with pytest.raises(MemberNotFoundError):
                await client.member_update(0x999, ["http://127.0.0.1:8"])
            assert (await client.status()).db_size > 0
    finally:
        await c.close()


@aio
async def test_the_clients_native_transport_lists_disarms_and_updates() -> None:
    from kvapp.client import AsyncClient
    from kvapp.requests import AlarmMember
    from kvapp.server.native import NativeServer
    from tests.kvapp.fake_service import FakeCluster

    cluster = FakeCluster()
    servers = [NativeServer(cluster.service(0x200 + i), host="127.0.0.1", port=0) for i in range(2)]
    try:
        for s in servers:
            await s.start()
        async with AsyncClient([s.endpoint for s in servers]) as client:
            nospace = AlarmMember(0x200, AlarmType.NOSPACE)
            await cluster.service(0x300).alarm(AlarmAction.ACTIVATE, 0x200, AlarmType.NOSPACE)
            assert await client.alarm_list() == [nospace]
            assert await client.alarm_disarm() == [nospace]
            assert await client.alarm_disarm() == []
            await client.member_update(0x201, ["http://127.0.0.1:7"])
            listed = {m.id: m.peer_urls for m in await client.member_list()}
            assert listed[0x201] == ("http://127.0.0.1:7",)
            with pytest.raises(PeerUrlExistsError):
                await client.member_update(0x200, ["http://127.0.0.1:7"])
    finally:
        for s in servers:
            await s.stop()
