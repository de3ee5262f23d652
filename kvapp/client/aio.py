"""The asyncio client: etcd's KV, Lease, Watch, Cluster and Status calls over a list of endpoints.

One :class:`AsyncClient` talks to a cluster through one connection per member it uses
(:mod:`kvapp.client.transport`): kvapp's native protocol by default, or etcd's v3 gRPC API with
``protocol="etcd"`` (:mod:`kvapp.client.etcd`), which also talks to real etcd. What it adds to
a connection:

Endpoints and failover
    Requests go to the current endpoint; when its connection fails the client moves to the
    next endpoint in the list (round robin), and so on. Lease keep-alives and time-to-live go
    to the leader, found by asking any member for its status (leader id), then connecting to
    the endpoint known to be that member, or to the leader's client URLs from the member list,
    or probing the remaining endpoints.

    With the native protocol, writes go to the leader too while it is known and reachable
    (``writes_to_leader``). Any member takes a write, a follower by forwarding it to the
    leader and waiting to apply it itself, so this only saves work: two network hops and the
    follower's share of each write (``benchmarks/kvload.py`` on a 3-member cluster: 1.37x the
    puts/s at 64 in flight, a lone put's p50 1.38 -> 1.05 ms). The leader found is dropped
    when its connection fails, when it answers "unavailable", or when an answer carries a Raft
    term above the one it was found in (the leadership may have moved); the next write looks
    again. While no leader can be found, or after the leader answered "unavailable" (an
    election), writes go to the current endpoint, which holds them until a leader is elected,
    and the client looks again a second later.

Retries
    - reads (range, status, lists, time-to-live, keep-alive) are retried on connection
      failures, timeouts and etcd's "unavailable" errors (no leader, leader changed, timed
      out), on the next endpoint, up to ``max_attempts`` times with exponential back-off;
    - writes (put, delete, txn, compact, lease grant/revoke) are retried the same way, but
      always under the same request id, so the member applies a retried write once. If some
      attempt may have reached a member (the connection was lost after sending, the answer
      timed out, the member said the outcome was unknown) and no later attempt got an
      answer, the call raises :class:`~kvapp.service.OutcomeUnknown`; never does it retry a
      write under a new id. A write takes its request id only once every write numbered a
      window (``max_inflight_writes``) below it has finished, so a member still remembers
      it however long it is retried;
    - membership changes carry no request id, so they are retried only when no attempt can
      have reached a member; otherwise :class:`~kvapp.service.OutcomeUnknown`;
    - over etcd's API (``protocol="etcd"``) writes carry no request id either (etcd has no
      deduplication), so they are treated like membership changes: retried only when no
      attempt can have reached a member, else :class:`~kvapp.service.OutcomeUnknown`. The
      members forward keep-alives and time-to-live to the leader themselves, so these go to
      the current endpoint like reads.

Every other failure raises at once: the member's :class:`~kvapp.errors.EtcdError` (the same
class and text it raised), or :class:`~kvapp.client.errors.Unavailable` when no endpoint could
serve the request.

Watches resume after a failover from the revision after the last one delivered, so their
consumers see every event once, in order (or :class:`~kvapp.errors.CompactedError` if that
history was compacted meanwhile). Keep-alives renew every TTL/3 and report the loss of the
lease (revoked or expired, or renewals failing for a whole TTL) through their state, an event
and callbacks, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import random
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final, Literal, TypeVar

import attrs

from kvapp.client.deadlines import Deadlines
from kvapp.client.errors import ClientError, LinkClosed, Unavailable
from kvapp.client.native import NativeConnector, parse_endpoint
from kvapp.client.transport import AdminLink, Connector, Link, WatchSpec, traits_of
from kvapp.dedup import DEFAULT_WINDOW
from kvapp.errors import (
    CompactedError,
    EtcdError,
    GrpcCode,
    KvappError,
    LeaderChangedError,
    LeaseNotFoundError,
    NoLeaderError,
    NotLeaderError,
    RequestTimeoutError,
)
from kvapp.lease import (
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseKeepAliveResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    LeaseTimeToLiveResponse,
)
from kvapp.mvcc.keyrange import ALL_KEYS_END, prefix_range_end
from kvapp.mvcc.types import (
    CompactRequest,
    CompactResponse,
    Compare,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from kvapp.requests import (
    AlarmAction,
    AlarmMember,
    AlarmResponse,
    AlarmType,
    RequestIdExpiredError,
)
from kvapp.service import MemberInfo, OutcomeUnknown, StatusInfo, WriteRequest, WriteResponse
from kvapp.tls import ClientTls
from kvapp.watch import WatchFilter, WatchResponse

__all__ = ["AsyncClient", "KeepAlive", "LeaseLoss", "Watch", "key_range"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_W = TypeVar("_W", bound=WriteResponse)

_MAX_BACKOFF: Final = 1.0
_LEADER_SEARCH_PAUSE: Final = 1.0
"""Seconds after a failed search for the leader during which writes go to the current
endpoint without searching again."""
_WATCH_RESUME_PAUSE: Final = 0.5

Bytes = bytes | str
"""Keys and values: bytes, or text (encoded as UTF-8)."""


def _why(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _address(endpoint: str) -> tuple[str, int] | str:
    """``endpoint``'s host (lower case) and port, to compare endpoints spelled differently."""
    try:
        host, port = parse_endpoint(endpoint)
    except ValueError:
        return endpoint
    return host.lower(), port


def _b(value: Bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def key_range(key: Bytes, range_end: Bytes = b"", *, prefix: bool = False) -> tuple[bytes, bytes]:
    r"""The ``(key, range_end)`` pair of a request, as etcd's clients build it.

    ``prefix`` selects every key starting with ``key`` (every key at all when ``key`` is
    empty); otherwise ``range_end`` is used as given (empty: the single key).
    """
    k, end = _b(key), _b(range_end)
    if prefix:
        if not k:
            return ALL_KEYS_END, ALL_KEYS_END
        return k, prefix_range_end(k)
    return k, end


class _Mode(enum.Enum):
    READ = "read"  # idempotent: retry anything retryable
    WRITE = "write"  # deduplicated by request id: retry, but track ambiguity
    ONCE = "once"  # not deduplicated: retry only what certainly did not reach a member


def _random_client_id() -> int:
    return secrets.randbits(63) or 1


@attrs.define
class _WriteIds:
    """The ids a write is deduplicated under."""

    client_id: int
    request_id: int


class _WriteWindow:
    """Hands out write request ids: id ``m`` only once every id ``<= m - size`` is released.

    A member remembers a client's results only for the ``window`` request ids below the highest
    one it applied (:mod:`kvapp.dedup`) and refuses a retry of an older id. Bounding the number
    of writes in flight is not enough: while one write is retried, later ones complete, newer
    ids take their places and the member's highest id moves a window past the retried one. So
    ids are a sliding window: a write's id is released when it finishes (answered, or given up),
    and the next id is handed out only while the lowest unreleased one is less than ``size``
    below it. At most ``size`` writes are then in flight, too.

    Callers that find no id free queue first come, first served (:meth:`wait`). :meth:`reset`
    starts over under a new client id: the old id's writes no longer hold anything back (their
    release is ignored), and waiters get ids of the new one.
    """

    __slots__ = ("_low", "_next", "_open", "_waiters", "client_id", "size")

    def __init__(self, client_id: int, size: int) -> None:
        self.client_id = client_id
        self.size = size
        self._next = 1  # the next id to hand out
        self._low = 1  # the lowest id not released (_next when none is out)
        self._open: set[int] = set()  # handed out, not released
        self._waiters: deque[asyncio.Future[_WriteIds]] = deque()

    def take(self) -> _WriteIds | None:
        """The next ids, if one is free and nobody waits; else None (then :meth:`wait`)."""
        if self._waiters or self._next - self._low >= self.size:
            return None
        return self._issue()

    async def wait(self) -> _WriteIds:
        """Wait in line for the next free id; cancelled, it takes none (or gives it back)."""
        future: asyncio.Future[_WriteIds] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted just before
                self.release(future.result())
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(future)
            raise

    def release(self, ids: _WriteIds) -> None:
        """The write numbered ``ids`` finished; releasing it again changes nothing."""
        if ids.client_id != self.client_id:
            return  # numbered under a former client id
        rid = ids.request_id
        self._open.discard(rid)
        if rid == self._low:
            low, end, still_out = rid + 1, self._next, self._open
            while low < end and low not in still_out:
                low += 1
            self._low = low
            if self._waiters:
                self._grant()

    def reset(self, client_id: int) -> None:
        """Start over under ``client_id``, numbering from 1 (a new session)."""
        self.client_id = client_id
        self._next = self._low = 1
        self._open = set()
        self._grant()

    def _issue(self) -> _WriteIds:
        rid = self._next
        self._next = rid + 1
        self._open.add(rid)
        return _WriteIds(self.client_id, rid)

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters and self._next - self._low < self.size:
            future = waiters.popleft()
            if not future.done():  # else cancelled: it takes nothing
                future.set_result(self._issue())


class AsyncClient:
    """An asyncio client for a kvapp or etcd cluster. See the module docstring.

    Use it as ``async with AsyncClient([...]) as client:``, or call :meth:`close`.

    Args:
        endpoints: ``host:port`` (or ``scheme://host:port``) of one or more members: their
            native client URLs, or with ``protocol="etcd"`` their etcd gRPC URLs.
        connect_timeout: seconds to connect and handshake with one endpoint.
        request_timeout: seconds one attempt of a request may take.
        max_attempts: attempts per request before giving up (at least 1).
        retry_backoff: the first pause between attempts, doubled each time (capped at 1 s).
        client_id: the id deduplicating this client's writes; random (63 bits) by default
            (not sent over etcd's API, which has no deduplication).
        max_inflight_writes: the window of write request ids in flight: a write takes request
            id ``m`` only once every write numbered ``m - max_inflight_writes`` or below has
            finished (answered, or given up), however long that one is being retried. So at
            most this many writes are in flight, and more wait their turn, first come, first
            served. Keep it at most the members' deduplication window
            (:data:`kvapp.dedup.DEFAULT_WINDOW`): a member refuses a request id that far behind
            the client's newest one, since it no longer knows whether it applied it. Not
            used over etcd's API (no request ids): writes are not limited there.
        protocol: ``"native"`` (kvapp's native protocol) or ``"etcd"`` (etcd's v3 gRPC API,
            to kvapp members serving it or to real etcd; see :mod:`kvapp.client.etcd`).
        connector: the transport, instead of ``protocol``'s.
        tls: connect over TLS (etcdctl's ``--cacert --cert --key``), with either protocol;
            the members' certificates must name the endpoints' hosts. Not used with
            ``connector``.
        writes_to_leader: send writes to the leader while it is known (see the module
            docstring); False: to the current endpoint, like every other request. Default:
            with the native protocol only (over etcd's API writes go where etcd's own clients
            send them; leader discovery there is not tested).
        rng: the source of retry jitter (seed it, with ``client_id``, for reproducible runs,
            e.g. under a simulated event loop); default a system-seeded ``random.Random()``.
        auto_sync_interval: seconds between calls of :meth:`sync_endpoints` in the
            background, from the first connection on (etcd's ``AutoSyncInterval``); 0, the
            default, never syncs on its own.

    Raises:
        kvapp.tls.TlsConfigError: a TLS file is missing, unreadable or unusable.

    Attributes:
        client_id: the id under which writes are deduplicated; it changes only if a member
            says it forgot this client's session or the request id is outside its retry
            window (then that write raised OutcomeUnknown), and request ids start again at 1.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 10.0,
        max_attempts: int = 5,
        retry_backoff: float = 0.05,
        client_id: int | None = None,
        max_inflight_writes: int = DEFAULT_WINDOW,
        protocol: Literal["native", "etcd"] = "native",
        connector: Connector | None = None,
        tls: ClientTls | None = None,
        writes_to_leader: bool | None = None,
        rng: random.Random | None = None,
        auto_sync_interval: float = 0.0,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        if max_attempts < 1 or max_inflight_writes < 1:
            raise ValueError("invalid client configuration")
        if connect_timeout <= 0 or request_timeout <= 0:
            raise ValueError("invalid client configuration")
        if client_id is not None and not 0 < client_id < 1 << 63:
            raise ValueError("client_id must be 1..2**63-1")
        if not 0 <= auto_sync_interval < math.inf:
            raise ValueError("auto_sync_interval must be 0 (off) or a number of seconds")
        if protocol not in ("native", "etcd"):
            raise ValueError(f"protocol must be 'native' or 'etcd', not {protocol!r}")
        if connector is None:
            if protocol == "native":
                connector = NativeConnector(tls=tls.context() if tls is not None else None)
            else:
                connector = _etcd_connector(connect_timeout, tls)
        self.endpoints = tuple(endpoints)
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._deadlines = Deadlines(request_timeout)
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self._rng = rng if rng is not None else random.Random()
        self.client_id = client_id if client_id is not None else _random_client_id()
        self._window = _WriteWindow(self.client_id, max_inflight_writes)
        self._connector: Connector = connector
        traits = traits_of(connector)
        self._dedup = traits.deduplicates_writes
        self._to_leader = not traits.forwards_to_leader
        self._links: dict[str, Link] = {}
        self._member_of: dict[str, int] = {}
        self._current = 0
        self._leader: str | None = None
        self._leader_term = 0  # the Raft term in which the leader was found
        self._writes_to_leader = (
            writes_to_leader if writes_to_leader is not None else self._to_leader
        )
        self._searching = False  # a write is looking for the leader
        self._search_after = 0.0  # loop time before which writes do not look for it
        self._connect_lock = asyncio.Lock()
        self._closed = False
        self._watches: set[Watch] = set()
        self._keep_alives: set[KeepAlive] = set()
        self._auto_sync_interval = auto_sync_interval
        self._auto_sync: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop every watch and keep-alive and close every connection."""
        self._closed = True
        if self._auto_sync is not None:
            self._auto_sync.cancel()
            await asyncio.gather(self._auto_sync, return_exceptions=True)
        for ka in list(self._keep_alives):
            await ka.stop()
        for w in list(self._watches):
            await w.cancel()
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            await link.close()

    # -- KV ----------------------------------------------------------------------------------

    async def put(
        self,
        key: Bytes,
        value: Bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResponse:
        """Write one key (etcd's Put); ``lease`` attaches it to a lease."""
        request = PutRequest(_b(key), _b(value), lease, prev_kv, ignore_value, ignore_lease)
        return await self._write(request, PutResponse)

    async def get(
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
        """Read a key or a range (etcd's Range); linearizable unless ``serializable``."""
        k, end = key_range(key, range_end, prefix=prefix)
        request = RangeRequest(
            k,
            end,
            limit,
            revision,
            sort_order,
            sort_target,
            serializable,
            keys_only,
            count_only,
            min_mod_revision,
            max_mod_revision,
            min_create_revision,
            max_create_revision,
        )
        return await self._retry(lambda link: link.range(request), _Mode.READ, "get")

    async def delete(
        self, key: Bytes, range_end: Bytes = b"", *, prefix: bool = False, prev_kv: bool = False
    ) -> DeleteRangeResponse:
        """Delete a key or a range (etcd's DeleteRange)."""
        k, end = key_range(key, range_end, prefix=prefix)
        return await self._write(DeleteRangeRequest(k, end, prev_kv), DeleteRangeResponse)

    async def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[RequestOp] = (),
        failure: Iterable[RequestOp] = (),
    ) -> TxnResponse:
        """If every compare holds run ``success``, else ``failure``, in one revision (etcd's Txn).

        :mod:`kvapp.client.txn` has helpers to build compares and operations.
        """
        return await self._write(TxnRequest(compare, success, failure), TxnResponse)

    async def compact(self, revision: int, *, physical: bool = False) -> CompactResponse:
        """Drop the history before ``revision``."""
        return await self._write(CompactRequest(revision, physical), CompactResponse)

    # -- leases ------------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, lease_id: int = 0) -> LeaseGrantResponse:
        """Create a lease of ``ttl`` seconds (``lease_id`` 0: the cluster picks the id)."""
        return await self._write(LeaseGrantRequest(ttl, lease_id), LeaseGrantResponse)

    async def lease_revoke(self, lease_id: int) -> LeaseRevokeResponse:
        """Delete a lease and every key attached to it."""
        return await self._write(LeaseRevokeRequest(lease_id), LeaseRevokeResponse)

    async def lease_time_to_live(
        self, lease_id: int, *, keys: bool = False
    ) -> LeaseTimeToLiveResponse:
        """A lease's remaining and granted TTL (and its keys), from the leader."""
        return await self._retry(
            lambda link: link.lease_time_to_live(lease_id, keys=keys),
            _Mode.READ,
            "lease time-to-live",
            leader=True,
        )

    async def leases(self) -> list[int]:
        """Every lease id."""
        return await self._retry(lambda link: link.leases(), _Mode.READ, "leases")

    async def keep_alive_once(self, lease_id: int) -> LeaseKeepAliveResponse:
        """Renew a lease once, on the leader (with the read retries)."""
        return await self._retry(
            lambda link: link.lease_keep_alive(lease_id), _Mode.READ, "keep-alive", leader=True
        )

    async def keep_alive(
        self, lease_id: int, *, on_lost: Callable[[KeepAlive], object] | None = None
    ) -> KeepAlive:
        """Renew a lease now, then keep renewing it every TTL/3 in the background.

        The returned :class:`KeepAlive` reports the lease's loss; stop it with
        :meth:`KeepAlive.stop` (or ``async with``).

        Raises:
            LeaseNotFoundError: the lease does not exist (any more).
            EtcdError, Unavailable: the first renewal failed.
        """
        sent_at = asyncio.get_running_loop().time()
        first = await self.keep_alive_once(lease_id)
        if first.ttl <= 0:
            raise LeaseNotFoundError(f"lease {lease_id:x} has expired")
        ka = KeepAlive(self, lease_id, first.ttl, sent_at)
        if on_lost is not None:
            ka.add_callback(on_lost)
        self._keep_alives.add(ka)
        ka._start()
        return ka

    # -- watch -------------------------------------------------------------------------------

    async def watch(
        self,
        key: Bytes,
        range_end: Bytes = b"",
        *,
        prefix: bool = False,
        start_revision: int = 0,
        filters: Iterable[WatchFilter] = (),
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> Watch:
        """Watch a key or range; returns once the watcher exists on a member.

        ``start_revision`` 0 reports the revisions after the current one; a lower revision
        replays history from there. Iterate the returned :class:`Watch` for the events.

        Raises:
            EtcdError: the member refused the watch (e.g. an empty range).
            Unavailable: no endpoint could create it.
        """
        k, end = key_range(key, range_end, prefix=prefix)
        spec = WatchSpec(k, end, start_revision, filters, prev_kv, progress_notify)
        w = Watch(self, spec)
        await self._retry(w._establish, _Mode.READ, "watch")
        self._watches.add(w)
        w._start()
        return w

    # -- cluster and maintenance -------------------------------------------------------------

    async def member_list(self) -> list[MemberInfo]:
        """The cluster's members."""
        return await self._retry(lambda link: link.member_list(), _Mode.READ, "member list")

    async def sync_endpoints(self) -> tuple[str, ...]:
        """Make the endpoint list the client URLs of the cluster's voting members; the new list.

        What etcd's ``Client.Sync`` does, so that a client outlives the members it was first
        given once they are replaced. Learners and members that have not published their
        client URLs yet (just added, not started) give none; an endpoint already listed stays
        if it belongs to one of those (known from a connection), or, while some voter has
        published no URL, if the client never connected to it: so a sync made while members
        are starting does not shrink the list to the few that have published, which a later
        replacement of those could leave unreachable. Endpoints of removed members go. A URL
        naming the address of an endpoint already listed keeps that endpoint's spelling, so
        its connection is reused. Connections to endpoints no longer listed stay open until
        they fail or the client closes (closing them could cut a write in flight). If the
        result would be empty, the list is left as it was.
        """
        members = await self.member_list()
        # Over etcd's API the list shows the gRPC URLs unmarked, so this is right for both.
        published = {
            m.id: m.native_client_urls
            for m in members
            if m.name and m.native_client_urls and not m.is_learner
        }
        incomplete = any(not m.is_learner and m.id not in published for m in members)
        listed = {m.id for m in members}
        keep = []
        for e in self.endpoints:
            member = self._member_of.get(e)
            if member is None:
                if incomplete:
                    keep.append(e)
            elif member in listed and member not in published:
                keep.append(e)
        urls = [u for urls in published.values() for u in urls] + keep
        if urls:
            self._set_endpoints(urls)
        return self.endpoints

    async def member_add(self, peer_urls: Sequence[str], *, is_learner: bool = False) -> MemberInfo:
        """Add a member (retried only while it certainly reached no member).

        Membership changes go where writes go (with the native protocol, the leader while it
        is known or can be found, else the current endpoint): Raft takes one at a time, and
        the leader refuses another at once (``TooManyRequestsError``, nothing changed), where
        a follower forwarding it would learn nothing and time out.
        """
        urls = (peer_urls,) if isinstance(peer_urls, str) else tuple(peer_urls)
        return await self._retry(
            lambda link: link.member_add(urls, is_learner=is_learner),
            _Mode.ONCE,
            "member add",
            write=True,
        )

    async def member_remove(self, member_id: int) -> None:
        """Remove a member (retried only while it certainly reached no member).

        Sent as :meth:`member_add` is.
        """
        await self._retry(
            lambda link: link.member_remove(member_id), _Mode.ONCE, "member remove", write=True
        )

    async def member_promote(self, member_id: int) -> None:
        """Promote a learner (retried only while it certainly reached no member).

        Sent to the leader: only it knows whether the learner is in sync.
        """
        await self._retry(
            lambda link: link.member_promote(member_id), _Mode.ONCE, "member promote", leader=True
        )

    async def member_update(self, member_id: int, peer_urls: Sequence[str]) -> None:
        """Give a member new peer URLs (retried only while it certainly reached no member).

        The other members dial the new URLs once the change is applied; restart the member
        listening there. Sent as :meth:`member_add` is.
        """
        urls = (peer_urls,) if isinstance(peer_urls, str) else tuple(peer_urls)
        await self._retry(
            lambda link: _admin(link).member_update(member_id, urls),
            _Mode.ONCE,
            "member update",
            write=True,
        )

    async def alarm_list(self) -> list[AlarmMember]:
        """The raised alarms (etcd's AlarmList)."""
        resp = await self._retry(
            lambda link: _admin(link).alarm(AlarmAction.GET, 0, AlarmType.NONE),
            _Mode.READ,
            "alarm list",
        )
        return list(resp.alarms)

    async def alarm_disarm(self, alarm: AlarmMember | None = None) -> list[AlarmMember]:
        """Clear an alarm, or (None) every raised alarm; returns the alarms cleared.

        As etcd's client disarms them all: list the alarms, then deactivate each one. Clearing
        is idempotent, so it is retried like a read.
        """
        targets = await self.alarm_list() if alarm is None else [alarm]
        cleared: list[AlarmMember] = []
        for a in targets:

            def deactivate(link: Link, a: AlarmMember = a) -> Awaitable[AlarmResponse]:
                return _admin(link).alarm(AlarmAction.DEACTIVATE, a.member_id, a.alarm)

            resp = await self._retry(deactivate, _Mode.READ, "alarm disarm")
            cleared += resp.alarms
        return cleared

    async def status(self, endpoint: str | None = None) -> StatusInfo:
        """The status of ``endpoint``'s member (no failover), or of any member if None.

        Raises:
            Unavailable: ``endpoint`` cannot be reached or did not answer in time.
        """
        if endpoint is None:
            return await self._retry(lambda link: link.status(), _Mode.READ, "status")
        try:
            link = await self._open(endpoint)
            async with asyncio.timeout(self.request_timeout):
                return await link.status()
        except (OSError, TimeoutError, ClientError, ValueError) as e:
            raise Unavailable(f"status of {endpoint}: {_why(e)}") from e

    async def snapshot(
        self,
        sink: Callable[[bytes], object],
        *,
        endpoint: str | None = None,
        linearizable: bool = True,
    ) -> int:
        """Stream a snapshot file of one member's state into ``sink`` (etcd's Snapshot call).

        ``sink`` gets the file's bytes (:mod:`kvapp.snapfile`) piece by piece, in order, on the
        client's loop; a slow sink slows the stream, not the member. Nothing is retried once
        asked (pieces may have reached ``sink``): on an error, discard what ``sink`` got.

        Args:
            sink: takes each piece; an exception from it ends the call with that exception.
            endpoint: the member to ask (no failover); None: the first reachable one.
            linearizable: the state holds every write acknowledged before the call (the member
                makes a read barrier first, which needs a leader); False: the member's own
                state as it is, which works without a quorum.

        Returns:
            The file's size in bytes.

        Raises:
            Unavailable: no endpoint could be reached, or the connection was lost midway.
            EtcdError: the member refused (no leader, timeout, stopping).
        """
        try:
            link = await (self._open(endpoint) if endpoint is not None else self._link())
        except (OSError, TimeoutError, ClientError, ValueError) as e:
            raise Unavailable(f"snapshot from {endpoint or self.endpoints}: {_why(e)}") from e
        try:
            return await link.snapshot(sink, linearizable=linearizable)
        except LinkClosed as e:
            await self._forget(link)
            raise Unavailable(f"snapshot from {link.endpoint}: {_why(e)}") from e

    # -- connections -------------------------------------------------------------------------

    async def _open(self, endpoint: str) -> Link:
        """The live link to ``endpoint``, connecting if there is none."""
        if self._closed:
            raise ClientError("the client is closed")
        link = self._live(endpoint)
        if link is not None:
            return link
        async with self._connect_lock:
            link = self._live(endpoint)
            if link is not None:
                return link
            async with asyncio.timeout(self.connect_timeout):
                link = await self._connector.connect(endpoint, client_id=self.client_id)
            if link.client_id != self.client_id:  # it changed while connecting
                await link.close()
                raise ClientError(f"{endpoint}: the client id changed while connecting")
            self._links[endpoint] = link
            self._member_of[endpoint] = link.member_id
            if self._auto_sync_interval and self._auto_sync is None:
                self._auto_sync = asyncio.create_task(self._sync_every(self._auto_sync_interval))
            return link

    async def _sync_every(self, interval: float) -> None:
        """:meth:`sync_endpoints` every ``interval`` seconds until the client closes."""
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                await self.sync_endpoints()
            except (ClientError, EtcdError) as e:
                log.info("kvapp client: cannot sync the endpoint list yet: %s", _why(e))

    def _set_endpoints(self, urls: Sequence[str]) -> None:
        """Replace the endpoint list, keeping the current endpoint current if it stays."""
        spelled = {_address(e): e for e in self.endpoints}
        new = tuple(dict.fromkeys(spelled.get(_address(u), u) for u in urls))
        current = self.endpoints[self._current]
        self.endpoints = new
        self._current = new.index(current) if current in new else 0

    def _point_at(self, endpoint: str) -> None:
        """Make ``endpoint`` the current one, if it is (still) listed."""
        with contextlib.suppress(ValueError):
            self._current = self.endpoints.index(endpoint)

    def _live(self, endpoint: str) -> Link | None:
        """The open link to ``endpoint``, if there is one."""
        link = self._links.get(endpoint)
        return link if link is not None and not link.closed else None

    def _current_link(self) -> Link | None:
        """What :meth:`_link` returns first when its link is open, without a coroutine."""
        return self._live(self.endpoints[self._current])

    def _known_leader_link(self) -> Link | None:
        """The known leader's open link, unless it has shown a newer term since it was found."""
        if self._leader is None:
            return None
        link = self._live(self._leader)
        return link if link is not None and link.raft_term <= self._leader_term else None

    async def _link(self) -> Link:
        """A live link: the current endpoint's, else the next reachable one's."""
        endpoints = self.endpoints  # a sync may replace the list while this waits
        n, start = len(endpoints), self._current
        errors = []
        for i in range(n):
            endpoint = endpoints[(start + i) % n]
            try:
                link = await self._open(endpoint)
            except (OSError, TimeoutError, ClientError, ValueError) as e:
                errors.append(f"{endpoint}: {_why(e)}")
                continue
            self._point_at(endpoint)
            return link
        raise Unavailable("no endpoint reachable: " + "; ".join(errors))

    def _rotate(self, link: Link) -> None:
        """Prefer the endpoint after ``link``'s from now on (it failed a request)."""
        if self.endpoints[self._current] == link.endpoint:
            self._current = (self._current + 1) % len(self.endpoints)

    async def _forget(self, link: Link) -> None:
        """Drop a failed link (closing it) and move on to the next endpoint."""
        if self._links.get(link.endpoint) is link:
            del self._links[link.endpoint]
        if self._leader == link.endpoint:
            self._leader = None
        self._rotate(link)
        await link.close()

    async def _leader_link(self) -> Link:
        """A live link to the leader, discovering it if needed.

        Raises:
            NoLeaderError: no leader is known, or it cannot be reached.
            Unavailable: no member could be asked.
        """
        if self._leader is not None:
            try:
                return await self._open(self._leader)
            except (OSError, TimeoutError, ClientError, ValueError):
                self._leader = None
        link = await self._link()
        try:
            async with asyncio.timeout(self.request_timeout):
                status = await link.status()
                leader = status.leader
                if not leader:
                    raise NoLeaderError(f"{link.endpoint} knows no leader")
                self._leader_term = status.header.raft_term
                if link.member_id == leader:
                    self._leader = link.endpoint
                    return link
                members = await link.member_list()
        except (LinkClosed, TimeoutError) as e:
            await self._forget(link)
            raise Unavailable(f"cannot find the leader through {link.endpoint}: {e}") from e
        candidates = [ep for ep, member in self._member_of.items() if member == leader]
        for m in members:
            if m.id == leader:
                candidates.extend(m.native_client_urls)
        candidates.extend(ep for ep in self.endpoints if ep not in self._member_of)
        for endpoint in dict.fromkeys(candidates):
            try:
                candidate = await self._open(endpoint)
            except (OSError, TimeoutError, ClientError, ValueError):
                continue
            if candidate.member_id == leader:
                self._leader = endpoint
                return candidate
        raise NoLeaderError(f"the leader {leader:x} is not reachable")

    async def _write_link(self) -> Link:
        """The leader's link for a write if it is known or can be found, else :meth:`_link`'s.

        One write at a time searches; the others meanwhile go to the current endpoint, as do
        all writes for :data:`_LEADER_SEARCH_PAUSE` after a search failed.
        """
        if self._leader is not None:
            link = self._known_leader_link()
            if link is not None:
                return link
            self._leader = None  # gone, or a new term: the leadership may have moved
        loop = asyncio.get_running_loop()
        if not self._searching and loop.time() >= self._search_after:
            self._searching = True
            try:
                link = await self._leader_link()
                # Its own answers may carry a term above the one it was found in (the member
                # asked lagged behind): not a reason to look again at the next write.
                self._leader_term = max(self._leader_term, link.raft_term)
                return link
            except (ClientError, EtcdError) as e:
                log.debug("kvapp client: no leader for writes (%s); to any member for now", e)
                self._search_after = loop.time() + _LEADER_SEARCH_PAUSE
            finally:
                self._searching = False
        return await self._link()

    # -- retries -----------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        pause = min(self.retry_backoff * 2.0 ** (attempt - 1), _MAX_BACKOFF)
        return pause * self._rng.uniform(0.5, 1.0)

    async def _write(self, request: WriteRequest, cls: type[_W]) -> _W:
        if not self._dedup:  # no request ids: never retried once it may have reached a member
            result = await self._retry(
                lambda link: link.write(request, request_id=0),
                _Mode.ONCE,
                type(request).__name__,
                write=True,
            )
            if not isinstance(result, cls):
                raise ClientError(f"a {type(request).__name__} was answered with a {result!r:.60}")
            return result
        window = self._window
        taken = window.take()
        ids = taken if taken is not None else await window.wait()
        try:
            result = await self._retry(
                lambda link: link.write(request, request_id=ids.request_id),
                _Mode.WRITE,
                type(request).__name__,
                write=True,
                write_ids=ids,
            )
        finally:
            window.release(ids)  # the ids it holds now, if it was renumbered
        if not isinstance(result, cls):
            raise ClientError(f"a {type(request).__name__} was answered with a {result!r:.60}")
        return result

    async def _retry(
        self,
        call: Callable[[Link], Awaitable[_T]],
        mode: _Mode,
        what: str,
        *,
        leader: bool = False,
        write: bool = False,
        write_ids: _WriteIds | None = None,
    ) -> _T:
        """Run ``call`` on a link, retrying per ``mode`` (see the module docstring).

        ``leader``: on the leader (lease calls); ``write``: on the leader if it can be found
        (:meth:`_write_link`), else on the current endpoint.

        ``write_ids`` are a write's ids: if the link's client id is no longer the one the
        write was numbered under (the client took a new one), the write gets a new number
        under the new id if no attempt can have reached a member, else the outcome is unknown.
        """
        leader = leader and self._to_leader
        open_link: Callable[[], Link | None] | None = None
        if leader:
            pick = self._leader_link
        elif write and self._writes_to_leader:
            pick, open_link = self._write_link, self._known_leader_link
        else:
            pick, open_link = self._link, self._current_link
        ambiguous = False
        last: BaseException | None = None
        for attempt in range(self.max_attempts):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            link = open_link() if open_link is not None and not self._closed else None
            if link is None:
                try:
                    link = await pick()
                except Unavailable as e:
                    last = e
                    continue
                except EtcdError as e:  # leader discovery: no leader known or reachable
                    last = e
                    continue
            if write_ids is not None and link.client_id != write_ids.client_id:
                if ambiguous:
                    raise OutcomeUnknown(f"{what}: the client id changed during its retries")
                await self._renumber(write_ids)
                if link.client_id != write_ids.client_id:  # changed again while it waited
                    last = Unavailable("the client id changed while the write waited")
                    continue
            maybe_sent = True
            deadlines = self._deadlines
            if deadlines.timeout != self.request_timeout:
                deadlines = self._deadlines = Deadlines(self.request_timeout)
            timed = deadlines.start()  # asyncio.timeout's semantics, without a timer each
            try:
                try:
                    return await call(link)
                except asyncio.CancelledError:
                    if deadlines.end(timed):
                        raise TimeoutError from None
                    raise
                finally:
                    deadlines.end(timed)
            except LinkClosed as e:
                last, maybe_sent = e, e.sent
                await self._forget(link)
            except TimeoutError:
                last = RequestTimeoutError(f"no answer from {link.endpoint} in time")
                await self._forget(link)
            except OutcomeUnknown as e:
                last = e
            except NotLeaderError as e:
                if not leader:
                    raise
                last, maybe_sent = e, False
                self._leader = None
            except RequestIdExpiredError as e:
                await self._new_client_id(link.client_id)
                raise OutcomeUnknown(f"{what}: {e}") from e
            except EtcdError as e:
                if e.code != GrpcCode.UNAVAILABLE:
                    raise
                last = e
                maybe_sent = isinstance(e, LeaderChangedError | RequestTimeoutError)
                self._rotate(link)
                if self._leader == link.endpoint:  # an election: write elsewhere for a while
                    self._leader = None
                    self._search_after = asyncio.get_running_loop().time() + _LEADER_SEARCH_PAUSE
            log.debug("kvapp client: %s attempt %d failed: %s", what, attempt + 1, last)
            if maybe_sent:
                if mode is _Mode.ONCE:
                    raise OutcomeUnknown(f"{what}: {last}") from last
                ambiguous = True
        if mode is _Mode.WRITE and ambiguous:
            raise OutcomeUnknown(
                f"{what}: outcome unknown after {self.max_attempts} attempts: {last}"
            ) from last
        if isinstance(last, EtcdError):
            raise last
        raise Unavailable(f"{what} failed after {self.max_attempts} attempts: {last}") from last

    async def _renew(self, lease_id: int) -> LeaseKeepAliveResponse:
        """One renewal attempt on the leader (a keep-alive's loop does the retrying).

        Where members forward renewals to the leader, on the current endpoint instead (the
        next one after an "unavailable" answer).
        """
        link = await (self._leader_link() if self._to_leader else self._link())
        try:
            return await link.lease_keep_alive(lease_id)
        except NotLeaderError:
            self._leader = None
            raise
        except LinkClosed:
            await self._forget(link)
            raise
        except EtcdError as e:
            if e.code == GrpcCode.UNAVAILABLE and not self._to_leader:
                self._rotate(link)
            raise

    async def _renumber(self, ids: _WriteIds) -> None:
        """Give a write that certainly reached no member new ids under the current client id."""
        window = self._window
        window.release(ids)
        taken = window.take()
        new = taken if taken is not None else await window.wait()
        ids.client_id, ids.request_id = new.client_id, new.request_id

    async def _new_client_id(self, forgotten: int) -> None:
        """Continue under a new client id: a member forgot ``forgotten``'s retry window.

        Nothing changes if the client already left ``forgotten`` (another write was refused
        under it first).
        """
        if self.client_id != forgotten:
            return
        while self.client_id == forgotten:
            self.client_id = _random_client_id()
        self._window.reset(self.client_id)  # a new session numbers its writes from 1
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            await link.close()


def _admin(link: Link) -> AdminLink:
    if not isinstance(link, AdminLink):
        raise ClientError(f"{type(link).__name__} carries no peer URL updates or alarms")
    return link


def _etcd_connector(connect_timeout: float, tls: ClientTls | None) -> Connector:
    from kvapp.client.etcd import EtcdConnector  # noqa: PLC0415 - grpc only when asked for

    return EtcdConnector(connect_timeout=connect_timeout, tls=tls)


class Watch:
    """An async iterator of one watch's :class:`~kvapp.mvcc.types.Event` values, in order.

    Made by :meth:`AsyncClient.watch`. If its connection fails, the watch is created again on
    another endpoint from :attr:`next_revision`, so no event is lost or repeated; resuming is
    retried until it succeeds or the watch is cancelled. Iteration ends after :meth:`cancel`;
    it raises :class:`~kvapp.errors.CompactedError` if the history to resume from was
    compacted (:attr:`compact_revision` says up to where).

    Events are buffered without bound until consumed.

    Attributes:
        next_revision: the revision of the next event to deliver (every earlier one was).
        compact_revision: set when the watch ended because its history was compacted.
        resumes: how many times the watch was created again (failovers, slow-watcher cancels).
        error: the last error met while resuming, if any.
    """

    def __init__(self, client: AsyncClient, spec: WatchSpec) -> None:
        self._client = client
        self._spec = spec
        self._queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()
        self.next_revision = spec.start_revision
        self.compact_revision = 0
        self.resumes = 0
        self.error: BaseException | None = None
        self._link: Link | None = None
        self._watch_id = 0
        self._resume = asyncio.Event()
        self._link_lost = False
        self._ended = False
        self._task: asyncio.Task[None] | None = None

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if item is None:  # the end, kept for later calls
            self._queue.put_nowait(None)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()

    async def cancel(self) -> None:
        """Stop watching; iteration ends once the events already received are consumed."""
        link, watch_id = self._link, self._watch_id
        self._finish(None)
        if link is not None and not link.closed and watch_id:
            try:
                async with asyncio.timeout(self._client.request_timeout):
                    await link.watch_cancel(watch_id)
            except (KvappError, TimeoutError) as e:
                log.debug("kvapp client: cancelling watch %d: %s", watch_id, e)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._client._watches.discard(self)

    # -- internals ---------------------------------------------------------------------------

    def _start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _establish(self, link: Link) -> None:
        """Create the watcher on ``link`` from :attr:`next_revision` (an attempt of _retry)."""
        spec = self._spec
        if self.next_revision:
            spec = attrs.evolve(spec, start_revision=self.next_revision)
        self._resume.clear()
        started = await link.watch(spec, self)
        self._link, self._watch_id = link, started.watch_id
        if not self.next_revision:
            self.next_revision = started.revision + 1

    async def _run(self) -> None:
        client = self._client
        while True:
            await self._resume.wait()
            if self._ended:
                return
            link, lost = self._link, self._link_lost
            self._link_lost = False
            if link is not None and link.closed:
                await client._forget(link)
            elif link is not None and lost:  # its stream failed, the link lives: go elsewhere
                client._rotate(link)
            self._link, self._watch_id = None, 0
            while not self._ended:
                self.resumes += 1
                try:
                    await client._retry(self._establish, _Mode.READ, "watch resume")
                    break
                except EtcdError as e:
                    if e.code == GrpcCode.UNAVAILABLE:
                        self.error = e
                    else:
                        self._finish(e)
                        return
                except ClientError as e:
                    self.error = e
                log.warning(
                    "kvapp client: cannot resume a watch from revision %d yet: %s",
                    self.next_revision,
                    self.error,
                )
                await asyncio.sleep(_WATCH_RESUME_PAUSE)

    def _finish(self, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        if error is not None:
            self._queue.put_nowait(error)
        self._queue.put_nowait(None)
        self._resume.set()

    # -- WatchSink ---------------------------------------------------------------------------

    def on_watch_response(self, response: WatchResponse) -> None:
        """Deliver events not seen yet; handle cancellation and progress."""
        if self._ended:
            return
        if response.canceled:
            if response.compact_revision:
                self.compact_revision = response.compact_revision
                self._finish(
                    CompactedError(
                        f"watch from revision {self.next_revision}: "
                        f"compacted at {response.compact_revision}"
                    )
                )
            elif response.cancel_reason:
                log.info("kvapp client: watch cancelled (%s); resuming", response.cancel_reason)
                self._resume.set()
            else:
                self._finish(None)
            return
        if response.events:
            for event in response.events:
                if event.kv.mod_revision >= self.next_revision:
                    self._queue.put_nowait(event)
            self.next_revision = max(self.next_revision, response.events[-1].kv.mod_revision + 1)
        elif not response.created:  # a progress notification: everything up to it was sent
            self.next_revision = max(self.next_revision, response.revision + 1)

    def on_link_lost(self, error: BaseException) -> None:
        """Resume elsewhere."""
        if not self._ended:
            self._link_lost = True
            self._resume.set()


class LeaseLoss(enum.Enum):
    """Why a :class:`KeepAlive` stopped holding its lease."""

    GONE = "the lease expired or was revoked"
    RENEWALS_FAILED = "renewals failed for longer than the lease's TTL"


class KeepAlive:
    """Keeps one lease alive from the background; made by :meth:`AsyncClient.keep_alive`.

    Renews every TTL/3 on the leader. A failed renewal is retried every
    ``min(TTL/3, 0.5 s)`` (finding the leader again if needed) until one succeeds or a whole
    TTL has passed since the last successful renewal was sent, counting from when it was sent
    (so the lease is certainly gone by the member's clock only after that). The lease is then
    reported lost; so it is at once when the member says it no longer exists.

    Loss is reported by :attr:`reason` (None while held), the :attr:`lost` event,
    :meth:`wait_lost` and the callbacks of :meth:`add_callback`. :meth:`stop` stops renewing
    without reporting a loss.

    Attributes:
        lease_id: the lease.
        ttl: its TTL in seconds, from the last renewal.
        renewals: successful renewals so far (the first included).
        last_renewal: the event loop's time (``time.monotonic()`` on asyncio's own loops) when
            the last successful renewal was sent.
        error: the last renewal failure, if any.
        lost: set once the lease is lost.
    """

    def __init__(self, client: AsyncClient, lease_id: int, ttl: int, renewed_at: float) -> None:
        self._client = client
        self.lease_id = lease_id
        self.ttl = ttl
        self.renewals = 1
        self.last_renewal = renewed_at
        self.error: BaseException | None = None
        self.reason: LeaseLoss | None = None
        self.lost = asyncio.Event()
        self._callbacks: list[Callable[[KeepAlive], object]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def alive(self) -> bool:
        """Whether the lease is held and being renewed."""
        return self.reason is None and not self._stopped

    def add_callback(self, callback: Callable[[KeepAlive], object]) -> None:
        """Call ``callback(self)`` when the lease is lost (at once if it already is)."""
        if self.reason is not None:
            self._call(callback)
        else:
            self._callbacks.append(callback)

    async def wait_lost(self) -> LeaseLoss:
        """Wait until the lease is lost; returns why."""
        await self.lost.wait()
        if self.reason is None:  # lost is only ever set with a reason
            raise RuntimeError("keep-alive lost without a reason")
        return self.reason

    async def stop(self) -> None:
        """Stop renewing (the lease then expires after its TTL unless revoked)."""
        self._stopped = True
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._client._keep_alives.discard(self)

    async def __aenter__(self) -> KeepAlive:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def _call(self, callback: Callable[[KeepAlive], object]) -> None:
        try:
            callback(self)
        except Exception:
            log.exception("kvapp client: a keep-alive callback failed")

    def _lose(self, reason: LeaseLoss) -> None:
        self.reason = reason
        log.warning("kvapp client: lease %x lost: %s (%s)", self.lease_id, reason.value, self.error)
        self.lost.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._call(callback)
        self._client._keep_alives.discard(self)

    async def _run(self) -> None:
        client = self._client
        loop = asyncio.get_running_loop()
        next_at = self.last_renewal + self.ttl / 3
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            sent_at = loop.time()
            deadline = self.last_renewal + self.ttl
            if sent_at >= deadline:
                self._lose(LeaseLoss.RENEWALS_FAILED)
                return
            try:
                async with asyncio.timeout(min(client.request_timeout, deadline - sent_at)):
                    resp = await client._renew(self.lease_id)
            except LeaseNotFoundError as e:
                self.error = e
                self._lose(LeaseLoss.GONE)
                return
            except (KvappError, OSError, TimeoutError) as e:
                self.error = e
                next_at = loop.time() + min(self.ttl / 3, 0.5)
                continue
            if resp.ttl <= 0:
                self._lose(LeaseLoss.GONE)
                return
            self.ttl = resp.ttl
            self.renewals += 1
            self.last_renewal = sent_at
            next_at = sent_at + self.ttl / 3
