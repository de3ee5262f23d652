"""``etcdctl check perf`` (etcd 3.4's, unchanged) against ``kvapp cluster`` (issue 12).

etcdctl 3.4's smallest load (``--load=s``: 50 clients, 150 puts/s, 60 s) has no option to run
shorter (``--load`` s/m/l/xl all run 60 s), so this test takes about 70 s and runs only with
``KVAPP_SLOW=1`` (and Debian's ``etcd-client``). It is a manual check: CI (``.ci/run``) never
sets ``KVAPP_SLOW``; run it with ``KVAPP_SLOW=1 python3 -m pytest
tests/kvapp/etcd/test_etcdctl_check_perf.py``. It asserts what issue 12 asks: the check
completes against kvapp without an error, and prints its figures; whether they pass etcdctl's
thresholds (throughput ≥ 90% of 150 writes/s, slowest request ≤ 0.5 s, standard deviation
≤ 0.1 s) depends on the machine, so a FAIL on a threshold is reported, not failed. The
members run with fsync on, as by default.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kvapp.integration.harness import REPO_ROOT, poll

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("KVAPP_SLOW") != "1", reason="takes about 70 s: set KVAPP_SLOW=1"
    ),
    pytest.mark.skipif(shutil.which("etcdctl") is None, reason="needs etcdctl (etcd-client)"),
    pytest.mark.timeout(240),
]

RESULT = re.compile(r"(PASS|FAIL): (Throughput|Slowest request|Stddev)")  # after a progress bar


def test_etcdctl_check_perf_completes_against_kvapp_cluster(tmp_path: Path) -> None:
    out = tmp_path / "cluster.out"
    with out.open("ab") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvapp", "cluster", "--size", "3",
             "--data-dir", str(tmp_path / "data")],
            cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def text() -> str:
        return out.read_text(errors="replace")

    def endpoints_line() -> str | None:
        m = re.search(r"etcdctl --endpoints=(\S+)", text())
        return m.group(1) if m else None

    try:
        endpoints = poll(endpoints_line, timeout=30, what="the etcdctl line", describe=text)
        poll(lambda: "leader is" in text() or None, timeout=30, what="a leader", describe=text)
        env = {**os.environ, "ETCDCTL_API": "3"}
        done = subprocess.run(
            ["etcdctl", f"--endpoints={endpoints}", "check", "perf", "--load=s"],
            capture_output=True, text=True, timeout=150, check=False, env=env,
        )  # fmt: skip
        report = done.stdout.replace("\r", "\n")
        print(report[-400:], done.stderr)
        assert "FAIL: too many errors" not in report, report[-2000:]
        assert not done.stderr.strip(), done.stderr
        results = {name: verdict for verdict, name in RESULT.findall(report)}
        assert set(results) == {"Throughput", "Slowest request", "Stddev"}, report[-2000:]
        assert re.search(r"(PASS|FAIL)\n*$", report.strip()), report[-400:]
        assert done.returncode == (0 if set(results.values()) == {"PASS"} else 1), report[-400:]
        left = subprocess.run(
            ["etcdctl", f"--endpoints={endpoints}", "get", "--prefix", "--keys-only",
             "-w", "json", "/etcdctl-check-perf/"],
            capture_output=True, text=True, timeout=30, check=True, env=env,
        ).stdout  # fmt: skip
        assert json.loads(left).get("count", 0) == 0, left  # the check deletes its keys
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
