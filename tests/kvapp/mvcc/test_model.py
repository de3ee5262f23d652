"""The store against the naive model (tests/kvapp/mvcc/model.py) on random operation sequences.

Every answer must match: responses, errors (same exception type), revisions, and reads at every
revision still retained after compactions.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvapp.errors import EtcdError
from kvapp.mvcc import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    SortOrder,
    SortTarget,
    Store,
)

from .model import Model

KEYS = [b"a", b"ab", b"abc", b"b", b"b\xff", b"c", b"\xff"]
keys = st.sampled_from(KEYS)
values = st.sampled_from([b"", b"x", b"y", b"zz"])
range_ends = st.sampled_from([b"", b"\0", b"\0", *KEYS])


@st.composite
def range_requests(draw: st.DrawFn, max_rev: int = 12) -> RangeRequest:
    filters = draw(st.integers(0, 3)) == 0
    return RangeRequest(
        key=draw(keys),
        range_end=draw(range_ends),
        limit=draw(st.integers(min_value=-1, max_value=4)),
        revision=draw(st.one_of(st.just(0), st.integers(min_value=-2, max_value=max_rev + 1))),
        sort_order=draw(st.sampled_from([SortOrder.NONE, SortOrder.NONE, *SortOrder])),
        sort_target=draw(st.sampled_from(SortTarget)),
        keys_only=draw(st.booleans()),
        count_only=draw(st.integers(0, 5)) == 0,
        min_mod_revision=draw(st.sampled_from([0, 3, 6])) if filters else 0,
        max_mod_revision=draw(st.sampled_from([0, 4, 9])) if filters else 0,
        min_create_revision=draw(st.sampled_from([0, 2, 5])) if filters else 0,
        max_create_revision=draw(st.sampled_from([0, 5, 10])) if filters else 0,
    )


puts = st.builds(
    PutRequest,
    key=keys,
    value=values,
    prev_kv=st.booleans(),
    ignore_value=st.integers(0, 4).map(lambda i: i == 0),
)
deletes = st.builds(DeleteRangeRequest, key=keys, range_end=range_ends, prev_kv=st.booleans())


@st.composite
def compares(draw: st.DrawFn) -> Compare:
    target = draw(st.sampled_from(CompareTarget))
    operand: int | bytes = (
        draw(values) if target == CompareTarget.VALUE else draw(st.integers(0, 8))
    )
    return Compare(
        draw(keys),
        target,
        draw(st.sampled_from(CompareResult)),
        operand,
        draw(st.sampled_from([b"", b"", b"\0", b"b"])),
    )


ops = st.one_of(puts, deletes, range_requests())


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except EtcdError as e:
        return type(e)


class StoreVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = Store()
        self.model = Model()

    @rule(p=puts)
    def put(self, p: PutRequest) -> None:
        if p.ignore_value:
            p = PutRequest(p.key, b"", ignore_value=True, prev_kv=p.prev_kv)
        assert outcome(self.store.apply, p) == outcome(self.model.put, p)

    @rule(d=deletes)
    def delete(self, d: DeleteRangeRequest) -> None:
        assert outcome(self.store.apply, d) == outcome(self.model.delete_range, d)

    @rule(
        cmp=st.lists(compares(), max_size=3),
        success=st.lists(ops, max_size=4),
        failure=st.lists(ops, max_size=3),
    )
    def txn(self, cmp: list[Compare], success: list[Any], failure: list[Any]) -> None:
        success = [PutRequest(o.key, b"", ignore_value=True) if _bad(o) else o for o in success]
        failure = [PutRequest(o.key, b"", ignore_value=True) if _bad(o) else o for o in failure]
        got = outcome(self.store.txn, cmp, success, failure)
        want = outcome(self.model.txn, cmp, success, failure)
        assert got == want

    @rule(start=keys, key=keys, delete_first=st.booleans())
    def txn_delete_to_the_end_and_keep_a_key(
        self, start: bytes, key: bytes, delete_first: bool
    ) -> None:
        """The pair etcd's duplicate check lets through; the kept key may be gone by the put."""
        delete = DeleteRangeRequest(start, b"\0")
        put = PutRequest(key, b"", ignore_value=True)
        success = [delete, put] if delete_first else [put, delete]
        got = outcome(self.store.txn, [], success, [])
        assert got == outcome(self.model.txn, [], success, [])

    @rule(data=st.data())
    def range(self, data: st.DataObject) -> None:
        r = data.draw(range_requests(self.model.rev))
        assert outcome(self.store.apply, r) == outcome(self.model.range, r)

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        rev = data.draw(st.integers(min_value=-1, max_value=self.model.rev + 1))
        got = outcome(self.store.compact, rev)
        want = outcome(self.model.compact, rev)
        assert (got if isinstance(got, type) else None) == (
            want if isinstance(want, type) else None
        )

    @invariant()
    def same_revisions(self) -> None:
        assert self.store.revision == self.model.rev
        assert self.store.compact_revision == self.model.compact_rev

    @invariant()
    def every_retained_revision_reads_the_same(self) -> None:
        for rev in range(max(self.model.compact_rev, 1), self.model.rev + 1):
            want = self.model.state_at(rev)
            got = self.store.range(b"\0", b"\0", revision=rev)
            assert got.kvs == tuple(want[k] for k in sorted(want))

    @invariant()
    def change_log_is_history_since_compaction(self) -> None:
        start = self.model.compact_rev
        assert list(self.store.changes(start, self.model.rev)) == self.model.events_from(start)


def _bad(op: Any) -> bool:
    return isinstance(op, PutRequest) and op.ignore_value and op.value != b""


StoreVsModel.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestStoreVsModel = StoreVsModel.TestCase
