"""Operator tool: check a data directory's WAL and snapshots, and cut a damaged WAL on request.

Usage::

    python -m kvapp.storage.repair DIR          # check only; changes nothing
    python -m kvapp.storage.repair DIR --cut    # cut the WAL after the last good record

A node refuses to start on a damaged WAL (anything but a torn tail, which a normal start drops).
``--cut`` truncates the log just before the first bad record and moves every later segment aside
(``*.broken``; the cut segment's original is kept as ``<name>.broken`` too). That drops records
the node may have acknowledged: its vote and log then lag what it promised the cluster. Prefer
replacing the member (remove it, wipe the directory, add it back) whenever the rest of the
cluster is healthy; cut only when this copy of the data is needed.

Exit status: 0 healthy (after a cut, if one was made), 1 damaged (or a cut was refused),
2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kvapp.storage.errors import DiskStorageError, SnapshotCorruptError, WalCorruptError
from kvapp.storage.fileutil import DirLock
from kvapp.storage.fs import OS
from kvapp.storage.raftstore import RecoveredLog, check_layout, replay_records
from kvapp.storage.snap import Snapshotter
from kvapp.storage.wal import WalContents, cut_wal, read_wal

__all__ = ["check", "main"]

_MAX_CUTS = 16


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def check(directory: Path) -> tuple[WalContents, RecoveredLog]:
    """Read and replay the WAL of data directory ``directory`` without changing anything.

    Raises:
        WalCorruptError: the WAL is damaged; ``path`` and ``offset`` say where.
    """
    contents = read_wal(directory / "wal")
    return contents, replay_records(contents.records)


def _check_snapshots(directory: Path, log: RecoveredLog) -> bool:
    md = log.snapshot
    if md.index == 0:
        _out("snapshot: none")
        return True
    snapper = Snapshotter(directory / "snap", read_only=True)
    try:
        snapper.load(md.term, md.index)
    except SnapshotCorruptError as exc:
        _out(f"snapshot: DAMAGED {exc}")
        for f in snapper.files():
            if f.index < md.index and log.can_restore(f.index, f.term):
                try:
                    snapper.load(f.term, f.index)
                except SnapshotCorruptError:
                    continue
                _out(f"snapshot: a start will fall back to {f.path.name}")
                return True
        _out("snapshot: no older snapshot can replace it; the node will not start")
        return False
    _out(f"snapshot: index {md.index} term {md.term} ok")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m kvapp.storage.repair",
        description="Check a kvapp data directory; with --cut, cut a damaged WAL.",
    )
    parser.add_argument("directory", type=Path, help="the node's data directory")
    parser.add_argument(
        "--cut",
        action="store_true",
        help="truncate the WAL after the last good record (loses what follows it)",
    )
    args = parser.parse_args(argv)
    root: Path = args.directory
    try:
        check_layout(root)
    except DiskStorageError as exc:
        _out(f"error: {exc}")
        return 1
    if OS.kind(root / "wal") != "dir":
        _out(f"error: {root / 'wal'} does not exist")
        return 1
    lock = DirLock(root / "LOCK")
    try:
        lock.acquire()
    except DiskStorageError as exc:
        _out(f"error: {exc} (stop the node first)")
        return 1
    try:
        return _run(root, cut=args.cut)
    finally:
        lock.release()


def _run(root: Path, *, cut: bool) -> int:
    for _ in range(_MAX_CUTS):
        try:
            contents, log = check(root)
        except WalCorruptError as exc:
            _out(f"wal: DAMAGED {exc}")
            if not cut:
                _out("nothing changed; rerun with --cut to cut the WAL before this record")
                return 1
            try:
                moved = cut_wal(root / "wal", exc.path, exc.offset)
            except ValueError as refusal:
                _out(f"cut refused: {refusal}")
                return 1
            _out(f"cut {exc.path.name} at offset {exc.offset}; kept aside:")
            for p in moved:
                _out(f"  {p.name}")
            continue
        break
    else:
        _out("giving up: the WAL is still damaged after repeated cuts")
        return 1
    segs = contents.segments
    _out(
        f"wal: ok, {len(segs)} segment(s) {segs[0].path.name} .. {segs[-1].path.name}, "
        f"{len(contents.records)} records"
    )
    _out(
        f"log: entries {log.compact_index + 1}..{log.last_index}, hard state "
        f"term={log.hard_state.term} vote={log.hard_state.vote} commit={log.hard_state.commit}"
    )
    if contents.torn is not None:
        t = contents.torn
        _out(f"wal: torn tail at {t.path.name}:{t.offset} ({t.reason}); a start drops it")
    for seg in contents.stale:
        _out(
            f"wal: stale segment {seg.path.name} before a gap (a release was cut short); "
            "a start deletes it: it holds nothing after the snapshot"
        )
    return 0 if _check_snapshots(root, log) else 1


if __name__ == "__main__":
    raise SystemExit(main())
