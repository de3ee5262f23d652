"""Table-driven tests of the MVCC store against etcd's documented behaviour.

Sources: etcd's API reference (api_reference_v3.md, the .proto comments), ``mvcc/kvstore_test.go``,
``apply/txn.go`` and ``v3rpc/key.go``, summarised in docs/ETCD_API.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest

from kvapp.errors import (
    CompactedError,
    DuplicateKeyError,
    EmptyKeyError,
    EtcdError,
    FutureRevisionError,
    GrpcCode,
    KeyNotFoundError,
    LeaseNotFoundError,
    LeaseProvidedError,
    TooManyOpsError,
    ValueProvidedError,
)
from kvapp.mvcc import (
    DEFAULT_MAX_TXN_OPS,
    NEVER_COMPACTED,
    CompactRequest,
    CompactResponse,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    EventType,
    HashKVResponse,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    SortOrder,
    SortTarget,
    Store,
    TxnRequest,
    TxnResponse,
    check_txn,
    prefix_range_end,
)

EQ, NE, GT, LT = (
    CompareResult.EQUAL,
    CompareResult.NOT_EQUAL,
    CompareResult.GREATER,
    CompareResult.LESS,
)


def keys(store: Store, key: bytes = b"\0", end: bytes = b"\0", **kw: Any) -> list[bytes]:
    return [kv.key for kv in store.range(key, end, **kw).kvs]


def filled(*pairs: tuple[bytes, bytes]) -> Store:
    s = Store()
    for k, v in pairs:
        s.put(k, v)
    return s


# -- revisions and versions --------------------------------------------------------------------


def test_a_key_value_holds_only_its_fields() -> None:
    # A store holds one per version of every key: no __dict__, no weak-reference slot.
    kv = KeyValue(b"k", 1000, 1000, 1, b"v", 0)
    assert not hasattr(kv, "__dict__")
    assert vars(KeyValue)["__slots__"] == tuple(f.name for f in attrs.fields(KeyValue))


def test_new_store_is_at_revision_1_and_empty() -> None:
    s = Store()
    assert s.revision == 1
    assert s.compact_revision == NEVER_COMPACTED == -1
    assert s.range(b"\0", b"\0") == s.range(b"\0", b"\0")
    r = s.range(b"\0", b"\0")
    assert (r.revision, r.kvs, r.count, r.more) == (1, (), 0, False)


def test_put_update_delete_recreate_lifecycle() -> None:
    """Per etcd: version counts puts since creation; a delete resets it; create_revision resets."""
    s = Store()
    assert s.put(b"k", b"v1").revision == 2
    assert s.put(b"k", b"v2").revision == 3
    assert s.get(b"k") == KeyValue(b"k", 2, 3, 2, b"v2")
    d = s.delete_range(b"k")
    assert (d.revision, d.deleted) == (4, 1)
    assert s.get(b"k") is None
    s.put(b"k", b"v3")
    assert s.get(b"k") == KeyValue(b"k", 5, 5, 1, b"v3")
    assert [s.get(b"k", r) for r in (1, 2, 3, 4, 5)] == [
        None,
        KeyValue(b"k", 2, 2, 1, b"v1"),
        KeyValue(b"k", 2, 3, 2, b"v2"),
        None,
        KeyValue(b"k", 5, 5, 1, b"v3"),
    ]


def test_delete_of_nothing_creates_no_revision() -> None:
    s = filled((b"a", b"1"))
    r = s.delete_range(b"zz")
    assert (r.revision, r.deleted, r.prev_kvs) == (2, 0, ())
    assert s.revision == 2


def test_put_prev_kv() -> None:
    s = Store()
    assert s.put(b"a", b"1", prev_kv=True).prev_kv is None
    assert s.put(b"a", b"2", prev_kv=True).prev_kv == KeyValue(b"a", 2, 2, 1, b"1")
    assert s.put(b"a", b"3").prev_kv is None


def test_delete_prev_kvs_in_key_order() -> None:
    s = filled((b"b", b"2"), (b"a", b"1"), (b"c", b"3"))
    r = s.delete_range(b"a", b"c", prev_kv=True)
    assert r.deleted == 2
    assert [kv.key for kv in r.prev_kvs] == [b"a", b"b"]
    assert keys(s) == [b"c"]


# -- range semantics -----------------------------------------------------------------------------

KEYSPACE = [b"a", b"a/1", b"a/2", b"a0", b"b", b"b\xff", b"\xff", b"\xff\xff"]


@pytest.mark.parametrize(
    ("key", "end", "want"),
    [
        pytest.param(b"a", b"", [b"a"], id="single key"),
        pytest.param(b"zz", b"", [], id="single missing key"),
        pytest.param(b"a/", prefix_range_end(b"a/"), [b"a/1", b"a/2"], id="prefix"),
        pytest.param(b"a", prefix_range_end(b"a"), [b"a", b"a/1", b"a/2", b"a0"], id="prefix a"),
        pytest.param(b"b", b"\0", [b"b", b"b\xff", b"\xff", b"\xff\xff"], id="from key on"),
        pytest.param(b"\0", b"\0", KEYSPACE, id="all keys"),
        pytest.param(b"a/1", b"a0", [b"a/1", b"a/2"], id="half-open interval"),
        pytest.param(b"b", b"a", [], id="end before key"),
        pytest.param(b"b", b"b", [], id="end equals key"),
        pytest.param(b"\xff", prefix_range_end(b"\xff"), [b"\xff", b"\xff\xff"], id="0xff prefix"),
        pytest.param(b"b", prefix_range_end(b"b"), [b"b", b"b\xff"], id="prefix with 0xff child"),
    ],
)
def test_range_end_conventions(key: bytes, end: bytes, want: list[bytes]) -> None:
    s = filled(*((k, b"v") for k in KEYSPACE))
    assert keys(s, key, end) == want
    assert s.range(key, end, count_only=True).count == len(want)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"\xff", b"\0"),
        (b"\xff\xff", b"\0"),
        (b"", b"\0"),
        (b"ab\x00", b"ab\x01"),
    ],
)
def test_prefix_range_end(prefix: bytes, end: bytes) -> None:
    assert prefix_range_end(prefix) == end


def test_range_limit_more_and_count() -> None:
    s = filled(*((bytes([c]), b"v") for c in b"abcde"))
    r = s.range(b"a", b"\0", limit=2)
    assert ([kv.key for kv in r.kvs], r.more, r.count) == ([b"a", b"b"], True, 5)
    r = s.range(b"a", b"\0", limit=5)
    assert (len(r.kvs), r.more, r.count) == (5, False, 5)
    r = s.range(b"a", b"\0", limit=0)
    assert (len(r.kvs), r.more) == (5, False)
    r = s.range(b"a", b"\0", limit=-3)
    assert (len(r.kvs), r.more) == (5, False)


def test_count_only_and_keys_only() -> None:
    s = filled((b"a", b"1"), (b"b", b"2"))
    r = s.range(b"a", b"\0", count_only=True, limit=1)
    assert (r.kvs, r.count, r.more) == ((), 2, False)
    r = s.range(b"a", b"\0", keys_only=True)
    assert [(kv.key, kv.value, kv.version) for kv in r.kvs] == [(b"a", b"", 1), (b"b", b"", 1)]


def test_historical_reads_carry_current_header_revision() -> None:
    s = filled((b"a", b"1"), (b"a", b"2"), (b"b", b"3"))
    r = s.range(b"\0", b"\0", revision=2)
    assert r.revision == 4
    assert r.kvs == (KeyValue(b"a", 2, 2, 1, b"1"),)


@pytest.mark.parametrize(
    ("revision", "error"),
    [
        (5, FutureRevisionError),
        (100, FutureRevisionError),
        (1, CompactedError),
        (2, CompactedError),
    ],
)
def test_range_revision_out_of_bounds(revision: int, error: type[EtcdError]) -> None:
    s = filled((b"a", b"1"), (b"a", b"2"), (b"a", b"3"))
    s.compact(3)
    with pytest.raises(error):
        s.range(b"a", revision=revision)
    assert s.range(b"a", revision=3).kvs[0].value == b"2"
    assert s.range(b"a", revision=4).kvs[0].value == b"3"


def test_range_of_empty_key_is_rejected() -> None:
    with pytest.raises(EmptyKeyError):
        Store().range(b"")


def _sort_store() -> Store:
    s = Store()
    s.put(b"c", b"1")  # rev 2
    s.put(b"a", b"3")  # rev 3
    s.put(b"b", b"2")  # rev 4
    s.put(b"c", b"0")  # rev 5: c version 2
    return s


@pytest.mark.parametrize(
    ("order", "target", "limit", "want", "more"),
    [
        (SortOrder.NONE, SortTarget.KEY, 0, b"abc", False),
        (SortOrder.ASCEND, SortTarget.KEY, 0, b"abc", False),
        (SortOrder.DESCEND, SortTarget.KEY, 0, b"cba", False),
        (SortOrder.DESCEND, SortTarget.KEY, 2, b"cb", True),
        (SortOrder.ASCEND, SortTarget.CREATE, 0, b"cab", False),
        (SortOrder.DESCEND, SortTarget.CREATE, 1, b"b", True),
        (SortOrder.ASCEND, SortTarget.MOD, 0, b"abc", False),
        (SortOrder.DESCEND, SortTarget.MOD, 0, b"cba", False),
        (SortOrder.ASCEND, SortTarget.VALUE, 0, b"cba", False),
        (SortOrder.DESCEND, SortTarget.VALUE, 0, b"abc", False),
        (SortOrder.DESCEND, SortTarget.VERSION, 0, b"cab", False),  # ties keep key order
        (SortOrder.ASCEND, SortTarget.VERSION, 0, b"abc", False),
        # etcd: a non-key target with order NONE sorts ascending, but only what the limit
        # fetched (limit + 1 keys in key order), and then cuts to the limit.
        (SortOrder.NONE, SortTarget.VALUE, 0, b"cba", False),
        (SortOrder.NONE, SortTarget.CREATE, 1, b"a", True),
    ],
)
def test_sort(order: SortOrder, target: SortTarget, limit: int, want: bytes, more: bool) -> None:
    r = _sort_store().range(b"a", b"\0", sort_order=order, sort_target=target, limit=limit)
    assert bytes(kv.key[0] for kv in r.kvs) == want
    assert r.more is more
    assert r.count == 3


@pytest.mark.parametrize(
    ("filters", "want"),
    [
        ({"min_mod_revision": 4}, b"bc"),
        ({"max_mod_revision": 4}, b"ab"),
        ({"min_create_revision": 3}, b"ab"),
        ({"max_create_revision": 3}, b"ac"),
        ({"min_mod_revision": 3, "max_mod_revision": 4}, b"ab"),
        ({"min_create_revision": 3, "limit": 1}, b"a"),
    ],
)
def test_revision_filters_apply_before_limit_and_do_not_change_count(
    filters: dict[str, int], want: bytes
) -> None:
    r = _sort_store().range(b"a", b"\0", **filters)  # type: ignore[arg-type]
    assert bytes(kv.key[0] for kv in r.kvs) == want
    assert r.count == 3
    assert r.more is (filters.get("limit", 0) > 0 and len(want) == filters["limit"])


# -- put options ---------------------------------------------------------------------------------


def test_ignore_value_keeps_value_and_bumps_version() -> None:
    s = filled((b"k", b"v"))
    s.put(b"k", ignore_value=True, lease=7)
    assert s.get(b"k") == KeyValue(b"k", 2, 3, 2, b"v", 7)


def test_ignore_lease_keeps_lease() -> None:
    s = Store()
    s.put(b"k", b"v", lease=7)
    s.put(b"k", b"w", ignore_lease=True)
    assert s.get(b"k") == KeyValue(b"k", 2, 3, 2, b"w", 7)
    assert s.lease_keys(7) == {b"k"}


def test_put_without_lease_detaches() -> None:
    s = Store()
    s.put(b"k", b"v", lease=7)
    s.put(b"k2", b"v", lease=7)
    s.put(b"k", b"w")
    assert s.lease_keys(7) == {b"k2"}
    s.put(b"k2", b"w", lease=8)
    assert s.lease_keys(7) == frozenset()
    assert s.lease_keys(8) == {b"k2"}
    s.delete_range(b"k2")
    assert s.lease_keys(8) == frozenset()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"key": b""}, EmptyKeyError),
        ({"key": b"k", "value": b"x", "ignore_value": True}, ValueProvidedError),
        ({"key": b"k", "lease": 1, "ignore_lease": True}, LeaseProvidedError),
        ({"key": b"missing", "ignore_value": True}, KeyNotFoundError),
        ({"key": b"missing", "ignore_lease": True}, KeyNotFoundError),
        ({"key": b"k", "lease": 99}, LeaseNotFoundError),
    ],
)
def test_put_errors(kwargs: dict[str, Any], error: type[EtcdError]) -> None:
    s = filled((b"k", b"v"))
    s.lease_exists = lambda lease: lease == 1
    before = s.hash_kv()
    with pytest.raises(error):
        s.apply(PutRequest(**kwargs))
    assert s.hash_kv() == before
    assert s.revision == 2


def test_put_with_existing_lease_passes_the_check() -> None:
    s = Store()
    s.lease_exists = lambda lease: lease == 1
    s.put(b"k", b"v", lease=1)
    assert s.lease_keys(1) == {b"k"}


@pytest.mark.parametrize(
    ("error", "text", "code"),
    [
        (
            CompactedError,
            "etcdserver: mvcc: required revision has been compacted",
            GrpcCode.OUT_OF_RANGE,
        ),
        (
            FutureRevisionError,
            "etcdserver: mvcc: required revision is a future revision",
            GrpcCode.OUT_OF_RANGE,
        ),
        (EmptyKeyError, "etcdserver: key is not provided", GrpcCode.INVALID_ARGUMENT),
        (KeyNotFoundError, "etcdserver: key not found", GrpcCode.INVALID_ARGUMENT),
        (ValueProvidedError, "etcdserver: value is provided", GrpcCode.INVALID_ARGUMENT),
        (LeaseProvidedError, "etcdserver: lease is provided", GrpcCode.INVALID_ARGUMENT),
        (
            TooManyOpsError,
            "etcdserver: too many operations in txn request",
            GrpcCode.INVALID_ARGUMENT,
        ),
        (
            DuplicateKeyError,
            "etcdserver: duplicate key given in txn request",
            GrpcCode.INVALID_ARGUMENT,
        ),
        (LeaseNotFoundError, "etcdserver: requested lease not found", GrpcCode.NOT_FOUND),
    ],
)
def test_error_texts_and_codes_are_etcds(error: type[EtcdError], text: str, code: GrpcCode) -> None:
    assert str(error()) == text
    assert str(error("some detail")) == text
    assert error.code is code


# -- txn -----------------------------------------------------------------------------------------


def _txn_store() -> Store:
    s = Store()
    s.put(b"k", b"v", lease=5)  # rev 2
    s.put(b"k", b"w", lease=5)  # rev 3: create 2, mod 3, version 2
    s.put(b"k2", b"x")  # rev 4
    return s


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (Compare(b"k", CompareTarget.VERSION, EQ, 2), True),
        (Compare(b"k", CompareTarget.VERSION, GT, 1), True),
        (Compare(b"k", CompareTarget.VERSION, LT, 2), False),
        (Compare(b"k", CompareTarget.VERSION, NE, 2), False),
        (Compare(b"k", CompareTarget.CREATE, EQ, 2), True),
        (Compare(b"k", CompareTarget.MOD, EQ, 3), True),
        (Compare(b"k", CompareTarget.MOD, LT, 4), True),
        (Compare(b"k", CompareTarget.VALUE, EQ, b"w"), True),
        (Compare(b"k", CompareTarget.VALUE, GT, b"v"), True),
        (Compare(b"k", CompareTarget.VALUE, LT, b"w\x00"), True),
        (Compare(b"k", CompareTarget.LEASE, EQ, 5), True),
        (Compare(b"k", CompareTarget.LEASE, EQ, 0), False),
        # A missing key compares as zero ...
        (Compare(b"nope", CompareTarget.CREATE, EQ, 0), True),
        (Compare(b"nope", CompareTarget.VERSION, EQ, 0), True),
        (Compare(b"nope", CompareTarget.MOD, LT, 1), True),
        (Compare(b"nope", CompareTarget.LEASE, EQ, 0), True),
        # ... except that a value compare on missing keys always fails, even with "".
        (Compare(b"nope", CompareTarget.VALUE, EQ, b""), False),
        (Compare(b"nope", CompareTarget.VALUE, NE, b"x"), False),
        # Over a range, every key must satisfy the compare.
        (Compare(b"k", CompareTarget.VERSION, GT, 0, range_end=b"\0"), True),
        (Compare(b"k", CompareTarget.VERSION, EQ, 2, range_end=b"\0"), False),
        (Compare(b"k", CompareTarget.MOD, GT, 2, range_end=prefix_range_end(b"k")), True),
        (Compare(b"x", CompareTarget.VERSION, EQ, 0, range_end=b"y"), True),
        (Compare(b"x", CompareTarget.VALUE, EQ, b"", range_end=b"y"), False),
    ],
)
def test_compare(compare: Compare, holds: bool) -> None:
    s = _txn_store()
    r = s.txn([compare], [RangeRequest(b"k")], [])
    assert r.succeeded is holds
    assert len(r.responses) == (1 if holds else 0)
    assert s.revision == 4


def test_compare_operand_type_must_match_target() -> None:
    with pytest.raises(TypeError):
        Compare(b"k", CompareTarget.VALUE, EQ, 1)
    with pytest.raises(TypeError):
        Compare(b"k", CompareTarget.VERSION, EQ, b"1")
    with pytest.raises(TypeError):
        Compare(b"k", CompareTarget.VERSION, EQ, True)


def test_txn_writes_share_one_revision_in_op_order() -> None:
    s = _txn_store()
    seen: list[tuple[int, list[Event]]] = []

    class Recorder:
        def on_commit(self, revision: int, events: Any) -> None:
            seen.append((revision, list(events)))

        def on_restore(self) -> None:
            raise AssertionError

    s.add_listener(Recorder())
    r = s.txn(
        [],
        [
            PutRequest(b"z", b"1"),
            DeleteRangeRequest(b"k", prev_kv=True),
            PutRequest(b"a", b"2"),
            RangeRequest(b"\0", b"\0"),
        ],
    )
    assert r.revision == 5
    assert r.succeeded
    assert [kv.key for kv in r.responses[3].kvs] == [b"a", b"k2", b"z"]  # type: ignore[union-attr]
    assert r.responses[3].revision == 5
    assert [kv.mod_revision for kv in r.responses[3].kvs] == [5, 4, 5]  # type: ignore[union-attr]
    ((rev, events),) = seen
    assert rev == 5
    assert [(e.type, e.kv.key) for e in events] == [
        (EventType.PUT, b"z"),
        (EventType.DELETE, b"k"),
        (EventType.PUT, b"a"),
    ]
    assert events[1].prev_kv == KeyValue(b"k", 2, 3, 2, b"w", 5)
    assert events[1].kv == KeyValue(b"k", 0, 5, 0)


def test_read_only_txn_creates_no_revision() -> None:
    s = _txn_store()
    r = s.txn([Compare(b"k", CompareTarget.VALUE, EQ, b"nope")], [], [RangeRequest(b"k")])
    assert not r.succeeded
    assert r.revision == 4
    assert s.revision == 4
    r = s.txn([], [DeleteRangeRequest(b"missing")])
    assert r.revision == 4


def test_range_in_txn_before_a_write_sees_the_old_state() -> None:
    s = _txn_store()
    r = s.txn([], [RangeRequest(b"k"), PutRequest(b"k", b"new"), RangeRequest(b"k")])
    before, _put, after = r.responses
    assert before.revision == 4
    assert before.kvs[0].value == b"w"  # type: ignore[union-attr]
    assert after.revision == 5
    assert after.kvs[0].value == b"new"  # type: ignore[union-attr]


def test_nested_txn_compares_see_the_state_before_the_outer_txn() -> None:
    """etcd evaluates every compare of the txn tree (compareToPath) before executing anything."""
    s = _txn_store()
    inner = TxnRequest(
        [Compare(b"new", CompareTarget.VERSION, EQ, 0)],
        [PutRequest(b"seen-absent", b"1")],
        [PutRequest(b"seen-present", b"1")],
    )
    r = s.txn([], [PutRequest(b"new", b"1"), inner])
    assert r.responses[1].succeeded  # type: ignore[union-attr]
    assert keys(s, b"seen", prefix_range_end(b"seen")) == [b"seen-absent"]
    assert s.revision == 5


def test_lock_recipe_txn() -> None:
    """etcdctl lock / concurrency.Mutex: create my key if absent, else read it, in one txn."""
    s = Store()
    create = [Compare(b"lock/1", CompareTarget.CREATE, EQ, 0)]
    put = [PutRequest(b"lock/1", b"", lease=1)]
    get = [RangeRequest(b"lock/1")]
    first = s.txn(create, put, get)
    second = s.txn(create, put, get)
    assert first.succeeded
    assert not second.succeeded
    assert second.responses[0].kvs[0].create_revision == first.revision  # type: ignore[union-attr]
    owner = s.range(
        b"lock/",
        prefix_range_end(b"lock/"),
        sort_target=SortTarget.CREATE,
        sort_order=SortOrder.ASCEND,
        limit=1,
    )
    assert owner.kvs[0].key == b"lock/1"


@pytest.mark.parametrize(
    ("success", "error"),
    [
        pytest.param(
            [PutRequest(b"a", b"1"), PutRequest(b"missing", ignore_value=True)],
            KeyNotFoundError,
            id="ignore_value on missing key after a put",
        ),
        pytest.param(
            [PutRequest(b"a", b"1"), PutRequest(b"b", b"2", lease=42)],
            LeaseNotFoundError,
            id="unknown lease after a put",
        ),
        pytest.param(
            [PutRequest(b"a", b"1"), RangeRequest(b"a", revision=99)],
            FutureRevisionError,
            id="range at future revision",
        ),
        pytest.param(
            [PutRequest(b"a", b"1"), RangeRequest(b"a", revision=2)],
            CompactedError,
            id="range at compacted revision",
        ),
        pytest.param(
            [PutRequest(b"a", b"1"), TxnRequest([], [PutRequest(b"x", ignore_lease=True)])],
            KeyNotFoundError,
            id="nested put cannot apply",
        ),
    ],
)
def test_txn_is_all_or_nothing(success: list[Any], error: type[EtcdError]) -> None:
    s = _txn_store()
    s.put(b"k", b"again")  # rev 5
    s.compact(3)
    s.lease_exists = lambda lease: lease == 5
    before = (s.revision, s.hash_kv())
    with pytest.raises(error):
        s.txn([], success)
    assert (s.revision, s.hash_kv()) == before


def test_failing_branch_errors_are_not_checked() -> None:
    """Only the chosen path is checked against the store (etcd's checkTxn walks txnPath)."""
    s = _txn_store()
    r = s.txn([], [PutRequest(b"a", b"1")], [RangeRequest(b"a", revision=99)])
    assert r.succeeded


def _puts(n: int, prefix: bytes = b"k") -> list[Any]:
    return [PutRequest(prefix + str(i).encode(), b"") for i in range(n)]


@pytest.mark.parametrize(
    ("txn", "ok"),
    [
        (TxnRequest([], _puts(128)), True),
        (TxnRequest([], _puts(129)), False),
        (TxnRequest([Compare(b"k", CompareTarget.VERSION, EQ, 0)] * 129, []), False),
        (TxnRequest([], [], _puts(129)), False),
        # A nested txn gets what its parent leaves: 128 - max(len(...)) of the parent, where
        # the nested txn itself is one of the parent's operations.
        (TxnRequest([], [*_puts(100), TxnRequest([], _puts(27, b"n"))]), True),
        (TxnRequest([], [*_puts(100), TxnRequest([], _puts(28, b"n"))]), False),
        (TxnRequest([], [*_puts(127, b"a"), TxnRequest([], _puts(1, b"n"))]), False),
    ],
)
def test_max_txn_ops(txn: TxnRequest, ok: bool) -> None:
    s = Store()
    if ok:
        s.apply(txn)
    else:
        with pytest.raises(TooManyOpsError):
            s.apply(txn)


def test_max_txn_ops_is_configurable_and_can_be_disabled() -> None:
    with pytest.raises(TooManyOpsError):
        Store(max_txn_ops=2).txn([], _puts(3))
    assert Store(max_txn_ops=None).txn([], _puts(1000)).revision == 2


P, D, T = PutRequest, DeleteRangeRequest, TxnRequest


@pytest.mark.parametrize(
    ("success", "duplicate"),
    [
        ([P(b"a"), P(b"a")], True),
        ([P(b"a"), P(b"b")], False),
        ([P(b"a"), D(b"a")], True),
        ([D(b"a"), P(b"a")], True),
        ([D(b"a", b"c"), P(b"b")], True),
        ([D(b"a", b"c"), P(b"c")], False),
        ([D(b"a"), D(b"a")], False),
        ([D(b"a", b"z"), D(b"b")], False),
        ([D(b"b", b"a"), P(b"a")], False),  # an empty delete range covers nothing
        # etcd compares range ends as plain strings, so [k, "\0") is empty too
        ([D(b"b", b"\0"), P(b"c")], False),
        ([D(b"b", b"\0"), P(b"b")], False),
        ([D(b"\0", b"\0"), P(b"c")], False),
        ([D(b"\0", b"\0\0"), P(b"\0")], True),  # only b"\0" itself is special
        # nested: puts against the parent's deletes and earlier siblings
        ([D(b"a"), T([], [P(b"a")])], True),
        ([T([], [P(b"a")]), P(b"a")], True),
        ([T([], [P(b"a")], [P(b"a")])], False),  # then/else are exclusive
        ([T([], [P(b"a")]), T([], [P(b"a")])], True),
        ([T([], [D(b"a")]), P(b"a")], True),
        ([T([], [D(b"a")]), T([], [P(b"a")])], True),
        # etcd's check is order-dependent: a nested put before a sibling's delete passes.
        ([T([], [P(b"a")]), T([], [D(b"a")])], False),
        # ... and a delete ending in b"\0" conflicts with nothing at any depth
        ([T([], [D(b"b", b"\0")]), P(b"c")], False),
        ([D(b"b", b"\0"), T([], [P(b"c")])], False),
        ([T([], [D(b"b", b"\0")]), T([], [P(b"c")], [P(b"d")])], False),
        ([T([], [], [D(b"\0", b"\0")]), T([], [T([], [P(b"c")])])], False),
    ],
)
def test_duplicate_key_rules(success: list[Any], duplicate: bool) -> None:
    s = Store()
    if duplicate:
        with pytest.raises(DuplicateKeyError):
            s.txn([], success)
        with pytest.raises(DuplicateKeyError):
            s.txn([], [], success)
    else:
        s.txn([], success)


def test_put_then_delete_of_one_key_in_one_revision() -> None:
    """The one shape etcd's duplicate check lets through: both versions share a revision."""
    s = filled((b"a", b"0"))
    s.txn([], [T([], [P(b"a", b"1")]), T([], [D(b"a", prev_kv=True)])])
    assert s.get(b"a") is None
    assert s.get(b"a", 2) == KeyValue(b"a", 2, 2, 1, b"0")
    changes = list(s.changes(3, 3))
    assert changes == [KeyValue(b"a", 2, 3, 2, b"1"), KeyValue(b"a", 0, 3, 0)]
    # etcd reads an event's prev_kv at the revision before it: the key as of revision 2 for
    # both (not the put at 3 for the delete); the put did not create the key, so it has one.
    assert s.prev_version(changes[1]) == KeyValue(b"a", 2, 2, 1, b"0")
    assert s.prev_version(changes[0]) == KeyValue(b"a", 2, 2, 1, b"0")
    s.compact(3)
    assert keys(s) == []


@pytest.mark.parametrize(
    "request_",
    [
        RangeRequest(b""),
        DeleteRangeRequest(b""),
        PutRequest(b""),
        TxnRequest([Compare(b"", CompareTarget.VERSION, EQ, 0)]),
        TxnRequest([], [RangeRequest(b"")]),
        TxnRequest([], [], [DeleteRangeRequest(b"")]),
        TxnRequest([], [TxnRequest([], [PutRequest(b"")])]),
    ],
)
def test_empty_keys_are_rejected_everywhere(request_: Any) -> None:
    with pytest.raises(EmptyKeyError):
        Store().apply(request_)


def test_a_delete_to_the_end_and_a_put_it_covers_run_in_branch_order() -> None:
    """etcd 3.4 accepts this pair (verified against 3.4.23); the put recreates the key."""
    s = filled((b"a", b"1"), (b"b", b"1"), (b"c", b"1"))  # revisions 2..4
    r = s.txn([], [D(b"b", b"\0", prev_kv=True), P(b"c", b"2", prev_kv=True)])
    assert r.revision == 5
    assert r.responses == (
        DeleteRangeResponse(5, 2, (KeyValue(b"b", 3, 3, 1, b"1"), KeyValue(b"c", 4, 4, 1, b"1"))),
        PutResponse(5, None),  # the key was gone when the put ran
    )
    assert s.get(b"c") == KeyValue(b"c", 5, 5, 1, b"2")
    assert keys(s) == [b"a", b"c"]
    assert [(kv.key, kv.version) for kv in s.changes(5, 5)] == [(b"b", 0), (b"c", 0), (b"c", 1)]


def test_the_proposers_duplicate_check_accepts_a_delete_to_the_end_with_a_covered_put() -> None:
    check_txn([], [D(b"b", b"\0"), P(b"c")], [], DEFAULT_MAX_TXN_OPS)
    check_txn([], [], [T([], [D(b"b", b"\0")]), P(b"c")], DEFAULT_MAX_TXN_OPS)
    with pytest.raises(DuplicateKeyError):
        check_txn([], [D(b"b", b"d"), P(b"c")], [], DEFAULT_MAX_TXN_OPS)


@pytest.mark.parametrize(
    "success",
    [
        [D(b"b", b"\0"), P(b"c", ignore_value=True)],
        [D(b"\0", b"\0"), P(b"a", ignore_lease=True)],
        [T([], [D(b"b", b"\0")]), P(b"c", ignore_value=True)],
        [D(b"b", b"\0"), T([], [T([], [P(b"c", ignore_value=True)])])],
        [D(b"x", b"\0"), T([], [D(b"b", b"\0")]), P(b"c", ignore_value=True)],
    ],
)
def test_an_ignore_put_of_a_key_deleted_earlier_in_the_txn_is_refused(success: list[Any]) -> None:
    """etcd 3.4 lets this txn through its checks and then panics applying it; kvapp refuses it."""
    s = filled((b"a", b"1"), (b"c", b"1"))
    before = (s.revision, s.hash_kv())
    with pytest.raises(KeyNotFoundError):
        s.txn([], success)
    assert (s.revision, s.hash_kv()) == before


@pytest.mark.parametrize(
    "success",
    [
        [P(b"c", ignore_value=True), D(b"b", b"\0")],  # the put runs before the delete
        [D(b"b", b"\0"), P(b"a", ignore_value=True)],  # the delete does not cover the key
        [T([], [P(b"c", ignore_value=True)]), T([], [D(b"b", b"\0")])],
        [  # the delete is in the branch not taken
            T([Compare(b"a", CompareTarget.VERSION, EQ, 0)], [D(b"b", b"\0")]),
            P(b"c", ignore_value=True),
        ],
    ],
)
def test_an_ignore_put_not_preceded_by_a_delete_of_its_key_applies(success: list[Any]) -> None:
    s = filled((b"a", b"1"), (b"c", b"1"))
    s.txn([], success)
    assert s.revision == 4


def test_etcds_own_checks_answer_before_the_deleted_key_check() -> None:
    """etcd answers this txn (its range check fails before it could panic), so kvapp must too."""
    s = filled((b"a", b"1"), (b"c", b"1"))
    with pytest.raises(FutureRevisionError):
        s.txn([], [D(b"b", b"\0"), P(b"c", ignore_value=True), RangeRequest(b"a", revision=99)])


def test_a_plain_put_reports_a_missing_lease_before_a_missing_key() -> None:
    """applierV3backend.Put (etcd 3.4 apply.go) looks the lease up before it reads the key."""
    s = Store()
    s.lease_exists = lambda lease: False
    with pytest.raises(LeaseNotFoundError):
        s.put(b"missing", ignore_value=True, lease=7)
    with pytest.raises(LeaseNotFoundError):
        s.apply(PutRequest(b"missing", ignore_value=True, lease=7))


def test_a_put_in_a_txn_reports_a_missing_key_before_a_missing_lease() -> None:
    """checkRequestPut (etcd 3.4 apply.go) reads the key first."""
    s = Store()
    s.lease_exists = lambda lease: False
    with pytest.raises(KeyNotFoundError):
        s.txn([], [PutRequest(b"missing", ignore_value=True, lease=7)])


@pytest.mark.parametrize(
    ("success", "error"),
    [
        ([RangeRequest(b"a", revision=99), P(b"b", lease=7)], LeaseNotFoundError),
        ([RangeRequest(b"a", revision=1), P(b"missing", ignore_value=True)], KeyNotFoundError),
        ([T([], [RangeRequest(b"a", revision=99)]), P(b"b", lease=7)], LeaseNotFoundError),
        (
            [RangeRequest(b"a", revision=99), T([], [T([], [P(b"missing", ignore_lease=True)])])],
            KeyNotFoundError,
        ),
        # ranges among themselves, and puts among themselves, go in path order
        ([RangeRequest(b"a", revision=1), RangeRequest(b"a", revision=99)], CompactedError),
        (
            [T([], [RangeRequest(b"a", revision=99)]), RangeRequest(b"a", revision=1)],
            FutureRevisionError,
        ),
        ([P(b"missing", ignore_value=True), P(b"b", lease=7)], KeyNotFoundError),
        ([T([], [P(b"b", lease=7)]), P(b"missing", ignore_value=True)], LeaseNotFoundError),
    ],
)
def test_a_txn_checks_every_put_before_any_range(
    success: list[Any], error: type[EtcdError]
) -> None:
    """etcd 3.4's Txn runs checkRequests with checkRequestPut, then with checkRequestRange."""
    s = filled((b"a", b"1"), (b"a", b"2"), (b"a", b"3"))
    s.compact(3)
    s.lease_exists = lambda lease: False
    with pytest.raises(error):
        s.txn([], success)


def test_a_nested_txns_response_revision_is_zero() -> None:
    """etcd 3.4's newTxnResp leaves nested txn headers empty; the ops inside keep theirs."""
    s = filled((b"k", b"1"))  # revision 2
    r = s.txn(
        [],
        [
            T([], [RangeRequest(b"k")]),
            P(b"a", b"1"),
            T([], [T([], [RangeRequest(b"a"), D(b"nothing")])]),
        ],
    )
    first, put, second = r.responses
    assert r.revision == 3
    assert isinstance(first, TxnResponse)
    assert first.revision == 0
    assert first.responses == (RangeResponse(2, (KeyValue(b"k", 2, 2, 1, b"1"),), False, 1),)
    assert put == PutResponse(3)
    assert isinstance(second, TxnResponse)
    assert second.revision == 0
    (innermost,) = second.responses
    assert isinstance(innermost, TxnResponse)
    assert innermost.revision == 0
    assert [resp.revision for resp in innermost.responses] == [3, 3]
    read_only = s.txn([], [T([], [RangeRequest(b"k")])])
    assert read_only.revision == 3
    assert read_only.responses[0].revision == 0


@pytest.mark.parametrize(
    ("compact_at", "revision", "error"),
    [
        (None, -1, None),
        (None, -2, CompactedError),
        (None, -100, CompactedError),
        (0, -1, CompactedError),
        (3, -1, CompactedError),
        (3, 2, CompactedError),
        (3, 3, None),
    ],
)
def test_a_range_revision_in_a_txn_is_judged_against_the_compacted_revision(
    compact_at: int | None, revision: int, error: type[EtcdError] | None
) -> None:
    """checkRequestRange: a non-zero revision below the compacted one (-1 if none) fails.

    That rule reaches negative revisions too; see the store's module doc.
    """
    s = filled((b"a", b"1"), (b"a", b"2"), (b"a", b"3"))  # revisions 2..4
    if compact_at is not None:
        s.compact(compact_at)
    if error is not None:
        with pytest.raises(error):
            s.txn([], [RangeRequest(b"a", revision=revision)])
        return
    (got,) = s.txn([], [RangeRequest(b"a", revision=revision)]).responses
    assert isinstance(got, RangeResponse)
    assert got.revision == 4
    assert got.kvs[0].value == (b"3" if revision < 0 else b"2")


def test_a_negative_range_revision_outside_a_txn_reads_now() -> None:
    """rangeKeys (etcd 3.4 mvcc/kvstore_txn.go) reads the current revision for rev <= 0."""
    s = filled((b"a", b"1"), (b"a", b"2"))
    s.compact(3)
    assert s.range(b"a", revision=-5) == s.range(b"a")
    assert s.apply(RangeRequest(b"a", revision=-5)) == s.range(b"a")
    assert s.get(b"a", -5) == s.get(b"a")


# -- compaction ----------------------------------------------------------------------------------


def test_compaction_keeps_the_state_at_the_compacted_revision_and_after() -> None:
    s = Store()
    s.put(b"a", b"1")  # 2
    s.put(b"a", b"2")  # 3
    s.put(b"b", b"1")  # 4
    s.delete_range(b"b")  # 5
    s.put(b"c", b"1")  # 6
    s.put(b"a", b"3")  # 7
    states = {rev: s.range(b"\0", b"\0", revision=rev).kvs for rev in range(5, 8)}
    s.compact(5)
    assert s.compact_revision == 5
    for rev, kvs in states.items():
        assert s.range(b"\0", b"\0", revision=rev).kvs == kvs
    for rev in (1, 2, 3, 4):
        with pytest.raises(CompactedError):
            s.range(b"a", revision=rev)
    assert [kv.mod_revision for kv in s.changes(5, 7)] == [5, 6, 7]
    with pytest.raises(CompactedError):
        s.changes(4, 7)


def test_compaction_forgets_deleted_keys() -> None:
    s = filled((b"a", b"1"), (b"b", b"1"))
    s.delete_range(b"a")  # 4
    s.compact(4)
    assert keys(s, revision=4) == [b"b"]
    s.put(b"a", b"2")
    assert s.get(b"a") == KeyValue(b"a", 5, 5, 1, b"2")


@pytest.mark.parametrize(
    ("compact_at", "error"),
    [
        (3, CompactedError),
        (2, CompactedError),
        (0, CompactedError),
        (-1, CompactedError),
        (6, FutureRevisionError),
    ],
)
def test_compact_errors(compact_at: int, error: type[EtcdError]) -> None:
    s = filled((b"a", b"1"), (b"a", b"2"), (b"a", b"3"))
    s.compact(3)
    with pytest.raises(error):
        s.apply(CompactRequest(compact_at))
    assert s.compact_revision == 3


def test_compaction_at_the_current_revision() -> None:
    s = filled((b"a", b"1"), (b"a", b"2"))
    s.compact(3)
    assert s.range(b"a").kvs[0].value == b"2"
    assert s.put(b"a", b"3").revision == 4


def test_repeated_compaction_of_a_hot_key() -> None:
    s = Store()
    for i in range(50):
        s.put(b"hot", str(i).encode())
        s.put(b"cold" + str(i).encode(), b"x")
        if i % 10 == 9:
            s.compact(s.revision - 1)
    assert s.get(b"hot") == KeyValue(b"hot", 2, 100, 50, b"49")
    assert s.range(b"cold", prefix_range_end(b"cold"), count_only=True).count == 50
    assert len(s.changes(s.compact_revision, s.revision)) == 2


def test_compact_zero_succeeds_once_on_a_never_compacted_store() -> None:
    """etcd's compactMainRev starts at -1 (etcd 3.4 mvcc/kvstore.go, updateCompactRev)."""
    s = filled((b"a", b"1"))
    before = s.hash_kv()
    assert before.compact_revision == NEVER_COMPACTED
    assert s.apply(CompactRequest(0)) == CompactResponse(2)
    assert s.compact_revision == 0
    assert s.hash_kv() == HashKVResponse(before.hash, 0, 2)
    assert s.range(b"a", revision=1).kvs == ()
    with pytest.raises(CompactedError):
        s.compact(0)
    s.compact(1)
    assert s.compact_revision == 1


def test_compact_zero_on_an_empty_store() -> None:
    s = Store()
    assert s.compact(0) == CompactResponse(1)
    assert (s.compact_revision, s.revision) == (0, 1)


@pytest.mark.parametrize("revision", [-1, -2, -100])
def test_a_negative_compaction_is_compacted_even_on_a_fresh_store(revision: int) -> None:
    s = filled((b"a", b"1"))
    with pytest.raises(CompactedError):
        s.compact(revision)
    assert s.compact_revision == NEVER_COMPACTED


# -- hashing -------------------------------------------------------------------------------------


def _history(s: Store) -> None:
    s.put(b"a", b"1")
    s.put(b"b", b"2", lease=3)
    s.txn([], [PutRequest(b"c", b"3"), DeleteRangeRequest(b"a")])
    s.put(b"a", b"4")


def test_hash_is_deterministic_and_sensitive() -> None:
    one, two, other = Store(), Store(), Store()
    _history(one)
    _history(two)
    _history(other)
    other.put(b"a", b"5")
    assert one.hash_kv() == two.hash_kv()
    assert one.hash_kv().hash != other.hash_kv().hash
    assert one.hash_kv(4) == other.hash_kv(4)
    assert one.hash_kv().hash_revision == 5


def test_hash_revision_rules_are_etcd_34s() -> None:
    """etcd 3.4's HashByRev: refused at or below the compacted revision, above the current one.

    etcd 3.4.23 answered HashKV at revision 4 after ``compaction 4`` with "mvcc: required
    revision has been compacted" (3.5 accepts it), and at -1 and -5 with the same hash, the
    CRC of no key at all.
    """
    s = Store()
    _history(s)
    s.compact(3)
    for revision in (1, 2, 3):
        with pytest.raises(CompactedError):
            s.hash_kv(revision)
    with pytest.raises(FutureRevisionError):
        s.hash_kv(6)
    assert s.hash_kv(4).compact_revision == 3
    assert s.hash_kv(0) == s.hash_kv(5)
    empty = Store().hash_kv().hash  # nothing ever written
    assert [s.hash_kv(r) for r in (-1, -5)] == [
        HashKVResponse(empty, 3, -1),
        HashKVResponse(empty, 3, -5),
    ]
    assert empty != s.hash_kv().hash


def test_hash_at_the_current_revision_once_compacted_there() -> None:
    s = Store()
    _history(s)
    s.compact(5)
    with pytest.raises(CompactedError):
        s.hash_kv(5)
    assert s.hash_kv().hash_revision == 5


@pytest.mark.parametrize("revision", [-1, -2])
def test_hash_at_a_negative_revision_on_a_never_compacted_store(revision: int) -> None:
    s = Store()
    _history(s)
    assert s.hash_kv(revision) == HashKVResponse(Store().hash_kv().hash, NEVER_COMPACTED, revision)


def test_compacting_two_replicas_at_the_same_revision_keeps_hashes_equal() -> None:
    one, two = Store(), Store()
    _history(one)
    one.compact(4)
    _history(two)
    two.compact(3)
    two.compact(4)
    assert one.hash_kv() == two.hash_kv()


# -- snapshot parts ------------------------------------------------------------------------------


def _copy(s: Store) -> Store:
    return Store.from_snapshot(
        s.revision, s.compact_revision, list(s.snapshot_base()), list(s.snapshot_log())
    )


@pytest.mark.parametrize("compact_at", [None, 2, 3, 4, 5])
def test_from_snapshot_rebuilds_an_identical_store(compact_at: int | None) -> None:
    s = Store()
    _history(s)
    if compact_at:
        s.compact(compact_at)
    c = _copy(s)
    assert c.hash_kv() == s.hash_kv()
    for rev in range(max(s.compact_revision, 1), s.revision + 1):
        assert c.range(b"\0", b"\0", revision=rev) == s.range(b"\0", b"\0", revision=rev)
    assert list(c.changes(s.compact_revision, 99)) == list(s.changes(s.compact_revision, 99))
    assert c.lease_keys(3) == s.lease_keys(3) == {b"b"}
    for store in (s, c):
        store.put(b"z", b"1")
        store.compact(store.revision)
    assert c.hash_kv() == s.hash_kv()


@pytest.mark.parametrize("compact_at", [None, 0])
def test_from_snapshot_keeps_never_compacted_apart_from_compacted_at_zero(
    compact_at: int | None,
) -> None:
    """A member restored from a snapshot must answer a later Compact(0) as the others do."""
    s = Store()
    _history(s)
    if compact_at is not None:
        s.compact(compact_at)
    c = _copy(s)
    assert c.compact_revision == s.compact_revision
    assert c.hash_kv() == s.hash_kv()
    for store in (s, c):
        if compact_at is None:
            store.compact(0)
        else:
            with pytest.raises(CompactedError):
                store.compact(0)
        assert store.compact_revision == 0


@pytest.mark.parametrize(
    "mangle",
    [
        lambda rev, cr, base, log: (0, cr, base, log),
        lambda rev, cr, base, log: (rev, rev + 1, base, log),
        lambda rev, cr, base, log: (rev, cr, base + base[:1], log),
        lambda rev, cr, base, log: (rev, cr, base, log[::-1]),
        lambda rev, cr, base, log: (rev - 1, cr, base, log),
        lambda rev, cr, base, log: (rev, cr, [KeyValue(b"q", 0, 1, 0)], log),
        lambda rev, cr, base, log: (rev, -2, [], log),
        lambda rev, cr, base, log: (rev, -1, base, log),
    ],
)
def test_from_snapshot_rejects_inconsistent_parts(mangle: Callable[..., Any]) -> None:
    s = Store()
    _history(s)
    s.put(b"d", b"1")
    s.compact(3)
    args = mangle(s.revision, s.compact_revision, list(s.snapshot_base()), list(s.snapshot_log()))
    with pytest.raises(ValueError):  # noqa: PT011
        Store.from_snapshot(*args)
