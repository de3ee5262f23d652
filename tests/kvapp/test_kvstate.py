"""The whole state: command dispatch, snapshot -> restore -> identical hash, hostile input."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvapp import kvstate
from kvapp.errors import EtcdError, KeyNotFoundError, LeaseNotFoundError, StateSnapshotError
from kvapp.kvstate import FORMAT, Command, KvState
from kvapp.lease import (
    LeaseCheckpoint,
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
)
from kvapp.mvcc import (
    CompactRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    EventType,
    PutRequest,
    RangeRequest,
    TxnRequest,
    prefix_range_end,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def new_state(clock: Clock | None = None) -> KvState:
    return KvState(clock or Clock(), grace=1.0)


HISTORY: list[Command] = [
    LeaseGrantRequest(10),
    LeaseGrantRequest(30, 77),
    PutRequest(b"a", b"1"),
    PutRequest(b"b", b"1", lease=1),
    PutRequest(b"c", b"1", lease=77),
    PutRequest(b"a", b"2"),
    TxnRequest(
        [Compare(b"a", CompareTarget.VALUE, CompareResult.EQUAL, b"2")],
        [PutRequest(b"d", b"1"), DeleteRangeRequest(b"c")],
    ),
    LeaseCheckpointRequest([LeaseCheckpoint(1, 4000)]),
    PutRequest(b"a", b"3"),
    DeleteRangeRequest(b"d"),
    PutRequest(b"e", b"\x00\xff binary"),
    LeaseRevokeRequest(1),
]


def build(compact_at: int | None = None) -> KvState:
    s = new_state()
    for cmd in HISTORY:
        s.apply(cmd)
    if compact_at:
        s.apply(CompactRequest(compact_at))
    return s


def reads(s: KvState) -> list[Any]:
    store = s.store
    out: list[Any] = [store.revision, store.compact_revision, s.lessor.snapshot()]
    out.extend(
        store.range(b"\0", b"\0", revision=rev).kvs
        for rev in range(max(store.compact_revision, 1), store.revision + 1)
    )
    out.append(list(store.changes(store.compact_revision, store.revision)))
    out.append({lease: store.lease_keys(lease) for lease in s.lessor.leases()})
    return out


def test_apply_dispatches_to_store_and_lessor() -> None:
    s = new_state()
    grant = s.apply(LeaseGrantRequest(10))
    assert grant is not None
    put = s.apply(PutRequest(b"k", b"v", lease=1))
    assert put is not None
    assert s.apply(RangeRequest(b"k")).kvs[0].lease == 1  # type: ignore[union-attr]
    assert s.apply(LeaseCheckpointRequest([LeaseCheckpoint(1, 10)])) is None
    assert s.apply(LeaseRevokeRequest(1)).revision == 3  # type: ignore[union-attr]
    assert s.apply(CompactRequest(3)).revision == 3  # type: ignore[union-attr]
    with pytest.raises(KeyNotFoundError):
        s.apply(PutRequest(b"k", ignore_value=True))
    with pytest.raises(LeaseNotFoundError):
        s.apply(PutRequest(b"k", lease=1))


def test_replicated_store_leaves_the_txn_size_limit_to_the_proposer() -> None:
    s = new_state()
    big = TxnRequest([], [PutRequest(str(i).encode()) for i in range(500)])
    assert s.apply(big).revision == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("compact_at", [None, 2, 5, 8, 10])
def test_snapshot_restore_gives_an_identical_state_and_hash(compact_at: int | None) -> None:
    s = build(compact_at)
    data = s.snapshot_bytes()
    other = new_state()
    other.apply(PutRequest(b"junk", b"to be replaced"))
    other.restore_bytes(data)
    assert other.hash() == s.hash()
    assert reads(other) == reads(s)
    assert other.snapshot_bytes() == data
    for cmd in (PutRequest(b"z", b"1"), LeaseGrantRequest(5), LeaseRevokeRequest(77)):
        assert s.apply(cmd) == other.apply(cmd)
    s.apply(CompactRequest(s.store.revision))
    other.apply(CompactRequest(other.store.revision))
    assert other.hash() == s.hash()


@pytest.mark.parametrize("compact_at", [None, 290])
def test_a_restored_state_holds_each_version_once_as_the_applied_one_does(
    compact_at: int | None,
) -> None:
    # One record per version, shared by the key index and the change log: what a restarted
    # member holds for good.
    s = new_state()
    for i in range(300):
        s.apply(PutRequest(b"pad%d" % i, b"v"))
    s.apply(TxnRequest([], [PutRequest(b"t%d" % i, b"v") for i in range(3)]))
    s.apply(PutRequest(b"t1", b"w"))
    if compact_at is not None:
        s.apply(CompactRequest(compact_at))
    other = new_state()
    other.restore_bytes(s.snapshot_bytes())
    assert other.hash() == s.hash()
    for state in (s, other):
        store = state.store
        log = {id(rec) for rec in store.snapshot_log_records()}
        held = [store._index._hist.get(b"t%d" % i) for i in range(3)]
        versions = [rec for h in held for rec in (h if isinstance(h, list) else [h])]
        assert len(versions) == 4
        assert all(isinstance(rec, bytes) and id(rec) in log for rec in versions)


@pytest.mark.parametrize("compact_at", [None, 5])
def test_a_snapshot_image_is_the_state_when_taken_whatever_is_applied_later(
    compact_at: int | None,
) -> None:
    s = build(compact_at)
    before = s.snapshot_bytes()
    image = s.snapshot_image()
    assert image.hash() == s.hash()
    for cmd in (PutRequest(b"a", b"later"), LeaseGrantRequest(9), DeleteRangeRequest(b"\0", b"\0")):
        s.apply(cmd)
    s.apply(CompactRequest(s.store.revision))
    out = io.BytesIO()
    image.write(out)
    assert out.getvalue() == before


def test_hash_covers_leases_and_revisions() -> None:
    base = build().hash()
    checkpointed = build()
    checkpointed.apply(LeaseCheckpointRequest([LeaseCheckpoint(77, 1)]))
    compacted = build(5)
    granted = build()
    granted.apply(LeaseGrantRequest(10))
    assert len({base, checkpointed.hash(), compacted.hash(), granted.hash()}) == 4
    assert build().hash() == base


def test_watchers_see_every_revision_once_across_a_restore() -> None:
    leader, follower = build(), new_state()
    for cmd in HISTORY[:4]:
        follower.apply(cmd)
    stream = follower.watches.open_stream()
    stream.watch(b"\0", b"\0", start_revision=2)
    seen = [e for r in stream.take() for e in r.events]
    follower.restore_bytes(leader.snapshot_bytes())
    leader.apply(PutRequest(b"live", b"1"))
    follower.apply(PutRequest(b"live", b"1"))
    while stream.has_pending():
        seen += [e for r in stream.take() for e in r.events]
    assert [(e.type, e.kv) for e in seen] == [
        (EventType.PUT if kv.version else EventType.DELETE, kv)
        for kv in leader.store.changes(2, leader.store.revision)
    ]


def test_restored_leases_count_from_the_restore_and_expire_on_the_leader() -> None:
    clock = Clock()
    s = build()
    restored = new_state(clock)
    clock.now = 100.0
    restored.restore_bytes(s.snapshot_bytes())
    restored.lessor.promote()
    assert restored.lessor.time_to_live(77).ttl == 31  # 30 s from the restore, plus the grace
    clock.now = 131.0
    assert [p for p in restored.lessor.tick() if isinstance(p, LeaseRevokeRequest)] == [
        LeaseRevokeRequest(77)
    ]


def test_snapshot_streams_in_chunks() -> None:
    s = new_state()
    for i in range(3000):
        s.apply(PutRequest(b"k%05d" % i, b"v"))
    s.apply(CompactRequest(1500))
    items = list(_items(s.snapshot_bytes()))
    tags = [item[0] for item in items if isinstance(item, list)]
    assert tags == ["base", "base", "log", "log"]
    assert items[0]["format"] == FORMAT
    assert items[-1]["base"] == 1499
    assert items[-1]["log"] == 1502  # revisions 1500..3001: the log keeps the compacted one


def test_writing_a_snapshot_offers_the_gil_after_every_full_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It runs in a thread beside the member's loop: between chunks the loop may take the GIL.
    s = new_state()
    for i in range(3000):
        s.apply(PutRequest(b"k%05d" % i, b"v"))
    s.apply(CompactRequest(1500))
    offered: list[int] = []
    monkeypatch.setattr(kvstate, "_offer_gil", lambda: offered.append(1))
    s.snapshot_image().write(io.BytesIO())
    assert len(offered) == 2  # one full chunk of base (1,499 keys), one of log (1,502)


def test_a_version_1_snapshot_reads_compacted_revision_0_as_never_compacted() -> None:
    s = build()
    assert s.store.compact_revision == -1
    items = _items(s.snapshot_bytes())
    assert items[0]["compact_revision"] == -1
    # Version 1 wrote 0 for "never compacted", and hashed the state with 0.
    leases = s.lessor.snapshot()
    v1_hash = kvstate._state_crc(s.store.hash_kv().hash, s.store.revision, 0, leases)
    assert v1_hash != s.hash()
    items[0] = {**items[0], "version": 1, "compact_revision": 0}
    items[-1] = {**items[-1], "hash": v1_hash}
    other = new_state()
    other.restore_bytes(_encode(*items))
    assert other.store.compact_revision == -1
    assert other.hash() == s.hash()
    items[-1] = {**items[-1], "hash": s.hash()}  # a hash over -1 is not version 1's
    with pytest.raises(StateSnapshotError, match="hash"):
        new_state().restore_bytes(_encode(*items))
    assert other.apply(CompactRequest(0)) == s.apply(CompactRequest(0))


def _items(data: bytes) -> list[Any]:
    fp = io.BytesIO(data)
    dec = cbor2.CBORDecoder(fp)
    out = []
    while fp.tell() < len(data):
        out.append(dec.decode())
    return out


def _encode(*items: Any) -> bytes:
    return b"".join(cbor2.dumps(i) for i in items)


def _assert_rejected(data: bytes) -> None:
    s = build(5)
    before = (s.hash(), reads(s))
    with pytest.raises(StateSnapshotError):
        s.restore_bytes(data)
    assert (s.hash(), reads(s)) == before


def test_every_truncation_is_rejected_and_changes_nothing() -> None:
    data = build(5).snapshot_bytes()
    for cut in range(len(data)):
        _assert_rejected(data[:cut])


def test_every_byte_flip_is_rejected_and_changes_nothing() -> None:
    data = build(5).snapshot_bytes()
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x41
        _assert_rejected(bytes(flipped))


def test_trailing_data_is_rejected() -> None:
    _assert_rejected(build().snapshot_bytes() + b"\x00")


def _valid_items() -> list[Any]:
    return _items(build(5).snapshot_bytes())


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda items: [{**items[0], "format": "etcd"}, *items[1:]], id="format"),
        pytest.param(lambda items: [{**items[0], "version": 3}, *items[1:]], id="version"),
        pytest.param(lambda items: [{**items[0], "extra": 1}, *items[1:]], id="header key"),
        pytest.param(lambda items: [{**items[0], "revision": 2**64}, *items[1:]], id="huge int"),
        pytest.param(lambda items: [{**items[0], "revision": "9"}, *items[1:]], id="str rev"),
        pytest.param(lambda items: [items[0], *items[1:-1][::-1], items[-1]], id="chunk order"),
        pytest.param(lambda items: [items[0], ["other", []], *items[1:]], id="unknown chunk"),
        pytest.param(lambda items: [items[0], [["log"], []], *items[1:]], id="unhashable tag"),
        pytest.param(lambda items: [*items[:-1], {**items[-1], "base": 0}], id="count"),
        pytest.param(lambda items: [*items[:-1], {**items[-1], "hash": 0}], id="hash"),
        pytest.param(lambda items: [*items[:-1], {**items[-1], "end": 1}], id="end flag"),
        pytest.param(lambda items: items[:-1], id="no trailer"),
        pytest.param(
            lambda items: [items[0], ["log", [[b"k", 1, 2]]], items[-1]], id="short record"
        ),
        pytest.param(
            lambda items: [items[0], ["log", [["k", 2, 2, 1, b"", 0]]], items[-1]], id="str key"
        ),
        pytest.param(lambda items: [items[0], ["leases", [[1, 2]]], items[-1]], id="short lease"),
        pytest.param(
            lambda items: [items[0], ["leases", [[1, 2, 3], [1, 2, 3]]], items[-1]],
            id="lease twice",
        ),
    ],
)
def test_malformed_snapshots_are_rejected(mangle: Any) -> None:
    _assert_rejected(_encode(*mangle(_valid_items())))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_state_snapshot_error(data: bytes) -> None:
    s = new_state()
    with contextlib.suppress(StateSnapshotError):
        s.restore_bytes(data)
    assert s.store.revision == 1


KEYS = [b"a", b"a/1", b"a/2", b"b"]
commands = st.one_of(
    st.builds(
        PutRequest,
        st.sampled_from(KEYS),
        st.sampled_from([b"", b"x"]),
        lease=st.sampled_from([0, 0, 1, 2]),
    ),
    st.builds(
        DeleteRangeRequest,
        st.sampled_from(KEYS),
        st.sampled_from([b"", b"\0", prefix_range_end(b"a/")]),
    ),
    st.builds(LeaseGrantRequest, st.integers(1, 20), st.sampled_from([0, 1, 2])),
    st.builds(LeaseRevokeRequest, st.sampled_from([1, 2, 3])),
    st.builds(
        LeaseCheckpointRequest,
        st.lists(
            st.builds(LeaseCheckpoint, st.sampled_from([1, 2]), st.integers(-5000, 5000)),
            max_size=2,
        ),
    ),
    st.integers(0, 3).map(lambda back: CompactRequest(-back)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(commands, max_size=40), st.integers(0, 40))
def test_random_histories_round_trip(cmds: list[Command], split: int) -> None:
    s, replica = new_state(), new_state()
    for i, drawn in enumerate(cmds):
        cmd = drawn
        if isinstance(drawn, CompactRequest):  # drawn as "this many revisions back"
            cmd = CompactRequest(s.store.revision + drawn.revision)
        for state in (s, replica) if i < split else (s,):
            with contextlib.suppress(EtcdError):
                state.apply(cmd)
    restored = new_state()
    restored.restore_bytes(s.snapshot_bytes())
    assert restored.hash() == s.hash()
    assert reads(restored) == reads(s)
    replica.restore_bytes(s.snapshot_bytes())
    assert replica.hash() == s.hash()
