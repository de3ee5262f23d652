"""raftlib.testing.check_storage passes MemoryStorage and catches broken storages."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from raftlib import Entry, MemoryStorage
from raftlib.testing.storage_check import StorageMismatch, check_storage


def test_memory_storage_conforms() -> None:
    for seed in range(5):
        check_storage(MemoryStorage, seed=seed)


class _ForgetsConflicts(MemoryStorage):
    """Appends without truncating a conflicting suffix: a classic storage bug."""

    def append(self, entries: Sequence[Entry]) -> None:
        last = self.last_index()
        super().append([e for e in entries if e.index > last])


class _OffByOneFirstIndex(MemoryStorage):
    def first_index(self) -> int:
        return super().first_index() + (1 if self.snapshot().metadata.index else 0)


@pytest.mark.parametrize("broken", [_ForgetsConflicts, _OffByOneFirstIndex])
def test_broken_storages_are_caught(broken: type[MemoryStorage]) -> None:
    caught = 0
    for seed in range(5):
        try:
            check_storage(broken, seed=seed)
        except StorageMismatch:
            caught += 1
    assert caught >= 3, f"only {caught} of 5 seeds caught {broken.__name__}"
