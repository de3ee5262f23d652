"""RaftStore passes raftlib's storage conformance check, across reopens from disk."""

from __future__ import annotations

import itertools
from pathlib import Path

from kvapp.storage.raftstore import RaftStore
from kvapp.storage.snapdata import snapshot_bytes
from raftlib.testing.storage_check import WritableStorage, check_storage


def test_raftstore_conforms_across_reopens(tmp_path: Path) -> None:
    counter = itertools.count()
    stores: list[tuple[Path, RaftStore]] = []

    def open_at(d: Path) -> RaftStore:
        s = RaftStore.open(
            d, cluster_id=1, member_id=1, segment_size=4096, keep_snapshots=2, fsync=False
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
