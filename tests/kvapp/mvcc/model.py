r"""A naive reference model of etcd's MVCC store: one flat list of every change ever made.

It never forgets history (compaction only moves a floor under reads) and answers every read by
replaying the list, so it is obviously correct and slow. The store must agree with it on every
answer at every revision at or above the compacted revision.

It states etcd 3.4's rules as plainly as possible: the compacted revision starts at -1; a txn's
puts are all checked before its ranges, a range in a txn judges a non-zero revision (negative
ones too) against the current and compacted revisions; a delete ending in ``b"\0"`` conflicts
with no put; and, kvapp's addition, an ``ignore_*`` put whose key is gone when it runs fails the
txn, found here by replaying the branch.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from kvapp.errors import (
    CompactedError,
    DuplicateKeyError,
    FutureRevisionError,
    KeyNotFoundError,
)
from kvapp.mvcc import (
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
    TxnResponse,
)


def in_range(key: bytes, range_end: bytes, k: bytes) -> bool:
    if range_end == b"":
        return k == key
    if range_end == b"\0":
        return k >= key
    return key <= k < range_end


class Model:
    def __init__(self) -> None:
        self.log: list[KeyValue] = []
        self.rev = 1
        self.compact_rev = -1

    def state_at(self, rev: int) -> dict[bytes, KeyValue]:
        state: dict[bytes, KeyValue] = {}
        for kv in self.log:
            if kv.mod_revision > rev:
                break
            if kv.version == 0:
                state.pop(kv.key, None)
            else:
                state[kv.key] = kv
        return state

    def events_from(self, rev: int) -> list[KeyValue]:
        return [kv for kv in self.log if kv.mod_revision >= rev]

    # -- reads --------------------------------------------------------------------------

    def range(self, r: RangeRequest, read_rev: int | None = None) -> RangeResponse:
        cur = self.rev if read_rev is None else read_rev
        if r.revision > self.rev:
            raise FutureRevisionError
        if 0 < r.revision < self.compact_rev:
            raise CompactedError
        state = self.state_at(r.revision if r.revision > 0 else cur)
        kvs = sorted(
            (kv for k, kv in state.items() if in_range(r.key, r.range_end, k)),
            key=lambda kv: kv.key,
        )
        count = len(kvs)
        if r.count_only:
            return RangeResponse(cur, (), False, count)
        filtered = bool(
            r.min_mod_revision
            or r.max_mod_revision
            or r.min_create_revision
            or r.max_create_revision
        )
        if r.sort_order == SortOrder.NONE and not filtered and r.limit > 0:
            kvs = kvs[: r.limit + 1]
        if r.max_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision <= r.max_mod_revision]
        if r.min_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision >= r.min_mod_revision]
        if r.max_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision <= r.max_create_revision]
        if r.min_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision >= r.min_create_revision]
        field = {
            SortTarget.KEY: "key",
            SortTarget.VERSION: "version",
            SortTarget.CREATE: "create_revision",
            SortTarget.MOD: "mod_revision",
            SortTarget.VALUE: "value",
        }[r.sort_target]
        if r.sort_order == SortOrder.DESCEND:
            kvs = sorted(kvs, key=lambda kv: getattr(kv, field), reverse=True)
        elif r.sort_order == SortOrder.ASCEND or r.sort_target != SortTarget.KEY:
            kvs = sorted(kvs, key=lambda kv: getattr(kv, field))
        more = False
        if r.limit > 0 and len(kvs) > r.limit:
            kvs = kvs[: r.limit]
            more = True
        if r.keys_only:
            kvs = [attrs.evolve(kv, value=b"") for kv in kvs]
        return RangeResponse(cur, tuple(kvs), more, count)

    # -- writes -------------------------------------------------------------------------

    def _put(self, state: dict[bytes, KeyValue], rev: int, p: PutRequest) -> KeyValue | None:
        prev = state.get(p.key)
        value = prev.value if p.ignore_value and prev else p.value
        lease = prev.lease if p.ignore_lease and prev else p.lease
        if prev is None:
            kv = KeyValue(p.key, rev, rev, 1, value, lease)
        else:
            kv = KeyValue(p.key, prev.create_revision, rev, prev.version + 1, value, lease)
        state[p.key] = kv
        self.log.append(kv)
        return prev

    def _delete(
        self, state: dict[bytes, KeyValue], rev: int, d: DeleteRangeRequest
    ) -> list[KeyValue]:
        gone = sorted(
            (kv for k, kv in state.items() if in_range(d.key, d.range_end, k)),
            key=lambda kv: kv.key,
        )
        for kv in gone:
            del state[kv.key]
            self.log.append(KeyValue(kv.key, 0, rev, 0))
        return gone

    def put(self, p: PutRequest) -> PutResponse:
        state = self.state_at(self.rev)
        if (p.ignore_value or p.ignore_lease) and p.key not in state:
            raise KeyNotFoundError
        self.rev += 1
        prev = self._put(state, self.rev, p)
        return PutResponse(self.rev, prev if p.prev_kv else None)

    def delete_range(self, d: DeleteRangeRequest) -> DeleteRangeResponse:
        state = self.state_at(self.rev)
        gone = self._delete(state, self.rev + 1, d)
        if gone:
            self.rev += 1
        return DeleteRangeResponse(self.rev, len(gone), tuple(gone) if d.prev_kv else ())

    def _holds(self, state: dict[bytes, KeyValue], c: Compare) -> bool:
        kvs = [kv for k, kv in state.items() if in_range(c.key, c.range_end, k)]
        if not kvs:
            if c.target == CompareTarget.VALUE:
                return False
            kvs = [KeyValue(c.key, 0, 0, 0)]
        for kv in kvs:
            have = {
                CompareTarget.VERSION: kv.version,
                CompareTarget.CREATE: kv.create_revision,
                CompareTarget.MOD: kv.mod_revision,
                CompareTarget.VALUE: kv.value,
                CompareTarget.LEASE: kv.lease,
            }[c.target]
            want = c.operand
            ok = {
                CompareResult.EQUAL: have == want,
                CompareResult.NOT_EQUAL: have != want,
                CompareResult.GREATER: have > want,  # type: ignore[operator]
                CompareResult.LESS: have < want,  # type: ignore[operator]
            }[c.result]
            if not ok:
                return False
        return True

    @staticmethod
    def _duplicate(ops: Sequence[RequestOp]) -> bool:
        r"""Flat branches only: a key put twice, or put and covered by a delete.

        A delete ending in ``b"\0"`` covers nothing here: etcd's interval tree sees
        ``[key, "\0")`` as an empty interval.
        """
        puts = [op.key for op in ops if isinstance(op, PutRequest)]
        if len(puts) != len(set(puts)):
            return True
        dels = [op for op in ops if isinstance(op, DeleteRangeRequest) and op.range_end != b"\0"]
        return any(in_range(d.key, d.range_end, k) for d in dels for k in puts)

    def txn(
        self, compare: Sequence[Compare], success: Sequence[RequestOp], failure: Sequence[RequestOp]
    ) -> TxnResponse:
        if self._duplicate(success) or self._duplicate(failure):
            raise DuplicateKeyError
        state = self.state_at(self.rev)
        ok = all(self._holds(state, c) for c in compare)
        ops = success if ok else failure
        for op in ops:
            if (
                isinstance(op, PutRequest)
                and (op.ignore_value or op.ignore_lease)
                and op.key not in state
            ):
                raise KeyNotFoundError
        for op in ops:
            if isinstance(op, RangeRequest) and op.revision != 0:
                if op.revision > self.rev:
                    raise FutureRevisionError
                if op.revision < self.compact_rev:
                    raise CompactedError
        live = set(state)
        for op in ops:
            if isinstance(op, DeleteRangeRequest):
                live -= {k for k in live if in_range(op.key, op.range_end, k)}
            elif isinstance(op, PutRequest):
                if (op.ignore_value or op.ignore_lease) and op.key not in live:
                    raise KeyNotFoundError
                live.add(op.key)
        rev = self.rev + 1
        wrote = False
        responses: list[ResponseOp] = []
        for op in ops:
            if isinstance(op, RangeRequest):
                responses.append(self.range(op, read_rev=rev if wrote else self.rev))
            elif isinstance(op, PutRequest):
                prev = self._put(state, rev, op)
                wrote = True
                responses.append(PutResponse(rev, prev if op.prev_kv else None))
            elif isinstance(op, DeleteRangeRequest):
                gone = self._delete(state, rev, op)
                wrote = wrote or bool(gone)
                responses.append(
                    DeleteRangeResponse(
                        rev if wrote else self.rev, len(gone), tuple(gone) if op.prev_kv else ()
                    )
                )
            else:
                raise AssertionError("flat txns only")
        if wrote:
            self.rev = rev
        return TxnResponse(self.rev, ok, tuple(responses))

    def compact(self, rev: int) -> None:
        if rev <= self.compact_rev:
            raise CompactedError
        if rev > self.rev:
            raise FutureRevisionError
        self.compact_rev = rev
