"""Translation between etcd's protobuf messages and kvapp's request and response types.

Both directions, for the two sides of etcd's v3 gRPC API: the server
(:mod:`kvapp.server.etcd`) reads requests with the ``*_from_pb`` request functions and writes
responses with the ``*_to_pb`` response functions; the client's etcd transport
(:mod:`kvapp.client.etcd`) does the opposite. Only :mod:`kvapp.etcdpb`'s messages and kvapp's
plain types are involved (no grpc), so both sides share one mapping of every field.

Requests read from etcd's messages raise the :class:`~kvapp.errors.EtcdError` etcd answers for
input it refuses before proposing (an empty key, an empty txn operation). Responses are built
with a :class:`~kvapp.service.ResponseHeader` given by the caller (the servicer decides which
revision it carries, as etcd's API layer does); responses read from etcd's messages take their
``revision`` from the message's header. Inner responses of a txn carry a header holding only
their revision, as etcd's apply layer makes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, TypeVar

from kvapp.errors import EmptyKeyError, EtcdError, GrpcCode, KeyNotFoundError
from kvapp.etcdpb import kv_pb2, rpc_pb2
from kvapp.mvcc.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    EventType,
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
    "InvalidRequestError",
    "compare_from_pb",
    "compare_to_pb",
    "delete_range_from_pb",
    "delete_range_response_from_pb",
    "delete_range_response_to_pb",
    "delete_range_to_pb",
    "event_from_pb",
    "event_to_pb",
    "header_from_pb",
    "header_to_pb",
    "kv_from_pb",
    "kv_to_pb",
    "member_from_pb",
    "put_from_pb",
    "put_response_from_pb",
    "put_response_to_pb",
    "put_to_pb",
    "range_from_pb",
    "range_response_from_pb",
    "range_response_to_pb",
    "range_to_pb",
    "request_op_from_pb",
    "request_op_to_pb",
    "response_op_from_pb",
    "response_op_to_pb",
    "txn_from_pb",
    "txn_response_from_pb",
    "txn_response_to_pb",
    "txn_to_pb",
    "watch_filters_from_pb",
    "watch_response_from_pb",
    "watch_response_to_pb",
]


class InvalidRequestError(EtcdError):
    """A message kvapp cannot represent (an unknown enum value, a malformed operand)."""

    message = "kvapp: invalid request"
    code = GrpcCode.INVALID_ARGUMENT


_E = TypeVar("_E", SortTarget, EventType)


def _enum(cls: type[_E], value: int, what: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise InvalidRequestError(f"unknown {what} {value}") from None


_OPERAND_FIELD: Final = {
    CompareTarget.VERSION: "version",
    CompareTarget.CREATE: "create_revision",
    CompareTarget.MOD: "mod_revision",
    CompareTarget.VALUE: "value",
    CompareTarget.LEASE: "lease",
}

_FILTERS: Final = frozenset(int(f) for f in WatchFilter)
_SORT_ORDERS: Final = frozenset(int(o) for o in SortOrder)
_COMPARE_TARGETS: Final = frozenset(int(t) for t in CompareTarget)
_COMPARE_RESULTS: Final = frozenset(int(r) for r in CompareResult)

# (result, operand) of a version compare that decides as etcd does an unknown target or result
_ALWAYS: Final = (CompareResult.GREATER, -1)
_NEVER: Final = (CompareResult.LESS, 0)
_ANY_KEY_EXISTS: Final = (CompareResult.GREATER, 0)


# -- requests: etcd's messages to kvapp's types (the server side) ------------------------------


def range_from_pb(r: rpc_pb2.RangeRequest) -> RangeRequest:
    """Translate etcd's RangeRequest; an empty key is refused as etcd refuses it.

    An unknown ``sort_order`` is read as etcd 3.4 applies it (``applierV3backend.Range``): it
    is not NONE, so every key is fetched and counted, but it is neither ASCEND nor DESCEND, so
    nothing is sorted and the keys come in key order, cut to ``limit`` with ``more`` set,
    whatever the sort target (an unknown one included). That is exactly ASCEND by KEY. An
    unknown ``sort_target`` with a known order makes etcd 3.4 sort with no sorter and panic,
    so kvapp refuses it with :class:`InvalidRequestError`.
    """
    if not r.key:
        raise EmptyKeyError
    if r.sort_order in _SORT_ORDERS:
        order = SortOrder(r.sort_order)
        target = _enum(SortTarget, r.sort_target, "sort target")
    else:
        order, target = SortOrder.ASCEND, SortTarget.KEY
    return RangeRequest(
        r.key,
        r.range_end,
        r.limit,
        r.revision,
        order,
        target,
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


def compare_from_pb(c: rpc_pb2.Compare) -> Compare:
    """Translate etcd's Compare.

    As in etcd, an operand given in a field other than the target's counts as unset (0, or an
    empty value).

    etcd 3.4 evaluates a compare with an unknown ``target`` or ``result`` rather than refusing
    it (``compareKV`` in ``etcdserver/apply.go``): an unknown target compares as equal, so the
    compare holds if the result is EQUAL or unknown and fails otherwise; an unknown result
    holds, except that a VALUE compare on a range with no key fails first (``applyCompare``).
    Each is translated into a known compare on the same keys that decides the same way: on
    version, which is at least 1 for every key that exists and 0 for a missing one.
    """
    known_target = c.target in _COMPARE_TARGETS
    known_result = c.result in _COMPARE_RESULTS
    if not (known_target and known_result):
        if known_target:
            decides = _ANY_KEY_EXISTS if c.target == rpc_pb2.Compare.VALUE else _ALWAYS
        elif not known_result or c.result == rpc_pb2.Compare.EQUAL:
            decides = _ALWAYS
        else:
            decides = _NEVER
        return Compare(c.key, CompareTarget.VERSION, *decides, c.range_end)
    target = CompareTarget(c.target)
    result = CompareResult(c.result)
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


# -- requests: kvapp's types to etcd's messages (the client side) ------------------------------


def range_to_pb(r: RangeRequest) -> rpc_pb2.RangeRequest:
    """Make etcd's RangeRequest."""
    return rpc_pb2.RangeRequest(
        key=r.key,
        range_end=r.range_end,
        limit=r.limit,
        revision=r.revision,
        sort_order=int(r.sort_order),  # type: ignore[arg-type]
        sort_target=int(r.sort_target),  # type: ignore[arg-type]
        serializable=r.serializable,
        keys_only=r.keys_only,
        count_only=r.count_only,
        min_mod_revision=r.min_mod_revision,
        max_mod_revision=r.max_mod_revision,
        min_create_revision=r.min_create_revision,
        max_create_revision=r.max_create_revision,
    )


def put_to_pb(r: PutRequest) -> rpc_pb2.PutRequest:
    """Make etcd's PutRequest."""
    return rpc_pb2.PutRequest(
        key=r.key,
        value=r.value,
        lease=r.lease,
        prev_kv=r.prev_kv,
        ignore_value=r.ignore_value,
        ignore_lease=r.ignore_lease,
    )


def delete_range_to_pb(r: DeleteRangeRequest) -> rpc_pb2.DeleteRangeRequest:
    """Make etcd's DeleteRangeRequest."""
    return rpc_pb2.DeleteRangeRequest(key=r.key, range_end=r.range_end, prev_kv=r.prev_kv)


def compare_to_pb(c: Compare) -> rpc_pb2.Compare:
    """Make etcd's Compare, with the operand in the target's field."""
    pb = rpc_pb2.Compare(
        result=int(c.result),  # type: ignore[arg-type]
        target=int(c.target),  # type: ignore[arg-type]
        key=c.key,
        range_end=c.range_end,
    )
    if isinstance(c.operand, bytes):  # Compare checks it is for a VALUE target
        pb.value = c.operand
    else:
        setattr(pb, _OPERAND_FIELD[c.target], c.operand)
    return pb


def request_op_to_pb(op: RequestOp) -> rpc_pb2.RequestOp:
    """One operation of a txn."""
    match op:
        case RangeRequest():
            return rpc_pb2.RequestOp(request_range=range_to_pb(op))
        case PutRequest():
            return rpc_pb2.RequestOp(request_put=put_to_pb(op))
        case DeleteRangeRequest():
            return rpc_pb2.RequestOp(request_delete_range=delete_range_to_pb(op))
        case TxnRequest():
            return rpc_pb2.RequestOp(request_txn=txn_to_pb(op))


def txn_to_pb(r: TxnRequest) -> rpc_pb2.TxnRequest:
    """Make etcd's TxnRequest, nested txns included."""
    return rpc_pb2.TxnRequest(
        compare=[compare_to_pb(c) for c in r.compare],
        success=[request_op_to_pb(op) for op in r.success],
        failure=[request_op_to_pb(op) for op in r.failure],
    )


# -- responses: kvapp's types to etcd's messages (the server side) -----------------------------


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


# -- responses: etcd's messages to kvapp's types (the client side) -----------------------------


def header_from_pb(h: rpc_pb2.ResponseHeader) -> ResponseHeader:
    """Read etcd's ResponseHeader."""
    return ResponseHeader(h.cluster_id, h.member_id, h.revision, h.raft_term)


def kv_from_pb(kv: kv_pb2.KeyValue) -> KeyValue:
    """Read etcd's mvccpb.KeyValue."""
    return KeyValue(kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease)


def event_from_pb(e: kv_pb2.Event) -> Event:
    """Read etcd's mvccpb.Event (``prev_kv`` None when the message has none)."""
    prev = kv_from_pb(e.prev_kv) if e.HasField("prev_kv") else None
    return Event(_enum(EventType, e.type, "event type"), kv_from_pb(e.kv), prev)


def range_response_from_pb(r: rpc_pb2.RangeResponse) -> RangeResponse:
    """Read etcd's RangeResponse; ``revision`` is its header's."""
    return RangeResponse(r.header.revision, tuple(kv_from_pb(kv) for kv in r.kvs), r.more, r.count)


def put_response_from_pb(r: rpc_pb2.PutResponse) -> PutResponse:
    """Read etcd's PutResponse."""
    prev = kv_from_pb(r.prev_kv) if r.HasField("prev_kv") else None
    return PutResponse(r.header.revision, prev)


def delete_range_response_from_pb(r: rpc_pb2.DeleteRangeResponse) -> DeleteRangeResponse:
    """Read etcd's DeleteRangeResponse."""
    return DeleteRangeResponse(
        r.header.revision, r.deleted, tuple(kv_from_pb(kv) for kv in r.prev_kvs)
    )


def txn_response_from_pb(r: rpc_pb2.TxnResponse) -> TxnResponse:
    """Read etcd's TxnResponse; each inner response's revision is its own header's."""
    return TxnResponse(
        r.header.revision, r.succeeded, tuple(response_op_from_pb(op) for op in r.responses)
    )


def response_op_from_pb(op: rpc_pb2.ResponseOp) -> ResponseOp:
    """One response inside a txn response.

    Raises:
        InvalidRequestError: the message holds no response.
    """
    match op.WhichOneof("response"):
        case "response_range":
            return range_response_from_pb(op.response_range)
        case "response_put":
            return put_response_from_pb(op.response_put)
        case "response_delete_range":
            return delete_range_response_from_pb(op.response_delete_range)
        case "response_txn":
            return txn_response_from_pb(op.response_txn)
        case _:
            raise InvalidRequestError("an empty ResponseOp")


def watch_response_from_pb(r: rpc_pb2.WatchResponse) -> WatchResponse:
    """Read etcd's WatchResponse (``fragment`` is not read: the client never asks for it)."""
    return WatchResponse(
        r.watch_id,
        r.header.revision,
        tuple(event_from_pb(e) for e in r.events),
        r.created,
        r.canceled,
        r.compact_revision,
        r.cancel_reason,
    )


def member_from_pb(m: rpc_pb2.Member) -> MemberInfo:
    """Read etcd's Member (its client URLs as the server lists them)."""
    return MemberInfo(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs), m.isLearner)
