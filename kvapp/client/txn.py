"""Small helpers to build a txn's compares and operations for :meth:`AsyncClient.txn`.

They only save typing: :meth:`~kvapp.client.AsyncClient.txn` takes the plain
:class:`~kvapp.mvcc.types.Compare` and request types too. Example::

    await client.txn(
        [version(b"lock", "==", 0)],
        [put(b"lock", b"me", lease=lease_id)],
        [get(b"lock")],
    )
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from kvapp.client.aio import Bytes, key_range
from kvapp.mvcc.types import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)

__all__ = ["create", "delete", "get", "lease", "mod", "put", "txn", "value", "version"]

_RESULTS: Final[dict[str, CompareResult]] = {
    "==": CompareResult.EQUAL,
    "!=": CompareResult.NOT_EQUAL,
    ">": CompareResult.GREATER,
    "<": CompareResult.LESS,
}


def _compare(
    key: Bytes, target: CompareTarget, op: str, operand: int | bytes, range_end: Bytes
) -> Compare:
    result = _RESULTS.get(op)
    if result is None:
        raise ValueError(f"compare operator must be one of {sorted(_RESULTS)}, got {op!r}")
    k, end = key_range(key, range_end)
    return Compare(k, target, result, operand, end)


def value(key: Bytes, op: str, operand: Bytes, *, range_end: Bytes = b"") -> Compare:
    """Compare the value: ``value(b"k", "==", b"v")``."""
    data = operand.encode() if isinstance(operand, str) else operand
    return _compare(key, CompareTarget.VALUE, op, data, range_end)


def version(key: Bytes, op: str, operand: int, *, range_end: Bytes = b"") -> Compare:
    """Compare the version (0: the key does not exist)."""
    return _compare(key, CompareTarget.VERSION, op, operand, range_end)


def create(key: Bytes, op: str, operand: int, *, range_end: Bytes = b"") -> Compare:
    """Compare the create revision (0: the key does not exist)."""
    return _compare(key, CompareTarget.CREATE, op, operand, range_end)


def mod(key: Bytes, op: str, operand: int, *, range_end: Bytes = b"") -> Compare:
    """Compare the mod revision."""
    return _compare(key, CompareTarget.MOD, op, operand, range_end)


def lease(key: Bytes, op: str, operand: int, *, range_end: Bytes = b"") -> Compare:
    """Compare the lease id (0: none)."""
    return _compare(key, CompareTarget.LEASE, op, operand, range_end)


def put(key: Bytes, val: Bytes, *, lease: int = 0, prev_kv: bool = False) -> PutRequest:
    """A put operation."""
    data = val.encode() if isinstance(val, str) else val
    return PutRequest(key_range(key)[0], data, lease, prev_kv)


def get(
    key: Bytes, range_end: Bytes = b"", *, prefix: bool = False, limit: int = 0
) -> RangeRequest:
    """A range operation."""
    k, end = key_range(key, range_end, prefix=prefix)
    return RangeRequest(k, end, limit)


def delete(
    key: Bytes, range_end: Bytes = b"", *, prefix: bool = False, prev_kv: bool = False
) -> DeleteRangeRequest:
    """A delete-range operation."""
    k, end = key_range(key, range_end, prefix=prefix)
    return DeleteRangeRequest(k, end, prev_kv)


def txn(
    compare: Iterable[Compare] = (),
    success: Iterable[RequestOp] = (),
    failure: Iterable[RequestOp] = (),
) -> TxnRequest:
    """A nested txn operation."""
    return TxnRequest(compare, success, failure)
