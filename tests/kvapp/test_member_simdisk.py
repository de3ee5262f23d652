"""Whole-cluster power loss: members whose disks are simulated lose only what was never acked.

Each member of a 3-member cluster keeps its Raft store on its own
:class:`~kvapp.storage.simfs.SimFileSystem` (its file layer, injected), with fsync on. Clients
write while, at a random moment, every disk loses power at once: each keeps what it synced plus
a random prefix of the rest. The members are restarted from those disks. Every write that was
acknowledged must be there, on every member, and the cluster must go on taking writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
from pathlib import Path

import pytest

from kvapp.mvcc.types import PutRequest, RangeRequest
from kvapp.node import Member
from kvapp.service import MemberInfo
from kvapp.storage import RaftStore
from kvapp.storage.simfs import SimFileSystem
from tests.kvapp.test_member import CLUSTER, Clock, Hub, aio, infos, make_member

DATA = Path("/data")
STORES: dict[Member, RaftStore] = {}
"""Each running member's store, which its owner (here, the test) closes after it stops."""


def open_store(fs: SimFileSystem, info: MemberInfo) -> RaftStore:
    return RaftStore.open(
        DATA,
        cluster_id=CLUSTER,
        member_id=info.id,
        segment_size=1 << 16,
        snapshot_in_file=True,  # as kvapp serve: snapshots are read back from their files
        fs=fs,
    )


def make(hub: Hub, info: MemberInfo, initial: list[MemberInfo], fs: SimFileSystem) -> Member:
    store = open_store(fs, info)
    m = make_member(
        hub,
        info,
        initial,
        Clock(),
        storage=store,
        disk_free=lambda: fs.free_bytes(DATA),
        snapshot_count=40,  # snapshots and log compaction happen during the run
        keep_entries=10,
    )
    STORES[m] = store
    return m


async def start(disks: list[SimFileSystem]) -> list[Member]:
    hub = Hub()
    initial = infos(len(disks))
    members = [make(hub, i, initial, d) for i, d in zip(initial, disks, strict=True)]
    for m in members:
        await m.start()
    await asyncio.wait_for(members[0].node.wait_leader(timeout=5), 6)
    return members


async def stop(members: list[Member]) -> None:
    """Stop ``members`` and close their stores (the store is its owner's to close)."""
    for m in members:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(m.stop(transfer=False), 5)
        with contextlib.suppress(OSError):  # a crashed disk refuses even a close
            STORES.pop(m).close()


async def everything_acked_is_on_every_member(
    members: list[Member], acked: dict[bytes, bytes]
) -> None:
    """Linearizable reads of every acknowledged key on every member; then one more write."""
    for key, value in acked.items():
        for m in members:
            got = await asyncio.wait_for(m.range(RangeRequest(key)), 5)
            assert [kv.value for kv in got.kvs] == [value], (key, m.config.name)
    await asyncio.wait_for(members[1].write(PutRequest(b"after", b"restart")), 5)
    got = await members[2].range(RangeRequest(b"after"))
    assert [kv.value for kv in got.kvs] == [b"restart"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_acknowledged_writes_survive_a_power_loss_of_every_member_at_once(seed: int) -> None:
    rng = random.Random(seed)

    @aio
    async def body() -> None:
        disks = [SimFileSystem() for _ in range(3)]
        members = await start(disks)
        acked: dict[bytes, bytes] = {}
        attempts = 0

        async def writer(w: int) -> None:
            nonlocal attempts
            for i in range(1000):
                key, value = f"w{w}/{i}".encode(), f"v{i}".encode()
                attempts += 1
                try:
                    await members[(w + i) % 3].write(PutRequest(key, value))
                except Exception:  # noqa: BLE001 - the power went: not acknowledged
                    return
                acked[key] = value

        writers = [asyncio.create_task(writer(w)) for w in range(4)]
        target = rng.randrange(60, 160)
        for _ in range(3000):
            if len(acked) >= target:
                break
            await asyncio.sleep(0.002)
        assert len(acked) >= target, f"only {len(acked)} writes acknowledged before the power loss"
        after = [d.crash(random.Random(rng.random())) for d in disks]
        lost_power_with = len(acked)
        for t in writers:
            t.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        await stop(members)
        assert attempts > lost_power_with  # some writes were in flight or refused

        members = await start(after)
        try:
            await everything_acked_is_on_every_member(members, acked)
        finally:
            await stop(members)
        members = []
        gc.collect()  # snapshot data held in files closes its descriptor when collected
        assert [d.open_fds() for d in after] == [0, 0, 0]
        assert [d.held_locks() for d in after] == [0, 0, 0]

    body()
