r"""etcd's Watch service: one bidirectional stream per client, many watchers on it.

A stream is a thin translation onto one :class:`~kvapp.watch.WatchStream` of the member: the
client's create, cancel and progress requests call it, and what it queues (created and canceled
responses, events one revision per response, progress notifications) is sent in order, with a
header ``{cluster_id, member_id, revision, raft_term}`` whose revision is the response's own.
Everything else (watch ids chosen by the client, duplicate ids, empty ranges, start revisions,
compacted revisions, prev_kv, filters, slow watchers) is decided there, as etcd's mvcc layer
decides it; etcd's API-layer rules are applied here:

- an empty key watches from ``"\0"`` (so key ``""`` with range end ``"\0"`` watches all keys);
- a failed create is answered with ``created`` and ``canceled``, watch id -1 and the reason,
  not with an error status;
- the client closing its side does not end the stream: watchers keep sending until the client
  cancels the call (etcd's behaviour);
- a watcher created with ``fragment`` gets a revision's events split over several responses
  (``fragment`` set on all but the last) when one response would exceed the request size limit
  plus gRPC overhead;
- a flood of creates on one stream is paced: after every :data:`MAX_UNSENT_CREATES` creates,
  the client's next request is read only once everything before it was sent (responses and
  history to replay; etcd sets no limit on watchers per stream, and neither does kvapp, but
  this bounds how many watchers' backlogs the member builds at once, so one stream cannot
  hold its event loop for long; what it queues is bounded per stream by the member, and a
  client that stops reading gets its events later from history, as in etcd);
- with the metadata ``hasleader: true`` (clientv3's ``WithRequireLeader``, which ``etcdctl
  watch`` sets) the stream fails with "etcdserver: no leader" at once when no leader is known,
  and later when none has been known for ``leader_lost_checks`` checks in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

import grpc

from kvapp.errors import EtcdError, NoLeaderError
from kvapp.etcdpb import rpc_pb2
from kvapp.server.etcd import convert
from kvapp.server.etcd.services import EtcdApi, abort_with, is_abort, require_leader
from kvapp.watch import WatchResponse, WatchStream

__all__ = ["GRPC_OVERHEAD_BYTES", "MAX_UNSENT_CREATES", "WatchServicer", "fragments"]

log = logging.getLogger(__name__)

GRPC_OVERHEAD_BYTES: Final = 512 * 1024
"""etcd's allowance for gRPC framing above ``--max-request-bytes``."""

_BATCH: Final = 256

MAX_UNSENT_CREATES: Final = 16
"""Watch creates a stream takes before it waits for everything queued to be sent.

The member bounds what it queues per stream (see :mod:`kvapp.watch`); this bounds the work of
one pass over a stream's watchers catching up, and how many new backlogs a stream starts at once.
"""


def fragments(resp: rpc_pb2.WatchResponse, limit: int) -> list[rpc_pb2.WatchResponse]:
    """Split a watch response as etcd's ``sendFragments`` does.

    A response smaller than ``limit`` bytes, or with fewer than two events, is sent whole.
    Otherwise each part takes events while it stays under ``limit`` (at least one event each);
    every part but the last has ``fragment`` set.
    """
    if resp.ByteSize() < limit or len(resp.events) < 2:
        return [resp]
    parts: list[rpc_pb2.WatchResponse] = []
    events = list(resp.events)
    i = 0
    while i < len(events):
        part = rpc_pb2.WatchResponse()
        part.CopyFrom(resp)
        del part.events[:]
        part.fragment = True
        while i < len(events):
            part.events.append(events[i])
            if len(part.events) > 1 and part.ByteSize() >= limit:
                del part.events[-1]
                break
            i += 1
        parts.append(part)
    parts[-1].fragment = False
    return parts


class WatchServicer:
    """etcdserverpb.Watch.

    Args:
        api: the shared API state.
        max_request_bytes: the member's request size limit (fragments stay below it plus
            :data:`GRPC_OVERHEAD_BYTES`).
        leader_check_interval: seconds between leader checks on streams that require one.
        leader_lost_checks: leaderless checks in a row after which such a stream fails.
    """

    def __init__(
        self,
        api: EtcdApi,
        *,
        max_request_bytes: int,
        leader_check_interval: float = 1.0,
        leader_lost_checks: int = 3,
    ) -> None:
        self.api = api
        self.fragment_limit = max_request_bytes + GRPC_OVERHEAD_BYTES
        self.leader_check_interval = leader_check_interval
        self.leader_lost_checks = leader_lost_checks

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The method handlers to register under ``etcdserverpb.Watch``."""
        return {
            "Watch": grpc.stream_stream_rpc_method_handler(
                self.Watch,
                request_deserializer=rpc_pb2.WatchRequest.FromString,
                response_serializer=rpc_pb2.WatchResponse.SerializeToString,
            )
        }

    async def Watch(
        self,
        requests: AsyncIterator[rpc_pb2.WatchRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpc_pb2.WatchResponse]:
        """Serve one client's watch stream until the client cancels it."""
        try:
            needs_leader = require_leader(self.api.service, context)
        except EtcdError as e:
            await abort_with(context, e)
        session = _Session(self, requests, needs_leader=needs_leader)
        try:
            async for resp in session.run():
                yield resp
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if is_abort(e):
                raise
            await abort_with(context, e)
        finally:
            await session.close()


class _Session:
    """One watch stream's state: the member's WatchStream, the reader task, fragment flags."""

    def __init__(
        self,
        servicer: WatchServicer,
        requests: AsyncIterator[rpc_pb2.WatchRequest],
        *,
        needs_leader: bool,
    ) -> None:
        self.servicer = servicer
        self.api = servicer.api
        self.requests = requests
        self.needs_leader = needs_leader
        self.wake = asyncio.Event()
        self.stream: WatchStream = self.api.service.open_watch_stream(self.wake.set)
        self.fragmented: set[int] = set()
        self.reader: asyncio.Task[None] | None = None
        self.sent_all = asyncio.Event()  # set when a pass left nothing pending
        self.unsent_creates = 0

    async def run(self) -> AsyncIterator[rpc_pb2.WatchResponse]:
        self.reader = asyncio.create_task(self._read())
        self.reader.add_done_callback(lambda _: self.wake.set())
        leaderless = 0
        while True:
            if self.needs_leader:
                try:
                    async with asyncio.timeout(self.servicer.leader_check_interval):
                        await self.wake.wait()
                except TimeoutError:
                    leaderless = 0 if self.api.service.status().leader else leaderless + 1
                    if leaderless >= self.servicer.leader_lost_checks:
                        raise NoLeaderError("no leader on a stream that requires one") from None
                    continue
            else:
                await self.wake.wait()
            self.wake.clear()
            if self.reader.done() and not self.reader.cancelled():
                exc = self.reader.exception()
                if exc is not None:
                    raise exc
            taken = self.stream.take(_BATCH)
            for resp in taken:
                for part in self._encode(resp):
                    yield part
            if self.stream.has_pending():
                self.wake.set()
                if not taken:
                    await asyncio.sleep(0)  # a catch-up pass produced nothing: let others run
            else:
                self.sent_all.set()

    def _encode(self, resp: WatchResponse) -> list[rpc_pb2.WatchResponse]:
        h = self.api.service.header()
        header = rpc_pb2.ResponseHeader(
            cluster_id=h.cluster_id,
            member_id=h.member_id,
            revision=resp.revision,
            raft_term=h.raft_term,
        )
        pb = convert.watch_response_to_pb(resp, header)
        if resp.canceled:
            self.fragmented.discard(resp.watch_id)
        elif resp.watch_id in self.fragmented and len(resp.events) > 1:
            return fragments(pb, self.servicer.fragment_limit)
        return [pb]

    async def _read(self) -> None:
        async for req in self.requests:
            if req.WhichOneof("request_union") == "create_request":
                if self.unsent_creates >= MAX_UNSENT_CREATES:
                    self.sent_all.clear()
                    if self.stream.has_pending():
                        await self.sent_all.wait()
                    self.unsent_creates = 0
                self.unsent_creates += 1
            self._handle(req)
        # The client closed its side: keep sending until it cancels the call, as etcd does.

    def _handle(self, req: rpc_pb2.WatchRequest) -> None:
        match req.WhichOneof("request_union"):
            case "create_request":
                c = req.create_request
                watch_id = self.stream.watch(
                    c.key or b"\0",
                    c.range_end,
                    start_revision=c.start_revision,
                    filters=convert.watch_filters_from_pb(c.filters),
                    prev_kv=c.prev_kv,
                    progress_notify=c.progress_notify,
                    watch_id=c.watch_id,
                )
                if watch_id >= 0 and c.fragment:
                    self.fragmented.add(watch_id)
            case "cancel_request":
                self.stream.cancel(req.cancel_request.watch_id)
            case "progress_request":
                self.stream.request_progress()
            case _:
                pass  # an empty request: etcd ignores it

    async def close(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        self.stream.close()
