"""kvapp.testing's fault calls do what they say, seen from a client."""

from __future__ import annotations

import asyncio

import pytest

from kvapp.client import Unavailable
from kvapp.errors import NoSpaceError
from kvapp.testing import SimCluster, run


def test_a_full_disk_refuses_writes_cluster_wide_until_it_is_freed() -> None:
    async def scenario(cluster: SimCluster) -> None:
        client = cluster.client()
        await client.put(b"k", b"before")
        victim = sorted(cluster.members)[0]
        cluster.fill_disk(victim)
        for _ in range(200):  # the member notices within its next disk reading
            try:
                await client.put(b"k", b"during")
            except NoSpaceError:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("writes were never refused")
        assert (await client.get(b"k")).kvs  # reads go on
        cluster.free_disk(victim)
        for _ in range(200):
            try:
                await client.put(b"k", b"after")
                break
            except NoSpaceError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("writes never came back")
        await client.close()

    run(scenario, seed=3)


def test_a_member_cut_off_from_everyone_is_not_reachable_until_healed() -> None:
    async def scenario(cluster: SimCluster) -> None:
        for member_id in cluster.members:
            cluster.isolate(member_id)
        client = cluster.client()
        with pytest.raises(Unavailable):
            await client.get(b"k")
        cluster.heal()
        assert not cluster.net.isolated
        assert (await client.get(b"k")).kvs == ()
        await client.close()
        with pytest.raises(ValueError, match="between 0 and 1"):
            cluster.lose_messages(1.5)
        with pytest.raises(ValueError, match="negative"):
            cluster.fill_disk(next(iter(cluster.members)), room=-1)

    run(scenario, seed=4)
