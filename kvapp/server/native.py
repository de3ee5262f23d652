"""The native client protocol: length-prefixed cbor2 frames carrying many pipelined requests.

This is kvapp's fast path. A client batches every request it has ready into one frame; the
server answers each as soon as it is done, batching whatever answers (and watch events) are
ready into one frame back. It is a thin translation onto one :class:`~kvapp.service.KvService`:
nothing here knows about Raft.

Wire format, version :data:`VERSION`:

Frames
    Every message in either direction is a *frame*: a 4-byte big-endian unsigned length, then
    that many bytes of one CBOR data item. A client's frames may not exceed the server's
    ``max_frame_bytes`` (``max_request_bytes`` + :data:`FRAME_OVERHEAD`, 2 MiB by default, as
    etcd's gRPC receive limit); the server's frames are not limited.

Handshake
    The client's first frame is ``["kvapp-native", version, client_id]``: :data:`MAGIC`, the
    protocol version it speaks, and a random non-zero 63-bit id that identifies it for write
    deduplication (with each write's request id). The server answers
    ``["kvapp-native", version, header, max_request_bytes, max_frame_bytes]``. A first frame
    that is not a handshake closes the connection with a log line and no answer (the peer does
    not speak this protocol), except that one starting with an HTTP method gets an HTTP 400
    saying what the port is; an unsupported version is answered with a connection error.

Requests (client to server)
    A frame is an array of requests ``[req_no, op, body]``: a request number the client
    chooses (1 to 2**63-1, unique among its unanswered requests on the connection), an
    operation name (:class:`Op`) and the operation's CBOR-encoded body as a byte string. The
    request number only matches the answer to the request. Requests are served concurrently,
    so answers may come back in any order, in any later frame; writes are handed to the
    member in the order received (each one's :meth:`~kvapp.service.KvService.write` call
    starts in arrival order).

    Bodies of the replicated operations (``range``, ``put``, ``delete_range``, ``txn``,
    ``compact``, ``lease_grant``, ``lease_revoke``) are :func:`kvapp.requests.encode_request`
    of a :class:`~kvapp.requests.Request` whose client id is 0 (the connection's client id
    stands in for it) and whose request id is the write's *request id*: numbered from 1 per
    client id, as :mod:`kvapp.dedup` expects, and kept when the write is retried after an
    ambiguous failure (on this or another connection, to this or another member), so the
    member applies it once; 0 asks for no deduplication, and a range must use 0. The other
    bodies are arrays:

    ======================  ================================================================
    ``lease_keep_alive``    ``[id]``
    ``lease_time_to_live``  ``[id, keys]``
    ``lease_leases``        ``[]``
    ``watch_create``        ``[watch_id, key, range_end, start_revision, [filter...], prev_kv,
                            progress_notify]`` (watch id 0: the server picks one)
    ``watch_cancel``        ``[watch_id]``
    ``watch_progress``      ``[]``
    ``member_list``         ``[]``
    ``member_add``          ``[[peer_url...], is_learner]``
    ``member_remove``       ``[id]``
    ``member_promote``      ``[id]``
    ``member_update``       ``[id, [peer_url...]]``
    ``alarm``               ``[action, member_id, alarm]`` (:class:`kvapp.requests.AlarmRequest`)
    ``status``              ``[]``
    ``snapshot``            ``[linearizable]``
    ======================  ================================================================

Responses (server to client)
    A frame is an array of items, each an array whose first element says what it is:

    - ``[0, req_no, header, result]``: success. ``header`` is
      ``[cluster_id, member_id, revision, raft_term]`` (the revision is the result's own where
      it has one, as in etcd). ``result`` is :func:`kvapp.requests.response_to_array` of the
      result for the replicated operations, else an array: ``lease_keep_alive`` ``[id, ttl]``;
      ``lease_time_to_live`` ``[id, ttl, granted_ttl, [key...]]``; ``lease_leases``
      ``[[id...]]``; ``watch_create`` ``[watch_id]``; ``watch_cancel`` ``[canceled]``;
      ``member_list`` ``[[member...]]`` with a member ``[id, name, [peer_url...],
      [client_url...], is_learner]``; ``member_add`` ``[member]``; ``alarm``
      :func:`kvapp.requests.response_to_array` of the
      :class:`~kvapp.requests.AlarmResponse`; ``status`` ``[version, leader, raft_index,
      raft_term, raft_applied_index, is_learner, [error...]]``; ``snapshot`` ``[size]``; the
      others ``[]``.
    - ``[1, req_no, code, message]``: the request failed with etcd's gRPC status code and
      message (:class:`~kvapp.errors.EtcdError`); the client raises the same error class. A
      write whose outcome the member cannot tell is answered with code 2 (UNKNOWN) and
      :data:`OUTCOME_UNKNOWN_MESSAGE`.
    - ``[2, watch_id, header, created, canceled, compact_revision, cancel_reason, [event...]]``:
      a watch response, pushed as the watch stream produces it; an event is ``[type, kv,
      prev_kv or null]`` and a kv ``[key, create_revision, mod_revision, version, value,
      lease]``. Watch id -1 is a stream-wide progress notification.
    - ``[3, code, message]``: a connection error; the server closes the connection after it.
    - ``[4, req_no, data]``: the next piece of a streamed answer. ``snapshot`` is answered with
      the bytes of a snapshot file (:mod:`kvapp.snapfile`) in such pieces, in order, then a
      success item with the total ``size`` (or an error item, after which the pieces sent are
      to be discarded). The server sends a stream's pieces only as fast as the connection
      takes them (a few ahead at most), so a slow reader holds back only its own stream.

Limits and bad input
    - A request body larger than ``max_request_bytes`` is answered with etcd's ``request is too
      large`` error; the connection stays usable.
    - A frame larger than ``max_frame_bytes`` is answered with a connection error carrying the
      same error, and the connection is closed (after reading and dropping what the client
      still sends, for up to 2 s, so that closing does not reset the connection before the
      client has read the error).
    - A frame that is not CBOR, or not an array of ``[int, op, body]`` requests, closes the
      connection with a connection error and a log line. A request with an unknown operation
      or a malformed body is answered with an error (UNIMPLEMENTED, INVALID_ARGUMENT); the
      connection stays usable.
    - A connection with more than ``max_inflight`` unanswered requests is not read from until
      answers have been written (backpressure; a client that never reads stalls only itself).
    - Watch items are taken from the member only as fast as the connection takes frames; the
      member queues at most its per-stream bound of them meanwhile (see :mod:`kvapp.watch`),
      and catches the watchers up from history once the client reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import ssl
import struct
from collections.abc import Iterable
from typing import Final, TypeAlias, cast

import attrs
import cbor2

from kvapp import requests as kvreq
from kvapp.errors import (
    EtcdError,
    GrpcCode,
    KvappError,
    RequestDecodeError,
    RequestTooLargeError,
)
from kvapp.fields import array as _array
from kvapp.fields import boolean as _bool
from kvapp.fields import i64 as _i64
from kvapp.fields import octets as _bytes
from kvapp.fields import text as _str
from kvapp.fields import u64 as _u64
from kvapp.lease import (
    LeaseGrantRequest,
    LeaseKeepAliveResponse,
    LeaseRevokeRequest,
    LeaseTimeToLiveResponse,
)
from kvapp.mvcc.types import (
    CompactRequest,
    DeleteRangeRequest,
    Event,
    EventType,
    KeyValue,
    PutRequest,
    RangeRequest,
    TxnRequest,
)
from kvapp.service import (
    KvService,
    MemberInfo,
    OutcomeUnknown,
    ResponseHeader,
    StatusInfo,
    WriteRequest,
    WriteResponse,
)
from kvapp.tls import TlsAcceptor, start_tls_server
from kvapp.watch import (
    ERR_DUPLICATE_WATCH_ID,
    ERR_EMPTY_WATCHER_RANGE,
    WatchFilter,
    WatchResponse,
    WatchStream,
)

__all__ = [
    "DEFAULT_MAX_INFLIGHT",
    "FRAME_OVERHEAD",
    "MAGIC",
    "OUTCOME_UNKNOWN_MESSAGE",
    "VERSION",
    "ConnectionStats",
    "EmptyResult",
    "Item",
    "LeaseKeepAliveRequest",
    "LeaseLeasesRequest",
    "LeaseLeasesResult",
    "LeaseTimeToLiveRequest",
    "MemberAddRequest",
    "MemberAddResult",
    "MemberListRequest",
    "MemberListResult",
    "MemberPromoteRequest",
    "MemberRemoveRequest",
    "NativeServer",
    "Op",
    "OpRequest",
    "OpResult",
    "ServerStats",
    "SnapshotRequest",
    "SnapshotResult",
    "StatusRequest",
    "WatchCancelRequest",
    "WatchCancelResult",
    "WatchCreateRequest",
    "WatchCreateResult",
    "WatchProgressRequest",
    "decode_body",
    "decode_header",
    "decode_result",
    "decode_watch_response",
    "encode_body",
    "encode_frame",
    "encode_header",
    "encode_result",
    "encode_watch_response",
    "op_of",
]

log = logging.getLogger(__name__)

MAGIC: Final = "kvapp-native"
"""The first element of both handshake frames."""

VERSION: Final = 1
"""The protocol version this module speaks."""

FRAME_OVERHEAD: Final = 512 * 1024
"""How much larger than ``max_request_bytes`` a client frame may be (etcd's gRPC margin)."""

DEFAULT_MAX_INFLIGHT: Final = 4096
"""Unanswered requests per connection before the server stops reading from it."""

OUTCOME_UNKNOWN_MESSAGE: Final = "kvapp: the outcome of the request is unknown"
"""The error text (code UNKNOWN) of a write that may or may not have been applied."""

HANDSHAKE_MAX_BYTES: Final = 1024
"""The largest first frame the server reads; anything larger is not a handshake."""

LENGTH: Final = struct.Struct(">I")
"""The frame length prefix."""

ITEM_OK: Final = 0
ITEM_ERROR: Final = 1
ITEM_WATCH: Final = 2
ITEM_FATAL: Final = 3
ITEM_CHUNK: Final = 4

_U63_MAX: Final = (1 << 63) - 1
_WATCH_BATCH: Final = 256
_FATAL_LINGER: Final = 2.0
_FATAL_DISCARD_MAX: Final = 64 * 1024 * 1024
_STOP_GRACE: Final = 5.0
_CHUNKS_AHEAD: Final = 2


class Op(enum.StrEnum):
    """The operation names of the native protocol."""

    RANGE = "range"
    PUT = "put"
    DELETE_RANGE = "delete_range"
    TXN = "txn"
    COMPACT = "compact"
    LEASE_GRANT = "lease_grant"
    LEASE_REVOKE = "lease_revoke"
    LEASE_KEEP_ALIVE = "lease_keep_alive"
    LEASE_TIME_TO_LIVE = "lease_time_to_live"
    LEASE_LEASES = "lease_leases"
    WATCH_CREATE = "watch_create"
    WATCH_CANCEL = "watch_cancel"
    WATCH_PROGRESS = "watch_progress"
    MEMBER_LIST = "member_list"
    MEMBER_ADD = "member_add"
    MEMBER_REMOVE = "member_remove"
    MEMBER_PROMOTE = "member_promote"
    MEMBER_UPDATE = "member_update"
    ALARM = "alarm"
    STATUS = "status"
    SNAPSHOT = "snapshot"


# -- the operations the replicated request types do not cover --------------------------------------


@attrs.frozen
class LeaseKeepAliveRequest:
    """Renew lease ``id`` (served by the leader)."""

    id: int


@attrs.frozen
class LeaseTimeToLiveRequest:
    """Ask lease ``id``'s remaining time, and its keys if ``keys`` (served by the leader)."""

    id: int
    keys: bool = False


@attrs.frozen
class LeaseLeasesRequest:
    """List every lease id."""


def _filters(items: Iterable[WatchFilter]) -> tuple[WatchFilter, ...]:
    return tuple(items)


@attrs.frozen
class WatchCreateRequest:
    """Create a watcher on this connection's watch stream (see :meth:`WatchStream.watch`)."""

    key: bytes
    range_end: bytes = b""
    start_revision: int = 0
    filters: tuple[WatchFilter, ...] = attrs.field(default=(), converter=_filters)
    prev_kv: bool = False
    progress_notify: bool = False
    watch_id: int = 0


@attrs.frozen
class WatchCancelRequest:
    """Cancel watcher ``watch_id`` of this connection."""

    watch_id: int


@attrs.frozen
class WatchProgressRequest:
    """Ask for a stream-wide progress notification (watch id -1)."""


@attrs.frozen
class MemberListRequest:
    """List the cluster's members."""


def _urls(items: Iterable[str]) -> tuple[str, ...]:
    if isinstance(items, str):
        raise TypeError("expected a sequence of URLs, got one string")
    return tuple(items)


@attrs.frozen
class MemberAddRequest:
    """Add a member with ``peer_urls`` (the member picks its id)."""

    peer_urls: tuple[str, ...] = attrs.field(converter=_urls)
    is_learner: bool = False


@attrs.frozen
class MemberRemoveRequest:
    """Remove member ``id``."""

    id: int


@attrs.frozen
class MemberPromoteRequest:
    """Promote learner ``id`` to voter."""

    id: int


@attrs.frozen
class StatusRequest:
    """This member's status."""


@attrs.frozen
class SnapshotRequest:
    """Stream a snapshot file of the member's state (after a read barrier if ``linearizable``)."""

    linearizable: bool = True


@attrs.frozen
class SnapshotResult:
    """The end of a snapshot stream: how many bytes it carried."""

    size: int


@attrs.frozen
class LeaseLeasesResult:
    """Every lease id, ascending."""

    ids: tuple[int, ...]


@attrs.frozen
class WatchCreateResult:
    """The created watcher's id."""

    watch_id: int


@attrs.frozen
class WatchCancelResult:
    """Whether a watcher was cancelled (False: no such watcher)."""

    canceled: bool


@attrs.frozen
class MemberListResult:
    """The members, sorted by id."""

    members: tuple[MemberInfo, ...]


@attrs.frozen
class MemberAddResult:
    """The member just added."""

    member: MemberInfo


@attrs.frozen
class EmptyResult:
    """The result of an operation that returns nothing but its header."""


OpRequest: TypeAlias = (
    RangeRequest
    | PutRequest
    | DeleteRangeRequest
    | TxnRequest
    | CompactRequest
    | LeaseGrantRequest
    | LeaseRevokeRequest
    | LeaseKeepAliveRequest
    | LeaseTimeToLiveRequest
    | LeaseLeasesRequest
    | WatchCreateRequest
    | WatchCancelRequest
    | WatchProgressRequest
    | MemberListRequest
    | MemberAddRequest
    | MemberRemoveRequest
    | MemberPromoteRequest
    | kvreq.MemberUpdateRequest
    | kvreq.AlarmRequest
    | StatusRequest
    | SnapshotRequest
)
"""Anything a client can ask in one request of this protocol."""

OpResult: TypeAlias = (
    WriteResponse
    | kvreq.Result
    | LeaseKeepAliveResponse
    | LeaseTimeToLiveResponse
    | LeaseLeasesResult
    | WatchCreateResult
    | WatchCancelResult
    | MemberListResult
    | MemberAddResult
    | EmptyResult
    | StatusInfo
    | SnapshotResult
    | kvreq.AlarmResponse
)
"""What a successful request returns (a :class:`StatusInfo` carries its header itself)."""

Item: TypeAlias = list[object]
"""One request or response item, before CBOR encoding."""

_REPLICATED: Final[dict[type, Op]] = {
    RangeRequest: Op.RANGE,
    PutRequest: Op.PUT,
    DeleteRangeRequest: Op.DELETE_RANGE,
    TxnRequest: Op.TXN,
    CompactRequest: Op.COMPACT,
    LeaseGrantRequest: Op.LEASE_GRANT,
    LeaseRevokeRequest: Op.LEASE_REVOKE,
}
_OPS: Final[dict[type, Op]] = {
    **_REPLICATED,
    LeaseKeepAliveRequest: Op.LEASE_KEEP_ALIVE,
    LeaseTimeToLiveRequest: Op.LEASE_TIME_TO_LIVE,
    LeaseLeasesRequest: Op.LEASE_LEASES,
    WatchCreateRequest: Op.WATCH_CREATE,
    WatchCancelRequest: Op.WATCH_CANCEL,
    WatchProgressRequest: Op.WATCH_PROGRESS,
    MemberListRequest: Op.MEMBER_LIST,
    MemberAddRequest: Op.MEMBER_ADD,
    MemberRemoveRequest: Op.MEMBER_REMOVE,
    MemberPromoteRequest: Op.MEMBER_PROMOTE,
    kvreq.MemberUpdateRequest: Op.MEMBER_UPDATE,
    kvreq.AlarmRequest: Op.ALARM,
    StatusRequest: Op.STATUS,
    SnapshotRequest: Op.SNAPSHOT,
}
_REPLICATED_OPS: Final = frozenset(_REPLICATED.values())
_WRITES: Final = frozenset(_REPLICATED) - {RangeRequest}


def op_of(request: OpRequest) -> Op:
    """The operation name a request travels under.

    Raises:
        TypeError: ``request`` is not an :data:`OpRequest`.
    """
    op = _OPS.get(type(request))
    if op is None:
        raise TypeError(f"not a native protocol request: {type(request).__name__}")
    return op


# -- field checks (shared by encoders and decoders) ------------------------------------------------


def _strs(v: object, what: str) -> tuple[str, ...]:
    return tuple(_str(x, what) for x in _array(v, what))


def _loads(data: bytes, what: str) -> object:
    try:
        return cbor2.loads(data)
    except Exception as e:  # cbor2 raises many exception types on hostile input
        raise RequestDecodeError(f"{what}: malformed CBOR: {e}") from e


# -- bodies ----------------------------------------------------------------------------------------


def encode_body(request: OpRequest, request_id: int = 0) -> bytes:
    """The body bytes of a request item (see the module docstring).

    Args:
        request: what to ask.
        request_id: a write's deduplication id (0: none); only writes may carry one.

    Raises:
        ValueError: a field is of the wrong type or out of range, or a request id was given
            for anything but a write.
    """
    if request_id and type(request) not in _WRITES:
        raise ValueError(f"a {type(request).__name__} carries no request id")
    match request:
        case (
            RangeRequest()
            | PutRequest()
            | DeleteRangeRequest()
            | TxnRequest()
            | CompactRequest()
            | LeaseGrantRequest()
            | LeaseRevokeRequest()
        ):
            return kvreq.encode_request(kvreq.Request(0, request_id, request))
        case LeaseKeepAliveRequest():
            body: list[object] = [request.id]
        case LeaseTimeToLiveRequest():
            body = [request.id, request.keys]
        case WatchCreateRequest():
            body = [
                request.watch_id,
                request.key,
                request.range_end,
                request.start_revision,
                [int(f) for f in request.filters],
                request.prev_kv,
                request.progress_notify,
            ]
        case WatchCancelRequest():
            body = [request.watch_id]
        case MemberAddRequest():
            body = [list(request.peer_urls), request.is_learner]
        case MemberRemoveRequest() | MemberPromoteRequest():
            body = [request.id]
        case kvreq.MemberUpdateRequest():
            body = [request.id, list(request.peer_urls)]
        case kvreq.AlarmRequest():
            body = [int(request.action), request.member_id, int(request.alarm)]
        case SnapshotRequest():
            body = [request.linearizable]
        case LeaseLeasesRequest() | WatchProgressRequest() | MemberListRequest() | StatusRequest():
            body = []
        case _:
            raise ValueError(f"not a native protocol request: {type(request).__name__}")
    try:
        # Round-trip through the decoder's checks, so nothing undecodable leaves the client.
        data = cbor2.dumps(body)
        _decode_other(op_of(request), data)
    except RequestDecodeError as e:
        raise ValueError(f"cannot encode {type(request).__name__}: {e}") from None
    return data


def decode_body(op: Op, data: bytes) -> tuple[OpRequest, int]:
    """Decode a request body of operation ``op``: the request, and a write's request id.

    Raises:
        RequestDecodeError: whatever is wrong with ``data`` (and nothing else).
    """
    if op in _REPLICATED_OPS:
        request = kvreq.decode_request(data)
        body = request.body
        if request.client_id:
            raise RequestDecodeError(f"{op}: the body's client_id must be 0")
        if _REPLICATED.get(type(body)) is not op:
            raise RequestDecodeError(f"{op}: the body is a {type(body).__name__}")
        if request.request_id and op is Op.RANGE:
            raise RequestDecodeError("range: a read carries no request id")
        return body, request.request_id  # type: ignore[return-value]  # checked just above
    return _decode_other(op, data), 0


def _decode_other(op: Op, data: bytes) -> OpRequest:
    a = _array(_loads(data, str(op)), str(op))
    match op:
        case Op.LEASE_KEEP_ALIVE:
            _array(a, str(op), 1)
            return LeaseKeepAliveRequest(_i64(a[0], "lease id"))
        case Op.LEASE_TIME_TO_LIVE:
            _array(a, str(op), 2)
            return LeaseTimeToLiveRequest(_i64(a[0], "lease id"), _bool(a[1], "keys"))
        case Op.WATCH_CREATE:
            _array(a, str(op), 7)
            filters = []
            for f in _array(a[4], "filters"):
                try:
                    filters.append(WatchFilter(_i64(f, "filter")))
                except ValueError:
                    raise RequestDecodeError(f"filters: unknown filter {f!r:.20}") from None
            return WatchCreateRequest(
                watch_id=_i64(a[0], "watch_id"),
                key=_bytes(a[1], "key"),
                range_end=_bytes(a[2], "range_end"),
                start_revision=_i64(a[3], "start_revision"),
                filters=filters,
                prev_kv=_bool(a[5], "prev_kv"),
                progress_notify=_bool(a[6], "progress_notify"),
            )
        case Op.WATCH_CANCEL:
            _array(a, str(op), 1)
            return WatchCancelRequest(_i64(a[0], "watch_id"))
        case Op.MEMBER_ADD:
            _array(a, str(op), 2)
            return MemberAddRequest(_strs(a[0], "peer_urls"), _bool(a[1], "is_learner"))
        case Op.MEMBER_REMOVE:
            _array(a, str(op), 1)
            return MemberRemoveRequest(_u64(a[0], "member id"))
        case Op.MEMBER_PROMOTE:
            _array(a, str(op), 1)
            return MemberPromoteRequest(_u64(a[0], "member id"))
        case Op.MEMBER_UPDATE:
            _array(a, str(op), 2)
            return kvreq.MemberUpdateRequest(_u64(a[0], "member id"), _strs(a[1], "peer_urls"))
        case Op.ALARM:
            _array(a, str(op), 3)
            try:
                action = kvreq.AlarmAction(_u64(a[0], "alarm action"))
                alarm = kvreq.AlarmType(_u64(a[2], "alarm type"))
            except ValueError:
                raise RequestDecodeError(f"alarm: unknown action or type {a!r:.40}") from None
            return kvreq.AlarmRequest(action, _u64(a[1], "alarm member id"), alarm)
        case Op.LEASE_LEASES:
            _array(a, str(op), 0)
            return LeaseLeasesRequest()
        case Op.WATCH_PROGRESS:
            _array(a, str(op), 0)
            return WatchProgressRequest()
        case Op.MEMBER_LIST:
            _array(a, str(op), 0)
            return MemberListRequest()
        case Op.STATUS:
            _array(a, str(op), 0)
            return StatusRequest()
        case Op.SNAPSHOT:
            _array(a, str(op), 1)
            return SnapshotRequest(_bool(a[0], "linearizable"))
        case _:  # the replicated operations, handled above
            raise RequestDecodeError(f"unhandled operation {op}")


# -- results ---------------------------------------------------------------------------------------


def encode_header(header: ResponseHeader) -> list[object]:
    """``[cluster_id, member_id, revision, raft_term]``."""
    return [header.cluster_id, header.member_id, header.revision, header.raft_term]


def decode_header(v: object) -> ResponseHeader:
    """The inverse of :func:`encode_header`.

    Raises:
        RequestDecodeError: ``v`` is not a header.
    """
    a = _array(v, "header", 4)
    return ResponseHeader(
        _u64(a[0], "cluster_id"),
        _u64(a[1], "member_id"),
        _i64(a[2], "revision"),
        _u64(a[3], "raft_term"),
    )


def _member_to(m: MemberInfo) -> list[object]:
    return [m.id, m.name, list(m.peer_urls), list(m.client_urls), m.is_learner]


def _member_from(v: object) -> MemberInfo:
    a = _array(v, "member", 5)
    return MemberInfo(
        _u64(a[0], "member id"),
        _str(a[1], "member name"),
        _strs(a[2], "peer_urls"),
        _strs(a[3], "client_urls"),
        _bool(a[4], "is_learner"),
    )


def encode_result(result: OpResult) -> list[object]:
    """The ``result`` element of a success item.

    Raises:
        ValueError: a field is of the wrong type or out of range.
    """
    match result:
        case LeaseKeepAliveResponse():
            return [result.id, result.ttl]
        case LeaseTimeToLiveResponse():
            return [result.id, result.ttl, result.granted_ttl, list(result.keys)]
        case LeaseLeasesResult():
            return [list(result.ids)]
        case WatchCreateResult():
            return [result.watch_id]
        case WatchCancelResult():
            return [result.canceled]
        case MemberListResult():
            return [[_member_to(m) for m in result.members]]
        case MemberAddResult():
            return [_member_to(result.member)]
        case EmptyResult():
            return []
        case SnapshotResult():
            return [result.size]
        case StatusInfo():
            return [
                result.version,
                result.leader,
                result.raft_index,
                result.raft_term,
                result.raft_applied_index,
                result.is_learner,
                list(result.errors),
            ]
        case _:
            return kvreq.response_to_array(result)


def decode_result(op: Op, header: ResponseHeader, v: object) -> OpResult:
    """Decode the ``result`` of a success item answering an ``op`` request.

    Raises:
        RequestDecodeError: ``v`` is not a result of ``op``.
    """
    if op in _REPLICATED_OPS:
        result = kvreq.response_from_array(v)
        if isinstance(result, kvreq.ErrorResult) or result is None:
            raise RequestDecodeError(f"{op}: not a result: {result!r:.60}")
        return result
    a = _array(v, f"{op} result")
    match op:
        case Op.LEASE_KEEP_ALIVE:
            _array(a, str(op), 2)
            return LeaseKeepAliveResponse(_i64(a[0], "lease id"), _i64(a[1], "ttl"), 0)
        case Op.LEASE_TIME_TO_LIVE:
            _array(a, str(op), 4)
            keys = tuple(_bytes(k, "key") for k in _array(a[3], "keys"))
            return LeaseTimeToLiveResponse(
                _i64(a[0], "lease id"), _i64(a[1], "ttl"), _i64(a[2], "granted_ttl"), keys
            )
        case Op.LEASE_LEASES:
            _array(a, str(op), 1)
            return LeaseLeasesResult(tuple(_i64(x, "lease id") for x in _array(a[0], "ids")))
        case Op.WATCH_CREATE:
            _array(a, str(op), 1)
            return WatchCreateResult(_i64(a[0], "watch_id"))
        case Op.WATCH_CANCEL:
            _array(a, str(op), 1)
            return WatchCancelResult(_bool(a[0], "canceled"))
        case Op.MEMBER_LIST:
            _array(a, str(op), 1)
            return MemberListResult(tuple(_member_from(m) for m in _array(a[0], "members")))
        case Op.MEMBER_ADD:
            _array(a, str(op), 1)
            return MemberAddResult(_member_from(a[0]))
        case Op.STATUS:
            _array(a, str(op), 7)
            return StatusInfo(
                header=header,
                version=_str(a[0], "version"),
                leader=_u64(a[1], "leader"),
                raft_index=_u64(a[2], "raft_index"),
                raft_term=_u64(a[3], "raft_term"),
                raft_applied_index=_u64(a[4], "raft_applied_index"),
                is_learner=_bool(a[5], "is_learner"),
                errors=_strs(a[6], "errors"),
            )
        case Op.SNAPSHOT:
            _array(a, str(op), 1)
            return SnapshotResult(_u64(a[0], "size"))
        case Op.ALARM:
            alarms = kvreq.response_from_array(a)
            if not isinstance(alarms, kvreq.AlarmResponse):
                raise RequestDecodeError(f"alarm: not an alarm result: {alarms!r:.60}")
            return alarms
        case _:
            _array(a, str(op), 0)
            return EmptyResult()


def _kv_to(kv: KeyValue) -> list[object]:
    return [kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease]


def _kv_from(v: object) -> KeyValue:
    a = _array(v, "kv", 6)
    return KeyValue(
        _bytes(a[0], "kv key"),
        _i64(a[1], "create_revision"),
        _i64(a[2], "mod_revision"),
        _i64(a[3], "version"),
        _bytes(a[4], "kv value"),
        _i64(a[5], "kv lease"),
    )


def encode_watch_response(header: ResponseHeader, resp: WatchResponse) -> Item:
    """A watch item (``[2, ...]``) for ``resp``; ``header.revision`` should be ``resp``'s."""
    return [
        ITEM_WATCH,
        resp.watch_id,
        encode_header(header),
        resp.created,
        resp.canceled,
        resp.compact_revision,
        resp.cancel_reason,
        [
            [int(e.type), _kv_to(e.kv), None if e.prev_kv is None else _kv_to(e.prev_kv)]
            for e in resp.events
        ],
    ]


def decode_watch_response(item: list[object]) -> WatchResponse:
    """The inverse of :func:`encode_watch_response` (the header's revision becomes the response's).

    Raises:
        RequestDecodeError: ``item`` is not a watch item.
    """
    a = _array(item, "watch response", 8)
    header = decode_header(a[2])
    events = []
    for ev in _array(a[7], "events"):
        e = _array(ev, "event", 3)
        try:
            kind = EventType(_i64(e[0], "event type"))
        except ValueError:
            raise RequestDecodeError(f"event type: unknown {e[0]!r:.20}") from None
        events.append(Event(kind, _kv_from(e[1]), None if e[2] is None else _kv_from(e[2])))
    return WatchResponse(
        watch_id=_i64(a[1], "watch_id"),
        revision=header.revision,
        events=tuple(events),
        created=_bool(a[3], "created"),
        canceled=_bool(a[4], "canceled"),
        compact_revision=_i64(a[5], "compact_revision"),
        cancel_reason=_str(a[6], "cancel_reason"),
    )


def encode_frame(obj: object) -> bytes:
    """A whole frame: the length prefix and the CBOR encoding of ``obj``."""
    data = cbor2.dumps(obj)
    return LENGTH.pack(len(data)) + data


# -- the server ------------------------------------------------------------------------------------


_HTTP_STARTS: Final = frozenset(
    m.encode()[:4].ljust(4) for m in ("GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH")
)
_HINT_TEXT: Final = (
    b"kvapp: this is kvapp's native client port (kvctl, kvapp.client). etcd's JSON gateway is "
    b"served where --listen-client-http-urls says, etcd's gRPC API where --listen-grpc-urls "
    b"says.\n"
)
_HTTP_HINT: Final = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(_HINT_TEXT) + _HINT_TEXT
)
"""What an HTTP client (curl, as against etcd's client port) gets instead of silence."""


@attrs.define
class ConnectionStats:
    """Plain counters of one client connection (or, in :class:`ServerStats`, of all).

    Attributes:
        frames_received: frames read after the handshake.
        frames_sent: frames written after the handshake.
        requests: request items received.
        errors: error answers sent (requests that failed), connection errors included.
        watch_responses: watch items pushed.
    """

    frames_received: int = 0
    frames_sent: int = 0
    requests: int = 0
    errors: int = 0
    watch_responses: int = 0


@attrs.define
class ServerStats(ConnectionStats):
    """Counters of a whole server: the sums over its connections, plus connection counts.

    Attributes:
        connections: connections accepted.
        rejected: connections closed for bad input (no handshake, garbage, oversized frames).
    """

    connections: int = 0
    rejected: int = 0


class _Refusal(Exception):
    """A request refused by this protocol (not by the member): a gRPC code and a text."""

    def __init__(self, code: GrpcCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, error: EtcdError) -> _Refusal:
        """The refusal carrying an etcd error's code and text."""
        return cls(error.code, str(error))


class _Fatal(Exception):
    """The connection must be closed after telling the client why (and logging ``log_text``)."""

    def __init__(self, refusal: _Refusal, log_text: str, *, discard: int = 0) -> None:
        super().__init__(log_text)
        self.refusal = refusal
        self.discard = discard


class NativeServer:
    """Serves the native protocol for one :class:`~kvapp.service.KvService` on one TCP port.

    Args:
        service: the member (or any implementation of the service API).
        host: the address to bind; tests use ``127.0.0.1``.
        port: the port; 0 picks a free one (read it from :attr:`port` after :meth:`start`).
        max_request_bytes: the largest request body accepted (etcd's ``--max-request-bytes``).
        max_inflight: unanswered requests per connection before the server stops reading it.
        handshake_timeout: seconds a new connection has to send its handshake (and, with
            ``tls``, to complete its TLS handshake first).
        tls: serve over TLS with this context (:meth:`kvapp.tls.TlsInfo.server_context`; it
            requires client certificates with ``--client-cert-auth``). A connection whose TLS
            handshake fails is logged with its address and the reason, and closed.

    Attributes:
        stats: counters over every connection since the start.
    """

    def __init__(
        self,
        service: KvService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_request_bytes: int = kvreq.MAX_REQUEST_BYTES,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        handshake_timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if max_request_bytes < 1 or max_inflight < 1 or handshake_timeout <= 0:
            raise ValueError("invalid native server configuration")
        self.service = service
        self.host = host
        self._port = port
        self.max_request_bytes = max_request_bytes
        self.max_frame_bytes = max_request_bytes + FRAME_OVERHEAD
        self.max_inflight = max_inflight
        self.handshake_timeout = handshake_timeout
        self.stats = ServerStats()
        self.tls = tls
        self._server: asyncio.Server | None = None
        self._acceptor: TlsAcceptor | None = None
        self._conns: dict[asyncio.Task[None], _Connection] = {}

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """``host:port``, as clients name it."""
        return f"{self.host}:{self._port}"

    @property
    def connections(self) -> list[ConnectionStats]:
        """The counters of the open connections."""
        return [c.stats for c in self._conns.values()]

    async def start(self) -> None:
        """Bind and start accepting connections.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: already started.
        """
        if self._server is not None:
            raise RuntimeError("native server already started")
        if self.tls is None:
            self._server = await asyncio.start_server(self._accept, self.host, self._port)
        else:  # logs a refused TLS handshake, which start_server(ssl=...) would not
            self._server, self._acceptor = await start_tls_server(
                self._accept,
                self.host,
                self._port,
                self.tls,
                what="native",
                handshake_timeout=self.handshake_timeout,
                log=log,
            )
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("native: serving on %s:%d%s", self.host, self._port, " (TLS)" if self.tls else "")

    async def stop(self) -> None:
        """Stop accepting, close every connection and wait until their handlers are done.

        Requests still being served are abandoned (their tasks cancelled); a write among them
        may still be applied by the member.
        """
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._acceptor is not None:
            await self._acceptor.close()
        self.drop_connections()
        tasks = list(self._conns)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=_STOP_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def drop_connections(self) -> None:
        """Abort every client connection at once, unanswered requests and all.

        What a member does when it must shed its clients (it was removed, or is stopping);
        tests use it to lose answers in flight.
        """
        for conn in list(self._conns.values()):
            conn.abort()

    async def __aenter__(self) -> NativeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # a stream server runs each handler in its own task
            raise RuntimeError("native: a connection handler outside a task")
        conn = _Connection(self, reader, writer)
        self._conns[task] = conn
        self.stats.connections += 1
        try:
            await conn.run()
        except asyncio.CancelledError:
            # Only stop() cancels a handler, after its grace. Ending normally keeps asyncio's
            # stream machinery from logging the cancellation as an error.
            log.info("native: %s: connection handler cancelled", conn.peer)
        finally:
            del self._conns[task]


class _Connection:
    """One client connection: a reader (this task), request tasks and a sender task."""

    def __init__(
        self, server: NativeServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.service = server.service
        self.reader = reader
        self.writer = writer
        self.stats = ConnectionStats()
        self.client_id = 0
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._outbox: list[Item] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._unanswered = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._reads: dict[asyncio.Future[None], list[tuple[int, RangeRequest]]] = {}
        self._sender: asyncio.Task[None] | None = None
        self._watch: WatchStream | None = None
        self._chunks_queued = 0  # stream pieces in the outbox
        self._chunks_unsent = 0  # stream pieces queued or not yet drained
        self._chunk_room = asyncio.Event()

    def abort(self) -> None:
        """Drop the connection now (the reader sees the loss and cleans up)."""
        self.writer.transport.abort()
        self._room.set()  # a reader held back by backpressure goes on to see the loss
        self._chunk_room.set()  # and so does a stream waiting to send its next piece

    # -- counters ----------------------------------------------------------------------------

    def _count(self, field: str, n: int = 1) -> None:
        setattr(self.stats, field, getattr(self.stats, field) + n)
        setattr(self.server.stats, field, getattr(self.server.stats, field) + n)

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until the client leaves, misbehaves or the server stops."""
        try:
            if not await self._handshake():
                self.server.stats.rejected += 1
                return
            self._sender = asyncio.create_task(self._send_loop())
            await self._read_loop()
        except _Fatal as f:
            self.server.stats.rejected += 1
            log.warning("native: %s: %s; closing the connection", self.peer, f)
            await self._send_fatal(f)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                log.info("native: %s: connection lost in the middle of a frame", self.peer)
        except ConnectionError as e:
            log.info("native: %s: connection lost: %s", self.peer, e)
        finally:
            await self._cleanup()

    async def _handshake(self) -> bool:
        try:
            async with asyncio.timeout(self.server.handshake_timeout):
                head = await self.reader.readexactly(LENGTH.size)
                (n,) = LENGTH.unpack(head)
                if head in _HTTP_STARTS:
                    log.warning(
                        "native: %s: an HTTP request on the native client port; answered "
                        "400 and closing",
                        self.peer,
                    )
                    self.writer.write(_HTTP_HINT)
                    await self.writer.drain()
                    return False
                if n > HANDSHAKE_MAX_BYTES:
                    log.warning(
                        "native: %s: first frame of %d bytes is not a handshake "
                        "(not a kvapp native client?); closing",
                        self.peer,
                        n,
                    )
                    return False
                payload = await self.reader.readexactly(n)
        except TimeoutError:
            log.warning(
                "native: %s: no handshake within %.1f s; closing",
                self.peer,
                self.server.handshake_timeout,
            )
            return False
        except asyncio.IncompleteReadError:
            log.info("native: %s: connection closed before the handshake", self.peer)
            return False
        try:
            hello = _array(_loads(payload, "handshake"), "handshake", 3)
            if hello[0] != MAGIC:
                raise RequestDecodeError(f"bad magic {hello[0]!r:.40}")
            version = _i64(hello[1], "version")
            client_id = _u64(hello[2], "client_id")
        except RequestDecodeError as e:
            log.warning("native: %s: bad handshake (%s); closing", self.peer, e)
            return False
        if version != VERSION:
            raise _Fatal(
                _Refusal(
                    GrpcCode.FAILED_PRECONDITION,
                    f"kvapp: native protocol version {version} is not supported "
                    f"(this server speaks {VERSION})",
                ),
                f"client speaks protocol version {version}",
            )
        if not 0 < client_id <= _U63_MAX:
            raise _Fatal(
                _Refusal(GrpcCode.INVALID_ARGUMENT, "kvapp: client_id must be 1..2**63-1"),
                f"bad client id {client_id}",
            )
        self.client_id = client_id
        reply = [
            MAGIC,
            VERSION,
            encode_header(self.service.header()),
            self.server.max_request_bytes,
            self.server.max_frame_bytes,
        ]
        self.writer.write(encode_frame(reply))
        await self.writer.drain()
        return True

    async def _read_loop(self) -> None:
        reader = self.reader
        limit = self.server.max_frame_bytes
        while True:
            try:
                head = await reader.readexactly(LENGTH.size)
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    raise
                return  # a clean end between frames
            (n,) = LENGTH.unpack(head)
            if n > limit:
                raise _Fatal(
                    _Refusal.of(RequestTooLargeError()),
                    f"frame of {n} bytes exceeds the limit of {limit}",
                    discard=n,
                )
            payload = await reader.readexactly(n)
            self._count("frames_received")
            try:
                items = _array(_loads(payload, "frame"), "frame")
            except RequestDecodeError as e:
                raise _Fatal(_Refusal(GrpcCode.INVALID_ARGUMENT, str(e)), str(e)) from e
            for item in items:
                self._dispatch(item)
            transport = self.writer.transport
            while self._unanswered >= self.server.max_inflight and not transport.is_closing():
                self._room.clear()
                await self._room.wait()

    async def _send_fatal(self, f: _Fatal) -> None:
        await self._stop_sender()
        items = [*self._outbox, [ITEM_FATAL, int(f.refusal.code), f.refusal.message]]
        self._outbox = []
        self._count("errors")
        with contextlib.suppress(ConnectionError, TimeoutError):
            self.writer.write(encode_frame(items))
            self._count("frames_sent")
            async with asyncio.timeout(_FATAL_LINGER):
                await self.writer.drain()
                # Read (and drop) what the client is still sending, so that closing with
                # unread data does not reset the connection before it has read our answer.
                left = min(f.discard, _FATAL_DISCARD_MAX)
                while left > 0:
                    chunk = await self.reader.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)

    async def _stop_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _cleanup(self) -> None:
        for barrier in self._reads:
            barrier.remove_done_callback(self._barrier_passed)
        self._reads.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._stop_sender()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    # -- requests ----------------------------------------------------------------------------

    def _dispatch(self, item: object) -> None:
        if type(item) is not list or len(item) != 3 or type(item[0]) is not int:
            raise _Fatal(
                _Refusal(GrpcCode.INVALID_ARGUMENT, "kvapp: malformed request item"),
                f"malformed request item {item!r:.60}",
            )
        req_no, op_name, body = item
        self._count("requests")
        self._unanswered += 1
        try:
            if not 0 < req_no <= _U63_MAX:
                raise _Refusal(
                    GrpcCode.INVALID_ARGUMENT, "kvapp: request number must be 1..2**63-1"
                )
            try:
                op = Op(op_name)
            except ValueError:
                raise _Refusal(
                    GrpcCode.UNIMPLEMENTED, f"kvapp: unknown operation {op_name!r:.40}"
                ) from None
            if type(body) is not bytes:
                raise _Refusal(GrpcCode.INVALID_ARGUMENT, "kvapp: body must be bytes")
            if len(body) > self.server.max_request_bytes:
                raise RequestTooLargeError(f"{len(body)} bytes > {self.server.max_request_bytes}")
            try:
                request, request_id = decode_body(op, body)
            except RequestDecodeError as e:
                raise _Refusal(GrpcCode.INVALID_ARGUMENT, f"kvapp: malformed request: {e}") from e
            result: tuple[ResponseHeader, OpResult] | None
            if type(request) in _WRITES:
                write = cast("WriteRequest", request)
                client_id = self.client_id if request_id else 0
                done = self.service.submit_write(write, client_id=client_id, request_id=request_id)
                done.add_done_callback(functools.partial(self._write_done, req_no, write))
                return
            if type(request) is RangeRequest:
                barrier = self.service.read_barrier(request)
                if barrier is not None:
                    self._wait_barrier(barrier, req_no, request)
                    return
                result = self._read_now(request)
            else:
                result = self._serve_now(request)
        except EtcdError as e:
            self._answer_error(req_no, _Refusal.of(e))
            return
        except _Refusal as e:
            self._answer_error(req_no, e)
            return
        except Exception:
            log.exception("native: %s: request %d (%s) failed", self.peer, req_no, op_name)
            self._answer_error(req_no, _Refusal(GrpcCode.INTERNAL, "kvapp: internal error"))
            return
        if result is not None:
            header, value = result
            self._answer(req_no, header, value)
            return
        if isinstance(request, SnapshotRequest):
            task = asyncio.create_task(self._serve_snapshot(req_no, request))
        else:
            task = asyncio.create_task(self._serve_later(req_no, request, request_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wait_barrier(
        self, barrier: asyncio.Future[None], req_no: int, request: RangeRequest
    ) -> None:
        """Serve ``request`` once ``barrier`` is passed.

        One callback serves every read waiting on the barrier (a ReadIndex round is shared by
        a batch of reads): no task per read.
        """
        waiting = self._reads.get(barrier)
        if waiting is None:
            waiting = self._reads[barrier] = []
            barrier.add_done_callback(self._barrier_passed)
        waiting.append((req_no, request))

    def _barrier_passed(self, barrier: asyncio.Future[None]) -> None:
        reads = self._reads.pop(barrier, [])
        if barrier.cancelled():
            return  # the member is stopping; as a cancelled task would, leave them unanswered
        exc = barrier.exception()
        for req_no, request in reads:
            if exc is not None:
                self._answer_failure(req_no, request, exc)
                continue
            try:
                header, read = self._read_now(request)
            except Exception as e:  # noqa: BLE001 - answered as _serve_later answers
                self._answer_failure(req_no, request, e)
            else:
                self._answer(req_no, header, read)

    def _write_done(
        self, req_no: int, request: WriteRequest, done: asyncio.Future[WriteResponse]
    ) -> None:
        if done.cancelled():
            return  # the member is stopping; as a cancelled task would, leave it unanswered
        exc = done.exception()
        if exc is not None:
            self._answer_failure(req_no, request, exc)
            return
        result = done.result()
        self._answer(req_no, self._header_at(result.revision), result)

    def _read_now(self, request: RangeRequest) -> tuple[ResponseHeader, OpResult]:
        service = self.service
        read = service.range_now(request)
        return self._header_at(read.revision), read

    def _header_at(self, revision: int) -> ResponseHeader:
        """The member's header now, at ``revision`` (a third of attrs.evolve's cost)."""
        h = self.service.header()
        return ResponseHeader(h.cluster_id, h.member_id, revision, h.raft_term)

    def _serve_now(self, request: OpRequest) -> tuple[ResponseHeader, OpResult] | None:
        """Serve what needs no waiting; None for what must run in a task."""
        service = self.service
        match request:
            case LeaseLeasesRequest():
                return service.header(), LeaseLeasesResult(tuple(service.leases()))
            case WatchCreateRequest():
                return self._watch_create(request)
            case WatchCancelRequest():
                found = self._stream().cancel(request.watch_id)
                return service.header(), WatchCancelResult(found)
            case WatchProgressRequest():
                self._stream().request_progress()
                return service.header(), EmptyResult()
            case MemberListRequest():
                return service.header(), MemberListResult(tuple(service.member_list()))
            case StatusRequest():
                status = service.status()
                return status.header, status
            case _:
                return None

    def _stream(self) -> WatchStream:
        if self._watch is None:
            self._watch = self.service.open_watch_stream(self._wake.set)
        return self._watch

    def _watch_create(self, request: WatchCreateRequest) -> tuple[ResponseHeader, OpResult]:
        stream = self._stream()
        duplicate = bool(request.watch_id) and request.watch_id in stream.watch_ids
        header = self.service.header()
        watch_id = stream.watch(
            request.key,
            request.range_end,
            start_revision=request.start_revision,
            filters=request.filters,
            prev_kv=request.prev_kv,
            progress_notify=request.progress_notify,
            watch_id=request.watch_id,
        )
        if watch_id < 0:
            # The stream also queued a created+canceled response with watch id -1; the sender
            # drops it, since this answer tells the client.
            reason = ERR_DUPLICATE_WATCH_ID if duplicate else ERR_EMPTY_WATCHER_RANGE
            raise _Refusal(GrpcCode.INVALID_ARGUMENT, reason)
        return header, WatchCreateResult(watch_id)

    async def _serve_later(self, req_no: int, request: OpRequest, request_id: int) -> None:
        try:
            header, result = await self._serve(request, request_id)
        except Exception as e:  # noqa: BLE001 - every failure is answered
            self._answer_failure(req_no, request, e)
        else:
            self._answer(req_no, header, result)

    def _answer_failure(self, req_no: int, request: OpRequest, e: BaseException) -> None:
        if isinstance(e, EtcdError):
            self._answer_error(req_no, _Refusal.of(e))
        elif isinstance(e, _Refusal):
            self._answer_error(req_no, e)
        elif isinstance(e, OutcomeUnknown):
            self._answer_error(req_no, _Refusal(GrpcCode.UNKNOWN, OUTCOME_UNKNOWN_MESSAGE))
        else:
            log.error("native: %s: request %d (%s) failed", self.peer, req_no, request, exc_info=e)
            self._answer_error(req_no, _Refusal(GrpcCode.INTERNAL, "kvapp: internal error"))

    async def _serve(self, request: OpRequest, request_id: int) -> tuple[ResponseHeader, OpResult]:
        service = self.service
        match request:
            case LeaseKeepAliveRequest():
                resp: OpResult = await service.lease_keep_alive(request.id)
            case LeaseTimeToLiveRequest():
                resp = await service.lease_time_to_live(request.id, keys=request.keys)
            case MemberAddRequest():
                member = await service.member_add(request.peer_urls, is_learner=request.is_learner)
                resp = MemberAddResult(member)
            case MemberRemoveRequest():
                await service.member_remove(request.id)
                resp = EmptyResult()
            case MemberPromoteRequest():
                await service.member_promote(request.id)
                resp = EmptyResult()
            case kvreq.MemberUpdateRequest():
                await service.member_update(request.id, request.peer_urls)
                resp = EmptyResult()
            case kvreq.AlarmRequest():
                resp = await service.alarm(request.action, request.member_id, request.alarm)
            case _:
                raise RuntimeError(f"not a deferred request: {request!r:.60}")
        return service.header(), resp

    async def _serve_snapshot(self, req_no: int, request: SnapshotRequest) -> None:
        size = 0
        try:
            stream = self.service.snapshot(linearizable=request.linearizable)
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    if not await self._push_chunk(req_no, chunk):
                        return  # the connection is gone
                    size += len(chunk)
        except EtcdError as e:
            self._answer_error(req_no, _Refusal.of(e))
        except KvappError as e:
            log.error("native: %s: snapshot %d failed: %s", self.peer, req_no, e)
            self._answer_error(req_no, _Refusal(GrpcCode.INTERNAL, f"kvapp: {e}"))
        except Exception:
            log.exception("native: %s: snapshot %d failed", self.peer, req_no)
            self._answer_error(req_no, _Refusal(GrpcCode.INTERNAL, "kvapp: internal error"))
        else:
            self._answer(req_no, self.service.header(), SnapshotResult(size))

    async def _push_chunk(self, req_no: int, chunk: bytes) -> bool:
        """Queue one piece of a stream once fewer than a few are unsent; False if closed."""
        transport = self.writer.transport
        while self._chunks_unsent >= _CHUNKS_AHEAD and not transport.is_closing():
            self._chunk_room.clear()
            await self._chunk_room.wait()
        if transport.is_closing():
            return False
        self._outbox.append([ITEM_CHUNK, req_no, chunk])
        self._chunks_queued += 1
        self._chunks_unsent += 1
        self._wake.set()
        return True

    # -- answers -----------------------------------------------------------------------------

    def _answer(self, req_no: int, header: ResponseHeader, result: OpResult) -> None:
        try:
            item: Item = [ITEM_OK, req_no, encode_header(header), encode_result(result)]
        except ValueError:
            log.exception("native: %s: cannot encode the answer to %d", self.peer, req_no)
            self._answer_error(req_no, _Refusal(GrpcCode.INTERNAL, "kvapp: internal error"))
            return
        self._outbox.append(item)
        self._wake.set()

    def _answer_error(self, req_no: int, refusal: _Refusal) -> None:
        self._count("errors")
        self._outbox.append([ITEM_ERROR, req_no, int(refusal.code), refusal.message])
        self._wake.set()

    async def _send_loop(self) -> None:
        wake = self._wake
        writer = self.writer
        try:
            while True:
                await wake.wait()
                wake.clear()
                items, self._outbox = self._outbox, []
                chunks, self._chunks_queued = self._chunks_queued, 0
                answered = len(items) - chunks
                stream = self._watch
                if stream is not None:
                    self._take_watch(stream, items)
                if items:
                    writer.write(encode_frame(items))
                    self._count("frames_sent")
                    self._unanswered -= answered
                    if self._unanswered < self.server.max_inflight:
                        self._room.set()
                    await writer.drain()
                    if chunks:
                        self._chunks_unsent -= chunks
                        self._chunk_room.set()
                else:
                    await asyncio.sleep(0)  # a catch-up round produced nothing: let others run
        except ConnectionError as e:
            log.info("native: %s: cannot send: %s", self.peer, e)
            self.abort()
        except Exception:
            log.exception("native: %s: the sender failed; closing the connection", self.peer)
            self.abort()

    def _take_watch(self, stream: WatchStream, items: list[Item]) -> None:
        responses = stream.take(_WATCH_BATCH)
        if responses:
            header = self.service.header()
            for resp in responses:
                if resp.watch_id < 0 and resp.created:
                    continue  # a failed create, already answered with an error
                with_rev = attrs.evolve(header, revision=resp.revision)
                items.append(encode_watch_response(with_rev, resp))
                self._count("watch_responses")
        if stream.has_pending():
            self._wake.set()
