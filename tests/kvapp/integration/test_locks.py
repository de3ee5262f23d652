"""kvapp.recipes' lock on a real 3-member ``kvapp serve`` cluster, with contenders in processes.

Contenders and holders are this module run as a program (``python -m
tests.kvapp.integration.test_locks worker|hold ...``), talking to the cluster through the
native client on 127.0.0.1 and reporting on stdout, one line per fact. The tests check:

- 20 contenders in 4 processes (two asyncio, two blocking with threads) acquire and release one
  lock 200 times, incrementing a counter with fenced writes: no update is lost, the lock goes
  in create-revision order, and each acquisition that waited was woken once, by the release of
  the holder just before it (no herd);
- a holder killed with SIGKILL frees the lock within its TTL, and within its TTL plus the
  leader election when the leader is killed with it;
- a holder stopped with SIGSTOP past its TTL loses the lock to a waiter, and its fenced write
  after SIGCONT is refused.

Every wait is bounded and fails with a message; every process started is killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from kvapp.client import AsyncClient, Client
from kvapp.recipes import AsyncLock, AsyncSession, Lock, LockLost, Session
from tests.kvapp.integration.harness import REPO_ROOT, ProcCluster, poll

pytestmark = pytest.mark.integration

HOLDER_TTL = 2
"""Seconds: the killed or stopped holder's TTL (the cluster's minimum)."""
WAITER_TTL = 10
"""Seconds: contenders that must outlive a leader change."""
SLACK = 1.5
"""Seconds allowed on top of a lease's deadline: the leader's lease tick (0.5 s), the revoke's
commit, the watch event and the waiter's re-check, on a 2-core machine shared with others."""


# -- the programs ------------------------------------------------------------------------------


def _say(*parts: object) -> None:
    print(*parts, flush=True)


def _record(n: int, token: int, waited_for: Sequence[int], wakeups: int, who: str) -> None:
    _say(
        "ACQ",
        json.dumps(
            {"n": n, "token": token, "waited": list(waited_for), "wakeups": wakeups, "who": who}
        ),
    )


async def _async_worker(a: argparse.Namespace) -> None:
    async with AsyncClient(a.endpoints, request_timeout=5.0, max_attempts=8) as client:
        sessions = [await AsyncSession(client, ttl=WAITER_TTL).open() for _ in range(a.contenders)]
        _say("READY")
        await asyncio.to_thread(sys.stdin.readline)

        async def contend(i: int, session: AsyncSession) -> None:
            lock = AsyncLock(client, a.name, session)
            for _ in range(a.rounds):
                before = lock.wakeups
                await lock.acquire(timeout=60)
                got = await client.get(a.counter)
                n = int(got.kvs[0].value) + 1 if got.kvs else 1
                await lock.fenced_put(a.counter, str(n))
                _record(n, lock.token, lock.waited_for, lock.wakeups - before, f"{os.getpid()}/{i}")
                await lock.release()

        await asyncio.gather(*(contend(i, s) for i, s in enumerate(sessions)))
        for s in sessions:
            await s.close()


def _sync_worker(a: argparse.Namespace) -> None:
    with Client(a.endpoints, request_timeout=5.0, max_attempts=8) as client:
        sessions = [Session(client, ttl=WAITER_TTL) for _ in range(a.contenders)]
        _say("READY")
        sys.stdin.readline()
        errors: list[BaseException] = []

        def contend(i: int, session: Session) -> None:
            lock = Lock(client, a.name, session)
            try:
                for _ in range(a.rounds):
                    before = lock.wakeups
                    with lock:
                        got = client.get(a.counter)
                        n = int(got.kvs[0].value) + 1 if got.kvs else 1
                        lock.fenced_put(a.counter, str(n))
                        _record(
                            n,
                            lock.token,
                            lock.waited_for,
                            lock.wakeups - before,
                            f"{os.getpid()}/{i}",
                        )
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                errors.append(e)

        threads = [threading.Thread(target=contend, args=(i, s)) for i, s in enumerate(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for s in sessions:
            s.close()


def _holder(a: argparse.Namespace) -> None:
    """Hold the lock, then obey commands from stdin: ``write KEY VALUE`` (fenced), ``state``."""
    with Client(a.endpoints, request_timeout=3.0, max_attempts=3) as client:
        session = Session(client, ttl=a.ttl)
        lock = Lock(client, a.name, session)
        lock.acquire(timeout=30)
        _say("HOLDING", lock.token, session.lease_id)
        for line in sys.stdin:
            cmd = line.split()
            if cmd[:1] == ["write"]:
                try:
                    resp = lock.fenced_put(cmd[1], cmd[2])
                except LockLost as e:
                    _say("REFUSED", e)
                else:
                    _say("WROTE", resp.revision)
            elif cmd[:1] == ["state"]:
                loss = session.loss.name if session.loss else "-"
                _say("SESSION", session.state.value, loss)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="test_locks")
    parser.add_argument("mode", choices=["async", "sync", "hold"])
    parser.add_argument("--endpoints", type=lambda s: s.split(","), required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--counter", default="counter")
    parser.add_argument("--contenders", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ttl", type=int, default=HOLDER_TTL)
    a = parser.parse_args(argv)
    if a.mode == "async":
        asyncio.run(_async_worker(a))
    elif a.mode == "sync":
        _sync_worker(a)
    else:
        _holder(a)
    _say("DONE")
    return 0


# -- driving them ------------------------------------------------------------------------------


class Program:
    """One of these programs in a process, its stdout read line by line in a thread."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        # a file, not a pipe, which could fill up and block it; closed by kill()
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.kvapp.integration.test_locks", *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, *, timeout: float) -> str:
        """The next line starting with ``prefix`` (other lines are kept in :attr:`seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"no {prefix!r} line within {timeout} s; got {self.seen[-5:]}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"exited ({self.proc.wait()}) before {prefix!r}: {self.stderr()}"
                )
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, *, timeout: float) -> list[str]:
        """Wait for the exit (status 0 expected); every line it printed."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"did not finish within {timeout} s; last {self.seen[-3:]}"
            ) from None
        self._reader.join(timeout=5)
        while (line := self.lines.get_nowait() if not self.lines.empty() else None) is not None:
            self.seen.append(line)
        assert code == 0, f"exited {code}: {self.stderr()}"
        return self.seen

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # a stopped process dies only once resumed
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def programs() -> Iterator[Callable[..., Program]]:
    started: list[Program] = []

    def start(*args: str) -> Program:
        p = Program(*args)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.kill()


def endpoints(cluster: ProcCluster) -> str:
    return ",".join(m.endpoint for m in cluster.members.values())


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_twenty_contenders_in_four_processes_share_one_lock_fairly(
    make_cluster: Callable[..., ProcCluster], programs: Callable[..., Program]
) -> None:
    cluster = make_cluster(3)
    eps = endpoints(cluster)
    workers = [
        programs(
            mode, "--endpoints", eps, "--name", "it-lock", "--contenders", "5", "--rounds", "10"
        )
        for mode in ("async", "sync", "async", "sync")
    ]
    for w in workers:
        w.expect("READY", timeout=30)
    started = time.monotonic()
    for w in workers:
        w.send("GO")
    records = []
    for w in workers:
        lines = w.finish(timeout=120)
        records += [json.loads(line[4:]) for line in lines if line.startswith("ACQ ")]
    elapsed = time.monotonic() - started
    print(f"200 acquisitions by 20 contenders in {elapsed:.1f} s")

    # a counter incremented under the lock never loses an update
    assert sorted(r["n"] for r in records) == list(range(1, 201))
    assert cluster.client().get("counter").kvs[0].value == b"200"
    # the lock went in create-revision order: tokens grow with the counter
    by_n = sorted(records, key=lambda r: r["n"])
    tokens = [r["token"] for r in by_n]
    assert tokens == sorted(set(tokens)), "the lock was not granted in create-revision order"
    # each acquisition that waited was woken once, by the release of the holder before it
    waited = 0
    for prev, cur in itertools.pairwise(by_n):
        if cur["waited"]:
            waited += 1
            assert cur["waited"] == [prev["token"]], (cur, prev)
            assert cur["wakeups"] == 1, cur
        else:
            assert cur["wakeups"] == 0, cur
    assert by_n[0]["wakeups"] == 0
    assert waited >= 100, f"only {waited} of 200 acquisitions waited: not much contention"
    assert sum(r["wakeups"] for r in records) == waited, "a release woke more than one waiter"


def _queue_len(client: Client, name: str) -> int:
    return len(client.get(name + "/", prefix=True, keys_only=True).kvs)


def _wait_behind(client: Client, lock: Lock, name: str) -> threading.Thread:
    """Start acquiring ``lock`` in a thread; returns once its key is queued."""
    result: dict[str, Any] = {}

    def acquire() -> None:
        try:
            lock.acquire(timeout=30)
            result["at"] = time.monotonic()
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            result["error"] = e

    t = threading.Thread(target=acquire, daemon=True)
    t.result = result  # type: ignore[attr-defined]
    t.start()
    poll(
        lambda: True if _queue_len(client, name) >= 2 else None,
        timeout=10,
        what=f"the waiter to queue behind the holder of {name}",
    )
    return t


def _acquired_at(t: threading.Thread, *, timeout: float) -> float:
    t.join(timeout)
    result: dict[str, Any] = t.result  # type: ignore[attr-defined]
    if "error" in result:
        raise AssertionError(f"the waiter failed: {result['error']!r}")
    assert "at" in result, f"the waiter did not get the lock within {timeout} s"
    return float(result["at"])


@pytest.mark.timeout(180)
def test_a_killed_holder_frees_the_lock_within_its_ttl_and_a_stopped_one_is_fenced_off(
    make_cluster: Callable[..., ProcCluster], programs: Callable[..., Program]
) -> None:
    cluster = make_cluster(3)
    eps = endpoints(cluster)
    client = cluster.client()

    # 1. SIGKILL the holder: its lease expires within its TTL
    holder = programs("hold", "--endpoints", eps, "--name", "kill")
    holder.expect("HOLDING", timeout=30)
    with Session(client, ttl=WAITER_TTL) as session:
        waiter = Lock(client, "kill", session)
        t = _wait_behind(client, waiter, "kill")
        killed = time.monotonic()
        holder.kill()
        freed = _acquired_at(t, timeout=HOLDER_TTL + SLACK + 5) - killed
        print(f"a killed holder's lock was free after {freed:.2f} s (TTL {HOLDER_TTL} s)")
        assert freed <= HOLDER_TTL + SLACK
        assert len(waiter.waited_for) == 1
        assert waiter.wakeups == 1
        waiter.release()

    # 2. SIGSTOP the holder past its TTL: the waiter gets the lock, and after SIGCONT the
    # former holder's fenced write is refused
    holder = programs("hold", "--endpoints", eps, "--name", "stop")
    _, token, _ = holder.expect("HOLDING", timeout=30).split()
    with Session(client, ttl=WAITER_TTL) as session:
        waiter = Lock(client, "stop", session)
        t = _wait_behind(client, waiter, "stop")
        holder.proc.send_signal(signal.SIGSTOP)
        _acquired_at(t, timeout=HOLDER_TTL + SLACK + 5)
        assert waiter.token > int(token)
        waiter.fenced_put("stop-data", "written by the new holder")
        holder.proc.send_signal(signal.SIGCONT)
        holder.send("write stop-data stale")
        refused = holder.expect("REFUSED", timeout=10)
        assert "fenced write refused" in refused
        assert client.get("stop-data").kvs[0].value == b"written by the new holder"
        holder.send("state")
        # resumed past its TTL, the holder's keep-alive soon reports the loss (renewals failed
        # for a whole TTL by its own clock, or the lease gone, whichever it sees first); until
        # then the holder may still believe it holds the lock, which is why writes are fenced

        def lost() -> str | None:
            holder.send("state")
            state = holder.expect("SESSION", timeout=10)
            return state if state.startswith("SESSION lost") else None

        state = poll(lost, timeout=5, what="the resumed holder to report its session lost")
        assert state in ("SESSION lost RENEWALS_FAILED", "SESSION lost GONE"), state
        waiter.release()

    # 3. SIGKILL the holder and the leader together: free within the TTL plus the election
    leader = cluster.wait_leader()
    holder = programs("hold", "--endpoints", eps, "--name", "kill-both")
    holder.expect("HOLDING", timeout=30)
    with Session(client, ttl=WAITER_TTL) as session:
        waiter = Lock(client, "kill-both", session)
        t = _wait_behind(client, waiter, "kill-both")
        killed = time.monotonic()
        holder.kill()
        cluster.kill(leader)
        election = cluster.election_ms / 1000
        freed = _acquired_at(t, timeout=HOLDER_TTL + election + SLACK + 10) - killed
        print(
            f"with the leader killed too, the lock was free after {freed:.2f} s "
            f"(TTL {HOLDER_TTL} s, election timeout {election} s)"
        )
        # a new leader resumes the lease at its checkpointed deadline plus one election
        # timeout (kvapp.lease's grace), the time its holder may have had no leader to renew with
        assert freed <= HOLDER_TTL + election + SLACK
        waiter.release()


if __name__ == "__main__":
    raise SystemExit(main())
