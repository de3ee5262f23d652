"""A snapshot's data left in its file: FileSnapshotData, and RaftStore holding only that."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kvapp.storage.raftstore import RaftStore
from kvapp.storage.snap import decode_snapshot_file
from kvapp.storage.snapdata import FileSnapshotData, open_snapshot_data, snapshot_bytes
from raftlib.types import Entry, HardState, Snapshot, SnapshotMetadata

from .helpers import CLUSTER, MEMBER, VOTERS, open_store

DATA = bytes(range(256)) * 9000  # over two of the 1 MiB pieces it is read in


def in_file(tmp_path: Path, data: bytes = DATA) -> FileSnapshotData:
    path = tmp_path / "f"
    path.write_bytes(b"head" + data + b"tail")
    return FileSnapshotData(path, 4, len(data))


def test_every_way_of_reading_gives_the_data_and_only_it(tmp_path: Path) -> None:
    d = in_file(tmp_path)
    assert len(d) == len(DATA)
    assert d.read_range(0, len(d)) == DATA
    assert d.read_range(1000, 2_500_000) == DATA[1000:2_500_000]
    assert d.read_range(len(d) - 3, len(d) + 50) == DATA[-3:]  # clipped to the data
    assert d.read_range(10, 10) == b""
    pieces: list[bytes] = []
    d.copy_range(7, len(d) - 7, pieces.append)
    assert len(pieces) > 1
    assert b"".join(pieces) == DATA[7:-7]
    with d.open() as f:
        assert f.read(5) == DATA[:5]
        assert f.read() == DATA[5:]
        assert f.read(1) == b""
    reader = d.reader()
    chunks = []
    while chunk := reader.read(300_000):
        chunks.append(chunk)
    reader.close()
    assert reader.read(10) == b""
    assert b"".join(chunks) == DATA
    assert snapshot_bytes(d) == DATA
    assert open_snapshot_data(d).read() == DATA
    assert d == DATA
    assert d == DATA
    assert d != DATA[:-1]
    assert d != DATA[:-1] + b"x"


def test_it_is_not_bytes_so_misuse_fails_loudly(tmp_path: Path) -> None:
    d = in_file(tmp_path)
    with pytest.raises(TypeError):
        memoryview(d)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bytes(d)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        open_snapshot_data("state")
    with pytest.raises(TypeError):
        snapshot_bytes(3)
    assert snapshot_bytes(bytearray(b"ab")) == b"ab"
    assert isinstance(open_snapshot_data(b"ab"), io.BytesIO)


def test_a_file_deleted_meanwhile_stays_readable_to_its_holder(tmp_path: Path) -> None:
    d = in_file(tmp_path)
    d.path.unlink()
    assert d.read_range(0, len(d)) == DATA


def open_in_file(directory: Path) -> RaftStore:
    return RaftStore.open(
        directory,
        cluster_id=CLUSTER,
        member_id=MEMBER,
        fsync=False,
        preallocate=False,
        snapshot_in_file=True,
    )


def test_by_default_the_store_holds_the_bytes(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), [Entry(term=1, index=i) for i in range(1, 11)])
        store.create_snapshot(5, VOTERS, b"state")
        assert type(store.snapshot().data) is bytes
        assert store.snapshot().data == b"state"


def test_the_store_holds_the_data_in_its_file_from_every_way_a_snapshot_arrives(
    tmp_path: Path,
) -> None:
    kept: list[tuple[object, FileSnapshotData]] = []
    with open_in_file(tmp_path) as store:
        store.on_snapshot_kept = lambda data, source: kept.append((data, source))
        store.save(HardState(1, 1, 0), [Entry(term=1, index=i) for i in range(1, 11)])
        created = b"created" * 100
        store.create_snapshot(5, VOTERS, created)
        held: object = store.snapshot().data
        assert isinstance(held, FileSnapshotData)
        assert kept == [(created, held)]
        assert kept[0][0] is created
        assert held == created
        # the range it reads is the data inside the snapshot file, nothing around it
        md = store.snapshot().metadata
        path = tmp_path / "snap" / held.path.name
        on_disk = decode_snapshot_file(path.read_bytes(), path, term=md.term, index=md.index)
        assert on_disk.data == held.read_range(0, len(held))

        installed = Snapshot(b"installed", SnapshotMetadata(VOTERS, 20, 3))
        store.apply_snapshot(installed)
        held_now: object = store.snapshot().data
        assert isinstance(held_now, FileSnapshotData)
        assert held_now == b"installed"
        assert kept[-1] == (b"installed", held_now)

        store.save(HardState(3, 1, 20), [])
    with open_in_file(tmp_path) as store:  # recovered: from the file, not held in memory
        recovered: object = store.snapshot().data
        assert isinstance(recovered, FileSnapshotData)
        assert recovered == b"installed"


def test_staged_then_adopted_snapshots_are_held_in_their_file(tmp_path: Path) -> None:
    with open_in_file(tmp_path) as store:
        store.save(HardState(1, 1, 0), [Entry(term=1, index=i) for i in range(1, 11)])
        snap = Snapshot(b"staged", SnapshotMetadata(VOTERS, 6, 1))
        store.stage_snapshot(snap)
        store.adopt_snapshot(snap)
        held: object = store.snapshot().data
        assert isinstance(held, FileSnapshotData)
        assert held == b"staged"
