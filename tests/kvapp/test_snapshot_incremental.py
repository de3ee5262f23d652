"""Incremental snapshot encoding: byte for byte the full encoding, and dropped when it must be.

A snapshot whose bytes were kept (:meth:`KvState.keep_encoded`) lets the next one copy its base
and full change-log chunks. Each check here compares what a state writes with a *full* encoding
of an image captured the way :meth:`KvState.snapshot_image` did before incremental encoding
(the whole base and log), and the trailer's hash with :meth:`KvState.hash`, which is computed
from the live store (``Store.hash_kv``). Most tests shrink the chunk size so that short histories
span many chunks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import random
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast
from unittest import mock

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvapp import kvstate
from kvapp.dedup import Applier
from kvapp.errors import EtcdError, KvappError
from kvapp.kvstate import KvState, StateImage, StreamSpan
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
    PutRequest,
    RangeRequest,
    TxnRequest,
    prefix_range_end,
)
from kvapp.mvcc.record import mod_of
from kvapp.node import Member, MemberConfig, member_snapshot_data, member_snapshot_members
from kvapp.requests import Request
from kvapp.service import MemberInfo
from kvapp.snapfile import load_state, read_info
from kvapp.storage import RaftStore
from kvapp.storage.snapdata import FileSnapshotData
from kvapp.storage.snapparts import SnapshotParts
from raftlib import ConfState, HardState, MemoryStorage, Snapshot, SnapshotMetadata
from tests.kvapp.test_kvstate import new_state, reads
from tests.kvapp.test_member import (
    CLUSTER,
    Clock,
    Hub,
    aio,
    infos,
    leader_of,
    make_member,
    stop_all,
)

HEAD = b"\x82\x01\x02"  # what a caller writes before the stream (the member's header)


@contextlib.contextmanager
def chunk_size(n: int) -> Iterator[None]:
    """Encode with ``n`` records per chunk (hypothesis tests cannot take monkeypatch)."""
    saved = kvstate._CHUNK
    kvstate._CHUNK = n
    try:
        yield
    finally:
        kvstate._CHUNK = saved


@pytest.fixture
def small_chunks() -> Iterator[None]:
    with chunk_size(4):
        yield


def full_image(s: KvState) -> StateImage:
    """What snapshot_image captured before incremental encoding: the whole base and log."""
    store = s.store
    compact = store.compact_revision
    return StateImage(
        revision=store.revision,
        compact_revision=compact,
        base=list(store.snapshot_base_records()) if compact > 0 else [],
        log=store.snapshot_log_records(),
        leases=s.lessor.snapshot(),
    )


def encode(image: StateImage) -> tuple[bytes, StreamSpan]:
    """``image``'s stream after HEAD in one buffer, as the member writes it, and its span."""
    buf = io.BytesIO()
    buf.write(HEAD)
    span = image.write(buf)
    return buf.getvalue(), span.shifted(len(HEAD))


def items(stream: bytes) -> list[Any]:
    src = io.BytesIO(stream)
    out = []
    while src.tell() < len(stream):
        out.append(cbor2.CBORDecoder(src).decode())
    return out


def encode_parts(image: StateImage) -> tuple[SnapshotParts, StreamSpan]:
    """As :func:`encode`, into :class:`SnapshotParts` (a member on a RaftStore does this)."""
    parts = SnapshotParts()
    parts.write(HEAD)
    span = image.write(cast("IO[bytes]", parts))
    return parts, span.shifted(len(HEAD))


class Taker:
    """Takes snapshots of a state as the member does, checking each against a full encoding.

    With ``parts``, it encodes into :class:`SnapshotParts` and keeps those, as a member on a
    RaftStore does, so prefixes are taken by reference from earlier parts.
    """

    def __init__(self, s: KvState, *, parts: bool = False) -> None:
        self.s = s
        self.parts = parts
        self.pending: list[tuple[StateImage, StateImage, int]] = []
        self.taken: list[bytes] = []  # streams, without HEAD
        self.reused = 0

    def capture(self) -> None:
        s = self.s
        self.pending.append((s.snapshot_image(), full_image(s), s.hash()))

    def write(self, which: int = 0) -> bytes:
        """Encode a captured image (maybe after more was applied), check it, keep it."""
        image, reference, state_hash = self.pending.pop(which % len(self.pending))
        kept: bytes | SnapshotParts
        if self.parts:
            kept, span = encode_parts(image)
            data = kept.to_bytes()
            assert kept.crc == zlib.crc32(data)
        else:
            data, span = encode(image)
            kept = data
        expected, expected_span = encode(reference)
        assert data == expected, "the incremental encoding differs from the full one"
        assert span == expected_span
        assert span.data_crc == zlib.crc32(data[span.start : span.end])
        stream = data[len(HEAD) :]
        assert items(stream)[-1]["hash"] == state_hash
        self.reused += image.prefix is not None
        self.s.keep_encoded(image, kept, span)
        self.taken.append(stream)
        return stream

    def take(self) -> bytes:
        self.capture()
        return self.write(-1)


def check_restores(stream: bytes, s: KvState) -> None:
    restored = new_state()
    restored.restore_bytes(stream)
    assert restored.hash() == s.hash()
    assert reads(restored) == reads(s)


def puts(s: KvState, n: int, keys: int = 5) -> None:
    for i in range(n):
        s.apply(PutRequest(b"k%d" % (i % keys), b"v%d" % i))


# -- reuse ------------------------------------------------------------------------------------


def test_a_snapshot_copies_the_previous_ones_full_chunks_and_encodes_the_rest(
    small_chunks: None,
) -> None:
    s = new_state()
    s.apply(LeaseGrantRequest(30))
    puts(s, 10)
    s.apply(CompactRequest(6))  # a base of 5 keys, a log from revision 6 on (6 records)
    puts(s, 4)
    t = Taker(s)
    t.take()
    prefix = s.snapshot_image().prefix
    assert prefix is not None
    assert (prefix.span.base_count, prefix.span.log_count) == (5, 8)
    puts(s, 7)
    image = s.snapshot_image()
    assert image.prefix is prefix
    assert image.base == []
    assert [mod_of(rec) for rec in image.log] == list(range(14, 23))
    check_restores(t.take(), s)
    assert t.reused == 1
    prefix = s.snapshot_image().prefix
    assert prefix is not None
    assert prefix.span.log_count == 16


def test_the_default_chunk_size_reuses_too() -> None:
    s = new_state()
    puts(s, 3000, keys=100)
    t = Taker(s)
    t.take()
    puts(s, 10, keys=100)
    image = s.snapshot_image()
    assert image.prefix is not None
    assert image.prefix.span.log_count == 2048
    assert len(image.log) == 3000 - 2048 + 10
    check_restores(t.take(), s)


def test_kept_bytes_are_referenced_not_copied(small_chunks: None) -> None:
    s = new_state()
    puts(s, 9)
    image = s.snapshot_image()
    data, span = encode(image)
    s.keep_encoded(image, data, span)
    kept = s.snapshot_image().prefix
    assert kept is not None
    assert kept.data is data


# -- invalidation -----------------------------------------------------------------------------


def test_a_compaction_drops_the_kept_prefix(small_chunks: None) -> None:
    s = new_state()
    puts(s, 12)
    t = Taker(s)
    t.take()
    s.apply(CompactRequest(5))
    assert s.snapshot_image().prefix is None
    check_restores(t.take(), s)
    puts(s, 5)
    assert s.snapshot_image().prefix is not None  # the encoding after it is kept again
    check_restores(t.take(), s)


def test_a_restore_drops_the_kept_prefix(small_chunks: None) -> None:
    s = new_state()
    puts(s, 12)
    t = Taker(s)
    old = t.take()
    puts(s, 12)
    t.take()
    s.restore_bytes(old)
    assert s.snapshot_image().prefix is None
    check_restores(t.take(), s)


def test_a_prefix_kept_from_an_image_taken_before_a_restore_is_ignored(
    small_chunks: None,
) -> None:
    s = new_state()
    puts(s, 12)
    stream = new_state().snapshot_bytes()
    image = s.snapshot_image()
    s.restore_bytes(stream)
    data, span = encode(image)
    s.keep_encoded(image, data, span)
    assert s.snapshot_image().prefix is None


def test_a_prefix_kept_from_an_image_taken_before_a_compaction_is_not_used(
    small_chunks: None,
) -> None:
    s = new_state()
    puts(s, 12)
    t = Taker(s)
    t.capture()
    s.apply(CompactRequest(8))
    t.write()
    assert s.snapshot_image().prefix is None
    check_restores(t.take(), s)


def test_an_image_of_another_state_is_not_kept(small_chunks: None) -> None:
    s, other = new_state(), new_state()
    puts(s, 12)
    puts(other, 12)
    image = other.snapshot_image()
    data, span = encode(image)
    s.keep_encoded(image, data, span)
    assert s.snapshot_image().prefix is None


# -- mutations: the checks above catch a prefix reused when it must not be -----------------------


def always_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvstate, "_prefix_valid", lambda *_: True)


def test_a_prefix_wrongly_reused_after_a_compaction_is_caught(
    small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = new_state()
    puts(s, 8)
    s.apply(CompactRequest(6))  # base: 5 keys; log: 4 records, one full chunk
    s.apply(DeleteRangeRequest(b"k0"))
    t = Taker(s)
    t.take()
    s.apply(CompactRequest(10))  # k0 leaves the base; the log loses its first chunk
    always_valid(monkeypatch)
    prefix = s.snapshot_image().prefix
    assert prefix is None  # the log's identity check alone drops it
    monkeypatch.setattr(
        kvstate, "_log_after", lambda p, store: store.snapshot_log_records(p.span.log_count)
    )
    with pytest.raises(AssertionError, match="differs from the full one"):
        t.take()


def test_a_prefix_of_only_the_base_wrongly_reused_after_a_compaction_is_caught(
    small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = new_state()
    puts(s, 8)
    s.apply(CompactRequest(7))  # base: 5 keys; log: 3 records, no full chunk
    t = Taker(s)
    t.take()
    always_valid(monkeypatch)
    s.apply(CompactRequest(9))  # the log record checked by identity does not exist
    with pytest.raises(AssertionError, match="differs from the full one"):
        t.take()


def test_a_prefix_kept_across_a_restore_by_a_racing_encoder_is_not_used(
    small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, other = new_state(), new_state()
    puts(s, 8)
    s.apply(CompactRequest(7))
    puts(other, 8, keys=3)
    other.apply(CompactRequest(7))  # the same compacted revision, another base
    image = s.snapshot_image()
    data, span = encode(image)
    s.restore_bytes(other.snapshot_bytes())
    # The encoder thread read the lineage before the restore and installs after it.
    lineage = s._lineage
    s._lineage = image.lineage
    s.keep_encoded(image, data, span)
    s._lineage = lineage
    assert s.snapshot_image().prefix is None
    always_valid(monkeypatch)  # without the lineage check, the old base would be reused
    with pytest.raises(AssertionError, match="differs from the full one"):
        Taker(s).take()


# -- random histories -------------------------------------------------------------------------

KEYS = [b"a", b"a/1", b"a/2", b"b", b"c"]
commands = st.one_of(
    st.builds(
        PutRequest,
        st.sampled_from(KEYS),
        st.binary(max_size=3),
        lease=st.sampled_from([0, 0, 0, 1, 2]),
    ),
    st.builds(
        DeleteRangeRequest,
        st.sampled_from(KEYS),
        st.sampled_from([b"", b"\0", prefix_range_end(b"a/")]),
    ),
    st.builds(
        TxnRequest,
        st.lists(
            st.builds(
                Compare,
                st.sampled_from(KEYS),
                st.just(CompareTarget.VERSION),
                st.sampled_from(list(CompareResult)),
                st.integers(0, 3),
            ),
            max_size=1,
        ),
        st.lists(st.builds(PutRequest, st.sampled_from(KEYS), st.binary(max_size=2)), max_size=3),
        st.lists(st.builds(DeleteRangeRequest, st.sampled_from(KEYS)), max_size=1),
    ),
    st.builds(LeaseGrantRequest, st.integers(1, 20), st.sampled_from([0, 1, 2])),
    st.builds(LeaseRevokeRequest, st.sampled_from([1, 2, 3])),
    st.builds(
        LeaseCheckpointRequest,
        st.lists(
            st.builds(LeaseCheckpoint, st.sampled_from([1, 2]), st.integers(0, 5000)), max_size=2
        ),
    ),
)
steps = st.one_of(
    st.tuples(st.just("cmd"), commands),
    st.tuples(st.just("cmd"), commands),
    st.tuples(st.just("cmd"), commands),
    st.tuples(st.just("compact"), st.integers(0, 6)),
    st.tuples(st.just("snapshot"), st.just(0)),
    st.tuples(st.just("capture"), st.just(0)),
    st.tuples(st.just("write"), st.integers(0, 3)),
    st.tuples(st.just("restore"), st.integers(0, 5)),
)


def run_step(t: Taker, step: tuple[str, Any]) -> None:
    s = t.s
    kind, arg = step
    match kind:
        case "cmd":
            with contextlib.suppress(EtcdError):
                s.apply(arg)
        case "compact":  # this many revisions back
            with contextlib.suppress(EtcdError):
                s.apply(CompactRequest(s.store.revision - arg))
        case "snapshot":
            t.take()
        case "capture":
            t.capture()
        case "write":
            if t.pending:
                t.write(arg)
        case "restore":
            if t.taken:
                s.restore_bytes(t.taken[arg % len(t.taken)])
        case _:
            raise AssertionError(kind)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.lists(steps, min_size=20, max_size=150))
def test_random_histories_snapshot_as_a_full_encoding_would(
    chunk: int, history: list[tuple[str, Any]]
) -> None:
    with chunk_size(chunk):
        s = new_state()
        t = Taker(s)
        for step in history:
            run_step(t, step)
        while t.pending:
            t.write()
        check_restores(t.take(), s)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.lists(steps, min_size=20, max_size=150), st.integers(0, 2**32))
def test_random_histories_snapshot_into_parts_as_a_full_encoding_would(
    chunk: int, history: list[tuple[str, Any]], seed: int
) -> None:
    # Prefixes taken by reference from earlier parts, some moved to their files meanwhile, so
    # that parts hold ranges of files and later parts ranges of those.
    rng = random.Random(seed)
    with chunk_size(chunk), tempfile.TemporaryDirectory(prefix="kvapp-test-") as tmp:
        s = new_state()
        t = Taker(s, parts=True)
        for step in history:
            run_step(t, step)
            prefix = s.snapshot_image().prefix
            if prefix is not None and isinstance(prefix.data, SnapshotParts) and rng.random() < 0.3:
                data = prefix.data.to_bytes()
                s.move_encoded(prefix.data, in_file(Path(tmp), data))
        while t.pending:
            t.write()
        check_restores(t.take(), s)


def test_random_histories_do_reuse() -> None:
    """The property above is not vacuous: its kind of history does take the incremental path."""
    rng = random.Random(5)
    with chunk_size(2):
        t = Taker(new_state())
        for _ in range(400):
            run_step(t, ("cmd", PutRequest(rng.choice(KEYS), b"v")))
            if rng.random() < 0.1:
                run_step(t, ("snapshot", 0))
            if rng.random() < 0.02:
                run_step(t, ("compact", 3))
        assert t.reused > 10


def test_encoding_in_another_thread_while_the_state_changes() -> None:
    """Captures on this thread, encodes and keeps in a worker (as a member does), raced."""
    rng = random.Random(7)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with chunk_size(3), concurrent.futures.ThreadPoolExecutor(1) as worker:
            s = new_state()
            t = Taker(s)
            done: list[concurrent.futures.Future[bytes]] = []
            for i in range(3000):
                with contextlib.suppress(EtcdError):
                    s.apply(PutRequest(rng.choice(KEYS), b"%d" % i))
                r = rng.random()
                if r < 0.05:
                    t.capture()
                    done.append(worker.submit(t.write, -1))
                    if rng.random() < 0.5:  # else it races with what comes next
                        done[-1].result()
                elif r < 0.06:
                    with contextlib.suppress(EtcdError):
                        s.apply(CompactRequest(s.store.revision - rng.randrange(20)))
                elif r < 0.065 and t.taken:
                    s.restore_bytes(rng.choice(t.taken))
            for f in done:
                f.result()
            assert t.reused > 0
            check_restores(t.take(), s)
    finally:
        sys.setswitchinterval(switch)


# -- member snapshot data ---------------------------------------------------------------------


def test_member_snapshot_data_of_both_versions_gives_the_member_table() -> None:
    table = infos(3)
    applier = Applier(new_state())
    state = applier.snapshot_bytes()
    v1 = v1_data(table, state)
    v2 = member_snapshot_data(table, state)
    assert v2.endswith(state)
    assert member_snapshot_members(v1) == member_snapshot_members(v2) == table
    for bad in (
        cbor2.dumps(["kvapp.member", 2, [], state]),
        cbor2.dumps(["kvapp.member", 1, []]),
        cbor2.dumps(["kvapp.member", 3, []]),
        cbor2.dumps(["other", 2, []]),
        cbor2.dumps(["kvapp.member", 1, [], "not bytes"]),
        b"",
    ):
        with pytest.raises(KvappError):
            member_snapshot_members(bad)


def test_an_applier_snapshot_with_sessions_is_the_full_one_after_its_header() -> None:
    """The span is shifted past the applier's section and a caller's header, as the member does."""
    keeping, twin = Applier(new_state()), Applier(new_state())
    head = cbor2.dumps(["kvapp.member", 2, []])
    reused = 0
    with chunk_size(4):
        for i in range(1, 200):
            request = Request(i % 5 + 1, i // 5 + 1, PutRequest(b"k%d" % (i % 13), b"v%d" % i))
            for a in (keeping, twin):
                a.apply(request, i)
            if i % 17:
                continue
            image = keeping.snapshot_image()
            reused += image.state.prefix is not None
            buf = io.BytesIO()
            buf.write(head)
            span = image.write(buf)
            data = buf.getvalue()
            keeping.state.keep_encoded(image.state, data, span.shifted(len(head)))
            assert data == head + twin.snapshot_bytes()
            restored = Applier(new_state())
            restored.restore_bytes(data[len(head) :])
            assert restored.hash() == keeping.hash()
    assert reused == 10


def v1_record(m: MemberInfo) -> list[object]:
    return [m.id, m.name, list(m.peer_urls), list(m.client_urls), m.is_learner]


def v1_data(members: list[MemberInfo], state: bytes) -> bytes:
    return cbor2.dumps(["kvapp.member", 1, [v1_record(m) for m in members], state])


@aio
async def test_a_member_starts_from_a_version_1_snapshot() -> None:
    """A data dir written before version 2 holds version 1 snapshot data."""
    source = Applier(new_state())
    for i in range(1, 30):
        source.state.apply(PutRequest(b"k%d" % (i % 7), b"v%d" % i))
    [me] = infos(1)
    storage = MemoryStorage()
    storage.apply_snapshot(
        Snapshot(
            data=v1_data([me], source.snapshot_bytes()),
            metadata=SnapshotMetadata(conf_state=ConfState(voters=(me.id,)), index=5, term=1),
        )
    )
    storage.set_hard_state(HardState(term=1, vote=me.id, commit=5))
    hub = Hub()
    config = MemberConfig(
        name=me.name,
        member_id=me.id,
        cluster_id=CLUSTER,
        initial_members=(me,),
        tick_interval=0.01,
        request_timeout=2.0,
        snapshot_count=3,
    )
    m = Member(config, storage, hub.links(me.id), clock=Clock())
    hub.members[me.id] = m
    await m.start()
    try:
        assert m.kv.hash() == source.state.hash()
        assert m.member_list() == [me]
        await asyncio.wait_for(m.node.wait_leader(timeout=5), 6)
        for i in range(8):  # snapshots in version 2 from now on
            await m.write(PutRequest(b"new%d" % i, b"x"))
        await snapshot_taken(m, after=5)
        got = await m.range(RangeRequest(b"k", b"l"))
        assert len(got.kvs) == 7
        data = storage.snapshot().data
        assert member_snapshot_members(data) == [me]
        assert data.startswith(cbor2.dumps(["kvapp.member", 2, [list(v1_record(me))]]))
    finally:
        await stop_all([m])


async def wait_converged(members: list[Member], at_least: int) -> None:
    """Until every member has applied the same index, at least ``at_least``."""
    async with asyncio.timeout(10):
        while True:
            applied = {m.node.applied for m in members}
            if len(applied) == 1 and applied.pop() >= at_least:
                return
            await asyncio.sleep(0.01)


async def check_snapshot_file(m: Member) -> None:
    """A snapshot file streamed from ``m`` (its image copying a kept prefix) restores its state."""
    assert m.kv.snapshot_image().prefix is not None
    with tempfile.TemporaryDirectory(prefix="kvapp-test-snap-") as tmp:
        path = Path(tmp) / "backup.snap"
        with path.open("wb") as f:
            async with contextlib.aclosing(m.snapshot()) as chunks:
                async for chunk in chunks:
                    f.write(chunk)
        restored = Applier(new_state())
        load_state(read_info(path), restored.restore)
    assert restored.hash() == m.applier.hash()


async def snapshot_taken(m: Member, *, after: int) -> None:
    """Until ``m`` holds a snapshot taken after index ``after`` and is making none.

    Snapshots are encoded in a thread and adopted between Readys, and writes on the loop can
    outrun that thread.
    """
    node = m.node
    async with asyncio.timeout(10):
        while True:
            if (
                m._storage.snapshot().metadata.index > after
                and node._snapshot_job is None
                and node._snapshot_made is None
            ):
                return
            await asyncio.sleep(0.01)


async def catch_up_by_snapshot(members: list[Member], hub: Hub, *, in_file: bool) -> None:
    """Cut a follower off, write and compact past it, check the leader's incremental snapshot
    (its kept prefix is the snapshot raftlib holds, bytes or ``in_file``), then let the
    follower catch up, which only that snapshot can do."""
    await asyncio.wait_for(members[0].node.wait_leader(timeout=5), 6)
    lead = leader_of(members)
    behind = next(m for m in members if m is not lead)
    hub.cut.add(behind.id)
    cut_at = behind.node.applied
    compacted_at = 0
    for i in range(120):
        await lead.write(PutRequest(b"k%d" % (i % 9), b"v%d" % i))
        if i == 60:
            await lead.write(CompactRequest(lead.kv.store.revision - 5))
            compacted_at = lead.node.applied
    await snapshot_taken(lead, after=compacted_at)
    held: object = lead._storage.snapshot().data
    assert isinstance(held, FileSnapshotData) == in_file
    prefix = lead.kv.snapshot_image().prefix
    assert prefix is not None
    assert prefix.span.log_count > 0
    assert prefix.data is held  # the snapshot raftlib holds (in its file: not the bytes)
    assert lead._storage.first_index() > cut_at + 1  # only a snapshot can catch up
    await check_snapshot_file(lead)
    hub.cut.clear()
    await wait_converged(members, lead.node.applied)
    assert len({m.applier.hash() for m in members}) == 1
    assert behind._storage.snapshot().metadata.index > cut_at


@aio
async def test_members_snapshot_incrementally_and_one_behind_catches_up_by_snapshot() -> None:
    with chunk_size(4):
        hub, clock = Hub(), Clock()
        initial = infos(3)
        members = [
            make_member(hub, i, initial, clock, snapshot_count=16, keep_entries=2) for i in initial
        ]
        for m in members:
            await m.start()
        try:
            await catch_up_by_snapshot(members, hub, in_file=False)
        finally:
            await stop_all(members)


# -- kept bytes left in their file ------------------------------------------------------------


def in_file(tmp: Path, data: bytes, lead: bytes = b"junk-before") -> FileSnapshotData:
    """``data`` written to a file after ``lead``, as a FileSnapshotData of just ``data``."""
    path = tmp / f"snap-{len(list(tmp.iterdir()))}"
    path.write_bytes(lead + data + b"junk-after")
    return FileSnapshotData(path, len(lead), len(data))


def test_a_prefix_moved_to_its_file_is_copied_from_there(
    small_chunks: None, tmp_path: Path
) -> None:
    s = new_state()
    puts(s, 13)
    t = Taker(s)
    t.take()
    prefix = s.snapshot_image().prefix
    assert prefix is not None
    data = prefix.data
    assert isinstance(data, bytes)
    source = in_file(tmp_path, data)
    s.move_encoded(b"other bytes", source)  # not what is kept: ignored
    assert s.snapshot_image().prefix is prefix
    s.move_encoded(data, source)
    moved = s.snapshot_image().prefix
    assert moved is not None
    assert moved.data is source
    assert moved.span == prefix.span
    puts(s, 9)
    check_restores(t.take(), s)  # Taker checks it byte for byte against a full encoding
    assert t.reused == 1


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.lists(steps, min_size=20, max_size=100))
def test_random_histories_with_prefixes_in_files_snapshot_as_a_full_encoding_would(
    chunk: int, history: list[tuple[str, Any]]
) -> None:
    with chunk_size(chunk), tempfile.TemporaryDirectory(prefix="kvapp-test-") as tmp:
        s = new_state()
        t = Taker(s)
        for step in history:
            run_step(t, step)
            prefix = s.snapshot_image().prefix
            if prefix is not None and isinstance(prefix.data, bytes):
                s.move_encoded(prefix.data, in_file(Path(tmp), prefix.data))
        while t.pending:
            t.write()
        check_restores(t.take(), s)


@aio
async def test_members_on_raftstores_keep_snapshots_in_files_and_stream_them() -> None:
    """The snapshot raftlib's storage holds, and the prefix the state keeps, stay in the file;
    a member cut off past the compaction still catches up by that snapshot.

    Adoption is slowed down: the node must not look idle while it adopts a snapshot (a CI
    run once caught the state's prefix already newer than the storage's snapshot).
    """
    adopt = RaftStore.adopt_snapshot

    def slow_adopt(store: RaftStore, snapshot: Snapshot) -> None:
        time.sleep(0.03)
        adopt(store, snapshot)

    with (
        mock.patch.object(RaftStore, "adopt_snapshot", slow_adopt),
        chunk_size(4),
        tempfile.TemporaryDirectory(prefix="kvapp-test-") as tmp,
    ):
        hub, clock = Hub(), Clock()
        initial = infos(3)
        members: list[Member] = []
        for info in initial:
            store = RaftStore.open(
                Path(tmp) / info.name,
                cluster_id=CLUSTER,
                member_id=info.id,
                fsync=False,
                snapshot_in_file=True,
                hot_bytes=0,
            )
            config = MemberConfig(
                name=info.name,
                member_id=info.id,
                cluster_id=CLUSTER,
                initial_members=tuple(initial),
                tick_interval=0.01,
                lease_tick=0.02,
                request_timeout=2.0,
                snapshot_count=16,
                keep_entries=2,
            )
            m = Member(config, store, hub.links(info.id), clock=clock)
            hub.members[info.id] = m
            members.append(m)
        for m in members:
            await m.start()
        try:
            await catch_up_by_snapshot(members, hub, in_file=True)
        finally:
            await stop_all(members)
        for m in members:
            assert isinstance(m._storage, RaftStore)
            m._storage.close()
