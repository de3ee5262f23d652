"""The client's per-attempt timeouts (kvapp.client.deadlines): asyncio.timeout's semantics on one
loop timer, and AsyncClient's retry loop using them."""

from __future__ import annotations

import asyncio

import pytest

from kvapp.client import AsyncClient
from kvapp.client.deadlines import Deadlines
from tests.kvapp.test_client import run
from tests.kvapp.test_client_window import ENDPOINT, FakeConnector, Member, settle


async def timed(deadlines: Deadlines, work: asyncio.Future[str]) -> str:
    """``work``'s result, under one timed attempt (as AsyncClient._retry uses them)."""
    attempt = deadlines.start()
    try:
        try:
            return await work
        except asyncio.CancelledError:
            if deadlines.end(attempt):
                raise TimeoutError from None
            raise
    finally:
        deadlines.end(attempt)


@run()
async def test_attempts_past_their_deadline_time_out_in_order_and_the_others_finish() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.05)
    slow = [loop.create_future() for _ in range(3)]
    first = [asyncio.create_task(timed(deadlines, f)) for f in slow]
    await asyncio.sleep(0.03)
    quick = loop.create_future()
    second = asyncio.create_task(timed(deadlines, quick))
    await asyncio.sleep(0.03)  # past the first three deadlines, not the fourth
    for t in first:
        with pytest.raises(TimeoutError):
            await t
    assert not second.done()
    quick.set_result("ok")
    assert await second == "ok"
    assert second.cancelling() == 0
    assert len(deadlines) == 0


@run()
async def test_a_task_whose_attempt_timed_out_is_not_left_cancelled() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.01)

    async def time_out_then_carry_on() -> int:
        with pytest.raises(TimeoutError):
            await timed(deadlines, loop.create_future())
        await asyncio.sleep(0.02)  # a task still marked cancelled would be cancelled here
        return asyncio.current_task().cancelling()  # type: ignore[union-attr]

    assert await asyncio.create_task(time_out_then_carry_on()) == 0


@run()
async def test_an_attempt_that_finishes_in_time_leaves_its_task_uncancelled() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.02)
    work = loop.create_future()
    loop.call_later(0.005, work.set_result, "done")
    assert await timed(deadlines, work) == "done"
    await asyncio.sleep(0.04)  # past the deadline: nothing may fire at this task now
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)


@run()
async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(10.0)
    task = asyncio.create_task(timed(deadlines, loop.create_future()))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


@run()
async def test_a_cancellation_from_outside_at_the_deadline_is_not_swallowed() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.01)
    task = asyncio.create_task(timed(deadlines, loop.create_future()))
    await settle()
    task.cancel()  # from outside, and the deadline fires before the task runs again
    await asyncio.sleep(0.03)
    with pytest.raises(asyncio.CancelledError):
        await task


@run()
async def test_finished_attempts_do_not_pile_up_behind_the_timer() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(10.0)
    for _ in range(1000):
        work = loop.create_future()
        work.set_result("x")
        await timed(deadlines, work)
    assert len(deadlines) == 0


def test_deadlines_refuse_a_timeout_below_zero_or_not_a_number() -> None:
    for bad in (-1.0, -1e-9, float("nan")):
        with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
            Deadlines(bad)


@run()
async def test_a_zero_timeout_times_every_attempt_out_at_once() -> None:
    deadlines = Deadlines(0)
    with pytest.raises(TimeoutError):
        await timed(deadlines, asyncio.get_running_loop().create_future())


@run()
async def test_a_write_attempt_past_its_deadline_is_retried_under_the_same_id() -> None:
    member = Member(window=8)
    connector = FakeConnector(member)
    client = AsyncClient(
        [ENDPOINT],
        connector=connector,
        retry_backoff=0.001,
        writes_to_leader=False,
        request_timeout=0.05,
    )
    async with client:
        await client.put(b"a", b"1")
        cid = connector.client_ids[0]
        member.hold(cid, 2)  # the next write's first attempt never answers
        resp = await client.put(b"b", b"2")
        assert member.ids(cid) == [1, 2, 2], "timed out once, then retried with the same id"
        assert resp.revision == 3, "applied once"
