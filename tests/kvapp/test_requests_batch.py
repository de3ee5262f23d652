"""kvapp.requests: batch entries (several requests in one log entry) and old single entries."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvapp.errors import RequestDecodeError
from kvapp.mvcc import PutRequest
from kvapp.requests import (
    BATCH_VERSION,
    FORMAT_VERSION,
    MAX_TXN_DEPTH,
    Request,
    RequestBatch,
    decode_entry,
    decode_request,
    encode_batch,
    encode_request,
)
from tests.kvapp.test_requests import _nested_txn, cbor_values, requests

batches = st.lists(requests, min_size=1, max_size=6)


def _entry_decodes_or_rejects(data: bytes) -> None:
    try:
        decoded = decode_entry(data)
    except RequestDecodeError:
        return
    if isinstance(decoded, Request):
        assert decode_entry(encode_request(decoded)) == decoded
    else:
        again = encode_batch([encode_request(r) for r in decoded.requests])
        assert decode_entry(again) == decoded


@given(batches)
def test_a_batch_round_trips_and_is_the_canonical_encoding_of_its_array(
    reqs: list[Request],
) -> None:
    encoded = [encode_request(r) for r in reqs]
    data = encode_batch(encoded)
    assert decode_entry(data) == RequestBatch(tuple(reqs))
    # Splicing the encoded requests gives exactly what encoding the whole array would give.
    assert data == cbor2.dumps([BATCH_VERSION, [cbor2.loads(e) for e in encoded]])


@pytest.mark.parametrize("n", [1, 23, 24, 255, 256, 65_535, 65_536])
def test_batch_array_heads_of_every_width(n: int) -> None:
    one = encode_request(Request(0, 0, PutRequest(b"k", b"v")))
    data = encode_batch([one] * n)
    assert data == cbor2.dumps([BATCH_VERSION, [cbor2.loads(one)] * n])
    batch = decode_entry(data)
    assert isinstance(batch, RequestBatch)
    assert len(batch.requests) == n


@given(requests)
def test_single_request_entries_decode_as_before(request: Request) -> None:
    data = encode_request(request)
    assert decode_entry(data) == request == decode_request(data)


def test_an_entry_written_by_older_code_decodes() -> None:
    # A put from client 7 as kvapp wrote it before batches existed (format version 1).
    old = bytes.fromhex("840107018701416b417600f4f4f4")  # encode_request at 8402211
    assert cbor2.loads(old) == [1, 7, 1, [1, b"k", b"v", 0, False, False, False]]
    assert decode_entry(old) == Request(7, 1, PutRequest(b"k", b"v"))


def test_decode_request_refuses_a_batch() -> None:
    data = encode_batch([encode_request(Request(0, 0, PutRequest(b"k")))] * 2)
    with pytest.raises(RequestDecodeError, match="version"):
        decode_request(data)


def test_encode_batch_refuses_an_empty_batch_and_non_requests() -> None:
    one = encode_request(Request(0, 0, PutRequest(b"k")))
    with pytest.raises(ValueError, match="empty"):
        encode_batch([])
    for bad in (b"", b"\x83\x01", cbor2.dumps([2, []]), bytearray(one)):
        with pytest.raises(ValueError, match="not an encoded request"):
            encode_batch([one, bad])  # type: ignore[list-item]


PUT = [FORMAT_VERSION, 0, 0, [1, b"k", b"v", 0, False, False, False]]


@pytest.mark.parametrize(
    "top",
    [
        [BATCH_VERSION],
        [BATCH_VERSION, []],
        [BATCH_VERSION, PUT],
        [BATCH_VERSION, [PUT], 1],
        [BATCH_VERSION, [PUT, [BATCH_VERSION, 0, 0, PUT[3]]]],
        [BATCH_VERSION, [PUT, PUT[:3]]],
        [BATCH_VERSION, [PUT, [BATCH_VERSION, [PUT]]]],
        [BATCH_VERSION, [PUT, [True, 0, 0, PUT[3]]]],
        [BATCH_VERSION, [PUT, [FORMAT_VERSION, 5, 0, PUT[3]]]],
        [BATCH_VERSION, [PUT, [FORMAT_VERSION, 0, 0, [99]]]],
        [BATCH_VERSION, {"a": PUT}],
        [3, [PUT]],
    ],
)
def test_malformed_batches_are_refused(top: list[Any]) -> None:
    with pytest.raises(RequestDecodeError):
        decode_entry(cbor2.dumps(top))


@given(batches)
def test_every_truncated_batch_is_refused(reqs: list[Request]) -> None:
    data = encode_batch([encode_request(r) for r in reqs])
    for cut in range(len(data)):
        with pytest.raises(RequestDecodeError):
            decode_entry(data[:cut])
    with pytest.raises(RequestDecodeError, match="trailing"):
        decode_entry(data + b"\x00")


@given(batches, st.data())
def test_batch_bit_flips_are_refused_or_decode_validly(
    reqs: list[Request], data: st.DataObject
) -> None:
    encoded = bytearray(encode_batch([encode_request(r) for r in reqs]))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(encoded) - 1))
        encoded[i] ^= 1 << data.draw(st.integers(0, 7))
    _entry_decodes_or_rejects(bytes(encoded))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    _entry_decodes_or_rejects(data)
    _entry_decodes_or_rejects(bytes([0x82, BATCH_VERSION]) + data)


@given(cbor_values, cbor_values)
def test_wrongly_shaped_batches_are_refused(a: Any, b: Any) -> None:
    for top in ([BATCH_VERSION, a], [BATCH_VERSION, [PUT, a]], [BATCH_VERSION, [a, b]]):
        _entry_decodes_or_rejects(cbor2.dumps(top))


def test_deeply_nested_cbor_in_a_batch_is_refused() -> None:
    deep: list[Any] = []
    for _ in range(400):
        deep = [deep]
    with pytest.raises(RequestDecodeError):
        decode_entry(cbor2.dumps([BATCH_VERSION, [PUT, deep]]))


def test_a_batch_carries_txns_nested_to_the_limit() -> None:
    deepest = Request(3, 1, _nested_txn(MAX_TXN_DEPTH))
    data = encode_batch([encode_request(deepest)] * 2)
    assert decode_entry(data) == RequestBatch((deepest, deepest))
