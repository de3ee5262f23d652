"""An aetcd session against an etcd v3 endpoint: ``python aetcd_session.py HOST:PORT``.

Run in its own process by ``test_aetcd.py``: aetcd brings its own generated etcd protobuf
modules, which register the same names as kvapp's in protobuf's default pool. It checks what
it gets with ``assert`` and prints ``aetcd session ok`` at the end; any failure ends it with a
traceback and a non-zero status. Only for an empty cluster (it expects revision 1 at start).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable

import aetcd  # type: ignore[import-untyped]
import aetcd.exceptions  # type: ignore[import-untyped]
import aetcd.rtypes  # type: ignore[import-untyped]


async def refused(call: Awaitable[object], text: str) -> None:
    """``call`` fails with aetcd's ClientError carrying ``text`` (etcd's error message)."""
    try:
        await call
    except aetcd.exceptions.ClientError as e:
        error = str(e)
    else:
        raise AssertionError(f"accepted; wanted {text!r}")
    assert text in error, error


async def session(host: str, port: int) -> None:
    async with aetcd.Client(host=host, port=port, timeout=10) as c:
        # put / get / delete
        put = await c.put(b"a/1", b"one")
        assert put.header.revision == 2, put
        again = await c.put(b"a/1", b"uno", prev_kv=True)
        assert again.prev_kv.value == b"one", again
        await c.put(b"a/2", b"two")
        got = await c.get(b"a/1")
        assert (got.value, got.version, got.create_revision) == (b"uno", 2, 2), got
        assert await c.get(b"missing") is None
        listed = await c.get_prefix(b"a/")
        assert [(kv.key, kv.value) for kv in listed] == [(b"a/1", b"uno"), (b"a/2", b"two")]
        gone = await c.delete(b"a/2", prev_kv=True)
        assert gone is not None
        assert (gone.deleted, gone.prev_kv.value) == (1, b"two"), gone
        assert await c.delete(b"a/2") is None

        # txn: both branches, with a range inside
        tx = c.transactions
        ok, responses = await c.transaction(
            compare=[tx.value(b"a/1") == b"uno", tx.version(b"a/1") > 0],
            success=[tx.put(b"a/1", b"txn"), tx.get(b"a/1")],
            failure=[tx.put(b"a/1", b"failed")],
        )
        assert ok, responses
        assert responses[1][0][0] == b"txn", responses  # operations apply in order
        ok, _ = await c.transaction(
            compare=[tx.value(b"a/1") == b"uno"],
            success=[tx.put(b"a/1", b"wrong")],
            failure=[tx.put(b"a/1", b"failed")],
        )
        assert not ok
        assert (await c.get(b"a/1")).value == b"failed"
        assert await c.replace(b"a/1", b"failed", b"replaced")
        assert not await c.replace(b"a/1", b"failed", b"again")

        # watch: history from a revision, then live events, then cancel
        start = (await c.get(b"a/1")).mod_revision
        watch = await c.watch_prefix(b"w/", start_revision=start, prev_kv=True)
        events: list[aetcd.rtypes.Event] = []

        async def collect() -> None:
            async for event in watch:
                events.append(event)
                if len(events) == 3:
                    return

        collector = asyncio.create_task(collect())
        await c.put(b"w/x", b"1")
        await c.put(b"w/x", b"2")
        await c.delete(b"w/x")
        await asyncio.wait_for(collector, 10)
        await watch.cancel()
        kinds = [(e.kind, e.kv.key, e.kv.value) for e in events]
        assert kinds == [
            (aetcd.rtypes.EventKind.PUT, b"w/x", b"1"),
            (aetcd.rtypes.EventKind.PUT, b"w/x", b"2"),
            (aetcd.rtypes.EventKind.DELETE, b"w/x", b""),
        ], kinds
        assert events[1].prev_kv.value == b"1", events[1]
        once = asyncio.create_task(c.watch_once(b"w/once", timeout=10))
        await asyncio.sleep(0.5)
        await c.put(b"w/once", b"!")
        assert (await once).kv.value == b"!"

        # leases: grant, attach, refresh, time to live, revoke (keys go with it)
        lease = await c.lease(30)
        await c.put(b"leased", b"x", lease=lease)
        refreshed = await lease.refresh()
        assert refreshed.TTL == 30, refreshed
        assert await lease.granted_ttl() == 30
        assert 0 < await lease.remaining_ttl() <= 30
        assert await lease.keys() == [b"leased"]
        await lease.revoke()
        assert await c.get(b"leased") is None
        assert await lease.remaining_ttl() == -1
        await refused(c.revoke_lease(lease.id), "requested lease not found")

        # cluster and maintenance
        members = [m async for m in c.members()]
        assert len(members) == 3, members
        assert all(m.client_urls for m in members), members
        status = await c.status()
        assert status.leader is not None
        assert [a async for a in c.list_alarms()] == []
        raised = await c.create_alarm()
        assert [(a.alarm_type, a.member_id) for a in raised] == [(1, 0)], raised
        await refused(c.put(b"full", b"x"), "database space exceeded")
        assert len(await c.disarm_alarm()) == 1
        await c.put(b"full", b"x")

        # compaction, then the compacted revision is gone
        rev = (await c.put(b"last", b"x")).header.revision
        await c.compact(rev)
        await refused(c.compact(rev - 1), "required revision has been compacted")
    print("aetcd session ok")


if __name__ == "__main__":
    host, _, port = sys.argv[1].rpartition(":")
    asyncio.run(session(host, int(port)))
