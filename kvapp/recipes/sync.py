"""The blocking flavour: :class:`Session`, :class:`Lock` and :class:`Election` on a ``Client``.

Each wraps its asyncio twin and runs it on the :class:`~kvapp.client.Client`'s own event loop
(its background thread), as the blocking client wraps :class:`~kvapp.client.AsyncClient`: one
implementation of the recipe, two ways to call it. A blocking call interrupted in its caller's
thread (``KeyboardInterrupt``) cancels the asynchronous call and waits for its clean-up (a
waiting contender's key is removed) before re-raising. Like the client, these must not be
called from the client's own loop (e.g. from a session-loss callback).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from kvapp.client.aio import Bytes, LeaseLoss
from kvapp.client.sync import Client
from kvapp.mvcc.types import Compare, KeyValue, PutResponse, RequestOp, TxnResponse
from kvapp.recipes.election import AsyncElection, LeaderObserver
from kvapp.recipes.lock import AsyncLock
from kvapp.recipes.session import DEFAULT_TTL, AsyncSession, SessionState

__all__ = ["Election", "Lock", "Session", "SyncLeaderObserver"]

_T = TypeVar("_T")

log = logging.getLogger(__name__)


class _Bridge:
    """Runs coroutines on a blocking client's loop and waits for them."""

    def __init__(self, client: Client, what: str) -> None:
        if not isinstance(client, Client):
            raise TypeError(
                f"{what} needs a kvapp.client.Client, got {type(client).__name__} "
                f"(Async{what} is the asyncio flavour, for AsyncClient)"
            )
        self.client = client
        self.loop = client.loop

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coro.close()
            raise RuntimeError("blocking recipes cannot be called from their client's own loop")
        finished = threading.Event()

        async def run() -> _T:
            try:
                return await coro
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            return future.result()
        except BaseException:
            if not future.done():  # interrupted here: cancel, and let it clean up first
                future.cancel()
                finished.wait(self.client.aio.request_timeout)
            raise


class Session:
    """A lease kept alive in the background: the blocking twin of :class:`AsyncSession`.

    The lease is granted (or ``lease_id`` adopted) when the session is made; use it as
    ``with Session(client, ttl=10) as session:`` or call :meth:`close`.

    Args:
        client: the blocking client.
        ttl: the lease's TTL in seconds.
        lease_id: an existing lease to use instead of granting one.
        on_lost: called with the session when its lease is lost, on the client's thread.

    Raises:
        LeaseNotFoundError: the given lease does not exist.
        EtcdError, ClientError, OutcomeUnknown: the lease could not be granted or renewed.
    """

    def __init__(
        self,
        client: Client,
        ttl: int = DEFAULT_TTL,
        *,
        lease_id: int = 0,
        on_lost: Callable[[Session], object] | None = None,
    ) -> None:
        self._bridge = _Bridge(client, "Session")
        self.client = client
        self._lost = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Session], object]] = [on_lost] if on_lost else []

        async def start() -> AsyncSession:
            session = AsyncSession(client.aio, ttl, lease_id=lease_id, on_lost=self._on_lost)
            return await session.open()

        self._aio = self._bridge.call(start())

    @property
    def aio(self) -> AsyncSession:
        """The asyncio session underneath (use it only on the client's loop)."""
        return self._aio

    @property
    def lease_id(self) -> int:
        """The session's lease."""
        return self._aio.lease_id

    @property
    def ttl(self) -> int:
        """The lease's TTL in seconds, as granted."""
        return self._aio.ttl

    @property
    def state(self) -> SessionState:
        """Where the session is in its life."""
        return self._aio.state

    @property
    def alive(self) -> bool:
        """Whether the lease is held and being renewed."""
        return self._aio.alive

    @property
    def loss(self) -> LeaseLoss | None:
        """Why the lease was lost (None unless lost)."""
        return self._aio.loss

    def add_callback(self, callback: Callable[[Session], object]) -> None:
        """Call ``callback(session)`` when the lease is lost.

        It runs on the client's thread, or at once in this thread if the lease already is lost.
        """
        with self._lock:
            if not self._lost.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def wait_lost(self, timeout: float | None = None) -> LeaseLoss | None:
        """Block until the lease is lost (or ``timeout``); returns why, or None if not lost."""
        self._lost.wait(timeout)
        return self._aio.loss

    def check(self) -> None:
        """Raise :class:`~kvapp.recipes.errors.SessionLost` unless the session is active."""
        self._aio.check()

    def confirm(self) -> None:
        """Ask the cluster whether the lease still exists; see :meth:`AsyncSession.confirm`."""
        self._bridge.call(self._aio.confirm())

    def close(self, *, revoke: bool = True) -> None:
        """Stop renewing and (by default) revoke the lease; see :meth:`AsyncSession.close`."""
        self._bridge.call(self._aio.close(revoke=revoke))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_lost(self, _: AsyncSession) -> None:
        with self._lock:
            self._lost.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("kvapp recipes: a session-loss callback failed")


def _session(session: Session, what: str) -> AsyncSession:
    if not isinstance(session, Session):
        raise TypeError(f"{what} needs a kvapp.recipes.Session, got {session!r:.60}")
    return session.aio


class Lock:
    """A distributed lock: the blocking twin of :class:`~kvapp.recipes.AsyncLock`.

    Same recipe, same guarantees and the same methods, blocking; use it as ``with lock:`` or
    :meth:`acquire` / :meth:`release`. See :class:`~kvapp.recipes.AsyncLock` for what
    holding it means and for the fencing token.

    Args:
        client: the blocking client.
        name: the lock's name; keys go under ``<name>/``.
        session: the session whose lease the lock's key is attached to.
    """

    def __init__(self, client: Client, name: Bytes, session: Session) -> None:
        self._bridge = _Bridge(client, "Lock")
        self.session = session
        self._aio = AsyncLock(client.aio, name, _session(session, "Lock"))
        self.name = self._aio.name

    @property
    def aio(self) -> AsyncLock:
        """The asyncio lock underneath (use it only on the client's loop)."""
        return self._aio

    @property
    def key(self) -> bytes | None:
        """Our key while waiting or holding; else None."""
        return self._aio.key

    @property
    def held(self) -> bool:
        """See :attr:`AsyncLock.held`."""
        return self._aio.held

    @property
    def token(self) -> int:
        """The fencing token; see :attr:`AsyncLock.token`."""
        return self._aio.token

    @property
    def acquired_revision(self) -> int:
        """See :attr:`AsyncLock.acquired_revision`."""
        return self._aio.acquired_revision

    @property
    def wakeups(self) -> int:
        """Deletion events received while waiting, over every acquisition."""
        return self._aio.wakeups

    @property
    def waited_for(self) -> list[int]:
        """Create revisions of the keys the last acquisition waited for, in order."""
        return self._aio.waited_for

    def acquire(self, timeout: float | None = None) -> None:
        """See :meth:`AsyncLock.acquire`."""
        self._bridge.call(self._aio.acquire(timeout))

    def release(self) -> bool:
        """See :meth:`AsyncLock.release`."""
        return self._bridge.call(self._aio.release())

    def is_owner(self) -> Compare:
        """See :meth:`AsyncLock.is_owner`."""
        return self._aio.is_owner()

    def fenced_txn(
        self,
        success: Iterable[RequestOp] = (),
        *,
        compare: Iterable[Compare] = (),
        failure: Iterable[RequestOp] = (),
    ) -> TxnResponse:
        """See :meth:`AsyncLock.fenced_txn`."""
        return self._bridge.call(
            self._aio.fenced_txn(success, compare=tuple(compare), failure=tuple(failure))
        )

    def fenced_put(self, key: Bytes, value: Bytes, *, lease: int = 0) -> PutResponse:
        """See :meth:`AsyncLock.fenced_put`."""
        return self._bridge.call(self._aio.fenced_put(key, value, lease=lease))

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._bridge.call(self._aio.__aexit__(exc_type))

    def __repr__(self) -> str:
        return repr(self._aio).replace("<AsyncLock", "<Lock", 1)


class Election:
    """Leader election: the blocking twin of :class:`~kvapp.recipes.AsyncElection`.

    Args:
        client: the blocking client.
        name: the election's name; keys go under ``<name>/``.
        session: the session whose lease the candidate's key is attached to.
    """

    def __init__(self, client: Client, name: Bytes, session: Session) -> None:
        self._bridge = _Bridge(client, "Election")
        self.session = session
        self._aio = AsyncElection(client.aio, name, _session(session, "Election"))
        self.name = self._aio.name

    @property
    def aio(self) -> AsyncElection:
        """The asyncio election underneath (use it only on the client's loop)."""
        return self._aio

    @property
    def key(self) -> bytes | None:
        """Our candidate key while campaigning or leading; else None."""
        return self._aio.key

    @property
    def leading(self) -> bool:
        """See :attr:`AsyncElection.leading`."""
        return self._aio.leading

    @property
    def token(self) -> int:
        """See :attr:`AsyncElection.token`."""
        return self._aio.token

    @property
    def value(self) -> bytes:
        """The value we campaigned with or last proclaimed."""
        return self._aio.value

    def campaign(self, value: Bytes, timeout: float | None = None) -> None:
        """See :meth:`AsyncElection.campaign`."""
        self._bridge.call(self._aio.campaign(value, timeout))

    def proclaim(self, value: Bytes) -> None:
        """See :meth:`AsyncElection.proclaim`."""
        self._bridge.call(self._aio.proclaim(value))

    def resign(self) -> bool:
        """See :meth:`AsyncElection.resign`."""
        return self._bridge.call(self._aio.resign())

    def leader(self) -> KeyValue | None:
        """See :meth:`AsyncElection.leader`."""
        return self._bridge.call(self._aio.leader())

    def observe(self) -> SyncLeaderObserver:
        """See :meth:`AsyncElection.observe`; iterate the result (and close it)."""
        return SyncLeaderObserver(self._bridge, self._aio.observe())

    def is_leader(self) -> Compare:
        """See :meth:`AsyncElection.is_leader`."""
        return self._aio.is_leader()

    def fenced_txn(
        self,
        success: Iterable[RequestOp] = (),
        *,
        compare: Iterable[Compare] = (),
        failure: Iterable[RequestOp] = (),
    ) -> TxnResponse:
        """See :meth:`AsyncElection.fenced_txn`."""
        return self._bridge.call(
            self._aio.fenced_txn(success, compare=tuple(compare), failure=tuple(failure))
        )

    def __repr__(self) -> str:
        return repr(self._aio).replace("<AsyncElection", "<Election", 1)


class SyncLeaderObserver:
    """A blocking iterator over a :class:`~kvapp.recipes.election.LeaderObserver`."""

    def __init__(self, bridge: _Bridge, observer: LeaderObserver) -> None:
        self._bridge = bridge
        self._observer = observer
        self._next: asyncio.Future[KeyValue] | None = None

    def __iter__(self) -> Iterator[KeyValue]:
        return self

    def __next__(self) -> KeyValue:
        try:
            kv = self._bridge.call(self._take(None))
        except StopAsyncIteration:
            raise StopIteration from None
        assert kv is not None  # no timeout
        return kv

    def get(self, timeout: float) -> KeyValue | None:
        """The next leader, or None if there is no change within ``timeout`` seconds.

        Raises:
            StopIteration: the observer was closed.
        """
        try:
            return self._bridge.call(self._take(timeout))
        except StopAsyncIteration:
            raise StopIteration from None

    async def _take(self, timeout: float | None) -> KeyValue | None:  # noqa: ASYNC109
        # The observer's next item is awaited in a task kept across timeouts, so a change
        # that arrives after a timeout is delivered by the next call, not lost.
        if self._next is None:
            self._next = asyncio.ensure_future(self._observer.__anext__())
        pending = self._next
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(pending)
        except TimeoutError:
            if not pending.done():
                return None
            return pending.result()
        finally:
            if pending.done():
                self._next = None

    def close(self) -> None:
        """Stop observing."""
        self._bridge.call(self._close())

    async def _close(self) -> None:
        await self._observer.close()
        if self._next is not None:
            self._next.cancel()
            await asyncio.gather(self._next, return_exceptions=True)
            self._next = None

    def __enter__(self) -> SyncLeaderObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
