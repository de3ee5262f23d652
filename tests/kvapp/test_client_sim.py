"""kvapp's own client, under simulation: leader discovery, failover, retries and watch resumption.

The cluster of :mod:`tests.kvapp.test_cluster_sim` (virtual time, a lossy network, power
losses, member replacements), but the clients are :class:`~kvapp.client.AsyncClient` s speaking
the native protocol over in-memory streams (:class:`~kvapp.testing.SimConnector`):
what they see is what a user's program sees. Their puts (retried by the client under its
request ids) and linearizable gets must form a linearizable history; a client watch, which
the client re-creates on another member whenever its connection goes, must deliver the
cluster's history exactly once, in order; and a lease kept alive by the client in the
background must last at least a TTL from each renewal, and go once let go.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from kvapp.client import AsyncClient, KeepAlive, Watch
from kvapp.client.errors import ClientError
from kvapp.errors import EtcdError, KvappError
from kvapp.service import OutcomeUnknown
from kvapp.testing import SimCluster, SimLoop, run
from raftlib.testing.linearizability import Operation
from tests.kvapp.test_cluster_sim import KEYS, Seen, _seen, assert_linearizable, nemesis, settle

FAILURES = (OutcomeUnknown, ClientError, EtcdError, KvappError, TimeoutError)


class Recorder:
    """One AsyncClient's operations, appended to the shared history."""

    def __init__(self, n: int, client: AsyncClient, history: list[Operation], seed: int) -> None:
        self.n = n
        self.client = client
        self.history = history
        self.rng = random.Random(seed)
        self.counter = itertools.count()
        self.done = 0

    async def run(self, loop: asyncio.AbstractEventLoop, until: float) -> None:
        while loop.time() < until:
            await asyncio.sleep(self.rng.uniform(0.001, 0.03))
            key = self.rng.choice(KEYS)
            call = loop.time()
            if self.rng.random() < 0.5:
                value = f"{self.n}-{next(self.counter)}".encode()
                try:
                    await self.client.put(key, value)
                except FAILURES:
                    ret = None  # it may or may not have been applied
                else:
                    ret = loop.time()
                    self.done += 1
                self.history.append(Operation(self.n, ("put", key, value), None, call, ret))
            else:
                try:
                    got = await self.client.get(key)
                except FAILURES:
                    continue
                self.done += 1
                value_seen = got.kvs[0].value if got.kvs else None
                self.history.append(Operation(self.n, ("get", key), value_seen, call, loop.time()))


class LeaseHolder:
    """Holds a lease through the client's background keep-alive, then lets it go.

    A successful renewal sent at ``s`` and acknowledged by ``r`` keeps the lease until at
    least ``s + ttl``: a read called after ``r`` and answered before ``s + ttl`` must still find
    the leased key. Once let go, the key must be gone by the end.
    """

    def __init__(self, client: AsyncClient, key: bytes) -> None:
        self.client = client
        self.key = key
        self.renewals: list[tuple[float, float]] = []  # (sent, acknowledged by)
        self.misses: list[tuple[float, float]] = []  # reads that found the key gone
        self.ttl = 0
        self.held = False

    async def run(self, loop: asyncio.AbstractEventLoop, let_go: float, until: float) -> None:
        keep: KeepAlive | None = None
        while keep is None and loop.time() < let_go:
            try:
                grant = await self.client.lease_grant(3)
                await self.client.put(self.key, b"held", lease=grant.id)
                keep = await self.client.keep_alive(grant.id)
            except FAILURES:
                await asyncio.sleep(0.1)
                continue
            self.held, self.ttl = True, grant.ttl
        if keep is None:
            return

        async def sample(keep: KeepAlive) -> None:  # each renewal, as soon as it is known
            seen = keep.last_renewal
            self.renewals.append((seen, loop.time()))
            while True:
                await asyncio.sleep(0.01)
                if keep.last_renewal != seen:
                    seen = keep.last_renewal
                    self.renewals.append((seen, loop.time()))

        sampler = asyncio.create_task(sample(keep))
        while loop.time() < until:
            await asyncio.sleep(0.02)
            if loop.time() >= let_go and keep.alive:
                await keep.stop()
            call = loop.time()
            try:
                got = await self.client.get(self.key)
            except FAILURES:
                continue
            if not got.kvs:
                self.misses.append((call, loop.time()))
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)

    def violations(self) -> list[str]:
        return [
            f"{self.key!r} gone in a read [{c:.3f}, {t:.3f}] after a renewal sent at {s:.3f}"
            for s, r in self.renewals
            for c, t in self.misses
            if r <= c and t < s + self.ttl
        ]


async def drain(watch: Watch, seen: list[Seen], until_revision: int, loop: SimLoop) -> None:
    deadline = loop.time() + 20.0
    while (not seen or seen[-1][0] < until_revision) and loop.time() < deadline:
        try:
            async with asyncio.timeout(0.5):
                event = await anext(watch)
        except TimeoutError:
            continue
        seen += _seen([event])


def simulate(seed: int, seconds: float = 15.0) -> tuple[list[Operation], list[str], int]:
    """One seeded run; its history, its faults, and how often the client's watch resumed."""
    history: list[Operation] = []
    faults: list[str] = []
    resumes: list[int] = []

    async def main(cluster: SimCluster) -> None:
        loop = cluster.loop
        rng = random.Random(seed)

        def client(n: int) -> AsyncClient:
            return cluster.client(n, rng)

        clients = [client(n) for n in range(3)]
        watching = client(3)
        watch = await watching.watch(b"\0", b"\0", start_revision=1)
        seen: list[Seen] = []

        async def follow() -> None:
            async for event in watch:
                seen.extend(_seen([event]))

        follower = asyncio.create_task(follow())
        until = loop.time() + seconds
        holders = [LeaseHolder(client(4 + n), f"lease/{n}".encode()) for n in range(2)]
        lets_go = [loop.time() + rng.uniform(2.0, seconds / 2) for _ in holders]
        holding = [
            asyncio.create_task(h.run(loop, t, until))
            for h, t in zip(holders, lets_go, strict=True)
        ]
        recorders = [Recorder(n, c, history, rng.randrange(2**32)) for n, c in enumerate(clients)]
        tasks = [asyncio.create_task(r.run(loop, until)) for r in recorders]
        faults.extend(await nemesis(cluster, random.Random(rng.random()), until))
        await asyncio.gather(*tasks, *holding)
        await cluster.start_missing()
        await settle(cluster)
        member = next(iter(cluster.members.values()))
        revision = member.kv.store.revision
        for _ in range(2000):
            if seen and seen[-1][0] >= revision:
                break
            await asyncio.sleep(0.01)
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        resumes.append(watch.resumes)
        everything_watch = await watching.watch(b"\0", b"\0", start_revision=1)
        everything: list[Seen] = []
        await drain(everything_watch, everything, revision, loop)
        assert everything, "the final watch saw nothing"
        assert everything[-1][0] == revision, (everything[-1:], revision)
        assert seen == everything
        assert sum(r.done for r in recorders) > 150, [r.done for r in recorders]
        for h in holders:
            assert h.held, f"{h.key!r}: no lease was ever granted"
            assert h.renewals, f"{h.key!r}: never renewed"
            assert h.misses, f"{h.key!r}: never seen gone"  # so the check below had reads
            assert h.violations() == []
            got = await watching.get(h.key)
            assert not got.kvs, f"{h.key!r} still there after its lease was let go"
        await asyncio.sleep(1.5)  # a background sync of every client's list, in virtual time
        voters = {f"{i.name}.sim" for i in member.member_list() if i.name and not i.is_learner}
        everyone = [*clients, watching, *(h.client for h in holders)]
        for c in everyone:
            hosts = {e.removeprefix("http://").partition(":")[0] for e in c.endpoints}
            assert hosts == voters, (c.endpoints, voters)
        for c in everyone:
            await c.close()

    run(main, seed=seed)
    return history, faults, resumes[0]


@pytest.mark.parametrize("seed", range(3))
def test_clients_under_faults_see_a_linearizable_history_and_an_exact_watch(seed: int) -> None:
    history, faults, resumes = simulate(seed)
    assert resumes >= 1, faults  # the watch really failed over
    assert_linearizable(history)
