"""Sessions: a lease kept alive in the background, whose loss is always reported.

A lock or an election contender attaches its key to its session's lease, so the key goes when
the session does: closed by its owner (the lease is revoked), or lost (the lease expired, was
revoked by someone else, or could not be renewed for a whole TTL: then the cluster expires it).
A lost session is never silent: its :attr:`~AsyncSession.state` becomes
:attr:`SessionState.LOST`, its :attr:`~AsyncSession.lost` event is set and its callbacks run,
and every lock or election on it refuses to go on (:class:`~kvapp.recipes.errors.SessionLost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable

from kvapp.client.aio import AsyncClient, KeepAlive, LeaseLoss
from kvapp.errors import KvappError, LeaseNotFoundError
from kvapp.recipes.errors import ReentrantUseError, SessionLost

__all__ = ["DEFAULT_TTL", "AsyncSession", "SessionState"]

log = logging.getLogger(__name__)

DEFAULT_TTL = 60
"""Seconds: the default TTL of a session's lease (etcd's ``concurrency`` package's default)."""


class SessionState(enum.Enum):
    """Where a session is in its life."""

    NEW = "new"
    """Not opened yet: it has no lease."""
    ACTIVE = "active"
    """Its lease is held and renewed in the background."""
    LOST = "lost"
    """Its lease is gone, or renewals failed for a whole TTL (see :attr:`AsyncSession.loss`)."""
    CLOSED = "closed"
    """Closed by its owner (its lease revoked unless ``close(revoke=False)``)."""


class AsyncSession:
    """A lease kept alive in the background, for locks and elections (asyncio flavour).

    Open it with ``async with AsyncSession(client, ttl=10) as session:`` or
    ``await session.open()``; closing revokes the lease, which releases every lock and
    leadership held through it. The lease is renewed every TTL/3 (by
    :meth:`AsyncClient.keep_alive <kvapp.client.AsyncClient.keep_alive>`).

    The TTL bounds how long a crashed holder blocks everyone else, and how long a holder may
    be paused (a GC pause, SIGSTOP, a partition) before others may take its locks: a holder
    that resumes after that does not hold them any more, whatever it believes. Fenced writes
    (:meth:`AsyncLock.fenced_txn <kvapp.recipes.AsyncLock.fenced_txn>`) make that safe.

    Args:
        client: the client to grant and renew the lease through.
        ttl: the lease's TTL in seconds (the cluster raises it to its minimum, 2 s by default).
        lease_id: an existing lease to use (and keep alive) instead of granting a new one.
        on_lost: called with the session when its lease is lost (on the client's loop);
            :meth:`add_callback` adds more.
        renew: keep the lease alive (the default). False leaves that to whoever owns the
            lease, as etcd's Lock and Election servers do with the lease a client gives them:
            the session then cannot learn of the lease's loss by itself (its state stays
            ACTIVE until closed; a lock or election on it finds the loss when its key is gone).

    Attributes:
        client: the client.
        ttl: the lease's TTL in seconds, as granted (0 before :meth:`open`).
        lost: an :class:`asyncio.Event` set when the lease is lost (not when closed).
    """

    def __init__(
        self,
        client: AsyncClient,
        ttl: int = DEFAULT_TTL,
        *,
        lease_id: int = 0,
        on_lost: Callable[[AsyncSession], object] | None = None,
        renew: bool = True,
    ) -> None:
        if not isinstance(client, AsyncClient):
            raise TypeError(
                f"AsyncSession needs an AsyncClient, got {type(client).__name__} "
                "(kvapp.recipes.Session is the blocking flavour, for kvapp.client.Client)"
            )
        if ttl < 1:
            raise ValueError(f"a session's TTL must be at least 1 s, got {ttl}")
        if lease_id < 0:
            raise ValueError(f"invalid lease id {lease_id}")
        self.client = client
        self.ttl = 0
        self._wanted_ttl = ttl
        self._lease_id = lease_id
        self._renew = renew
        self._state = SessionState.NEW
        self._loss: LeaseLoss | None = None
        self._detail = ""
        self._keep_alive: KeepAlive | None = None
        self._callbacks: list[Callable[[AsyncSession], object]] = []
        if on_lost is not None:
            self._callbacks.append(on_lost)
        self.lost = asyncio.Event()
        self._ended = asyncio.Event()  # lost or closed: contenders stop waiting
        self._claims: dict[bytes, tuple[object, str]] = {}
        self._opening = False

    # -- life --------------------------------------------------------------------------------

    async def open(self) -> AsyncSession:
        """Grant the lease (unless one was given) and start renewing it; returns the session.

        Without ``renew``, the lease is granted (unless given) and not renewed.

        Raises:
            RuntimeError: the session was opened before.
            LeaseNotFoundError: the given lease does not exist.
            EtcdError, ClientError, OutcomeUnknown: the cluster could not grant or renew it
                (a lease granted here is revoked again, as far as possible).
        """
        if self._state is not SessionState.NEW or self._opening:
            raise RuntimeError(f"the session is {self._state.value}; a session opens once")
        self._opening = True
        client = self.client
        granted = False
        try:
            if not self._lease_id:
                grant = await client.lease_grant(self._wanted_ttl)
                self._lease_id, granted = grant.id, True
                self.ttl = grant.ttl
            if self._renew:
                self._keep_alive = await client.keep_alive(self._lease_id, on_lost=self._on_lost)
        except BaseException:
            self._opening = False
            if granted:
                await _revoke_quietly(client, self._lease_id)
                self._lease_id, self.ttl = 0, 0
            raise
        if self._keep_alive is not None:
            self.ttl = self._keep_alive.ttl
        self._state = SessionState.ACTIVE
        log.debug("kvapp recipes: session %x open (TTL %d s)", self._lease_id, self.ttl)
        return self

    async def close(self, *, revoke: bool = True) -> None:
        """Stop renewing and (by default) revoke the lease; idempotent.

        Revoking deletes every key attached to the lease at once, so locks held through the
        session are released and elections resigned. With ``revoke=False`` they last until
        the lease expires (its TTL from the last renewal).

        Raises:
            EtcdError, ClientError, OutcomeUnknown: the revoke failed (the session is closed
                all the same, and the lease expires after its TTL).
        """
        if self._state in (SessionState.CLOSED, SessionState.NEW):
            self._state = SessionState.CLOSED
            self._ended.set()
            return
        was_active = self._state is SessionState.ACTIVE
        self._state = SessionState.CLOSED
        self._ended.set()
        if self._keep_alive is not None:
            await self._keep_alive.stop()
        if revoke and was_active:
            with contextlib.suppress(LeaseNotFoundError):
                await self.client.lease_revoke(self._lease_id)

    async def __aenter__(self) -> AsyncSession:
        if self._state is SessionState.NEW:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- state -------------------------------------------------------------------------------

    @property
    def lease_id(self) -> int:
        """The session's lease (0 before :meth:`open` unless one was given)."""
        return self._lease_id

    @property
    def state(self) -> SessionState:
        """Where the session is in its life."""
        return self._state

    @property
    def alive(self) -> bool:
        """Whether the lease is held and being renewed (state ACTIVE)."""
        return self._state is SessionState.ACTIVE

    @property
    def loss(self) -> LeaseLoss | None:
        """Why the lease was lost (None unless the state is LOST)."""
        return self._loss

    def add_callback(self, callback: Callable[[AsyncSession], object]) -> None:
        """Call ``callback(session)`` when the lease is lost (at once if it already is).

        Callbacks run on the client's loop; an exception from one is logged and ignored.
        """
        if self._state is SessionState.LOST:
            _call(callback, self)
        else:
            self._callbacks.append(callback)

    async def wait_lost(self) -> LeaseLoss:
        """Wait until the lease is lost; returns why."""
        await self.lost.wait()
        if self._loss is None:  # lost is only set together with a reason
            raise RuntimeError("session lost without a reason")
        return self._loss

    def check(self) -> None:
        """Raise unless the session is active.

        Raises:
            SessionLost: the lease was lost, or the session is closed or not open yet.
        """
        if self._state is SessionState.ACTIVE:
            return
        if self._state is SessionState.LOST:
            raise SessionLost(
                f"session {self._lease_id:x} lost its lease: {self._describe_loss()}", self._loss
            )
        raise SessionLost(f"session {self._lease_id:x} is {self._state.value}")

    async def confirm(self) -> None:
        """Ask the cluster whether the lease still exists; a gone lease is reported as lost.

        Raises:
            SessionLost: the lease is gone (or the session is not active).
            EtcdError, ClientError: the cluster could not be asked.
        """
        self.check()
        try:
            ttl = (await self.client.lease_time_to_live(self._lease_id)).ttl
        except LeaseNotFoundError as e:
            self._detail = str(e)
            ttl = -1
        if ttl <= 0 and self._state is SessionState.ACTIVE:
            self._lose(LeaseLoss.GONE)
        self.check()

    # -- internals ---------------------------------------------------------------------------

    def _describe_loss(self) -> str:
        reason = self._loss.value if self._loss is not None else "unknown"
        return f"{reason} ({self._detail})" if self._detail else reason

    def _on_lost(self, keep_alive: KeepAlive) -> None:
        if keep_alive.error is not None:
            self._detail = str(keep_alive.error) or type(keep_alive.error).__name__
        if keep_alive.reason is not None and self._state is SessionState.ACTIVE:
            self._lose(keep_alive.reason)

    def _lose(self, reason: LeaseLoss) -> None:
        self._state = SessionState.LOST
        self._loss = reason
        log.log(
            logging.WARNING if self._renew else logging.INFO,  # not renewed: its owner's loss
            "kvapp recipes: session %x lost: %s; its locks and elections are lost",
            self._lease_id,
            self._describe_loss(),
        )
        self.lost.set()
        self._ended.set()
        if self._keep_alive is not None and self._keep_alive.alive:  # found by confirm()
            task = asyncio.ensure_future(self._keep_alive.stop())
            _BACKGROUND.add(task)
            task.add_done_callback(_ignore_result)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call(callback, self)

    def _claim(self, key: bytes, owner: object, what: str) -> None:
        """Reserve ``key`` for ``owner`` (one lock or election per name and session)."""
        current = self._claims.get(key)
        if current is not None and current[0] is not owner:
            raise ReentrantUseError(
                f"session {self._lease_id:x} already holds or waits for {key!r} through "
                f"another {current[1]} object: locks and elections are not re-entrant"
            )
        self._claims[key] = (owner, what)

    def _unclaim(self, key: bytes, owner: object) -> None:
        current = self._claims.get(key)
        if current is not None and current[0] is owner:
            del self._claims[key]


def _call(callback: Callable[[AsyncSession], object], session: AsyncSession) -> None:
    try:
        callback(session)
    except Exception:
        log.exception("kvapp recipes: a session-loss callback failed")


_BACKGROUND: set[asyncio.Future[None]] = set()  # the loop keeps only weak references to tasks


def _ignore_result(task: asyncio.Future[None]) -> None:
    _BACKGROUND.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.debug("kvapp recipes: stopping a keep-alive: %s", task.exception())


async def _revoke_quietly(client: AsyncClient, lease_id: int) -> None:
    with contextlib.suppress(KvappError, OSError):
        await client.lease_revoke(lease_id)
