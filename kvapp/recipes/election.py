"""Leader election on the lock's queue: campaign, proclaim, leader, observe, resign."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kvapp.client.aio import AsyncClient, Bytes, Watch
from kvapp.errors import CompactedError
from kvapp.mvcc.types import (
    Compare,
    Event,
    EventType,
    KeyValue,
    PutRequest,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnResponse,
)
from kvapp.recipes._queue import Contender, Stage, as_bytes
from kvapp.recipes.errors import NotElectedError
from kvapp.recipes.session import AsyncSession
from kvapp.watch import WatchFilter

__all__ = ["AsyncElection", "LeaderObserver"]

log = logging.getLogger(__name__)


class AsyncElection:
    """Leader election named ``name``, campaigning through ``session`` (asyncio flavour).

    The same queue as :class:`~kvapp.recipes.AsyncLock` (etcd's ``concurrency.Election``):
    a candidate puts ``<name>/<lease id hex>`` holding its value, and leads once its key has
    the smallest create revision under ``<name>/``. The leader's key's value is the election's
    value: :meth:`proclaim` changes it, :meth:`observe` reports each change, and :meth:`resign`
    (or the end of the session) hands leadership to the next candidate in line.

    Like a lock, leadership is only as good as the session's lease: a leader paused past its
    TTL is no longer the leader when it resumes. :meth:`is_leader` and :meth:`fenced_txn`
    guard writes with the leader key's create revision (:attr:`token`).

    Args:
        client: the client.
        name: the election's name; keys go under ``<name>/``.
        session: the session whose lease the candidate's key is attached to.

    Attributes:
        name: the name, as bytes.
        session: the session.
    """

    def __init__(self, client: AsyncClient, name: Bytes, session: AsyncSession) -> None:
        self._q = Contender(client, name, session)
        self._q._what = "election"
        self.client = client
        self.name = self._q.name
        self.session = session
        self._value = b""

    @property
    def key(self) -> bytes | None:
        """Our candidate key while campaigning or leading; else None."""
        return self._q.key

    @property
    def leading(self) -> bool:
        """Whether this object won the election, has not resigned, and its session is active."""
        return self._q._stage is Stage.HELD and self.session.alive

    @property
    def token(self) -> int:
        """Our leader key's create revision (a fencing token, as a lock's).

        Raises:
            NotHeldError: this object is not the leader.
        """
        return self._q._token()

    @property
    def value(self) -> bytes:
        """The value we campaigned with or last proclaimed."""
        return self._value

    async def campaign(
        self,
        value: Bytes,
        timeout: float | None = None,  # noqa: ASYNC109 - the same API as the blocking flavour
    ) -> None:
        """Stand as a candidate with ``value`` and wait until we lead.

        On failure, cancellation or timeout our candidacy is withdrawn (its key removed).

        Raises:
            ReentrantUseError: this object (or another election of this name on the same
                session) is already a candidate or the leader.
            AcquireTimeout: we did not become leader within ``timeout``.
            SessionLost: the session is not active, or lost its lease while we waited.
            LockLost: our key disappeared while we waited.
            EtcdError, ClientError, OutcomeUnknown: the cluster could not be reached.
        """
        data = as_bytes(value)
        await self._q._enter(data, timeout)
        self._value = data

    async def proclaim(self, value: Bytes) -> None:
        """Change the leader's value, if we still lead.

        Raises:
            NotElectedError: this object is not the leader (it never won, or resigned).
            LockLost: we lost the leadership (our key is gone): nothing was written.
        """
        if self._q._stage is not Stage.HELD:
            raise NotElectedError(f"not the leader of election {self.name!r}: cannot proclaim")
        data = as_bytes(value)
        key = self._q.key
        assert key is not None
        await self._q._fenced((), [PutRequest(key, data, self.session.lease_id)], ())
        self._value = data

    async def resign(self) -> bool:
        """Stop leading (or stop campaigning: see :meth:`campaign`'s cancellation).

        Returns:
            True if we were still the leader until now; False if we were not the leader
            (never elected, resigned, or our key was already gone).
        """
        if self._q._stage is not Stage.HELD:
            return False
        return await self._q._release()

    async def leader(self) -> KeyValue | None:
        """The current leader's key and value, or None if nobody leads (linearizable read)."""
        resp = await self.client.get(
            self._q.prefix,
            prefix=True,
            limit=1,
            sort_order=SortOrder.ASCEND,
            sort_target=SortTarget.CREATE,
        )
        return resp.kvs[0] if resp.kvs else None

    def observe(self) -> LeaderObserver:
        """A stream of the leader's key-value: the current leader, then each change.

        A change is a new leader or a proclaimed value; periods without a leader are not
        reported (the next leader is). Use it as ``async with election.observe() as
        leaders: async for kv in leaders: ...``, or call :meth:`LeaderObserver.close`.
        """
        return LeaderObserver(self.client, self._q.prefix)

    def is_leader(self) -> Compare:
        """A txn compare that holds only while we lead (our key, our create revision).

        Raises:
            NotHeldError: this object is not the leader.
        """
        return self._q._guard()

    async def fenced_txn(
        self,
        success: Iterable[RequestOp] = (),
        *,
        compare: Iterable[Compare] = (),
        failure: Iterable[RequestOp] = (),
    ) -> TxnResponse:
        """Run a txn only if we still lead; see :meth:`AsyncLock.fenced_txn`.

        Raises:
            LockLost: we no longer lead: nothing was written.
            NotHeldError: this object is not the leader.
        """
        return await self._q._fenced(compare, success, failure)

    def __repr__(self) -> str:
        stage = self._q._stage.value
        return f"<AsyncElection {self.name!r} {stage} session={self.session.lease_id:x}>"


class LeaderObserver:
    """An async iterator of an election's leaders (see :meth:`AsyncElection.observe`).

    Each item is the leader key's :class:`~kvapp.mvcc.types.KeyValue`: its ``value`` is the
    leader's value, its ``create_revision`` identifies the leader (and is its fencing token),
    ``mod_revision`` the last proclamation. An item is delivered when the leader or its value
    differs from the last one delivered.

    Attributes:
        revision: the revision at which the last item delivered was the leader's key-value
            (the read's revision, or the change's own).
    """

    def __init__(self, client: AsyncClient, prefix: bytes) -> None:
        self._client = client
        self._prefix = prefix
        self.revision = 0
        self._watch: Watch | None = None
        self._read_at = 0
        self._last: tuple[bytes, int, int] | None = None
        self._closed = False

    def __aiter__(self) -> LeaderObserver:
        return self

    async def __anext__(self) -> KeyValue:
        while not self._closed:
            kv = await self._next_leader()
            if kv is None:
                break
            seen = (kv.key, kv.create_revision, kv.mod_revision)
            if seen != self._last:
                self._last = seen
                self.revision = max(self._read_at, kv.mod_revision)
                return kv
        raise StopAsyncIteration

    async def close(self) -> None:
        """Stop observing; iteration ends."""
        self._closed = True
        if self._watch is not None:
            watch, self._watch = self._watch, None
            await watch.cancel()

    async def __aenter__(self) -> LeaderObserver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _next_leader(self) -> KeyValue | None:
        """The leader now or after the next change; None once closed."""
        client, prefix = self._client, self._prefix
        while not self._closed:
            if self._watch is None:
                resp = await client.get(
                    prefix,
                    prefix=True,
                    limit=1,
                    sort_order=SortOrder.ASCEND,
                    sort_target=SortTarget.CREATE,
                )
                leader = resp.kvs[0] if resp.kvs else None
                self._read_at = resp.revision
                if leader is None:  # nobody in line: the first key put leads
                    self._watch = await client.watch(
                        prefix,
                        prefix=True,
                        start_revision=resp.revision + 1,
                        filters=(WatchFilter.NODELETE,),
                    )
                    event = await self._next_event()
                    if event is None:
                        continue
                    leader = event.kv
                self._watch = await client.watch(
                    leader.key, start_revision=max(resp.revision, leader.mod_revision) + 1
                )
                return leader
            event = await self._next_event(keep=True)
            if event is not None:
                return event.kv
        return None

    async def _next_event(self, *, keep: bool = False) -> Event | None:
        """The watch's next PUT; None (and the watch dropped) on a DELETE or its end.

        ``keep``: keep the watch after a PUT (else it is dropped in any case).
        """
        watch = self._watch
        assert watch is not None
        try:
            event = await anext(watch, None)
        except CompactedError:
            event = None
        if event is not None and event.type is EventType.PUT and keep:
            return event
        self._watch = None
        await watch.cancel()
        return event if event is not None and event.type is EventType.PUT else None
