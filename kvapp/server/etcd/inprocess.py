"""An :class:`~kvapp.client.AsyncClient` inside a member: calls go straight to its KvService.

etcd serves its Lock and Election services with its own client library running inside the
member (``v3client``), so that the server side runs the very ``concurrency`` recipe a client
would. kvapp does the same with :mod:`kvapp.recipes`: :func:`in_process_client` makes an
:class:`~kvapp.client.AsyncClient` whose one link calls the member's
:class:`~kvapp.service.KvService` on its own event loop, with no socket and no encoding.

Writes are not deduplicated (the member gets no client or request ids; a write the member
could not finish is ``OutcomeUnknown``, as etcd's in-process client reports a timeout), and
any member serves lease time-to-live: a follower forwards it to the leader's gRPC URL, as
the Lease service does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final, NoReturn

import grpc

from kvapp.client import AsyncClient
from kvapp.client.errors import LinkClosed
from kvapp.client.transport import ConnectorTraits, WatchSink, WatchSpec, WatchStarted
from kvapp.errors import GrpcCode, LeaseNotFoundError
from kvapp.etcdpb import rpc_pb2
from kvapp.lease import LeaseKeepAliveResponse, LeaseTimeToLiveResponse
from kvapp.mvcc.types import RangeRequest, RangeResponse
from kvapp.requests import ErrorResult
from kvapp.server.etcd.services import EtcdApi, LeaseServicer
from kvapp.service import KvService, MemberInfo, StatusInfo, WriteRequest, WriteResponse
from kvapp.watch import ERR_EMPTY_WATCHER_RANGE, WatchStream

__all__ = ["ENDPOINT", "InProcessConnector", "InProcessLink", "in_process_client"]

log = logging.getLogger(__name__)

ENDPOINT: Final = "in-process"
"""The one endpoint of an in-process client."""

_WATCH_BATCH: Final = 256


def in_process_client(api: EtcdApi, *, request_timeout: float = 10.0) -> AsyncClient:
    """A client of the member behind ``api`` (create and use it on the member's loop).

    The member is looked up on each call (``api.service``), so the client may be made before
    the member is attached. Close it when done (it cancels its watches).
    """
    return AsyncClient(
        [ENDPOINT],
        connector=InProcessConnector(api),
        request_timeout=request_timeout,
        writes_to_leader=False,  # its one link is this member; the member forwards
    )


class InProcessConnector:
    """Connects an :class:`~kvapp.client.AsyncClient` to the member behind an EtcdApi."""

    traits: Final = ConnectorTraits(deduplicates_writes=False, forwards_to_leader=True)

    def __init__(self, api: EtcdApi) -> None:
        self.api = api

    async def connect(self, endpoint: str, *, client_id: int) -> InProcessLink:
        """A link to the member (any endpoint name is the member itself)."""
        return InProcessLink(self.api, client_id=client_id)


class _NoMetadata:
    """The servicer context of a call made inside the member: no metadata."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: object) -> NoReturn:
        raise ErrorResult(GrpcCode(code.value[0]), details).to_exception()


class InProcessLink:
    """One client's link to the member's KvService; see :class:`~kvapp.client.transport.Link`.

    Its watchers share one :class:`~kvapp.watch.WatchStream`, drained by a task into their
    sinks.
    """

    def __init__(self, api: EtcdApi, *, client_id: int) -> None:
        self.api = api
        self._client_id = client_id
        self._closed = False
        self._stream: WatchStream | None = None
        self._sinks: dict[int, WatchSink] = {}
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    @property
    def service(self) -> KvService:
        """The member (looked up on each call)."""
        if self._closed:
            raise LinkClosed(ENDPOINT, "the link is closed", sent=False)
        return self.api.service

    @property
    def endpoint(self) -> str:
        """:data:`ENDPOINT`."""
        return ENDPOINT

    @property
    def client_id(self) -> int:
        """The client's id (its writes are not deduplicated under it)."""
        return self._client_id

    @property
    def member_id(self) -> int:
        """The member's id."""
        return self.api.service.header().member_id

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def raft_term(self) -> int:
        """Not tracked: the client never looks for the leader through this link."""
        return 0

    async def write(self, request: WriteRequest, *, request_id: int) -> WriteResponse:
        """Propose a write (no dedup ids)."""
        return await self.service.write(request)

    async def range(self, request: RangeRequest) -> RangeResponse:
        """Read."""
        return await self.service.range(request)

    async def lease_keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        """Renew a lease (on the leader only: a follower raises NotLeaderError)."""
        return await self.service.lease_keep_alive(lease_id)

    async def lease_time_to_live(self, lease_id: int, *, keys: bool) -> LeaseTimeToLiveResponse:
        """A lease's remaining time, from the leader (forwarded by a follower)."""
        request = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        context = _NoMetadata()
        resp = await LeaseServicer(self.api).LeaseTimeToLive(request, context)
        if resp.TTL < 0:
            raise LeaseNotFoundError
        return LeaseTimeToLiveResponse(resp.ID, resp.TTL, resp.grantedTTL, tuple(resp.keys))

    async def leases(self) -> list[int]:
        """Every lease id."""
        return self.service.leases()

    async def member_list(self) -> list[MemberInfo]:
        """The members."""
        return self.service.member_list()

    async def member_add(self, peer_urls: tuple[str, ...], *, is_learner: bool) -> MemberInfo:
        """Add a member."""
        return await self.service.member_add(peer_urls, is_learner=is_learner)

    async def member_remove(self, member_id: int) -> None:
        """Remove a member."""
        await self.service.member_remove(member_id)

    async def member_promote(self, member_id: int) -> None:
        """Promote a learner."""
        await self.service.member_promote(member_id)

    async def status(self) -> StatusInfo:
        """The member's status."""
        return self.service.status()

    async def snapshot(self, sink: Callable[[bytes], object], *, linearizable: bool) -> int:
        """Stream the member's snapshot file into ``sink``."""
        size = 0
        chunks = self.service.snapshot(linearizable=linearizable)
        try:
            async for chunk in chunks:
                sink(chunk)
                size += len(chunk)
        finally:
            await chunks.aclose()
        return size

    async def watch(self, spec: WatchSpec, sink: WatchSink) -> WatchStarted:
        """Create a watcher on the link's stream; its responses go to ``sink``."""
        if self._stream is None:
            self._stream = self.service.open_watch_stream(self._wake.set)
            self._pump = asyncio.create_task(self._deliver())
        revision = self.service.header().revision
        watch_id = self._stream.watch(
            spec.key,
            spec.range_end,
            start_revision=spec.start_revision,
            filters=spec.filters,
            prev_kv=spec.prev_kv,
            progress_notify=spec.progress_notify,
        )
        if watch_id < 0:  # its created+canceled response (watch id -1) is dropped unsent
            raise ErrorResult(GrpcCode.INVALID_ARGUMENT, ERR_EMPTY_WATCHER_RANGE).to_exception()
        self._sinks[watch_id] = sink
        return WatchStarted(watch_id, revision)

    async def watch_cancel(self, watch_id: int) -> None:
        """Cancel a watcher; its sink gets nothing more."""
        if self._sinks.pop(watch_id, None) is not None and self._stream is not None:
            self._stream.cancel(watch_id)

    async def close(self) -> None:
        """Close the link: its watchers' sinks are told the link is lost."""
        if self._closed:
            return
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._stream is not None:
            self._stream.close()
        sinks, self._sinks = list(self._sinks.values()), {}
        error = LinkClosed(ENDPOINT, "the link is closed", sent=False)
        for sink in sinks:
            sink.on_link_lost(error)

    async def _deliver(self) -> None:
        stream = self._stream
        assert stream is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            for resp in stream.take(_WATCH_BATCH):
                sink = self._sinks.get(resp.watch_id)
                if sink is None:
                    continue  # cancelled, or a failed create answered by watch()
                if resp.canceled:
                    del self._sinks[resp.watch_id]
                try:
                    sink.on_watch_response(resp)
                except Exception:
                    log.exception("in-process client: a watch sink failed")
            if stream.has_pending():
                self._wake.set()
                await asyncio.sleep(0)
