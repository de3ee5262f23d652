"""Internal: the queue both locks and elections stand in (the seed's recipe, step by step).

A contender for ``name`` puts ``<name>/<lease id in hex>`` attached to its session's lease, in
a txn that does not overwrite an existing key (``create_revision == 0``). Revisions order the
contenders: the key with the smallest create revision holds the lock (or leads the election).
Every other contender watches the deletion of one key only, the one with the greatest create
revision below its own, then looks again: a deleted predecessor does not mean it holds the lock
(the predecessor may have given up while an earlier contender still holds it). So each release
wakes one contender (no herd), in create-revision order (fair), and a contender that dies is
removed when its lease expires.

Nothing here is public; :class:`~kvapp.recipes.AsyncLock` and
:class:`~kvapp.recipes.AsyncElection` build on :class:`Contender`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Iterable

from kvapp.client.aio import AsyncClient, Bytes, Watch
from kvapp.errors import CompactedError, KvappError
from kvapp.mvcc.keyrange import prefix_range_end
from kvapp.mvcc.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeResponse,
    EventType,
    KeyValue,
    PutRequest,
    RangeRequest,
    RangeResponse,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from kvapp.recipes.errors import (
    AcquireTimeout,
    LockLost,
    NotHeldError,
    ReentrantUseError,
)
from kvapp.recipes.session import AsyncSession
from kvapp.watch import WatchFilter

log = logging.getLogger(__name__)


def as_bytes(value: Bytes) -> bytes:
    """Text as UTF-8, bytes as they are."""
    return value.encode() if isinstance(value, str) else value


def queue_prefix(name: Bytes, *, allow_empty: bool = False) -> bytes:
    """``<name>/``: where the contenders for ``name`` put their keys.

    Raises:
        ValueError: ``name`` is empty (unless ``allow_empty``: etcd's servers take an empty
            name, whose queue is under ``/``).
    """
    raw = as_bytes(name)
    if not raw and not allow_empty:
        raise ValueError("a lock or election needs a non-empty name")
    return raw + b"/"


def last_created(prefix: bytes, *, max_create_revision: int = 0, limit: int = 2) -> RangeRequest:
    """The ``limit`` keys with the greatest create revisions (at most ``max_create_revision``)."""
    return RangeRequest(
        prefix,
        prefix_range_end(prefix),
        limit=limit,
        sort_order=SortOrder.DESCEND,
        sort_target=SortTarget.CREATE,
        max_create_revision=max_create_revision,
    )


class Stage(enum.Enum):
    """Where a contender is."""

    IDLE = "idle"
    WAITING = "waiting"
    HELD = "held"


class Contender:
    """One place in the queue for ``name`` (the shared logic of locks and elections).

    Attributes:
        client: the client.
        name: the lock's or election's name, as bytes.
        prefix: ``name + b"/"``, under which contenders put their keys.
        session: the session whose lease the key is attached to.
        wakeups: deletion events received while waiting, over every acquisition: with no
            contender giving up or dying, one per acquisition that had to wait.
        waited_for: the create revisions of the keys whose deletion the last acquisition
            waited for, in order (empty if it did not wait).
        queued_revision: the revision of the txn by which the last acquisition queued (or,
            rejoining, found) our key.
        held_revision: the revision of the read at which the last acquisition found our key
            first in line (etcd's Lock response header revision).

    ``rejoin`` (for etcd's v3lock and v3election servers): a key of the session's lease
    already in the queue is taken as ours, where it is otherwise refused as re-entrant use:
    etcd's ``concurrency`` package treats locking twice with one lease as one acquisition, and
    a candidate campaigning again with a new value proclaims it. ``allow_empty_name``: an
    empty name queues under ``/``, as etcd's servers allow.
    """

    _what = "lock"

    def __init__(
        self,
        client: AsyncClient,
        name: Bytes,
        session: AsyncSession,
        *,
        rejoin: bool = False,
        allow_empty_name: bool = False,
    ) -> None:
        if not isinstance(client, AsyncClient):
            raise TypeError(
                f"{type(self).__name__} needs an AsyncClient, got {type(client).__name__} "
                "(kvapp.recipes.Lock, Election and Session are the blocking flavours, for "
                "kvapp.client.Client)"
            )
        if not isinstance(session, AsyncSession):
            raise TypeError(f"{type(self).__name__} needs an AsyncSession, got {session!r:.60}")
        self.client = client
        self.name = as_bytes(name)
        self.prefix = queue_prefix(name, allow_empty=allow_empty_name)
        self.session = session
        self.wakeups = 0
        self.waited_for: list[int] = []
        self.queued_revision = 0
        self.held_revision = 0
        self._rejoin = rejoin
        self._stage = Stage.IDLE
        self._key: bytes | None = None  # our key, once it may exist
        self._revision = 0  # its create revision, once known

    # -- state -------------------------------------------------------------------------------

    @property
    def key(self) -> bytes | None:
        """Our key in the queue (``<name>/<lease id hex>``) while waiting or holding."""
        return self._key

    def _token(self) -> int:
        if self._stage is not Stage.HELD:
            raise NotHeldError(f"the {self._what} {self.name!r} is not held by this object")
        return self._revision

    def _guard(self) -> Compare:
        """The txn compare that holds while our key is the one we created."""
        key, revision = self._key, self._token()
        assert key is not None  # held implies queued
        return Compare(key, CompareTarget.CREATE, CompareResult.EQUAL, revision)

    # -- entering the queue and waiting ------------------------------------------------------

    async def _enter(self, value: bytes | None, timeout: float | None) -> None:  # noqa: ASYNC109
        """Queue with ``value`` and wait until first; on any failure, leave the queue.

        ``value`` None: an empty value for a new key, and a rejoined key's value is kept.

        Raises:
            ReentrantUseError: already waiting or holding (this object, or another on the
                same session and name).
            SessionLost: the session is not active, or was lost while waiting.
            LockLost: our key disappeared while we waited.
            AcquireTimeout: not first within ``timeout`` seconds.
        """
        if self._stage is not Stage.IDLE:
            doing = "holds" if self._stage is Stage.HELD else "waits for"
            raise ReentrantUseError(
                f"this object already {doing} the {self._what} {self.name!r}: it is not re-entrant"
            )
        session = self.session
        session.check()
        key = self.prefix + b"%x" % session.lease_id
        session._claim(key, self, self._what)
        self._stage = Stage.WAITING
        self.waited_for = []
        scope: asyncio.Timeout | None = None
        try:
            async with asyncio.timeout(timeout) as scope:
                await self._wait_first(key, value)
        except BaseException as e:
            await self._leave()
            if isinstance(e, TimeoutError) and scope is not None and scope.expired():
                raise AcquireTimeout(
                    f"{self._what} {self.name!r} not acquired within {timeout} s; "
                    "our key was removed"
                ) from None
            raise
        self._stage = Stage.HELD

    async def _wait_first(self, key: bytes, value: bytes | None) -> None:
        client, session = self.client, self.session
        self._key = key  # from here on it may exist: leaving deletes it
        created = await client.txn(
            [Compare(key, CompareTarget.CREATE, CompareResult.EQUAL, 0)],
            # Revisions only grow, so the key just created is the newest under the prefix:
            # the two newest keys are ours and our predecessor (if any).
            [
                PutRequest(key, value if value is not None else b"", session.lease_id),
                last_created(self.prefix),
            ],
            [RangeRequest(key)] if self._rejoin else [],
        )
        self.queued_revision = created.revision
        if created.succeeded:
            self._revision = created.revision
            found = created.responses[1]
            assert isinstance(found, RangeResponse)
            kvs, revision = found.kvs, created.revision
        elif self._rejoin:
            kvs, revision = await self._rejoin_queue(key, value, created)
        else:
            self._key = None  # not ours to delete
            raise ReentrantUseError(
                f"{key!r} already exists: session {session.lease_id:x} already holds or waits "
                f"for {self._what} {self.name!r} (through another object or process)"
            )
        while True:
            if not kvs or kvs[0].key != key or kvs[0].create_revision != self._revision:
                await session.confirm()  # SessionLost if the lease is gone
                raise LockLost(
                    f"our key {key!r} for {self._what} {self.name!r} was deleted while we waited"
                )
            # etcd#11456: after waiting, the session must still hold its lease. The read above
            # saw our key, attached to the lease, at a revision after the wait; the session
            # says whether its keep-alive has lost the lease since.
            session.check()
            if len(kvs) == 1:
                self.held_revision = revision
                return
            await self._wait_deleted(kvs[1], revision + 1)
            kvs, revision = await self._read_queue()

    async def _read_queue(self) -> tuple[tuple[KeyValue, ...], int]:
        """Our key and its predecessor (newest first), and the revision read at."""
        got = await self.client.get(
            self.prefix,
            prefix_range_end(self.prefix),
            limit=2,
            sort_order=SortOrder.DESCEND,
            sort_target=SortTarget.CREATE,
            max_create_revision=self._revision,
        )
        return got.kvs, got.revision

    async def _rejoin_queue(
        self, key: bytes, value: bytes | None, created: TxnResponse
    ) -> tuple[tuple[KeyValue, ...], int]:
        """Take the existing ``key`` as ours (``rejoin``); see :meth:`_read_queue`.

        Raises:
            LockLost: the key went before its value could be replaced.
        """
        found = created.responses[0]
        assert isinstance(found, RangeResponse)
        ours = found.kvs[0]  # the compare failed, so the key existed at that revision
        self._revision = ours.create_revision
        if value is not None and ours.value != value:
            # etcd's Election.Campaign proclaims the new value of a candidate campaigning again
            guard = Compare(key, CompareTarget.CREATE, CompareResult.EQUAL, self._revision)
            put = PutRequest(key, value, self.session.lease_id)
            if not (await self.client.txn([guard], [put], [])).succeeded:
                raise LockLost(f"our key {key!r} for {self._what} {self.name!r} was deleted")
        return await self._read_queue()

    async def _wait_deleted(self, predecessor: KeyValue, start_revision: int) -> None:
        """Wait until ``predecessor`` is deleted at or after ``start_revision``.

        Returns early (to look again) if the watch ends or its history was compacted.

        Raises:
            SessionLost: the session ended meanwhile.
        """
        self.waited_for.append(predecessor.create_revision)
        try:
            watch = await self.client.watch(
                predecessor.key, start_revision=start_revision, filters=(WatchFilter.NOPUT,)
            )
        except CompactedError:
            return  # the history since our read is gone: look again

        try:
            if await self._next_delete(watch):
                self.wakeups += 1
        finally:
            await watch.cancel()

    async def _next_delete(self, watch: Watch) -> bool:
        ended = self.session._ended
        event_task = asyncio.ensure_future(_next_event_type(watch))
        ended_task = asyncio.ensure_future(ended.wait())
        try:
            await asyncio.wait((event_task, ended_task), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (event_task, ended_task):
                task.cancel()
            await asyncio.gather(event_task, ended_task, return_exceptions=True)
        self.session.check()
        if event_task.cancelled():
            return False
        error = event_task.exception()
        if isinstance(error, CompactedError):
            return False  # look again: the read tells
        if error is not None:
            raise error
        return event_task.result() is EventType.DELETE

    async def _leave(self) -> None:
        """Leave the queue: delete our key if it may exist (even when cancelled meanwhile)."""
        key = self._key
        self._reset()
        if key is None:
            return
        deleting = asyncio.ensure_future(self.client.delete(key))
        try:
            await asyncio.shield(deleting)
        except asyncio.CancelledError:
            _LEAVING.add(deleting)  # the delete goes on: the loop keeps only weak references
            deleting.add_done_callback(lambda t: _log_leave(key, t))
            raise
        except (KvappError, OSError) as e:
            log.warning(
                "kvapp recipes: could not remove %r from the queue: %s; it stays until the "
                "session's lease ends, and other contenders wait behind it",
                key,
                e,
            )

    def _reset(self) -> None:
        if self._key is not None:
            self.session._unclaim(self._key, self)
        self.session._unclaim(self.prefix + b"%x" % self.session.lease_id, self)
        self._key = None
        self._revision = 0
        self._stage = Stage.IDLE

    # -- leaving and fencing -----------------------------------------------------------------

    async def _release(self) -> bool:
        """Delete our key; True if it was still there (held until now)."""
        if self._stage is not Stage.HELD:
            raise NotHeldError(
                f"the {self._what} {self.name!r} is {self._stage.value}, not held by this object"
            )
        key = self._key
        assert key is not None
        resp = await self.client.delete(key)
        self._reset()
        return resp.deleted > 0

    async def _fenced(
        self, compare: Iterable[Compare], success: Iterable[RequestOp], failure: Iterable[RequestOp]
    ) -> TxnResponse:
        guard = self._guard()
        compare, success, failure = tuple(compare), tuple(success), tuple(failure)
        if compare or failure:
            inner: RequestOp = TxnRequest(compare, success, failure)
            resp = await self.client.txn([guard], [inner], [])
        else:
            resp = await self.client.txn([guard], success, [])
        if not resp.succeeded:
            raise LockLost(
                f"fenced write refused: {self._what} {self.name!r} is no longer held "
                f"(our key {self._key!r} created at revision {self._revision} is gone)"
            )
        if compare or failure:
            nested = resp.responses[0]
            assert isinstance(nested, TxnResponse)
            return TxnResponse(resp.revision, nested.succeeded, nested.responses)
        return resp


async def _next_event_type(watch: Watch) -> EventType | None:
    async for event in watch:
        return event.type
    return None


_LEAVING: set[asyncio.Future[DeleteRangeResponse]] = set()


def _log_leave(key: bytes, task: asyncio.Future[DeleteRangeResponse]) -> None:
    _LEAVING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("kvapp recipes: could not remove %r from the queue: %s", key, task.exception())
