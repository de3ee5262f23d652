"""kvapp.recipes (sessions, locks, elections) against in-process members.

:class:`ThreadCluster` runs three real :class:`kvapp.node.Member` instances on an in-memory
peer network (tests/kvapp/test_member.py's), each serving the native protocol on 127.0.0.1,
on an event loop in a background thread; tests talk to them through real clients, asyncio or
blocking. Lease expiry follows the members' injected clock, so a test expires leases by moving
it. Every wait is bounded (``asyncio.timeout`` or polling with a message).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from kvapp.client import AsyncClient, Client, LeaseLoss
from kvapp.client import txn as tx
from kvapp.mvcc.types import KeyValue, TxnResponse
from kvapp.node import Member
from kvapp.recipes import (
    AcquireTimeout,
    AsyncElection,
    AsyncLock,
    AsyncSession,
    Election,
    Lock,
    LockLost,
    NotElectedError,
    NotHeldError,
    ReentrantUseError,
    Session,
    SessionLost,
    SessionState,
)
from kvapp.server.native import NativeServer
from tests.kvapp.test_member import Clock, Hub, infos, make_member

_T = TypeVar("_T")

TTL = 2  # the members' minimum TTL


class ThreadCluster:
    """Three in-process members serving the native protocol, on a loop in a thread."""

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.clock = Clock()
        self.hub = Hub()
        self.members: list[Member] = []
        self.servers: list[NativeServer] = []

    def __enter__(self) -> ThreadCluster:
        self.thread.start()
        try:
            self.call(self._start(), timeout=30)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, coro: Coroutine[Any, Any, _T], *, timeout: float = 30) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def endpoints(self) -> list[str]:
        return [s.endpoint for s in self.servers]

    async def _start(self) -> None:
        initial = infos(self.size)
        self.servers = [NativeServer(None, host="127.0.0.1", port=0) for _ in initial]  # type: ignore[arg-type]
        for s in self.servers:
            await s.start()
        self.members = [
            make_member(self.hub, info, initial, self.clock, client_urls=(f"http://{s.endpoint}",))
            for info, s in zip(initial, self.servers, strict=True)
        ]
        for m, s in zip(self.members, self.servers, strict=True):
            s.service = m
            await m.start()
        await asyncio.wait_for(self.members[0].node.wait_leader(timeout=10), 11)

    async def _stop(self) -> None:
        for s in self.servers:
            await s.stop()
        for m in self.members:
            await m.stop(transfer=False)

    def stop_servers(self) -> None:
        """Stop serving clients (the members go on): clients can reach nobody."""

        async def stop() -> None:
            for s in self.servers:
                await s.stop()

        self.call(stop())

    def close(self) -> None:
        if self.thread.is_alive():
            try:
                self.call(self._stop(), timeout=30)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


@pytest.fixture(scope="module")
def shared() -> Iterator[ThreadCluster]:
    """One cluster for the tests that leave it as they found it (each uses its own names)."""
    with ThreadCluster() as c:
        yield c


@pytest.fixture
def fresh() -> Iterator[ThreadCluster]:
    """A cluster of its own, for tests that move its clock or stop it."""
    with ThreadCluster() as c:
        yield c


def aio(timeout: float = 60) -> Callable[[Callable[..., Coroutine[Any, Any, None]]], Any]:
    """Run an async test on a fresh loop, failing (not hanging) after ``timeout`` seconds."""

    def wrap(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
        @functools.wraps(fn)
        def runner(*args: Any, **kwargs: Any) -> None:
            async def main() -> None:
                async with asyncio.timeout(timeout):
                    await fn(*args, **kwargs)

            asyncio.run(main())

        return runner

    return wrap


def client(c: ThreadCluster, **options: Any) -> AsyncClient:
    options.setdefault("request_timeout", 3.0)
    options.setdefault("connect_timeout", 2.0)
    return AsyncClient(c.endpoints, **options)


async def eventually(cond: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll ``cond`` every 10 ms; fail with ``what`` if it is not true ``within`` seconds."""
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)


def held(lock: AsyncLock) -> bool:
    return lock.held


async def queue_keys(kv: AsyncClient, name: str) -> list[KeyValue]:
    return list((await kv.get(name + "/", prefix=True)).kvs)


async def queued(kv: AsyncClient, name: str, lock: AsyncLock) -> None:
    """Wait until ``lock``'s key is in ``name``'s queue."""
    deadline = time.monotonic() + 5
    while True:
        if lock.key is not None and any(k.key == lock.key for k in await queue_keys(kv, name)):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{lock!r} did not queue within 5 s")
        await asyncio.sleep(0.01)


# -- the lock ---------------------------------------------------------------------------------


@aio()
async def test_the_lock_is_granted_in_create_revision_order_one_wakeup_per_release(
    shared: ThreadCluster,
) -> None:
    async with client(shared) as kv:
        sessions = [await AsyncSession(kv, ttl=10).open() for _ in range(5)]
        locks = [AsyncLock(kv, "fair", s) for s in sessions]
        order: list[int] = []
        tokens: dict[int, int] = {}

        async def contend(i: int) -> None:
            await locks[i].acquire()
            order.append(i)
            tokens[i] = locks[i].token

        def acquired(n: int) -> bool:
            return len(order) == n

        await locks[0].acquire()
        tokens[0] = locks[0].token
        tasks = []
        for i in range(1, 5):  # queue in a known order: 1, 2, 3, 4
            tasks.append(asyncio.create_task(contend(i)))
            await queued(kv, "fair", locks[i])
        revisions = sorted(k.create_revision for k in await queue_keys(kv, "fair"))
        assert len(revisions) == 5
        assert revisions[0] == locks[0].token
        assert sum(lk.wakeups for lk in locks) == 0
        for i in range(4):
            holder = locks[i]
            assert await holder.release() is True
            await eventually(functools.partial(acquired, i + 1), f"contender {i + 1} to acquire")
            # one release woke one waiter: the next in line, and nobody else
            assert [lk.wakeups for lk in locks] == [0] + [1] * (i + 1) + [0] * (3 - i)
        assert order == [1, 2, 3, 4]
        assert [tokens[i] for i in [0, *order]] == sorted(tokens.values()), (
            "acquired out of create-revision order"
        )
        for i in range(1, 5):
            assert locks[i].waited_for == [tokens[i - 1]]
        await asyncio.gather(*tasks)
        await locks[4].release()
        for s in sessions:
            await s.close()


@aio()
async def test_a_released_lock_is_free_and_a_new_acquisition_gets_a_greater_token(
    shared: ThreadCluster,
) -> None:
    async with client(shared) as kv, AsyncSession(kv, ttl=10) as session:
        lock = AsyncLock(kv, "again", session)
        async with lock:
            first = lock.token
            assert lock.key == b"again/%x" % session.lease_id
            assert held(lock)
        assert not held(lock)
        assert await queue_keys(kv, "again") == []
        async with lock:
            assert lock.token > first
            assert lock.waited_for == []


@aio()
async def test_acquire_timeout_removes_our_key_and_does_not_block_later_contenders(
    shared: ThreadCluster,
) -> None:
    async with client(shared) as kv:
        a, b, c = [await AsyncSession(kv, ttl=10).open() for _ in range(3)]
        holder = AsyncLock(kv, "timeout", a)
        await holder.acquire()
        late = AsyncLock(kv, "timeout", b)
        with pytest.raises(AcquireTimeout):
            await late.acquire(timeout=0.3)
        assert late.key is None
        assert [k.key for k in await queue_keys(kv, "timeout")] == [holder.key]
        await holder.release()
        third = AsyncLock(kv, "timeout", c)
        await third.acquire(timeout=5)  # nothing left in front of it
        assert third.waited_for == []
        await third.release()
        for s in (a, b, c):
            await s.close()


@aio()
async def test_a_cancelled_acquire_removes_our_key(shared: ThreadCluster) -> None:
    async with client(shared) as kv:
        a, b = [await AsyncSession(kv, ttl=10).open() for _ in range(2)]
        holder = AsyncLock(kv, "cancel", a)
        await holder.acquire()
        waiter = AsyncLock(kv, "cancel", b)
        task = asyncio.create_task(waiter.acquire())
        await queued(kv, "cancel", waiter)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert waiter.key is None
        assert [k.key for k in await queue_keys(kv, "cancel")] == [holder.key]
        # the waiter can try again after a cancellation
        await holder.release()
        await waiter.acquire(timeout=5)
        await waiter.release()
        for s in (a, b):
            await s.close()


@aio()
async def test_a_deleted_predecessor_is_not_the_lock_the_waiter_looks_again(
    shared: ThreadCluster,
) -> None:
    """A waiter whose predecessor gives up watches the next key in front, not the lock."""
    async with client(shared) as kv:
        a, b, c = [await AsyncSession(kv, ttl=10).open() for _ in range(3)]
        first, middle, last = (AsyncLock(kv, "recheck", s) for s in (a, b, c))
        await first.acquire()
        first_token = first.token
        middle_task = asyncio.create_task(middle.acquire(timeout=1.0))
        await queued(kv, "recheck", middle)
        middle_rev = next(
            k.create_revision for k in await queue_keys(kv, "recheck") if k.key == middle.key
        )
        last_task = asyncio.create_task(last.acquire())
        await queued(kv, "recheck", last)
        with pytest.raises(AcquireTimeout):
            await middle_task
        await eventually(lambda: last.wakeups == 1, "the last waiter to see its predecessor go")
        # it looked again and found the first still holding: it now waits for that one
        await eventually(lambda: len(last.waited_for) == 2, "the last waiter to look again")
        assert not last_task.done(), "the waiter took the lock while the first still held it"
        await first.release()
        await asyncio.wait_for(last_task, 5)
        assert last.wakeups == 2
        assert last.waited_for == [middle_rev, first_token]
        await last.release()
        for s in (a, b, c):
            await s.close()


@aio()
async def test_reentrant_use_is_refused(shared: ThreadCluster) -> None:
    async with client(shared) as kv, AsyncSession(kv, ttl=10) as session:
        lock = AsyncLock(kv, "reentrant", session)
        await lock.acquire()
        with pytest.raises(ReentrantUseError, match="not re-entrant"):
            await lock.acquire()
        twin = AsyncLock(kv, "reentrant", session)
        with pytest.raises(ReentrantUseError, match="another lock object"):
            await twin.acquire()
        # the same lease from another process (here: another session object adopting it)
        async with AsyncSession(kv, lease_id=session.lease_id) as adopted:
            other = AsyncLock(kv, "reentrant", adopted)
            with pytest.raises(ReentrantUseError, match="already exists"):
                await other.acquire()
            await adopted.close(revoke=False)
        assert [k.key for k in await queue_keys(kv, "reentrant")] == [lock.key], (
            "a refused acquisition deleted the holder's key"
        )
        assert lock.held
        await lock.release()


@aio()
async def test_release_and_token_need_the_lock_held(shared: ThreadCluster) -> None:
    async with client(shared) as kv, AsyncSession(kv, ttl=10) as session:
        lock = AsyncLock(kv, "not-held", session)
        with pytest.raises(NotHeldError):
            await lock.release()
        with pytest.raises(NotHeldError):
            _ = lock.token
        with pytest.raises(NotHeldError):
            lock.is_owner()
        with pytest.raises(NotHeldError):
            await lock.fenced_put("x", "y")


@aio()
async def test_fenced_writes_run_only_while_the_lock_is_held(shared: ThreadCluster) -> None:
    async with client(shared) as kv, AsyncSession(kv, ttl=10) as session:
        lock = AsyncLock(kv, "fence", session)
        await lock.acquire()
        put = await lock.fenced_put("fenced/data", "1")
        assert put.revision > lock.token
        # the caller's own compares run nested, under the lock's guard
        resp = await lock.fenced_txn(
            [tx.put("fenced/data", "2")],
            compare=[tx.value("fenced/data", "==", "nope")],
            failure=[tx.get("fenced/data")],
        )
        assert isinstance(resp, TxnResponse)
        assert not resp.succeeded
        assert resp.responses[0].kvs[0].value == b"1"  # type: ignore[union-attr]
        # a plain txn can use the guard too
        guarded = await kv.txn([lock.is_owner()], [tx.put("fenced/data", "3")])
        assert guarded.succeeded
        await lock.release()
        other = await kv.txn([tx.create(lock.key or b"fence/0", "==", 0)])
        assert other.succeeded


@aio()
async def test_the_session_reports_a_revoked_lease_and_the_lock_is_lost(
    shared: ThreadCluster,
) -> None:
    async with client(shared) as kv, client(shared) as other:
        called: list[AsyncSession] = []
        session = await AsyncSession(kv, ttl=TTL, on_lost=called.append).open()
        lock = AsyncLock(kv, "revoked", session)
        await lock.acquire()
        await other.lease_revoke(session.lease_id)
        async with asyncio.timeout(5):
            assert await session.wait_lost() is LeaseLoss.GONE
        assert session.state is SessionState.LOST
        assert called == [session]
        assert not lock.held
        with pytest.raises(SessionLost):
            session.check()
        with pytest.raises(LockLost):
            await lock.fenced_put("revoked-data", "x")
        with pytest.raises(SessionLost):
            await AsyncLock(kv, "revoked-2", session).acquire()
        assert await lock.release() is False  # our key was already gone
        await session.close()


@aio()
async def test_leaving_a_lock_block_after_the_lock_was_lost_raises(shared: ThreadCluster) -> None:
    async with client(shared) as kv, client(shared) as other:
        session = await AsyncSession(kv, ttl=TTL).open()
        lock = AsyncLock(kv, "lost-in-block", session)
        with pytest.raises(LockLost, match="was lost before it was released"):
            async with lock:
                await other.lease_revoke(session.lease_id)
        await session.close()


@aio()
async def test_a_waiter_whose_session_is_lost_stops_waiting(shared: ThreadCluster) -> None:
    async with client(shared) as kv, client(shared) as other:
        a = await AsyncSession(kv, ttl=10).open()
        b = await AsyncSession(kv, ttl=TTL).open()
        holder, waiter = AsyncLock(kv, "lost-waiter", a), AsyncLock(kv, "lost-waiter", b)
        await holder.acquire()
        task = asyncio.create_task(waiter.acquire())
        await queued(kv, "lost-waiter", waiter)
        await other.lease_revoke(b.lease_id)
        with pytest.raises(SessionLost):
            await asyncio.wait_for(task, 5)
        assert [k.key for k in await queue_keys(kv, "lost-waiter")] == [holder.key]
        await holder.release()
        await a.close()


@aio()
async def test_a_waiter_whose_lease_ended_unnoticed_does_not_take_the_lock(
    shared: ThreadCluster,
) -> None:
    """etcd#11456: the waiter's lease is gone (its keep-alive has not noticed yet) when its
    predecessor releases; it must not return as the holder."""
    async with client(shared) as kv, client(shared) as other:
        a = await AsyncSession(kv, ttl=10).open()
        b = await AsyncSession(kv, ttl=30).open()  # renewed every 10 s: it will not notice
        holder, waiter = AsyncLock(kv, "11456", a), AsyncLock(kv, "11456", b)
        await holder.acquire()
        task = asyncio.create_task(waiter.acquire())
        await queued(kv, "11456", waiter)
        await other.lease_revoke(b.lease_id)  # deletes the waiter's key, which it does not watch
        assert b.alive
        await holder.release()  # wakes the waiter
        with pytest.raises(SessionLost, match="lost its lease"):
            await asyncio.wait_for(task, 5)
        assert b.state is SessionState.LOST
        assert b.loss is LeaseLoss.GONE
        assert waiter.wakeups == 1
        assert not waiter.held
        await a.close()
        await b.close()


@aio()
async def test_a_holder_whose_lease_expired_on_the_cluster_clock_is_fenced_off(
    fresh: ThreadCluster,
) -> None:
    """A holder paused past its TTL: the cluster expires its lease, another holder takes the
    lock, and the former holder's fenced write (it still believes it holds) is refused."""
    async with client(fresh) as kv, client(fresh) as kv2:
        paused = await AsyncSession(kv, ttl=TTL).open()
        old = AsyncLock(kv, "expiry", paused)
        await old.acquire()
        await old.fenced_put("expiry-counter", "1")
        fresh.clock.now += 10 * TTL  # the leader's clock: every lease here has expired
        await eventually(lambda: paused.state is SessionState.LOST, "the lease loss to be reported")
        assert paused.loss is LeaseLoss.GONE
        async with AsyncSession(kv2, ttl=10) as s2:
            new = AsyncLock(kv2, "expiry", s2)
            await new.acquire(timeout=5)
            assert new.token > old.token
            with pytest.raises(LockLost, match="fenced write refused"):
                await old.fenced_put("expiry-counter", "stale")
            await new.fenced_put("expiry-counter", "2")
            assert (await kv2.get("expiry-counter")).kvs[0].value == b"2"
            await new.release()
        await paused.close()


@aio()
async def test_the_session_reports_renewals_failing_for_a_whole_ttl(fresh: ThreadCluster) -> None:
    async with client(fresh, max_attempts=1, request_timeout=0.5) as kv:
        lost = asyncio.Event()
        session = await AsyncSession(kv, ttl=TTL, on_lost=lambda _: lost.set()).open()
        started = time.monotonic()
        fresh.stop_servers()
        async with asyncio.timeout(TTL + 3):
            await lost.wait()
        assert session.loss is LeaseLoss.RENEWALS_FAILED
        assert time.monotonic() - started <= TTL + 1.5
        with pytest.raises(SessionLost, match="renewals failed"):
            session.check()
        await session.close(revoke=False)


def test_the_flavours_refuse_the_other_client(shared: ThreadCluster) -> None:
    with Client(shared.endpoints) as sync_client:
        with pytest.raises(TypeError, match="AsyncClient"):
            AsyncSession(sync_client, ttl=10)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="AsyncClient"):
            AsyncLock(sync_client, "x", None)  # type: ignore[arg-type]

    async def make() -> None:
        async with client(shared) as kv:
            with pytest.raises(TypeError, match=r"kvapp\.client\.Client"):
                Session(kv, ttl=10)  # type: ignore[arg-type]

    asyncio.run(make())


# -- the election -----------------------------------------------------------------------------


@aio()
async def test_election_campaign_proclaim_observe_resign(shared: ThreadCluster) -> None:
    async with client(shared) as kv:
        sa, sb, sc = [await AsyncSession(kv, ttl=10).open() for _ in range(3)]
        a, b, c = (AsyncElection(kv, "elect", s) for s in (sa, sb, sc))
        watcher = AsyncElection(kv, "elect", sc)
        assert await watcher.leader() is None
        seen: list[tuple[bytes, int]] = []
        async with watcher.observe() as leaders:

            async def follow() -> None:  # appends as they come: the test polls ``seen``
                async for kv_ in leaders:
                    seen.append((kv_.value, kv_.create_revision))  # noqa: PERF401

            following = asyncio.create_task(follow())
            await a.campaign("a1")
            assert a.leading
            await eventually(lambda: seen == [(b"a1", a.token)], f"'a1' to be observed: {seen}")
            b_task = asyncio.create_task(b.campaign("b1"))
            await eventually(lambda: b.key is not None, "b to stand")
            await a.proclaim("a2")
            await eventually(lambda: len(seen) == 2, "the proclamation to be observed")
            assert seen[1] == (b"a2", a.token)
            leader = await watcher.leader()
            assert leader is not None
            assert (leader.value, leader.create_revision) == (b"a2", a.token)
            with pytest.raises(NotElectedError):
                await c.proclaim("c?")
            assert not b_task.done()
            a_token = a.token
            assert await a.resign() is True
            await asyncio.wait_for(b_task, 5)
            assert b.leading
            assert b.token > a_token
            await eventually(lambda: len(seen) == 3, "the new leader to be observed")
            assert seen[2] == (b"b1", b.token)
            with pytest.raises(NotElectedError):
                await a.proclaim("a3")
            assert await a.resign() is False
            # the leader's writes can be fenced by its leadership
            await b.fenced_txn([tx.put("elect-data", "by b")])
            assert (await kv.txn([b.is_leader()])).succeeded
            await b.resign()
            await leaders.close()
            await asyncio.wait_for(following, 5)
        assert [v for v, _ in seen] == [b"a1", b"a2", b"b1"]
        for s in (sa, sb, sc):
            await s.close()


@aio()
async def test_a_cancelled_campaign_withdraws_and_campaigning_twice_is_refused(
    shared: ThreadCluster,
) -> None:
    async with client(shared) as kv:
        sa, sb = [await AsyncSession(kv, ttl=10).open() for _ in range(2)]
        a, b = AsyncElection(kv, "elect2", sa), AsyncElection(kv, "elect2", sb)
        await a.campaign("a")
        with pytest.raises(ReentrantUseError):
            await a.campaign("again")
        with pytest.raises(AcquireTimeout):
            await b.campaign("b", timeout=0.3)
        assert len(await queue_keys(kv, "elect2")) == 1
        await a.resign()
        await b.campaign("b", timeout=5)
        leader = await b.leader()
        assert leader is not None
        assert leader.value == b"b"
        await b.resign()
        for s in (sa, sb):
            await s.close()


# -- the blocking flavour ---------------------------------------------------------------------


def test_the_blocking_lock_between_threads(shared: ThreadCluster) -> None:
    with Client(shared.endpoints, request_timeout=3.0) as kv:
        sessions = [Session(kv, ttl=10) for _ in range(3)]
        counter: list[int] = [0]
        tokens: list[int] = []
        errors: list[BaseException] = []

        def work(session: Session) -> None:
            lock = Lock(kv, "threads", session)
            try:
                for _ in range(5):
                    with lock:
                        value = counter[0]
                        lock.fenced_put("threads-counter", str(value + 1))
                        counter[0] = value + 1
                        tokens.append(lock.token)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors
        assert counter[0] == 15
        assert tokens == sorted(tokens)
        assert kv.get("threads-counter").kvs[0].value == b"15"
        for s in sessions:
            s.close()


def test_the_blocking_flavour_times_out_reports_loss_and_elects(shared: ThreadCluster) -> None:
    with Client(shared.endpoints, request_timeout=3.0) as kv:
        lost: list[Session] = []
        a = Session(kv, ttl=TTL, on_lost=lost.append)
        b = Session(kv, ttl=10)
        holder, late = Lock(kv, "sync", a), Lock(kv, "sync", b)
        holder.acquire()
        with pytest.raises(AcquireTimeout):
            late.acquire(timeout=0.3)
        assert late.key is None
        kv.lease_revoke(a.lease_id)
        assert a.wait_lost(5) is LeaseLoss.GONE
        assert lost == [a]
        with pytest.raises(LockLost):
            holder.fenced_put("sync-data", "stale")
        late.acquire(timeout=5)
        assert late.token > holder.token
        late.release()

        ea, eb = Election(kv, "sync-elect", b), Election(kv, "sync-elect", Session(kv, ttl=10))
        with ea.observe() as leaders:
            assert leaders.get(0.2) is None
            ea.campaign("one")
            first = leaders.get(5)
            assert first is not None
            assert first.value == b"one"
            ea.proclaim("two")
            second = leaders.get(5)
            assert second is not None
            assert second.value == b"two"
            ea.resign()
            eb.campaign("three", timeout=5)
            third = leaders.get(5)
            assert third is not None
            assert (third.value, third.create_revision) == (b"three", eb.token)
        eb.resign()
        eb.session.close()
        a.close()
        b.close()
