"""A full disk: a write refused for lack of space leaves the WAL and the store usable.

``ENOSPC`` (or ``EDQUOT``) during a ``write`` is not a disk fault: the WAL cuts the partial
record away, a snapshot write deletes its file, and :class:`StoreFullError` (a
``raftlib.StorageFullError``) says the same call may be made again. A failed fsync stays fatal
whatever its errno, and so does any other write error.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import raftlib.node as node_module
from kvapp.storage import fileutil
from kvapp.storage import fs as fsmod
from kvapp.storage import wal as walmod
from kvapp.storage.errors import (
    DiskStorageError,
    StoreFailedError,
    StoreFsyncFailedError,
    StoreFullError,
)
from kvapp.storage.fs import FileSystem
from kvapp.storage.raftstore import RaftStore
from kvapp.storage.wal import BatchRecord, SnapshotRecord, StateRecord, Wal, WalMetadata, read_wal
from raftlib import ConfState, Node, Ready, StagingStorage, StorageFullError
from raftlib.types import Entry, HardState, Snapshot, SnapshotMetadata
from tests.raftlib.test_node import TICK, StateMachine, eventually, run

from .helpers import VOTERS, FaultyDisk, all_entries, open_store

META = WalMetadata(cluster_id=7, member_id=3)
EMPTY = StateRecord(HardState(), SnapshotMetadata(), 0, 0, 0, 0)


def ents(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term=term, index=i, data=b"d%d" % i) for i in range(first, last + 1)]


def batch(first: int, size: int = 30) -> BatchRecord:
    return BatchRecord(HardState(1, 1, first - 1), (Entry(1, first, data=b"x" * size),))


def batch_indexes(directory: Path) -> list[int]:
    """First entry index of every batch record with entries, in WAL order."""
    return [
        r.record.entries[0].index
        for r in read_wal(directory).records
        if isinstance(r.record, BatchRecord) and r.record.entries
    ]


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_wal_writes(
    monkeypatch: pytest.MonkeyPatch, when: Callable[[int, int], bool]
) -> list[tuple[int, int]]:
    """Make the WAL's writes for which ``when(call_number, offset)`` holds fail with ENOSPC."""
    real = fileutil.write_all
    calls: list[tuple[int, int]] = []

    def write_all(fs: FileSystem, fd: int, data: bytes | memoryview, offset: int) -> None:
        calls.append((len(calls) + 1, offset))
        if when(len(calls), offset):
            raise no_space()
        real(fs, fd, data, offset)

    monkeypatch.setattr(walmod, "write_all", write_all)
    return calls


# -- the WAL --


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
@pytest.mark.parametrize("preallocate", [False, True])
@pytest.mark.parametrize("keeps", [0, 8, 50])
def test_a_wal_write_out_of_space_leaves_the_wal_usable(
    tmp_path, monkeypatch, code, preallocate, keeps
):
    wal = Wal.create(tmp_path, META, EMPTY, preallocate=preallocate, fsync=False)
    wal.append([batch(1), batch(2)])
    good_end = wal.end_offset
    disk = FaultyDisk(write_keeps=keeps, write_errno=code).install(monkeypatch)
    with pytest.raises(OSError, match=os.strerror(code)) as info:
        wal.append([batch(3)])
    assert info.value.errno == code
    assert not wal.failed
    assert wal.end_offset == good_end
    disk.write_keeps = None  # space freed
    wal.append([batch(3)])  # the same object, the same records
    wal.append([batch(4)])
    wal.close()
    contents = read_wal(tmp_path)
    assert contents.torn is None
    assert batch_indexes(tmp_path) == [1, 2, 3, 4]


def test_any_other_write_error_still_poisons_the_wal(tmp_path, monkeypatch):
    wal = Wal.create(tmp_path, META, EMPTY, preallocate=False, fsync=False)
    wal.append([batch(1)])
    FaultyDisk(write_keeps=8, write_errno=errno.EIO).install(monkeypatch)
    with pytest.raises(OSError, match="Input/output"):
        wal.append([batch(2)])
    assert wal.failed
    monkeypatch.undo()
    with pytest.raises(OSError, match="earlier WAL write failed"):
        wal.append([batch(2)])
    wal.close()


def test_out_of_space_with_a_partial_record_left_behind_poisons_the_wal(tmp_path, monkeypatch):
    """If the cut-back fails, the partial record stays: the WAL must not append after it."""
    wal = Wal.create(tmp_path, META, EMPTY, preallocate=False, fsync=False)
    wal.append([batch(1)])
    FaultyDisk(write_keeps=8).install(monkeypatch)

    def ftruncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    with pytest.raises(OSError, match="No space left"):
        wal.append([batch(2)])
    assert wal.failed
    wal.close()


# -- the store --


def test_a_full_disk_raises_store_full_and_the_same_save_then_writes_once(tmp_path, monkeypatch):
    with open_store(tmp_path, preallocate=True, segment_size=1 << 16) as store:
        store.save(HardState(1, 1, 0), ents(1, 3))
        disk = FaultyDisk(write_keeps=12).install(monkeypatch)
        for _ in range(3):
            with pytest.raises(StoreFullError, match="No space left") as info:
                store.save(HardState(1, 1, 3), ents(4, 5))
            assert isinstance(info.value, StorageFullError)  # raftlib retries it
            assert isinstance(info.value, DiskStorageError)
            assert not isinstance(info.value, StoreFailedError)
            assert store.last_index() == 3  # nothing changed
            assert store.hard_state == HardState(1, 1, 0)
        disk.write_keeps = None
        store.save(HardState(1, 1, 3), ents(4, 5))
        store.save(HardState(1, 1, 5), ents(6, 6))
        assert all_entries(store) == ents(1, 6)
    assert batch_indexes(tmp_path / "wal") == [1, 4, 6]  # the retried batch is written once
    with open_store(tmp_path, preallocate=True, segment_size=1 << 16) as store:
        assert all_entries(store) == ents(1, 6)
        assert store.hard_state == HardState(1, 1, 5)


def test_an_fsync_that_fails_for_lack_of_space_is_still_fatal(tmp_path, monkeypatch):
    """Delayed allocation can report ENOSPC at fsync: the page cache is then untrustworthy."""
    store = open_store(tmp_path, fsync=True)
    store.save(HardState(1, 1, 0), ents(1, 1))

    def fdatasync(fd: int) -> None:
        raise no_space()

    monkeypatch.setattr(fsmod, "_fdatasync", fdatasync)
    with pytest.raises(StoreFsyncFailedError, match="the process must exit"):
        store.save(HardState(1, 1, 1), ents(2, 2))
    monkeypatch.undo()
    with pytest.raises(StoreFsyncFailedError):
        store.save(HardState(1, 1, 1), ents(2, 2))
    store.close()


def test_a_retried_save_ready_does_not_install_its_snapshot_twice(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    store.save(HardState(1, 1, 0), ents(1, 3))
    snap = Snapshot(data=b"state", metadata=SnapshotMetadata(VOTERS, index=10, term=2))
    rd = Ready(
        soft_state=None,
        hard_state=HardState(2, 1, 10),
        entries=tuple(ents(11, 12, term=2)),
        snapshot=snap,
        committed_entries=(),
        messages=(),
        persisted_messages=(),
        read_states=(),
        must_sync=True,
    )
    # The snapshot's file and WAL marker fit; the entries' record does not.
    fail_wal_writes(monkeypatch, lambda n, offset: n == 2)
    with pytest.raises(StoreFullError):
        store.save_ready(rd)
    assert store.snapshot() == snap
    assert store.last_index() == 10
    monkeypatch.undo()
    store.save_ready(rd)
    assert all_entries(store) == ents(11, 12, term=2)
    store.close()
    markers = [r.record for r in read_wal(tmp_path / "wal").records]
    assert sum(isinstance(r, SnapshotRecord) for r in markers) == 1
    with open_store(tmp_path) as store:
        assert store.snapshot() == snap
        assert all_entries(store) == ents(11, 12, term=2)
        assert store.hard_state == HardState(2, 1, 10)


def snap_files(store: RaftStore) -> list[str]:
    return sorted(p.name for p in store.snapshotter.directory.iterdir())


def test_a_snapshot_file_that_does_not_fit_leaves_nothing_behind(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    store.save(HardState(1, 1, 3), ents(1, 3))
    real = fileutil.write_all

    def write_all(fs: FileSystem, fd: int, data: bytes | memoryview, offset: int) -> None:
        real(fs, fd, bytes(data)[:10], offset)
        raise no_space()

    monkeypatch.setattr(fileutil, "write_all", write_all)
    with pytest.raises(StoreFullError):
        store.create_snapshot(2, VOTERS, b"x" * 1000)
    with pytest.raises(StoreFullError):
        store.stage_snapshot(Snapshot(b"y" * 1000, SnapshotMetadata(VOTERS, 3, 1)))
    assert snap_files(store) == []  # no temporary file holds on to the space
    assert store.snapshot().is_empty()
    monkeypatch.undo()
    store.create_snapshot(2, VOTERS, b"x" * 1000)
    assert store.snapshot().metadata.index == 2
    store.close()


@pytest.mark.parametrize("staged", [False, True], ids=["create", "stage-adopt"])
def test_a_snapshot_whose_marker_does_not_fit_is_deleted(tmp_path, monkeypatch, staged):
    store = open_store(tmp_path)
    store.save(HardState(1, 1, 3), ents(1, 3))
    snap = Snapshot(b"x" * 100, SnapshotMetadata(VOTERS, 2, 1))
    if staged:
        store.stage_snapshot(snap)
        assert len(snap_files(store)) == 1
    fail_wal_writes(monkeypatch, lambda n, offset: True)
    write: Callable[[], object] = (
        (lambda: store.adopt_snapshot(snap))
        if staged
        else (lambda: store.create_snapshot(2, VOTERS, snap.data))
    )
    with pytest.raises(StoreFullError):
        write()
    assert snap_files(store) == []
    assert store.snapshot().is_empty()
    monkeypatch.undo()
    assert store.create_snapshot(2, VOTERS, snap.data) == snap
    store.compact(2)
    store.close()
    with open_store(tmp_path) as store:
        assert store.snapshot() == snap
        assert all_entries(store) == ents(3, 3)


def test_a_compaction_that_does_not_fit_changes_nothing(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    store.save(HardState(1, 1, 3), ents(1, 3))
    fail_wal_writes(monkeypatch, lambda n, offset: True)
    with pytest.raises(StoreFullError):
        store.compact(2)
    assert store.first_index() == 1
    monkeypatch.undo()
    store.compact(2)
    assert store.first_index() == 3
    store.close()


def test_no_space_for_a_new_segment_carries_on_in_the_old_one(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="kvapp.storage.raftstore")
    store = open_store(tmp_path, segment_size=512)
    # A new segment starts with a write at offset 0; appends to a used one never do.
    calls = fail_wal_writes(monkeypatch, lambda n, offset: offset == 0)
    for i in range(1, 21):
        store.save(HardState(1, 1, i - 1), [Entry(1, i, data=b"z" * 60)])
    assert len(store.wal.segments) == 1
    assert store.wal.end_offset > 512  # it grew past the segment size
    assert sum(1 for _, offset in calls if offset == 0) > 1  # each full write tried a cut
    assert not [p for p in (tmp_path / "wal").iterdir() if p.name.endswith(".tmp")]
    warnings = [r for r in caplog.records if "no space for a new WAL segment" in r.message]
    assert len(warnings) == 1
    monkeypatch.undo()
    store.save(HardState(1, 1, 20), [Entry(1, 21, data=b"z")])
    assert len(store.wal.segments) == 2
    assert "new WAL segment started" in caplog.text
    store.close()
    with open_store(tmp_path, segment_size=512) as store:
        assert [e.index for e in all_entries(store)] == list(range(1, 22))


# -- raftlib's Node over the store --


@run()
async def test_a_node_over_a_full_disk_retries_and_loses_or_doubles_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RaftStore.open(
        tmp_path, cluster_id=1, member_id=1, conf_state=ConfState(voters=(1,)), fsync=False
    )
    sm = StateMachine()
    hits: list[StorageFullError] = []
    node = Node(
        1,
        store,
        send=lambda msgs: None,
        tick_interval=TICK,
        apply=sm.apply,
        snapshot=sm.snapshot,
        restore=sm.restore,
        on_storage_full=hits.append,
    )
    node.start()
    try:
        await node.wait_leader(timeout=5)
        before = await node.propose(b"before", timeout=5)
        disk = FaultyDisk(write_keeps=7).install(monkeypatch)
        pending = [asyncio.ensure_future(node.propose(b"p%d" % k, timeout=20)) for k in range(3)]
        await eventually(lambda: node.storage_full, "the node hit the full disk")
        await eventually(lambda: disk.writes >= 3, "the write was tried again")
        assert not any(p.done() for p in pending)
        assert node.running
        assert isinstance(hits[0], StoreFullError)
        disk.write_keeps = None  # space freed
        indexes = [await asyncio.wait_for(p, 20) for p in pending]
        assert node.failure is None
        assert not node.storage_full
    finally:
        await node.stop()
        store.close()
    assert sm.values()[-4:] == [b"before", b"p0", b"p1", b"p2"]
    with RaftStore.open(tmp_path, cluster_id=1, member_id=1) as again:
        stored = {e.index: e.data for e in all_entries(again)}
    assert before in stored
    for k, index in enumerate(indexes):
        assert [i for i, d in stored.items() if d.endswith(b"p%d" % k)] == [index]


def test_a_staged_snapshot_that_does_not_fit_is_skipped_and_made_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RaftStore stages snapshots in the node's snapshot thread: that path skips too."""
    monkeypatch.setattr(node_module, "_SNAPSHOT_RETRY_FIRST", 0.02)
    real = fileutil.write_all
    failed: list[int] = []

    def write_all(fs: FileSystem, fd: int, data: bytes | memoryview, offset: int) -> None:
        failed.append(offset)
        raise no_space()

    @run()
    async def body() -> None:
        store = RaftStore.open(
            tmp_path, cluster_id=1, member_id=1, conf_state=ConfState(voters=(1,)), fsync=False
        )
        assert isinstance(store, StagingStorage)
        sm = StateMachine()

        def image() -> Callable[[], bytes]:
            data = sm.snapshot()
            return lambda: data

        node = Node(
            1,
            store,
            send=lambda msgs: None,
            tick_interval=TICK,
            apply=sm.apply,
            snapshot=image,
            restore=sm.restore,
            snapshot_every=3,
            keep_entries=1,
        )
        node.start()
        try:
            await node.wait_leader(timeout=5)
            monkeypatch.setattr(fileutil, "write_all", write_all)
            for k in range(4):
                await node.propose(b"a%d" % k, timeout=5)
            snap_dir = tmp_path / "snap"
            await eventually(
                lambda: bool(failed) and not list(snap_dir.iterdir()),
                lambda: (
                    f"a snapshot file tried, and nothing left of it: {list(snap_dir.iterdir())}"
                ),
            )
            assert store.snapshot().is_empty()
            assert node.running
            monkeypatch.setattr(fileutil, "write_all", real)
            last = await node.propose(b"b", timeout=5)
            await eventually(
                lambda: store.snapshot().metadata.index >= last - 1,
                lambda: f"a snapshot once space is back ({store.snapshot().metadata})",
            )
            assert node.failure is None
        finally:
            await node.stop()
            store.close()

    body()
