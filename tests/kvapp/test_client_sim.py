"""kvapp's own client, under simulation: leader discovery, failover, retries and watch resumption.

The cluster of :mod:`tests.kvapp.test_cluster_sim` (virtual time, a lossy network, power
losses, member replacements), but the clients are :class:`~kvapp.client.AsyncClient` s speaking
the native protocol over in-memory streams (:class:`~tests.kvapp.simcluster.SimConnector`):
what they see is what a user's program sees. Their puts (retried by the client under its
request ids) and linearizable gets must form a linearizable history, and a client watch, which
the client re-creates on another member whenever its connection goes, must deliver the
cluster's history exactly once, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from kvapp.client import AsyncClient, Watch
from kvapp.client.errors import ClientError
from kvapp.errors import EtcdError, KvappError
from kvapp.service import OutcomeUnknown
from raftlib.testing.linearizability import Operation, check_linearizability, register_model
from tests.kvapp.simcluster import SimCluster, SimConnector, SimLoop
from tests.kvapp.test_cluster_sim import FAULTS, KEYS, Seen, _seen, nemesis, settle

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

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SimLoop)
        rng = random.Random(seed)
        cluster = SimCluster(loop, seed)
        await cluster.start_all()

        def client(n: int) -> AsyncClient:
            endpoints = cluster.endpoints[n % 3 :] + cluster.endpoints[: n % 3]
            return AsyncClient(
                endpoints,
                connector=SimConnector(cluster),
                connect_timeout=0.5,
                request_timeout=1.0,
                max_attempts=4,
                client_id=rng.randrange(1, 2**63),
                rng=random.Random(rng.random()),
            )

        clients = [client(n) for n in range(3)]
        watching = client(3)
        watch = await watching.watch(b"\0", b"\0", start_revision=1)
        seen: list[Seen] = []

        async def follow() -> None:
            async for event in watch:
                seen.extend(_seen([event]))

        follower = asyncio.create_task(follow())
        until = loop.time() + seconds
        recorders = [Recorder(n, c, history, rng.randrange(2**32)) for n, c in enumerate(clients)]
        tasks = [asyncio.create_task(r.run(loop, until)) for r in recorders]
        # No member replacements: a client knows the endpoints it was given, and those
        # members may all be gone by the end (etcd's clients likewise).
        kinds = [f for f in FAULTS if f != "replace"]
        faults.extend(await nemesis(cluster, random.Random(rng.random()), until, kinds))
        await asyncio.gather(*tasks)
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
        for c in [*clients, watching]:
            await c.close()
        await cluster.stop_all()

    with asyncio.Runner(loop_factory=SimLoop) as runner:
        runner.run(main())
    return history, faults, resumes[0]


@pytest.mark.parametrize("seed", range(3))
def test_clients_under_faults_see_a_linearizable_history_and_an_exact_watch(seed: int) -> None:
    history, faults, resumes = simulate(seed)
    assert resumes >= 1, faults  # the watch really failed over
    ops = [
        Operation(o.client, o.input, o.output, o.call, o.ret, id=i) for i, o in enumerate(history)
    ]
    result = check_linearizability(ops, register_model())
    assert result.ok is True, result.explain()
