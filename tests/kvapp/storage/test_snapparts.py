"""SnapshotParts: snapshot data assembled from new bytes and ranges of earlier data, unread.

Each check compares with a plain ``bytes`` model of the same data: what the parts stand for,
their CRC, and the snapshot file a Snapshotter writes from them (byte for byte the file it
writes from the bytes).
"""

from __future__ import annotations

import errno
import os
import random
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvapp.storage.crc import crc32_combine, crc32_suffix
from kvapp.storage.raftstore import RaftStore
from kvapp.storage.snap import Snapshotter, decode_snapshot_file
from kvapp.storage.snapdata import FileSnapshotData
from kvapp.storage.snapparts import FileRange, SnapshotParts
from raftlib.types import Entry, HardState, Snapshot, SnapshotMetadata

from .helpers import CLUSTER, MEMBER, VOTERS

blobs = st.binary(max_size=300)


@given(blobs, blobs)
def test_crc32_combine_is_the_crc_of_the_concatenation(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert crc32_suffix(zlib.crc32(a + b), zlib.crc32(a), len(b)) == zlib.crc32(b)


def test_crc32_combine_over_long_lengths() -> None:
    a, b = os.urandom(1000), os.urandom(3 << 20)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def in_file(directory: Path, data: bytes) -> FileSnapshotData:
    path = directory / f"f{len(list(directory.iterdir()))}"
    path.write_bytes(b"lead" + data + b"trail")
    return FileSnapshotData(path, 4, len(data))


def build(rng: random.Random, directory: Path, generations: int) -> tuple[SnapshotParts, bytes]:
    """Parts built over ``generations``, each taking ranges of the last (in memory or moved to
    a file) at random offsets, beside new bytes; with the bytes they stand for."""
    source: object = b""
    model = b""
    parts = SnapshotParts()
    for _ in range(generations):
        parts = SnapshotParts()
        new = b""
        for _ in range(rng.randrange(1, 6)):
            if model and rng.random() < 0.5:
                lo = rng.randrange(len(model))
                hi = rng.randrange(lo, len(model) + 1)
                parts.add_range(source, lo, hi, zlib.crc32(model[lo:hi]))
                new += model[lo:hi]
            else:
                piece = rng.randbytes(rng.randrange(0, 50))
                parts.write(piece)
                new += piece
        model = new
        source = in_file(directory, model) if rng.random() < 0.4 else parts
    return parts, model


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 5))
def test_parts_stand_for_their_bytes_however_nested(seed: int, generations: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="kvapp-test-") as tmp:
        parts, model = build(rng, Path(tmp), generations)
        assert parts.to_bytes() == model
        assert len(parts) == len(model)
        assert parts.crc == zlib.crc32(model)
        got: list[bytes] = []
        lo = rng.randrange(len(model) + 1)
        hi = rng.randrange(lo, len(model) + 1)
        parts.copy_range(lo, hi, got.append)
        assert b"".join(got) == model[lo:hi]


def sample_parts(tmp_path: Path) -> tuple[SnapshotParts, bytes]:
    old = os.urandom(3 << 20)  # over the 1 MiB pieces a fallback copy reads
    source = in_file(tmp_path, old)
    parts = SnapshotParts()
    parts.write(b"head")
    parts.add_range(source, 10, len(old) - 10, zlib.crc32(old[10:-10]))
    parts.write(b"tail")
    return parts, b"head" + old[10:-10] + b"tail"


def test_a_snapshotter_writes_the_same_file_from_parts_as_from_bytes(tmp_path: Path) -> None:
    parts, model = sample_parts(tmp_path)
    md = SnapshotMetadata(VOTERS, 7, 2)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    from_parts = Snapshotter(a, fsync=False).save(Snapshot(parts, md))  # type: ignore[arg-type]
    from_bytes = Snapshotter(b, fsync=False).save(Snapshot(model, md))
    assert from_parts.read_bytes() == from_bytes.read_bytes()
    loaded = decode_snapshot_file(from_parts.read_bytes(), from_parts, term=2, index=7)
    assert loaded.data == model


def test_without_a_kernel_copy_the_range_is_read_and_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*_: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    parts, model = sample_parts(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    path = Snapshotter(out, fsync=False).save(Snapshot(parts, SnapshotMetadata(VOTERS, 7, 2)))  # type: ignore[arg-type]
    assert decode_snapshot_file(path.read_bytes(), path, term=2, index=7).data == model


def test_a_source_file_cut_short_fails_the_copy(tmp_path: Path) -> None:
    parts, _ = sample_parts(tmp_path)
    piece = parts.pieces[1]
    assert isinstance(piece, FileRange)
    os.truncate(piece.source.path, 1000)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError, match="shorter than it was"):
        Snapshotter(out, fsync=False).save(Snapshot(parts, SnapshotMetadata(VOTERS, 7, 2)))  # type: ignore[arg-type]
    assert not list(out.iterdir())  # the temporary file is gone too


def test_a_range_outside_its_source_is_refused(tmp_path: Path) -> None:
    source = in_file(tmp_path, b"0123456789")
    with pytest.raises(ValueError, match="not within"):
        FileRange(source, 5, 11)


def test_a_store_taking_parts_keeps_their_file_as_the_snapshot_data(tmp_path: Path) -> None:
    parts, model = sample_parts(tmp_path)
    kept: list[tuple[object, object]] = []
    with RaftStore.open(
        tmp_path / "store",
        cluster_id=CLUSTER,
        member_id=MEMBER,
        fsync=False,
        preallocate=False,
        snapshot_in_file=True,
    ) as store:
        assert store.takes_snapshot_parts
        store.on_snapshot_kept = lambda data, source: kept.append((data, source))
        store.save(HardState(1, 1, 0), [Entry(term=1, index=i) for i in range(1, 11)])
        snap = Snapshot(parts, SnapshotMetadata(VOTERS, 6, 1))  # type: ignore[arg-type]
        store.stage_snapshot(snap)
        store.adopt_snapshot(snap)
        held: object = store.snapshot().data
        assert isinstance(held, FileSnapshotData)
        assert held == model
        assert kept == [(parts, held)]
    with RaftStore.open(
        tmp_path / "store", cluster_id=CLUSTER, member_id=MEMBER, fsync=False, preallocate=False
    ) as again:
        assert not again.takes_snapshot_parts  # bytes held in memory: parts not taken
        assert again.snapshot().data == model


@pytest.mark.parametrize("keep_in_file", [True, False])
def test_a_received_snapshot_in_a_file_is_installed_by_copying_it(
    tmp_path: Path, keep_in_file: bool
) -> None:
    # What the peer transport delivers from a spool file (kvapp.transport.spool).
    model = random.Random(7).randbytes(3 * 1024 * 1024 + 5)
    spooled = tmp_path / "spooled"
    spooled.write_bytes(model)
    data = FileSnapshotData(spooled, 0, len(model))
    spooled.unlink()  # as the spool does: the data lives on its open descriptor
    snap = Snapshot(data, SnapshotMetadata(VOTERS, 20, 2))  # type: ignore[arg-type]
    opts: dict[str, Any] = {"cluster_id": CLUSTER, "member_id": MEMBER, "fsync": False}
    opts["preallocate"] = False
    with RaftStore.open(tmp_path / "store", snapshot_in_file=keep_in_file, **opts) as store:
        store.save(HardState(1, 1, 0), [Entry(term=1, index=i) for i in range(1, 4)])
        store.apply_snapshot(snap)
        held: object = store.snapshot().data
        assert isinstance(held, FileSnapshotData if keep_in_file else bytes)
        assert held == model
        assert (store.first_index(), store.last_index()) == (21, 20)
    with RaftStore.open(tmp_path / "store", **opts) as again:
        assert again.snapshot().metadata == snap.metadata
        assert again.snapshot().data == model  # the file verifies: its checksum is right
