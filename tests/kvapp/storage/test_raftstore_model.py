"""Model test: RaftStore gives the same Storage answers as raftlib's MemoryStorage.

Any sequence of save / create_snapshot / apply_snapshot / compact / reopen, including invalid
ones (which must fail the same way and change nothing), is applied to both. Small segments and
few kept snapshots make segment cuts, WAL release and snapshot pruning happen constantly, so
replay from a released WAL is exercised after nearly every reopen.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from kvapp.storage.raftstore import RaftStore
from kvapp.storage.wal import BatchRecord, encode_record, frame_record, list_segments
from raftlib.errors import RaftError, RaftInvariantError
from raftlib.storage import MemoryStorage
from raftlib.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata

from .helpers import CLUSTER, MEMBER

conf_states = st.builds(
    ConfState,
    voters=st.lists(st.integers(1, 5), max_size=3, unique=True).map(tuple),
    learners=st.lists(st.integers(6, 7), max_size=1).map(tuple),
)
payloads = st.binary(max_size=40)


def outcome(fn: Callable[..., object], *args: object) -> tuple[str, object]:
    """The result of ``fn(*args)``, or the type of raftlib/ValueError exception it raised."""
    try:
        return ("ok", fn(*args))
    except (RaftError, ValueError) as exc:
        return ("raised", type(exc))


class StoreMatchesMemoryStorage(RuleBasedStateMachine):
    base: Path

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=self.base))
        self.reopens = 0

    @initialize(conf=st.none() | conf_states)
    def start(self, conf):
        self.model = MemoryStorage(conf)
        self.store = self._open(conf)

    def _open(self, conf: ConfState | None = None) -> RaftStore:
        return RaftStore.open(
            self.dir,
            cluster_id=CLUSTER,
            member_id=MEMBER,
            segment_size=160,
            keep_snapshots=2,
            preallocate=False,
            fsync=False,
            conf_state=conf,
        )

    def teardown(self) -> None:
        self.store.close()

    @rule(
        hs=st.none()
        | st.builds(HardState, st.integers(0, 9), st.integers(0, 3), st.integers(0, 50)),
        back=st.integers(-1, 4),
        terms=st.lists(st.integers(1, 9), max_size=6),
        data=payloads,
        conf=st.booleans(),
    )
    def save(self, hs, back, terms, data, conf):
        start = max(0, self.model.last_index() + 1 - back)
        ents = [
            Entry(
                term=t,
                index=start + i,
                type=EntryType.CONF_CHANGE if conf and i == 0 else EntryType.NORMAL,
                data=data[: 8 * i],
            )
            for i, t in enumerate(terms)
        ]
        if ents and start > self.model.last_index() + 1:
            assert outcome(self.store.save, hs, ents) == ("raised", RaftInvariantError)
            return

        def model_save() -> None:
            if hs is not None:
                self.model.set_hard_state(hs)
            self.model.append(ents)

        assert outcome(self.store.save, hs, ents) == outcome(model_save)

    @rule(delta=st.integers(-1, 6), conf=st.none() | conf_states, data=payloads)
    def create_snapshot(self, delta, conf, data):
        index = self.model.snapshot().metadata.index + delta
        assert outcome(self.store.create_snapshot, index, conf, data) == outcome(
            self.model.create_snapshot, index, conf, data
        )

    @rule(delta=st.integers(-1, 5))
    def compact(self, delta):
        index = self.model.first_index() - 1 + delta
        assert outcome(self.store.compact, index) == outcome(self.model.compact, index)

    @rule(
        delta=st.integers(-1, 8),
        term=st.integers(1, 9),
        conf=conf_states,
        data=payloads,
    )
    def apply_snapshot(self, delta, term, conf, data):
        md = SnapshotMetadata(conf, self.model.snapshot().metadata.index + delta, term)
        snap = Snapshot(data=data, metadata=md)
        assert outcome(self.store.apply_snapshot, snap) == outcome(self.model.apply_snapshot, snap)

    @rule()
    def reopen(self):
        self.store.close()
        self.store = self._open()
        self.reopens += 1

    @rule(data=st.data())
    def crash_during_a_write(self, data):
        """A batch that was being written when the node died: a strict prefix of its record."""
        self.store.close()
        ents = (Entry(term=9, index=self.model.last_index() + 1, data=b"lost" * 20),)
        frame, _ = frame_record(encode_record(BatchRecord(HardState(9, 9, 9), ents)), 0)
        cut = data.draw(st.integers(1, len(frame) - 1), label="cut")
        with list_segments(self.dir / "wal")[-1].path.open("ab") as f:
            f.write(frame[:cut])
        self.store = self._open()

    @precondition(lambda self: self.model.last_index() >= self.model.first_index())
    @rule(data=st.data())
    def read_entries(self, data):
        first, last = self.model.first_index(), self.model.last_index()
        lo = data.draw(st.integers(first - 1, last + 1), label="lo")
        hi = data.draw(st.integers(lo, last + 2), label="hi")
        max_size = data.draw(st.none() | st.integers(0, 120), label="max_size")
        assert outcome(self.store.entries, lo, hi, max_size) == outcome(
            self.model.entries, lo, hi, max_size
        )

    @invariant()
    def same_answers(self):
        m, s = self.model, self.store
        assert s.initial_state() == m.initial_state()
        assert s.hard_state == m.hard_state
        assert s.first_index() == m.first_index()
        assert s.last_index() == m.last_index()
        assert s.snapshot() == m.snapshot()
        for i in range(m.first_index() - 2, m.last_index() + 2):
            assert outcome(s.term, i) == outcome(m.term, i), i
        assert outcome(s.entries, m.first_index(), m.last_index() + 1) == outcome(
            m.entries, m.first_index(), m.last_index() + 1
        )


def test_raftstore_matches_memory_storage(tmp_path: Path) -> None:
    StoreMatchesMemoryStorage.base = tmp_path
    run_state_machine_as_test(
        StoreMatchesMemoryStorage,
        settings=settings(max_examples=200, stateful_step_count=50, deadline=None),
    )
