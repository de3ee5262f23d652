"""A conformance check for any raftlib ``Storage`` implementation with a write side.

``check_storage(factory)`` drives a fresh storage and a ``MemoryStorage`` through the same seeded
sequence of writes (appends with conflicts, hard states, snapshots created and installed,
compactions, and optionally reopening) and fails on the first read whose answer differs: a
value, or the type of exception raised. kvapp's ``RaftStore`` passes it like any user's storage.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Protocol

from raftlib.errors import RaftError
from raftlib.storage import MemoryStorage, Storage
from raftlib.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata

__all__ = ["StorageMismatch", "WritableStorage", "check_storage"]


class WritableStorage(Storage, Protocol):
    """A ``Storage`` with the write side ``MemoryStorage`` has."""

    def append(self, entries: list[Entry]) -> None:
        """Append entries, truncating a conflicting suffix."""
        ...

    def set_hard_state(self, hard_state: HardState) -> None:
        """Record the hard state."""
        ...

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the log with a snapshot."""
        ...

    def create_snapshot(self, index: int, conf_state: ConfState | None, data: bytes) -> Snapshot:
        """Make a snapshot at ``index``."""
        ...

    def compact(self, compact_index: int) -> None:
        """Drop entries up to ``compact_index``."""
        ...


class StorageMismatch(AssertionError):
    """The storage under test answered differently from ``MemoryStorage``."""


def _outcome(fn: Callable[[], object]) -> tuple[str, object]:
    try:
        return ("ok", fn())
    except (RaftError, ValueError) as exc:
        return ("raised", type(exc).__name__)


def check_storage(
    factory: Callable[[], WritableStorage],
    *,
    seed: int = 0,
    steps: int = 300,
    reopen: Callable[[WritableStorage], WritableStorage] | None = None,
    snapshot_data: Callable[[object], bytes] | None = None,
) -> None:
    """Check that storages from ``factory`` behave as ``MemoryStorage`` does.

    Args:
        factory: returns a new, empty storage.
        seed: seeds the sequence of operations.
        steps: how many write operations to perform.
        reopen: if given, called now and then to close and reopen the storage (from disk,
            say); it must return a storage holding the same state.
        snapshot_data: if given, turns the data of a snapshot the storage returns into the
            bytes it stands for, before comparing (for a storage that hands out a snapshot's
            data as a handle rather than ``bytes``; raftlib never looks inside it).

    Raises:
        StorageMismatch: describing the operation history and the first differing answer.
    """
    rng = random.Random(seed)
    model = MemoryStorage()
    store = factory()
    history: list[str] = []

    def as_bytes(outcome: tuple[str, object]) -> tuple[str, object]:
        kind, value = outcome
        if snapshot_data is not None and isinstance(value, Snapshot):
            data: object = value.data
            return kind, Snapshot(data=snapshot_data(data), metadata=value.metadata)
        return outcome

    def compare(what: str, a: Callable[[], object], b: Callable[[], object]) -> None:
        got, want = as_bytes(_outcome(a)), _outcome(b)
        if got != want:
            raise StorageMismatch(
                f"{what}: storage gave {got!r}, MemoryStorage gave {want!r}\n"
                "after:\n  " + "\n  ".join(history[-20:])
            )

    def both(method: str, *args: object) -> None:
        desc = f"{method}{args!r}"
        history.append(desc)
        compare(
            desc,
            functools.partial(getattr(store, method), *args),
            functools.partial(getattr(model, method), *args),
        )

    def check_reads() -> None:
        compare("first_index()", store.first_index, model.first_index)
        compare("last_index()", store.last_index, model.last_index)
        compare("initial_state()", store.initial_state, model.initial_state)
        compare("snapshot()", store.snapshot, model.snapshot)
        first, last = model.first_index(), model.last_index()
        for i in range(max(0, first - 2), last + 3):
            compare(
                f"term({i})", functools.partial(store.term, i), functools.partial(model.term, i)
            )
        for _ in range(4):
            lo = rng.randint(max(0, first - 1), last + 1)
            hi = rng.randint(lo, last + 1)
            size = rng.choice([None, 0, 40, 200])
            compare(
                f"entries({lo}, {hi}, {size})",
                functools.partial(store.entries, lo, hi, size),
                functools.partial(model.entries, lo, hi, size),
            )

    term = 1
    for step in range(steps):
        first, last = model.first_index(), model.last_index()
        kind = rng.choices(
            ["append", "hard_state", "create", "compact", "install", "reopen"],
            weights=[8, 2, 2, 2, 1, 1 if reopen else 0],
        )[0]
        if kind == "append":
            start = rng.randint(max(first, last - 3), last + 1)
            if rng.random() < 0.3:
                term += 1
            ents = [
                Entry(
                    term=term,
                    index=start + k,
                    type=rng.choice(list(EntryType)),
                    data=rng.randbytes(rng.randint(0, 30)),
                )
                for k in range(rng.randint(1, 5))
            ]
            both("append", ents)
        elif kind == "hard_state":
            hs = HardState(term=term, vote=rng.randint(0, 3), commit=rng.randint(0, last))
            both("set_hard_state", hs)
        elif kind == "create":
            idx = rng.randint(max(0, first - 1), last)
            cs = rng.choice([None, ConfState(voters=(1, 2, 3)), ConfState(voters=(1,))])
            both("create_snapshot", idx, cs, b"snap-%d" % step)
        elif kind == "compact":
            idx = rng.randint(max(0, first - 1), last)
            both("compact", idx)
        elif kind == "install":
            idx = last + rng.randint(-2, 5)
            term += 1
            snap = Snapshot(
                data=b"installed-%d" % step,
                metadata=SnapshotMetadata(
                    conf_state=ConfState(voters=(1, 2, 3)), index=idx, term=term
                ),
            )
            both("apply_snapshot", snap)
        elif reopen is not None:
            history.append("reopen()")
            store = reopen(store)
        check_reads()
