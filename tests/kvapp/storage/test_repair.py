"""The operator tool: check only by default, cut after the last good record on --cut."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvapp.storage.errors import WalCorruptError
from kvapp.storage.repair import main
from kvapp.storage.wal import list_segments
from raftlib.types import HardState

from .helpers import VOTERS, Batch, all_entries, fill, open_store

ROOT = Path(__file__).resolve().parents[3]


def build(directory: Path, segment_size: int = 2048) -> list[Batch]:
    with open_store(directory, segment_size=segment_size) as store:
        return fill(store, 60, seed=4)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(data)


def snapshot_of_files(directory: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_healthy_directory(tmp_path, capsys):
    build(tmp_path)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "wal: ok" in out
    assert "snapshot: none" in out


def test_damage_is_reported_and_left_alone_without_cut(tmp_path, capsys):
    batches = build(tmp_path)
    victim = batches[-5]
    flip(victim.path, victim.start + 12)
    before = snapshot_of_files(tmp_path)
    assert main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"offset {victim.start}" in out
    assert "rerun with --cut" in out
    assert snapshot_of_files(tmp_path) == before
    with pytest.raises(WalCorruptError):
        open_store(tmp_path)


def test_cut_keeps_everything_before_the_damage(tmp_path, capsys):
    batches = build(tmp_path)
    victim = batches[-5]
    original = victim.path.read_bytes()
    flip(victim.path, victim.start + 12)
    assert main(["--cut", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cut" in out
    assert "wal: ok" in out
    broken = victim.path.with_name(victim.path.name + ".broken")
    assert broken.read_bytes()[: victim.start] == original[: victim.start]
    with open_store(tmp_path) as store:
        assert all_entries(store) == [e for b in batches[:-5] for e in b.entries]
        assert store.hard_state == batches[-6].hard_state


def test_cut_in_a_sealed_segment_moves_later_segments_aside(tmp_path, capsys):
    batches = build(tmp_path, segment_size=700)
    segs = list_segments(tmp_path / "wal")
    assert len(segs) >= 4
    victim = next(b for b in batches if b.path == segs[1].path)
    flip(victim.path, victim.start + 9)
    assert main(["--cut", str(tmp_path)]) == 0
    assert [s.path for s in list_segments(tmp_path / "wal")] == [segs[0].path, segs[1].path]
    assert all((s.path.parent / (s.path.name + ".broken")).exists() for s in segs[2:])
    with open_store(tmp_path) as store:
        survivors = batches[: batches.index(victim)]
        assert all_entries(store) == [e for b in survivors for e in b.entries]
    capsys.readouterr()


def test_cut_refuses_to_remove_the_whole_wal(tmp_path, capsys):
    build(tmp_path)
    first = list_segments(tmp_path / "wal")[0].path
    flip(first, 10)
    before = snapshot_of_files(tmp_path)
    assert main(["--cut", str(tmp_path)]) == 1
    assert "cut refused" in capsys.readouterr().out
    assert snapshot_of_files(tmp_path) == before


def test_torn_tail_is_healthy(tmp_path, capsys):
    batches = build(tmp_path)
    os.truncate(batches[-1].path, batches[-1].end - 3)
    assert main([str(tmp_path)]) == 0
    assert "torn tail" in capsys.readouterr().out


def test_snapshot_status(tmp_path, capsys):
    with open_store(tmp_path, keep_snapshots=2) as store:
        fill(store, 20, seed=1)
        store.create_snapshot(5, VOTERS, b"five")
        store.create_snapshot(10, VOTERS, b"ten")
        store.save(HardState(1, 2, 10))
    newest = max((tmp_path / "snap").glob("*.snap"))
    flip(newest, 30)
    assert main([str(tmp_path)]) == 0
    assert "fall back" in capsys.readouterr().out
    older = min((tmp_path / "snap").glob("*.snap"))
    assert older != newest
    flip(older, 30)
    assert main([str(tmp_path)]) == 1
    assert "will not start" in capsys.readouterr().out


def test_locked_or_missing_directory(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 1
    build(tmp_path)
    with open_store(tmp_path):
        assert main([str(tmp_path)]) == 1
    assert "stop the node first" in capsys.readouterr().out


def test_runs_as_a_module(tmp_path):
    build(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "kvapp.storage.repair", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "wal: ok" in result.stdout
