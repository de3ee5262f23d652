"""A blocking client: :class:`AsyncClient` on its own event loop in a background thread.

For code without an event loop (scripts, threads, the CLI). Every method blocks until the
asynchronous call finishes on the client's loop and returns or raises what it did. The client
is thread-safe (calls from several threads interleave on its loop), but must not be called from
its own loop, i.e. from inside a keep-alive callback.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from kvapp.client.aio import AsyncClient, Bytes, KeepAlive, LeaseLoss, Watch
from kvapp.lease import (
    LeaseGrantResponse,
    LeaseKeepAliveResponse,
    LeaseRevokeResponse,
    LeaseTimeToLiveResponse,
)
from kvapp.mvcc.types import (
    CompactResponse,
    Compare,
    DeleteRangeResponse,
    Event,
    PutResponse,
    RangeResponse,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnResponse,
)
from kvapp.requests import AlarmMember
from kvapp.service import MemberInfo, StatusInfo
from kvapp.watch import WatchFilter

__all__ = ["Client", "SyncKeepAlive", "SyncWatch"]

_T = TypeVar("_T")


class Client:
    """The blocking twin of :class:`~kvapp.client.AsyncClient`: same methods, same arguments.

    Use it as ``with Client([...]) as client:``, or call :meth:`close` (which stops the
    background thread).

    Args:
        endpoints: as for :class:`AsyncClient`.
        **options: :class:`AsyncClient`'s keyword arguments.
    """

    def __init__(self, endpoints: Sequence[str] | str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="kvapp-client", daemon=True)
        self._closed = False
        self._thread.start()
        try:
            self._client = self._call(self._make(endpoints, options))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _make(endpoints: Sequence[str] | str, options: dict[str, Any]) -> AsyncClient:
        return AsyncClient(endpoints, **options)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("the sync client cannot be called from its own event loop")
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    @property
    def client_id(self) -> int:
        """The id deduplicating this client's writes."""
        return self._client.client_id

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoints the client uses now (see :meth:`sync_endpoints`)."""
        return self._client.endpoints

    @property
    def aio(self) -> AsyncClient:
        """The asynchronous client underneath (use it only on :attr:`loop`)."""
        return self._client

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The client's event loop, running in its background thread."""
        return self._loop

    def close(self) -> None:
        """Close the client and stop its thread."""
        if self._closed:
            return
        try:
            self._call(self._client.close())
        finally:
            self._closed = True
            self._stop_loop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- KV ----------------------------------------------------------------------------------

    def put(
        self,
        key: Bytes,
        value: Bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResponse:
        """See :meth:`AsyncClient.put`."""
        return self._call(
            self._client.put(
                key,
                value,
                lease=lease,
                prev_kv=prev_kv,
                ignore_value=ignore_value,
                ignore_lease=ignore_lease,
            )
        )

    def get(
        self,
        key: Bytes,
        range_end: Bytes = b"",
        *,
        prefix: bool = False,
        serializable: bool = False,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> RangeResponse:
        """See :meth:`AsyncClient.get`."""
        return self._call(
            self._client.get(
                key,
                range_end,
                prefix=prefix,
                serializable=serializable,
                revision=revision,
                limit=limit,
                keys_only=keys_only,
                count_only=count_only,
                sort_order=sort_order,
                sort_target=sort_target,
                min_mod_revision=min_mod_revision,
                max_mod_revision=max_mod_revision,
                min_create_revision=min_create_revision,
                max_create_revision=max_create_revision,
            )
        )

    def delete(
        self, key: Bytes, range_end: Bytes = b"", *, prefix: bool = False, prev_kv: bool = False
    ) -> DeleteRangeResponse:
        """See :meth:`AsyncClient.delete`."""
        return self._call(self._client.delete(key, range_end, prefix=prefix, prev_kv=prev_kv))

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[RequestOp] = (),
        failure: Iterable[RequestOp] = (),
    ) -> TxnResponse:
        """See :meth:`AsyncClient.txn`."""
        return self._call(self._client.txn(compare, success, failure))

    def compact(self, revision: int, *, physical: bool = False) -> CompactResponse:
        """See :meth:`AsyncClient.compact`."""
        return self._call(self._client.compact(revision, physical=physical))

    # -- leases ------------------------------------------------------------------------------

    def lease_grant(self, ttl: int, *, lease_id: int = 0) -> LeaseGrantResponse:
        """See :meth:`AsyncClient.lease_grant`."""
        return self._call(self._client.lease_grant(ttl, lease_id=lease_id))

    def lease_revoke(self, lease_id: int) -> LeaseRevokeResponse:
        """See :meth:`AsyncClient.lease_revoke`."""
        return self._call(self._client.lease_revoke(lease_id))

    def lease_time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseTimeToLiveResponse:
        """See :meth:`AsyncClient.lease_time_to_live`."""
        return self._call(self._client.lease_time_to_live(lease_id, keys=keys))

    def leases(self) -> list[int]:
        """See :meth:`AsyncClient.leases`."""
        return self._call(self._client.leases())

    def keep_alive_once(self, lease_id: int) -> LeaseKeepAliveResponse:
        """See :meth:`AsyncClient.keep_alive_once`."""
        return self._call(self._client.keep_alive_once(lease_id))

    def keep_alive(
        self, lease_id: int, *, on_lost: Callable[[SyncKeepAlive], object] | None = None
    ) -> SyncKeepAlive:
        """See :meth:`AsyncClient.keep_alive`; ``on_lost`` runs on the client's thread."""

        async def start() -> SyncKeepAlive:
            ka = await self._client.keep_alive(lease_id)
            handle = SyncKeepAlive(self, ka)
            if on_lost is not None:
                ka.add_callback(lambda _: on_lost(handle))
            return handle

        return self._call(start())

    # -- watch -------------------------------------------------------------------------------

    def watch(
        self,
        key: Bytes,
        range_end: Bytes = b"",
        *,
        prefix: bool = False,
        start_revision: int = 0,
        filters: Iterable[WatchFilter] = (),
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> SyncWatch:
        """See :meth:`AsyncClient.watch`; iterate the result for the events."""
        w = self._call(
            self._client.watch(
                key,
                range_end,
                prefix=prefix,
                start_revision=start_revision,
                filters=tuple(filters),
                prev_kv=prev_kv,
                progress_notify=progress_notify,
            )
        )
        return SyncWatch(self, w)

    # -- cluster and maintenance -------------------------------------------------------------

    def member_list(self) -> list[MemberInfo]:
        """See :meth:`AsyncClient.member_list`."""
        return self._call(self._client.member_list())

    def sync_endpoints(self) -> tuple[str, ...]:
        """See :meth:`AsyncClient.sync_endpoints`."""
        return self._call(self._client.sync_endpoints())

    def member_add(self, peer_urls: Sequence[str], *, is_learner: bool = False) -> MemberInfo:
        """See :meth:`AsyncClient.member_add`."""
        return self._call(self._client.member_add(peer_urls, is_learner=is_learner))

    def member_remove(self, member_id: int) -> None:
        """See :meth:`AsyncClient.member_remove`."""
        self._call(self._client.member_remove(member_id))

    def member_promote(self, member_id: int) -> None:
        """See :meth:`AsyncClient.member_promote`."""
        self._call(self._client.member_promote(member_id))

    def member_update(self, member_id: int, peer_urls: Sequence[str]) -> None:
        """See :meth:`AsyncClient.member_update`."""
        self._call(self._client.member_update(member_id, peer_urls))

    def alarm_list(self) -> list[AlarmMember]:
        """See :meth:`AsyncClient.alarm_list`."""
        return self._call(self._client.alarm_list())

    def alarm_disarm(self, alarm: AlarmMember | None = None) -> list[AlarmMember]:
        """See :meth:`AsyncClient.alarm_disarm`."""
        return self._call(self._client.alarm_disarm(alarm))

    def status(self, endpoint: str | None = None) -> StatusInfo:
        """See :meth:`AsyncClient.status`."""
        return self._call(self._client.status(endpoint))

    def snapshot(
        self,
        sink: Callable[[bytes], object],
        *,
        endpoint: str | None = None,
        linearizable: bool = True,
    ) -> int:
        """See :meth:`AsyncClient.snapshot` (``sink`` runs on the client's thread)."""
        return self._call(self._client.snapshot(sink, endpoint=endpoint, linearizable=linearizable))


class SyncWatch:
    """A blocking iterator over a :class:`~kvapp.client.aio.Watch`'s events."""

    def __init__(self, owner: Client, watch: Watch) -> None:
        self._owner = owner
        self._watch = watch

    @property
    def next_revision(self) -> int:
        """The revision of the next event to deliver."""
        return self._watch.next_revision

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        try:
            return self._owner._call(self._watch.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def get(self, timeout: float) -> Event | None:
        """The next event, or None if none arrives within ``timeout`` seconds.

        Raises:
            StopIteration: the watch ended.
            CompactedError: the history to resume from was compacted.
        """

        async def next_event() -> Event | None:
            try:
                async with asyncio.timeout(timeout):
                    return await self._watch.__anext__()
            except TimeoutError:
                return None

        try:
            return self._owner._call(next_event())
        except StopAsyncIteration:
            raise StopIteration from None

    def cancel(self) -> None:
        """Stop watching."""
        self._owner._call(self._watch.cancel())

    def __enter__(self) -> SyncWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class SyncKeepAlive:
    """A blocking view of a :class:`~kvapp.client.aio.KeepAlive`."""

    def __init__(self, owner: Client, keep_alive: KeepAlive) -> None:
        self._owner = owner
        self._ka = keep_alive
        self._lost = threading.Event()
        keep_alive.add_callback(lambda _: self._lost.set())

    @property
    def lease_id(self) -> int:
        """The lease."""
        return self._ka.lease_id

    @property
    def ttl(self) -> int:
        """Its TTL from the last renewal."""
        return self._ka.ttl

    @property
    def renewals(self) -> int:
        """Successful renewals so far."""
        return self._ka.renewals

    @property
    def alive(self) -> bool:
        """Whether the lease is held and being renewed."""
        return self._ka.alive

    @property
    def reason(self) -> LeaseLoss | None:
        """Why the lease was lost, or None."""
        return self._ka.reason

    @property
    def error(self) -> BaseException | None:
        """The last renewal failure, if any."""
        return self._ka.error

    def wait_lost(self, timeout: float | None = None) -> LeaseLoss | None:
        """Block until the lease is lost (or ``timeout``); returns why, or None if not lost."""
        self._lost.wait(timeout)
        return self._ka.reason

    def stop(self) -> None:
        """Stop renewing."""
        self._owner._call(self._ka.stop())

    def __enter__(self) -> SyncKeepAlive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
