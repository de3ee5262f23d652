"""The values of etcd's data model: key-values, events, requests and responses.

Every type is a frozen ``attrs`` class with slots, or an ``IntEnum`` numbered as in etcd's
``mvccpb`` / ``etcdserverpb`` protobuf enums, so the API layer maps them one to one. Requests
mirror etcd's request messages field for field (minus the header); responses carry the header
revision as ``revision``.

Revisions: every committed write transaction gets the next *main* revision; the writes inside it
are ordered by *sub* revision, which here is their position in the transaction (and in the
:class:`~kvapp.mvcc.store.Store`'s change log). A key's ``mod_revision`` is the main revision that
last wrote it. The *compacted revision* of a store that was never compacted is
:data:`NEVER_COMPACTED`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TypeAlias

import attrs

__all__ = [
    "NEVER_COMPACTED",
    "CompactRequest",
    "CompactResponse",
    "Compare",
    "CompareResult",
    "CompareTarget",
    "DeleteRangeRequest",
    "DeleteRangeResponse",
    "Event",
    "EventType",
    "HashKVResponse",
    "KeyValue",
    "PutRequest",
    "PutResponse",
    "RangeRequest",
    "RangeResponse",
    "RequestOp",
    "ResponseOp",
    "SortOrder",
    "SortTarget",
    "TxnRequest",
    "TxnResponse",
]


NEVER_COMPACTED = -1
"""The compacted revision of a store never compacted (etcd's initial ``compactMainRev``).

It is below every revision a compaction can leave, 0 included: etcd accepts one ``Compact(0)``
on a fresh store, which leaves the compacted revision at 0.
"""


class EventType(enum.IntEnum):
    """What a watch event reports (``mvccpb.Event.EventType``)."""

    PUT = 0
    DELETE = 1


class SortOrder(enum.IntEnum):
    """``RangeRequest.SortOrder``."""

    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    """``RangeRequest.SortTarget``."""

    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareResult(enum.IntEnum):
    """``Compare.CompareResult``: how the key's field must relate to the operand."""

    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(enum.IntEnum):
    """``Compare.CompareTarget``: which field of the key a compare reads."""

    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


@attrs.frozen(weakref_slot=False)  # no one takes weak references: 16 bytes less per version
class KeyValue:
    """One version of a key, as etcd's ``mvccpb.KeyValue``.

    A *tombstone* (the ``kv`` of a DELETE event) has ``version == 0``: only ``key`` and
    ``mod_revision`` (the deleting revision) are set, as in etcd.

    Attributes:
        key: the key; never empty.
        create_revision: main revision of the put that created this generation of the key.
        mod_revision: main revision of the write that produced this version.
        version: 1 on creation, +1 per put; reset by a delete.
        value: the value (empty for a tombstone, or when a range asked for keys only).
        lease: the lease the key is attached to, 0 for none.
    """

    key: bytes
    create_revision: int
    mod_revision: int
    version: int
    value: bytes = b""
    lease: int = 0

    @property
    def is_tombstone(self) -> bool:
        """Whether this records a deletion rather than a value."""
        return self.version == 0


@attrs.frozen
class Event:
    """A change seen by a watcher: a put or a delete, with the previous version if asked for.

    Attributes:
        type: PUT or DELETE.
        kv: the new version (PUT) or the tombstone (DELETE).
        prev_kv: the version just before this change, or None when the key did not exist, the
            watcher did not ask for it, or it was already compacted away.
    """

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


@attrs.frozen
class RangeRequest:
    r"""Read the keys in ``[key, range_end)`` (etcd's ``RangeRequest``).

    ``range_end`` empty means the single key ``key``; ``b"\0"`` means every key ``>= key``;
    ``prefix_range_end(p)`` gives the end for a prefix. ``revision`` 0 reads the current
    revision. ``limit`` 0 (or negative) means no limit. ``serializable`` only matters to the API
    layer (serve from local state without a read index); the store ignores it.
    """

    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


@attrs.frozen
class PutRequest:
    """Write one key (etcd's ``PutRequest``).

    ``lease`` 0 detaches the key from any lease unless ``ignore_lease`` keeps the current one;
    ``ignore_value`` keeps the current value. Both ``ignore_*`` flags need the key to exist.
    """

    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


@attrs.frozen
class DeleteRangeRequest:
    """Delete the keys in ``[key, range_end)`` (etcd's ``DeleteRangeRequest``)."""

    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


@attrs.frozen
class Compare:
    """One condition of a txn (etcd's ``Compare``).

    Compares ``target`` of every key in ``[key, range_end)`` (or of ``key`` alone) with
    ``operand``: bytes for ``VALUE``, an int for the other targets. A missing key compares as
    version/create/mod/lease 0, and a ``VALUE`` compare on missing keys is always false.
    """

    key: bytes
    target: CompareTarget
    result: CompareResult
    operand: int | bytes = 0
    range_end: bytes = b""

    def __attrs_post_init__(self) -> None:
        wants_bytes = self.target is CompareTarget.VALUE
        value = self.operand
        if wants_bytes != isinstance(value, bytes) or isinstance(value, bool):
            kind = "bytes" if wants_bytes else "int"
            raise TypeError(f"a {self.target.name} compare needs a {kind} operand, got {value!r}")


def _ops(ops: Iterable[RequestOp]) -> tuple[RequestOp, ...]:
    return tuple(ops)


def _compares(compares: Iterable[Compare]) -> tuple[Compare, ...]:
    return tuple(compares)


@attrs.frozen
class TxnRequest:
    """If every compare holds, run ``success``, else ``failure`` (etcd's ``TxnRequest``).

    The whole transaction gets one revision. Operations may be nested transactions.
    """

    compare: tuple[Compare, ...] = attrs.field(default=(), converter=_compares)
    success: tuple[RequestOp, ...] = attrs.field(default=(), converter=_ops)
    failure: tuple[RequestOp, ...] = attrs.field(default=(), converter=_ops)


@attrs.frozen
class CompactRequest:
    """Drop history before ``revision`` (etcd's ``CompactionRequest``).

    ``physical`` only matters to etcd's disk backend; here compaction is always immediate.
    """

    revision: int
    physical: bool = False


RequestOp: TypeAlias = RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest
"""An operation inside a txn (etcd's ``RequestOp``)."""


@attrs.frozen
class RangeResponse:
    """Result of a range.

    Attributes:
        revision: header revision: the store's revision when the range was served.
        kvs: matching key-values after filters, sort and limit (empty for ``count_only``).
        more: whether ``limit`` cut off further matching keys.
        count: number of keys in the range at the read revision, before the revision filters
            and the limit (etcd's ``count``).
    """

    revision: int
    kvs: tuple[KeyValue, ...] = ()
    more: bool = False
    count: int = 0


@attrs.frozen
class PutResponse:
    """Result of a put: header revision, and the previous version if asked for and present."""

    revision: int
    prev_kv: KeyValue | None = None


@attrs.frozen
class DeleteRangeResponse:
    """Result of a delete: how many keys were deleted, and their last versions if asked for."""

    revision: int
    deleted: int = 0
    prev_kvs: tuple[KeyValue, ...] = ()


@attrs.frozen
class TxnResponse:
    """Result of a txn: which branch ran and one response per operation of that branch.

    ``revision`` is the header revision; it is 0 for a txn nested in another one, whose header
    etcd 3.4 leaves empty.
    """

    revision: int
    succeeded: bool
    responses: tuple[ResponseOp, ...] = ()


@attrs.frozen
class CompactResponse:
    """Result of a compaction; ``revision`` is the header revision (compaction adds none)."""

    revision: int


@attrs.frozen
class HashKVResponse:
    """A digest of the key-value history, for comparing replicas (etcd's ``HashKV``).

    Attributes:
        hash: CRC-32 (zlib's IEEE polynomial) of the history kept at or below
            ``hash_revision``; equal on replicas with the same history and compaction.
        compact_revision: the store's compacted revision (:data:`NEVER_COMPACTED`, -1, if
            never compacted, as etcd reports it).
        hash_revision: the revision the hash covers; a negative one, as asked, covers nothing.
    """

    hash: int
    compact_revision: int
    hash_revision: int


ResponseOp: TypeAlias = RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse
"""A response inside a txn response (etcd's ``ResponseOp``)."""
