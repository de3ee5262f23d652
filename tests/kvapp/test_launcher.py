"""The README's main job: ``kvapp cluster`` starts a local cluster one can talk to, and Ctrl-C
stops every member. Runs the real command and the README's client snippet against it."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

import attrs
import pytest

from kvapp import launcher
from kvapp.client import Client
from kvapp.launcher import free_ports
from kvapp.service import MemberInfo

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _readme_python_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return str(next(b for b in blocks if "kvapp.client" in b))


class Lines:
    """``proc``'s stdout lines, read by a thread so the test can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        self.stream = proc.stdout
        self.thread = threading.Thread(target=self._pump, args=(self.stream,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Wait for the reader to see the end of the output, then close the pipe."""
        self.thread.join(timeout=10)
        self.stream.close()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def until(self, pattern: str, timeout: float) -> list[str]:
        """Lines up to one matching ``pattern``; fails with the output seen after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return self.seen
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.seen))


def test_kvapp_cluster_serves_the_readme_snippet_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "kvapp", "cluster", "--size", "3", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        out = Lines(proc)
        lines = out.until(r"leader is m\d", 60)
        endpoints = [m.group(1) for line in lines if (m := re.search(r"client http://(\S+)", line))]
        assert len(endpoints) == 3, lines
        snippet = _readme_python_snippet().replace('"127.0.0.1:2379"', repr(endpoints[1]))
        run = subprocess.run(
            [sys.executable, "-c", snippet],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "b'world'"
        proc.send_signal(signal.SIGINT)
        out.until("all members stopped", 60)
        assert proc.wait(timeout=60) == 0
        # Started again on the same data directory, the cluster still holds the key.
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "kvapp", "cluster", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        out = Lines(proc)
        out.until(r"leader is m\d", 60)
        check = (
            "from kvapp.client import Client\n"
            f"with Client({endpoints!r}) as c:\n"
            "    print(c.get(b'hello').kvs[0].value)\n"
        )
        run = subprocess.run(
            [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=False
        )
        assert run.stdout.strip() == "b'world'", run.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    low = launcher._ephemeral_low()
    if low is not None and low >= 20_000:
        assert all(launcher._LOWEST_PORT <= p < low for p in ports), ports
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_free_ports_fall_back_to_the_kernels_choice_without_a_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(launcher, "_ephemeral_low", lambda: None)
    ports = free_ports(3)
    assert len(set(ports)) == 3
    assert all(p > 0 for p in ports)


def test_free_ports_never_hands_out_a_port_twice_in_a_row() -> None:
    """A caller may not have bound its ports yet when the next call comes."""
    seen: list[int] = []
    for _ in range(50):
        seen += free_ports(20)
    assert len(set(seen)) == len(seen)


def test_membership_changes_are_described_as_they_happen() -> None:
    m1 = MemberInfo(0x1, "m1", ("http://127.0.0.1:1",))
    m2 = MemberInfo(0x2, "m2", ("http://127.0.0.1:2",))
    joining = MemberInfo(0xA, "", ("http://127.0.0.1:9",), is_learner=True)
    started = MemberInfo(0xA, "m4", ("http://127.0.0.1:9",), is_learner=True)
    voter = MemberInfo(0xA, "m4", ("http://127.0.0.1:9",))
    steps = [
        ({1: m1, 2: m2}, {1: m1, 2: m2, 10: joining}),
        ({1: m1, 2: m2, 10: joining}, {1: m1, 2: m2, 10: started}),
        ({1: m1, 2: m2, 10: started}, {1: m1, 2: m2, 10: voter}),
        ({1: m1, 2: m2, 10: voter}, {1: m1, 10: voter}),
        ({1: m1}, {1: m1}),
    ]
    assert [launcher.membership_changes(a, b) for a, b in steps] == [
        ["member a at http://127.0.0.1:9 added as a learner"],
        ["member m4 (a) started"],
        ["member m4 (a) promoted to voter"],
        ["member m2 (2) removed"],
        [],
    ]


def _member_pid(data_dir: Path) -> int:
    """The pid of the ``kvapp serve`` process whose ``--data-dir`` is ``data_dir``."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and str(data_dir).encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no member process with --data-dir {data_dir}")


def test_kvapp_cluster_reports_membership_and_leader_changes_and_removes_its_temp_dir(
    tmp_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "kvapp", "cluster", "--size", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    out = Lines(proc)
    try:
        lines = out.until(r"leader is m\d", 60)
        parent = Path(next(m.group(1) for x in lines if (m := re.search(r"data in (\S+)", x))))
        leader = re.search(r"leader is (m\d)", lines[-1]).group(1)  # type: ignore[union-attr]
        endpoints = [m.group(1) for x in lines if (m := re.search(r"client http://(\S+)", x))]
        metrics = [m.group(1) for x in lines if (m := re.search(r"metrics (http://\S+)", x))]
        assert len(metrics) == 3, lines
        with urllib.request.urlopen(metrics[0] + "/health", timeout=5) as resp:
            assert (resp.status, resp.read()) == (200, b'{"health": "true"}')
        with Client(endpoints) as c:
            added = c.member_add(["http://127.0.0.1:9"], is_learner=True)
            out.until(rf"member {added.id:x} at http://127.0.0.1:9 added as a learner", 30)
            c.member_remove(added.id)
            out.until(rf"member {added.id:x} at http://127.0.0.1:9 removed", 30)
        os.kill(_member_pid(parent / leader), signal.SIGKILL)
        out.until(rf"member {leader} exited with status -9", 30)
        out.until(rf"leader is (?!{leader})m\d", 30)
        proc.send_signal(signal.SIGINT)
        out.until("all members stopped", 60)
        assert proc.wait(timeout=60) == 0
        assert not parent.exists(), f"{parent}: the temporary data directory was left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


def test_kvapp_cluster_plans_a_metrics_port_per_member_and_adds_it_to_old_plans(
    tmp_path: Path,
) -> None:
    _, members = launcher.plan_cluster(3, tmp_path / "new")
    ports = [
        p
        for m in members
        for p in (m.peer_port, m.client_port, m.grpc_port, m.http_port, m.metrics_port)
    ]
    assert len(set(ports)) == 15
    args = launcher.serve_args(members[0], members, tmp_path, "t")
    assert args[args.index("--listen-metrics-urls") + 1] == members[0].metrics_url
    old = tmp_path / "old"
    old.mkdir()
    before = [attrs.asdict(m) for m in members]
    for m in before:
        del m["metrics_port"]
    (old / "cluster.json").write_text(json.dumps({"token": "tok", "members": before}))
    token, again = launcher.plan_cluster(3, old)
    assert token == "tok"
    assert [attrs.evolve(m, metrics_port=0) for m in again] == [
        attrs.evolve(m, metrics_port=0) for m in members
    ]
    assert all(m.metrics_port for m in again)
    assert launcher.plan_cluster(3, old) == (token, again)
