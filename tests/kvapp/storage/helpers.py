"""Shared builders for the storage tests: deterministic stores and WALs with known boundaries,
and a file layer with injected faults and counters."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from kvapp.storage import fileutil
from kvapp.storage import fs as fsmod
from kvapp.storage import wal as walmod
from kvapp.storage.fs import FileSystem
from kvapp.storage.raftstore import RaftStore
from kvapp.storage.wal import DEFAULT_SEGMENT_SIZE
from raftlib.types import ConfState, Entry, HardState

CLUSTER = 0xC1
MEMBER = 0x2


@attrs.define
class Batch:
    """One save(): what went in, and where its record ended in which segment."""

    hard_state: HardState
    entries: list[Entry]
    path: Path
    start: int
    end: int


def open_store(
    directory: Path,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    keep_snapshots: int = 5,
    preallocate: bool = False,
    fsync: bool = False,
) -> RaftStore:
    """Open a store with the test identity; no fsync by default (tests never lose power)."""
    return RaftStore.open(
        directory,
        cluster_id=CLUSTER,
        member_id=MEMBER,
        segment_size=segment_size,
        keep_snapshots=keep_snapshots,
        preallocate=preallocate,
        fsync=fsync,
    )


def fill(
    store: RaftStore,
    n_batches: int,
    *,
    seed: int = 0,
    max_entries: int = 3,
    max_data: int = 24,
    term: int = 1,
) -> list[Batch]:
    """Save ``n_batches`` batches of random entries after the store's last index."""
    rng = random.Random(seed)
    batches = []
    for _ in range(n_batches):
        first = store.last_index() + 1
        ents = [
            Entry(term=term, index=first + i, data=rng.randbytes(rng.randrange(1, max_data)))
            for i in range(rng.randrange(1, max_entries + 1))
        ]
        hs = HardState(term=term, vote=MEMBER, commit=first - 1)
        path = store.wal.segments[-1].path
        start = store.wal.end_offset
        store.save(hs, ents)
        cut = store.wal.segments[-1].path != path  # the save cut a segment after its record
        end = path.stat().st_size if cut else store.wal.end_offset
        batches.append(Batch(hs, ents, path, start, end))
    return batches


def all_entries(store: RaftStore) -> list[Entry]:
    if store.last_index() < store.first_index():
        return []
    return store.entries(store.first_index(), store.last_index() + 1)


VOTERS = ConfState(voters=(1, 2, 3))


@attrs.define
class FaultyDisk:
    """The storage's file layer, with faults to inject and syncs to count.

    Patches the WAL's ``write_all`` and the ``fdatasync``/``fsync`` system calls under
    :mod:`kvapp.storage.fileutil`, so the real wrappers (and their error conversion) still run.

    Attributes:
        syncs: fdatasync and fsync calls made (files and directories).
        writes: WAL record writes made.
        write_keeps: when set, the next WAL writes put only this many bytes of their data in the
            file and then fail with ``write_errno`` (a full disk part-way through a record).
        write_errno: the errno of failed writes.
        fail_syncs: whether syncs fail with EIO (after counting).
    """

    syncs: int = 0
    writes: int = 0
    write_keeps: int | None = None
    write_errno: int = errno.ENOSPC
    fail_syncs: bool = False

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FaultyDisk:
        real_write = fileutil.write_all
        real_fdatasync = fsmod._fdatasync
        real_fsync = os.fsync

        def write_all(fs: FileSystem, fd: int, data: bytes | memoryview, offset: int) -> None:
            self.writes += 1
            if self.write_keeps is None:
                real_write(fs, fd, data, offset)
                return
            fs.pwrite(fd, bytes(data)[: self.write_keeps], offset)
            raise OSError(self.write_errno, os.strerror(self.write_errno))

        def sync(real: Callable[[int], None]) -> Callable[[int], None]:
            def call(fd: int) -> None:
                self.syncs += 1
                if self.fail_syncs:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                real(fd)

            return call

        monkeypatch.setattr(walmod, "write_all", write_all)
        monkeypatch.setattr(fsmod, "_fdatasync", sync(real_fdatasync))
        monkeypatch.setattr(os, "fsync", sync(real_fsync))
        return self
