"""``python -m raftlib.testing.replay``: step-by-step replays of schedules and seeded runs."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys

import pytest

import raftlib.log
from raftlib.testing.replay import main

SCRIPT = """# raftlib.testing schedule v1
cluster voters=1,2,3 seed=1
campaign 1
stabilize
put 1 k v1
deliver 1->2 APP
crash 2 torn=1
restart 2
stabilize
get 3 k
stabilize
"""


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_replays_a_schedule_step_by_step(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ok.txt"
    path.write_text(SCRIPT)
    code, text = run(str(path))
    assert code == 0
    assert "[1] campaign 1" in text
    assert "[5] crash 2 torn=1" in text
    assert "  2: DOWN term=1" in text
    assert "  1: leader        term=1 vote=1 commit=2 applied=2 log=[1-2@t1]" in text
    assert text.rstrip().endswith("OK: 9 events, every check passed")


def test_tail_prints_only_the_last_steps(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ok.txt"
    path.write_text(SCRIPT)
    code, text = run(str(path), "--tail", "2")
    assert code == 0
    assert "[8] get 3 k" in text
    assert "[7]" not in text


def test_a_failing_schedule_exits_1_and_names_the_property(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        raftlib.log.RaftLog,
        "next_committed_entries",
        lambda self: (
            self.slice(self.applied + 1, self.last_index() + 1, None)
            if self.last_index() > self.applied
            else []
        ),
    )
    path = tmp_path / "bad.txt"
    path.write_text(SCRIPT)
    code, text = run(str(path), "--quiet")
    assert code == 1
    assert "FAILED: InvariantViolation: [applied-le-committed]" in text


def test_seeded_run_with_shrink_and_save(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(raftlib.log.RaftLog, "is_up_to_date", lambda self, index, term: True)
    saved = tmp_path / "min.txt"
    code, text = run(
        "--seed", "0", "--duration", "20000", "--no-pre-vote", "--no-check-quorum",
        "--shrink", "--quiet", "--save", str(saved),
    )  # fmt: skip
    assert code == 1
    assert "[leader-completeness]" in text
    lines = [ln for ln in saved.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0].startswith("cluster voters=1,2,3 seed=0 pre_vote=0 check_quorum=0")
    assert len(lines) < 80


def test_usage_errors(tmp_path: pathlib.Path) -> None:
    assert run()[0] == 2
    assert run("x.txt", "--seed", "1")[0] == 2
    bad = tmp_path / "bad.txt"
    bad.write_text("cluster voters=1\nfrobnicate 1\n")
    code, text = run(str(bad))
    assert code == 2
    assert "bad schedule: line 2" in text


def test_runs_as_a_module(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ok.txt"
    path.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "raftlib.testing.replay", str(path), "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        cwd=pathlib.Path(__file__).parents[3],
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK: 9 events" in proc.stdout
