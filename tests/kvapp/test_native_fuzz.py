"""The native protocol's request bodies: whatever a client sends, decoding refuses it with
RequestDecodeError (the member answers INVALID_ARGUMENT and the connection goes on) or yields a
request that encodes back to itself; no other exception reaches the server."""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

import attrs
import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from kvapp.requests import RequestDecodeError
from kvapp.server import native as wire
from kvapp.server.native import Op
from tests.kvapp.test_native import ALL_REQUESTS
from tests.kvapp.test_requests import _paths, _replace, cbor_values


def _well_typed(value: Any, hint: Any) -> bool:
    """Whether ``value`` is what the annotation ``hint`` says (ints within int64)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_well_typed(value, a) for a in args)
    if origin in (tuple, list):
        if not isinstance(value, origin):
            return False
        if origin is list or args[-1:] == (...,):
            return all(_well_typed(v, args[0]) for v in value)
        return len(value) == len(args) and all(
            _well_typed(v, t) for v, t in zip(value, args, strict=True)
        )
    if hint is Any or hint is object:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return type(value) is bool
    if hint is int:
        return type(value) is int and -(2**63) <= value < 2**63
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint)
    if isinstance(hint, type) and attrs.has(hint):
        hints = typing.get_type_hints(hint)
        return isinstance(value, hint) and all(
            _well_typed(getattr(value, f.name), hints[f.name])
            for f in attrs.fields(hint)
            if f.name in hints
        )
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # aliases the check does not know: not judged


def _decodes_or_rejects(op: Op, data: bytes) -> None:
    try:
        request, request_id = wire.decode_body(op, data)
    except RequestDecodeError:
        return
    assert wire.op_of(request) is op
    assert _well_typed(request, type(request)), request
    assert _well_typed(request_id, int)
    assert request_id >= 0
    assert wire.decode_body(op, wire.encode_body(request, request_id)) == (request, request_id)


@settings(max_examples=300)
@given(st.sampled_from(Op), cbor_values)
def test_any_cbor_body_of_any_operation_is_refused_or_valid(op: Op, body: Any) -> None:
    _decodes_or_rejects(op, cbor2.dumps(body))


@settings(max_examples=300)
@given(st.sampled_from(Op), st.binary(max_size=64))
def test_any_bytes_are_refused_or_valid(op: Op, data: bytes) -> None:
    _decodes_or_rejects(op, data)


@settings(max_examples=500)
@given(st.sampled_from(ALL_REQUESTS), cbor_values, st.data())
def test_one_replaced_dropped_or_added_item_is_refused_or_valid(
    request: wire.OpRequest, junk: Any, data: st.DataObject
) -> None:
    op = wire.op_of(request)
    tree = cbor2.loads(wire.encode_body(request, 7 if op in (Op.PUT, Op.TXN) else 0))
    if not isinstance(tree, list):
        return
    path = data.draw(st.sampled_from(_paths(tree)))
    _decodes_or_rejects(op, cbor2.dumps(_replace(tree, path, junk)))
    if path:
        parent, items = path[:-1], list(_get(tree, path[:-1]))
        _decodes_or_rejects(op, cbor2.dumps(_replace(tree, parent, items[: path[-1]])))
        items.insert(path[-1], junk)
        _decodes_or_rejects(op, cbor2.dumps(_replace(tree, parent, items)))


def _get(tree: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        tree = tree[i]
    return tree


def test_the_operations_are_all_covered() -> None:
    assert {wire.op_of(r) for r in ALL_REQUESTS} >= set(Op) - {Op.MEMBER_UPDATE, Op.ALARM}
