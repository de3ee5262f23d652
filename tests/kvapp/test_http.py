"""``/health`` and ``/metrics`` of a member, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from kvapp.errors import LeaseNotFoundError, RequestTooLargeError
from kvapp.metrics import MemberMetrics, MeteredService, TimedStorage, health, render
from kvapp.mvcc.types import PutRequest
from kvapp.node import Member
from kvapp.server.http import HttpServer
from kvapp.service import KvService
from raftlib import (
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Ready,
    Snapshot,
    SnapshotMetadata,
)

from .test_member import Clock, Hub, aio, infos, make_member


async def get(port: int, raw: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def metric(text: bytes, name: str) -> float:
    m = re.search(rb"^" + name.encode() + rb" (\S+)$", text, re.M)
    assert m is not None, f"{name} missing from:\n{text.decode()}"
    return float(m.group(1))


def metered_members() -> tuple[Hub, list[Member], MemberMetrics, KvService]:
    """Three members on a hub, the first one's metrics, and it as a metered service."""
    hub, clock = Hub(), Clock()
    initial = infos(3)
    members = [make_member(hub, i, initial, clock) for i in initial]
    metrics = MemberMetrics(members[0])
    return hub, members, metrics, MeteredService(members[0], metrics)


@aio
async def test_health_and_metrics_follow_the_member() -> None:
    hub, members, metrics, service = metered_members()
    m = members[0]
    server = HttpServer(health=lambda: health(m), metrics=lambda: render(metrics))
    await server.start()
    try:
        status, body = await get(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body) == (503, b'{"health": "false", "reason": "member is not running"}')
        for x in members:
            await x.start()
        metrics.start()
        await m.node.wait_leader(timeout=5)
        status, body = await get(server.port, b"GET /health HTTP/1.1\r\n\r\n")
        assert (status, body) == (200, b'{"health": "true"}')
        _, before = await get(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert metric(before, "etcd_server_has_leader") == 1
        for i in range(3):
            await service.write(PutRequest(b"k%d" % i, b"v"))
        _, after = await get(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        applied = "etcd_server_proposals_applied_total"
        assert metric(after, applied) >= metric(before, applied) + 3
        assert metric(after, "etcd_debugging_mvcc_current_revision") == 4
        assert metric(after, "etcd_server_proposals_pending") == 0
        hub.cut.add(m.id)
        for _ in range(500):
            status, body = await get(server.port, b"GET /health HTTP/1.1\r\n\r\n")
            if status == 503:
                break
            await asyncio.sleep(0.01)
        assert (status, body) == (503, b'{"health": "false", "reason": "no leader"}')
    finally:
        await server.stop()
        await metrics.stop()
        for x in members:
            await x.stop(transfer=False)


@aio
async def test_metered_writes_count_pending_and_failed_proposals() -> None:
    _, members, metrics, service = metered_members()
    m = members[0]
    failed = "etcd_server_proposals_failed_total"
    try:
        for x in members:
            await x.start()
        await m.node.wait_leader(timeout=5)
        fut = service.submit_write(PutRequest(b"k", b"v"))
        assert metric(render(metrics), "etcd_server_proposals_pending") == 1
        await asyncio.wait_for(fut, 5)
        text = render(metrics)
        assert metric(text, "etcd_server_proposals_pending") == 0
        assert metric(text, failed) == 0
        with pytest.raises(RequestTooLargeError):
            service.submit_write(PutRequest(b"k", b"x" * (2 << 20)))  # refused before proposing
        assert metric(render(metrics), failed) == 1
        with pytest.raises(LeaseNotFoundError):
            await asyncio.wait_for(service.write(PutRequest(b"k", b"v", lease=12345)), 5)
        text = render(metrics)
        assert metric(text, failed) == 2
        assert metric(text, "etcd_server_proposals_pending") == 0
    finally:
        for x in members:
            await x.stop(transfer=False)


@aio
async def test_bad_requests_get_clear_statuses() -> None:
    server = HttpServer(health=lambda: (True, ""), metrics=lambda: b"")
    await server.start()
    try:
        assert (await get(server.port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await get(server.port, b"POST /health HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await get(server.port, b"\x00\x01garbage\r\n\r\n"))[0] == 400
        huge = b"GET /health HTTP/1.1\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n"
        assert (await get(server.port, huge))[0] == 431
        assert (await get(server.port, b"GET /health HTTP/1.1\r\n\r\n"))[0] == 200
    finally:
        await server.stop()


def test_only_durable_readies_are_timed_as_fsyncs() -> None:
    hist = MemberMetrics.fsync_histogram()
    storage = TimedStorage(MemoryStorage(), hist)
    commit_only = Ready(None, HardState(0, 0, 0), (), None, (), (), (), (), must_sync=False)
    storage.save_ready(commit_only)
    durable = Ready(None, HardState(1, 1, 0), (), None, (), (), (), (), must_sync=True)
    storage.save_ready(durable)
    storage.save_ready(durable)
    (family,) = list(hist.collect())
    count = next(s for s in family.samples if s.name.endswith("_count"))
    assert count.value == 2
    assert storage.initial_state()[0] == HardState(1, 1, 0)


def test_a_timed_raftstore_still_stages_snapshots(tmp_path: Path) -> None:
    from kvapp.storage import RaftStore
    from raftlib import StagingStorage

    hist = MemberMetrics.fsync_histogram()
    assert not isinstance(TimedStorage(MemoryStorage(), hist), StagingStorage)
    store = RaftStore.open(tmp_path, cluster_id=1, member_id=1, fsync=False, preallocate=False)
    try:
        timed = TimedStorage(store, hist)
        assert isinstance(timed, StagingStorage)
        timed.save_ready(
            Ready(None, HardState(1, 1, 0), (Entry(1, 1),), None, (), (), (), (), must_sync=True)
        )
        snap = Snapshot(b"state", SnapshotMetadata(ConfState(voters=(1,)), 1, 1))
        timed.stage_snapshot(snap)
        timed.adopt_snapshot(snap)
        assert store.snapshot() == snap
    finally:
        store.close()


def test_a_timed_raftstore_passes_its_hooks_on(tmp_path: Path) -> None:
    from kvapp.storage import RaftStore

    def hook(data: object, kept: object) -> None:
        pass

    hist = MemberMetrics.fsync_histogram()
    bare = TimedStorage(MemoryStorage(), hist)
    bare.on_snapshot_kept = hook  # a storage without the hook: nothing to set
    assert getattr(bare, "on_snapshot_kept") is None  # noqa: B009 - not narrowed by mypy
    assert bare.data_size() is None
    store = RaftStore.open(tmp_path, cluster_id=1, member_id=1, fsync=False, preallocate=False)
    try:
        timed = TimedStorage(store, hist)
        timed.on_snapshot_kept = hook
        assert store.on_snapshot_kept is hook
        assert timed.on_snapshot_kept is hook
        assert timed.data_size() == store.data_size()
    finally:
        store.close()
