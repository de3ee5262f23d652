"""The lock and election recipes under simulation: fenced writes stay mutually exclusive
through faults, and observers never see leadership go backwards.

Workers on kvapp's own client (:mod:`tests.kvapp.test_client_sim`'s simulated cluster: lost
messages, partitions, power losses, full disks, member replacements) take turns holding one
:class:`~kvapp.recipes.AsyncLock`. A holder reads a counter and writes it back plus one with
:meth:`~kvapp.recipes.AsyncLock.fenced_put`. Sessions expire under the faults, so holders lose
the lock without knowing, and one worker stalls now and then, its lease not renewed (as a
process paused past its TTL), so that its lock goes to another; fencing must refuse their
writes. If two holders' fenced writes ever
both got through after reading the same value, two successes would write the same number: so
the numbers successful fenced writes wrote must all differ, and the counter must end between
their count and their count plus the writes whose outcome stayed unknown.

The election runs the same way (leaders campaign, proclaim, write under
:meth:`~kvapp.recipes.AsyncElection.fenced_txn`, resign), watched by an observer: the leader is
the oldest candidate key, so the create revisions it reports may never go down, and within one
leader the proclamations (mod revisions) only go up, across the observer's own restarts too.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable

import pytest

from kvapp.client import AsyncClient
from kvapp.mvcc.types import PutRequest
from kvapp.recipes import AsyncElection, AsyncLock, AsyncSession
from kvapp.recipes.errors import LockLost, RecipeError
from kvapp.service import OutcomeUnknown
from kvapp.testing import SimCluster, run
from tests.kvapp.test_client_sim import FAILURES
from tests.kvapp.test_cluster_sim import nemesis, settle

COUNTER = b"counter"


class Worker:
    """Takes the lock in turns; under it, adds one to the counter with a fenced write."""

    def __init__(self, client: AsyncClient, rng: random.Random, *, stalls: bool) -> None:
        self.client = client
        self.rng = rng
        self.stalls = stalls  # no keep-alive, and now and then work longer than the TTL
        self.wrote: list[int] = []  # the numbers its successful fenced writes wrote
        self.unknown = 0
        self.refused = 0

    async def run(self, loop: asyncio.AbstractEventLoop, until: float) -> None:
        while loop.time() < until:
            try:
                async with AsyncSession(self.client, ttl=2, renew=not self.stalls) as session:
                    while loop.time() < until and session.alive:
                        await self._turn(session)
            except (*FAILURES, RecipeError):
                await asyncio.sleep(self.rng.uniform(0.05, 0.3))

    async def _turn(self, session: AsyncSession) -> None:
        lock = AsyncLock(self.client, b"job", session)
        await lock.acquire(timeout=3)
        try:
            await self._work(lambda n: lock.fenced_put(COUNTER, b"%d" % n))
        finally:
            await lock.release()

    async def _work(self, fenced_write: Callable[[int], Awaitable[object]]) -> None:
        """Read the counter, work (a stalling worker sometimes past its TTL), write it + 1."""
        got = await self.client.get(COUNTER)
        n = int(got.kvs[0].value) if got.kvs else 0
        stall = self.stalls and self.rng.random() < 0.2
        await asyncio.sleep(self.rng.uniform(1.0, 3.0) if stall else self.rng.uniform(0, 0.05))
        try:
            await fenced_write(n + 1)
        except LockLost:
            self.refused += 1
        except OutcomeUnknown:
            self.unknown += 1
        else:
            self.wrote.append(n + 1)


class Candidate(Worker):
    """A worker whose turns are terms: campaign, proclaim, the fenced write, resign."""

    async def _turn(self, session: AsyncSession) -> None:
        election = AsyncElection(self.client, b"office", session)
        await election.campaign(b"elected", timeout=3)
        try:
            await election.proclaim(b"at work")
            await self._work(lambda n: election.fenced_txn([PutRequest(COUNTER, b"%d" % n)]))
        finally:
            await election.resign()


class Observer:
    """Follows the election's leader, starting a new observer whenever one fails."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.seen: list[tuple[int, int, bytes]] = []  # (create, mod revision, value) reported
        self.restarts = 0

    async def run(self, loop: asyncio.AbstractEventLoop, until: float) -> None:
        async with AsyncSession(self.client, ttl=5) as session:
            election = AsyncElection(self.client, b"office", session)
            while loop.time() < until:
                try:
                    async with asyncio.timeout(until - loop.time()), election.observe() as leaders:
                        async for kv in leaders:
                            self.seen.append((kv.create_revision, kv.mod_revision, kv.value))
                except TimeoutError:
                    return
                except (*FAILURES, RecipeError):
                    self.restarts += 1
                    await asyncio.sleep(0.1)


def simulate(
    seed: int, seconds: float = 20.0, *, election: bool = False
) -> tuple[list[Worker], int, list[str], list[Observer]]:
    """One seeded run: the workers, the counter's final value, the faults, the observers."""
    out: list[int] = []
    faults: list[str] = []
    workers: list[Worker] = []
    observers: list[Observer] = []

    async def main(cluster: SimCluster) -> None:
        loop = cluster.loop
        rng = random.Random(seed)
        clients = [cluster.client(n, rng) for n in range(3)]
        kind = Candidate if election else Worker
        workers.extend(
            kind(c, random.Random(rng.random()), stalls=n == 0) for n, c in enumerate(clients)
        )
        until = loop.time() + seconds
        tasks = [asyncio.create_task(w.run(loop, until)) for w in workers]
        if election:
            observers.append(Observer(cluster.client(3)))
            tasks.append(asyncio.create_task(observers[0].run(loop, until)))
        faults.extend(await nemesis(cluster, random.Random(rng.random()), until))
        await asyncio.gather(*tasks)
        await cluster.start_missing()
        await settle(cluster)
        got = await clients[0].get(COUNTER)
        out.append(int(got.kvs[0].value) if got.kvs else 0)
        for c in clients + [o.client for o in observers]:
            await c.close()

    run(main, seed=seed)
    return workers, out[0], faults, observers


def _check_fenced(workers: list[Worker], final: int, faults: list[str]) -> None:
    wrote = sorted(n for w in workers for n in w.wrote)
    unknown = sum(w.unknown for w in workers)
    assert len(set(wrote)) == len(wrote), f"two holders wrote the same number: {wrote}"
    assert len(wrote) <= final <= len(wrote) + unknown, (final, len(wrote), unknown)
    assert final >= wrote[-1]
    assert len(wrote) >= 20, (wrote, faults)  # the lock was really taken in turns
    assert sum(w.refused for w in workers) >= 1, "fencing was never put to the test"


@pytest.mark.parametrize("seed", range(3))
def test_fenced_writes_under_a_lock_never_overlap(seed: int) -> None:
    workers, final, faults, _ = simulate(seed)
    _check_fenced(workers, final, faults)


@pytest.mark.parametrize("seed", range(2))
def test_leaders_fenced_writes_never_overlap_and_observers_never_go_back(seed: int) -> None:
    workers, final, faults, (observer,) = simulate(100 + seed, election=True)
    _check_fenced(workers, final, faults)
    seen = observer.seen
    assert len({c for c, _, _ in seen}) >= 10, seen  # many terms were observed
    assert all(a[:2] < b[:2] for a, b in itertools.pairwise(seen)), seen
