"""The lock recipe under simulation: fenced writes stay mutually exclusive through faults.

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
"""

from __future__ import annotations

import asyncio
import random

import pytest

from kvapp.client import AsyncClient
from kvapp.recipes import AsyncLock, AsyncSession
from kvapp.recipes.errors import LockLost, RecipeError
from kvapp.service import OutcomeUnknown
from kvapp.testing import SimCluster, SimLoop
from tests.kvapp.test_client_sim import FAILURES
from tests.kvapp.test_cluster_sim import nemesis, settle

COUNTER = b"counter"


class Worker:
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
                    lock = AsyncLock(self.client, b"job", session)
                    while loop.time() < until and session.alive:
                        await self._turn(lock)
            except (*FAILURES, RecipeError):
                await asyncio.sleep(self.rng.uniform(0.05, 0.3))

    async def _turn(self, lock: AsyncLock) -> None:
        await lock.acquire(timeout=3)
        try:
            got = await self.client.get(COUNTER)
            n = int(got.kvs[0].value) if got.kvs else 0
            stall = self.stalls and self.rng.random() < 0.2
            await asyncio.sleep(self.rng.uniform(1.0, 3.0) if stall else self.rng.uniform(0, 0.05))
            try:
                await lock.fenced_put(COUNTER, b"%d" % (n + 1))
            except LockLost:
                self.refused += 1
            except OutcomeUnknown:
                self.unknown += 1
            else:
                self.wrote.append(n + 1)
        finally:
            await lock.release()


def simulate(seed: int, seconds: float = 20.0) -> tuple[list[Worker], int, list[str]]:
    """One seeded run: the workers, the counter's final value, the faults."""
    out: list[int] = []
    faults: list[str] = []
    workers: list[Worker] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SimLoop)
        rng = random.Random(seed)
        cluster = SimCluster(loop, seed)
        await cluster.start_all()
        clients = [cluster.client(n, rng) for n in range(3)]
        workers.extend(
            Worker(c, random.Random(rng.random()), stalls=n == 0) for n, c in enumerate(clients)
        )
        until = loop.time() + seconds
        tasks = [asyncio.create_task(w.run(loop, until)) for w in workers]
        faults.extend(await nemesis(cluster, random.Random(rng.random()), until))
        await asyncio.gather(*tasks)
        await cluster.start_missing()
        await settle(cluster)
        got = await clients[0].get(COUNTER)
        out.append(int(got.kvs[0].value) if got.kvs else 0)
        for c in clients:
            await c.close()
        await cluster.stop_all()

    with asyncio.Runner(loop_factory=SimLoop) as runner:
        runner.run(main())
    return workers, out[0], faults


@pytest.mark.parametrize("seed", range(3))
def test_fenced_writes_under_a_lock_never_overlap(seed: int) -> None:
    workers, final, faults = simulate(seed)
    wrote = sorted(n for w in workers for n in w.wrote)
    unknown = sum(w.unknown for w in workers)
    assert len(set(wrote)) == len(wrote), f"two holders wrote the same number: {wrote}"
    assert len(wrote) <= final <= len(wrote) + unknown, (final, len(wrote), unknown)
    assert final >= wrote[-1]
    assert len(wrote) >= 20, (wrote, faults)  # the lock was really taken in turns
    assert sum(w.refused for w in workers) >= 1, "fencing was never put to the test"
