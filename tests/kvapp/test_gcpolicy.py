"""`kvapp serve` sets its collector thresholds and freezes its startup state (kvapp.gcpolicy)."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from kvapp import gcpolicy
from tests.kvapp.integration.harness import free_ports

# Runs `kvapp serve` in this child; a thread reports the collector's state once the member froze
# its startup state, then stops the member as SIGTERM would.
_CHILD = """
import gc, os, signal, sys, threading, time
from kvapp.cli import main

def report():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not gc.get_freeze_count():
        time.sleep(0.02)
    print("frozen", gc.get_freeze_count(), *gc.get_threshold(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=report, daemon=True).start()
sys.exit(main(sys.argv[1:]))
"""


def test_configure_sets_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        gcpolicy.configure()
        assert gc.get_threshold() == gcpolicy.THRESHOLDS
    finally:
        gc.set_threshold(*before)


def test_kvapp_serve_freezes_its_startup_state_with_the_thresholds_set(tmp_path: Path) -> None:
    client, peer = free_ports(2)
    argv = [
        "serve",
        "--name", "solo",
        "--data-dir", str(tmp_path / "solo"),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"solo=http://127.0.0.1:{peer}",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    words = done.stdout.split()
    assert words[:1] == ["frozen"], f"no report from the member: {done.stdout!r} {done.stderr!r}"
    frozen, *thresholds = map(int, words[1:])
    assert frozen > 1000, "the startup state (modules, the member) was not frozen"
    assert tuple(thresholds) == gcpolicy.THRESHOLDS
    assert done.returncode == 0, done.stderr
