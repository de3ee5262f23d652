"""Snapshot files are written in pieces (the data not copied), byte for byte as one encoding."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cbor2
import pytest

from kvapp.storage.snap import (
    SNAP_FORMAT_VERSION,
    Snapshotter,
    decode_snapshot_file,
    encode_snapshot_file,
)
from raftlib.codec import snapshot_to_array
from raftlib.types import ConfState, Snapshot, SnapshotMetadata

MD = SnapshotMetadata(ConfState(voters=(1, 2), learners=(3,)), index=12, term=3)


def whole(snapshot: Snapshot) -> bytes:
    """The file as the module docstring describes it, encoded in one piece by cbor2."""
    payload = cbor2.dumps(snapshot_to_array(snapshot))
    head = b"KVSNAP" + struct.pack("<H", SNAP_FORMAT_VERSION) + struct.pack("<Q", len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


SIZES = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 70_000]


@pytest.mark.parametrize("size", SIZES)
def test_a_snapshot_file_is_the_one_piece_encoding(size: int, tmp_path: Path) -> None:
    snap = Snapshot(data=bytes(i % 251 for i in range(size)), metadata=MD)
    expected = whole(snap)
    assert encode_snapshot_file(snap) == expected
    path = Snapshotter(tmp_path, fsync=False).save(snap)
    assert path.read_bytes() == expected
    assert decode_snapshot_file(expected, path, term=3, index=12) == snap
