"""kvapp.requests: the replicated request/response codec round-trips, and refuses bad input."""

from __future__ import annotations

from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvapp.errors import (
    EtcdError,
    GrpcCode,
    RequestDecodeError,
    RequestTooLargeError,
)
from kvapp.kvstate import KvState
from kvapp.lease import (
    LeaseCheckpoint,
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
)
from kvapp.mvcc import (
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
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from kvapp.requests import (
    FORMAT_VERSION,
    MAX_ERROR_MESSAGE,
    MAX_REQUEST_BYTES,
    MAX_TXN_DEPTH,
    AlarmAction,
    AlarmMember,
    AlarmRequest,
    AlarmResponse,
    AlarmType,
    ErrorResult,
    MemberAddRequest,
    MemberAddResponse,
    MemberPromoteRequest,
    MemberPromoteResponse,
    MemberRemoveRequest,
    MemberRemoveResponse,
    MemberUpdateRequest,
    MemberUpdateResponse,
    Request,
    RequestIdExpiredError,
    Response,
    UnknownEtcdError,
    check_request_size,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    response_from_array,
    response_to_array,
)
from kvapp.service import MemberInfo

I64 = st.integers(-(2**63), 2**63 - 1)
U64 = st.integers(0, 2**64 - 1)
KEYS = st.binary(max_size=6)
VALUES = st.binary(max_size=12)
URLS = st.lists(st.text(max_size=12), max_size=3).map(tuple)

ranges = st.builds(
    RangeRequest,
    KEYS,
    KEYS,
    I64,
    I64,
    st.sampled_from(SortOrder),
    st.sampled_from(SortTarget),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    I64,
    I64,
    I64,
    I64,
)
puts = st.builds(PutRequest, KEYS, VALUES, I64, st.booleans(), st.booleans(), st.booleans())
deletes = st.builds(DeleteRangeRequest, KEYS, KEYS, st.booleans())
compares = st.one_of(
    st.builds(
        Compare,
        KEYS,
        st.just(CompareTarget.VALUE),
        st.sampled_from(CompareResult),
        VALUES,
        KEYS,
    ),
    st.builds(
        Compare,
        KEYS,
        st.sampled_from([t for t in CompareTarget if t is not CompareTarget.VALUE]),
        st.sampled_from(CompareResult),
        I64,
        KEYS,
    ),
)
request_ops: st.SearchStrategy[Any] = st.deferred(lambda: st.one_of(ranges, puts, deletes, txns))
txns: st.SearchStrategy[TxnRequest] = st.builds(
    TxnRequest,
    st.lists(compares, max_size=3),
    st.lists(request_ops, max_size=3),
    st.lists(request_ops, max_size=3),
)
bodies = st.one_of(
    ranges,
    puts,
    deletes,
    txns,
    st.builds(CompactRequest, I64, st.booleans()),
    st.builds(LeaseGrantRequest, I64, I64),
    st.builds(LeaseRevokeRequest, I64),
    st.builds(
        LeaseCheckpointRequest,
        st.lists(st.builds(LeaseCheckpoint, I64, I64, st.booleans()), max_size=3),
    ),
    st.builds(MemberAddRequest, U64, URLS, st.booleans()),
    st.builds(MemberRemoveRequest, U64),
    st.builds(MemberUpdateRequest, U64, URLS),
    st.builds(MemberPromoteRequest, U64),
    st.builds(AlarmRequest, st.sampled_from(AlarmAction), U64, st.sampled_from(AlarmType)),
)
requests = st.one_of(
    st.builds(Request, st.just(0), U64, bodies),
    st.builds(Request, st.integers(1, 2**64 - 1), st.integers(1, 2**64 - 1), bodies),
)

kvs = st.builds(KeyValue, KEYS, I64, I64, I64, VALUES, I64)
members = st.builds(MemberInfo, U64, st.text(max_size=8), URLS, URLS, st.booleans())
member_lists = st.lists(members, max_size=3)
op_results: st.SearchStrategy[Any] = st.deferred(
    lambda: st.one_of(
        st.builds(RangeResponse, I64, st.lists(kvs, max_size=3).map(tuple), st.booleans(), I64),
        st.builds(PutResponse, I64, st.none() | kvs),
        st.builds(DeleteRangeResponse, I64, I64, st.lists(kvs, max_size=3).map(tuple)),
        st.builds(TxnResponse, I64, st.booleans(), st.lists(op_results, max_size=3).map(tuple)),
    )
)
responses: st.SearchStrategy[Response] = st.one_of(
    st.none(),
    op_results,
    st.builds(CompactResponse, I64),
    st.builds(LeaseGrantResponse, I64, I64, I64),
    st.builds(LeaseRevokeResponse, I64),
    st.builds(MemberAddResponse, members, member_lists),
    st.builds(MemberRemoveResponse, member_lists),
    st.builds(MemberUpdateResponse, member_lists),
    st.builds(MemberPromoteResponse, member_lists),
    st.builds(
        AlarmResponse,
        st.lists(st.builds(AlarmMember, U64, st.sampled_from(AlarmType)), max_size=3),
    ),
    st.builds(ErrorResult, st.sampled_from(GrpcCode), st.text(max_size=40)),
)

# Any CBOR data item cbor2 produces without tags: the raw material of wrongly shaped input.
cbor_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.binary(max_size=8)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


def _decodes_or_rejects(data: bytes) -> None:
    """Decoding bad bytes raises RequestDecodeError, or yields a request that round-trips."""
    try:
        decoded = decode_request(data)
    except RequestDecodeError:
        return
    assert isinstance(decoded, Request)
    assert decode_request(encode_request(decoded)) == decoded


def _response_decodes_or_rejects(data: bytes) -> None:
    try:
        decoded = decode_response(data)
    except RequestDecodeError:
        return
    assert decode_response(encode_response(decoded)) == decoded


def _nested_txn(depth: int) -> TxnRequest:
    txn = TxnRequest([], [PutRequest(b"leaf", b"v")])
    for level in range(depth - 1):
        txn = TxnRequest([], [txn, PutRequest(b"k%d" % level)])
    return txn


# -- round trips ---------------------------------------------------------------------------------


@given(requests)
def test_requests_round_trip_and_encode_canonically(request: Request) -> None:
    data = encode_request(request)
    decoded = decode_request(data)
    assert decoded == request
    assert encode_request(decoded) == data


@given(responses)
def test_responses_round_trip(response: Response) -> None:
    data = encode_response(response)
    assert decode_response(data) == response
    assert response_from_array(response_to_array(response)) == response


def test_the_field_order_is_the_format() -> None:
    """Pin the byte layout: a change here is a format change and needs a new version."""
    put = Request(7, 3, PutRequest(b"k", b"v", lease=5, prev_kv=True))
    assert encode_request(put) == cbor2.dumps([1, 7, 3, [1, b"k", b"v", 5, True, False, False]])
    txn = Request(
        0,
        0,
        TxnRequest(
            [Compare(b"a", CompareTarget.MOD, CompareResult.LESS, 9)],
            [RangeRequest(b"a", limit=2)],
            [DeleteRangeRequest(b"a", b"b")],
        ),
    )
    assert encode_request(txn) == cbor2.dumps(
        [
            1,
            0,
            0,
            [
                3,
                [[2, 2, b"a", b"", 9]],
                [[0, b"a", b"", 2, 0, 0, 0, False, False, False, 0, 0, 0, 0]],
                [[2, b"a", b"b", False]],
            ],
        ]
    )
    kv = KeyValue(b"k", 2, 3, 1, b"v", 0)
    assert encode_response(PutResponse(3, kv)) == cbor2.dumps([1, [2, 3, [b"k", 2, 3, 1, b"v", 0]]])
    assert encode_response(ErrorResult.from_exception(RequestTooLargeError())) == cbor2.dumps(
        [1, [13, 3, "etcdserver: request is too large"]]
    )
    # Keys and values are CBOR byte strings (major type 2), not text.
    assert cbor2.dumps(b"k")[0] >> 5 == 2


def test_txns_nest_up_to_the_limit_and_apply() -> None:
    deepest = Request(1, 1, _nested_txn(MAX_TXN_DEPTH))
    decoded = decode_request(encode_request(deepest))
    assert decoded == deepest
    state = KvState(lambda: 0.0, grace=1.0)
    result = state.apply(decoded.body)  # type: ignore[arg-type]
    assert isinstance(result, TxnResponse)
    assert state.store.get(b"leaf") is not None
    assert decode_response(encode_response(result)) == result


def test_txns_nested_too_deeply_are_refused_both_ways() -> None:
    too_deep = Request(1, 1, _nested_txn(MAX_TXN_DEPTH + 1))
    with pytest.raises(ValueError, match="deeper"):
        encode_request(too_deep)
    body: Any = [3, [], [[1, b"leaf", b"", 0, False, False, False]], []]
    for _ in range(MAX_TXN_DEPTH):
        body = [3, [], [body], []]
    with pytest.raises(RequestDecodeError, match="deeper"):
        decode_request(cbor2.dumps([1, 1, 1, body]))


# -- encode refuses what decode would reject -------------------------------------------------------


def _forced(instance: Any, **changes: Any) -> Any:
    """A copy of a frozen attrs instance with fields set past its own checks."""
    copy = attrs.evolve(instance)
    for name, value in changes.items():
        object.__setattr__(copy, name, value)
    return copy


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(Request(0, 0, PutRequest("k", b"v")), id="str key"),  # type: ignore[arg-type]
        pytest.param(Request(0, 0, PutRequest(b"k", lease=2**63)), id="lease past int64"),
        pytest.param(Request(0, 0, PutRequest(b"k", lease=True)), id="bool as int"),
        pytest.param(Request(0, 0, PutRequest(b"k", prev_kv=1)), id="int as bool"),  # type: ignore[arg-type]
        pytest.param(Request(0, 0, PutRequest(bytearray(b"k"))), id="bytearray"),  # type: ignore[arg-type]
        pytest.param(Request(0, 0, RangeRequest(b"k", sort_order=7)), id="bad enum"),  # type: ignore[arg-type]
        pytest.param(Request(-1, 1, RangeRequest(b"k")), id="negative client"),
        pytest.param(Request(1, 0, RangeRequest(b"k")), id="client without request id"),
        pytest.param(Request(0, 2**64, RangeRequest(b"k")), id="request id past uint64"),
        pytest.param(Request(0, 0, MemberRemoveRequest(-1)), id="negative member"),
        pytest.param(Request(0, 0, MemberAddRequest(1, [b"u"])), id="bytes url"),  # type: ignore[list-item]
        pytest.param(
            Request(
                0,
                0,
                TxnRequest(
                    [
                        _forced(
                            Compare(b"a", CompareTarget.VALUE, CompareResult.EQUAL, b""), operand=1
                        )
                    ]
                ),
            ),
            id="value compare with int",
        ),
        pytest.param(
            Request(0, 0, _forced(TxnRequest(), success=[CompactRequest(1)])), id="compact in txn"
        ),
        pytest.param(Request(0, 0, _forced(TxnRequest(), success=frozenset())), id="set of ops"),
        pytest.param(Request(0, 0, LeaseCheckpointRequest([(1, 2, False)])), id="tuple checkpoint"),  # type: ignore[list-item]
        pytest.param(Request(0, 0, LeaseCheckpoint(1, 2)), id="not a body"),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_what_decode_would_reject(request_: Request) -> None:
    with pytest.raises(ValueError, match="cannot encode request"):
        encode_request(request_)


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(PutResponse(2**63), id="revision past int64"),
        pytest.param(RangeResponse(1, ((b"k", 1, 1, 1, b"", 0),)), id="tuple kv"),  # type: ignore[arg-type]
        pytest.param(TxnResponse(1, True, (CompactResponse(1),)), id="compact in txn"),  # type: ignore[arg-type]
        pytest.param(ErrorResult(GrpcCode.UNKNOWN, "x" * (MAX_ERROR_MESSAGE + 1)), id="long"),
        pytest.param(ErrorResult(99, "x"), id="bad code"),  # type: ignore[arg-type]
        pytest.param(MemberRemoveResponse([MemberInfo(1, "n", "http://a")]), id="str urls"),  # type: ignore[arg-type]
        pytest.param(LeaseCheckpoint(1, 1), id="not a response"),
    ],
)
def test_encode_response_refuses_what_decode_would_reject(response: Any) -> None:
    with pytest.raises(ValueError, match="cannot encode response"):
        encode_response(response)


LOOSE = st.one_of(I64, st.integers(), st.booleans(), st.binary(max_size=3), st.text(max_size=3))


@given(
    st.sampled_from(
        [PutRequest(b"k"), RangeRequest(b"k"), LeaseGrantRequest(5), AlarmRequest(AlarmAction.GET)]
    ),
    st.data(),
)
def test_whatever_encodes_decodes_to_an_equal_request(template: Any, data: st.DataObject) -> None:
    """Fields drawn from a wider domain than the format's: encode refuses, or it round-trips."""
    fields = {a.name: data.draw(LOOSE, label=a.name) for a in attrs.fields(type(template))}
    body = _forced(template, **fields)
    ids: list[Any] = [data.draw(LOOSE, label="client_id"), data.draw(LOOSE, label="request_id")]
    request = Request(ids[0], ids[1], body)
    try:
        encoded = encode_request(request)
    except ValueError:
        return
    assert decode_request(encoded) == request


def test_member_urls_must_be_a_sequence_not_one_string() -> None:
    with pytest.raises(TypeError):
        MemberAddRequest(1, "http://a:1")
    assert MemberAddRequest(1, ["http://a:1"]).peer_urls == ("http://a:1",)


# -- decode raises RequestDecodeError and nothing else ------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    _decodes_or_rejects(data)
    _response_decodes_or_rejects(data)


@given(requests)
def test_every_truncation_is_rejected(request: Request) -> None:
    data = encode_request(request)
    for cut in range(len(data)):
        with pytest.raises(RequestDecodeError):
            decode_request(data[:cut])


@given(responses)
def test_every_truncated_response_is_rejected(response: Response) -> None:
    data = encode_response(response)
    for cut in range(len(data)):
        with pytest.raises(RequestDecodeError):
            decode_response(data[:cut])


@given(requests, st.data())
def test_bit_flips_are_rejected_or_decode_to_a_valid_request(
    request: Request, data: st.DataObject
) -> None:
    encoded = bytearray(encode_request(request))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(encoded) - 1))
        encoded[i] ^= 1 << data.draw(st.integers(0, 7))
    _decodes_or_rejects(bytes(encoded))


@given(responses, st.data())
def test_response_bit_flips_are_rejected_or_decode_validly(
    response: Response, data: st.DataObject
) -> None:
    encoded = bytearray(encode_response(response))
    i = data.draw(st.integers(0, len(encoded) - 1))
    encoded[i] ^= 1 << data.draw(st.integers(0, 7))
    _response_decodes_or_rejects(bytes(encoded))


@given(cbor_values, cbor_values, cbor_values)
def test_wrongly_shaped_cbor_is_rejected(a: Any, b: Any, c: Any) -> None:
    for item in (a, [FORMAT_VERSION, a], [FORMAT_VERSION, a, b, c], [FORMAT_VERSION, 1, 1, [a, b]]):
        _decodes_or_rejects(cbor2.dumps(item))
        _response_decodes_or_rejects(cbor2.dumps(item))


def _paths(node: Any, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = [path]
    if isinstance(node, list):
        for i, child in enumerate(node):
            out.extend(_paths(child, (*path, i)))
    return out


def _replace(node: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    copy = list(node)
    copy[path[0]] = _replace(node[path[0]], path[1:], value)
    return copy


@given(requests, cbor_values, st.data())
def test_one_replaced_item_is_rejected_or_valid(
    request: Request, junk: Any, data: st.DataObject
) -> None:
    """Replace any one item of a valid encoding, at any depth, by any CBOR value."""
    tree = cbor2.loads(encode_request(request))
    path = data.draw(st.sampled_from(_paths(tree)))
    _decodes_or_rejects(cbor2.dumps(_replace(tree, path, junk)))
    # ... or drop it, or add one more item after it
    if path:
        parent = path[:-1]
        items = list(_get(tree, parent))
        _decodes_or_rejects(cbor2.dumps(_replace(tree, parent, items[: path[-1]])))
        items.insert(path[-1], junk)
        _decodes_or_rejects(cbor2.dumps(_replace(tree, parent, items)))


@given(responses, cbor_values, st.data())
def test_one_replaced_response_item_is_rejected_or_valid(
    response: Response, junk: Any, data: st.DataObject
) -> None:
    tree = cbor2.loads(encode_response(response))
    path = data.draw(st.sampled_from(_paths(tree)))
    _response_decodes_or_rejects(cbor2.dumps(_replace(tree, path, junk)))


def _get(node: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        node = node[i]
    return node


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(cbor2.dumps([]), id="empty array"),
        pytest.param(cbor2.dumps({"version": 1}), id="map"),
        pytest.param(cbor2.dumps([2, 0, 0, [9, 1]]), id="future version"),
        pytest.param(cbor2.dumps([True, 0, 0, [9, 1]]), id="bool version"),
        pytest.param(cbor2.dumps([1, 0, 0, [9, 1]]) + b"\x00", id="trailing byte"),
        pytest.param(cbor2.dumps([1, 0, 0, [99, 1]]), id="unknown body tag"),
        pytest.param(cbor2.dumps([1, 0, 0, []]), id="empty body"),
        pytest.param(cbor2.dumps([1, 0, 0, [9, 1], 5]), id="extra envelope item"),
        pytest.param(cbor2.dumps([1, 1, 0, [9, 1]]), id="client without request id"),
        pytest.param(cbor2.dumps([1, 0, 0, [9, 2**64]]), id="member id past uint64"),
        pytest.param(cbor2.dumps([1, 0, 0, [4, 2**63, False]]), id="revision past int64"),
        pytest.param(cbor2.dumps([1, 0, 0, [3, [[3, 0, b"k", b"", 1]], [], []]]), id="value=int"),
        pytest.param(
            cbor2.dumps([1, 0, 0, [3, [[2, 0, b"k", b"", b"x"]], [], []]]), id="mod=bytes"
        ),
        pytest.param(cbor2.dumps([1, 0, 0, [3, [], [[4, 1, False]], []]]), id="compact in txn"),
        pytest.param(cbor2.dumps([1, 0, 0, [12, 3, 1, 1]]), id="bad alarm action"),
        pytest.param(cbor2.dumps([1, 0, 0, [8, 1, "http://a", False]]), id="url string"),
        pytest.param(cbor2.dumps([1, 0, 0, [1, "k", b"", 0, False, False, False]]), id="text key"),
        pytest.param(cbor2.dumps([1, 0, 0, [1, b"k", b"", 0, 0, False, False]]), id="int for bool"),
        pytest.param(b"\x81" * 10_000 + b"\x01", id="deep nesting"),
        pytest.param(b"\x9f" * 5_000, id="indefinite nesting"),
        pytest.param(b"\x84\x01\x00\x00\x5b" + (2**62).to_bytes(8, "big"), id="huge length"),
        pytest.param(
            cbor2.dumps([1, 0, 0, [1, cbor2.CBORTag(1, 0), b"", 0, False, False, False]]),
            id="datetime tag",
        ),
        pytest.param(cbor2.dumps([1, 0, 0, [5, cbor2.CBORTag(30, [1, 2]), 0]]), id="fraction tag"),
        pytest.param(cbor2.dumps([1, 0, 0, [5, cbor2.CBORTag(9999, 1), 0]]), id="unknown tag"),
        # A txn whose success list holds the txn itself (CBOR shared references, tags 28/29).
        pytest.param(
            bytes([0x84, 0x01, 0x00, 0x00, 0xD8, 28, 0x84, 0x03, 0x80, 0x81, 0xD8, 29, 0x00, 0x80]),
            id="cyclic txn",
        ),
    ],
)
def test_malformed_requests_are_rejected(data: bytes) -> None:
    with pytest.raises(RequestDecodeError):
        decode_request(data)


@pytest.mark.parametrize("data", ["text", None, 5, [1, 0, 0]])
def test_non_bytes_are_rejected(data: Any) -> None:
    with pytest.raises(RequestDecodeError):
        decode_request(data)
    with pytest.raises(RequestDecodeError):
        decode_response(data)


def test_bytearray_and_memoryview_decode() -> None:
    data = encode_request(Request(1, 2, PutRequest(b"k")))
    assert decode_request(bytearray(data)) == decode_request(memoryview(data))


def test_request_decode_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="format version"):
        decode_request(cbor2.dumps([2]))


# -- errors as results ---------------------------------------------------------------------------


def _error_classes() -> list[type[EtcdError]]:
    out: list[type[EtcdError]] = []
    queue: list[type[EtcdError]] = [EtcdError]
    while queue:
        cls = queue.pop(0)
        if not issubclass(cls, UnknownEtcdError):
            out.append(cls)
            queue.extend(cls.__subclasses__())
    return out


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_every_etcd_error_round_trips_to_its_class_and_text(cls: type[EtcdError]) -> None:
    sent = cls("local detail, not sent")
    received = decode_response(encode_response(ErrorResult.from_exception(sent)))
    assert isinstance(received, ErrorResult)
    exc = received.to_exception()
    assert type(exc) is cls
    assert str(exc) == str(sent) == cls.message
    assert exc.code == sent.code
    assert exc.detail == ""


def test_known_error_classes_have_distinct_code_and_text() -> None:
    keys = [(cls.code, cls.message) for cls in _error_classes() if "message" in vars(cls)]
    assert len(keys) == len(set(keys))
    assert RequestIdExpiredError in _error_classes()


def test_an_error_defined_later_is_found() -> None:
    class LateError(EtcdError):
        message = "etcdserver: defined after the first lookup"
        code = GrpcCode.ABORTED

    ErrorResult.from_exception(RequestTooLargeError()).to_exception()  # fills the index
    assert type(ErrorResult(GrpcCode.ABORTED, LateError.message).to_exception()) is LateError


def test_an_unknown_error_keeps_its_text_and_code() -> None:
    result = decode_response(encode_response(ErrorResult(GrpcCode.ABORTED, "etcdserver: new")))
    assert isinstance(result, ErrorResult)
    exc = result.to_exception()
    assert isinstance(exc, UnknownEtcdError)
    assert str(exc) == "etcdserver: new"
    assert exc.code == GrpcCode.ABORTED
    assert type(result.to_exception()) is type(exc)
    # A known text under another code is not that class either.
    odd = ErrorResult(GrpcCode.ABORTED, RequestTooLargeError.message).to_exception()
    assert isinstance(odd, UnknownEtcdError)
    assert not isinstance(odd, RequestTooLargeError)


# -- size limit ----------------------------------------------------------------------------------


def test_request_size_limit_is_etcds() -> None:
    assert MAX_REQUEST_BYTES == 1_572_864
    check_request_size(b"x" * MAX_REQUEST_BYTES)
    with pytest.raises(RequestTooLargeError) as info:
        check_request_size(b"x" * (MAX_REQUEST_BYTES + 1))
    assert str(info.value) == "etcdserver: request is too large"
    assert info.value.code == GrpcCode.INVALID_ARGUMENT
    big = encode_request(Request(1, 1, PutRequest(b"k", b"v" * MAX_REQUEST_BYTES)))
    with pytest.raises(RequestTooLargeError):
        check_request_size(big)
    check_request_size(big, limit=len(big))


def test_an_error_class_that_needs_arguments_comes_back_as_unknown() -> None:
    class NeedyError(EtcdError):
        message = "etcdserver: needs an argument"
        code = GrpcCode.ABORTED

        def __init__(self, what: str) -> None:
            super().__init__(what)

    exc = ErrorResult.from_exception(NeedyError("x")).to_exception()
    assert isinstance(exc, UnknownEtcdError)
    assert str(exc) == NeedyError.message
    assert exc.code == GrpcCode.ABORTED
