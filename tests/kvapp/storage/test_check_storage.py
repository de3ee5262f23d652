"""RaftStore passes raftlib's storage conformance check, across reopens from disk."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from kvapp.storage.entrylog import DEFAULT_HOT_BYTES
from kvapp.storage.raftstore import RaftStore
from kvapp.storage.snapdata import snapshot_bytes
from raftlib.testing.storage_check import WritableStorage, check_storage


@pytest.mark.parametrize(
    ("hot_bytes", "in_file"), [(DEFAULT_HOT_BYTES, False), (0, True), (50, False), (50, True)]
)
def test_raftstore_conforms_across_reopens(tmp_path: Path, hot_bytes: int, in_file: bool) -> None:
    """Also with committed entries' data read back from the WAL (none held, or a little), and
    with the snapshot's data left in its file."""
    counter = itertools.count()
    stores: list[tuple[Path, RaftStore]] = []

    def open_at(d: Path) -> RaftStore:
        s = RaftStore.open(
            d,
            cluster_id=1,
            member_id=1,
            segment_size=4096,
            keep_snapshots=2,
            fsync=False,
            hot_bytes=hot_bytes,
            snapshot_in_file=in_file,
        )
        stores.append((d, s))
        return s

    def factory() -> WritableStorage:
        return open_at(tmp_path / f"store{next(counter)}")

    def reopen(s: WritableStorage) -> WritableStorage:
        d = next(d for d, st in stores if st is s)
        s.close()  # type: ignore[attr-defined]
        return open_at(d)

    try:
        for seed in range(3):
            check_storage(
                factory, seed=seed, steps=150, reopen=reopen, snapshot_data=snapshot_bytes
            )
    finally:
        for _, s in stores:
            s.close()
