"""Whole kvapp clusters under simulation: virtual time, a lossy network, disks that lose power.

Clients put, read (linearizably) and compare-and-set (a txn) a few keys through random
members, and hold leases; now and then someone compacts the history, and some txns read a
revision that may have been compacted meanwhile (then the txn fails whole, on every member
alike), while a nemesis cuts members off, drops messages, cuts the power of members (their simulated
disks keep only what a power loss would) and restarts them, and replaces members (a new one
joins as a learner and is promoted, then another is removed, sometimes the leader).
Everything runs on one :class:`~kvapp.testing.SimLoop`, so a minute of cluster life
takes about a second and a run is fixed by its seed. The history must be linearizable, every
member must end with the same data, leases must expire neither early nor never, a watcher
resuming on member after member must see the history exactly once, and the same seed must give
the same history.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import pytest

from kvapp.errors import CompactedError, EtcdError, KvappError, NoSpaceError
from kvapp.lease import LeaseGrantRequest, LeaseGrantResponse
from kvapp.mvcc.types import (
    CompactRequest,
    Compare,
    CompareResult,
    CompareTarget,
    Event,
    EventType,
    PutRequest,
    RangeRequest,
    RangeResponse,
    RequestOp,
    TxnRequest,
    TxnResponse,
)
from kvapp.node import Member
from kvapp.service import OutcomeUnknown, WriteRequest
from kvapp.testing import SimCluster, run
from raftlib.testing.linearizability import Operation, check_linearizability, register_model

KEYS = (b"x", b"y", b"z")
_T = TypeVar("_T")
FAILURES = (EtcdError, KvappError, OutcomeUnknown, TimeoutError)


class Client:
    def __init__(self, n: int, cluster: SimCluster, history: list[Operation], seed: int) -> None:
        self.n = n
        self.cluster = cluster
        self.history = history
        self.rng = random.Random(seed)
        self.counter = itertools.count()
        self.done = 0
        self.client_id = 1000 + n
        self.requests = itertools.count(1)
        self.retries = n % 2 == 0
        self.last: dict[bytes, bytes | None] = {}  # the value last seen of each key
        self.old_revision = 0  # a revision read a while ago, for txns to read at
        self.txns = 0
        self.compacted = 0  # txns refused because the revision they read was compacted
        self.past: list[tuple[bytes, int, bytes | None]] = []  # (key, revision, value) read

    async def run(self, until: float) -> None:
        loop = self.cluster.loop
        while loop.time() < until:
            await asyncio.sleep(self.rng.uniform(0.001, 0.02))
            running = sorted(self.cluster.members)
            if not running:
                continue
            member = self.cluster.members.get(self.rng.choice(running))
            if member is None:
                continue
            key = self.rng.choice(KEYS)
            dice = self.rng.random()
            if dice < 0.4:
                await self.put(member, key, f"{self.n}-{next(self.counter)}".encode())
            elif dice < 0.75:
                await self.get(member, key)
            elif dice < 0.8:
                await self.get_past(member, key)
            else:
                await self.cas(member, key)

    async def _write(self, member: Member, request: WriteRequest) -> tuple[object, int]:
        """Send ``request`` under one request id, retried on other members (deduplicated: it
        takes effect once however many attempts reach the log); half the clients retry.
        Its answer (None if none came; the error if refused for certain: compacted, or
        NOSPACE) and the attempt that got it."""
        request_id = next(self.requests)
        for attempt in range(3 if self.retries else 1):
            if attempt:
                await asyncio.sleep(self.rng.uniform(0.01, 0.2))
                running = sorted(self.cluster.members)
                member = self.cluster.members[self.rng.choice(running)] if running else member
            try:
                async with asyncio.timeout(2.0):
                    resp = await member.write(
                        request, client_id=self.client_id, request_id=request_id
                    )
            except (CompactedError, NoSpaceError) as e:
                return e, attempt
            except FAILURES:
                continue
            return resp, attempt
        return None, -1

    async def put(self, member: Member, key: bytes, value: bytes) -> None:
        call = self.cluster.loop.time()
        resp, attempt = await self._write(member, PutRequest(key, value))
        ret = None
        if isinstance(resp, NoSpaceError):
            if attempt == 0:
                return  # refused before anything was proposed: no effect
        elif resp is not None:
            ret = self.cluster.loop.time()
            self.done += 1
            self.last[key] = value
        self.history.append(Operation(self.n, ("put", key, value), None, call, ret))

    async def cas(self, member: Member, key: bytes) -> None:
        """A txn: if the key holds the value this client saw last, put a new one, else read
        it. Half of them also read the key at an old revision, which fails the whole txn if
        that was compacted."""
        expected = self.last.get(key)
        new = f"{self.n}-{next(self.counter)}".encode()
        if expected is None:
            compare = Compare(key, CompareTarget.VERSION, CompareResult.EQUAL, 0)
        else:
            compare = Compare(key, CompareTarget.VALUE, CompareResult.EQUAL, expected)
        success: list[RequestOp] = [PutRequest(key, new)]
        if self.old_revision and self.rng.random() < 0.5:
            success.append(RangeRequest(key, revision=self.old_revision))
        call = self.cluster.loop.time()
        resp, attempt = await self._write(
            member, TxnRequest([compare], success, [RangeRequest(key)])
        )
        ret = output = None
        if isinstance(resp, (CompactedError, NoSpaceError)):
            self.compacted += isinstance(resp, CompactedError)
            if attempt == 0:
                return  # refused whole: it took no effect
        elif resp is not None:  # else an earlier attempt may have taken effect: pending
            assert isinstance(resp, TxnResponse), resp
            if resp.succeeded:
                output = (True, expected)
                self.last[key] = new
            else:
                (got,) = resp.responses
                assert isinstance(got, RangeResponse), got
                self.last[key] = got.kvs[0].value if got.kvs else None
                output = (False, self.last[key])
            ret = self.cluster.loop.time()
            self.done += 1
            self.txns += 1
        self.history.append(Operation(self.n, ("cas", key, expected, new), output, call, ret))

    async def get_past(self, member: Member, key: bytes) -> None:
        """Read ``key`` as of a revision read a while ago (any member, no barrier): the value
        then is fixed for good, so it is checked against the final history."""
        if not self.old_revision:
            return
        try:
            async with asyncio.timeout(2.0):
                got = await member.range(RangeRequest(key, revision=self.old_revision))
        except FAILURES:  # compacted, not there yet on this member, unreachable...
            return
        self.past.append((key, self.old_revision, got.kvs[0].value if got.kvs else None))

    async def get(self, member: Member, key: bytes) -> None:
        loop = self.cluster.loop
        call = loop.time()
        try:
            async with asyncio.timeout(2.0):
                got = await member.range(RangeRequest(key))
        except FAILURES:
            return
        self.done += 1
        value = got.kvs[0].value if got.kvs else None
        self.last[key] = value
        if not self.old_revision or self.rng.random() < 0.05:
            self.old_revision = got.revision
        self.history.append(Operation(self.n, ("get", key), value, call, loop.time()))


class LeaseClient:
    """Grants a lease, puts a key on it, keeps it alive for a while, then lets it go.

    A lease must never expire sooner than its TTL after the call of its last successful
    keep-alive (or of its grant): a linearizable read that *returned* before that and found
    the key gone is a violation. Once let go, the key must be gone within the run.
    """

    def __init__(self, n: int, cluster: SimCluster, seed: int) -> None:
        self.key = f"lease/{n}".encode()
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.renewed_at: float | None = None  # the call time of the last renewal that answered
        self.ttl = 0
        self.violations: list[str] = []
        self.reads_after_letting_go = 0

    async def _on_some_member(self, fn: Callable[[Member], Awaitable[_T]]) -> _T | None:
        running = sorted(self.cluster.members)
        member = self.cluster.members.get(self.rng.choice(running)) if running else None
        if member is None:
            return None
        try:
            async with asyncio.timeout(2.0):
                return await fn(member)
        except FAILURES:
            return None

    async def run(self, let_go_at: float, until: float) -> None:
        loop = self.cluster.loop
        while self.renewed_at is None and loop.time() < let_go_at:
            call = loop.time()
            granted = await self._on_some_member(lambda m: m.write(LeaseGrantRequest(ttl=3)))
            if isinstance(granted, LeaseGrantResponse):
                attach = PutRequest(self.key, b"v", lease=granted.id)

                async def put_on(m: Member, attach: PutRequest = attach) -> object:
                    return await m.write(attach)

                put = await self._on_some_member(put_on)
                if put is not None:
                    self.renewed_at, self.ttl, self.lease = call, granted.ttl, granted.id
            await asyncio.sleep(0.1)
        while loop.time() < let_go_at and self.renewed_at is not None:
            await asyncio.sleep(0.4)
            lead = self.cluster.leader()
            if lead is None:
                continue
            call = loop.time()
            try:
                async with asyncio.timeout(2.0):
                    await lead.lease_keep_alive(self.lease)
            except FAILURES:
                continue
            self.renewed_at = call
        while self.renewed_at is not None and loop.time() < until:
            await asyncio.sleep(0.05)
            got = await self._on_some_member(lambda m: m.range(RangeRequest(self.key)))
            if got is None or got.kvs:
                continue
            self.reads_after_letting_go += 1
            if loop.time() < self.renewed_at + self.ttl:
                self.violations.append(
                    f"{self.key!r} gone at {loop.time():.3f}, renewed at "
                    f"{self.renewed_at:.3f} for {self.ttl} s"
                )


Seen = tuple[int, int, bytes, bytes]  # revision, event type, key, value


def _seen(events: Sequence[Event]) -> list[Seen]:
    return [(e.kv.mod_revision, int(e.type), e.kv.key, e.kv.value) for e in events]


class Watcher:
    """Watches every key through one member at a time, resuming on another (from the revision
    after the last one it saw) when its member goes away, and now and then anyway.

    What it saw must be the cluster's history: every event once, in order, none invented.
    """

    def __init__(self, cluster: SimCluster, seed: int) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.seen: list[Seen] = []
        self.prevs: list[bytes | None] = []  # each seen event's prev_kv value (None: none)
        self.next_rev = 1
        self.resumes = 0

    async def run(self, until: float) -> None:
        loop = self.cluster.loop
        while loop.time() < until:
            running = sorted(self.cluster.members)
            if not running:
                await asyncio.sleep(0.05)
                continue
            member = self.cluster.members[self.rng.choice(running)]
            await self._follow(member, min(until, loop.time() + self.rng.uniform(0.5, 2.0)))
            self.resumes += 1

    async def catch_up(self, member: Member, revision: int) -> None:
        """Follow ``member`` until every event up to ``revision`` was seen."""
        await self._follow(member, self.cluster.loop.time() + 10.0, stop_at=revision)

    async def _follow(self, member: Member, until: float, stop_at: int | None = None) -> None:
        loop = self.cluster.loop
        stream = member.open_watch_stream(lambda: None)
        try:
            stream.watch(b"\0", b"\0", start_revision=self.next_rev, prev_kv=True)
            while loop.time() < until and self.cluster.members.get(member.id) is member:
                for resp in stream.take():
                    assert not resp.canceled, resp
                    if resp.events:
                        assert resp.events[0].kv.mod_revision >= self.next_rev, resp
                        self.seen += _seen(resp.events)
                        self.prevs += [e.prev_kv.value if e.prev_kv else None for e in resp.events]
                        self.next_rev = resp.events[-1].kv.mod_revision + 1
                if stop_at is not None and self.next_rev > stop_at:
                    return
                await asyncio.sleep(0.02)
        finally:
            stream.close()


async def compactor(cluster: SimCluster, watcher: Watcher, rng: random.Random, until: float) -> int:
    """Compact the history now and then, through a random member; how many compactions
    answered. Never past the hopping watcher's position, so it can always resume."""
    loop = cluster.loop
    done = 0
    while loop.time() < until:
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        running = sorted(cluster.members)
        member = cluster.members.get(rng.choice(running)) if running else None
        if member is None:
            continue
        store = member.kv.store
        target = min(watcher.next_rev - 1, store.revision - 20)
        if target < 1 or target <= store.compact_revision:
            continue
        try:
            async with asyncio.timeout(2.0):
                await member.write(CompactRequest(target))
        except FAILURES:
            continue
        done += 1
    return done


def _check_against_history(watcher: Watcher, clients: Sequence[Client]) -> None:
    """The watcher's history is complete (from revision 1): every prev_kv it was sent must be
    the version before, and every read at a past revision must give the value then."""
    now: dict[bytes, bytes] = {}
    versions: dict[bytes, list[tuple[int, bytes | None]]] = {}
    for (rev, kind, key, value), prev in zip(watcher.seen, watcher.prevs, strict=True):
        assert prev == now.get(key), (
            f"revision {rev}, {key!r}: prev_kv {prev!r}, not {now.get(key)!r}"
        )
        if kind == EventType.PUT:
            now[key] = value
        else:
            now.pop(key, None)
        versions.setdefault(key, []).append((rev, now.get(key)))
    for c in clients:
        for key, rev, got in c.past:
            then = [v for r, v in versions.get(key, []) if r <= rev]
            assert got == (then[-1] if then else None), f"{key!r} at revision {rev}: {got!r}"


def _eio_on_sync(method: str, path: str | None) -> OSError | None:
    return OSError(errno.EIO, "simulated I/O error") if method == "fdatasync" else None


FAULTS = ("isolate", "drop", "power", "power-leader", "replace", "fsync-eio", "disk-full")


async def nemesis(
    cluster: SimCluster, rng: random.Random, until: float, kinds: Sequence[str] = FAULTS
) -> list[str]:
    """Faults, one at a time, each healed before the next: what happened, for the record.

    Several nemeses may run at once (their faults then overlap): each checks that its victim
    is (still) running before it cuts its power and that it is down and still a member before
    it starts it again.
    """
    log: list[str] = []
    loop = cluster.loop

    async def restart(victim: int) -> None:
        if victim not in cluster.members and victim not in cluster.gone:
            await cluster.start(victim)

    while loop.time() < until:
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        ids = sorted(i for i in cluster.configs if i not in cluster.gone)
        victim = rng.choice(ids)
        fault = rng.choice(kinds)
        if fault == "power-leader":
            lead = cluster.leader()
            victim = lead.id if lead is not None else victim
        log.append(f"{loop.time():.3f} {fault} {victim:x}")
        if fault == "replace":
            log.append(await cluster.replace(victim))
        elif fault == "fsync-eio" and victim in cluster.members:
            # The disk fails its syncs: the member must stop rather than carry on (its page
            # cache no longer tells what is on disk); then it loses power and comes back.
            cluster.disks[victim].fault = _eio_on_sync
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            if victim in cluster.members:
                await cluster.power_loss(victim)
            cluster.disks[victim].fault = None  # a new disk, as after a repair
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            await restart(victim)
        elif fault == "disk-full" and victim in cluster.members:
            # The disk fills up (a little room left, or none): the member raises NOSPACE,
            # writes are refused cluster-wide, reads go on; then space comes back.
            cluster.fill_disk(victim, rng.choice((0, rng.randrange(1 << 16))))
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            cluster.free_disk(victim)  # (a power loss may have swapped the disk meanwhile)
        elif fault == "isolate":
            cluster.isolate(victim)
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            cluster.heal(victim)
        elif fault == "drop":
            cluster.lose_messages(rng.uniform(0.05, 0.3))
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            cluster.lose_messages(0.0)
        elif victim in cluster.members:
            await cluster.power_loss(victim)
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            await restart(victim)
    return log


async def settle(cluster: SimCluster) -> None:
    """Wait (in virtual time) until every member has applied the same index."""
    for _ in range(2000):
        applied = {m.node.applied for m in cluster.members.values()}
        if len(applied) == 1 and cluster.leader() is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(
        f"members did not converge: {[m.node.applied for m in cluster.members.values()]}"
    )


def simulate(
    seed: int, seconds: float = 20.0, nemeses: int = 1
) -> tuple[list[Operation], list[str], SimCluster]:
    """Run one seeded simulation, with ``nemeses`` fault makers at once; its history, its
    faults and the cluster.

    Raises:
        AssertionError: the members did not converge, too little was done, or a lease
            expired early or never.
    """
    history: list[Operation] = []
    lease_violations: list[str] = []
    faults: list[str] = []
    holder: list[SimCluster] = []

    async def main(cluster: SimCluster) -> None:
        loop = cluster.loop
        rng = random.Random(seed)
        holder.append(cluster)
        clients = [Client(n, cluster, history, rng.randrange(2**32)) for n in range(4)]
        until = loop.time() + seconds
        tasks = [asyncio.create_task(c.run(until)) for c in clients]
        watcher = Watcher(cluster, rng.randrange(2**32))
        tasks.append(asyncio.create_task(watcher.run(until)))
        compacting = asyncio.create_task(
            compactor(cluster, watcher, random.Random(rng.random()), until)
        )
        leasers = [LeaseClient(n, cluster, rng.randrange(2**32)) for n in range(2)]
        let_go = [loop.time() + rng.uniform(1.0, seconds / 2) for _ in leasers]
        tasks += [
            asyncio.create_task(c.run(t, until)) for c, t in zip(leasers, let_go, strict=True)
        ]
        makers = [nemesis(cluster, random.Random(rng.random()), until) for _ in range(nemeses)]
        for made in await asyncio.gather(*makers):
            faults.extend(made)
        await asyncio.gather(*tasks)
        compactions = await compacting
        await cluster.start_missing()
        await settle(cluster)
        revisions = {m.kv.store.revision for m in cluster.members.values()}
        compacted = {m.kv.store.compact_revision for m in cluster.members.values()}
        values = {
            tuple((kv.key, kv.value, kv.mod_revision) for kv in m.kv.store.range(b"\0", b"\0").kvs)
            for m in cluster.members.values()
        }
        assert len(revisions) == 1, revisions
        assert len(values) == 1, values
        assert len(compacted) == 1, compacted
        for m in cluster.members.values():  # every disk has room again: alarms cleared
            for _ in range(500):
                if not m.applier.alarms():
                    break
                await asyncio.sleep(0.01)
            assert not m.applier.alarms(), (m.applier.alarms(), m.member_list())
        member = next(iter(cluster.members.values()))
        (revision,), (compact_revision,) = revisions, compacted
        await watcher.catch_up(member, revision)
        everything = Watcher(cluster, 0)  # one watch from the oldest revision kept, at the end
        everything.next_rev = kept = max(1, compact_revision)
        await everything.catch_up(member, revision)
        assert everything.seen[-1][0] == revision
        assert watcher.resumes >= 3, watcher.resumes
        assert watcher.seen[0][0] == 2, watcher.seen[:1]  # from the first write on
        assert all(a[0] < b[0] for a, b in itertools.pairwise(watcher.seen)), "order, repeats"
        assert [s for s in watcher.seen if s[0] >= kept] == everything.seen
        _check_against_history(watcher, clients)
        assert sum(c.done for c in clients) > 200, [c.done for c in clients]
        assert sum(c.txns for c in clients) > 20, [c.txns for c in clients]
        if seconds >= 10:
            assert compactions >= 1, "nothing was compacted"
        lease_violations.extend(v for c in leasers for v in c.violations)
        for c in leasers:  # let go at most halfway: expired (and seen gone) by the end
            assert c.renewed_at is not None, "no lease was ever granted"
            assert c.reads_after_letting_go > 0, f"{c.key!r} never expired"
            got = await next(iter(cluster.members.values())).range(RangeRequest(c.key))
            assert not got.kvs, f"{c.key!r} still there at the end"

    run(main, seed=seed)
    assert lease_violations == []
    return history, faults, holder[0]


def assert_linearizable(history: Sequence[Operation]) -> None:
    """The history, numbered, is linearizable for the register model (puts, gets, cas)."""
    ops = [
        Operation(o.client, o.input, o.output, o.call, o.ret, id=i) for i, o in enumerate(history)
    ]
    result = check_linearizability(ops, register_model())
    assert result.ok is True, result.explain()


@pytest.mark.parametrize("seed", range(4))
def test_histories_under_partitions_drops_and_power_loss_are_linearizable(seed: int) -> None:
    history, faults, cluster = simulate(seed)
    assert cluster.crashes >= 2, faults
    assert cluster.replaced >= 1, faults  # a member added (learner, promoted), another removed
    # One fault at a time: a replacement runs on a healthy cluster, so every step of it must
    # succeed (a member asked to remove itself once timed out although it was removed).
    assert not [f for f in faults if "failed" in f or "not promoted" in f], faults
    assert_linearizable(history)


@pytest.mark.parametrize("seed", range(2))
def test_overlapping_faults_keep_histories_linearizable(seed: int) -> None:
    """Two nemeses at once: two members may be down together (no quorum for a while)."""
    history, faults, cluster = simulate(100 + seed, nemeses=2)
    assert cluster.crashes >= 4, faults
    assert_linearizable(history)


@pytest.mark.parametrize("seed", range(2))
def test_leaders_removing_themselves_are_answered(seed: int) -> None:
    """A leader asked to remove itself hands over, then proposes its removal through the new
    leader, which refuses membership changes until it has applied what it held when elected,
    and drops a refused forwarded one unreported; the old leader must wait for that, or the
    call times out although nothing failed (seeds 46, 57 and 71 of the test above did)."""
    outcomes: list[str] = []

    async def main(cluster: SimCluster) -> None:
        done = False

        async def load() -> None:  # entries in flight whenever leadership moves
            n = 0
            while not done:
                lead = cluster.leader()
                if lead is not None:
                    n += 1
                    with contextlib.suppress(*FAILURES):
                        put = lead.submit_write(PutRequest(b"load", b"%d" % n))
                        put.add_done_callback(lambda f: f.cancelled() or f.exception())
                await asyncio.sleep(0.001)

        writer = asyncio.create_task(load())
        for _ in range(6):
            await settle(cluster)
            lead = cluster.leader()
            assert lead is not None
            outcomes.append(await cluster.replace(lead.id))
        done = True
        await writer

    run(main, seed=seed)
    assert all(" by " in o for o in outcomes), outcomes


def test_a_seed_fixes_the_run() -> None:
    """Same seed, same run: every fault, every message, every answer at the same instant."""
    runs = [simulate(11, seconds=10.0) for _ in range(2)]
    (first, faults1, c1), (second, faults2, c2) = runs
    assert c1.crashes >= 1, faults1
    assert faults1 == faults2
    assert c1.net.sent == c2.net.sent
    assert [(o.client, o.input, o.output, o.call, o.ret) for o in first] == [
        (o.client, o.input, o.output, o.call, o.ret) for o in second
    ]
    assert simulate(12, seconds=10.0)[0] != first  # and the seed matters
