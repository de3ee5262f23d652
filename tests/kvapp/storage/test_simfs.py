"""The simulated file system: real-file-system semantics, and what survives a crash."""

from __future__ import annotations

import errno
import functools
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvapp.storage.fs import OS, FileSystem
from kvapp.storage.simfs import SECTOR_SIZE, PowerCut, SimFileSystem

D = Path("/d")
RW_CREATE = os.O_RDWR | os.O_CREAT


def fresh() -> SimFileSystem:
    """A file system with a durable, empty directory ``/d``."""
    fs = SimFileSystem()
    fs.mkdir(D)
    fs.fsync_dir(Path("/"))
    return fs


def create(fs: SimFileSystem, path: Path, data: bytes, *, sync_data: bool = True) -> None:
    fd = fs.open(path, RW_CREATE)
    try:
        assert fs.pwrite(fd, data, 0) == len(data)
        if sync_data:
            fs.fdatasync(fd)
    finally:
        fs.close(fd)


# -- differential: the simulation answers as the real file system does -------------------------

FILES = ["f", "g", "a/f", "a/g", "b/f"]
DIRS = ["a", "b", "a/b"]
ACCESS = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR]
_any_paths = st.sampled_from([*FILES, *DIRS, "."])
_files = st.one_of(st.sampled_from(FILES), st.sampled_from(FILES), _any_paths)
_dirs = st.one_of(st.sampled_from(DIRS), _any_paths)
_handles = st.integers(0, 5)
_offsets = st.integers(0, 700)
_flags = st.builds(
    lambda access, creat, trunc: (
        access | (os.O_CREAT if creat else 0) | (os.O_TRUNC if trunc else 0)
    ),
    st.sampled_from(ACCESS),
    st.booleans(),
    st.booleans(),
)
_ops = st.one_of(
    st.tuples(st.just("mkdir"), _dirs),
    st.tuples(st.just("open"), _files, _flags),
    st.tuples(st.just("open"), _files, _flags.map(lambda f: f | os.O_CREAT)),
    st.tuples(st.just("close"), _handles),
    st.tuples(st.just("pwrite"), _handles, st.binary(max_size=40), _offsets),
    st.tuples(st.just("pwrite"), _handles, st.binary(max_size=40), _offsets),
    st.tuples(st.just("pread"), _handles, st.integers(0, 50), _offsets),
    st.tuples(st.just("ftruncate"), _handles, st.integers(0, 700)),
    st.tuples(st.just("fallocate"), _handles, _offsets, st.integers(0, 60)),
    st.tuples(st.just("copy_range"), _handles, _handles, st.integers(0, 60), _offsets, _offsets),
    st.tuples(st.just("fsize"), _handles),
    st.tuples(st.sampled_from(["fsync", "fdatasync"]), _handles),
    st.tuples(st.just("replace"), _any_paths, _any_paths),
    st.tuples(st.just("unlink"), _files),
    st.tuples(st.just("listdir"), _dirs),
    st.tuples(st.just("kind"), _any_paths),
    st.tuples(st.just("size"), _files),
    st.tuples(st.just("fsync_dir"), _dirs),
)
# Something to work on: a directory, and descriptors (read-write, write-only, read-only).
PRELUDE = [
    ("mkdir", "a"),
    ("open", "f", os.O_RDWR | os.O_CREAT),
    ("open", "a/f", os.O_WRONLY | os.O_CREAT),
    ("open", "f", os.O_RDONLY),
]
_HANDLE_OPS = {"close", "pwrite", "pread", "ftruncate", "fallocate", "copy_range", "fsize"}
_HANDLE_OPS |= {"fsync", "fdatasync"}


def apply(fs: FileSystem, root: Path, fds: list[int], op: tuple[Any, ...]) -> object:
    """Run ``op`` on ``fs`` with paths under ``root``; what it returned (fds as a marker)."""
    name, *args = op
    if name in _HANDLE_OPS:
        args[0] = fds[args[0] % len(fds)]
        if name == "copy_range":
            args[1] = fds[args[1] % len(fds)]
        if name == "close":
            fds.remove(args[0])
    else:
        args[0] = root / args[0]
        if name == "replace":
            args[1] = root / args[1]
    result = getattr(fs, name)(*args)
    if name == "open":
        fds.append(result)
        return "opened"
    return sorted(result) if name == "listdir" else result


def outcome(fn: Callable[[], object]) -> tuple[object, ...]:
    try:
        return ("ok", fn())
    except OSError as exc:
        return ("error", type(exc).__name__, exc.errno)


def tree(fs: FileSystem, root: Path) -> dict[str, bytes | None]:
    """Every name under ``root``: a directory maps to None, a file to its content."""
    out: dict[str, bytes | None] = {}
    for name in fs.listdir(root):
        child = root / name
        if fs.kind(child) == "dir":
            out[name + "/"] = None
            out.update({f"{name}/{k}": v for k, v in tree(fs, child).items()})
        else:
            fd = fs.open(child, os.O_RDONLY)
            try:
                out[name] = fs.pread(fd, 1 << 20, 0)
            finally:
                fs.close(fd)
    return out


def skipped_on_linux(real: Path, op: tuple[Any, ...]) -> bool:
    """Where the simulation deliberately differs: opening a directory read-only, its size."""
    if op[0] == "open" and (real / op[1]).is_dir():
        return not op[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    return bool(op[0] == "size" and (real / op[1]).is_dir())


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_ops, min_size=5, max_size=40))
def test_the_simulation_answers_as_the_real_file_system(ops: list[tuple[Any, ...]]) -> None:
    sim = SimFileSystem()
    sim.mkdir(D)
    real_fds: list[int] = []
    sim_fds: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        real = Path(tmp)
        try:
            for op in [*PRELUDE, *ops]:
                if (op[0] in _HANDLE_OPS and not real_fds) or skipped_on_linux(real, op):
                    continue
                expected = outcome(functools.partial(apply, OS, real, real_fds, op))
                got = outcome(functools.partial(apply, sim, D, sim_fds, op))
                assert got == expected, op
                assert len(sim_fds) == len(real_fds)
            assert tree(sim, D) == tree(OS, real)
        finally:
            for fd in real_fds:
                os.close(fd)


def run_on_both(ops: list[tuple[Any, ...]]) -> list[tuple[tuple[object, ...], tuple[object, ...]]]:
    """Each op's outcome on the real file system and on the simulation, paired."""
    sim = SimFileSystem()
    sim.mkdir(D)
    real_fds: list[int] = []
    sim_fds: list[int] = []
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for op in ops:
                expected = outcome(functools.partial(apply, OS, Path(tmp), real_fds, op))
                pairs.append((expected, outcome(functools.partial(apply, sim, D, sim_fds, op))))
        finally:
            for fd in real_fds:
                os.close(fd)
    return pairs


def test_rename_edge_cases_answer_as_linux() -> None:
    setup: list[tuple[Any, ...]] = [
        ("mkdir", "a"),
        ("mkdir", "a/b"),
        ("mkdir", "e"),
        ("open", "f", RW_CREATE),
    ]
    edge_cases: list[tuple[Any, ...]] = [
        ("replace", "a", "f"),  # a directory over a file: ENOTDIR
        ("replace", "f", "e"),  # a file over a directory: EISDIR
        ("replace", "e", "a"),  # over a non-empty directory: ENOTEMPTY
        ("replace", "a/b", "a"),  # over its own parent: ENOTEMPTY
        ("replace", "a", "a/b/x"),  # into itself: EINVAL
        ("replace", "a", "a/x/y"),  # into a missing directory: ENOENT
        ("replace", "f", "f/x"),  # through a file: ENOTDIR
        ("replace", "a", "a"),  # onto itself: nothing
        ("replace", "e", "a/b"),  # over an empty directory
        ("replace", "x", "e"),  # from nothing: ENOENT
        ("kind", "f/x"),
        ("unlink", "a"),
    ]
    pairs = run_on_both(setup + edge_cases)
    for op, (expected, got) in zip(setup + edge_cases, pairs, strict=True):
        assert got == expected, op
    assert [p[0][0] for p in pairs[len(setup) :]].count("error") == 10


def test_errors_name_the_path_and_carry_the_errno() -> None:
    fs = fresh()
    with pytest.raises(FileNotFoundError) as missing:
        fs.open(D / "nope", os.O_RDONLY)
    assert missing.value.errno == errno.ENOENT
    assert missing.value.filename == "/d/nope"
    with pytest.raises(FileNotFoundError) as no_parent:
        fs.mkdir(D / "x" / "y")
    assert no_parent.value.filename == "/d/x/y"
    with pytest.raises(FileExistsError):
        fs.mkdir(D)
    with pytest.raises(FileNotFoundError) as rename:
        fs.replace(D / "a", D / "b")
    assert (rename.value.filename, rename.value.filename2) == ("/d/a", "/d/b")
    with pytest.raises(IsADirectoryError):
        fs.open(D, os.O_RDONLY)
    fs.close(fs.open(D / "f", RW_CREATE | os.O_EXCL))
    with pytest.raises(FileExistsError):
        fs.open(D / "f", RW_CREATE | os.O_EXCL)
    fd = fs.open(D / "f", os.O_RDONLY)
    with pytest.raises(OSError, match="Bad file descriptor") as write_ro:
        fs.pwrite(fd, b"x", 0)
    assert write_ro.value.errno == errno.EBADF
    fs.close(fd)
    with pytest.raises(OSError, match="Bad file descriptor"):
        fs.close(fd)


def test_relative_paths_are_names_under_the_root() -> None:
    fs = SimFileSystem()
    assert fs.kind(Path(".")) == "dir"
    fs.mkdir(Path("data"))
    create(fs, Path("data/f"), b"x")
    assert fs.read_file(Path("/data/f")) == b"x"
    assert fs.realpath(Path("data/../data/f")) == "/data/f"
    assert fs.files() == {"/data/f": b"x"}


# -- durability ---------------------------------------------------------------------------------


def test_an_unsynced_write_is_lost_and_a_synced_one_kept() -> None:
    fs = fresh()
    fs.write_file(D / "f", b"base")
    fd = fs.open(D / "f", os.O_RDWR)
    fs.pwrite(fd, b"1111", 4)
    fs.fdatasync(fd)
    fs.pwrite(fd, b"2222", 8)
    assert fs.read_file(D / "f") == b"base11112222"
    after = fs.crash()
    assert after.read_file(D / "f") == b"base1111"


def test_a_synced_file_whose_directory_is_not_synced_is_gone() -> None:
    fs = fresh()
    create(fs, D / "f", b"data")
    assert fs.durable_files() == {}
    assert fs.crash().files() == {}


def test_a_directory_synced_after_the_file_keeps_both() -> None:
    fs = fresh()
    create(fs, D / "f", b"data")
    fs.fsync_dir(D)
    assert fs.crash().files() == {"/d/f": b"data"}


def test_a_name_synced_before_its_data_keeps_the_name_but_not_the_data() -> None:
    fs = fresh()
    create(fs, D / "f", b"data", sync_data=False)
    fs.fsync_dir(D)
    assert fs.crash().files() == {"/d/f": b""}


def test_a_new_directory_is_durable_only_once_its_parent_is_synced() -> None:
    fs = fresh()
    fs.mkdir(D / "sub")
    create(fs, D / "sub" / "f", b"x")
    fs.fsync_dir(D / "sub")
    assert fs.durable_files() == {}
    fs.fsync_dir(D)
    assert fs.crash().files() == {"/d/sub/f": b"x"}


def test_a_replace_without_a_directory_sync_is_undone_by_a_crash() -> None:
    fs = fresh()
    fs.write_file(D / "f", b"old")
    create(fs, D / "tmp", b"new")
    fs.replace(D / "tmp", D / "f")
    assert fs.files() == {"/d/f": b"new"}
    assert fs.crash().files() == {"/d/f": b"old"}


def test_a_replace_followed_by_a_directory_sync_survives() -> None:
    fs = fresh()
    fs.write_file(D / "f", b"old")
    create(fs, D / "tmp", b"new")
    fs.replace(D / "tmp", D / "f")
    fs.fsync_dir(D)
    assert fs.crash().files() == {"/d/f": b"new"}


def test_an_unsynced_unlink_is_undone_by_a_crash() -> None:
    fs = fresh()
    fs.write_file(D / "f", b"kept")
    fs.unlink(D / "f")
    assert fs.files() == {}
    assert fs.crash().files() == {"/d/f": b"kept"}


def test_write_file_not_durable_leaves_pending_operations() -> None:
    fs = fresh()
    fs.write_file(D / "f", b"x", durable=False)
    assert fs.read_file(D / "f") == b"x"
    assert fs.durable_files() == {}


def test_corrupt_changes_current_and_durable_bytes() -> None:
    fs = fresh()
    fs.write_file(D / "f", b"abcdef")
    fs.corrupt(D / "f", 2, b"XY")
    assert fs.read_file(D / "f") == b"abXYef"
    with pytest.raises(ValueError, match="not within"):
        fs.corrupt(D / "f", 5, b"XY")
    assert fs.crash().read_file(D / "f") == b"abXYef"


# -- crash(rng): a prefix of each file's and each directory's pending operations ----------------


def model_apply(data: bytes, op: tuple[Any, ...]) -> bytes:
    """The naive twin of a data operation."""
    match op:
        case ("write", offset, payload):
            if not payload:
                return data
            padded = data.ljust(offset, b"\0")
            return padded[:offset] + bytes(payload) + padded[offset + len(payload) :]
        case ("truncate", size):
            return data[:size].ljust(size, b"\0")
        case ("allocate", offset, length):
            return data.ljust(offset + length, b"\0")
        case _:
            raise AssertionError(op)


def admissible(durable: bytes, pending: list[tuple[Any, ...]]) -> set[bytes]:
    """Every content a crash may leave: a prefix of ``pending``, the last write torn or not."""
    out = {durable}
    state = durable
    for op in pending:
        if op[0] == "write":
            _, offset, payload = op
            boundary = (offset // SECTOR_SIZE + 1) * SECTOR_SIZE
            while boundary < offset + len(payload):
                out.add(model_apply(state, ("write", offset, payload[: boundary - offset])))
                boundary += SECTOR_SIZE
        state = model_apply(state, op)
        out.add(state)
    return out


_data_ops = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 1600), st.binary(max_size=1100)),
    st.tuples(st.just("truncate"), st.integers(0, 1600)),
    st.tuples(st.just("allocate"), st.integers(0, 1600), st.integers(1, 600)),
    st.tuples(st.just("sync")),
)


@settings(max_examples=150, deadline=None)
@given(
    base=st.binary(max_size=1200),
    ops=st.lists(_data_ops, max_size=6),
    rng=st.randoms(use_true_random=False),
)
def test_a_crash_keeps_a_prefix_of_a_files_pending_operations_the_last_write_torn(
    base: bytes, ops: list[tuple[Any, ...]], rng: random.Random
) -> None:
    fs = fresh()
    fs.write_file(D / "f", base)
    fd = fs.open(D / "f", os.O_RDWR)
    durable, current = base, base
    pending: list[tuple[Any, ...]] = []
    for op in ops:
        match op:
            case ("sync",):
                fs.fdatasync(fd)
                durable, pending = current, []
                continue
            case ("write", offset, payload):
                assert fs.pwrite(fd, payload, offset) == len(payload)
            case ("truncate", size):
                fs.ftruncate(fd, size)
            case ("allocate", offset, length):
                fs.fallocate(fd, offset, length)
            case _:
                raise AssertionError(op)
        pending.append(op)
        current = model_apply(current, op)
        assert fs.read_file(D / "f") == current
    assert fs.durable_files() == {"/d/f": durable}
    after = fs.crash(rng).read_file(D / "f")
    assert after in admissible(durable, pending)


@pytest.mark.parametrize(
    ("offset", "size", "lengths"),
    [
        (0, 3 * SECTOR_SIZE, {0, SECTOR_SIZE, 2 * SECTOR_SIZE, 3 * SECTOR_SIZE}),
        (100, 1000, {0, SECTOR_SIZE, 2 * SECTOR_SIZE, 1100}),  # sectors are offset-aligned
    ],
)
def test_a_crash_can_tear_a_write_at_each_sector_boundary(
    offset: int, size: int, lengths: set[int]
) -> None:
    outcomes = set()
    for seed in range(100):
        fs = fresh()
        fs.write_file(D / "f", b"")
        fd = fs.open(D / "f", os.O_WRONLY)
        fs.pwrite(fd, b"x" * size, offset)
        after = fs.crash(random.Random(seed)).read_file(D / "f")
        assert after.strip(b"x") == bytes(min(offset, len(after)))
        outcomes.add(len(after))
    assert outcomes == lengths


_names = st.sampled_from(["x", "y", "z"])
_name_ops = st.one_of(
    st.tuples(st.just("create"), _names),
    st.tuples(st.just("replace"), _names, _names),
    st.tuples(st.just("unlink"), _names),
    st.tuples(st.just("sync")),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_name_ops, max_size=8), rng=st.randoms(use_true_random=False))
def test_a_crash_keeps_a_prefix_of_a_directorys_pending_operations(
    ops: list[tuple[Any, ...]], rng: random.Random
) -> None:
    fs = fresh()
    states = [fs.files()]
    for i, op in enumerate(ops):
        try:
            match op:
                case ("sync",):
                    fs.fsync_dir(D)
                    states = [fs.files()]
                    continue
                case ("create", name):
                    fd = fs.open(D / name, RW_CREATE | os.O_EXCL)
                    fs.pwrite(fd, b"%d" % i, 0)
                    fs.fdatasync(fd)
                    fs.close(fd)
                case ("replace", src, dst):
                    fs.replace(D / src, D / dst)
                case ("unlink", name):
                    fs.unlink(D / name)
                case _:
                    raise AssertionError(op)
        except (FileNotFoundError, FileExistsError):
            continue
        states.append(fs.files())
    assert fs.durable_files() == states[0]
    assert fs.crash(rng).files() in states


def test_a_rename_between_directories_survives_in_each_independently() -> None:
    outcomes = set()
    for seed in range(64):
        fs = fresh()
        fs.mkdir(D / "a")
        fs.mkdir(D / "b")
        fs.fsync_dir(D)
        fs.write_file(D / "a" / "f", b"f")
        fs.replace(D / "a" / "f", D / "b" / "f")
        outcomes.add(tuple(fs.crash(random.Random(seed)).files()))
    assert outcomes == {(), ("/d/a/f",), ("/d/b/f",), ("/d/a/f", "/d/b/f")}


# -- capacity, faults, power cuts, locks, descriptors --------------------------------------------


def test_a_write_past_the_capacity_is_short_then_refused() -> None:
    fs = SimFileSystem(capacity=1000)
    fs.mkdir(D)
    fd = fs.open(D / "f", RW_CREATE)
    assert fs.pwrite(fd, b"a" * 600, 0) == 600
    assert fs.free_bytes(D) == 400
    assert fs.used_bytes() == 600
    assert fs.pwrite(fd, b"b" * 600, 600) == 400
    assert fs.fsize(fd) == 1000
    assert fs.free_bytes(D) == 0
    with pytest.raises(OSError, match="No space") as full:
        fs.pwrite(fd, b"c", 1000)
    assert full.value.errno == errno.ENOSPC
    assert fs.pwrite(fd, b"c" * 10, 0) == 10  # overwriting takes no space
    with pytest.raises(OSError, match="No space"):
        fs.ftruncate(fd, 1001)
    with pytest.raises(OSError, match="No space"):
        fs.fallocate(fd, 990, 20)
    assert fs.fsize(fd) == 1000
    fs.capacity = 1100
    fs.fallocate(fd, 990, 20)
    assert fs.fsize(fd) == 1010
    assert fs.pwrite(fd, b"d" * 50, 1050) == 50
    assert fs.free_bytes(D) == 0


def test_a_write_whose_gap_alone_does_not_fit_is_refused() -> None:
    fs = SimFileSystem(capacity=100)
    fd = fs.open(Path("/f"), RW_CREATE)
    with pytest.raises(OSError, match="No space"):
        fs.pwrite(fd, b"x", 100)
    assert fs.pwrite(fd, b"xyz", 98) == 2
    assert fs.read_file(Path("/f")) == bytes(98) + b"xy"


def test_an_unlinked_file_takes_space_until_closed_and_a_replaced_one_none() -> None:
    fs = SimFileSystem(capacity=100)
    fd = fs.open(Path("/f"), RW_CREATE)
    fs.pwrite(fd, b"x" * 60, 0)
    fs.unlink(Path("/f"))
    assert fs.free_bytes(Path("/")) == 40
    fs.close(fd)
    assert fs.free_bytes(Path("/")) == 100
    fs.write_file(Path("/old"), b"x" * 30)
    fs.write_file(Path("/new"), b"y" * 10)
    fs.replace(Path("/new"), Path("/old"))
    assert fs.free_bytes(Path("/")) == 90
    assert SimFileSystem().free_bytes(Path("/")) == 2**50


def test_the_fault_hook_fails_a_call_which_then_changes_nothing() -> None:
    fs = fresh()
    fs.write_file(D / "f", b"durable")
    fd = fs.open(D / "f", os.O_RDWR)
    fs.pwrite(fd, b"pending", 7)
    calls: list[tuple[str, str | None]] = []
    eio = OSError(errno.EIO, "injected")

    def fault(method: str, path: str | None) -> OSError | None:
        calls.append((method, path))
        return eio if method != "fsize" else None

    fs.fault = fault
    before = (fs.files(), fs.durable_files(), fs.mutations)
    attempts: list[Callable[[], object]] = [
        lambda: fs.fdatasync(fd),
        lambda: fs.fsync(fd),
        lambda: fs.pwrite(fd, b"x", 0),
        lambda: fs.ftruncate(fd, 0),
        lambda: fs.fallocate(fd, 0, 100),
        lambda: fs.copy_range(fd, fd, 3, 0, 50),
        lambda: fs.replace(D / "f", D / "g"),
        lambda: fs.unlink(D / "f"),
        lambda: fs.mkdir(D / "sub"),
        lambda: fs.fsync_dir(D),
        lambda: fs.open(D / "new", RW_CREATE),
        lambda: fs.lock(D / "LOCK"),
        lambda: fs.close(fd),
    ]
    for attempt in attempts:
        with pytest.raises(OSError, match="injected") as raised:
            attempt()
        assert raised.value is eio
    assert fs.files() == before[0]
    assert fs.durable_files() == before[1]
    assert fs.mutations == before[2] + 11
    assert fs.fsize(fd) == 14
    assert calls[0] == ("fdatasync", "/d/f")
    assert ("replace", "/d/f") in calls
    assert ("lock", "/d/LOCK") in calls
    assert fs.open_fds() == 1
    assert fs.held_locks() == 0


def test_the_fault_hook_sees_every_file_system_method() -> None:
    fs = fresh()
    seen: set[str] = set()
    fs.fault = lambda method, path: seen.add(method)
    fd = fs.open(D / "f", RW_CREATE)
    fd2 = fs.open(D / "g", RW_CREATE)
    fs.pwrite(fd, b"abc", 0)
    fs.pread(fd, 3, 0)
    fs.fdatasync(fd)
    fs.fsync(fd)
    fs.ftruncate(fd, 3)
    fs.fsize(fd)
    fs.fallocate(fd, 0, 3)
    fs.copy_range(fd, fd2, 3, 0, 0)
    fs.close(fd)
    fs.close(fd2)
    fs.fsync_dir(D)
    fs.replace(D / "f", D / "h")
    fs.unlink(D / "h")
    fs.mkdir(D / "sub")
    fs.listdir(D)
    fs.kind(D)
    fs.size(D / "g")
    fs.free_bytes(D)
    fs.lock(D / "LOCK").release()
    fs.realpath(D)
    methods = {
        name
        for name in vars(FileSystem)
        if not name.startswith("_") and callable(getattr(fs, name))
    }
    assert seen == methods


def workload(fs: SimFileSystem) -> None:
    fd = fs.open(D / "tmp", RW_CREATE)  # 1
    fs.pwrite(fd, b"one", 0)  # 2
    fs.pread(fd, 3, 0)
    fs.fdatasync(fd)  # 3
    fs.close(fd)
    held = fs.lock(D / "LOCK")
    fs.fsync_dir(D)  # 4
    fs.replace(D / "tmp", D / "final")  # 5
    fs.fsync_dir(D)  # 6
    held.release()


def test_mutations_counts_mutating_calls_only() -> None:
    fs = fresh()
    start = fs.mutations
    workload(fs)
    assert fs.mutations - start == 6
    assert not fs.power_lost


@pytest.mark.parametrize("n", range(7))
def test_a_power_cut_stops_the_n_plus_first_mutating_call(n: int) -> None:
    fs = fresh()
    start = fs.mutations
    fs.power_cut_after(n)
    if n == 6:
        workload(fs)
        assert not fs.power_lost
        return
    with pytest.raises(PowerCut):
        workload(fs)
    assert fs.power_lost
    assert fs.mutations - start == n
    with pytest.raises(PowerCut):
        fs.kind(D)
    with pytest.raises(PowerCut):
        fs.close(3)
    after = fs.crash()
    assert not after.power_lost
    # The fourth mutating call, fsync_dir, made tmp (synced by the third) and LOCK durable.
    assert after.files() == ({"/d/LOCK": b"", "/d/tmp": b"one"} if n >= 4 else {})


def test_a_power_cut_passes_through_except_exception() -> None:
    fs = fresh()
    fs.power_cut_after(0)

    def like_storage_code() -> None:
        try:
            fs.mkdir(D / "x")
        except Exception:  # noqa: BLE001 - what storage code does; the cut must get through
            return

    with pytest.raises(PowerCut):
        like_storage_code()
    with pytest.raises(ValueError, match="n >= 0"):
        fresh().power_cut_after(-1)


def test_a_lock_is_exclusive_until_released() -> None:
    fs = fresh()
    held = fs.lock(D / "LOCK")
    assert fs.kind(D / "LOCK") == "file"
    assert fs.held_locks() == 1
    with pytest.raises(BlockingIOError) as busy:
        fs.lock(D / "LOCK")
    assert busy.value.errno == errno.EWOULDBLOCK
    held.release()
    held.release()
    assert fs.held_locks() == 0
    again = fs.lock(D / "LOCK")
    assert fs.open_fds() == 0
    assert fs.crash().files() == {}  # the lock file's creation was never synced
    again.release()


def test_an_unlinked_or_replaced_file_stays_readable_through_an_open_fd() -> None:
    fs = fresh()
    fs.write_file(D / "f", b"first")
    fs.write_file(D / "g", b"second")
    fd = fs.open(D / "f", os.O_RDWR)
    fd_g = fs.open(D / "g", os.O_RDONLY)
    fs.unlink(D / "f")
    fs.replace(D / "g", D / "h")
    assert fs.kind(D / "f") is None
    assert fs.pread(fd, 10, 0) == b"first"
    assert fs.pwrite(fd, b"!", 5) == 1
    assert fs.pread(fd, 10, 0) == b"first!"
    assert fs.pread(fd_g, 10, 0) == b"second"
    assert fs.files() == {"/d/h": b"second"}


def test_copy_range_copies_up_to_the_end_of_the_source() -> None:
    fs = fresh()
    fs.write_file(D / "src", b"0123456789")
    src = fs.open(D / "src", os.O_RDONLY)
    dst = fs.open(D / "dst", RW_CREATE)
    assert fs.copy_range(src, dst, 4, 2, 0) == 4
    assert fs.copy_range(src, dst, 100, 8, 10) == 2
    assert fs.copy_range(src, dst, 100, 10, 0) == 0
    assert fs.read_file(D / "dst") == b"2345" + bytes(6) + b"89"


def test_a_crashed_file_system_refuses_every_call() -> None:
    fs = fresh()
    fs.capacity = 10_000
    fs.fault = lambda method, path: None
    fd = fs.open(D / "f", RW_CREATE)
    after = fs.crash()
    for call in (
        lambda: fs.kind(D),
        lambda: fs.pread(fd, 1, 0),
        fs.files,
        fs.crash,
    ):
        with pytest.raises(OSError, match="crashed") as refused:
            call()
        assert refused.value.errno == errno.EIO
    assert after.capacity == 10_000
    assert after.fault is fs.fault
    assert after.open_fds() == 0
    with pytest.raises(OSError, match="Bad file descriptor"):
        after.fsize(fd)
    assert after.open(D / "g", RW_CREATE) > fd


def test_descriptors_start_at_3_and_are_never_reused() -> None:
    fs = fresh()
    fds = []
    for _ in range(5):
        fd = fs.open(D / "f", RW_CREATE)
        fds.append(fd)
        fs.close(fd)
    assert fds == [3, 4, 5, 6, 7]
    held = [fs.open(D / "f", os.O_RDONLY) for _ in range(3)]
    assert fs.open_fds() == 3
    for fd in held:
        fs.close(fd)
    assert fs.open_fds() == 0
