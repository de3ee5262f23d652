"""The real file layer (kvapp.storage.fs.OS) and the helpers on top of it."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from kvapp.storage.fileutil import fsync_dir
from kvapp.storage.fs import FsyncError
from kvapp.storage.simfs import SimFileSystem
from kvapp.storage.snapdata import FileSnapshotData
from kvapp.storage.snapparts import FileRange
from kvapp.transport.spool import SnapshotSpool
from raftlib.types import Message, MessageType, Snapshot, SnapshotMetadata


def test_fsync_dir_syncs_the_directory_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    fsync_dir(tmp_path)
    assert synced == [tmp_path.stat().st_ino]
    assert stat.S_ISDIR(tmp_path.stat().st_mode)


def test_a_directory_that_cannot_be_opened_is_not_a_failed_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running out of descriptors for a moment must not poison the store for the process."""

    def no_descriptors(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(os, "open", no_descriptors)
    with pytest.raises(OSError, match="Too many open files") as info:
        fsync_dir(tmp_path)
    assert info.value.errno == errno.EMFILE
    assert not isinstance(info.value, FsyncError)


def test_a_failed_directory_sync_is_an_fsync_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(FsyncError) as info:
        fsync_dir(tmp_path)
    assert info.value.errno == errno.EIO


def test_a_file_range_copies_between_two_file_systems() -> None:
    """Descriptors of one disk mean nothing on another: the range is read through its source."""
    a, b = SimFileSystem(), SimFileSystem()
    a.write_file(Path("/src"), b"0123456789" * 100)
    b.write_file(Path("/filler"), b"x")  # so the same descriptor number names another file
    source = FileSnapshotData(Path("/src"), 10, 500, a)
    fd = b.open(Path("/dst"), os.O_RDWR | os.O_CREAT)
    b.open(Path("/filler"), os.O_RDONLY)
    FileRange(source, 5, 405).copy_to(b, fd, 0)
    b.close(fd)
    assert b.read_file(Path("/dst")) == (b"0123456789" * 100)[15:415]


def test_a_spool_never_writes_over_a_file_already_there() -> None:
    disk = SimFileSystem()
    disk.mkdir(Path("/spool"))
    taken = Path("/spool/snapshot-0000000000000007-0.spool")
    disk.write_file(taken, b"someone else's")
    snap = Message(
        type=MessageType.SNAP, snapshot=Snapshot(metadata=SnapshotMetadata(index=7, term=1))
    )
    spool = SnapshotSpool(Path("/spool"), disk)
    sink = spool(snap)
    sink.write(b"incoming")
    assert disk.read_file(taken) == b"someone else's"
    sink.close()
    assert disk.read_file(taken) == b"someone else's"
