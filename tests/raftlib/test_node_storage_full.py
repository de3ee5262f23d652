"""raftlib.Node and a full disk: StorageFullError is retried (writes) or skipped (snapshots).

A storage that raises :class:`raftlib.StorageFullError` promises the failed call changed
nothing, so the node writes the same Ready again after a back-off and leaves the RawNode alone
meanwhile; any other storage error still stops the node. Same harness as test_node.py: a real
loop, explicit timeouts, bounded polling with messages.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable

import pytest

import raftlib.node as node_module
from raftlib import (
    ConfState,
    MemoryStorage,
    Node,
    NodeStopped,
    Ready,
    Snapshot,
    StorageError,
    StorageFullError,
)
from tests.raftlib.test_node import TICK, Cluster, StateMachine, eventually, raises, run


class FullDisk(MemoryStorage):
    """MemoryStorage whose writes fail with StorageFullError while ``full`` is set.

    Records every ``save_ready`` attempt (the Ready object and when, from the worker thread),
    so a test can tell a retry of the same Ready from a new one.
    """

    def __init__(self, cs: ConfState | None = None) -> None:
        super().__init__(cs)
        self.lock = threading.Lock()
        self.full = False
        self.fail_saves = 0  # fail this many more save_ready calls that write entries
        self.attempts: list[tuple[Ready, float, bool]] = []  # (ready, when, succeeded)
        self.snapshots_full = False
        self.snapshot_failures = 0

    def save_ready(self, rd: Ready) -> None:
        with self.lock:
            fail = bool(rd.entries) and (self.full or self.fail_saves > 0)
            if fail and self.fail_saves > 0:
                self.fail_saves -= 1
        self.attempts.append((rd, time.monotonic(), not fail))
        if fail:
            raise StorageFullError("no space left on the test device")
        super().save_ready(rd)

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        if self.snapshots_full:
            self.snapshot_failures += 1
            raise StorageFullError("no space left for the snapshot")
        return super().create_snapshot(index, conf_state, data)

    def saved(self, data: bytes) -> list[int]:
        """Log indexes of the entries whose data ends with ``data``, as stored."""
        stored = self.entries(self.first_index(), self.last_index() + 1)
        return [e.index for e in stored if e.data.endswith(data)]


def lone_node(
    storage: FullDisk, sm: StateMachine, hits: list[StorageFullError], **options: object
) -> Node:
    kwargs: dict[str, object] = {"snapshot": sm.snapshot, **options}
    return Node(
        1,
        storage,
        send=lambda msgs: None,
        tick_interval=TICK,
        apply=sm.apply,
        restore=sm.restore,
        on_storage_full=hits.append,
        **kwargs,  # type: ignore[arg-type]
    )


@run()
async def test_a_write_that_runs_out_of_space_is_retried_with_back_off_until_it_succeeds() -> None:
    storage = FullDisk(ConfState(voters=(1,)))
    sm = StateMachine()
    hits: list[StorageFullError] = []
    node = lone_node(storage, sm, hits)
    node.start()
    try:
        await node.wait_leader(timeout=5)
        await node.propose(b"before", timeout=5)
        storage.fail_saves = 3
        first = len(storage.attempts)
        blocked = asyncio.ensure_future(node.propose(b"x", timeout=10))
        await eventually(lambda: node.storage_full, "the node saw the storage full")
        assert len(hits) == 1
        assert isinstance(hits[0], StorageFullError)
        # Proposed while the write is retried: it waits, and goes into a later Ready.
        later = asyncio.ensure_future(node.propose(b"y", timeout=10))
        index_x = await asyncio.wait_for(blocked, 10)
        index_y = await asyncio.wait_for(later, 10)
        assert index_y > index_x

        tries = storage.attempts[first:]
        assert sum(1 for _, _, ok in tries if not ok) == 3
        start = next(i for i, (_, _, ok) in enumerate(tries) if not ok)
        retried = tries[start : start + 4]
        assert all(rd is retried[0][0] for rd, _, _ in retried), "a retry wrote another Ready"
        assert [ok for _, _, ok in retried] == [False, False, False, True]
        gaps = [b - a for (_, a, _), (_, b, _) in itertools.pairwise(retried)]
        for gap, wanted in zip(gaps, (0.05, 0.1, 0.2), strict=True):
            assert gap >= wanted * 0.9, f"retried after {gap:.3f}s, back-off is {wanted}s"
        assert not any(e.data.endswith(b"y") for e in retried[0][0].entries)

        assert node.running
        assert node.failure is None
        assert not node.storage_full
        assert len(hits) == 1, "one episode, one notice"
        assert storage.saved(b"x") == [index_x]  # written once, nothing lost or doubled
        assert storage.saved(b"y") == [index_y]
        assert sm.values()[-3:] == [b"before", b"x", b"y"]
    finally:
        await node.stop()


@run()
async def test_a_follower_with_a_full_disk_pauses_then_catches_up_with_nothing_lost() -> None:
    c = Cluster(ids=(1, 2, 3))
    disks: dict[int, FullDisk] = {}
    for i in c.ids:
        disks[i] = FullDisk(ConfState(voters=tuple(c.ids)))
        c.start(i, disks[i])
    try:
        lead = await c.wait_leader()
        follower = c.follower()
        disk = disks[follower.id]
        disk.full = True
        indexes = [await lead.propose(b"w%d" % k, timeout=5) for k in range(5)]
        await eventually(lambda: follower.storage_full, "the follower's write failed")
        assert follower.running
        assert follower.applied < indexes[-1]
        with disk.lock:
            disk.full = False
        await c.all_applied(indexes[-1])
        assert not follower.storage_full
        for k, index in enumerate(indexes):
            assert disk.saved(b"w%d" % k) == [index]
        assert c.sms[follower.id].values() == c.sms[lead.id].values()
    finally:
        await c.stop_all()


@run()
async def test_any_other_storage_error_still_stops_the_node() -> None:
    class BrokenDisk(FullDisk):
        def save_ready(self, rd: Ready) -> None:
            if rd.entries and self.full:
                raise OSError(5, "Input/output error")
            super().save_ready(rd)

    storage = BrokenDisk(ConfState(voters=(1,)))
    sm = StateMachine()
    hits: list[StorageFullError] = []
    node = lone_node(storage, sm, hits)
    node.start()
    try:
        await node.wait_leader(timeout=5)
        storage.full = True
        err = await raises(node.propose(b"x", timeout=5), NodeStopped)
        assert "Input/output error" in str(err)
        assert isinstance(node.failure, OSError)
        assert not node.running
        assert hits == []
        assert not node.storage_full
    finally:
        await node.stop()


@pytest.mark.parametrize("image", [False, True], ids=["bytes", "image"])
def test_a_snapshot_that_runs_out_of_space_is_skipped_and_made_later(
    image: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "_SNAPSHOT_RETRY_FIRST", 0.02)

    @run()
    async def body() -> None:
        storage = FullDisk(ConfState(voters=(1,)))
        sm = StateMachine()
        hits: list[StorageFullError] = []

        def snapshot() -> bytes | Callable[[], bytes]:
            data = sm.snapshot()
            return (lambda: data) if image else data

        node = lone_node(storage, sm, hits, snapshot=snapshot, snapshot_every=3, keep_entries=1)
        node.start()
        try:
            await node.wait_leader(timeout=5)
            storage.snapshots_full = True
            for k in range(4):
                await node.propose(b"a%d" % k, timeout=5)
            await eventually(lambda: storage.snapshot_failures >= 1, "a snapshot was tried")
            assert node.running
            assert len(hits) == 1
            assert storage.snapshot().is_empty()
            # The log keeps working meanwhile (and ends the episode); the snapshot comes later.
            for k in range(3):
                await node.propose(b"b%d" % k, timeout=5)
            assert node.running
            assert storage.snapshot().is_empty()
            tried = storage.snapshot_failures
            storage.snapshots_full = False
            last = await node.propose(b"c", timeout=5)
            await eventually(
                lambda: storage.snapshot().metadata.index >= last - 1,
                lambda: f"a snapshot after the space came back ({storage.snapshot().metadata})",
            )
            assert tried >= 1
            snap = storage.snapshot()
            restored = StateMachine()
            restored.restore(snap.data)
            assert restored.applied == snap.metadata.index
            kept = {i: v for i, v in sm.entries.items() if i <= restored.applied}
            assert restored.entries == kept
            assert storage.first_index() == snap.metadata.index  # compacted, keeping one entry
            assert node.failure is None
            assert not node.storage_full
        finally:
            await node.stop()

    body()


def test_storage_full_is_a_storage_error() -> None:
    assert issubclass(StorageFullError, StorageError)
