"""Packed versions: how the store holds a key's versions in memory.

The key index and the change log hold each version as one ``bytes`` object, a *record*: a
36-byte header (mod revision, create revision, version, lease, key length; little-endian)
followed by the key and the value. Readers get :class:`~kvapp.mvcc.types.KeyValue` objects
made from records as they ask.

Why: a million keys are mostly their versions. As a ``KeyValue`` (80 bytes with its six slots),
a separate value object (33 bytes of header, rounded up to pymalloc's 16-byte classes) and a
revision ``int`` each, a version of a 256-byte value cost about 400 bytes; as a record it costs
its key and value plus 69 bytes (336 for an 11-byte key), and a read pays about a microsecond
to unpack it. The key index keeps its own key object for ordering, so a record's copy of the key
is what the change log, watchers and snapshots read.

Records are immutable and compared by identity where the store needs "the same version" (a
snapshot's last record); two versions of one key differ in (mod revision, version).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

from kvapp.mvcc.types import KeyValue

__all__ = [
    "HEAD",
    "extend_history_hash",
    "fields_hashed",
    "identity",
    "lease_of",
    "mod_of",
    "pack",
    "pack_fields",
    "unpack",
    "version_of",
]

HEAD = struct.Struct("<qqqqI")
"""mod revision, create revision, version, lease, key length."""

_HEAD_SIZE = HEAD.size
_MOD = struct.Struct("<q")
_VERSION_AT = 16
_HASH_HEADER = struct.Struct(">qqqqQQ")


def pack_fields(
    key: bytes, value: bytes, *, create_revision: int, mod_revision: int, version: int, lease: int
) -> bytes:
    """The record of a version given field by field (no validation: the store's own values).

    Raises:
        struct.error: a number does not fit 64 bits (a key longer than 4 GiB).
    """
    head = HEAD.pack(mod_revision, create_revision, version, lease, len(key))
    return b"".join((head, key, value))


def pack(kv: KeyValue) -> bytes:
    """The record of ``kv``."""
    key = kv.key
    head = HEAD.pack(kv.mod_revision, kv.create_revision, kv.version, kv.lease, len(key))
    return b"".join((head, key, kv.value))


def unpack(rec: bytes) -> KeyValue:
    """The version a record holds."""
    mod, create, version, lease, key_len = HEAD.unpack_from(rec)
    end = _HEAD_SIZE + key_len
    return KeyValue(rec[_HEAD_SIZE:end], create, mod, version, rec[end:], lease)


def mod_of(rec: bytes) -> int:
    """A record's mod revision (the bisection key of histories and the change log)."""
    return _MOD.unpack_from(rec)[0]  # type: ignore[no-any-return]


def version_of(rec: bytes) -> int:
    """A record's version: 0 for a tombstone."""
    return _MOD.unpack_from(rec, _VERSION_AT)[0]  # type: ignore[no-any-return]


def identity(rec: bytes) -> tuple[bytes, int, int]:
    """A record's key, mod revision and version (what no two versions share), in one unpack."""
    mod, _, version, _, key_len = HEAD.unpack_from(rec)
    return rec[_HEAD_SIZE : _HEAD_SIZE + key_len], mod, version


def lease_of(rec: bytes) -> int:
    """A record's lease, 0 for none."""
    return _MOD.unpack_from(rec, 24)[0]  # type: ignore[no-any-return]


def extend_history_hash(crc: int, records: Iterable[bytes]) -> int:
    """Continue the store's history hash chain ``crc`` over ``records``, in order.

    The chain is sequential: the hash of records ``a + b`` is ``extend_history_hash(
    extend_history_hash(0, a), b)``, so a snapshot can resume from the CRC it had reached.
    The hash predates records and covers, per version, a big-endian header (mod revision,
    create revision, version, lease, key length, value length), then the key and the value;
    those last two are the record's tail, so one CRC call covers them.
    """
    unpack_head, hash_head, crc32 = HEAD.unpack_from, _HASH_HEADER.pack, zlib.crc32
    for rec in records:
        mod, create, version, lease, key_len = unpack_head(rec)
        head = hash_head(mod, create, version, lease, key_len, len(rec) - _HEAD_SIZE - key_len)
        crc = crc32(memoryview(rec)[_HEAD_SIZE:], crc32(head, crc))
    return crc


def fields_hashed(records: Iterable[bytes], crc: int) -> tuple[list[list[object]], int]:
    """Each record as a list of its fields, and :func:`extend_history_hash` of them from ``crc``.

    The fields in snapshot order: ``[key, create_revision, mod_revision, version, value,
    lease]``.

    A snapshot writer needs both, and unpacking each record once serves the two.
    """
    unpack_head, hash_head, crc32 = HEAD.unpack_from, _HASH_HEADER.pack, zlib.crc32
    out = []
    for rec in records:
        mod, create, version, lease, key_len = unpack_head(rec)
        end = _HEAD_SIZE + key_len
        key, value = rec[_HEAD_SIZE:end], rec[end:]
        out.append([key, create, mod, version, value, lease])
        crc = crc32(
            value,
            crc32(key, crc32(hash_head(mod, create, version, lease, key_len, len(value)), crc)),
        )
    return out, crc
