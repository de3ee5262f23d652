"""kvapp.node.Member: a 3-member cluster on one real event loop over an in-memory network.

The network delivers on the next loop turn, so messages interleave as they would over TCP; a
member can be cut off. Everything is awaited with explicit timeouts.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest

from kvapp.errors import (
    LeaseNotFoundError,
    NoLeaderError,
    NotLeaderError,
    RequestTooLargeError,
    TooManyRequestsError,
)
from kvapp.lease import LeaseGrantRequest, LeaseGrantResponse
from kvapp.mvcc.types import PutRequest, RangeRequest
from kvapp.node import Member, MemberConfig, cluster_id_for, member_id_for
from kvapp.service import MemberInfo
from raftlib import MemoryStorage, Message, NodeStorage

TICK = 0.01


def aio(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh loop, bounded by an overall timeout."""

    @functools.wraps(fn)
    def run() -> None:
        async def bounded() -> None:
            async with asyncio.timeout(60):
                await fn()

        asyncio.run(bounded())

    return run


class Hub:
    """An in-memory peer network: member id -> member; a cut member neither sends nor hears,
    a deaf one sends but hears nothing.

    A member that removed another refuses its messages and tells it it was removed (as
    kvapp.transport does).
    """

    def __init__(self) -> None:
        self.members: dict[int, Member] = {}
        self.cut: set[int] = set()
        self.deaf: set[int] = set()
        self.removed: dict[tuple[int, int], int] = {}  # (remover, removed) -> removal index

    def links(self, me: int) -> Links:
        return Links(self, me)


class Links:
    def __init__(self, hub: Hub, me: int) -> None:
        self.hub = hub
        self.me = me
        self.peers: set[int] = set()

    def send(self, messages: Sequence[Message]) -> None:
        loop = asyncio.get_running_loop()
        for m in messages:
            if self.me in self.hub.cut or m.to in self.hub.cut or m.to in self.hub.deaf:
                continue
            dest = self.hub.members.get(m.to)
            removed_at = self.hub.removed.get((m.to, self.me))
            if removed_at:
                loop.call_soon(self.hub.members[self.me].report_removed, m.to, removed_at)
            elif dest is not None:
                loop.call_soon(dest.receive, m)

    def add_peer(self, member_id: int, address: tuple[str, int]) -> None:
        self.peers.add(member_id)
        self.hub.removed.pop((self.me, member_id), None)

    def remove_peer(self, member_id: int, *, removed_at: int = 0) -> None:
        self.peers.discard(member_id)
        if removed_at:
            self.hub.removed[(self.me, member_id)] = removed_at


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CLUSTER = cluster_id_for("t")


def infos(n: int) -> list[MemberInfo]:
    out = []
    for i in range(1, n + 1):
        urls = (f"http://127.0.0.1:{20000 + i}",)
        out.append(MemberInfo(member_id_for(urls, CLUSTER), f"m{i}", urls))
    return out


def make_member(
    hub: Hub,
    info: MemberInfo,
    initial: list[MemberInfo],
    clock: Clock,
    *,
    storage: NodeStorage | None = None,
    disk_free: Callable[[], int] | None = None,
    **cfg: object,
) -> Member:
    """A member on ``hub`` (tests/conftest.py keeps earlier tests' objects out of its pauses),
    on ``storage`` (default: a new MemoryStorage)."""
    config = MemberConfig(
        name=info.name,
        member_id=info.id,
        cluster_id=CLUSTER,
        initial_members=tuple(initial),
        tick_interval=TICK,
        request_timeout=2.0,
        **{"lease_tick": TICK * 2, **cfg},  # type: ignore[arg-type]
    )
    store = MemoryStorage() if storage is None else storage
    m = Member(config, store, hub.links(info.id), clock=clock, disk_free=disk_free)
    hub.members[info.id] = m
    return m


async def start_cluster(n: int = 3, **cfg: Any) -> tuple[Hub, list[Member], Clock]:
    hub, clock = Hub(), Clock()
    initial = infos(n)
    members = [make_member(hub, i, initial, clock, **cfg) for i in initial]
    for m in members:
        await m.start()
    await asyncio.wait_for(members[0].node.wait_leader(timeout=5), 6)
    return hub, members, clock


async def stop_all(members: list[Member]) -> None:
    """Stop ``members`` without handing leadership over."""
    for m in members:
        await m.stop(transfer=False)


def leader_of(members: list[Member]) -> Member:
    lead = members[0].node.leader_id
    return next(m for m in members if m.id == lead)


@aio
async def test_a_write_to_any_member_is_read_linearizably_everywhere() -> None:
    _, members, _ = await start_cluster()
    try:
        for i, m in enumerate(members):
            resp = await m.write(PutRequest(b"k%d" % i, b"v%d" % i))
            assert resp.revision == i + 2
        for m in members:
            got = await m.range(RangeRequest(b"k", b"l"))
            assert [kv.value for kv in got.kvs] == [b"v0", b"v1", b"v2"]
            assert m.header().revision == 4
    finally:
        await stop_all(members)


@aio
async def test_a_retried_write_is_applied_once() -> None:
    _, members, _ = await start_cluster()
    try:
        first = await members[1].write(PutRequest(b"k", b"a"), client_id=7, request_id=1)
        again = await members[2].write(PutRequest(b"k", b"a"), client_id=7, request_id=1)
        assert again == first
        got = await members[0].range(RangeRequest(b"k"))
        assert got.kvs[0].version == 1
    finally:
        await stop_all(members)


@aio
async def test_oversized_write_is_refused_before_proposing() -> None:
    _, members, _ = await start_cluster()
    try:
        with pytest.raises(RequestTooLargeError):
            await members[0].write(PutRequest(b"k", b"x" * 1_600_000))
        assert (await members[0].range(RangeRequest(b"k"))).kvs == ()
    finally:
        await stop_all(members)


@aio
async def test_a_lease_expires_on_the_leader_clock_and_deletes_its_keys() -> None:
    _, members, clock = await start_cluster()
    try:
        granted = await members[1].write(LeaseGrantRequest(ttl=5))
        assert isinstance(granted, LeaseGrantResponse)
        await members[2].write(PutRequest(b"leased", b"v", lease=granted.id))
        lead = leader_of(members)
        ka = await lead.lease_keep_alive(granted.id)
        assert ka.ttl == 5
        clock.now += 30
        for _ in range(400):
            got = await members[0].range(RangeRequest(b"leased"))
            if not got.kvs:
                break
            await asyncio.sleep(TICK)
        else:
            raise AssertionError("the expired lease's key was never deleted")
        with pytest.raises(LeaseNotFoundError):
            await lead.lease_time_to_live(granted.id)
    finally:
        await stop_all(members)


@aio
async def test_a_partitioned_member_cannot_serve_linearizable_reads() -> None:
    hub, members, _ = await start_cluster()
    try:
        await members[0].write(PutRequest(b"k", b"v"))
        lone = next(m for m in members if not m.node.is_leader)
        hub.cut.add(lone.id)
        with pytest.raises((NoLeaderError, Exception)) as info:
            await lone.range(RangeRequest(b"k"))
        assert "etcdserver" in str(info.value)
        got = await lone.range(RangeRequest(b"k", serializable=True))
        assert got.kvs[0].value == b"v"
    finally:
        await stop_all(members)


@aio
async def test_a_learner_joins_catches_up_and_is_promoted() -> None:
    hub, members, clock = await start_cluster()
    try:
        for i in range(5):
            await members[0].write(PutRequest(b"k%d" % i, b"v"))
        urls = ("http://127.0.0.1:29999",)
        added = await members[1].member_add(urls, is_learner=True)
        assert added.is_learner
        table = [*members[1].member_list()]
        newcomer_info = MemberInfo(added.id, "m4", urls, is_learner=True)
        newcomer = make_member(
            hub,
            newcomer_info,
            [m for m in table if m.id != added.id] + [newcomer_info],
            clock,
            new_cluster=False,
        )
        await newcomer.start()
        for _ in range(500):
            table = members[0].member_list()
            mine = {m.id: m for m in table}.get(added.id)
            if mine is not None and not mine.is_learner:
                break
            await asyncio.sleep(TICK)
        else:
            raise AssertionError(f"learner never promoted: {table}")
        got = await newcomer.range(RangeRequest(b"k", b"l"))
        assert len(got.kvs) == 5
        members.append(newcomer)
    finally:
        await stop_all(members)


@aio
async def test_without_auto_promotion_a_caught_up_learner_waits_for_member_promote() -> None:
    hub, members, clock = await start_cluster(auto_promote=False)
    try:
        await members[0].write(PutRequest(b"k", b"v"))
        urls = ("http://127.0.0.1:29999",)
        added = await members[1].member_add(urls, is_learner=True)
        info = MemberInfo(added.id, "m4", urls, is_learner=True)
        initial = [m for m in members[1].member_list() if m.id != added.id] + [info]
        newcomer = make_member(hub, info, initial, clock, new_cluster=False, auto_promote=False)
        members.append(newcomer)
        await newcomer.start()
        lead = leader_of(members)
        for _ in range(500):
            if lead._learner_caught_up(added.id):
                break
            await asyncio.sleep(TICK)
        else:
            raise AssertionError("the learner never caught up")
        await asyncio.sleep(lead.config.lease_tick * 10)  # auto-promotion would have run
        assert {m.id: m for m in lead.member_list()}[added.id].is_learner
        follower = next(m for m in members[:3] if m is not lead)
        with pytest.raises(NotLeaderError):  # only the leader knows it is in sync: forwarded
            await follower.member_promote(added.id)
        await lead.member_promote(added.id)
        assert not {m.id: m for m in lead.member_list()}[added.id].is_learner
    finally:
        await stop_all(members)


async def wait_removed(member: Member) -> None:
    for _ in range(500):
        if member.removed:
            return
        await asyncio.sleep(TICK)
    raise AssertionError(
        f"{member.config.name} never learned it was removed: {member.node.status()}"
    )


@aio
async def test_removing_a_member_under_writes() -> None:
    _, members, _ = await start_cluster()
    try:
        victim = next(m for m in members if not m.node.is_leader)
        await leader_of(members).member_remove(victim.id)
        survivors = [m for m in members if m is not victim]
        for i in range(5):
            await survivors[i % 2].write(PutRequest(b"after%d" % i, b"v"))
        assert all(victim.id not in {i.id for i in m.member_list()} for m in survivors)
        await wait_removed(victim)
    finally:
        await stop_all(members)


@aio
async def test_a_member_removed_while_cut_off_learns_it_from_the_others() -> None:
    # The others commit its removal without it, so the entry never reaches it: only their
    # refusal can tell it (etcd's peers answer such a member "removed" too).
    hub, members, _ = await start_cluster()
    try:
        victim = next(m for m in members if not m.node.is_leader)
        survivors = [m for m in members if m is not victim]
        hub.cut.add(victim.id)
        await survivors[0].member_remove(victim.id)  # a follower forwards it
        await survivors[0].write(PutRequest(b"after", b"v"))
        assert not victim.removed
        hub.cut.discard(victim.id)
        await wait_removed(victim)
        assert victim.id in {i.id for i in victim.member_list()}  # it never applied its removal
    finally:
        await stop_all(members)


@aio
async def test_a_member_removing_itself_is_answered_when_a_peer_says_it_is_gone() -> None:
    # The others commit the removal without it and stop replicating to it, so it may never
    # apply the entry; a peer's "removed" tells it the removal it asked for happened.
    hub, members, _ = await start_cluster()
    try:
        victim = next(m for m in members if not m.node.is_leader)
        for _ in range(500):  # it forwards its proposal to the leader it knows
            if victim.node.leader_id != 0:
                break
            await asyncio.sleep(TICK)
        hub.deaf.add(victim.id)
        async with asyncio.timeout(victim.config.request_timeout / 2):
            await victim.member_remove(victim.id)
        assert victim.removed
        assert victim.id in {i.id for i in victim.member_list()}  # it never applied its removal
        survivors = [m for m in members if m is not victim]
        assert all(victim.id not in {i.id for i in m.member_list()} for m in survivors)
    finally:
        await stop_all(members)


@aio
async def test_a_second_membership_change_while_one_is_pending_is_refused_at_once() -> None:
    # Raft takes one at a time: the leader refuses the other, and its caller learns so when
    # the refusal (an empty entry in its place) commits, not after a timeout.
    _, members, _ = await start_cluster()
    try:
        leader = leader_of(members)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        results = await asyncio.gather(
            leader.member_add(("http://127.0.0.1:7101",), is_learner=True),
            leader.member_add(("http://127.0.0.1:7102",), is_learner=True),
            return_exceptions=True,
        )
        assert loop.time() - t0 < leader.config.request_timeout / 2, results
        added, refused = results
        assert isinstance(added, MemberInfo), results
        assert isinstance(refused, TooManyRequestsError), results
        urls = {u for m in leader.member_list() for u in m.peer_urls}
        assert "http://127.0.0.1:7101" in urls
        assert "http://127.0.0.1:7102" not in urls
    finally:
        await stop_all(members)


@aio
async def test_a_removal_notice_is_ignored_by_a_member_that_has_a_leader_or_applied_past_it() -> (
    None
):
    # A member re-added under its old id (same peer URLs) may hear "removed" from a member that
    # has not applied the re-addition yet; while a leader replicates to it, or once it has applied
    # past the removal, its own state is the better witness.
    _, members, _ = await start_cluster()
    try:
        await members[0].write(PutRequest(b"k", b"v"))
        follower = next(m for m in members if not m.node.is_leader)
        for _ in range(500):  # a follower knows its leader once it has heard from it
            if follower.node.leader_id != 0:
                break
            await asyncio.sleep(TICK)
        else:
            raise AssertionError(f"{follower.config.name} never heard of the leader")
        follower.report_removed(follower.node.leader_id, follower.node.applied + 100)
        assert not follower.removed
        lone = members[0]
        for m in members[1:]:
            await m.stop(transfer=False)
        for _ in range(500):
            if lone.node.leader_id == 0:
                break
            await asyncio.sleep(TICK)
        else:
            raise AssertionError("the lone member kept a leader")
        lone.report_removed(members[1].id, lone.node.applied)
        assert not lone.removed
        lone.report_removed(members[1].id, lone.node.applied + 1)
        assert lone.removed
    finally:
        await stop_all(members)


async def progress_notifications(interval: float) -> list[int]:
    """The watch ids of the progress notifications one member sends within a second (at most
    three) to two idle watchers of which only the first asked for them."""
    _, members, _ = await start_cluster(1, progress_notify_interval=interval)
    (m,) = members
    try:
        stream = m.open_watch_stream(lambda: None)
        asked = stream.watch(b"k", progress_notify=True)
        stream.watch(b"k", watch_id=asked + 1)
        stream.take()  # the creation answers
        seen: list[int] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while loop.time() < deadline and len(seen) < 3:
            await asyncio.sleep(0.02)
            seen += [r.watch_id - asked + 1 for r in stream.take() if not r.events]
        return seen
    finally:
        await stop_all(members)


@aio
async def test_idle_watchers_get_no_progress_notification_before_etcds_ten_minutes() -> None:
    assert await progress_notifications(600.0) == []


@aio
async def test_idle_watchers_that_asked_get_progress_notifications_at_the_interval() -> None:
    assert await progress_notifications(0.05) == [1, 1, 1]


@aio
async def test_a_keep_alive_is_acknowledged_after_one_commit_not_at_the_next_lease_tick() -> None:
    """The renewal's checkpoint is proposed at once: with a 30 s lease tick the keep-alive
    still comes back well inside its 2 s request timeout (etcd answers at once)."""
    _, members, _ = await start_cluster(lease_tick=30.0)
    try:
        lead = leader_of(members)
        grant = await lead.write(LeaseGrantRequest(ttl=10, id=0))
        assert isinstance(grant, LeaseGrantResponse)
        loop = asyncio.get_running_loop()
        started = loop.time()
        renewed = await asyncio.gather(*(lead.lease_keep_alive(grant.id) for _ in range(3)))
        assert [r.ttl for r in renewed] == [10, 10, 10]
        assert loop.time() - started < 1.0
    finally:
        await stop_all(members)


class CountingRandom(random.Random):
    """A seeded Random that counts its draws."""

    def __init__(self) -> None:
        super().__init__(7)
        self.draws = 0

    def getrandbits(self, k: int) -> int:
        self.draws += 1
        return super().getrandbits(k)


@aio
async def test_a_members_raft_randomness_comes_from_its_injected_rng() -> None:
    """A seam for deterministic simulation: election jitter is drawn from ``rng``."""
    hub, clock = Hub(), Clock()
    (info,) = infos(1)
    rng = CountingRandom()
    config = MemberConfig(
        name=info.name,
        member_id=info.id,
        cluster_id=CLUSTER,
        initial_members=(info,),
        tick_interval=TICK,
    )
    m = Member(config, MemoryStorage(), hub.links(info.id), clock=clock, rng=rng)
    hub.members[info.id] = m
    await m.start()
    try:
        await asyncio.wait_for(m.node.wait_leader(timeout=5), 6)
        assert rng.draws > 0
    finally:
        await stop_all([m])


def test_a_progress_notify_interval_must_be_positive() -> None:
    """Zero would spin the member's progress loop; only the CLI checked it before."""
    (info,) = infos(1)
    with pytest.raises(ValueError, match="progress_notify_interval"):
        MemberConfig(
            name="m1",
            member_id=info.id,
            cluster_id=CLUSTER,
            initial_members=(info,),
            progress_notify_interval=0,
        )
