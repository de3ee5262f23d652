"""Recovery edges: failed writes, interrupted releases and fallbacks, fsync failures, layout.

Each test here pins a case where a member used to be unable to restart without an operator (or
could restart from data it must not trust): a full disk mid-record, a power loss mid-release, a
crash mid-fallback, a failed fsync, a misplaced file. The fixes are in kvapp/storage; the
operator's side is docs/storage.md.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
from pathlib import Path

import pytest

from kvapp.storage import repair
from kvapp.storage.errors import (
    SnapshotCorruptError,
    StorageLayoutError,
    StoreFailedError,
    StoreFsyncFailedError,
    StoreFullError,
    WalCorruptError,
    WalIdentityError,
)
from kvapp.storage.fileutil import FsyncError
from kvapp.storage.raftstore import RaftStore
from kvapp.storage.snap import Snapshotter
from kvapp.storage.wal import (
    BatchRecord,
    SnapshotKind,
    SnapshotRecord,
    StateRecord,
    Wal,
    WalMetadata,
    list_segments,
    read_wal,
)
from raftlib.types import Entry, HardState, SnapshotMetadata

from .helpers import CLUSTER, MEMBER, VOTERS, FaultyDisk, all_entries, fill, open_store

META = WalMetadata(cluster_id=7, member_id=3)
EMPTY = StateRecord(HardState(), SnapshotMetadata(), 0, 0, 0, 0)


def ents(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term=term, index=i, data=b"d%d" % i) for i in range(first, last + 1)]


def batch(first: int, size: int = 30) -> BatchRecord:
    return BatchRecord(HardState(1, 1, first - 1), (Entry(1, first, data=b"x" * size),))


# -- 1. a write that fails part-way removes its partial record --


@pytest.mark.parametrize("preallocate", [False, True])
@pytest.mark.parametrize("keeps", [1, 8, 20, 50])
def test_failed_write_removes_its_partial_record(tmp_path, monkeypatch, preallocate, keeps):
    """ENOSPC after ``keeps`` bytes of a record reached the file: the file is cut back.

    Before the fix the partial record stayed. In a preallocated segment it reads as a record
    with a bad checksum followed by zeros, but without a whole zero sector inside it: corruption,
    and the member could not restart without ``repair --cut``. Without preallocation it was a
    torn tail, dropped only by the next open.
    """
    wal = Wal.create(tmp_path, META, EMPTY, preallocate=preallocate, fsync=False)
    wal.append([batch(1), batch(2)])
    good_end = wal.end_offset
    disk = FaultyDisk(write_keeps=keeps).install(monkeypatch)
    with pytest.raises(OSError, match="No space left") as info:
        wal.append([batch(3)])
    assert info.value.errno == errno.ENOSPC
    assert disk.writes == 1
    monkeypatch.undo()
    wal.close()
    seg = list_segments(tmp_path)[0].path
    assert seg.stat().st_size == good_end  # cut back to the last complete record
    contents = read_wal(tmp_path)
    assert contents.torn is None  # nothing left for the next open to drop or refuse
    assert contents.end_offset == good_end
    wal, _ = Wal.open(tmp_path, fsync=False, preallocate=preallocate)
    wal.append([batch(3)])
    wal.close()
    records = [r.record for r in read_wal(tmp_path).records]
    assert [r.entries[0].index for r in records if isinstance(r, BatchRecord)] == [1, 2, 3]


def test_failed_sync_also_removes_the_unacknowledged_record(tmp_path, monkeypatch):
    wal = Wal.create(tmp_path, META, EMPTY, preallocate=True, fsync=True)
    wal.append([batch(1)])
    good_end = wal.end_offset
    FaultyDisk(fail_syncs=True).install(monkeypatch)
    with pytest.raises(FsyncError, match="fdatasync failed"):
        wal.append([batch(2)])
    monkeypatch.undo()
    wal.close()
    contents = read_wal(tmp_path)
    assert contents.end_offset == good_end
    assert contents.torn is None
    assert [type(r.record) for r in contents.records][-1] is BatchRecord
    assert len(contents.records) == 3  # metadata, state, batch 1: batch 2 was never acknowledged


def test_store_restarts_after_a_full_disk_without_repair(tmp_path, monkeypatch):
    """The issue's scenario end to end: a save fails on a full disk, the member restarts.

    (It need not: the store stays usable, see test_disk_full.py; a restart works as well.)
    """
    with open_store(tmp_path, preallocate=True, segment_size=1 << 16) as store:
        store.save(HardState(1, 1, 0), ents(1, 3))
        FaultyDisk(write_keeps=12).install(monkeypatch)
        with pytest.raises(StoreFullError, match="No space left") as info:
            store.save(HardState(1, 1, 3), ents(4, 5))
        assert not isinstance(info.value, StoreFailedError)
        assert "can be made again" in str(info.value)
        monkeypatch.undo()
    with open_store(tmp_path, preallocate=True, segment_size=1 << 16) as store:  # same process
        assert all_entries(store) == ents(1, 3)
        assert store.hard_state == HardState(1, 1, 0)
        store.save(HardState(1, 1, 3), ents(4, 5))
    with open_store(tmp_path, preallocate=True, segment_size=1 << 16) as store:
        assert all_entries(store) == ents(1, 5)


# -- 2. release: oldest first; a gap wholly before the snapshot's segment does not block open --


def _released_store(d: Path, more: int = 0) -> tuple[dict[str, bytes], list[Entry], HardState, int]:
    """A store whose compaction released several segments, then ``more`` batches; returns the
    released segments' bytes, the entries and hard state to expect, and the snapshot index."""
    with open_store(d, segment_size=512, keep_snapshots=1) as store:
        fill(store, 60, seed=4)
        before = {s.path.name: s.path.read_bytes() for s in store.wal.segments}
        snap = store.create_snapshot(store.last_index() - 5, VOTERS, b"state")
        store.compact(snap.metadata.index)
        fill(store, more, seed=5)
        expected = all_entries(store)
        hs = store.hard_state
    released = {k: v for k, v in before.items() if not (d / "wal" / k).exists()}
    assert len(released) >= 3
    return released, expected, hs, snap.metadata.index


def test_gap_among_segments_before_the_snapshots_segment_opens(tmp_path, caplog):
    """A power loss kept the oldest released segment and dropped a newer one: that gap holds
    nothing replay needs, so the store opens, loses nothing, and finishes the release."""
    d = tmp_path / "store"
    released, expected, hs, _ = _released_store(d, more=10)
    oldest = min(released)
    (d / "wal" / oldest).write_bytes(released[oldest])
    contents = read_wal(d / "wal")
    assert [s.path.name for s in contents.stale] == [oldest]
    caplog.set_level(logging.WARNING)
    with open_store(d, segment_size=512, keep_snapshots=1) as store:
        assert all_entries(store) == expected
        assert store.hard_state == hs
        assert store.snapshot().data == b"state"
    assert not (d / "wal" / oldest).exists()
    assert "interrupted release" in caplog.text
    assert read_wal(d / "wal").stale == []


def test_two_stale_segments_and_a_gap_between_them(tmp_path):
    d = tmp_path / "store"
    released, expected, _, _ = _released_store(d)
    names = sorted(released)
    for name in (names[0], names[2]):  # stale, gap, stale, gap, live
        (d / "wal" / name).write_bytes(released[name])
    with open_store(d, segment_size=512, keep_snapshots=1) as store:
        assert all_entries(store) == expected
    assert sorted(p.name for p in (d / "wal").iterdir()) == sorted(
        s.path.name for s in list_segments(d / "wal")
    )
    assert not set(names) & {p.name for p in (d / "wal").iterdir()}


def test_gap_at_or_after_the_snapshots_segment_is_refused(tmp_path):
    d = tmp_path / "store"
    released, _, _, snap_index = _released_store(d, more=30)
    live = list_segments(d / "wal")
    assert len(live) >= 3
    assert live[0].index <= snap_index + 1  # the first kept segment is the snapshot's
    # A gap after the snapshot's segment: entries after the snapshot are lost.
    middle = live[1].path
    data = middle.read_bytes()
    middle.unlink()
    with pytest.raises(WalCorruptError, match="missing segment") as info:
        open_store(d)
    assert info.value.path == live[2].path
    middle.write_bytes(data)
    # A gap that swallowed the snapshot's own segment, with an older stale one still there.
    oldest = min(released)
    (d / "wal" / oldest).write_bytes(released[oldest])
    live[0].path.unlink()
    with pytest.raises(WalCorruptError, match=r"missing segment.*snapshot at index") as info:
        open_store(d)
    assert info.value.path == live[1].path
    assert (d / "wal" / oldest).exists()  # a refused open changes nothing


def test_release_deletes_oldest_first(tmp_path, monkeypatch):
    """A crash part-way through a release leaves a contiguous run of segments."""
    with open_store(tmp_path, segment_size=512, keep_snapshots=1) as store:
        fill(store, 60, seed=4)
        names = [s.path.name for s in store.wal.segments]
        deleted: list[str] = []
        real_unlink = os.unlink

        def unlink_then_crash(path: Path) -> None:
            if len(deleted) == 2:
                raise OSError(errno.EIO, "crash")
            real_unlink(path)
            deleted.append(Path(path).name)

        snap = store.create_snapshot(store.last_index() - 5, VOTERS, b"state")
        monkeypatch.setattr(os, "unlink", unlink_then_crash)
        with pytest.raises(StoreFailedError, match="crash"):
            store.compact(snap.metadata.index)
        monkeypatch.undo()
        assert deleted == names[:2]
        assert [s.path.name for s in store.wal.segments] == names[2:]  # no stale listing
        expected = all_entries(store)
    contents = read_wal(tmp_path / "wal")
    assert contents.stale == []
    assert [s.path.name for s in contents.segments] == names[2:]
    with open_store(tmp_path, segment_size=512, keep_snapshots=1) as store:
        assert all_entries(store) == expected


# -- 3. a bad snapshot is set aside before the fallback is recorded --


class Crash(BaseException):
    """The process dies here (a BaseException, so nothing on the way out handles it)."""


def _two_snapshots(d: Path) -> Path:
    """A store with an older and a newer snapshot; corrupts the newer, returns its path."""
    with open_store(d, segment_size=1024) as store:
        fill(store, 20, seed=1)
        store.create_snapshot(10, VOTERS, b"older")
        fill(store, 10, seed=2)
        store.create_snapshot(30, VOTERS, b"newer")
    newest = max((d / "snap").glob("*.snap"))
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0x01
    newest.write_bytes(data)
    return newest


@pytest.mark.parametrize("crash_after", ["restored marker", "set aside"])
def test_crash_during_fallback_keeps_the_bad_snapshot(tmp_path, monkeypatch, crash_after):
    """The bad file must survive, as ``.broken``, whichever step the crash follows.

    Recording RESTORED first and then crashing used to leave the bad file with an index after
    the WAL's newest marker: the next open deleted it as an orphan.
    """
    newest = _two_snapshots(tmp_path)
    bad = newest.read_bytes()
    broken = newest.with_name(newest.name + ".broken")
    real_append, real_set_aside = Wal.append, Snapshotter.set_aside

    def append(self: Wal, records: object) -> None:
        real_append(self, records)  # type: ignore[arg-type]
        if crash_after == "restored marker" and any(
            isinstance(r, SnapshotRecord) and r.kind == SnapshotKind.RESTORED
            for r in records  # type: ignore[attr-defined]
        ):
            raise Crash

    def set_aside(self: Snapshotter, term: int, index: int) -> Path | None:
        moved = real_set_aside(self, term, index)
        if crash_after == "set aside":
            raise Crash
        return moved

    monkeypatch.setattr(Wal, "append", append)
    monkeypatch.setattr(Snapshotter, "set_aside", set_aside)
    with pytest.raises(Crash):
        open_store(tmp_path)
    monkeypatch.undo()
    with open_store(tmp_path) as store:
        assert store.snapshot().data == b"older"
    assert not newest.exists()
    assert broken.read_bytes() == bad
    with open_store(tmp_path) as store:  # and it stays: a .broken file is never an orphan
        assert store.snapshot().data == b"older"
    assert broken.read_bytes() == bad


# -- 4. after a failed fsync the store is not reopened in this process --


def test_fsync_failure_says_exit_and_refuses_reopen_in_this_process(tmp_path, monkeypatch):
    d = tmp_path / "store"
    store = open_store(d, fsync=True)
    store.save(HardState(1, 1, 0), ents(1, 3))
    FaultyDisk(fail_syncs=True).install(monkeypatch)
    with pytest.raises(StoreFsyncFailedError) as info:
        store.save(HardState(1, 1, 3), ents(4, 4))
    message = str(info.value)
    assert "fsync failed" in message
    assert "the process must exit; do not reopen this store in this process" in message
    assert isinstance(info.value, StoreFailedError)
    monkeypatch.undo()
    with pytest.raises(StoreFsyncFailedError, match="process must exit"):
        store.save(HardState(1, 1, 3), ents(4, 4))  # every later write says the same
    store.close()
    for spelling in (d, tmp_path / "." / "store", tmp_path / "store" / ".." / "store"):
        with pytest.raises(StoreFsyncFailedError, match="refusing to open") as refused:
            RaftStore.open(spelling, cluster_id=CLUSTER, member_id=MEMBER, fsync=False)
        assert "do not reopen this store in this process" in str(refused.value)
    link = tmp_path / "link"
    link.symlink_to(d)
    with pytest.raises(StoreFsyncFailedError):
        open_store(link)
    with open_store(tmp_path / "other") as other:  # only that directory is refused
        other.save(HardState(1, 1, 0), ents(1, 1))


def test_fsync_failure_while_opening_refuses_later_opens(tmp_path, monkeypatch):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 3))
        good = store.wal.end_offset
        store.save(HardState(1, 1, 3), ents(4, 9))
    seg = list_segments(tmp_path / "wal")[-1].path
    with seg.open("r+b") as f:
        f.truncate(good + 30)  # a torn tail, which open truncates and syncs
    FaultyDisk(fail_syncs=True).install(monkeypatch)
    with pytest.raises(StoreFsyncFailedError, match="process must exit"):
        open_store(tmp_path, fsync=True)
    monkeypatch.undo()
    with pytest.raises(StoreFsyncFailedError, match="refusing to open"):
        open_store(tmp_path, fsync=True)


# -- 6. a misplaced file gets a named error --


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("wal", "file", "is a regular file, not a directory"),
        ("snap", "file", "is a regular file, not a directory"),
        ("LOCK", "dir", "is a directory, not the regular file the store locks"),
        ("wal", "dangling", "is a dangling symbolic link, not a directory"),
    ],
)
def test_wrong_kind_of_file_in_the_data_directory(tmp_path, name, make, reason):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 2))
    target = tmp_path / name
    moved = tmp_path.parent / f"{tmp_path.name}-{name}-moved"
    target.rename(moved)
    if make == "file":
        target.write_bytes(b"not a directory")
    elif make == "dir":
        target.mkdir()
    else:
        target.symlink_to(tmp_path / "nowhere")
    with pytest.raises(StorageLayoutError) as info:
        open_store(tmp_path)
    assert info.value.path == target
    assert reason in str(info.value)
    assert not isinstance(info.value, OSError)
    target.unlink() if make != "dir" else target.rmdir()
    moved.rename(target)
    with open_store(tmp_path) as store:  # nothing was changed on the way
        assert all_entries(store) == ents(1, 2)


def test_data_directory_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "data"
    path.write_bytes(b"")
    with pytest.raises(StorageLayoutError, match="is a regular file, not a directory"):
        open_store(path)
    assert repair.main([str(path)]) == 1
    assert "is a regular file, not a directory" in capsys.readouterr().out
    with pytest.raises(StorageLayoutError, match="a path component above it") as info:
        open_store(path / "member-1")
    assert info.value.path == path / "member-1"


# -- 7. a damaged WAL names the repair command --


def test_garbage_tail_names_the_repair_command(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 3))
        end = store.wal.end_offset
    seg = list_segments(tmp_path / "wal")[-1].path
    with seg.open("r+b") as f:
        f.seek(end)
        f.write(b"\xa5" * 40)  # garbage, not zeros: not a torn write
    with pytest.raises(WalCorruptError, match="bad record header") as info:
        open_store(tmp_path)
    command = f"python -m kvapp.storage.repair {tmp_path} --cut"
    assert command in str(info.value)
    assert info.value.offset == end
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "kvapp.storage.repair"]
    assert repair.main(argv[3:]) == 0  # the command as printed does the job
    with open_store(tmp_path) as store:
        assert all_entries(store) == ents(1, 3)


def test_repair_hint_quotes_the_directory(tmp_path):
    d = tmp_path / "data dir"
    with open_store(d) as store:
        store.save(HardState(1, 1, 0), ents(1, 1))
        end = store.wal.end_offset
    seg = list_segments(d / "wal")[-1].path
    with seg.open("r+b") as f:
        f.seek(end)
        f.write(b"\xa5" * 16)
    with pytest.raises(WalCorruptError) as info:
        open_store(d)
    assert f"python -m kvapp.storage.repair '{d}' --cut" in str(info.value)


def test_errors_a_cut_cannot_fix_do_not_suggest_it(tmp_path):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 1))
    with pytest.raises(WalIdentityError) as identity:
        RaftStore.open(tmp_path, cluster_id=CLUSTER, member_id=MEMBER + 1, fsync=False)
    assert "repair" not in str(identity.value)
    for seg in list_segments(tmp_path / "wal"):
        seg.path.unlink()
    (tmp_path / "snap" / "0000000000000001-0000000000000001.snap").write_bytes(b"")
    with pytest.raises(WalCorruptError, match="WAL was lost") as lost:
        open_store(tmp_path)
    assert "--cut" not in str(lost.value)
    assert "backup" in str(lost.value)


def test_unusable_snapshot_is_still_reported_as_such(tmp_path):
    """The repair hint is for WAL damage only: snapshot errors keep their own message."""
    newest = _two_snapshots(tmp_path)
    for p in (tmp_path / "snap").glob("*.snap"):
        p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(SnapshotCorruptError) as info:
        open_store(tmp_path)
    assert "--cut" not in str(info.value)
    assert newest.exists()
