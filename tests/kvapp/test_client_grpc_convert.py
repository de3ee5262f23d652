"""kvapp.etcdconv: the client's and the server's halves of the etcd message mapping agree.

Every request the client encodes (``*_to_pb``) is read back by the server's functions
(``*_from_pb``) as the same request, and every response the server encodes is read back by the
client's functions as the same response, for any values kvapp's types can hold.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvapp import etcdconv as conv
from kvapp.errors import EmptyKeyError
from kvapp.etcdpb import kv_pb2, rpc_pb2
from kvapp.mvcc.types import (
    Compare,
    CompareTarget,
    Event,
    EventType,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from kvapp.service import ResponseHeader
from kvapp.watch import WatchResponse
from tests.kvapp.test_requests import (
    I64,
    KEYS,
    compares,
    deletes,
    kvs,
    members,
    op_results,
    puts,
    ranges,
    txns,
)


def _empty_range_key(op: RequestOp) -> bool:
    if isinstance(op, RangeRequest):
        return not op.key
    if isinstance(op, TxnRequest):
        return any(_empty_range_key(o) for o in (*op.success, *op.failure))
    return False


@given(st.one_of(ranges, puts, deletes, txns))
def test_requests_round_trip_through_etcds_messages(request: Any) -> None:
    refused = _empty_range_key(request)
    if isinstance(request, RangeRequest):
        pb = rpc_pb2.RangeRequest.FromString(conv.range_to_pb(request).SerializeToString())
        if refused:
            with pytest.raises(EmptyKeyError):  # the server refuses it, as etcd does
                conv.range_from_pb(pb)
        else:
            assert conv.range_from_pb(pb) == request
        return
    op = rpc_pb2.RequestOp.FromString(conv.request_op_to_pb(request).SerializeToString())
    if refused:
        with pytest.raises(EmptyKeyError):
            conv.request_op_from_pb(op)
    else:
        assert conv.request_op_from_pb(op) == request


@given(compares)
def test_compares_round_trip_with_the_operand_in_the_targets_field(compare: Compare) -> None:
    pb = rpc_pb2.Compare.FromString(conv.compare_to_pb(compare).SerializeToString())
    fields = {CompareTarget.VALUE: "value", CompareTarget.VERSION: "version"}
    fields |= {CompareTarget.CREATE: "create_revision", CompareTarget.MOD: "mod_revision"}
    assert pb.WhichOneof("target_union") == fields.get(compare.target, "lease")
    assert conv.compare_from_pb(pb) == compare


@given(op_results)
def test_responses_round_trip_through_etcds_messages(response: Any) -> None:
    pb = rpc_pb2.ResponseOp.FromString(conv.response_op_to_pb(response).SerializeToString())
    assert conv.response_op_from_pb(pb) == response


events = st.builds(Event, st.sampled_from(EventType), kvs, st.none() | kvs)


@given(
    st.builds(
        WatchResponse,
        I64,
        I64,
        st.lists(events, max_size=3).map(tuple),
        st.booleans(),
        st.booleans(),
        I64,
        st.text(max_size=10),
    )
)
def test_watch_responses_round_trip(response: WatchResponse) -> None:
    header = conv.header_to_pb(ResponseHeader(1, 2, response.revision, 3))
    pb = rpc_pb2.WatchResponse.FromString(
        conv.watch_response_to_pb(response, header).SerializeToString()
    )
    assert conv.watch_response_from_pb(pb) == response
    assert conv.header_from_pb(pb.header) == ResponseHeader(1, 2, response.revision, 3)


@given(members)
def test_members_read_back_as_etcd_lists_them(member: Any) -> None:
    pb = rpc_pb2.Member(
        ID=member.id,
        name=member.name,
        peerURLs=list(member.peer_urls),
        clientURLs=list(member.client_urls),
        isLearner=member.is_learner,
    )
    assert conv.member_from_pb(pb) == member


def test_unknown_enum_values_and_empty_answers_are_refused() -> None:
    with pytest.raises(conv.InvalidRequestError):
        conv.event_from_pb(kv_pb2.Event(type=7, kv=kv_pb2.KeyValue(key=b"k")))  # type: ignore[arg-type]
    with pytest.raises(conv.InvalidRequestError):
        conv.response_op_from_pb(rpc_pb2.ResponseOp())


@given(KEYS)
def test_an_empty_range_key_is_refused_by_the_server_half(key: bytes) -> None:
    pb = rpc_pb2.RangeRequest.FromString(conv.range_to_pb(RangeRequest(key)).SerializeToString())
    if key:
        assert conv.range_from_pb(pb) == RangeRequest(key)
    else:
        with pytest.raises(EmptyKeyError):
            conv.range_from_pb(pb)
