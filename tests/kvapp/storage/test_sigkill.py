"""Kill -9 a process in a loop while it saves, and check every batch it acknowledged survives."""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .sigkill_child import open_store, payload

ROOT = Path(__file__).resolve().parents[3]
LINE_TIMEOUT = 30.0
ROUNDS = 15


class Child:
    """A running sigkill_child with line-by-line, time-bounded reading of its stdout."""

    def __init__(self, directory: Path, seed: int, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.kvapp.storage.sigkill_child",
                    str(directory),
                    str(seed),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.stdout, selectors.EVENT_READ)
        self.buffer = b""

    def read_line(self) -> str:
        deadline = time.monotonic() + LINE_TIMEOUT
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.selector.select(remaining):
                self.kill()
                pytest.fail(f"child printed nothing for {LINE_TIMEOUT}s; stderr:\n{self.stderr()}")
            chunk = os.read(self.stdout.fileno(), 65536)
            if not chunk:
                pytest.fail(f"child exited ({self.proc.wait()}); stderr:\n{self.stderr()}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def kill(self) -> list[str]:
        """SIGKILL the child and return the lines it printed before dying."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=LINE_TIMEOUT)
        rest = self.buffer + self.stdout.read()
        self.stdout.close()
        self.selector.close()
        return [ln for ln in rest.decode().split("\n") if ln]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def durable_index(line: str) -> int:
    word, _, number = line.partition(" ")
    assert word == "durable", line
    return int(number)


def test_every_acknowledged_batch_survives_sigkill(tmp_path):
    directory = tmp_path / "store"
    rng = random.Random(1234)
    acknowledged = 0
    snapshots_seen = set()
    for round_no in range(ROUNDS):
        child = Child(directory, seed=round_no, stderr_path=tmp_path / f"stderr-{round_no}.txt")
        word, _, recovered = child.read_line().partition(" ")
        assert word == "ready", child.stderr()
        assert int(recovered) >= acknowledged, f"round {round_no}: lost acknowledged entries"
        for _ in range(rng.choice([0, 1, 5, 40, 150, 400])):
            acknowledged = max(acknowledged, durable_index(child.read_line()))
        for line in child.kill():
            acknowledged = max(acknowledged, durable_index(line))
        with open_store(str(directory)) as store:
            last = store.last_index()
            assert last >= acknowledged, f"round {round_no}: {last} < {acknowledged}"
            entries = store.entries(store.first_index(), last + 1)
            assert [e.data for e in entries] == [payload(e.index) for e in entries]
            assert store.hard_state.commit <= last
            snap = store.snapshot()
            if not snap.is_empty():
                assert snap.data == b"state at %d" % snap.metadata.index
                snapshots_seen.add(snap.metadata.index)
    assert acknowledged > 1000
    assert len(snapshots_seen) > 2  # kills also landed around snapshots, pruning and release
