r"""Request checks that etcd makes before a request is proposed (``v3rpc/key.go``).

They depend only on the request (and the txn size limit), never on the store's contents, so the
API layer runs them before proposing, to fail fast without a Raft round trip, and the store runs
them again when applying, so an invalid command in the log fails identically on every member.

On the size limit: members configured with different ``--max-txn-ops`` would disagree about a
txn near the limit if the limit were enforced when applying. So the limit is the proposer's
business: pass ``max_txn_ops`` here at the API layer, and build the replicated store with
``max_txn_ops=None`` (as :class:`~kvapp.kvstate.KvState` does).

The duplicate-key check is etcd 3.4's ``checkIntervals`` (``etcdserver/api/v3rpc/key.go``), rule
for rule. It puts each delete in an interval tree (``pkg/adt``) as ``[key, range_end)`` compared
as plain strings, or as the point ``key`` when ``range_end`` is empty, and rejects a put whose key
lies in one of them. "Plain strings" matters for ``range_end == b"\0"`` ("every key from ``key``
on"): the tree reads only the *empty* string as +infinity, so ``[key, "\0")`` is an empty
interval and such a delete never conflicts with a put, whatever the put's key (verified against
etcd 3.4.23: ``delete [b, "\0")`` plus ``put c`` in one branch is accepted). The same holds for
deletes in nested txns, which the parent merges into its own tree. So such a delete and a put of
a key it covers run in one revision, in branch order; see :mod:`kvapp.mvcc.store` for the one
combination of them that etcd cannot apply (an ``ignore_*`` put after the delete).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvapp.errors import (
    DuplicateKeyError,
    EmptyKeyError,
    LeaseProvidedError,
    TooManyOpsError,
    ValueProvidedError,
)
from kvapp.mvcc.types import (
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)

__all__ = ["DEFAULT_MAX_TXN_OPS", "check_key", "check_put", "check_request", "check_txn"]

DEFAULT_MAX_TXN_OPS = 128
"""etcd's default ``--max-txn-ops``."""


def check_key(key: bytes) -> None:
    """Reject an empty key (range, delete, compare).

    Raises:
        EmptyKeyError: ``key`` is empty.
    """
    if not key:
        raise EmptyKeyError


def check_put(
    key: bytes, value: bytes, lease: int, *, ignore_value: bool, ignore_lease: bool
) -> None:
    """Check a put as etcd's ``checkPutRequest`` does.

    Raises:
        EmptyKeyError: ``key`` is empty.
        ValueProvidedError: ``ignore_value`` with a non-empty value.
        LeaseProvidedError: ``ignore_lease`` with a non-zero lease.
    """
    if not key:
        raise EmptyKeyError
    if ignore_value and value:
        raise ValueProvidedError
    if ignore_lease and lease:
        raise LeaseProvidedError


def check_request(op: RequestOp, max_txn_ops: int | None) -> None:
    """Check one request as etcd's KV server does before proposing it.

    Raises:
        EmptyKeyError, ValueProvidedError, LeaseProvidedError: as for the single operations.
        TooManyOpsError: a txn exceeds ``max_txn_ops`` (None: no limit).
        DuplicateKeyError: a txn branch writes a key twice or puts a key it deletes.
    """
    match op:
        case RangeRequest() | DeleteRangeRequest():
            check_key(op.key)
        case PutRequest():
            check_put(
                op.key,
                op.value,
                op.lease,
                ignore_value=op.ignore_value,
                ignore_lease=op.ignore_lease,
            )
        case TxnRequest():
            check_txn(op.compare, op.success, op.failure, max_txn_ops)


def check_txn(
    compare: Sequence[Compare],
    success: Sequence[RequestOp],
    failure: Sequence[RequestOp],
    max_txn_ops: int | None,
) -> None:
    r"""Check a txn as etcd does: ``checkTxnReq``, then ``checkIntervals`` on each branch.

    The size rule: ``max(len(compare), len(success), len(failure))`` must not exceed the limit,
    and a nested txn is checked against what its parent leaves (limit minus the parent's size).

    Raises:
        TooManyOpsError: too many compares or operations.
        EmptyKeyError, ValueProvidedError, LeaseProvidedError: an invalid compare or operation.
        DuplicateKeyError: a branch puts one key twice, or puts a key that it (or a nested txn
            run before the put's own level is checked) deletes; a delete with
            ``range_end == b"\0"`` deletes nothing for this check (see the module doc).
    """
    _check_sizes(compare, success, failure, max_txn_ops)
    _check_intervals(success)
    _check_intervals(failure)


def _check_sizes(
    compare: Sequence[Compare],
    success: Sequence[RequestOp],
    failure: Sequence[RequestOp],
    max_txn_ops: int | None,
) -> None:
    opc = max(len(compare), len(success), len(failure))
    if max_txn_ops is not None and opc > max_txn_ops:
        raise TooManyOpsError
    for c in compare:
        check_key(c.key)
    rest = None if max_txn_ops is None else max_txn_ops - opc
    for op in (*success, *failure):
        if isinstance(op, TxnRequest):
            _check_sizes(op.compare, op.success, op.failure, rest)
        else:
            check_request(op, rest)


class _Deletes:
    """The delete ranges seen so far in a branch, for point queries (etcd's interval tree)."""

    __slots__ = ("points", "ranges")

    def __init__(self) -> None:
        self.points: set[bytes] = set()
        self.ranges: list[tuple[bytes, bytes]] = []

    def add(self, key: bytes, range_end: bytes) -> None:
        if not range_end:
            self.points.add(key)
        elif key < range_end:
            # Anything else is an empty interval, which covers no key. That includes
            # range_end == b"\0" (all keys >= key) for every non-empty key: etcd's tree compares
            # range ends as plain strings, with only "" as +infinity.
            self.ranges.append((key, range_end))

    def update(self, other: _Deletes) -> None:
        self.points |= other.points
        self.ranges.extend(other.ranges)

    def covers(self, key: bytes) -> bool:
        if key in self.points:
            return True
        return any(start <= key < end for start, end in self.ranges)


def _check_intervals(ops: Sequence[RequestOp]) -> tuple[set[bytes], _Deletes]:
    """Mirror etcd's ``checkIntervals``; returns the branch's puts and deletes for its parent."""
    dels = _Deletes()
    for op in ops:
        if isinstance(op, DeleteRangeRequest):
            dels.add(op.key, op.range_end)
    puts: set[bytes] = set()
    for op in ops:
        if not isinstance(op, TxnRequest):
            continue
        puts_then, dels_then = _check_intervals(op.success)
        puts_else, dels_else = _check_intervals(op.failure)
        for k in puts_then:
            if k in puts or dels.covers(k):
                raise DuplicateKeyError
            puts.add(k)
        for k in puts_else:
            # The same key in then and else is fine: only one of them runs.
            if (k in puts and k not in puts_then) or dels.covers(k):
                raise DuplicateKeyError
            puts.add(k)
        dels.update(dels_then)
        dels.update(dels_else)
    for op in ops:
        if isinstance(op, PutRequest):
            if op.key in puts or dels.covers(op.key):
                raise DuplicateKeyError
            puts.add(op.key)
    return puts, dels
