"""``python -m raftlib.testing.replay``: step-by-step replays of schedules and seeded runs."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys

import pytest

import raftlib.log
from raftlib.testing import Model
from raftlib.testing.machine import ClusterMachine
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


COUNTER = "tests.raftlib.testing.test_machine"
COUNTER_SCRIPT = f"""cluster voters=1,2,3 seed=1
campaign 1
stabilize
write 1 {b"2".hex()}
write 2 {b"3".hex()}
stabilize
read 3 {b"total".hex()}
stabilize
"""


def test_replays_a_custom_state_machine_with_its_model(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "counter.txt"
    path.write_text(COUNTER_SCRIPT)
    code, text = run(str(path), "--quiet")
    assert code == 1
    assert "not a KV command" in text
    code, text = run(
        str(path), "--state-machine", f"{COUNTER}:Counter", "--model", f"{COUNTER}:COUNTER_MODEL"
    )
    assert code == 0, text
    assert "[6] read 3 746f74616c" in text
    assert text.rstrip().endswith("OK: 7 events, every check passed")
    code, text = run(str(path), "--quiet", "--state-machine", f"{COUNTER}:Counter")
    assert (code, text) == (0, "OK: 7 events, every check passed (no model: history not checked)\n")


def test_a_custom_model_catches_a_wrong_answer(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "counter.txt"
    path.write_text(COUNTER_SCRIPT)
    code, text = run(
        str(path),
        "--quiet",
        "--state-machine",
        f"{COUNTER}:Counter",
        "--model",
        "tests.raftlib.testing.test_replay:WRONG_COUNTER_MODEL",
    )
    assert code == 1
    assert text.startswith("FAILED: NotLinearizable: not linearizable")


def _wrong_step(state: int, inp: tuple[str, bytes], out: bytes | None) -> tuple[bool, int]:
    """A counter model that expects every write to add one more than it does."""
    kind, payload = inp
    if kind == "write":
        return True, state + int(payload) + 1
    return out == str(state).encode(), state


WRONG_COUNTER_MODEL = Model(init=lambda: 0, step=_wrong_step)


def test_the_machine_names_the_replay_command_of_its_state_machine(tmp_path: pathlib.Path) -> None:
    from tests.raftlib.testing.test_machine import CounterMachine

    assert ClusterMachine.replay_command() == "python -m raftlib.testing.replay FILE"
    command = CounterMachine.replay_command()
    assert command == (
        f"python -m raftlib.testing.replay --state-machine {COUNTER}:Counter "
        f"--model {COUNTER}:CounterMachine.model FILE"
    )
    path = tmp_path / "counter.txt"
    path.write_text(COUNTER_SCRIPT)
    argv = command.split()[3:-1]
    assert run(str(path), "--quiet", *argv) == (0, "OK: 7 events, every check passed\n")


def test_quiet_prints_only_the_verdict(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ok.txt"
    path.write_text(SCRIPT)
    assert run(str(path), "--quiet") == (0, "OK: 9 events, every check passed\n")
    code, text = run("--seed", "1", "--duration", "2000", "--quiet")
    assert code == 0
    assert text.count("\n") == 1
    assert text.startswith("OK: ")


def test_bad_state_machine_or_model_names(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ok.txt"
    path.write_text(SCRIPT)
    assert run(str(path), "--state-machine", "Counter")[0] == 2
    code, text = run(str(path), "--state-machine", "no.such.module:Counter")
    assert code == 2
    assert "cannot load" in text
    code, text = run(str(path), "--model", f"{COUNTER}:Counter")
    assert code == 2
    assert "is not a raftlib.testing.Model" in text
    code, text = run("--seed", "1", "--state-machine", f"{COUNTER}:Counter")
    assert code == 2
    assert "default KV state machine only" in text
