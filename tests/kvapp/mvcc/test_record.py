"""Packed versions (kvapp.mvcc.record): round trips, field readers, and the unchanged hash."""

from __future__ import annotations

import struct
import zlib

from hypothesis import given
from hypothesis import strategies as st

from kvapp.mvcc.record import (
    extend_history_hash,
    fields_hashed,
    identity,
    lease_of,
    mod_of,
    pack,
    pack_fields,
    unpack,
    version_of,
)
from kvapp.mvcc.types import KeyValue

i64 = st.integers(-(2**63), 2**63 - 1)

versions = st.builds(
    KeyValue,
    key=st.binary(min_size=1, max_size=40),
    create_revision=i64,
    mod_revision=i64,
    version=i64,
    value=st.binary(max_size=300),
    lease=i64,
)


def hash_as_before_records(kv: KeyValue, crc: int) -> int:
    """The store's history hash of one version, as it was defined on KeyValue objects.

    Snapshot files carry this hash in their trailer, so records must not change it.
    """
    head = struct.pack(
        ">qqqqQQ",
        kv.mod_revision,
        kv.create_revision,
        kv.version,
        kv.lease,
        len(kv.key),
        len(kv.value),
    )
    return zlib.crc32(kv.value, zlib.crc32(kv.key, zlib.crc32(head, crc)))


@given(versions, st.integers(0, 2**32 - 1))
def test_a_record_gives_back_its_version_and_its_hash(kv: KeyValue, crc: int) -> None:
    rec = pack(kv)
    assert unpack(rec) == kv
    assert rec == pack_fields(
        kv.key,
        kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        lease=kv.lease,
    )
    assert (identity(rec), mod_of(rec), version_of(rec), lease_of(rec)) == (
        (kv.key, kv.mod_revision, kv.version),
        kv.mod_revision,
        kv.version,
        kv.lease,
    )
    assert extend_history_hash(crc, [rec]) == hash_as_before_records(kv, crc)


def test_a_tombstone_and_an_empty_value_round_trip() -> None:
    tomb = KeyValue(b"k", 0, 7, 0)
    assert unpack(pack(tomb)) == tomb
    assert version_of(pack(tomb)) == 0
    empty = KeyValue(b"k\x00", 3, 3, 1, b"", 0)
    assert unpack(pack(empty)) == empty


def test_a_record_costs_the_key_the_value_and_36_bytes() -> None:
    kv = KeyValue(b"key%08d" % 1, 300, 300, 1, b"x" * 256, 0)
    assert len(pack(kv)) == 36 + 11 + 256


@given(st.lists(versions, max_size=5), st.integers(0, 2**32 - 1))
def test_fields_hashed_is_fields_and_the_hash_chain(kvs: list[KeyValue], crc: int) -> None:
    recs = [pack(kv) for kv in kvs]
    chained = crc
    for kv in kvs:
        chained = hash_as_before_records(kv, chained)
    as_lists = [
        [kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease] for kv in kvs
    ]
    assert fields_hashed(recs, crc) == (as_lists, chained)
    assert extend_history_hash(crc, recs) == chained
