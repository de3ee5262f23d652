"""Power loss at every point: RaftStore on a simulated disk that forgets what was not synced.

The store promises that each write is durable when it returns. These tests hold it to that
against :class:`~kvapp.storage.simfs.SimFileSystem`, which, when it "crashes", keeps only what
was synced plus any prefix of what was not (the last write possibly torn at a sector), in each
file and in each directory independently. After a power loss at any point, the store must open
without complaint and hold exactly what it held after the last write that returned, or after
the write that was in flight when the power went.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from kvapp.storage.raftstore import RaftStore
from kvapp.storage.simfs import PowerCut, SimFileSystem
from kvapp.storage.snapdata import snapshot_bytes
from raftlib.storage import MemoryStorage
from raftlib.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata

from .helpers import CLUSTER, MEMBER, VOTERS

DATA = Path("/data")

Storage = RaftStore | MemoryStorage
Op = Callable[[Storage], object]


def open_store(
    fs: SimFileSystem,
    *,
    preallocate: bool,
    conf: ConfState | None = None,
    in_file: bool = False,
) -> RaftStore:
    """Small segments and two kept snapshots: cuts, releases and pruning happen constantly."""
    return RaftStore.open(
        DATA,
        cluster_id=CLUSTER,
        member_id=MEMBER,
        segment_size=400,
        keep_snapshots=2,
        preallocate=preallocate,
        fsync=True,
        conf_state=conf,
        snapshot_in_file=in_file,
        fs=fs,
    )


def observe(s: Storage) -> tuple[object, ...]:
    """Everything raftlib can ask a storage, as one comparable value."""
    first, last = s.first_index(), s.last_index()
    snap = s.snapshot()
    return (
        s.initial_state(),
        s.first_index(),
        s.last_index(),
        snap.metadata,
        snapshot_bytes(snap.data),
        tuple(s.entries(first, last + 1)) if last >= first else (),
        tuple(s.term(i) for i in range(first - 1, last + 1)),
    )


def save(hs: HardState | None, back: int, terms: list[int], data: bytes, conf: bool) -> Op:
    def op(s: Storage) -> None:
        start = max(s.first_index(), s.last_index() + 1 - back)
        ents = [
            Entry(
                term=t,
                index=start + i,
                type=EntryType.CONF_CHANGE if conf and i == 0 else EntryType.NORMAL,
                data=data[: 8 * i + 1],
            )
            for i, t in enumerate(terms)
        ]
        if isinstance(s, MemoryStorage):
            if hs is not None:
                s.set_hard_state(hs)
            s.append(ents)
        else:
            s.save(hs, ents)

    return op


def create_snapshot(ahead: int, conf: ConfState | None, data: bytes) -> Op:
    def op(s: Storage) -> None:
        index = min(s.snapshot().metadata.index + ahead, s.last_index())
        if index > s.snapshot().metadata.index:
            s.create_snapshot(index, conf, data)

    return op


def compact(ahead: int) -> Op:
    def op(s: Storage) -> None:
        index = min(s.first_index() - 1 + ahead, s.snapshot().metadata.index)
        if index >= s.first_index():
            s.compact(index)

    return op


def apply_snapshot(ahead: int, term: int, data: bytes) -> Op:
    def op(s: Storage) -> None:
        md = SnapshotMetadata(VOTERS, s.snapshot().metadata.index + ahead, term)
        s.apply_snapshot(Snapshot(data=data, metadata=md))

    return op


hard_states = st.none() | st.builds(
    HardState, st.integers(1, 9), st.integers(0, 3), st.integers(0, 5)
)
ops = st.one_of(
    st.builds(
        save,
        hard_states,
        st.integers(0, 3),
        st.lists(st.integers(1, 9), min_size=1, max_size=5).map(sorted),
        st.binary(min_size=1, max_size=60),
        st.booleans(),
    ),
    st.builds(
        create_snapshot, st.integers(1, 6), st.none() | st.just(VOTERS), st.binary(max_size=80)
    ),
    st.builds(compact, st.integers(1, 6)),
    st.builds(apply_snapshot, st.integers(1, 4), st.integers(1, 9), st.binary(max_size=80)),
)


def model_accepts(op: Op, model: MemoryStorage) -> bool:
    """Whether ``op`` applies to ``model`` without raising (raftlib checks its arguments)."""
    trial = copy.deepcopy(model)
    try:
        op(trial)
    except Exception:  # noqa: BLE001 - any refusal: the op is skipped
        return False
    return True


class PowerLossAnywhere(RuleBasedStateMachine):
    """Random writes on a simulated disk, with power lost between them and in the middle."""

    @initialize(preallocate=st.booleans(), conf=st.none() | st.just(VOTERS), in_file=st.booleans())
    def start(self, preallocate: bool, conf: ConfState | None, in_file: bool) -> None:
        self.preallocate = preallocate
        self.in_file = in_file  # snapshots held as FileSnapshotData, copied file to file
        self.fs = SimFileSystem()
        self.model = MemoryStorage(conf)
        self.store = open_store(self.fs, preallocate=preallocate, conf=conf, in_file=in_file)
        self.cuts = 0

    def _reopen_after_crash(self, seed: int | None) -> None:
        self.fs = self.fs.crash(None if seed is None else random.Random(seed))
        self.store = open_store(self.fs, preallocate=self.preallocate, in_file=self.in_file)

    @rule(op=ops)
    def write(self, op: Op) -> None:
        if not model_accepts(op, self.model):
            return
        op(self.store)
        op(self.model)

    @rule(seed=st.none() | st.integers(0, 2**32))
    def power_loss_between_writes(self, seed: int | None) -> None:
        self._reopen_after_crash(seed)

    @rule(op=ops, after=st.integers(0, 12), seed=st.none() | st.integers(0, 2**32))
    def power_loss_during_a_write(self, op: Op, after: int, seed: int | None) -> None:
        if not model_accepts(op, self.model):
            return
        before = copy.deepcopy(self.model)
        op(self.model)
        self.fs.power_cut_after(after)
        try:
            op(self.store)
        except PowerCut:
            self.cuts += 1
            self._reopen_after_crash(seed)
            got = observe(self.store)
            assert got in (observe(before), observe(self.model)), "neither before nor after"
            if got == observe(before):
                self.model = before
            return
        self._reopen_after_crash(seed)

    @invariant()
    def holds_what_was_acknowledged(self) -> None:
        if hasattr(self, "store"):
            assert observe(self.store) == observe(self.model)


def test_power_loss_anywhere_keeps_every_acknowledged_write() -> None:
    run_state_machine_as_test(
        PowerLossAnywhere,
        settings=settings(
            max_examples=150,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def workload() -> list[Op]:
    """A fixed history touching every kind of write: appends that cut segments, overwrites of
    a suffix, snapshots (their files pruned), compactions (segments released), a snapshot
    from a leader."""
    rng = random.Random(7)
    history: list[Op] = []
    for round_ in range(3):
        for i in range(6):
            term = 1 + round_
            hs = HardState(term, MEMBER, 0)
            history.append(save(hs, 0 if i else 2, [term] * rng.randrange(1, 4), b"d" * 50, False))
        history.append(create_snapshot(4, None, bytes([round_]) * 30))
        history.append(compact(3))
    history.append(apply_snapshot(2, 9, b"from the leader"))
    history.append(save(HardState(9, MEMBER, 0), 0, [9, 9], b"after", False))
    return history


def run_until_cut(cut_after: int | None) -> tuple[SimFileSystem, list[MemoryStorage], bool]:
    """Run :func:`workload` on a fresh store, the power cut after ``cut_after`` mutations of
    the disk (counted once the store is open).

    Returns the disk, the model after each acknowledged write (and, if the power went during
    one, after that one too), and whether it did.
    """
    fs = SimFileSystem()
    model = MemoryStorage(VOTERS)
    states = [copy.deepcopy(model)]
    store = open_store(fs, preallocate=True, conf=VOTERS)
    fs.opened_at = fs.mutations  # type: ignore[attr-defined]
    if cut_after is not None:
        fs.power_cut_after(cut_after)
    for op in workload():
        op(model)
        try:
            op(store)
        except PowerCut:
            return fs, [*states, copy.deepcopy(model)], True
        states.append(copy.deepcopy(model))
    store.close()
    return fs, states, False


def test_a_power_cut_after_every_single_mutation_loses_nothing_acknowledged() -> None:
    fs, states, cut = run_until_cut(None)
    assert not cut
    total = fs.mutations - fs.opened_at  # type: ignore[attr-defined]
    assert total > 100, total  # the workload really exercises the disk
    for n in range(total):
        for seed in (None, n, n + 10_000):
            fs, states, cut = run_until_cut(n)
            assert cut, n
            disk = fs.crash(None if seed is None else random.Random(seed))
            store = open_store(disk, preallocate=True, conf=VOTERS)
            got = observe(store)
            store.close()
            acceptable = [observe(m) for m in states[-2:]]
            assert got in acceptable, (n, seed)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32))
def test_power_loss_without_a_cut_keeps_the_last_state(seed: int) -> None:
    fs, states, _ = run_until_cut(None)
    store = open_store(fs.crash(random.Random(seed)), preallocate=True)
    assert observe(store) == observe(states[-1])
