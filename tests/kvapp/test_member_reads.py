"""kvapp.node.Member: linearizable reads share ReadIndex rounds, a bounded number at a time.

In-process 3-member clusters as in test_member.py, with the member's ``node.read_index``
wrapped so that the test sees when each round is issued and decides when it ends.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from kvapp.mvcc.types import PutRequest, RangeRequest
from kvapp.node import _READ_ROUNDS, Member
from tests.kvapp.test_client import eventually
from tests.kvapp.test_member import aio, leader_of, start_cluster, stop_all


class Rounds:
    """Wraps ``m.node.read_index``: logs each call; a held round ends only when released."""

    def __init__(self, m: Member) -> None:
        self.log: list[str] = []
        self.issued = 0
        self.hold = False
        self._gates: list[asyncio.Event] = []
        read_index = m.node.read_index

        async def wrapped(**kw: Any) -> int:
            self.issued += 1
            self.log.append(f"round {self.issued}")
            if self.hold:
                gate = asyncio.Event()
                self._gates.append(gate)
                await gate.wait()
            return await read_index(**kw)

        m.node.read_index = wrapped  # type: ignore[method-assign]

    def release(self) -> None:
        self.hold = False
        gates, self._gates = self._gates, []
        for g in gates:
            g.set()


def issued(rounds: Rounds, n: int) -> bool:
    return rounds.issued == n


async def read(m: Member, rounds: Rounds, name: str) -> None:
    rounds.log.append(f"{name} arrives")
    await m.range(RangeRequest(b"k"))
    rounds.log.append(f"{name} served")


@aio
async def test_reads_arriving_together_share_one_round() -> None:
    _, members, _ = await start_cluster()
    try:
        await members[0].write(PutRequest(b"k", b"v"))
        for m in (leader_of(members), next(m for m in members if m is not leader_of(members))):
            rounds = Rounds(m)
            await asyncio.gather(*(read(m, rounds, f"r{i}") for i in range(20)))
            assert rounds.issued == 1, rounds.log
    finally:
        await stop_all(members)


@aio
async def test_a_read_arriving_during_a_round_gets_a_later_round_without_waiting_for_it() -> None:
    _, members, _ = await start_cluster()
    try:
        m = next(m for m in members if m is not leader_of(members))
        await m.write(PutRequest(b"k", b"v"))
        rounds = Rounds(m)
        rounds.hold = True
        first = asyncio.ensure_future(read(m, rounds, "a"))
        await eventually(lambda: rounds.issued == 1, "the first round was issued")
        rounds.hold = False  # the rounds issued from now on end by themselves
        await asyncio.wait_for(read(m, rounds, "b"), 5)
        assert not first.done(), "b's round ended only once a's did"
        log = rounds.log
        assert log.index("b arrives") < log.index("round 2") < log.index("b served"), log
        rounds.release()
        await asyncio.wait_for(first, 5)
    finally:
        await stop_all(members)


@aio
async def test_reads_beyond_the_rounds_in_flight_wait_for_a_round_issued_after_them() -> None:
    _, members, _ = await start_cluster()
    try:
        m = leader_of(members)
        await m.write(PutRequest(b"k", b"v"))
        rounds = Rounds(m)
        rounds.hold = True
        held = []
        for i in range(1, _READ_ROUNDS + 1):
            held.append(asyncio.ensure_future(read(m, rounds, f"held{i}")))
            await eventually(functools.partial(issued, rounds, i), f"round {i} was issued")
        late = [asyncio.ensure_future(read(m, rounds, f"late{i}")) for i in range(5)]
        await asyncio.sleep(0.05)
        assert rounds.issued == _READ_ROUNDS, f"more than {_READ_ROUNDS} rounds: {rounds.log}"
        assert not any(t.done() for t in held + late)
        rounds.release()
        await asyncio.wait_for(asyncio.gather(*held, *late), 5)
        log = rounds.log
        assert rounds.issued == _READ_ROUNDS + 1, f"the late reads share one round: {log}"
        later = log.index(f"round {_READ_ROUNDS + 1}")
        assert all(
            log.index(f"late{i} arrives") < later < log.index(f"late{i} served") for i in range(5)
        ), log
    finally:
        await stop_all(members)


@aio
async def test_a_restarted_member_serves_serializable_reads_only_after_replaying_its_log() -> None:
    """etcd#3879: a restarted member must not answer local reads from the state it had before
    applying the entries it had already committed. Right after a restart the member has
    applied almost nothing; its first serializable read still sees every write."""
    hub, (m,), clock = await start_cluster(1, snapshot_count=1_000_000)
    for i in range(200):
        await m.write(PutRequest(b"k%03d" % i, b"v"))
    await m.stop(transfer=False)
    again = Member(m.config, m._storage, hub.links(m.id), clock=clock)
    hub.members[m.id] = again
    await again.start()
    try:
        read = RangeRequest(b"k", b"l", serializable=True, count_only=True)
        assert again.range_now(read).count < 200, "replayed before start() returned"
        assert again.read_barrier(read) is not None
        assert (await again.range(read)).count == 200
    finally:
        await again.stop(transfer=False)
