"""Translation between etcd's protobuf messages and kvapp's request and response types.

Requests: ``*_from_pb`` functions build kvapp's :mod:`kvapp.mvcc.types` / :mod:`kvapp.lease`
requests from etcd's messages and raise the :class:`~kvapp.errors.EtcdError` etcd answers for
input it refuses before proposing (an empty key, an empty txn operation). Responses:
``*_to_pb`` functions build etcd's messages, with a :class:`~kvapp.service.ResponseHeader`
given by the caller (the servicer decides which revision it carries, as etcd's API layer does).

Inner responses of a txn carry a header holding only their revision, as etcd's apply layer
makes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, TypeVar

import grpc

from kvapp.errors import EmptyKeyError, EtcdError, GrpcCode, KeyNotFoundError
from kvapp.etcdpb import kv_pb2, rpc_pb2
from kvapp.mvcc.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
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
from kvapp.service import MemberInfo, ResponseHeader
from kvapp.watch import WatchFilter, WatchResponse

__all__ = [
    "GRPC_URL_PREFIX",
    "InvalidRequestError",
    "compare_from_pb",
    "delete_range_from_pb",
    "delete_range_response_to_pb",
    "event_to_pb",
    "grpc_status",
    "grpc_urls_of",
    "header_to_pb",
    "kv_to_pb",
    "member_to_pb",
    "publish_grpc_urls",
    "put_from_pb",
    "put_response_to_pb",
    "range_from_pb",
    "range_response_to_pb",
    "request_op_from_pb",
    "response_op_to_pb",
    "txn_from_pb",
    "txn_response_to_pb",
    "watch_filters_from_pb",
    "watch_response_to_pb",
]

GRPC_URL_PREFIX: Final = "grpc+"
"""Marks a member's etcd-API (gRPC) URLs among the client URLs it publishes.

A member publishes its native-protocol URLs as they are and its gRPC URLs with this prefix
(``grpc+http://127.0.0.1:2479``); the Cluster service shows etcd clients only the gRPC ones,
prefix removed, so ``etcdctl member list`` and ``--cluster`` commands get URLs they can use.
"""

_STATUS: Final[dict[int, grpc.StatusCode]] = {code.value[0]: code for code in grpc.StatusCode}


class InvalidRequestError(EtcdError):
    """A request kvapp cannot represent (an unknown enum value, a malformed operand)."""

    message = "kvapp: invalid request"
    code = GrpcCode.INVALID_ARGUMENT


def grpc_status(code: GrpcCode) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` with ``code``'s number."""
    return _STATUS[int(code)]


def publish_grpc_urls(urls: tuple[str, ...]) -> tuple[str, ...]:
    """The form in which a member publishes its gRPC URLs among its client URLs."""
    return tuple(GRPC_URL_PREFIX + u for u in urls)


def grpc_urls_of(member: MemberInfo) -> tuple[str, ...]:
    """A member's published gRPC URLs, prefix removed (empty if it publishes none)."""
    n = len(GRPC_URL_PREFIX)
    return tuple(u[n:] for u in member.client_urls if u.startswith(GRPC_URL_PREFIX))


# -- requests ----------------------------------------------------------------------------------


_E = TypeVar("_E", SortOrder, SortTarget, CompareResult, CompareTarget)


def _enum(cls: type[_E], value: int, what: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise InvalidRequestError(f"unknown {what} {value}") from None


def range_from_pb(r: rpc_pb2.RangeRequest) -> RangeRequest:
    """Translate etcd's RangeRequest; an empty key is refused as etcd refuses it."""
    if not r.key:
        raise EmptyKeyError
    return RangeRequest(
        r.key,
        r.range_end,
        r.limit,
        r.revision,
        _enum(SortOrder, r.sort_order, "sort order"),
        _enum(SortTarget, r.sort_target, "sort target"),
        r.serializable,
        r.keys_only,
        r.count_only,
        r.min_mod_revision,
        r.max_mod_revision,
        r.min_create_revision,
        r.max_create_revision,
    )


def put_from_pb(r: rpc_pb2.PutRequest) -> PutRequest:
    """Translate etcd's PutRequest (the member checks the key and the ignore flags)."""
    return PutRequest(r.key, r.value, r.lease, r.prev_kv, r.ignore_value, r.ignore_lease)


def delete_range_from_pb(r: rpc_pb2.DeleteRangeRequest) -> DeleteRangeRequest:
    """Translate etcd's DeleteRangeRequest."""
    return DeleteRangeRequest(r.key, r.range_end, r.prev_kv)


_OPERAND_FIELD: Final = {
    CompareTarget.VERSION: "version",
    CompareTarget.CREATE: "create_revision",
    CompareTarget.MOD: "mod_revision",
    CompareTarget.VALUE: "value",
    CompareTarget.LEASE: "lease",
}


def compare_from_pb(c: rpc_pb2.Compare) -> Compare:
    """Translate etcd's Compare.

    As in etcd, an operand given in a field other than the target's counts as unset (0, or an
    empty value).
    """
    target = _enum(CompareTarget, c.target, "compare target")
    result = _enum(CompareResult, c.result, "compare result")
    field = _OPERAND_FIELD[target]
    operand: int | bytes
    if target is CompareTarget.VALUE:
        operand = c.value if c.WhichOneof("target_union") == field else b""
    else:
        operand = getattr(c, field) if c.WhichOneof("target_union") == field else 0
    return Compare(c.key, target, result, operand, c.range_end)


def request_op_from_pb(op: rpc_pb2.RequestOp) -> RequestOp:
    """One operation of a txn; an operation with nothing set is etcd's "key not found"."""
    match op.WhichOneof("request"):
        case "request_range":
            return range_from_pb(op.request_range)
        case "request_put":
            return put_from_pb(op.request_put)
        case "request_delete_range":
            return delete_range_from_pb(op.request_delete_range)
        case "request_txn":
            return txn_from_pb(op.request_txn)
        case _:
            raise KeyNotFoundError("empty RequestOp")


def txn_from_pb(r: rpc_pb2.TxnRequest) -> TxnRequest:
    """Translate etcd's TxnRequest, nested txns included."""
    return TxnRequest(
        [compare_from_pb(c) for c in r.compare],
        [request_op_from_pb(op) for op in r.success],
        [request_op_from_pb(op) for op in r.failure],
    )


def watch_filters_from_pb(filters: Iterable[int]) -> tuple[WatchFilter, ...]:
    """A watch create request's filters; unknown ones are ignored, as etcd ignores them."""
    return tuple(WatchFilter(f) for f in filters if f in _FILTERS)


_FILTERS: Final = frozenset(int(f) for f in WatchFilter)


# -- responses ---------------------------------------------------------------------------------


def header_to_pb(h: ResponseHeader) -> rpc_pb2.ResponseHeader:
    """Translate etcd's ResponseHeader."""
    return rpc_pb2.ResponseHeader(
        cluster_id=h.cluster_id, member_id=h.member_id, revision=h.revision, raft_term=h.raft_term
    )


def kv_to_pb(kv: KeyValue) -> kv_pb2.KeyValue:
    """Translate etcd's mvccpb.KeyValue."""
    return kv_pb2.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=kv.value,
        lease=kv.lease,
    )


def event_to_pb(e: Event) -> kv_pb2.Event:
    """Translate etcd's mvccpb.Event."""
    if e.prev_kv is None:
        return kv_pb2.Event(type=int(e.type), kv=kv_to_pb(e.kv))  # type: ignore[arg-type]
    return kv_pb2.Event(
        type=int(e.type),  # type: ignore[arg-type]
        kv=kv_to_pb(e.kv),
        prev_kv=kv_to_pb(e.prev_kv),
    )


def range_response_to_pb(r: RangeResponse, header: rpc_pb2.ResponseHeader) -> rpc_pb2.RangeResponse:
    """Translate etcd's RangeResponse."""
    return rpc_pb2.RangeResponse(
        header=header, kvs=[kv_to_pb(kv) for kv in r.kvs], more=r.more, count=r.count
    )


def put_response_to_pb(r: PutResponse, header: rpc_pb2.ResponseHeader) -> rpc_pb2.PutResponse:
    """Translate etcd's PutResponse."""
    if r.prev_kv is None:
        return rpc_pb2.PutResponse(header=header)
    return rpc_pb2.PutResponse(header=header, prev_kv=kv_to_pb(r.prev_kv))


def delete_range_response_to_pb(
    r: DeleteRangeResponse, header: rpc_pb2.ResponseHeader
) -> rpc_pb2.DeleteRangeResponse:
    """Translate etcd's DeleteRangeResponse."""
    return rpc_pb2.DeleteRangeResponse(
        header=header, deleted=r.deleted, prev_kvs=[kv_to_pb(kv) for kv in r.prev_kvs]
    )


def txn_response_to_pb(r: TxnResponse, header: rpc_pb2.ResponseHeader) -> rpc_pb2.TxnResponse:
    """Translate etcd's TxnResponse; inner responses carry headers with their revision only."""
    return rpc_pb2.TxnResponse(
        header=header,
        succeeded=r.succeeded,
        responses=[response_op_to_pb(op) for op in r.responses],
    )


def response_op_to_pb(r: ResponseOp) -> rpc_pb2.ResponseOp:
    """One response inside a txn response."""
    header = rpc_pb2.ResponseHeader(revision=r.revision)
    match r:
        case RangeResponse():
            return rpc_pb2.ResponseOp(response_range=range_response_to_pb(r, header))
        case PutResponse():
            return rpc_pb2.ResponseOp(response_put=put_response_to_pb(r, header))
        case DeleteRangeResponse():
            return rpc_pb2.ResponseOp(response_delete_range=delete_range_response_to_pb(r, header))
        case TxnResponse():
            return rpc_pb2.ResponseOp(response_txn=txn_response_to_pb(r, header))


def member_to_pb(m: MemberInfo) -> rpc_pb2.Member:
    """Make etcd's Member; its client URLs are the gRPC URLs it publishes (GRPC_URL_PREFIX)."""
    return rpc_pb2.Member(
        ID=m.id,
        name=m.name,
        peerURLs=list(m.peer_urls),
        clientURLs=list(grpc_urls_of(m)),
        isLearner=m.is_learner,
    )


def watch_response_to_pb(r: WatchResponse, header: rpc_pb2.ResponseHeader) -> rpc_pb2.WatchResponse:
    """Translate etcd's WatchResponse (not fragmented; see the Watch servicer)."""
    return rpc_pb2.WatchResponse(
        header=header,
        watch_id=r.watch_id,
        created=r.created,
        canceled=r.canceled,
        compact_revision=r.compact_revision,
        cancel_reason=r.cancel_reason,
        events=[event_to_pb(e) for e in r.events],
    )
