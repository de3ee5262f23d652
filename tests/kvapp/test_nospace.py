"""A full disk raises etcd's NOSPACE alarm instead of stopping the member.

Two layers: :class:`kvapp.diskspace.DiskGuard`'s decisions, driven check by check with fakes
(no loop timing involved), and 3-member clusters on one loop (the in-memory network of
test_member.py) whose members have a fake ``disk_free`` and, where a write must fail, a
``RaftStore`` whose WAL append is made to fail with ENOSPC or whose fsync fails with EIO.
Everything is awaited with explicit timeouts and bounded polling.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from kvapp import requests as kvreq
from kvapp.cli import parse_serve_args, serve
from kvapp.client import AsyncClient, ClientError, OutcomeUnknown
from kvapp.dedup import Applier
from kvapp.diskspace import DEFAULT_MIN_FREE_BYTES, DiskGuard, min_free_bytes_for
from kvapp.errors import CorruptClusterError, EtcdError, NoLeaderError, NoSpaceError
from kvapp.kvstate import KvState
from kvapp.launcher import free_ports
from kvapp.lease import LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest
from kvapp.metrics import MemberMetrics, render
from kvapp.mvcc.types import (
    CompactRequest,
    DeleteRangeRequest,
    PutRequest,
    PutResponse,
    RangeRequest,
    TxnRequest,
)
from kvapp.node import MAX_REQUEST_BYTES, Member, MemberConfig
from kvapp.requests import AlarmAction, AlarmMember, AlarmType
from kvapp.service import MemberInfo
from kvapp.storage import RaftStore, StoreFsyncFailedError, fileutil
from kvapp.storage import fs as fsmod
from kvapp.storage.wal import DEFAULT_SEGMENT_SIZE
from raftlib import MemoryStorage, NodeStorage
from raftlib.node import unwrap_proposal
from tests.kvapp.test_member import (
    CLUSTER,
    TICK,
    Clock,
    Hub,
    aio,
    infos,
    leader_of,
    start_cluster,
    stop_all,
)

NOSPACE_TEXT = "etcdserver: mvcc: database space exceeded"
NOSPACE, CORRUPT = AlarmType.NOSPACE, AlarmType.CORRUPT


async def eventually(cond: Callable[[], bool], what: Callable[[], str], within: float = 10) -> None:
    """Poll ``cond`` every few ms; fail saying ``what()`` if it is not true ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"not within {within}s: {what()}")
        await asyncio.sleep(0.005)


# -- the applier's check before proposing --


def test_the_applier_refuses_before_proposing_what_the_alarms_would_refuse() -> None:
    applier = Applier(KvState(lambda: 0.0, grace=1.0))
    put = kvreq.Request(5, 1, PutRequest(b"k", b"v"))
    first = applier.apply(put, 1)
    applier.apply(kvreq.Request(0, 0, kvreq.AlarmRequest(AlarmAction.ACTIVATE, 7, NOSPACE)), 2)
    with pytest.raises(NoSpaceError, match="database space exceeded"):
        applier.check_alarms(kvreq.Request(5, 2, PutRequest(b"k", b"w")))
    with pytest.raises(NoSpaceError):
        applier.check_alarms(kvreq.Request(0, 0, LeaseGrantRequest(ttl=10)))
    nested = TxnRequest(success=[TxnRequest(failure=[PutRequest(b"n", b"v")])])
    with pytest.raises(NoSpaceError):
        applier.check_alarms(kvreq.Request(0, 0, nested))
    for fine in (RangeRequest(b"k"), DeleteRangeRequest(b"k"), CompactRequest(1)):
        applier.check_alarms(kvreq.Request(0, 0, fine))
    # A retry of a put applied before the alarm gets its first result, not an error.
    applier.check_alarms(put)
    assert applier.apply(put, 3) == first
    applier.apply(kvreq.Request(0, 0, kvreq.AlarmRequest(AlarmAction.DEACTIVATE, 7, NOSPACE)), 4)
    applier.check_alarms(kvreq.Request(5, 2, PutRequest(b"k", b"w")))
    applier.apply(kvreq.Request(0, 0, kvreq.AlarmRequest(AlarmAction.ACTIVATE, 7, CORRUPT)), 5)
    with pytest.raises(CorruptClusterError):
        applier.check_alarms(kvreq.Request(0, 0, RangeRequest(b"k")))


def test_a_removed_members_nospace_alarm_is_forgotten_and_its_others_kept() -> None:
    applier = Applier(KvState(lambda: 0.0, grace=1.0))
    for i, (member, kind) in enumerate([(7, NOSPACE), (7, CORRUPT), (8, NOSPACE)], start=1):
        raise_it = kvreq.AlarmRequest(AlarmAction.ACTIVATE, member, kind)
        applier.apply(kvreq.Request(0, 0, raise_it), i)
    applier.member_removed(7)
    assert applier.alarms() == (AlarmMember(7, CORRUPT), AlarmMember(8, NOSPACE))
    applier.member_removed(8)
    applier.member_removed(9)  # none raised: nothing to forget
    assert applier.alarms() == (AlarmMember(7, CORRUPT),)


@aio
async def test_removing_a_member_whose_disk_is_full_lets_the_cluster_write_again() -> None:
    # It cannot clear its own alarm any more (the cluster simulation found the cluster left
    # refusing every write for good after such a replacement).
    _, members, _ = await start_cluster()
    try:
        leader = leader_of(members)
        full = next(m for m in members if m is not leader)
        await leader.alarm(AlarmAction.ACTIVATE, full.id, NOSPACE)
        with pytest.raises(NoSpaceError):
            await leader.write(PutRequest(b"k", b"v"))
        await leader.member_remove(full.id)
        await leader.write(PutRequest(b"k", b"v"))
        assert all(not m.applier.alarms() for m in members if m is not full)
    finally:
        await stop_all(members)


# -- DiskGuard, one check at a time --


class FakeMember:
    """What a DiskGuard asks of its member, with the alarm applied as soon as it is proposed."""

    def __init__(self, free: int | None = 10_000) -> None:
        self.free = free
        self.raised = False
        self.writes_failing = False
        self.proposed: list[AlarmAction] = []
        self.refuse: Exception | None = None

    def disk_free(self) -> int:
        if self.free is None:
            raise OSError(errno.EIO, "statvfs failed")
        return self.free

    async def propose(self, action: AlarmAction) -> None:
        self.proposed.append(action)
        if self.refuse is not None:
            raise self.refuse
        self.raised = action is AlarmAction.ACTIVATE

    def guard(self, *, min_free: int = 1000, margin: int = 500, reading: bool = True) -> DiskGuard:
        return DiskGuard(
            name="m1",
            disk_free=self.disk_free if reading else None,
            min_free=min_free,
            margin=margin,
            interval=0.01,
            raised=lambda: self.raised,
            storage_full=lambda: self.writes_failing,
            propose=self.propose,
        )


@aio
async def test_the_guard_raises_below_the_reserve_and_clears_only_above_reserve_plus_margin() -> (
    None
):
    m = FakeMember(free=5000)
    guard = m.guard(min_free=1000, margin=500)
    await guard.check()
    assert m.proposed == []
    m.free = 999
    await guard.check()
    assert m.proposed == [AlarmAction.ACTIVATE]
    assert guard.free == 999
    for free in (999, 10, 1000, 1499):  # still low, or back but within the margin: no change
        m.free = free
        await guard.check()
    assert m.proposed == [AlarmAction.ACTIVATE]
    m.free = 1500
    await guard.check()
    assert m.proposed == [AlarmAction.ACTIVATE, AlarmAction.DEACTIVATE]
    await guard.check()
    assert m.proposed == [AlarmAction.ACTIVATE, AlarmAction.DEACTIVATE]


@aio
async def test_a_failed_write_raises_the_alarm_until_writes_succeed_and_space_is_back() -> None:
    m = FakeMember(free=100)
    guard = m.guard(min_free=0, margin=500)  # 0: the reading alone never raises it
    await guard.check()
    assert m.proposed == []
    m.writes_failing = True
    guard.note_full()
    await guard.check()
    assert m.proposed == [AlarmAction.ACTIVATE]
    m.free = 10_000
    await guard.check()  # space is back, but writes still fail: keep it
    assert m.proposed == [AlarmAction.ACTIVATE]
    m.writes_failing = False
    m.free = 499
    await guard.check()  # writes succeed, but not margin bytes free: keep it
    assert m.proposed == [AlarmAction.ACTIVATE]
    m.free = 500
    await guard.check()
    assert m.proposed == [AlarmAction.ACTIVATE, AlarmAction.DEACTIVATE]


@aio
async def test_without_a_reading_only_failed_writes_raise_it_and_success_clears_it() -> None:
    m = FakeMember(free=0)
    guard = m.guard(reading=False)
    await guard.check()
    assert m.proposed == []
    assert guard.free is None
    guard.note_full()
    m.writes_failing = True
    await guard.check()
    await guard.check()
    assert m.proposed == [AlarmAction.ACTIVATE]
    m.writes_failing = False
    await guard.check()
    assert m.proposed == [AlarmAction.ACTIVATE, AlarmAction.DEACTIVATE]


@aio
async def test_a_failed_proposal_is_made_again_at_the_next_check() -> None:
    m = FakeMember(free=10)
    m.refuse = NoLeaderError()
    guard = m.guard()
    await guard.check()
    await guard.check()
    assert m.proposed == [AlarmAction.ACTIVATE, AlarmAction.ACTIVATE]
    assert not m.raised
    m.refuse = None
    await guard.check()
    assert m.raised


def test_an_unreadable_disk_changes_nothing_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kvapp.diskspace")
    m = FakeMember(free=None)
    guard = m.guard()

    @aio
    async def body() -> None:
        for _ in range(3):
            await guard.check()

    body()
    assert m.proposed == []
    assert guard.free is None
    unreadable = [r for r in caplog.records if "cannot read the free disk space" in r.message]
    assert len(unreadable) == 1
    assert "statvfs failed" in unreadable[0].message


def test_the_default_reserve_is_two_segments_and_a_request() -> None:
    assert DEFAULT_MIN_FREE_BYTES == 2 * DEFAULT_SEGMENT_SIZE + MAX_REQUEST_BYTES == 135_790_592
    assert min_free_bytes_for(1024, segment_size=4096) == 9216
    with pytest.raises(ValueError, match="must not be negative"):
        FakeMember().guard(min_free=-1)


def test_free_bytes_reads_the_file_system(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    free = fileutil.free_bytes(tmp_path)
    assert free >= 0
    assert free <= st.f_blocks * st.f_frsize
    with pytest.raises(OSError):  # noqa: PT011 - whatever errno the platform gives
        fileutil.free_bytes(tmp_path / "missing")


# -- members --


class FakeDisk:
    """A member's free-space reading, set by the test."""

    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self) -> int:
        return self.free


def member(
    hub: Hub,
    info: MemberInfo,
    initial: Sequence[MemberInfo],
    storage: NodeStorage,
    disk: FakeDisk,
    **cfg: object,
) -> Member:
    config = MemberConfig(
        name=info.name,
        member_id=info.id,
        cluster_id=CLUSTER,
        initial_members=tuple(initial),
        tick_interval=TICK,
        lease_tick=TICK * 2,
        request_timeout=2.0,
        disk_check_interval=0.01,
        **cfg,  # type: ignore[arg-type]
    )
    m = Member(config, storage, hub.links(info.id), clock=Clock(), disk_free=disk)
    hub.members[info.id] = m
    return m


async def start(
    storages: Sequence[NodeStorage], disks: Sequence[FakeDisk], **cfg: object
) -> list[Member]:
    hub = Hub()
    initial = infos(len(storages))
    members = [
        member(hub, i, initial, s, d, **cfg)
        for i, s, d in zip(initial, storages, disks, strict=True)
    ]
    for m in members:
        await m.start()
    await asyncio.wait_for(members[0].node.wait_leader(timeout=5), 6)
    return members


def alarms_everywhere(members: Sequence[Member]) -> list[tuple[AlarmMember, ...]]:
    return [m.applier.alarms() for m in members]


class Proposals:
    """Counts a member's calls of its node's ``propose``."""

    def __init__(self, m: Member, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = m.node.propose

        async def propose(data: bytes, *, timeout: float | None = None) -> int:  # noqa: ASYNC109
            self.count += 1
            return await real(data, timeout=timeout)

        monkeypatch.setattr(m.node, "propose", propose)


def test_low_disk_space_raises_nospace_on_every_member_until_space_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @aio
    async def body() -> None:
        disks = [FakeDisk(10_000) for _ in range(3)]
        members = await start(
            [MemoryStorage() for _ in range(3)],
            disks,
            min_free_disk_bytes=1000,
            free_disk_margin_bytes=500,
        )
        low = members[1]
        try:
            await members[0].write(PutRequest(b"k", b"v"))
            lease = await members[0].write(LeaseGrantRequest(ttl=60))
            assert isinstance(lease, LeaseGrantResponse)
            assert alarms_everywhere(members) == [(), (), ()]

            disks[1].free = 999
            mine = (AlarmMember(low.id, AlarmType.NOSPACE),)
            await eventually(
                lambda: alarms_everywhere(members) == [mine] * 3,
                lambda: f"NOSPACE of {low.id:x} on every member: {alarms_everywhere(members)}",
            )
            scrape = render(MemberMetrics(low)).decode()
            assert 'kvapp_server_alarms{alarm="NOSPACE"} 1.0' in scrape
            assert 'kvapp_server_alarms{alarm="CORRUPT"} 0.0' in scrape
            assert "kvapp_disk_free_bytes 999.0" in scrape
            assert "kvapp_disk_min_free_bytes 1000.0" in scrape
            for m in members:
                counted = Proposals(m, monkeypatch)
                for doomed in (
                    PutRequest(b"k", b"w"),
                    LeaseGrantRequest(ttl=60),
                    TxnRequest(success=[PutRequest(b"t", b"x")]),
                ):
                    with pytest.raises(NoSpaceError) as info:
                        await m.write(doomed)
                    assert str(info.value) == NOSPACE_TEXT
                assert counted.count == 0, "a doomed write was proposed"
                assert m.status().errors == ("NOSPACE",)
            # Reads, deletes, compaction and lease revokes still work.
            got = await members[2].range(RangeRequest(b"k"))
            assert [kv.value for kv in got.kvs] == [b"v"]
            await members[2].write(TxnRequest(success=[RangeRequest(b"k")]))
            await members[0].write(LeaseRevokeRequest(lease.id))
            deleted = await members[1].write(DeleteRangeRequest(b"k"))
            await members[2].write(CompactRequest(deleted.revision))
            assert (await members[0].range(RangeRequest(b"k"))).kvs == ()

            # Back above the reserve, but within the margin: still raised.
            disks[1].free = 1200
            seen = low.disk.checks
            await eventually(lambda: low.disk.checks >= seen + 5, lambda: "five more checks")
            assert alarms_everywhere(members) == [mine] * 3
            disks[1].free = 1500
            await eventually(
                lambda: alarms_everywhere(members) == [(), (), ()],
                lambda: f"NOSPACE cleared everywhere: {alarms_everywhere(members)}",
            )
            for m in members:
                assert isinstance(await m.write(PutRequest(b"k", b"again")), PutResponse)
                assert m.status().errors == ()
            scrape = render(MemberMetrics(members[0])).decode()
            assert 'kvapp_server_alarms{alarm="NOSPACE"} 0.0' in scrape
        finally:
            await stop_all(members)

    body()


def open_store(path: Path, info: MemberInfo, *, fsync: bool = False) -> RaftStore:
    return RaftStore.open(
        path / info.name, cluster_id=CLUSTER, member_id=info.id, fsync=fsync, preallocate=False
    )


def puts_in_log(store: RaftStore) -> list[bytes]:
    """The keys of the puts in ``store``'s log, in log order (member proposals unwrapped)."""
    keys = []
    for e in store.entries(store.first_index(), store.last_index() + 1):
        _, data = unwrap_proposal(e.data)
        if not data:
            continue
        try:
            entry = kvreq.decode_entry(data)
        except Exception:  # noqa: BLE001 - conf changes and the like
            continue
        reqs = entry.requests if isinstance(entry, kvreq.RequestBatch) else (entry,)
        keys += [req.body.key for req in reqs if isinstance(req.body, PutRequest)]
    return keys


def test_a_write_that_runs_out_of_space_is_retried_raises_nospace_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @aio
    async def body() -> None:
        initial = infos(3)
        stores = [open_store(tmp_path, i) for i in initial]
        disks = [FakeDisk(10**9), FakeDisk(10**9), FakeDisk(10**9)]
        # 0: only a failed write raises the alarm; it clears with 1000 bytes free.
        members = await start(stores, disks, min_free_disk_bytes=0, free_disk_margin_bytes=1000)
        try:
            for k in (b"a", b"b"):
                await members[0].write(PutRequest(k, b"1"))
            victim = next(m for m in members if not m.node.is_leader)
            leader = next(m for m in members if m.node.is_leader)
            store = stores[members.index(victim)]
            disk = disks[members.index(victim)]
            disk.free = 0
            full = True
            real_append = store.wal.append

            def append(records: object) -> object:
                if full:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_append(records)  # type: ignore[arg-type]

            monkeypatch.setattr(store.wal, "append", append)
            for k in (b"c", b"d"):  # the other two commit them
                await leader.write(PutRequest(k, b"1"))
            await eventually(lambda: victim.node.storage_full, lambda: "the victim's disk filled")
            assert victim.node.running
            assert victim.failure is None
            assert alarms_everywhere(members) == [(), (), ()]  # it cannot propose while stuck

            full = False  # space freed: the write goes through, then the alarm
            mine = (AlarmMember(victim.id, AlarmType.NOSPACE),)
            await eventually(
                lambda: alarms_everywhere(members) == [mine] * 3,
                lambda: f"the victim's NOSPACE everywhere: {alarms_everywhere(members)}",
            )
            with pytest.raises(NoSpaceError, match="database space exceeded"):
                await leader.write(PutRequest(b"e", b"1"))
            assert (await victim.range(RangeRequest(b"d"))).kvs[0].value == b"1"

            disk.free = 1000
            await eventually(
                lambda: alarms_everywhere(members) == [(), (), ()],
                lambda: f"NOSPACE cleared: {alarms_everywhere(members)}",
            )
            await victim.write(PutRequest(b"e", b"1"))
            await eventually(
                lambda: len({m.applier.hash() for m in members}) == 1,
                lambda: "every member in the same state",
            )
            assert victim.failure is None
        finally:
            await stop_all(members)
            for s in stores:
                s.close()
        for info in initial:
            with open_store(tmp_path, info) as again:
                assert puts_in_log(again) == [b"a", b"b", b"c", b"d", b"e"]

    body()


def test_a_failed_fsync_still_stops_the_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @aio
    async def body() -> None:
        initial = infos(3)
        synced = open_store(tmp_path, initial[2], fsync=True)
        storages: list[NodeStorage] = [MemoryStorage(), MemoryStorage(), synced]
        members = await start(storages, [FakeDisk(10**9)] * 3, min_free_disk_bytes=0)
        try:
            victim = members[2]
            await victim.transfer_leadership_away()
            await members[0].write(PutRequest(b"a", b"1"))

            def fdatasync(fd: int) -> None:
                raise OSError(errno.EIO, os.strerror(errno.EIO))

            monkeypatch.setattr(fsmod, "_fdatasync", fdatasync)
            assert not victim.node.is_leader
            await members[0].write(PutRequest(b"b", b"1"))  # the other two commit it
            await eventually(lambda: victim.failure is not None, lambda: "the member stopped")
            assert isinstance(victim.failure, StoreFsyncFailedError)
            assert not victim.node.running
            assert not victim.node.storage_full
            assert all(not m.applier.alarms() for m in members[:2])
            assert "the process must exit" in str(victim.failure)
            await members[1].write(PutRequest(b"c", b"1"))  # the others go on
        finally:
            monkeypatch.undo()
            await stop_all(members)
            synced.close()

    body()


def test_a_failed_fsync_makes_kvapp_serve_exit_with_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server loop's side of it: ``kvapp serve`` logs why and exits 1 (its supervisor
    restarts it from the WAL); it does not retry the write and carry on."""
    peer, client = free_ports(2)
    opts, _ = parse_serve_args(
        [
            "--name",
            "solo",
            "--data-dir",
            str(tmp_path / "solo"),
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--listen-client-urls",
            f"http://127.0.0.1:{client}",
        ]
    )

    @aio
    async def body() -> None:
        ready = asyncio.Event()
        served = asyncio.create_task(serve(opts, ready=ready))
        async with asyncio.timeout(20):
            await ready.wait()
        async with AsyncClient([f"127.0.0.1:{client}"], request_timeout=2.0) as c:
            await c.put(b"before", b"1")

            def fdatasync(fd: int) -> None:
                raise OSError(errno.EIO, os.strerror(errno.EIO))

            monkeypatch.setattr(fsmod, "_fdatasync", fdatasync)
            with pytest.raises((OutcomeUnknown, EtcdError, ClientError)):
                await c.put(b"after", b"1")
        async with asyncio.timeout(20):
            assert await served == 1

    with caplog.at_level(logging.ERROR, logger="kvapp.cli"):
        body()
    monkeypatch.undo()
    assert any("solo: stopping:" in r.getMessage() for r in caplog.records), caplog.text
