"""A Jepsen-style check of real ``kvapp serve`` processes: the history clients observe while
members are SIGKILLed and restarted must be linearizable.

Four client threads put unique values to, and read (linearizably) from, three keys of a
3-member cluster with fsync on. Their writes go to the leader, or to the member each client is
on, which forwards them (as etcd's API does). Meanwhile a nemesis SIGKILLs a member (the leader
every other time) and restarts it from its data, three times. Each operation is recorded with
when it was asked and answered (``time.monotonic()``); a put that failed in any way is recorded
as pending (it may or may not have taken effect), a failed read is left out (it changed
nothing). The history is then checked with
:func:`raftlib.testing.linearizability.check_linearizability` against a map of registers: a
stale read, a lost acknowledged put or a put applied twice (a retry applied again after a newer
put) makes it fail.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable

import pytest

from kvapp.client import Client, ClientError, OutcomeUnknown
from kvapp.errors import EtcdError
from raftlib.testing.linearizability import Operation, check_linearizability, register_model
from tests.kvapp.integration.harness import ProcCluster

pytestmark = pytest.mark.integration

MakeCluster = Callable[..., ProcCluster]
KEYS = (b"x", b"y", b"z")


class Recorder:
    """A client thread's operations, appended to a shared history."""

    def __init__(self, n: int, client: Client, history: list[Operation], seed: int) -> None:
        self.n = n
        self.client = client
        self.history = history
        self.rng = random.Random(seed)
        self.counter = itertools.count()
        self.done = 0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            key = self.rng.choice(KEYS)
            if self.rng.random() < 0.5:
                self.put(key, f"{self.n}-{next(self.counter)}".encode())
            else:
                self.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        call = time.monotonic()
        try:
            self.client.put(key, value)
        except (OutcomeUnknown, ClientError, EtcdError):
            ret = None  # may or may not have taken effect
        else:
            ret = time.monotonic()
            self.done += 1
        self.history.append(Operation(self.n, ("put", key, value), None, call, ret))

    def get(self, key: bytes) -> None:
        call = time.monotonic()
        try:
            kvs = self.client.get(key).kvs
        except (OutcomeUnknown, ClientError, EtcdError):
            return  # a read that failed changed nothing
        ret = time.monotonic()
        self.done += 1
        value = kvs[0].value if kvs else None
        self.history.append(Operation(self.n, ("get", key), value, call, ret))


@pytest.mark.parametrize("writes", ["to the leader", "forwarded by followers"])
def test_the_history_under_member_kills_is_linearizable(
    make_cluster: MakeCluster, writes: str
) -> None:
    cluster = make_cluster(3, fsync=True)
    to_leader = writes == "to the leader"
    history: list[Operation] = []
    names = list(cluster.members)
    recorders = [  # each starts on another member: reads are served by followers too
        Recorder(
            n,
            cluster.client(
                *names[n % 3 :],
                *names[: n % 3],
                request_timeout=2.0,
                max_attempts=6,
                writes_to_leader=to_leader,
            ),
            history,
            seed=n,
        )
        for n in range(4)
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=r.run, args=(stop,), daemon=True) for r in recorders]
    for t in threads:
        t.start()
    killed: list[str] = []
    try:
        for round_ in range(3):
            time.sleep(1.5)  # load between faults (a schedule, not a wait for state)
            leader = cluster.wait_leader()
            victim = leader if round_ % 2 == 0 else cluster.followers(leader)[0]
            cluster.kill(victim)
            killed.append(victim)
            time.sleep(1.0)
            cluster.start(victim)
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"
    assert len(killed) == 3
    assert all(r.done >= 20 for r in recorders), [r.done for r in recorders]
    for i, op in enumerate(history):
        history[i] = Operation(op.client, op.input, op.output, op.call, op.ret, id=i)
    result = check_linearizability(history, register_model())
    assert result.ok is True, result.explain()
