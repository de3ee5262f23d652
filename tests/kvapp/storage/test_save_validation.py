"""RaftStore refuses, before writing, what its WAL or snapshot files could not read back.

A record that encodes but does not decode (``Entry.data`` a ``str``, a negative term) used to be
written and acknowledged, and then stopped the member at its next start with a
``WalCorruptError``. Now the write raises ``InvalidWriteError`` and leaves the store unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvapp.storage.errors import InvalidWriteError
from raftlib.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata

from .helpers import VOTERS, all_entries, open_store


def ents(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term=term, index=i, data=b"d%d" % i) for i in range(first, last + 1)]


def files(d: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_str_payload_is_refused_and_the_store_reopens(tmp_path):
    """The issue's regression: this save used to succeed and the reopen to fail."""
    with open_store(tmp_path) as store:
        before = files(tmp_path)
        bad: Any = "text"
        with pytest.raises(InvalidWriteError, match=r"entries\[0\] \(index 1\)\.data") as info:
            store.save(entries=[Entry(term=1, index=1, data=bad)])
        assert isinstance(info.value, ValueError)
        assert "got str" in str(info.value)
        assert files(tmp_path) == before  # nothing written
        assert store.last_index() == 0
        store.save(HardState(1, 1, 0), ents(1, 2))  # the store is still usable
    with open_store(tmp_path) as store:
        assert all_entries(store) == ents(1, 2)


BAD_ENTRIES: list[tuple[str, dict[str, Any], str]] = [
    ("str data", {"data": "text"}, "data must be bytes"),
    ("int data", {"data": 7}, "data must be bytes"),
    ("None data", {"data": None}, "data must be bytes"),
    ("negative term", {"term": -1}, "term must be an int"),
    ("term too big", {"term": 2**64}, "term must be an int"),
    ("bool term", {"term": True}, "term must be an int"),
    ("float term", {"term": 1.0}, "term must be an int"),
    ("str index", {"index": "1"}, "index must be an int"),
    ("unknown type", {"type": 7}, "type must be an EntryType"),
    ("str type", {"type": "normal"}, "type must be an EntryType"),
    ("bool type", {"type": False}, "type must be an EntryType"),
]


@pytest.mark.parametrize(
    ("fields", "message"), [c[1:] for c in BAD_ENTRIES], ids=[c[0] for c in BAD_ENTRIES]
)
def test_bad_entry_fields_write_nothing(tmp_path, fields, message):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 2))
        before = files(tmp_path)
        good: dict[str, Any] = {"term": 1, "index": 4, "type": EntryType.NORMAL, "data": b"x"}
        batch = [Entry(1, 3, data=b"ok"), Entry(**(good | fields)), Entry(1, 5, data=b"ok")]
        with pytest.raises(InvalidWriteError, match=message):
            store.save(HardState(1, 1, 2), batch)
        assert files(tmp_path) == before
        assert store.hard_state == HardState(1, 1, 0)
        assert all_entries(store) == ents(1, 2)
    with open_store(tmp_path) as store:
        assert all_entries(store) == ents(1, 2)


def test_not_an_entry_is_refused(tmp_path):
    with open_store(tmp_path) as store:
        bad: Any = (1, 1, 0, b"")
        with pytest.raises(InvalidWriteError, match="must be an Entry"):
            store.save(entries=[bad])


@pytest.mark.parametrize(
    "hs",
    [HardState(-1, 0, 0), HardState(1, "2", 0), HardState(1, 1, 2**64), HardState(1, 1, None)],  # type: ignore[arg-type]
    ids=["negative term", "str vote", "commit too big", "None commit"],
)
def test_bad_hard_state_writes_nothing(tmp_path, hs):
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 2))
        before = files(tmp_path)
        with pytest.raises(InvalidWriteError, match="hard state"):
            store.save(hs, ents(3, 3))
        with pytest.raises(InvalidWriteError, match="hard state"):
            store.set_hard_state(hs)
        assert files(tmp_path) == before
        assert store.hard_state == HardState(1, 1, 0)
    with open_store(tmp_path) as store:
        assert store.hard_state == HardState(1, 1, 0)
        assert all_entries(store) == ents(1, 2)


def test_bytes_like_data_and_int_types_are_stored_as_bytes_and_enums(tmp_path):
    anything: Any
    batch = [
        Entry(1, 1, data=bytearray(b"from a bytearray")),  # type: ignore[arg-type]
        Entry(1, 2, data=memoryview(b"from a memoryview")),  # type: ignore[arg-type]
        Entry(1, 3, type=1, data=b"conf change"),  # type: ignore[arg-type]
        Entry(1, 4, data=b"plain"),
    ]
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), batch)
        stored = all_entries(store)
    with open_store(tmp_path) as store:
        for anything in (stored, all_entries(store)):
            assert [e.data for e in anything] == [
                b"from a bytearray",
                b"from a memoryview",
                b"conf change",
                b"plain",
            ]
            assert all(type(e.data) is bytes for e in anything)
            assert [type(e.type) for e in anything] == [EntryType] * 4
            assert anything[2].type is EntryType.CONF_CHANGE
    assert stored[3] is batch[3]  # valid entries are kept as they are, not copied


def test_snapshot_arguments_are_checked_too(tmp_path):
    """Snapshot files and markers are read back at every start as well."""
    with open_store(tmp_path) as store:
        store.save(HardState(1, 1, 0), ents(1, 3))
        before = files(tmp_path)
        bad_data: Any = "state"
        with pytest.raises(InvalidWriteError, match="snapshot data must be bytes"):
            store.create_snapshot(2, VOTERS, bad_data)
        with pytest.raises(InvalidWriteError, match="snapshot data must be bytes"):
            store.apply_snapshot(Snapshot(bad_data, SnapshotMetadata(VOTERS, 9, 2)))
        bad_ids: Any = (1, -2)
        with pytest.raises(InvalidWriteError, match="voters id"):
            store.create_snapshot(2, ConfState(voters=bad_ids), b"")
        bad_term: Any = "2"
        with pytest.raises(InvalidWriteError, match="snapshot term"):
            store.apply_snapshot(Snapshot(b"", SnapshotMetadata(VOTERS, 9, bad_term)))
        bad_flag: Any = 1
        with pytest.raises(InvalidWriteError, match="auto_leave"):
            store.create_snapshot(2, ConfState(voters=(1,), auto_leave=bad_flag), b"")
        assert files(tmp_path) == before
        snap = store.create_snapshot(2, VOTERS, bytearray(b"fine"))  # type: ignore[arg-type]
        assert type(snap.data) is bytes
    with open_store(tmp_path) as store:
        assert store.snapshot() == Snapshot(b"fine", SnapshotMetadata(VOTERS, 2, 1))
