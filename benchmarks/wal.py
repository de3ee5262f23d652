"""kvapp WAL throughput with fsync on, next to the disk's raw fsync rate measured in the same run.

For 1, 16 and 256 entries of 256 bytes per batch, measures ``RaftStore.save`` (one WAL record,
one write, one fdatasync per batch) in batches/s and payload MB/s, with segments preallocated
and not. The physical limit is measured alongside: a bare loop of ``pwrite`` + ``fdatasync``
appending blocks of each record's size to a file of the same kind, on the same disk. A CPU-only
row (fsync off) shows the Python cost per batch. Store and raw loop alternate in short slices
so that a shared disk's drift affects both alike.
Prints them and appends a dated section to docs/benchmarks.md.

    python -m benchmarks.wal [--seconds 4] [--slices 16] [--dir DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import shutil
import tempfile
import time

from kvapp.storage.fileutil import fdatasync, preallocate
from kvapp.storage.raftstore import RaftStore
from kvapp.storage.wal import (
    DEFAULT_SEGMENT_SIZE,
    ZERO_AHEAD,
    BatchRecord,
    encode_record,
    frame_record,
)
from raftlib.types import Entry, HardState

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
ENTRY_SIZE = 256
BATCH_SIZES = (1, 16, 256)


def record_size(batch: int) -> int:
    """Bytes of the WAL record holding ``batch`` entries (what one save writes)."""
    ents = tuple(Entry(term=1, index=1 + i, data=bytes(ENTRY_SIZE)) for i in range(batch))
    frame, _ = frame_record(encode_record(BatchRecord(HardState(1, 1, 1), ents)), 0)
    return len(frame)


RAW_KINDS = ("zeros ahead", "fallocate", "append")
"""How a raw loop's file is prepared: preallocated with zeros written ahead of the blocks (as
the WAL does), preallocated only, or grown by the appends."""


class RawAppender:
    """A bare ``pwrite`` + ``fdatasync`` loop appending ``size``-byte blocks to one file."""

    def __init__(self, directory: pathlib.Path, size: int, *, kind: str) -> None:
        self.path = directory / f"raw-{size}-{RAW_KINDS.index(kind)}.dat"
        self.prealloc = kind != "append"
        self.zero_ahead = kind == "zeros ahead"
        self.block = os.urandom(size)
        self.fd = self._new_file()
        self.offset = self.zeroed = 0

    def _new_file(self) -> int:
        """A fresh file per 64 MiB, as the WAL cuts segments: blocks are never rewritten."""
        self.path.unlink(missing_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        if self.prealloc:
            preallocate(fd, DEFAULT_SEGMENT_SIZE)
            os.fsync(fd)
        return fd

    def run(self, seconds: float) -> tuple[int, float]:
        size = len(self.block)
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            if self.offset + size > DEFAULT_SEGMENT_SIZE:
                os.close(self.fd)
                self.fd = self._new_file()
                self.offset = self.zeroed = 0
            os.pwrite(self.fd, self.block, self.offset)
            self.offset += size
            if self.zero_ahead and self.offset > self.zeroed:
                stop = min(self.offset + ZERO_AHEAD, DEFAULT_SEGMENT_SIZE)
                os.pwrite(self.fd, bytes(stop - self.offset), self.offset)
                self.zeroed = stop
            fdatasync(self.fd)
            n += 1
        return n, time.perf_counter() - start

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink()


class StoreSaver:
    """``RaftStore.save`` of ``batch``-entry batches, compacting as a node would.

    Only ``save`` (and the occasional ``compact``) is timed: the entries a Ready hands over
    already exist, so building them is not the store's cost.
    """

    def __init__(self, directory: pathlib.Path, batch: int, *, prealloc: bool, fsync: bool) -> None:
        self.dir = pathlib.Path(tempfile.mkdtemp(dir=directory))
        self.store = RaftStore.open(
            self.dir, cluster_id=1, member_id=1, preallocate=prealloc, fsync=fsync
        )
        self.batch = batch
        self.data = os.urandom(ENTRY_SIZE)

    def run(self, seconds: float) -> tuple[int, float]:
        store = self.store
        n = 0
        busy = 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            first = store.last_index() + 1
            ents = [
                Entry(term=1, index=i, data=self.data) for i in range(first, first + self.batch)
            ]
            hs = HardState(term=1, vote=1, commit=first - 1)
            t0 = time.perf_counter()
            store.save(hs, ents)
            if store.last_index() - store.first_index() > 50_000:
                store.compact(store.last_index() - 10_000)
            busy += time.perf_counter() - t0
            n += 1
        return n, busy

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir)


def paired(
    work: pathlib.Path, batch: int, size: int, seconds: float, slices: int, *, prealloc: bool
) -> tuple[float, float]:
    """Store and raw rates measured in alternating slices, so disk drift hits both alike."""
    raw = RawAppender(work, size, kind=RAW_KINDS[0] if prealloc else "append")
    saver = StoreSaver(work, batch, prealloc=prealloc, fsync=True)
    counts = [0, 0]
    times = [0.0, 0.0]
    try:
        for _ in range(slices):
            runners: tuple[StoreSaver | RawAppender, ...] = (saver, raw)
            for i, runner in enumerate(runners):
                n, t = runner.run(seconds / slices)
                counts[i] += n
                times[i] += t
    finally:
        raw.close()
        saver.close()
    return counts[0] / times[0], counts[1] / times[1]


def preallocation_ab(
    work: pathlib.Path, size: int, seconds: float, slices: int
) -> tuple[float, ...]:
    """Raw rates for each of :data:`RAW_KINDS`, alternating: the preallocation decision."""
    runners = [RawAppender(work, size, kind=kind) for kind in RAW_KINDS]
    counts = [0] * len(runners)
    times = [0.0] * len(runners)
    try:
        for _ in range(slices):
            for i, runner in enumerate(runners):
                n, t = runner.run(seconds / slices)
                counts[i] += n
                times[i] += t
    finally:
        for runner in runners:
            runner.close()
    return tuple(n / t for n, t in zip(counts, times, strict=True))


def cpu_only(work: pathlib.Path, batch: int, seconds: float) -> float:
    saver = StoreSaver(work, batch, prealloc=True, fsync=False)
    try:
        n, t = saver.run(seconds)
    finally:
        saver.close()
    return t / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=4.0, help="duration per figure")
    parser.add_argument("--slices", type=int, default=16, help="alternations per figure")
    parser.add_argument("--dir", type=pathlib.Path, default=ROOT / "tmp", help="disk to test")
    parser.add_argument("--no-write", action="store_true", help="do not append to the docs")
    args = parser.parse_args()
    created = not args.dir.exists()
    args.dir.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="walbench-", dir=args.dir))
    sizes = {b: record_size(b) for b in BATCH_SIZES}
    try:
        results = {
            (prealloc, b): paired(work, b, sizes[b], args.seconds, args.slices, prealloc=prealloc)
            for prealloc in (True, False)
            for b in BATCH_SIZES
        }
        cpu = {b: cpu_only(work, b, 1.0) for b in BATCH_SIZES}
        ab = {b: preallocation_ab(work, sizes[b], args.seconds, args.slices) for b in BATCH_SIZES}
    finally:
        shutil.rmtree(work)
        if created:
            args.dir.rmdir()

    fs = _filesystem(args.dir)
    lines = [
        f"\n## kvapp WAL (benchmarks/wal.py), {datetime.date.today().isoformat()}\n\n",
        f"`RaftStore.save` with fsync on, {ENTRY_SIZE}-byte entries, 64 MiB segments. Python "
        f"{platform.python_version()} on {platform.machine()}, {fs} (a virtual disk); 2 cores "
        "shared with other work at the time, so absolute rates drift: each row alternates "
        f"{args.slices} slices of the store and of the raw loop over {args.seconds:g} s each, "
        "and the ratio is the figure to trust.\n\n",
        "Raw: a bare `pwrite` + `fdatasync` loop appending blocks the size of the batch's WAL "
        "record to a file of the same kind on the same disk (preallocated with zeros written "
        f"{ZERO_AHEAD >> 20} MiB ahead, as the WAL does, or grown by appending): the physical "
        "limit for that batch size.\n\n",
    ]
    for prealloc in (True, False):
        mode = "preallocated segments" if prealloc else "segments grown by appending"
        lines.append(f"**{mode}**\n\n")
        lines.append(
            "| entries/batch | record bytes | batches/s | entries/s | payload MB/s "
            "| raw fsyncs/s | raw MB/s | of raw rate |\n"
        )
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        for b in BATCH_SIZES:
            s, r = results[(prealloc, b)]
            mb = s * b * ENTRY_SIZE / 1e6
            lines.append(
                f"| {b} | {sizes[b]:,} | {s:,.0f} | {s * b:,.0f} | {mb:,.1f} | {r:,.0f} "
                f"| {r * sizes[b] / 1e6:,.1f} | {s / r:.0%} |\n"
            )
        lines.append("\n")
    lines.append(
        "CPU only (fsync off): "
        + ", ".join(f"{b} entries/batch {cpu[b] * 1e6:,.0f} µs" for b in BATCH_SIZES)
        + " per save.\n"
    )
    lines.append(
        "Preallocation, raw loops alternating files "
        + " / ".join(RAW_KINDS)
        + ": "
        + ", ".join(
            f"{sizes[b]:,} B appends "
            + " / ".join(f"{r:,.0f}" for r in ab[b])
            + " fsyncs/s ("
            + " / ".join(f"{r / ab[b][-1]:.2f}x" for r in ab[b])
            + ")"
            for b in ab
        )
        + ". `RaftStore` preallocates segments and writes zeros ahead of the records by default "
        "on the strength of this comparison: appends that grow a file make every fdatasync "
        "journal a new file size, and the first write into preallocated space journals the "
        "change of its extent from unwritten to written.\n"
    )
    text = "".join(lines)
    print(text)
    if args.no_write:
        return
    if not DOCS.exists():
        DOCS.write_text("# Benchmarks\n")
    with DOCS.open("a") as f:
        f.write(text)


def _filesystem(path: pathlib.Path) -> str:
    """A short description of the file system holding ``path`` (Linux /proc/mounts)."""
    try:
        mounts = pathlib.Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown file system"
    best = ("", "unknown", "")
    resolved = str(path.resolve())
    for line in mounts:
        dev, mnt, fstype = line.split()[:3]
        if resolved.startswith(mnt) and len(mnt) > len(best[0]):
            best = (mnt, fstype, dev)
    return f"{best[1]} on {best[2]}"


if __name__ == "__main__":
    main()
