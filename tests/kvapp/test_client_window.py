"""The client's sliding window of write request ids, against a member's deduplication window.

A member (:mod:`kvapp.dedup`) remembers a client's results only for the ``window`` request ids
below the highest one it applied, and refuses a retry of an older id. So the client must never
send request id ``m`` before every id ``<= m - window`` has resolved, however long one write is
retried. These tests run :class:`AsyncClient` against an in-process member: a fake link that
applies writes through the real :class:`~kvapp.dedup.Applier` (so the member's window is the
real one) and whose write attempts a test can hold, then let through or cut.

Nothing here does I/O or waits on timers except the retry back-off, so "nothing more happens"
is checked by letting every ready task run (:func:`settle`), a fixed number of loop turns.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import cast

import pytest

from kvapp.client import AsyncClient, OutcomeUnknown
from kvapp.client.aio import _WriteIds, _WriteWindow
from kvapp.client.errors import LinkClosed
from kvapp.client.transport import WatchSink, WatchSpec, WatchStarted
from kvapp.dedup import Applier
from kvapp.errors import EtcdError
from kvapp.kvstate import KvState
from kvapp.lease import LeaseKeepAliveResponse, LeaseTimeToLiveResponse
from kvapp.mvcc.types import PutRequest, PutResponse, RangeRequest, RangeResponse
from kvapp.requests import Request, RequestIdExpiredError
from kvapp.service import MemberInfo, StatusInfo, WriteRequest, WriteResponse
from tests.kvapp.test_client import run

ENDPOINT = "member:1"


async def settle(turns: int = 100) -> None:
    """Let every ready task run until all wait on something the test controls."""
    for _ in range(turns):
        await asyncio.sleep(0)


class Member:
    """One in-process member applying writes through a real Applier, in arrival order.

    Attributes:
        sent: ``(client_id, request_id)`` of every write attempt, in arrival order.
        too_early: ``(client_id, m, i)`` whenever request id ``m`` arrived while id
            ``i <= m - window`` of the same client had not been answered yet.
    """

    def __init__(self, window: int, *, max_clients: int = 1 << 16) -> None:
        self.window = window
        self.applier = Applier(
            KvState(time.monotonic, grace=0.0), window=window, max_clients=max_clients
        )
        self.sent: list[tuple[int, int]] = []
        self.too_early: list[tuple[int, int, int]] = []
        self._index = 0
        self._answered: set[tuple[int, int]] = set()
        self._holds: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._hold_after: dict[tuple[int, int], bool] = {}

    def hold(
        self, client_id: int, request_id: int, *, applied: bool = False
    ) -> asyncio.Future[None]:
        """Hold the next attempt of this write until the returned future is resolved.

        The attempt is held before it applies, or after if ``applied``. ``set_result(None)``
        lets it go on; ``set_exception(e)`` ends the attempt with ``e`` instead.
        """
        future = asyncio.get_running_loop().create_future()
        self._holds[client_id, request_id] = future
        self._hold_after[client_id, request_id] = applied
        return future

    def ids(self, client_id: int) -> list[int]:
        """The request ids of the client's write attempts, in arrival order."""
        return [rid for (cid, rid) in self.sent if cid == client_id]

    async def write(self, client_id: int, request_id: int, request: WriteRequest) -> WriteResponse:
        self.sent.append((client_id, request_id))
        self.too_early.extend(
            (client_id, request_id, i)
            for i in range(1, request_id - self.window + 1)
            if (client_id, i) not in self._answered
        )
        key = (client_id, request_id)
        hold = self._holds.pop(key, None)
        if hold is not None and not self._hold_after.pop(key):
            await hold
            hold = None
        self._index += 1
        try:
            result = self.applier.apply(Request(client_id, request_id, request), self._index)
        except EtcdError:
            self._answered.add(key)
            raise
        if hold is not None:
            await hold
        self._answered.add(key)
        return cast("WriteResponse", result)


class FakeLink:
    """A :class:`~kvapp.client.transport.Link` straight into a :class:`Member` (writes only)."""

    def __init__(self, member: Member, client_id: int) -> None:
        self._member = member
        self._client_id = client_id
        self._closed = False

    @property
    def endpoint(self) -> str:
        return ENDPOINT

    @property
    def client_id(self) -> int:
        return self._client_id

    @property
    def member_id(self) -> int:
        return 1

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def raft_term(self) -> int:
        return 0

    async def write(self, request: WriteRequest, *, request_id: int) -> WriteResponse:
        if self._closed:
            raise LinkClosed(ENDPOINT, "closed", sent=False)
        return await self._member.write(self._client_id, request_id, request)

    async def range(self, request: RangeRequest) -> RangeResponse:
        raise NotImplementedError

    async def lease_keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        raise NotImplementedError

    async def lease_time_to_live(self, lease_id: int, *, keys: bool) -> LeaseTimeToLiveResponse:
        raise NotImplementedError

    async def leases(self) -> list[int]:
        raise NotImplementedError

    async def member_list(self) -> list[MemberInfo]:
        raise NotImplementedError

    async def member_add(self, peer_urls: tuple[str, ...], *, is_learner: bool) -> MemberInfo:
        raise NotImplementedError

    async def member_remove(self, member_id: int) -> None:
        raise NotImplementedError

    async def member_promote(self, member_id: int) -> None:
        raise NotImplementedError

    async def status(self) -> StatusInfo:
        raise NotImplementedError

    async def snapshot(self, sink: Callable[[bytes], object], *, linearizable: bool) -> int:
        raise NotImplementedError

    async def watch(self, spec: WatchSpec, sink: WatchSink) -> WatchStarted:
        raise NotImplementedError

    async def watch_cancel(self, watch_id: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        self._closed = True


class FakeConnector:
    def __init__(self, member: Member) -> None:
        self.member = member
        self.client_ids: list[int] = []

    async def connect(self, endpoint: str, *, client_id: int) -> FakeLink:
        self.client_ids.append(client_id)
        return FakeLink(self.member, client_id)


def client_for(member: Member, window: int) -> AsyncClient:
    return AsyncClient(
        [ENDPOINT],
        connector=FakeConnector(member),
        max_inflight_writes=window,
        retry_backoff=0.001,
        writes_to_leader=False,  # one fake member, which answers writes only
    )


def put(client: AsyncClient, n: int) -> asyncio.Task[PutResponse]:
    return asyncio.create_task(client.put(b"k%03d" % n, b"v"))


# -- the window on its own -----------------------------------------------------------------------


def rids(*ids: _WriteIds | None) -> list[int | None]:
    return [None if i is None else i.request_id for i in ids]


@run()
async def test_window_waiters_get_ids_in_arrival_order_once_the_lowest_id_is_released() -> None:
    w = _WriteWindow(7, 3)
    a, b, c = w.take(), w.take(), w.take()
    assert rids(a, b, c, w.take()) == [1, 2, 3, None]
    assert a is not None
    assert b is not None
    assert c is not None
    waiters = [asyncio.create_task(w.wait()) for _ in range(3)]
    await settle()
    w.release(c)
    w.release(b)
    await settle()
    assert not any(t.done() for t in waiters), "id 4 needs id 1 released, however many others"
    w.release(a)
    await settle()
    assert rids(*(t.result() for t in waiters)) == [4, 5, 6]
    assert w.take() is None


@run()
async def test_window_a_caller_cancelled_as_it_is_granted_an_id_gives_it_back() -> None:
    w = _WriteWindow(7, 1)
    a = w.take()
    assert a is not None
    first = asyncio.create_task(w.wait())
    second = asyncio.create_task(w.wait())
    await settle()
    w.release(a)  # grants id 2 to the first waiter, which has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await second).request_id == 3, "id 2 was given back"


@run()
async def test_window_reset_numbers_from_one_under_the_new_id_and_ignores_old_releases() -> None:
    w = _WriteWindow(7, 2)
    a, b = w.take(), w.take()
    assert a is not None
    assert b is not None
    waiter = asyncio.create_task(w.wait())
    await settle()
    w.reset(8)
    assert await waiter == _WriteIds(8, 1)
    w.release(a)
    w.release(b)
    assert w.take() == _WriteIds(8, 2)
    assert w.take() is None, "ids 1 and 2 of client 8 are out"


@pytest.mark.parametrize("seed", range(20))
def test_window_random_schedules_keep_ids_in_use_within_a_window(seed: int) -> None:
    """Takes, waits, releases in any order and cancellations never hand out an id ``m`` while
    an id ``<= m - size`` is in use, never hand out an id twice, and leave no waiter behind."""

    async def main() -> None:
        rng = random.Random(seed)
        size = rng.randint(1, 5)
        w = _WriteWindow(1, size)
        in_use: set[int] = set()
        issued: set[int] = set()
        waiters: list[asyncio.Task[_WriteIds]] = []

        def got(ids: _WriteIds) -> None:
            m = ids.request_id
            assert not [i for i in in_use if i <= m - size], (m, sorted(in_use))
            assert m not in issued
            issued.add(m)
            in_use.add(m)

        def collect() -> None:
            for t in [t for t in waiters if t.done()]:
                waiters.remove(t)
                if not t.cancelled():
                    got(t.result())

        for _ in range(400):
            op = rng.random()
            if op < 0.4:
                ids = w.take()
                if ids is None:
                    waiters.append(asyncio.create_task(w.wait()))
                else:
                    got(ids)
            elif op < 0.85 and in_use:
                m = rng.choice(sorted(in_use))
                in_use.discard(m)
                w.release(_WriteIds(1, m))
            elif waiters:
                rng.choice(waiters).cancel()
            await asyncio.sleep(0)
            collect()
        for _ in range(100):
            for m in sorted(in_use):
                in_use.discard(m)
                w.release(_WriteIds(1, m))
            await settle(5)
            collect()
        assert not waiters, "every waiter got an id once everything was released"
        assert len(issued) > 50

    asyncio.run(main())


# -- the client's writes against a member's window -----------------------------------------------


@run()
async def test_a_stalled_write_holds_back_ids_a_window_ahead_and_its_retry_succeeds() -> None:
    window = 8
    member = Member(window)
    async with client_for(member, window) as client:
        cid = client.client_id
        stalled = member.hold(cid, 1)
        puts = [put(client, i) for i in range(5 * window)]
        await settle()
        assert member.too_early == [], "ids sent while an id a window below was unanswered"
        assert member.ids(cid) == list(range(1, window + 1)), "id 9 waits for id 1"
        assert [t.done() for t in puts] == [False] + [True] * (window - 1) + [False] * 4 * window

        # The stalled write's connection is cut; its retry, under the same id, applies.
        stalled.set_exception(LinkClosed(ENDPOINT, "connection cut", sent=True))
        results = await asyncio.gather(*puts)

        assert client.client_id == cid, "no switch to a new client id"
        assert member.too_early == []
        ids = member.ids(cid)
        assert sorted(ids) == [1, *range(1, 5 * window + 1)], "id 1 retried once, no other"
        revisions = sorted(r.revision for r in results)
        assert revisions == list(range(2, 5 * window + 2)), "each write applied once"


@run()
async def test_a_write_whose_answer_was_lost_gets_its_first_result_after_later_writes() -> None:
    window = 4
    member = Member(window)
    async with client_for(member, window) as client:
        cid = client.client_id
        await asyncio.gather(*(put(client, i) for i in range(6)))  # ids 1..6
        lost = member.hold(cid, 7, applied=True)
        puts = [put(client, 7 + i) for i in range(4 * window)]
        await settle()
        assert member.ids(cid)[6:] == [7, 8, 9, 10], "id 11 waits for id 7"

        # Id 7 applied, but its answer is lost with the connection. Later writes completed
        # meanwhile, yet the member must still remember id 7's result when its retry arrives.
        lost.set_exception(LinkClosed(ENDPOINT, "connection cut", sent=True))
        results = await asyncio.gather(*puts)

        assert client.client_id == cid
        assert member.too_early == []
        assert member.ids(cid).count(7) == 2
        revisions = sorted(r.revision for r in results)
        assert revisions == list(range(8, 8 + 4 * window)), "id 7 applied once"


@run()
async def test_a_write_waiting_for_the_window_can_be_cancelled_and_takes_no_id() -> None:
    window = 2
    member = Member(window)
    async with client_for(member, window) as client:
        cid = client.client_id
        stalled = member.hold(cid, 1)
        first, second = put(client, 1), put(client, 2)
        waiting, behind = put(client, 3), put(client, 4)
        await settle()
        assert second.done()
        assert member.ids(cid) == [1, 2]
        assert not waiting.done()

        waiting.cancel()
        await settle()
        assert waiting.cancelled()
        stalled.set_result(None)
        await asyncio.gather(first, behind)
        assert member.ids(cid) == [1, 2, 3], "the cancelled write took no id"

        # Nothing leaked: a whole window of writes is in flight at once again.
        held = member.hold(cid, 4)
        more = [put(client, 5 + i) for i in range(window)]
        await settle()
        assert member.ids(cid) == [1, 2, 3, 4, 5]
        held.set_result(None)
        await asyncio.gather(*more)
        assert member.too_early == []


@run()
async def test_a_forgotten_session_moves_to_a_new_client_id_with_a_fresh_window() -> None:
    window = 4
    member = Member(window, max_clients=1)
    async with client_for(member, window) as client:
        old = client.client_id
        for i in range(6):
            await client.put(b"k%d" % i, b"v")  # ids 1..6
        await member.write(old + 1, 1, PutRequest(b"other", b"v"))  # evicts our session
        refused, renumbered = member.hold(old, 7), member.hold(old, 8)
        expired, unsent = put(client, 7), put(client, 8)
        await settle()
        assert member.ids(old)[6:] == [7, 8]

        refused.set_result(None)  # no session, and 7 > window: refused
        with pytest.raises(OutcomeUnknown, match="retry window"):
            await expired
        new = client.client_id
        assert new != old

        # A write that certainly never reached a member continues under the new id, as its 1.
        renumbered.set_exception(LinkClosed(ENDPOINT, "connection cut", sent=False))
        await unsent
        assert member.ids(new) == [1]

        # The new session's window starts afresh: ids 2..5 go at once, id 6 waits for id 2.
        stalled = member.hold(new, 2)
        puts = [put(client, 10 + i) for i in range(window + 2)]
        await settle()
        assert member.ids(new) == [1, 2, 3, 4, 5]
        stalled.set_result(None)
        await asyncio.gather(*puts)
        assert member.ids(new) == list(range(1, window + 4))
        assert client.client_id == new
        assert member.too_early == []
        assert member.applier.has_session(new)


@run()
async def test_a_second_refusal_for_the_same_forgotten_id_switches_only_once() -> None:
    window = 4
    member = Member(window, max_clients=1)
    async with client_for(member, window) as client:
        old = client.client_id
        for i in range(6):
            await client.put(b"k%d" % i, b"v")
        await member.write(old + 1, 1, PutRequest(b"other", b"v"))
        holds = [member.hold(old, 7), member.hold(old, 8)]
        writes = [put(client, 7), put(client, 8)]
        await settle()
        holds[0].set_result(None)
        with pytest.raises(OutcomeUnknown):
            await writes[0]
        new = client.client_id
        holds[1].set_result(None)
        with pytest.raises(OutcomeUnknown):
            await writes[1]
        assert client.client_id == new, "the second refusal is of the id already left"
        await client.put(b"after", b"v")
        assert member.ids(new) == [1]


def test_the_fake_member_refuses_old_ids_and_flags_ids_sent_too_early() -> None:
    """The fake member's checks, which the tests above rely on."""
    member = Member(2)
    write = PutRequest(b"k", b"v")

    async def main() -> None:
        for rid in (1, 2, 3):
            await member.write(9, rid, write)
        with pytest.raises(RequestIdExpiredError):  # 1 <= 3 - 2: forgotten
            await member.write(9, 1, write)
        await member.write(9, 5, write)
        assert member.too_early == []
        await member.write(9, 7, write)
        assert member.too_early == [(9, 7, 4)], "id 4 was never answered"

    asyncio.run(main())
