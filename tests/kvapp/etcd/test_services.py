"""kvapp.server.etcd: etcd's KV, Lease, Cluster and Maintenance services over fake members.

Real gRPC on 127.0.0.1 (grpcio's asyncio client and server), fake members sharing one state
(tests/kvapp/fake_service.py): requests, responses, headers, and etcd's status codes and texts.
"""

from __future__ import annotations

import itertools

import grpc
import pytest

from kvapp.etcdpb import rpc_pb2
from kvapp.mvcc.keyrange import prefix_range_end
from tests.kvapp.etcd.helpers import Etcd, FakeEtcdCluster, aio

pb = rpc_pb2


async def _error(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code(), info.value.details() or ""


def _put_op(key: bytes, value: bytes = b"") -> rpc_pb2.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def _range_op(key: bytes, range_end: bytes = b"") -> rpc_pb2.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, range_end=range_end))


@aio
async def test_put_and_range_with_etcds_options_and_headers() -> None:
    c = await FakeEtcdCluster().start()
    try:
        kv = c.leader.client
        for i, key in enumerate([b"a/1", b"a/3", b"a/2", b"b"]):
            resp = await kv.put(key, b"v%d" % i)
            assert resp.header.revision == i + 2
            assert resp.header.cluster_id == c.cluster.cluster_id
            assert resp.header.member_id == 0x100
            assert resp.header.raft_term == c.cluster.term
        got = await kv.range(b"a/", range_end=prefix_range_end(b"a/"))
        assert [kv_.key for kv_ in got.kvs] == [b"a/1", b"a/2", b"a/3"]
        assert got.count == 3
        assert got.header.revision == 5
        first = got.kvs[0]
        assert (first.create_revision, first.mod_revision, first.version, first.value) == (
            2,
            2,
            1,
            b"v0",
        )
        limited = await kv.range(
            b"a/",
            range_end=prefix_range_end(b"a/"),
            limit=2,
            sort_order=pb.RangeRequest.DESCEND,
            sort_target=pb.RangeRequest.MOD,
            keys_only=True,
        )
        assert [x.key for x in limited.kvs] == [b"a/2", b"a/3"]
        assert limited.more
        assert all(x.value == b"" for x in limited.kvs)
        counted = await kv.range(b"\0", range_end=b"\0", count_only=True)
        assert (counted.count, len(counted.kvs)) == (4, 0)
        old = await kv.range(b"a/1", revision=2)
        assert old.kvs[0].value == b"v0"
        from_key = await kv.range(b"a/3", range_end=b"\0")
        assert [x.key for x in from_key.kvs] == [b"a/3", b"b"]
        # The follower serves the same state, with its own member id in the header.
        other = await c.follower.client.range(b"b")
        assert other.kvs[0].value == b"v3"
        assert other.header.member_id == 0x101
        prev = await kv.put(b"b", b"new", prev_kv=True)
        assert prev.prev_kv.value == b"v3"
    finally:
        await c.close()


@aio
async def test_delete_txn_and_compact() -> None:
    c = await FakeEtcdCluster().start()
    try:
        kv = c.leader.client
        await kv.put(b"k1", b"1")
        await kv.put(b"k2", b"2")
        deleted = await kv.call(
            "KV",
            "DeleteRange",
            pb.DeleteRangeRequest(key=b"k1", prev_kv=True),
            pb.DeleteRangeResponse,
        )
        assert deleted.deleted == 1
        assert [x.value for x in deleted.prev_kvs] == [b"1"]
        assert deleted.header.revision == 4
        txn = pb.TxnRequest(
            compare=[
                pb.Compare(
                    key=b"k2",
                    target=pb.Compare.VALUE,
                    result=pb.Compare.EQUAL,
                    value=b"2",
                )
            ],
            success=[
                _put_op(b"k3", b"3"),
                _range_op(b"k", prefix_range_end(b"k")),
                pb.RequestOp(request_txn=pb.TxnRequest(success=[_range_op(b"k3")])),
            ],
            failure=[_put_op(b"never")],
        )
        resp = await kv.call("KV", "Txn", txn, pb.TxnResponse)
        assert resp.succeeded
        assert resp.header.revision == 5
        assert resp.responses[0].WhichOneof("response") == "response_put"
        assert resp.responses[0].response_put.header.revision == 5
        assert [x.key for x in resp.responses[1].response_range.kvs] == [b"k2", b"k3"]
        inner = resp.responses[2].response_txn.responses[0].response_range
        assert [x.value for x in inner.kvs] == [b"3"]
        failed = await kv.call(
            "KV",
            "Txn",
            pb.TxnRequest(
                compare=[
                    pb.Compare(
                        key=b"k2", target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=5
                    )
                ],
                failure=[_range_op(b"k2")],
            ),
            pb.TxnResponse,
        )
        assert not failed.succeeded
        assert failed.responses[0].response_range.kvs[0].value == b"2"
        compacted = await kv.call(
            "KV", "Compact", pb.CompactionRequest(revision=4), pb.CompactionResponse
        )
        assert compacted.header.revision == 5
        code, text = await _error(kv.range(b"k2", revision=2))
        assert (code, text) == (
            grpc.StatusCode.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision has been compacted",
        )
        code, text = await _error(kv.range(b"k2", revision=99))
        assert (code, text) == (
            grpc.StatusCode.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision is a future revision",
        )
    finally:
        await c.close()


@aio
async def test_errors_carry_etcds_codes_and_texts() -> None:
    c = await FakeEtcdCluster().start()
    try:
        kv = c.leader.client
        cases = [
            (kv.range(b""), grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided"),
            (kv.put(b""), grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided"),
            (
                kv.put(b"k", lease=12345),
                grpc.StatusCode.NOT_FOUND,
                "etcdserver: requested lease not found",
            ),
            (
                kv.put(b"k", b"v", ignore_value=True),
                grpc.StatusCode.INVALID_ARGUMENT,
                "etcdserver: value is provided",
            ),
            (
                kv.call(
                    "KV",
                    "Txn",
                    pb.TxnRequest(success=[_put_op(b"x%d" % i) for i in range(129)]),
                    pb.TxnResponse,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "etcdserver: too many operations in txn request",
            ),
            (
                kv.call(
                    "KV",
                    "Txn",
                    pb.TxnRequest(success=[_put_op(b"x"), _put_op(b"x")]),
                    pb.TxnResponse,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                kv.call("KV", "Txn", pb.TxnRequest(success=[pb.RequestOp()]), pb.TxnResponse),
                grpc.StatusCode.INVALID_ARGUMENT,
                "etcdserver: key not found",
            ),
            (
                kv.call(
                    "Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=77), pb.LeaseRevokeResponse
                ),
                grpc.StatusCode.NOT_FOUND,
                "etcdserver: requested lease not found",
            ),
            (
                kv.call(
                    "Cluster",
                    "MemberRemove",
                    pb.MemberRemoveRequest(ID=0x999),
                    pb.MemberRemoveResponse,
                ),
                grpc.StatusCode.NOT_FOUND,
                "etcdserver: member not found",
            ),
        ]
        for call, code, text in cases:
            assert await _error(call) == (code, text)
        # The member keeps serving after refusing all of that.
        assert (await kv.put(b"still", b"ok")).header.revision == 2
    finally:
        await c.close()


@aio
async def test_leases_grant_keepalive_ttl_list_revoke_and_forwarding() -> None:
    c = await FakeEtcdCluster().start()
    try:
        kv = c.leader.client
        grant = await kv.call(
            "Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=30), pb.LeaseGrantResponse
        )
        assert grant.ID > 0
        assert grant.TTL == 30
        await kv.put(b"leased", b"x", lease=grant.ID)
        ttl = await kv.call(
            "Lease",
            "LeaseTimeToLive",
            pb.LeaseTimeToLiveRequest(ID=grant.ID, keys=True),
            pb.LeaseTimeToLiveResponse,
        )
        assert (ttl.ID, ttl.grantedTTL, list(ttl.keys)) == (grant.ID, 30, [b"leased"])
        assert 0 < ttl.TTL <= 30
        unknown = await kv.call(
            "Lease",
            "LeaseTimeToLive",
            pb.LeaseTimeToLiveRequest(ID=4242),
            pb.LeaseTimeToLiveResponse,
        )
        assert (unknown.ID, unknown.TTL) == (4242, -1)
        leases = await kv.call(
            "Lease", "LeaseLeases", pb.LeaseLeasesRequest(), pb.LeaseLeasesResponse
        )
        assert [x.ID for x in leases.leases] == [grant.ID]
        for member in (c.leader, c.follower):  # the follower forwards to the leader
            stream = member.client.stream(
                "Lease", "LeaseKeepAlive", pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse
            )
            await stream.write(pb.LeaseKeepAliveRequest(ID=grant.ID))
            renewed = await stream.read()
            assert (renewed.ID, renewed.TTL) == (grant.ID, 30)
            assert renewed.header.member_id == member.service.member_id
            await stream.write(pb.LeaseKeepAliveRequest(ID=999))
            gone = await stream.read()
            assert (gone.ID, gone.TTL) == (999, 0)
            await stream.done_writing()
            assert await stream.read() is grpc.aio.EOF
            forwarded = await member.client.call(
                "Lease",
                "LeaseTimeToLive",
                pb.LeaseTimeToLiveRequest(ID=grant.ID),
                pb.LeaseTimeToLiveResponse,
            )
            assert forwarded.grantedTTL == 30
            assert forwarded.header.member_id == member.service.member_id
        assert "lease_keep_alive" in c.leader.service.calls
        revoked = await c.follower.client.call(
            "Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=grant.ID), pb.LeaseRevokeResponse
        )
        assert revoked.header.revision == 3
        assert not (await kv.range(b"leased")).kvs
    finally:
        await c.close()


@aio
async def test_keepalive_stream_requiring_a_leader_fails_without_one() -> None:
    c = await FakeEtcdCluster().start()
    try:
        c.cluster.leader_id = 0
        stream = c.leader.client.stream(
            "Lease",
            "LeaseKeepAlive",
            pb.LeaseKeepAliveRequest,
            pb.LeaseKeepAliveResponse,
            metadata=(("hasleader", "true"),),
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.read()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "etcdserver: no leader"
    finally:
        await c.close()


@aio
async def test_cluster_member_list_add_promote_remove() -> None:
    c = await FakeEtcdCluster().start()
    try:
        etcd = c.follower.client
        listed = await etcd.call(
            "Cluster", "MemberList", pb.MemberListRequest(), pb.MemberListResponse
        )
        assert [m.name for m in listed.members] == ["m1", "m2"]
        # etcd clients see the gRPC URLs only, not the native protocol's.
        assert [list(m.clientURLs) for m in listed.members] == [
            [f"http://{c.leader.server.endpoint}"],
            [f"http://{c.follower.server.endpoint}"],
        ]
        assert listed.header.revision == 0
        assert listed.header.member_id == 0x101
        added = await etcd.call(
            "Cluster",
            "MemberAdd",
            pb.MemberAddRequest(peerURLs=["http://127.0.0.1:9999"], isLearner=True),
            pb.MemberAddResponse,
        )
        assert added.member.isLearner
        assert list(added.member.peerURLs) == ["http://127.0.0.1:9999"]
        assert len(added.members) == 3
        promoted = await etcd.call(
            "Cluster",
            "MemberPromote",
            pb.MemberPromoteRequest(ID=added.member.ID),
            pb.MemberPromoteResponse,
        )
        assert not next(m for m in promoted.members if m.ID == added.member.ID).isLearner
        code, text = await _error(
            etcd.call(
                "Cluster",
                "MemberPromote",
                pb.MemberPromoteRequest(ID=added.member.ID),
                pb.MemberPromoteResponse,
            )
        )
        assert (code, text) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "etcdserver: can only promote a learner member",
        )
        removed = await etcd.call(
            "Cluster",
            "MemberRemove",
            pb.MemberRemoveRequest(ID=added.member.ID),
            pb.MemberRemoveResponse,
        )
        assert len(removed.members) == 2
        code, text = await _error(
            etcd.call(
                "Cluster",
                "MemberAdd",
                pb.MemberAddRequest(peerURLs=["http://127.0.0.1:20000"]),
                pb.MemberAddResponse,
            )
        )
        assert (code, text) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "etcdserver: Peer URLs already exists",
        )
        updated = await etcd.call(
            "Cluster",
            "MemberUpdate",
            pb.MemberUpdateRequest(ID=0x100, peerURLs=["http://127.0.0.1:1"]),
            pb.MemberUpdateResponse,
        )
        assert updated.header.revision == 0
        assert [list(m.peerURLs) for m in updated.members if m.ID == 0x100] == [
            ["http://127.0.0.1:1"]
        ]
        for request, expected in [
            (
                pb.MemberUpdateRequest(ID=0x999, peerURLs=["http://127.0.0.1:2"]),
                (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found"),
            ),
            (
                pb.MemberUpdateRequest(ID=0x100, peerURLs=["http://127.0.0.1:20001"]),
                (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists"),
            ),
        ]:
            assert (
                await _error(etcd.call("Cluster", "MemberUpdate", request, pb.MemberUpdateResponse))
                == expected
            )
    finally:
        await c.close()


@aio
async def test_maintenance_status_alarms_hashes_defrag_move_leader_snapshot() -> None:
    c = await FakeEtcdCluster().start()
    try:
        etcd = c.follower.client
        await etcd.put(b"k", b"v")
        st = await etcd.call("Maintenance", "Status", pb.StatusRequest(), pb.StatusResponse)
        assert (st.leader, st.raftTerm, st.header.member_id, st.header.revision) == (
            0x100,
            c.cluster.term,
            0x101,
            2,
        )
        assert st.version
        assert (list(st.errors), st.dbSize, st.dbSizeInUse) == ([], 1001, 1001)
        h1 = await etcd.call("Maintenance", "HashKV", pb.HashKVRequest(), pb.HashKVResponse)
        h2 = await c.leader.client.call(
            "Maintenance", "HashKV", pb.HashKVRequest(revision=2), pb.HashKVResponse
        )
        assert (h1.hash, h1.hash_revision) == (h2.hash, 2)
        # etcd 3.4.23: a negative revision is answered (a hash of nothing), header at now
        h3 = await etcd.call(
            "Maintenance", "HashKV", pb.HashKVRequest(revision=-3), pb.HashKVResponse
        )
        assert (h3.header.revision, h3.compact_revision, h3.hash_revision) == (2, -1, -3)
        assert h3.hash != h1.hash
        code, text = await _error(
            etcd.call("Maintenance", "HashKV", pb.HashKVRequest(revision=50), pb.HashKVResponse)
        )
        assert (code, text) == (
            grpc.StatusCode.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision is a future revision",
        )
        whole = await etcd.call("Maintenance", "Hash", pb.HashRequest(), pb.HashResponse)
        assert whole.hash == c.cluster.state.hash() & 0xFFFFFFFF
        defrag = await etcd.call(
            "Maintenance", "Defragment", pb.DefragmentRequest(), pb.DefragmentResponse
        )
        assert not defrag.HasField("header")  # etcd 3.4 sets none
        await etcd.call(
            "Maintenance", "MoveLeader", pb.MoveLeaderRequest(targetID=0x101), pb.MoveLeaderResponse
        )
        assert c.maintenance.moved_to == [0x101]
        snap = etcd.channel.unary_stream(
            "/etcdserverpb.Maintenance/Snapshot",
            request_serializer=pb.SnapshotRequest.SerializeToString,
            response_deserializer=pb.SnapshotResponse.FromString,
        )(pb.SnapshotRequest())
        blobs = [piece async for piece in snap]
        assert blobs
        assert blobs[-1].remaining_bytes == 0
        assert not any(p.HasField("header") for p in blobs)  # etcd 3.4 sets none
        assert all(p.remaining_bytes == len(n.blob) for p, n in itertools.pairwise(blobs))
        assert b"".join(p.blob for p in blobs)
        code, _ = await _error(
            etcd.call("Auth", "Authenticate", pb.AuthenticateRequest(), pb.AuthenticateResponse)
        )
        assert code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await c.close()


async def _alarm(etcd: Etcd, action: int, member_id: int = 0, alarm: int = 0) -> list[str]:
    resp = await etcd.call(
        "Maintenance",
        "Alarm",
        pb.AlarmRequest(action=action, memberID=member_id, alarm=alarm),  # type: ignore[arg-type]
        pb.AlarmResponse,
    )
    assert not resp.HasField("header"), "etcd 3.4 answers Alarm without a header"
    return [f"{a.memberID:x}:{pb.AlarmType.Name(a.alarm)}" for a in resp.alarms]


@aio
async def test_alarms_are_raised_listed_and_cleared_as_etcd_34_answers() -> None:
    c = await FakeEtcdCluster().start()
    try:
        etcd = c.follower.client
        get, activate, deactivate = (
            pb.AlarmRequest.GET,
            pb.AlarmRequest.ACTIVATE,
            pb.AlarmRequest.DEACTIVATE,
        )
        assert await _alarm(etcd, get) == []
        assert await _alarm(etcd, activate, 0x100, pb.NOSPACE) == ["100:NOSPACE"]
        assert await _alarm(etcd, activate, 0x100, pb.NOSPACE) == ["100:NOSPACE"]  # again
        assert await _alarm(etcd, activate, 0, pb.CORRUPT) == ["0:CORRUPT"]  # member 0 too
        assert await _alarm(etcd, get) == ["0:CORRUPT", "100:NOSPACE"]
        assert await _alarm(etcd, get, alarm=pb.NOSPACE) == ["100:NOSPACE"]
        st = await etcd.call("Maintenance", "Status", pb.StatusRequest(), pb.StatusResponse)
        # gogo/protobuf's compact text of each AlarmMember, zero fields left out (etcd 3.4).
        assert list(st.errors) == ["alarm:CORRUPT ", "memberID:256 alarm:NOSPACE "]
        # What etcdctl's `alarm disarm` sends: one DEACTIVATE per listed alarm.
        assert await _alarm(etcd, deactivate, 0, pb.NONE) == []
        assert await _alarm(etcd, deactivate, 0x100, pb.CORRUPT) == []
        assert await _alarm(etcd, deactivate, 0x100, pb.NOSPACE) == ["100:NOSPACE"]
        assert await _alarm(etcd, deactivate, 0x100, pb.NOSPACE) == []
        assert await _alarm(etcd, deactivate, 0, pb.CORRUPT) == ["0:CORRUPT"]
        assert await _alarm(etcd, get) == []
        code, text = await _error(_alarm(etcd, 7))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, text
        c.cluster.leader_id = 0
        st = await etcd.call("Maintenance", "Status", pb.StatusRequest(), pb.StatusResponse)
        assert list(st.errors) == ["etcdserver: no leader"]
    finally:
        await c.close()


@aio
async def test_a_taken_port_is_an_oserror() -> None:
    from kvapp.server.etcd import EtcdGrpcServer

    c = await FakeEtcdCluster().start(size=1)
    try:
        clash = EtcdGrpcServer(c.leader.service, host="127.0.0.1", port=c.leader.server.port)
        with pytest.raises(OSError, match=r"in use|bind"):
            await clash.start()
        await clash.stop()
    finally:
        await c.close()
