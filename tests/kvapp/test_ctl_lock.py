"""kvctl lock and kvctl elect (kvapp.ctl.lock), as processes against in-process members.

The members are tests/kvapp/test_recipes.py's :class:`ThreadCluster` (three real members
serving the native protocol on 127.0.0.1); kvctl runs as ``python -m kvapp.ctl`` subprocesses
(signals and exit statuses are real), and argument errors run in-process. Every wait is
bounded; every process started is stopped.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvapp.client import Client
from kvapp.ctl.app import run
from tests.kvapp.etcd.test_lockservice_etcd import Background
from tests.kvapp.integration.harness import REPO_ROOT, poll
from tests.kvapp.test_recipes import ThreadCluster

pytestmark = pytest.mark.timeout(120)

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}

# A command run under the lock: records its environment, then waits for a file to appear.
HOLD = """
import os, sys, time
lock = {k: v for k, v in os.environ.items() if k.startswith(("ETCD_LOCK_", "KVAPP_LOCK_"))}
open(sys.argv[1] + ".part", "w").write(repr(lock))
os.rename(sys.argv[1] + ".part", sys.argv[1])
deadline = time.monotonic() + 30
while len(sys.argv) > 2 and not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.02)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThreadCluster]:
    with ThreadCluster() as c:
        yield c


@pytest.fixture
def client(cluster: ThreadCluster) -> Iterator[Client]:
    with Client(cluster.endpoints, request_timeout=3.0) as c:
        yield c


def kvctl(cluster: ThreadCluster, *args: str) -> list[str]:
    return [sys.executable, "-m", "kvapp.ctl", f"--endpoints={','.join(cluster.endpoints)}", *args]


def start(cluster: ThreadCluster, *args: str, env: dict[str, str] | None = None) -> Background:
    return Background(kvctl(cluster, *args), {**ENV, **(env or {})})


def queue(client: Client, name: str) -> list[bytes]:
    return [kv.key for kv in client.get(name + "/", prefix=True).kvs]


def recorded(path: Path) -> dict[str, str]:
    text = poll(
        lambda: path.read_text() if path.exists() else None,
        timeout=20,
        what=f"the command under the lock to record its environment in {path.name}",
    )
    env: dict[str, str] = eval(text)  # written by HOLD above
    return env


def test_lock_runs_the_command_holding_the_lock_and_a_second_contender_waits(
    cluster: ThreadCluster, client: Client, tmp_path: Path
) -> None:
    first_env, release = tmp_path / "first", tmp_path / "release"
    first = start(cluster, "lock", "jobs", "--", sys.executable, "-c", HOLD, str(first_env),
                  str(release))  # fmt: skip
    second: Background | None = None
    try:
        env = recorded(first_env)
        key = env["ETCD_LOCK_KEY"]
        held = client.get(key).kvs
        assert held, f"{key} is not in the cluster while the command runs"
        token = int(env["KVAPP_LOCK_TOKEN"])
        assert held[0].create_revision == token  # the fencing token is the key's revision
        assert int(env["ETCD_LOCK_REV"]) >= token
        assert key == f"jobs/{env['KVAPP_LOCK_LEASE']}"
        assert held[0].lease == int(env["KVAPP_LOCK_LEASE"], 16)

        second_env = tmp_path / "second"
        second = start(cluster, "lock", "jobs", sys.executable, "-c", HOLD, str(second_env),
                       env={"EXIT": "3"})  # fmt: skip
        poll(lambda: len(queue(client, "jobs")) == 2 or None, timeout=20, what="a second key")
        time.sleep(0.3)
        assert not second_env.exists()  # queued behind the first: its command has not run
        assert second.proc.poll() is None

        release.touch()
        assert first.finish() == ""
        assert first.proc.returncode == 0
        env2 = recorded(second_env)
        assert int(env2["KVAPP_LOCK_TOKEN"]) > token
        assert second.finish() == ""
        assert second.proc.returncode == 3  # the command's status
        poll(lambda: queue(client, "jobs") == [] or None, timeout=10, what="both keys deleted")
    finally:
        release.touch()
        first.stop()
        if second is not None:
            second.stop()


def test_lock_without_a_command_prints_its_key_and_holds_it_until_interrupted(
    cluster: ThreadCluster, client: Client
) -> None:
    holder = start(cluster, "lock", "held")
    try:
        key, value = holder.wait_lines(2, "kvctl lock to print the key it holds")
        assert value == ""
        assert queue(client, "held") == [key.encode()]
        waiting = start(cluster, "lock", "held")
        try:
            poll(lambda: len(queue(client, "held")) == 2 or None, timeout=20, what="a waiter")
            waiting.proc.send_signal(signal.SIGINT)  # interrupted while waiting: it leaves
            assert waiting.finish().strip() == "Error: context canceled"
            assert waiting.proc.returncode == 1
            assert queue(client, "held") == [key.encode()]
        finally:
            waiting.stop()
        assert holder.interrupt() == 0
        assert queue(client, "held") == []
    finally:
        holder.stop()


def test_lock_ends_with_session_expired_when_its_lease_is_lost(
    cluster: ThreadCluster, client: Client
) -> None:
    holder = start(cluster, "lock", "--ttl", "3", "lost")
    try:
        key, _ = holder.wait_lines(2, "kvctl lock to print the key it holds")
        client.lease_revoke(int(key.split("/")[1], 16))
        try:
            holder.proc.wait(timeout=15)  # the next renewal (every TTL/3) finds the lease gone
        except subprocess.TimeoutExpired:
            pytest.fail("kvctl lock did not notice its lease was revoked within 15 s")
        # the client's own warning lines (why the lease was lost) come first
        assert holder.finish().splitlines()[-1] == "Error: session expired"
        assert holder.proc.returncode == 1
    finally:
        holder.stop()


def test_elect_campaigns_and_prints_the_leader_and_elect_l_follows_the_leaders(
    cluster: ThreadCluster, client: Client
) -> None:
    observer = start(cluster, "elect", "-l", "svc")
    leader = start(cluster, "elect", "svc", "http://one")
    challenger: Background | None = None
    try:
        first = leader.wait_lines(2, "kvctl elect to print its leader key")
        assert first[0].startswith("svc/")
        assert first[1] == "http://one"
        assert observer.wait_lines(2, "kvctl elect -l to print the leader") == first
        challenger = start(cluster, "elect", "svc", "http://two")
        poll(lambda: len(queue(client, "svc")) == 2 or None, timeout=20, what="a candidate")
        time.sleep(0.2)
        assert challenger.lines == []
        assert leader.interrupt() == 0  # resigns
        second = challenger.wait_lines(2, "the second candidate to lead")
        assert second[1] == "http://two"
        assert observer.wait_lines(4, "kvctl elect -l to print the new leader")[2:] == second
        assert challenger.interrupt() == 0
        assert observer.interrupt() == 0
        assert queue(client, "svc") == []
    finally:
        for p in (observer, leader, challenger):
            if p is not None:
                p.stop()


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.BytesIO(), io.BytesIO()
    code = asyncio.run(run(argv, stdin=io.BytesIO(), stdout=out, stderr=err, environ={}))
    return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lock"], "lock takes a lock name argument and an optional command to execute"),
        (["elect"], "elect takes one election name argument and an optional proposal argument"),
        (["elect", "a", "b", "c"], "elect takes one election name argument"),
        (["elect", "x"], "no proposal argument but -l not set"),
        (["elect", "-l", "x", "y"], "proposal given but -l is set"),
    ],
)
def test_argument_errors_are_etcdctls_with_exit_status_2(argv: list[str], message: str) -> None:
    code, out, err = _run(["--endpoints=127.0.0.1:1", *argv])
    assert code == 2
    assert out == ""
    assert message in err


def test_a_ttl_below_1_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = _run(["--endpoints=127.0.0.1:1", "lock", "--ttl", "0", "x"])
    assert code == 2
    assert "argument --ttl: invalid TTL '0': must be at least 1" in capsys.readouterr().err


def test_a_command_that_cannot_run_releases_the_lock(
    cluster: ThreadCluster, client: Client
) -> None:
    endpoints = f"--endpoints={','.join(cluster.endpoints)}"
    code, _, err = _run([endpoints, "lock", "nx", "--", "kvctl-no-such-command", "-x"])
    assert (code, err) == (1, 'Error: exec: "kvctl-no-such-command": executable file not found '
                              "in $PATH\n")  # fmt: skip
    assert queue(client, "nx") == []
    code, _, err = _run([endpoints, "lock", "nx", sys.executable, "-c", "print('ran')"])
    assert (code, err) == (0, "")
    assert queue(client, "nx") == []
