"""etcd's MVCC data model: revisions, key history, range / put / delete / txn / compact.

The public names are re-exported here; :mod:`kvapp.mvcc.index`, :mod:`kvapp.mvcc.sortedmap`
and :mod:`kvapp.mvcc.validate` are implementation modules of the store.
"""

from kvapp.mvcc.keyrange import ALL_KEYS_END, prefix_range_end
from kvapp.mvcc.store import Store, StoreListener
from kvapp.mvcc.types import (
    NEVER_COMPACTED,
    CompactRequest,
    CompactResponse,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    EventType,
    HashKVResponse,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from kvapp.mvcc.validate import DEFAULT_MAX_TXN_OPS, check_request, check_txn

__all__ = [
    "ALL_KEYS_END",
    "DEFAULT_MAX_TXN_OPS",
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
    "Store",
    "StoreListener",
    "TxnRequest",
    "TxnResponse",
    "check_request",
    "check_txn",
    "prefix_range_end",
]
