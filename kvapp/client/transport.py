"""The client's internal transport interface: one :class:`Link` per connection to one member.

:class:`~kvapp.client.AsyncClient` does endpoint selection, leader discovery, retries and watch
resumption; a transport only carries one request to one member and its answer back. Its
methods mirror :class:`~kvapp.service.KvService`, so a transport is a thin translation: the
native protocol (:mod:`kvapp.client.native`) is one; etcd's v3 gRPC API
(:mod:`kvapp.client.etcd`) is the other, behind the same client methods.

Contract of every :class:`Link` method:

- it returns the member's result, or raises the member's :class:`~kvapp.errors.EtcdError`
  (same class, code and text), or :class:`~kvapp.service.OutcomeUnknown` when the member
  itself could not tell whether a write applied;
- it raises :class:`~kvapp.client.errors.LinkClosed` when the connection is (or gets) lost
  before the answer; ``sent`` says whether the request may have reached the member;
- a malformed answer closes the link (so every request on it fails with ``LinkClosed``);
- cancelling the calling task abandons the request (a write may still be applied).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

import attrs

from kvapp.client.errors import ClientError
from kvapp.lease import LeaseKeepAliveResponse, LeaseTimeToLiveResponse
from kvapp.mvcc.types import RangeRequest, RangeResponse
from kvapp.requests import AlarmAction, AlarmResponse, AlarmType
from kvapp.service import MemberInfo, StatusInfo, WriteRequest, WriteResponse
from kvapp.watch import WatchFilter, WatchResponse

__all__ = [
    "AdminLink",
    "Connector",
    "ConnectorTraits",
    "Link",
    "LinkIdentity",
    "WatchSink",
    "WatchSpec",
    "WatchStarted",
    "traits_of",
]


def _filters(items: Iterable[WatchFilter]) -> tuple[WatchFilter, ...]:
    return tuple(items)


@attrs.frozen
class WatchSpec:
    """What to watch (the fields of etcd's ``WatchCreateRequest`` a client chooses)."""

    key: bytes
    range_end: bytes = b""
    start_revision: int = 0
    filters: tuple[WatchFilter, ...] = attrs.field(default=(), converter=_filters)
    prev_kv: bool = False
    progress_notify: bool = False


@attrs.frozen
class WatchStarted:
    """A created watcher: its id on the link, and the revision it was created at.

    With ``start_revision`` 0 the watcher reports revisions after ``revision``.
    """

    watch_id: int
    revision: int


class WatchSink(Protocol):
    """Where a link delivers one watcher's responses; called on the link's reader task."""

    def on_watch_response(self, response: WatchResponse) -> None:
        """One response of this watcher (events, progress, or its cancellation), in order."""
        ...

    def on_link_lost(self, error: BaseException) -> None:
        """The link is gone: no more responses will come from it."""
        ...


class Link(Protocol):
    """One connection to one member. See the module docstring for the error contract."""

    @property
    def endpoint(self) -> str:
        """The endpoint this link is connected to."""
        ...

    @property
    def client_id(self) -> int:
        """The client id the link was opened with; its writes are deduplicated under it."""
        ...

    @property
    def member_id(self) -> int:
        """The id of the member at the other end."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the link is lost or closed (every call on it fails with ``LinkClosed``)."""
        ...

    @property
    def raft_term(self) -> int:
        """The highest Raft term the member's answers carried so far (writes' at least; 0: none).

        A term above the one the leader was found in says the leader may have changed.
        """
        ...

    async def write(self, request: WriteRequest, *, request_id: int) -> WriteResponse:
        """A write; ``request_id`` (with :attr:`client_id`) deduplicates retries; 0: none."""
        ...

    async def range(self, request: RangeRequest) -> RangeResponse:
        """A read (linearizable unless ``request.serializable``)."""
        ...

    async def lease_keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        """Renew a lease (on the leader; a follower raises ``NotLeaderError``)."""
        ...

    async def lease_time_to_live(self, lease_id: int, *, keys: bool) -> LeaseTimeToLiveResponse:
        """A lease's remaining time (on the leader)."""
        ...

    async def leases(self) -> list[int]:
        """Every lease id."""
        ...

    async def member_list(self) -> list[MemberInfo]:
        """The cluster's members."""
        ...

    async def member_add(self, peer_urls: tuple[str, ...], *, is_learner: bool) -> MemberInfo:
        """Add a member."""
        ...

    async def member_remove(self, member_id: int) -> None:
        """Remove a member."""
        ...

    async def member_promote(self, member_id: int) -> None:
        """Promote a learner."""
        ...

    async def status(self) -> StatusInfo:
        """The member's status."""
        ...

    async def snapshot(self, sink: Callable[[bytes], object], *, linearizable: bool) -> int:
        """Stream the member's snapshot file into ``sink``, piece by piece; returns its size."""
        ...

    async def watch(self, spec: WatchSpec, sink: WatchSink) -> WatchStarted:
        """Create a watcher whose responses go to ``sink`` until it is cancelled or lost.

        Responses may reach ``sink`` before this returns.
        """
        ...

    async def watch_cancel(self, watch_id: int) -> None:
        """Cancel a watcher; its sink gets nothing more."""
        ...

    async def close(self) -> None:
        """Close the connection; pending calls fail with ``LinkClosed``."""
        ...


class LinkIdentity:
    """The identity part of :class:`Link`, shared by every transport's link class.

    The class sets ``_endpoint``, ``_client_id``, ``_member_id`` and ``_lost`` (the error that
    ended the link, None while it is usable).
    """

    _endpoint: str
    _client_id: int
    _member_id: int
    _lost: ClientError | None
    _raft_term: int = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._endpoint} member {self._member_id:x}>"

    @property
    def endpoint(self) -> str:
        """The endpoint this link is connected to."""
        return self._endpoint

    @property
    def client_id(self) -> int:
        """The client id the link was opened with (etcd's API carries none)."""
        return self._client_id

    @property
    def member_id(self) -> int:
        """The member at the other end (from the handshake, or its Status at connect time)."""
        return self._member_id

    @property
    def closed(self) -> bool:
        """Whether the link is lost or closed."""
        return self._lost is not None

    @property
    def raft_term(self) -> int:
        """The highest Raft term the member's answers carried so far (0: none yet)."""
        return self._raft_term


@runtime_checkable
class AdminLink(Link, Protocol):
    """A :class:`Link` that also carries peer URL updates and alarms (both transports do)."""

    async def member_update(self, member_id: int, peer_urls: tuple[str, ...]) -> None:
        """Give a member new peer URLs."""
        ...

    async def alarm(self, action: AlarmAction, member_id: int, alarm: AlarmType) -> AlarmResponse:
        """List, raise or clear alarms (etcd's Maintenance.Alarm)."""
        ...


@attrs.frozen
class ConnectorTraits:
    """What the client may rely on from a transport's members.

    A connector states them in a ``traits`` attribute; one without it gets the defaults (the
    native protocol's).

    Attributes:
        deduplicates_writes: the member applies a write retried under the same
            ``(client_id, request_id)`` once, so the client may retry a write whose outcome is
            unknown; without it a write is retried only if it certainly reached no member.
        forwards_to_leader: any member serves lease keep-alive and time-to-live (forwarding
            them to the leader itself), so the client need not find the leader.
    """

    deduplicates_writes: bool = True
    forwards_to_leader: bool = False


def traits_of(connector: object) -> ConnectorTraits:
    """``connector``'s :class:`ConnectorTraits` (the defaults if it states none)."""
    traits = getattr(connector, "traits", None)
    return traits if isinstance(traits, ConnectorTraits) else ConnectorTraits()


class Connector(Protocol):
    """Opens links; a transport provides one."""

    async def connect(self, endpoint: str, *, client_id: int) -> Link:
        """Connect and handshake (the caller bounds the time).

        Raises:
            OSError: the endpoint cannot be reached.
            ProtocolError: it does not speak the protocol, or refused the handshake.
        """
        ...
