"""The replicated requests and their results, and a versioned ``cbor2`` codec for both.

A member proposes ``encode_request(Request(client_id, request_id, body))`` as the data of a Raft
log entry; every member decodes the entry and applies it (see :mod:`kvapp.dedup`), so the codec
must be stable, strict and total. The same codec carries results back to clients (the native
client protocol reuses :func:`encode_response` / :func:`decode_response`).

Bodies reuse the etcd request types of :mod:`kvapp.mvcc.types` and :mod:`kvapp.lease`; what is
defined here is only what they lack: membership changes (:class:`MemberAddRequest` and friends,
carrying what etcd's Cluster API carries plus the id the proposer chose), alarms
(:class:`AlarmRequest`: etcd replicates NOSPACE through Raft so every member stops taking
writes at the same entry), their results, and :class:`ErrorResult`, an etcd error as data.

Format (version :data:`FORMAT_VERSION`). Everything is a CBOR array, never a map; keys and
values are CBOR byte strings, names and URLs text strings, enums their etcd numbers:

====================  ========================================================================
request               ``[version, client_id, request_id, body]``
response              ``[version, result]``
body: range           ``[0, key, range_end, limit, revision, sort_order, sort_target,
                      serializable, keys_only, count_only, min_mod_revision, max_mod_revision,
                      min_create_revision, max_create_revision]``
put                   ``[1, key, value, lease, prev_kv, ignore_value, ignore_lease]``
delete-range          ``[2, key, range_end, prev_kv]``
txn                   ``[3, [compare...], [op...], [op...]]``; an op is a range, put,
                      delete-range or txn body; a compare is
                      ``[target, result, key, range_end, operand]`` (operand: bytes for VALUE,
                      else an integer)
compact               ``[4, revision, physical]``
lease grant           ``[5, ttl, id]``
lease revoke          ``[6, id]``
lease checkpoint      ``[7, [[id, remaining_ms, renewed]...]]``
member add            ``[8, id, [peer_url...], is_learner]``
member remove         ``[9, id]``
member update         ``[10, id, [peer_url...]]``
member promote        ``[11, id]``
alarm                 ``[12, action, member_id, alarm]``
result: none          ``[0]`` (a lease checkpoint)
range                 ``[1, revision, [kv...], more, count]``; a kv is
                      ``[key, create_revision, mod_revision, version, value, lease]``
put                   ``[2, revision, kv or null]``
delete-range          ``[3, revision, deleted, [kv...]]``
txn                   ``[4, revision, succeeded, [range/put/delete-range/txn result...]]``
compact               ``[5, revision]``
lease grant           ``[6, id, ttl, revision]``
lease revoke          ``[7, revision]``
member add            ``[8, member, [member...]]``; a member is
                      ``[id, name, [peer_url...], [client_url...], is_learner]``
member remove         ``[9, [member...]]`` (update: 10, promote: 11)
alarm                 ``[12, [[member_id, alarm]...]]``
error                 ``[13, grpc_code, message]``
====================  ========================================================================

Batches (version :data:`BATCH_VERSION`). A member may propose several requests as one log entry,
to pay Raft's per-entry costs once for all of them: ``[2, [request...]]``, where each request is
the whole version-1 request array above (``[1, client_id, request_id, body]``), spliced in as
:func:`encode_request` produced it (:func:`encode_batch`, no re-encoding). Every member applies
the requests in order, at the entry's index. :func:`decode_entry` reads both kinds of entry;
entries written before batches existed are plain requests and still decode. Compatibility: an
older member (which knows only version 1) refuses a batch as an unsupported version and skips the
entry, so members that batch must not share a cluster with older ones.

Integers are range-checked as etcd's protobuf fields are typed: member, client and request ids
are unsigned 64-bit, everything else signed 64-bit. Txns nest at most :data:`MAX_TXN_DEPTH`
levels (etcd's default ``--max-txn-ops`` of 128 allows no deeper nesting either).

Contract: :func:`decode_request`, :func:`decode_entry` and :func:`decode_response` raise
:class:`~kvapp.errors.RequestDecodeError` and nothing else, whatever the bytes; the encoders
apply the very same checks and raise :class:`ValueError` for anything the decoders would
reject, so whatever encodes decodes to an equal value.
"""

from __future__ import annotations

import enum
import functools
import io
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias, TypeVar, cast

import attrs
import cbor2

from kvapp.errors import (
    EtcdError,
    GrpcCode,
    RequestDecodeError,
    RequestTooLargeError,
)
from kvapp.fields import FieldError
from kvapp.fields import array as _array
from kvapp.fields import boolean as _bool
from kvapp.fields import i64 as _i64
from kvapp.fields import octets as _bytes
from kvapp.fields import text as _str
from kvapp.fields import u64 as _u64
from kvapp.lease import (
    LeaseCheckpoint,
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
)
from kvapp.mvcc.types import (
    CompactRequest,
    CompactResponse,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from kvapp.service import MemberInfo

__all__ = [
    "BATCH_VERSION",
    "FORMAT_VERSION",
    "MAX_ERROR_MESSAGE",
    "MAX_REQUEST_BYTES",
    "MAX_TXN_DEPTH",
    "WRITE_TYPES",
    "AlarmAction",
    "AlarmMember",
    "AlarmRequest",
    "AlarmResponse",
    "Body",
    "ErrorResult",
    "MemberAddRequest",
    "MemberAddResponse",
    "MemberPromoteRequest",
    "MemberPromoteResponse",
    "MemberRemoveRequest",
    "MemberRemoveResponse",
    "MemberRequest",
    "MemberResponse",
    "MemberUpdateRequest",
    "MemberUpdateResponse",
    "Request",
    "RequestBatch",
    "RequestDecodeError",
    "RequestIdExpiredError",
    "Response",
    "Result",
    "UnknownEtcdError",
    "check_request_size",
    "decode_entry",
    "decode_request",
    "decode_response",
    "encode_batch",
    "encode_request",
    "encode_response",
    "response_from_array",
    "response_to_array",
]

FORMAT_VERSION: Final = 1
"""The version written first in every request and response; decoders reject any other."""

BATCH_VERSION: Final = 2
"""The version written first in a batch entry (see :func:`encode_batch`)."""

MAX_REQUEST_BYTES: Final = 1_572_864
"""etcd's default ``--max-request-bytes`` (1.5 MiB): the largest encoded request a member
proposes (see :func:`check_request_size`)."""

MAX_TXN_DEPTH: Final = 128
"""The deepest txn nesting the codec accepts (a top-level txn is depth 1)."""

MAX_ERROR_MESSAGE: Final = 1024
"""The longest error message (in characters) an :class:`ErrorResult` may carry."""

# Enough CBOR nesting for MAX_TXN_DEPTH txns (two levels each: the op list and the op) plus
# the envelope and a kv list; deeper input is refused by cbor2 before any of ours runs.
_MAX_CBOR_DEPTH: Final = 2 * MAX_TXN_DEPTH + 8
# A batch wraps requests in two more levels (the envelope and its list).
_MAX_ENTRY_DEPTH: Final = _MAX_CBOR_DEPTH + 2
# What every encode_request output starts with: a 4-item array, then the version.
_REQUEST_PREFIX: Final = bytes([0x84, FORMAT_VERSION])
_BATCH_PREFIX: Final = bytes([0x82, BATCH_VERSION])


# -- the types this module adds ------------------------------------------------------------------


def _strings(items: Iterable[str]) -> tuple[str, ...]:
    if isinstance(items, str):  # tuple("http://a") would split it into characters
        raise TypeError("expected a sequence of URLs, got one string")
    return tuple(items)


@attrs.frozen
class MemberAddRequest:
    """Replicated request: add a member (etcd's ``MemberAddRequest``).

    Unlike etcd's message it names the new member's ``id``: the proposer picks it (as etcd's
    server does before proposing the configuration change), so every member applies the same.

    Attributes:
        id: the new member's id, non-zero.
        peer_urls: where its peers will reach it.
        is_learner: add it as a non-voting learner.
    """

    id: int
    peer_urls: tuple[str, ...] = attrs.field(converter=_strings)
    is_learner: bool = False


@attrs.frozen
class MemberRemoveRequest:
    """Replicated request: remove the member ``id`` (etcd's ``MemberRemoveRequest``)."""

    id: int


@attrs.frozen
class MemberUpdateRequest:
    """Replicated request: change member ``id``'s peer URLs (etcd's ``MemberUpdateRequest``)."""

    id: int
    peer_urls: tuple[str, ...] = attrs.field(converter=_strings)


@attrs.frozen
class MemberPromoteRequest:
    """Replicated request: make learner ``id`` a voter (etcd's ``MemberPromoteRequest``)."""

    id: int


MemberRequest: TypeAlias = (
    MemberAddRequest | MemberRemoveRequest | MemberUpdateRequest | MemberPromoteRequest
)
"""A membership change; the member layer turns it into a Raft configuration change."""


def _members(items: Iterable[MemberInfo]) -> tuple[MemberInfo, ...]:
    return tuple(items)


@attrs.frozen
class MemberAddResponse:
    """Result of a member add: the new member and the members afterwards."""

    member: MemberInfo
    members: tuple[MemberInfo, ...] = attrs.field(default=(), converter=_members)


@attrs.frozen
class MemberRemoveResponse:
    """Result of a member remove: the members afterwards."""

    members: tuple[MemberInfo, ...] = attrs.field(default=(), converter=_members)


@attrs.frozen
class MemberUpdateResponse:
    """Result of a member update: the members afterwards."""

    members: tuple[MemberInfo, ...] = attrs.field(default=(), converter=_members)


@attrs.frozen
class MemberPromoteResponse:
    """Result of a member promote: the members afterwards."""

    members: tuple[MemberInfo, ...] = attrs.field(default=(), converter=_members)


MemberResponse: TypeAlias = (
    MemberAddResponse | MemberRemoveResponse | MemberUpdateResponse | MemberPromoteResponse
)
"""What a :data:`MemberRequest` returns."""


class AlarmAction(enum.IntEnum):
    """``AlarmRequest.AlarmAction``."""

    GET = 0
    ACTIVATE = 1
    DEACTIVATE = 2


class AlarmType(enum.IntEnum):
    """etcd's ``AlarmType``: NOSPACE stops writes, CORRUPT stops everything."""

    NONE = 0
    NOSPACE = 1
    CORRUPT = 2


@attrs.frozen
class AlarmRequest:
    """Replicated request: raise, clear or list alarms (etcd's ``AlarmRequest``).

    etcd replicates alarms so that every member turns read-only (NOSPACE) or refuses service
    (CORRUPT) at the same log entry. ``member_id`` is the member that raised the alarm (ignored
    by GET); ``alarm`` NONE in a GET lists every alarm.
    """

    action: AlarmAction
    member_id: int = 0
    alarm: AlarmType = AlarmType.NONE


@attrs.frozen
class AlarmMember:
    """One raised alarm: which member raised which alarm (etcd's ``AlarmMember``)."""

    member_id: int
    alarm: AlarmType


def _alarm_members(items: Iterable[AlarmMember]) -> tuple[AlarmMember, ...]:
    return tuple(items)


@attrs.frozen
class AlarmResponse:
    """Result of an alarm request: the alarms activated, deactivated or listed."""

    alarms: tuple[AlarmMember, ...] = attrs.field(default=(), converter=_alarm_members)


class UnknownEtcdError(EtcdError):
    """An error this version of kvapp does not know (from a newer peer), with its text and code.

    :meth:`ErrorResult.to_exception` raises a subclass of this made for the received code and
    message, so ``str(exc)`` and ``exc.code`` still say what the server said.
    """


class RequestIdExpiredError(EtcdError):
    """The member cannot tell whether this request was applied before; it was not applied now.

    A client's request id fell out of its retry window, or the client's session expired (it was
    idle for too many log entries, see :mod:`kvapp.dedup`). The client must treat the request's
    outcome as unknown and continue under a new client id. Not an etcd error: etcd clients send
    no client ids and never see it.
    """

    message = "etcdserver: request id is outside the client's retry window"
    code = GrpcCode.FAILED_PRECONDITION


@attrs.frozen
class ErrorResult:
    """An etcd error as data: what a failed request returns, over the wire or from the log.

    Attributes:
        code: the gRPC status code.
        message: etcd's error text, exactly as ``str()`` of the exception.
    """

    code: GrpcCode
    message: str

    @classmethod
    def from_exception(cls, exc: EtcdError) -> ErrorResult:
        """The error result for ``exc`` (its ``detail`` is local and left out)."""
        return cls(exc.code, exc.message)

    def to_exception(self) -> EtcdError:
        """A new exception of the class this error result was made from.

        The class is found by code and message among the :class:`~kvapp.errors.EtcdError`
        subclasses defined so far; an unknown pair gives an :class:`UnknownEtcdError` with that
        code and message.
        """
        cls = _error_class(self.code, self.message)
        try:
            return cls()
        except TypeError:  # a subclass whose constructor needs arguments
            return _unknown_error_class(self.code, self.message)()


Body: TypeAlias = (
    RangeRequest
    | PutRequest
    | DeleteRangeRequest
    | TxnRequest
    | CompactRequest
    | LeaseGrantRequest
    | LeaseRevokeRequest
    | LeaseCheckpointRequest
    | MemberAddRequest
    | MemberRemoveRequest
    | MemberUpdateRequest
    | MemberPromoteRequest
    | AlarmRequest
)
"""What a replicated request asks for (a range only when a read is served through the log)."""

WRITE_TYPES: Final[tuple[type, ...]] = (
    PutRequest,
    DeleteRangeRequest,
    TxnRequest,
    CompactRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    LeaseCheckpointRequest,
    MemberAddRequest,
    MemberRemoveRequest,
    MemberUpdateRequest,
    MemberPromoteRequest,
    AlarmRequest,
)
"""Bodies that may change the replicated state."""

Result: TypeAlias = (
    RangeResponse
    | PutResponse
    | DeleteRangeResponse
    | TxnResponse
    | CompactResponse
    | LeaseGrantResponse
    | LeaseRevokeResponse
    | MemberAddResponse
    | MemberRemoveResponse
    | MemberUpdateResponse
    | MemberPromoteResponse
    | AlarmResponse
    | None
)
"""What applying a body returns when it succeeds (None for a lease checkpoint)."""

Response: TypeAlias = Result | ErrorResult
"""What :func:`encode_response` carries: a result, or the error the request failed with."""


@attrs.frozen
class Request:
    """One replicated request: who sent it, and what it asks for.

    Attributes:
        client_id: the sending client's session id (unsigned 64-bit); 0 for requests that must
            not be deduplicated (etcd's clients, the leader's own lease proposals).
        request_id: the request's number within the client's session, from 1 up (unsigned
            64-bit); a retry reuses it, so the write applies once. Ignored when ``client_id``
            is 0; must be non-zero otherwise.
        body: what to apply.
    """

    client_id: int
    request_id: int
    body: Body


@attrs.frozen
class RequestBatch:
    """Several requests carried by one log entry, applied in order at that entry's index.

    Attributes:
        requests: the requests, at least one.
    """

    requests: tuple[Request, ...]


def check_request_size(encoded: bytes, limit: int = MAX_REQUEST_BYTES) -> None:
    """Refuse to propose a request larger than ``limit`` bytes, as etcd does.

    The proposer checks this, not the state machine: members configured with different limits
    must still apply the same log.

    Raises:
        RequestTooLargeError: ``len(encoded) > limit``.
    """
    if len(encoded) > limit:
        raise RequestTooLargeError(f"{len(encoded)} bytes > {limit}")


# -- field checks, shared by the encoders and the decoders ----------------------------------------


_Invalid = FieldError


_E = TypeVar("_E", bound=enum.IntEnum)


_ENUM_MEMBERS: dict[type[enum.IntEnum], dict[int, enum.IntEnum]] = {}
"""Each enum's members by value: a dict lookup costs a tenth of calling the enum class."""


def _enum(cls: type[_E], v: object, what: str) -> _E:
    members = _ENUM_MEMBERS.get(cls)
    if members is None:
        members = _ENUM_MEMBERS[cls] = {int(m): m for m in cls}
    if isinstance(v, int) and not isinstance(v, bool):
        member = members.get(v)
        if member is not None:
            return member  # type: ignore[return-value]  # the members of cls
    raise _Invalid(f"{what}: expected a {cls.__name__}, got {v!r:.40}")


def _seq(v: object, what: str) -> tuple[object, ...] | list[object]:
    """A sequence field of a value being encoded (attrs keeps whatever it was given)."""
    if type(v) is not tuple and type(v) is not list:
        raise _Invalid(f"{what}: expected a tuple, got {type(v).__name__}")
    return v


def _strs(v: object, what: str) -> list[str]:
    return [_str(s, what) for s in _seq(v, what)]


def _tag(v: object, what: str) -> int:
    if type(v) is not int:
        raise _Invalid(f"{what}: expected a type tag, got {v!r:.40}")
    return v


def _depth(depth: int) -> None:
    if depth > MAX_TXN_DEPTH:
        raise _Invalid(f"txn nested deeper than {MAX_TXN_DEPTH} levels")


# -- requests: values -> arrays -------------------------------------------------------------------

_Array: TypeAlias = list[object]


def _range_to(r: RangeRequest) -> _Array:
    return [
        0,
        _bytes(r.key, "range key"),
        _bytes(r.range_end, "range_end"),
        _i64(r.limit, "limit"),
        _i64(r.revision, "revision"),
        int(_enum(SortOrder, r.sort_order, "sort_order")),
        int(_enum(SortTarget, r.sort_target, "sort_target")),
        _bool(r.serializable, "serializable"),
        _bool(r.keys_only, "keys_only"),
        _bool(r.count_only, "count_only"),
        _i64(r.min_mod_revision, "min_mod_revision"),
        _i64(r.max_mod_revision, "max_mod_revision"),
        _i64(r.min_create_revision, "min_create_revision"),
        _i64(r.max_create_revision, "max_create_revision"),
    ]


def _put_to(r: PutRequest) -> _Array:
    return [
        1,
        _bytes(r.key, "put key"),
        _bytes(r.value, "value"),
        _i64(r.lease, "lease"),
        _bool(r.prev_kv, "prev_kv"),
        _bool(r.ignore_value, "ignore_value"),
        _bool(r.ignore_lease, "ignore_lease"),
    ]


def _delete_to(r: DeleteRangeRequest) -> _Array:
    return [
        2,
        _bytes(r.key, "delete key"),
        _bytes(r.range_end, "range_end"),
        _bool(r.prev_kv, "prev_kv"),
    ]


def _compare_to(c: object) -> _Array:
    if type(c) is not Compare:
        raise _Invalid(f"compare: expected a Compare, got {type(c).__name__}")
    target = _enum(CompareTarget, c.target, "compare target")
    operand: object = c.operand
    if target is CompareTarget.VALUE:
        _bytes(operand, "compare value")
    else:
        _i64(operand, "compare operand")
    return [
        int(target),
        int(_enum(CompareResult, c.result, "compare result")),
        _bytes(c.key, "compare key"),
        _bytes(c.range_end, "compare range_end"),
        operand,
    ]


def _op_to(op: object, depth: int) -> _Array:
    match op:
        case RangeRequest():
            return _range_to(op)
        case PutRequest():
            return _put_to(op)
        case DeleteRangeRequest():
            return _delete_to(op)
        case TxnRequest():
            return _txn_to(op, depth + 1)
        case _:
            raise _Invalid(
                f"txn op: expected a range, put, delete-range or txn, got {type(op).__name__}"
            )


def _txn_to(r: TxnRequest, depth: int) -> _Array:
    _depth(depth)
    return [
        3,
        [_compare_to(c) for c in _seq(r.compare, "compare")],
        [_op_to(op, depth) for op in _seq(r.success, "success")],
        [_op_to(op, depth) for op in _seq(r.failure, "failure")],
    ]


def _checkpoint_to(cp: object) -> _Array:
    if type(cp) is not LeaseCheckpoint:
        raise _Invalid(f"checkpoint: expected a LeaseCheckpoint, got {type(cp).__name__}")
    return [
        _i64(cp.id, "checkpoint id"),
        _i64(cp.remaining_ms, "remaining_ms"),
        _bool(cp.renewed, "renewed"),
    ]


def _body_to(body: object) -> _Array:
    match body:
        case RangeRequest() | PutRequest() | DeleteRangeRequest() | TxnRequest():
            return _op_to(body, 0)
        case CompactRequest():
            return [4, _i64(body.revision, "compact revision"), _bool(body.physical, "physical")]
        case LeaseGrantRequest():
            return [5, _i64(body.ttl, "ttl"), _i64(body.id, "lease id")]
        case LeaseRevokeRequest():
            return [6, _i64(body.id, "lease id")]
        case LeaseCheckpointRequest():
            return [7, [_checkpoint_to(cp) for cp in _seq(body.checkpoints, "checkpoints")]]
        case MemberAddRequest():
            return [
                8,
                _u64(body.id, "member id"),
                _strs(body.peer_urls, "peer_urls"),
                _bool(body.is_learner, "is_learner"),
            ]
        case MemberRemoveRequest():
            return [9, _u64(body.id, "member id")]
        case MemberUpdateRequest():
            return [10, _u64(body.id, "member id"), _strs(body.peer_urls, "peer_urls")]
        case MemberPromoteRequest():
            return [11, _u64(body.id, "member id")]
        case AlarmRequest():
            return [
                12,
                int(_enum(AlarmAction, body.action, "alarm action")),
                _u64(body.member_id, "alarm member id"),
                int(_enum(AlarmType, body.alarm, "alarm type")),
            ]
        case _:
            raise _Invalid(f"body: not a request type: {type(body).__name__}")


def _ids(client_id: object, request_id: object) -> tuple[int, int]:
    cid = _u64(client_id, "client_id")
    rid = _u64(request_id, "request_id")
    if cid and not rid:
        raise _Invalid("request_id: must be non-zero when client_id is")
    return cid, rid


# -- requests: arrays -> values -------------------------------------------------------------------


def _range_from(a: list[object]) -> RangeRequest:
    _array(a, "range", 14)
    return RangeRequest(
        _bytes(a[1], "range key"),
        _bytes(a[2], "range_end"),
        _i64(a[3], "limit"),
        _i64(a[4], "revision"),
        _enum(SortOrder, a[5], "sort_order"),
        _enum(SortTarget, a[6], "sort_target"),
        _bool(a[7], "serializable"),
        _bool(a[8], "keys_only"),
        _bool(a[9], "count_only"),
        _i64(a[10], "min_mod_revision"),
        _i64(a[11], "max_mod_revision"),
        _i64(a[12], "min_create_revision"),
        _i64(a[13], "max_create_revision"),
    )


def _put_from(a: list[object]) -> PutRequest:
    _array(a, "put", 7)
    return PutRequest(
        _bytes(a[1], "put key"),
        _bytes(a[2], "value"),
        _i64(a[3], "lease"),
        _bool(a[4], "prev_kv"),
        _bool(a[5], "ignore_value"),
        _bool(a[6], "ignore_lease"),
    )


def _delete_from(a: list[object]) -> DeleteRangeRequest:
    _array(a, "delete-range", 4)
    return DeleteRangeRequest(
        _bytes(a[1], "delete key"), _bytes(a[2], "range_end"), _bool(a[3], "prev_kv")
    )


def _compare_from(v: object) -> Compare:
    a = _array(v, "compare", 5)
    target = _enum(CompareTarget, a[0], "compare target")
    operand: int | bytes
    if target is CompareTarget.VALUE:
        operand = _bytes(a[4], "compare value")
    else:
        operand = _i64(a[4], "compare operand")
    return Compare(
        _bytes(a[2], "compare key"),
        target,
        _enum(CompareResult, a[1], "compare result"),
        operand,
        _bytes(a[3], "compare range_end"),
    )


def _op_from(v: object, depth: int) -> RequestOp:
    a = _array(v, "txn op")
    if not a:
        raise _Invalid("txn op: empty array")
    match _tag(a[0], "txn op"):
        case 0:
            return _range_from(a)
        case 1:
            return _put_from(a)
        case 2:
            return _delete_from(a)
        case 3:
            return _txn_from(a, depth + 1)
        case _:
            raise _Invalid(f"txn op: unknown type tag {a[0]!r:.20}")


def _txn_from(a: list[object], depth: int) -> TxnRequest:
    _depth(depth)
    _array(a, "txn", 4)
    return TxnRequest(
        [_compare_from(c) for c in _array(a[1], "compare")],
        [_op_from(op, depth) for op in _array(a[2], "success")],
        [_op_from(op, depth) for op in _array(a[3], "failure")],
    )


def _checkpoint_from(v: object) -> LeaseCheckpoint:
    a = _array(v, "checkpoint", 3)
    return LeaseCheckpoint(
        _i64(a[0], "checkpoint id"), _i64(a[1], "remaining_ms"), _bool(a[2], "renewed")
    )


def _body_from(v: object) -> Body:
    a = _array(v, "body")
    if not a:
        raise _Invalid("body: empty array")
    tag = _tag(a[0], "body")
    match tag:
        case 0 | 1 | 2 | 3:
            return _op_from(a, 0)
        case 4:
            _array(a, "compact", 3)
            return CompactRequest(_i64(a[1], "compact revision"), _bool(a[2], "physical"))
        case 5:
            _array(a, "lease grant", 3)
            return LeaseGrantRequest(_i64(a[1], "ttl"), _i64(a[2], "lease id"))
        case 6:
            _array(a, "lease revoke", 2)
            return LeaseRevokeRequest(_i64(a[1], "lease id"))
        case 7:
            _array(a, "lease checkpoint", 2)
            return LeaseCheckpointRequest(
                [_checkpoint_from(cp) for cp in _array(a[1], "checkpoints")]
            )
        case 8:
            _array(a, "member add", 4)
            return MemberAddRequest(
                _u64(a[1], "member id"),
                _strs(_array(a[2], "peer_urls"), "peer_urls"),
                _bool(a[3], "is_learner"),
            )
        case 9:
            _array(a, "member remove", 2)
            return MemberRemoveRequest(_u64(a[1], "member id"))
        case 10:
            _array(a, "member update", 3)
            return MemberUpdateRequest(
                _u64(a[1], "member id"), _strs(_array(a[2], "peer_urls"), "peer_urls")
            )
        case 11:
            _array(a, "member promote", 2)
            return MemberPromoteRequest(_u64(a[1], "member id"))
        case 12:
            _array(a, "alarm", 4)
            return AlarmRequest(
                _enum(AlarmAction, a[1], "alarm action"),
                _u64(a[2], "alarm member id"),
                _enum(AlarmType, a[3], "alarm type"),
            )
        case _:
            raise _Invalid(f"body: unknown type tag {tag!r:.20}")


# -- responses ------------------------------------------------------------------------------------


def _kv_to(kv: object) -> _Array:
    if type(kv) is not KeyValue:
        raise _Invalid(f"kv: expected a KeyValue, got {type(kv).__name__}")
    return [
        _bytes(kv.key, "kv key"),
        _i64(kv.create_revision, "create_revision"),
        _i64(kv.mod_revision, "mod_revision"),
        _i64(kv.version, "version"),
        _bytes(kv.value, "kv value"),
        _i64(kv.lease, "kv lease"),
    ]


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


def _member_to(m: object) -> _Array:
    if type(m) is not MemberInfo:
        raise _Invalid(f"member: expected a MemberInfo, got {type(m).__name__}")
    return [
        _u64(m.id, "member id"),
        _str(m.name, "member name"),
        _strs(m.peer_urls, "peer_urls"),
        _strs(m.client_urls, "client_urls"),
        _bool(m.is_learner, "is_learner"),
    ]


def _member_from(v: object) -> MemberInfo:
    a = _array(v, "member", 5)
    return MemberInfo(
        _u64(a[0], "member id"),
        _str(a[1], "member name"),
        tuple(_strs(_array(a[2], "peer_urls"), "peer_urls")),
        tuple(_strs(_array(a[3], "client_urls"), "client_urls")),
        _bool(a[4], "is_learner"),
    )


def _alarm_member_to(m: object) -> _Array:
    if type(m) is not AlarmMember:
        raise _Invalid(f"alarm: expected an AlarmMember, got {type(m).__name__}")
    return [_u64(m.member_id, "alarm member id"), int(_enum(AlarmType, m.alarm, "alarm type"))]


def _alarm_member_from(v: object) -> AlarmMember:
    a = _array(v, "alarm", 2)
    return AlarmMember(_u64(a[0], "alarm member id"), _enum(AlarmType, a[1], "alarm type"))


def _op_result_to(r: object, depth: int) -> _Array:
    match r:
        case RangeResponse():
            return [
                1,
                _i64(r.revision, "revision"),
                [_kv_to(kv) for kv in _seq(r.kvs, "kvs")],
                _bool(r.more, "more"),
                _i64(r.count, "count"),
            ]
        case PutResponse():
            prev = None if r.prev_kv is None else _kv_to(r.prev_kv)
            return [2, _i64(r.revision, "revision"), prev]
        case DeleteRangeResponse():
            return [
                3,
                _i64(r.revision, "revision"),
                _i64(r.deleted, "deleted"),
                [_kv_to(kv) for kv in _seq(r.prev_kvs, "prev_kvs")],
            ]
        case TxnResponse():
            _depth(depth + 1)
            return [
                4,
                _i64(r.revision, "revision"),
                _bool(r.succeeded, "succeeded"),
                [_op_result_to(x, depth + 1) for x in _seq(r.responses, "responses")],
            ]
        case _:
            raise _Invalid(
                f"txn response: not a range/put/delete-range/txn result: {type(r).__name__}"
            )


def _op_result_from(v: object, depth: int) -> ResponseOp:
    a = _array(v, "result")
    if not a:
        raise _Invalid("result: empty array")
    match _tag(a[0], "result"):
        case 1:
            _array(a, "range result", 5)
            return RangeResponse(
                _i64(a[1], "revision"),
                tuple(_kv_from(kv) for kv in _array(a[2], "kvs")),
                _bool(a[3], "more"),
                _i64(a[4], "count"),
            )
        case 2:
            _array(a, "put result", 3)
            return PutResponse(_i64(a[1], "revision"), None if a[2] is None else _kv_from(a[2]))
        case 3:
            _array(a, "delete-range result", 4)
            return DeleteRangeResponse(
                _i64(a[1], "revision"),
                _i64(a[2], "deleted"),
                tuple(_kv_from(kv) for kv in _array(a[3], "prev_kvs")),
            )
        case 4:
            _depth(depth + 1)
            _array(a, "txn result", 4)
            return TxnResponse(
                _i64(a[1], "revision"),
                _bool(a[2], "succeeded"),
                tuple(_op_result_from(x, depth + 1) for x in _array(a[3], "responses")),
            )
        case _:
            raise _Invalid(f"txn response: unknown result tag {a[0]!r:.20}")


def _message(v: object) -> str:
    text = _str(v, "error message")
    if len(text) > MAX_ERROR_MESSAGE:
        raise _Invalid(f"error message: longer than {MAX_ERROR_MESSAGE} characters")
    return text


def _response_to(r: object) -> _Array:
    match r:
        case None:
            return [0]
        case RangeResponse() | PutResponse() | DeleteRangeResponse() | TxnResponse():
            return _op_result_to(r, 0)
        case CompactResponse():
            return [5, _i64(r.revision, "revision")]
        case LeaseGrantResponse():
            return [6, _i64(r.id, "lease id"), _i64(r.ttl, "ttl"), _i64(r.revision, "revision")]
        case LeaseRevokeResponse():
            return [7, _i64(r.revision, "revision")]
        case MemberAddResponse():
            members = [_member_to(m) for m in _seq(r.members, "members")]
            return [8, _member_to(r.member), members]
        case MemberRemoveResponse() | MemberUpdateResponse() | MemberPromoteResponse():
            return [_MEMBER_TAGS[type(r)], [_member_to(m) for m in _seq(r.members, "members")]]
        case AlarmResponse():
            return [12, [_alarm_member_to(m) for m in _seq(r.alarms, "alarms")]]
        case ErrorResult():
            return [13, int(_enum(GrpcCode, r.code, "error code")), _message(r.message)]
        case _:
            raise _Invalid(f"response: not a result type: {type(r).__name__}")


_MEMBER_TAGS: Final[dict[type, int]] = {
    MemberRemoveResponse: 9,
    MemberUpdateResponse: 10,
    MemberPromoteResponse: 11,
}


def _response_from(v: object) -> Response:
    a = _array(v, "response")
    if not a:
        raise _Invalid("response: empty array")
    tag = _tag(a[0], "response")
    match tag:
        case 0:
            _array(a, "empty result", 1)
            return None
        case 1 | 2 | 3 | 4:
            return _op_result_from(a, 0)
        case 5:
            _array(a, "compact result", 2)
            return CompactResponse(_i64(a[1], "revision"))
        case 6:
            _array(a, "lease grant result", 4)
            return LeaseGrantResponse(
                _i64(a[1], "lease id"), _i64(a[2], "ttl"), _i64(a[3], "revision")
            )
        case 7:
            _array(a, "lease revoke result", 2)
            return LeaseRevokeResponse(_i64(a[1], "revision"))
        case 8:
            _array(a, "member add result", 3)
            return MemberAddResponse(
                _member_from(a[1]), [_member_from(m) for m in _array(a[2], "members")]
            )
        case 9 | 10 | 11:
            _array(a, "member result", 2)
            members = [_member_from(m) for m in _array(a[1], "members")]
            if tag == 9:
                return MemberRemoveResponse(members)
            if tag == 10:
                return MemberUpdateResponse(members)
            return MemberPromoteResponse(members)
        case 12:
            _array(a, "alarm result", 2)
            return AlarmResponse([_alarm_member_from(m) for m in _array(a[1], "alarms")])
        case 13:
            _array(a, "error", 3)
            return ErrorResult(_enum(GrpcCode, a[1], "error code"), _message(a[2]))
        case _:
            raise _Invalid(f"response: unknown type tag {tag!r:.20}")


# -- the public codec -----------------------------------------------------------------------------


def _loads(
    data: object,
    what: str,
    versions: tuple[int, ...] = (FORMAT_VERSION,),
    max_depth: int = _MAX_CBOR_DEPTH,
) -> list[object]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RequestDecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    buf = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(buf, max_depth=max_depth).decode()
    except Exception as exc:  # cbor2 raises many exception types on hostile input
        raise RequestDecodeError(f"{what}: malformed CBOR: {exc}") from exc
    if buf.tell() != len(buf.getbuffer()):
        raise RequestDecodeError(f"{what}: {len(buf.getbuffer()) - buf.tell()} trailing bytes")
    if type(obj) is not list or not obj:
        raise RequestDecodeError(f"{what}: expected a non-empty array")
    version = obj[0]
    if type(version) is not int or version not in versions:
        raise RequestDecodeError(f"{what}: unsupported format version {version!r:.20}")
    return obj


def encode_request(request: Request) -> bytes:
    """Encode a request for a Raft log entry (or the wire).

    Raises:
        ValueError: a field is of the wrong type or out of range, or txns nest too deeply;
            exactly what :func:`decode_request` would reject.
    """
    if type(request) is not Request:
        raise ValueError(f"expected a Request, got {type(request).__name__}")
    try:
        cid, rid = _ids(request.client_id, request.request_id)
        return cbor2.dumps([FORMAT_VERSION, cid, rid, _body_to(request.body)])
    except _Invalid as e:
        raise ValueError(f"cannot encode request: {e}") from None


def decode_request(data: bytes | bytearray | memoryview) -> Request:
    """Decode what :func:`encode_request` produced.

    Raises:
        RequestDecodeError: whatever is wrong with ``data``; no other exception.
    """
    top = _loads(data, "request")
    try:
        return _request_from(top)
    except _Invalid as e:
        raise RequestDecodeError(f"request: {e}") from None


def _request_from(v: object) -> Request:
    a = _array(v, "request", 4)
    if type(a[0]) is not int or a[0] != FORMAT_VERSION:
        raise _Invalid(f"request: unsupported format version {a[0]!r:.20}")
    cid, rid = _ids(a[1], a[2])
    return Request(cid, rid, _body_from(a[3]))


def encode_batch(encoded: Sequence[bytes]) -> bytes:
    """One log entry carrying several requests: ``encoded`` spliced in, not re-encoded.

    Args:
        encoded: at least one request, each exactly as :func:`encode_request` returned it
            (trusted: only its first two bytes are checked, so the proposer encodes and checks
            each request once).

    Raises:
        ValueError: ``encoded`` is empty or an item does not start as an encoded request.
    """
    if not encoded:
        raise ValueError("cannot encode an empty batch")
    for item in encoded:
        if type(item) is not bytes or not item.startswith(_REQUEST_PREFIX):
            raise ValueError("cannot encode batch: an item is not an encoded request")
    return _BATCH_PREFIX + _array_head(len(encoded)) + b"".join(encoded)


def _array_head(n: int) -> bytes:
    """The CBOR head of an array of ``n`` items (major type 4)."""
    if n < 24:
        return bytes([0x80 | n])
    if n < 0x100:
        return bytes([0x98, n])
    if n < 0x10000:
        return b"\x99" + n.to_bytes(2, "big")
    return b"\x9a" + n.to_bytes(4, "big")


def decode_entry(data: bytes | bytearray | memoryview) -> Request | RequestBatch:
    """Decode a log entry's data: a request (:func:`encode_request`) or a batch of them.

    Raises:
        RequestDecodeError: whatever is wrong with ``data`` (one bad request in a batch
            refuses the whole entry); no other exception.
    """
    top = _loads(data, "entry", (FORMAT_VERSION, BATCH_VERSION), _MAX_ENTRY_DEPTH)
    try:
        if top[0] == FORMAT_VERSION:
            return _request_from(top)
        _array(top, "batch", 2)
        items = _array(top[1], "batch requests")
        if not items:
            raise _Invalid("batch: no requests")
        return RequestBatch(tuple(_request_from(item) for item in items))
    except _Invalid as e:
        raise RequestDecodeError(f"entry: {e}") from None


def response_to_array(response: Response) -> list[object]:
    """The unversioned array form of a response, for embedding in larger CBOR structures.

    Raises:
        ValueError: as :func:`encode_response`.
    """
    try:
        return _response_to(response)
    except _Invalid as e:
        raise ValueError(f"cannot encode response: {e}") from None


def response_from_array(array: object) -> Response:
    """Rebuild a response from :func:`response_to_array`'s form.

    Raises:
        RequestDecodeError: ``array`` is not a well-formed response.
    """
    try:
        return _response_from(array)
    except _Invalid as e:
        raise RequestDecodeError(f"response: {e}") from None


def encode_response(response: Response) -> bytes:
    """Encode a result or an :class:`ErrorResult` for a client.

    Raises:
        ValueError: a field is of the wrong type or out of range, an error message is longer
            than :data:`MAX_ERROR_MESSAGE`, or txn results nest too deeply; exactly what
            :func:`decode_response` would reject.
    """
    return cbor2.dumps([FORMAT_VERSION, response_to_array(response)])


def decode_response(data: bytes | bytearray | memoryview) -> Response:
    """Decode what :func:`encode_response` produced.

    Raises:
        RequestDecodeError: whatever is wrong with ``data``; no other exception.
    """
    top = _loads(data, "response")
    if len(top) != 2:
        raise RequestDecodeError(f"response: expected 2 items, got {len(top)}")
    return response_from_array(top[1])


# -- error classes by code and text ---------------------------------------------------------------

_registry: dict[tuple[int, str], type[EtcdError]] = {}


def _scan_error_classes() -> None:
    """Index every EtcdError subclass defined so far that sets its own message (base first)."""
    found: dict[tuple[int, str], type[EtcdError]] = {}
    queue: list[type[EtcdError]] = [EtcdError]
    while queue:
        cls = queue.pop(0)
        if issubclass(cls, UnknownEtcdError):
            continue
        if cls is EtcdError or "message" in vars(cls):
            found.setdefault((int(cls.code), cls.message), cls)
        queue.extend(cls.__subclasses__())
    _registry.clear()
    _registry.update(found)


def _error_class(code: GrpcCode, message: str) -> type[EtcdError]:
    key = (int(code), message)
    cls = _registry.get(key)
    if cls is None:
        _scan_error_classes()  # a module defining more errors may have been imported since
        cls = _registry.get(key)
    return cls if cls is not None else _unknown_error_class(code, message)


@functools.lru_cache(maxsize=64)
def _unknown_error_class(code: GrpcCode, message: str) -> type[EtcdError]:
    namespace: dict[str, object] = {
        "message": message,
        "code": code,
        "__doc__": UnknownEtcdError.__doc__,
        "__module__": __name__,
    }
    return cast("type[EtcdError]", type("UnknownEtcdError", (UnknownEtcdError,), namespace))
