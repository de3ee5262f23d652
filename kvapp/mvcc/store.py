r"""The MVCC store: etcd's key-value semantics over a revisioned, in-memory history.

A :class:`Store` is a deterministic state machine. Given the same sequence of calls, every
replica ends with the same revisions, the same history and the same :meth:`Store.hash_kv`; it
reads no clock and does no I/O. It is meant to be driven by committed Raft entries, one write
transaction per entry, and read by the API layer between applies.

Data layout:

- the :class:`~kvapp.mvcc.index.KeyIndex`: sorted keys, each with its versions (tombstones
  included), for reads at any revision since the last compaction;
- the *change log*: every version written, in (main, sub) revision order, from the compacted
  revision on. Watchers catch up from it and snapshots carry it. It holds references to the
  same records (:mod:`kvapp.mvcc.record`) as the index, so it costs one pointer per change;
- a lease index, lease ID -> keys attached to it now, so revoking a lease need not scan.

Semantics follow etcd 3.4's ``mvcc`` package and its apply layer (``etcdserver/apply.go``);
where they are odd, they are etcd's, checked against etcd 3.4.23:

- the store starts at revision 1; each write transaction that changes anything gets the next
  revision, and a transaction that changes nothing (a delete of absent keys, a read-only txn)
  gets none;
- the compacted revision starts at -1, meaning "never compacted" (etcd's ``compactMainRev``).
  :meth:`Store.compact` refuses a revision at or below it with :class:`CompactedError`, then
  one above the current revision with :class:`FutureRevisionError` (``updateCompactRev`` in
  ``mvcc/kvstore.go``). So the first ``Compact(0)`` succeeds, changes no data and makes the
  compacted revision 0, and a second one fails; a negative revision always fails;
- a range or get outside a txn reads the current revision for any revision <= 0; above it is
  :class:`FutureRevisionError`, below the compacted revision is :class:`CompactedError`
  (``rangeKeys`` in ``mvcc/kvstore_txn.go``); responses carry the *current* revision as their
  header revision, even for historical reads;
- a put outside a txn checks that its lease exists before it checks that an ``ignore_*`` put
  has a key to keep (``applierV3backend.Put``): :class:`LeaseNotFoundError` wins;
- all compares of a txn, nested ones included, are evaluated against the state before the
  txn. Then the chosen path is checked in etcd's order (``applierV3backend.Txn``, which runs
  ``checkRequests`` once with ``checkRequestPut`` and then once with ``checkRequestRange``),
  each pass depth-first in operation order: first every put (an ``ignore_*`` put needs its key
  to exist before the txn, :class:`KeyNotFoundError`, and then its lease must exist,
  :class:`LeaseNotFoundError`), then every range. A range's revision is accepted if it is 0,
  and otherwise must be neither above the current revision nor below the compacted one. That
  rule also judges *negative* revisions, which outside a txn mean "now": before any
  compaction (compacted revision -1) a range at -1 passes and reads the current revision while
  -2 and below are :class:`CompactedError`; after any compaction every negative revision is.
  kvapp keeps this quirk rather than reading "now" as plain ranges do: it is what etcd answers,
  it is deterministic, and no client sends negative revisions on purpose;
- one check etcd lacks comes last: an ``ignore_*`` put of a key that an earlier delete with
  ``range_end == b"\0"`` in the same txn removed. etcd's duplicate-key check lets such a
  delete and put share a branch (see :mod:`kvapp.mvcc.validate`) and its put check looks at the
  state before the txn, so etcd 3.4 finds the key gone only while applying, and panics (3.4.23
  crashes with "unexpected error during txn: etcdserver: key not found", and again on every
  restart that replays the entry). kvapp rejects the txn with :class:`KeyNotFoundError`
  instead; coming after etcd's checks, it changes no answer etcd gives;
- only then does anything change, so a txn is all-or-nothing. Operations inside the txn see
  the txn's earlier writes. The responses inside a txn carry the revision etcd's inner headers
  carry (the txn's revision once it has written something, the previous one before), except
  that a nested txn's response has revision 0: etcd 3.4 leaves nested txn headers empty
  (``newTxnResp``).

Listeners (:class:`StoreListener`) hear about every committed revision and every restore; the
watch hub is one.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol, cast

import attrs

from kvapp.errors import (
    CompactedError,
    FutureRevisionError,
    KeyNotFoundError,
    LeaseNotFoundError,
)
from kvapp.mvcc.index import KeyIndex
from kvapp.mvcc.keyrange import ALL_KEYS_END
from kvapp.mvcc.record import (
    extend_history_hash,
    identity,
    lease_of,
    mod_of,
    pack,
    unpack,
    version_of,
)
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
from kvapp.mvcc.validate import (
    DEFAULT_MAX_TXN_OPS,
    check_key,
    check_put,
    check_txn,
)

__all__ = ["Store", "StoreListener", "extend_history_hash", "history_hash"]


class StoreListener(Protocol):
    """Something that follows the store's changes (the watch hub)."""

    def on_commit(self, revision: int, events: Sequence[Event]) -> None:
        """Called once per committed revision, after the store is updated.

        ``events`` are the revision's changes in sub-revision order, each with its previous
        version. Must not write to the store.
        """

    def on_restore(self) -> None:
        """Called after the store's whole state was replaced by a snapshot."""


class _Write:
    """One write transaction in progress: its revision and its changes so far."""

    __slots__ = ("kvs", "prevs", "rev")

    def __init__(self, rev: int) -> None:
        self.rev = rev
        self.kvs: list[KeyValue] = []
        self.prevs: list[KeyValue | None] = []


class _Events(Sequence[Event]):
    """A revision's events for the listeners, built only when one first looks at them.

    Most revisions concern no watcher, and the watch hub then never looks: building an Event
    per change anyway cost a third of a plain put.
    """

    __slots__ = ("_built", "_write")

    def __init__(self, write: _Write) -> None:
        self._write = write
        self._built: list[Event] | None = None

    def _events(self) -> list[Event]:
        built = self._built
        if built is None:
            w = self._write
            built = self._built = [
                Event(EventType.PUT if kv.version else EventType.DELETE, kv, prev)
                for kv, prev in zip(w.kvs, w.prevs, strict=True)
            ]
        return built

    def __len__(self) -> int:
        return len(self._write.kvs)

    def __getitem__(self, i: int) -> Event:  # type: ignore[override]  # no slices needed
        return self._events()[i]

    def __iter__(self) -> Iterator[Event]:
        return iter(self._events())


@attrs.frozen
class _Decision:
    """The branch a txn takes and, in order, the decisions of the nested txns in it."""

    succeeded: bool
    ops: tuple[RequestOp, ...]
    nested: tuple[_Decision, ...]


_SORT_KEYS: dict[SortTarget, Callable[[KeyValue], bytes | int]] = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


class Store:
    """etcd's MVCC key-value store: range, put, delete-range, txn, compact, hash.

    Not thread-safe: one caller (the apply loop) at a time.

    Args:
        max_txn_ops: the most compares or operations a txn list may hold (etcd's
            ``--max-txn-ops``); None disables the limit. A store that applies replicated
            commands should use None and leave the limit to the proposer; see
            :mod:`kvapp.mvcc.validate`.

    Attributes:
        lease_exists: called to check that a put's lease exists; None accepts every lease.
            :class:`~kvapp.lease.Lessor` installs its own check.
    """

    def __init__(self, *, max_txn_ops: int | None = DEFAULT_MAX_TXN_OPS) -> None:
        self.max_txn_ops = max_txn_ops
        self.lease_exists: Callable[[int], bool] | None = None
        self._index = KeyIndex()
        self._log: list[bytes] = []  # records
        self._rev = 1
        self._compact_rev = NEVER_COMPACTED
        self._lease_keys: dict[int, set[bytes]] = {}
        self._listeners: list[StoreListener] = []

    # -- state ------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The current revision: that of the last write transaction (1 for a new store)."""
        return self._rev

    @property
    def log_size(self) -> int:
        """Records in the change log: every key version since the compacted revision."""
        return len(self._log)

    @property
    def compact_revision(self) -> int:
        """The revision of the last compaction, :data:`NEVER_COMPACTED` (-1) if none.

        Reads at revisions below it fail with :class:`CompactedError`, and so does compacting
        at or below it. -1 is etcd's ``compactMainRev`` before the first compaction; 0 is a
        store compacted at revision 0, which holds the same data but refuses a second
        ``compact(0)``.
        """
        return self._compact_rev

    def add_listener(self, listener: StoreListener) -> None:
        """Follow every committed revision and restore from now on."""
        self._listeners.append(listener)

    def remove_listener(self, listener: StoreListener) -> None:
        """Stop notifying ``listener``."""
        self._listeners.remove(listener)

    # -- reads ------------------------------------------------------------------------------

    def range(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        revision: int = 0,
        limit: int = 0,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> RangeResponse:
        """Read the keys in ``[key, range_end)`` at ``revision`` (etcd's Range).

        Arguments are those of :class:`~kvapp.mvcc.types.RangeRequest`. etcd's rules apply:
        ``count`` counts every key in the range at the read revision, before the revision
        filters and the limit; with a sort order or a revision filter the whole range is read,
        filtered, sorted and then cut to ``limit``; without one, the first ``limit`` keys in
        key order are taken and a non-key ``sort_target`` sorts only those (ascending unless
        DESCEND). Sorting is stable, so ties stay in key order.

        Raises:
            EmptyKeyError: ``key`` is empty.
            FutureRevisionError: ``revision`` is above the current revision.
            CompactedError: ``revision`` is below the compacted revision.
        """
        check_key(key)
        if revision > self._rev:
            raise FutureRevisionError
        if 0 < revision < self._compact_rev:
            raise CompactedError
        return self._range(
            self._rev,
            RangeRequest(
                key,
                range_end,
                limit,
                revision,
                sort_order,
                sort_target,
                serializable,
                keys_only,
                count_only,
                min_mod_revision,
                max_mod_revision,
                min_create_revision,
                max_create_revision,
            ),
        )

    def get(self, key: bytes, revision: int = 0) -> KeyValue | None:
        """The version of one key at ``revision`` (0 or below: now), or None if it did not exist.

        Raises:
            FutureRevisionError: ``revision`` is above the current revision.
            CompactedError: ``revision`` is below the compacted revision.
        """
        if revision > self._rev:
            raise FutureRevisionError
        if 0 < revision < self._compact_rev:
            raise CompactedError
        return self._index.get(key, revision if revision > 0 else self._rev)

    def lease_keys(self, lease: int) -> frozenset[bytes]:
        """The keys attached to ``lease`` now."""
        return frozenset(self._lease_keys.get(lease, ()))

    def changes(self, start_revision: int, end_revision: int) -> Sequence[KeyValue]:
        """Every change with ``start_revision <= mod_revision <= end_revision``, in order.

        Puts appear as their new version, deletes as tombstones (``version == 0``). This is the
        history watchers catch up from.

        Raises:
            CompactedError: ``start_revision`` is below the compacted revision.
        """
        if start_revision < self._compact_rev:
            raise CompactedError
        lo = bisect_left(self._log, start_revision, key=mod_of)
        hi = bisect_right(self._log, end_revision, lo=lo, key=mod_of)
        return [unpack(rec) for rec in self._log[lo:hi]]

    def prev_version(self, kv: KeyValue) -> KeyValue | None:
        """An event's ``prev_kv`` for the change ``kv`` (from :meth:`changes`).

        As etcd 3.4 fills it in: none for a put that created its key (etcd skips the lookup
        for those); else the key as a read at the revision before the change's sees it, none
        when the key did not exist then or that revision was compacted away (etcd's read
        fails then, and it leaves ``prev_kv`` out). The difference shows when one txn changes
        a key twice (a put and a from-key delete): put-then-delete gives the delete no
        ``prev_kv`` (the key did not exist before the txn), delete-then-put gives the delete
        the version from before the txn and the put (a creation) none. This is the
        ``prev_kv`` the live event for ``kv`` carried.
        """
        if kv.version and kv.create_revision == kv.mod_revision:
            return None
        before = kv.mod_revision - 1
        if before < self._compact_rev:
            return None
        return self._index.get(kv.key, before)

    # -- writes -----------------------------------------------------------------------------

    def put(
        self,
        key: bytes,
        value: bytes = b"",
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResponse:
        """Write one key in a new revision (etcd's Put).

        A new key gets ``create_revision`` = this revision and version 1; an existing one keeps
        its create revision and counts up its version. The key is attached to ``lease`` (and
        detached from its previous lease) unless ``ignore_lease`` keeps the current one.

        Raises:
            EmptyKeyError, ValueProvidedError, LeaseProvidedError: invalid request.
            LeaseNotFoundError: ``lease`` does not exist (checked before the key, as etcd does
                for a put outside a txn).
            KeyNotFoundError: ``ignore_value``/``ignore_lease`` on a key that does not exist.
        """
        check_put(key, value, lease, ignore_value=ignore_value, ignore_lease=ignore_lease)
        self._check_lease(lease)
        self._check_key_kept(key, ignore_value=ignore_value, ignore_lease=ignore_lease)
        w = _Write(self._rev + 1)
        prev = self._put(w, key, value, lease, ignore_value=ignore_value, ignore_lease=ignore_lease)
        self._commit(w)
        return PutResponse(w.rev, prev if prev_kv else None)

    def delete_range(
        self, key: bytes, range_end: bytes = b"", *, prev_kv: bool = False
    ) -> DeleteRangeResponse:
        """Delete the keys in the range in one new revision (etcd's DeleteRange).

        Deleting nothing creates no revision.

        Raises:
            EmptyKeyError: ``key`` is empty.
        """
        check_key(key)
        w = _Write(self._rev + 1)
        prevs = self._delete(w, key, range_end)
        self._commit(w)
        return DeleteRangeResponse(self._rev, len(prevs), tuple(prevs) if prev_kv else ())

    def delete_keys(self, keys: Iterable[bytes]) -> int:
        """Delete the given keys that exist, in the given order, in one revision.

        For lease revocation (etcd deletes a lease's keys in sorted order in one txn); not
        subject to the txn size limit. Returns the store's revision afterwards.
        """
        w = _Write(self._rev + 1)
        for key in keys:
            self._delete(w, key, b"")
        self._commit(w)
        return self._rev

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[RequestOp] = (),
        failure: Iterable[RequestOp] = (),
    ) -> TxnResponse:
        r"""Run ``success`` if every compare holds, else ``failure``, in one revision (etcd's Txn).

        The chosen path is checked before anything changes, in etcd's order: every put, then
        every range, then kvapp's own check of ``ignore_*`` puts after a ``b"\0"`` delete (see
        the module doc).

        Raises:
            TooManyOpsError: a list is longer than ``max_txn_ops``.
            DuplicateKeyError: a branch writes a key twice or puts a key it deletes.
            EmptyKeyError, ValueProvidedError, LeaseProvidedError: an invalid compare or op.
            KeyNotFoundError, LeaseNotFoundError: a put in the chosen branch cannot be applied.
            FutureRevisionError, CompactedError: a range in the chosen branch reads a revision
                outside the retained history.

            Nothing has changed when any of these is raised.
        """
        compares = tuple(compare)
        ok_ops = tuple(success)
        else_ops = tuple(failure)
        check_txn(compares, ok_ops, else_ops, self.max_txn_ops)
        decision = self._decide(compares, ok_ops, else_ops)
        self._check_puts(decision)
        self._check_ranges(decision)
        self._check_kept_keys_survive(decision, None)
        w = _Write(self._rev + 1)
        resp = self._execute(w, decision)
        if len(w.kvs) > 1:
            self._event_prevs(w)
        self._commit(w)
        return resp

    def compact(self, revision: int) -> CompactResponse:
        """Forget the history before ``revision`` (etcd's Compact).

        The state at ``revision`` and after stays readable; each key keeps its version visible
        at ``revision`` (unless deleted by then) and everything newer. The change log keeps
        the changes at ``revision`` itself, so a watch may still start there. Compaction does
        not create a revision.

        As in etcd, a never-compacted store (compacted revision -1) accepts ``compact(0)``,
        which keeps everything and sets the compacted revision to 0.

        Raises:
            CompactedError: ``revision`` is not above the current compacted revision (checked
                first, so this includes every negative revision).
            FutureRevisionError: ``revision`` is above the current revision.
        """
        if revision <= self._compact_rev:
            raise CompactedError
        if revision > self._rev:
            raise FutureRevisionError
        self._index.compact(revision)
        del self._log[: bisect_left(self._log, revision, key=mod_of)]
        self._compact_rev = revision
        return CompactResponse(self._rev)

    def apply(self, request: RequestOp | CompactRequest) -> ResponseOp | CompactResponse:
        """Run one request object; the result is what the matching method returns.

        Raises:
            EtcdError: whatever the matching method raises.
        """
        match request:
            case RangeRequest():
                check_key(request.key)
                if request.revision > self._rev:
                    raise FutureRevisionError
                if 0 < request.revision < self._compact_rev:
                    raise CompactedError
                return self._range(self._rev, request)
            case PutRequest():
                return self.put(
                    request.key,
                    request.value,
                    lease=request.lease,
                    prev_kv=request.prev_kv,
                    ignore_value=request.ignore_value,
                    ignore_lease=request.ignore_lease,
                )
            case DeleteRangeRequest():
                return self.delete_range(request.key, request.range_end, prev_kv=request.prev_kv)
            case TxnRequest():
                return self.txn(request.compare, request.success, request.failure)
            case CompactRequest():
                return self.compact(request.revision)

    # -- hashing and snapshots --------------------------------------------------------------

    def hash_kv(self, revision: int = 0) -> HashKVResponse:
        """A CRC-32 over the retained history up to ``revision`` (0: now), like etcd's HashKV.

        Covered: the versions kept from at or below the compacted revision (in key order), then
        the change log from the compacted revision up to ``revision`` (in revision order,
        tombstones included; the changes at the compacted revision itself are kept for
        watchers, so they are covered too); each as its revisions, version, lease, key and
        value. zlib's CRC-32 (IEEE polynomial) is used rather than etcd's Castagnoli CRC, so
        the value is only comparable between kvapp members, which is its purpose.

        The revision rules are etcd 3.4's (``HashByRev`` in ``mvcc/kvstore.go``), so that
        ``etcdctl endpoint hashkv --rev`` fails and succeeds where it does against etcd: a
        revision at (not only below) the compacted one is refused, and a negative revision is
        not refused but covers no revision at all, so its hash is that of an empty history
        (etcd's is the CRC of its bucket name alone) and ``hash_revision`` is the revision as
        given. etcd 3.5 relaxed the first rule to "below the compacted revision".

        Raises:
            CompactedError: ``revision`` is positive and at or below the compacted revision.
            FutureRevisionError: ``revision`` is above the current revision.
        """
        if 0 < revision <= self._compact_rev:
            raise CompactedError
        if revision > self._rev:
            raise FutureRevisionError
        if revision < 0:
            return HashKVResponse(extend_history_hash(0, ()), self._compact_rev, revision)
        rev = revision or self._rev
        crc = history_hash(self.snapshot_base_records(), self._log, self._compact_rev, rev)
        return HashKVResponse(crc, self._compact_rev, rev)

    def snapshot_base(self) -> Iterator[KeyValue]:
        """The versions kept from at or below the compacted revision, in key order.

        With :meth:`snapshot_log`, the revision and the compacted revision, this is the whole
        store; see :meth:`from_snapshot`.
        """
        return map(unpack, self.snapshot_base_records())

    def snapshot_base_records(self) -> Iterator[bytes]:
        """:meth:`snapshot_base` as records (:mod:`kvapp.mvcc.record`); immutable, like all."""
        return self._index.at_or_below(self._compact_rev)

    def snapshot_log(self, start: int = 0) -> Iterator[KeyValue]:
        """The change log: every change from the compacted revision on, in revision order.

        From its ``start``-th record on. The log is read as the iterator goes: do not hold it
        while the store changes.
        """
        return map(unpack, itertools.islice(self._log, start, None))

    def snapshot_log_records(self, start: int = 0) -> list[bytes]:
        """The change log's records from the ``start``-th on, as a list of their own.

        The store's changes leave the copy alone (and records are immutable), so it may be held
        and read in another thread.
        """
        return self._log[start:]

    @classmethod
    def from_snapshot(
        cls,
        revision: int,
        compact_revision: int,
        base: Iterable[KeyValue],
        log: Iterable[KeyValue],
        *,
        max_txn_ops: int | None = DEFAULT_MAX_TXN_OPS,
    ) -> Store:
        """Rebuild a detached store from what :meth:`snapshot_base` and friends produced.

        Raises:
            ValueError: the parts are inconsistent (see :meth:`from_records`).
        """
        return cls.from_records(
            revision,
            compact_revision,
            map(pack, base),
            [pack(kv) for kv in log],
            max_txn_ops=max_txn_ops,
        )

    @classmethod
    def from_records(
        cls,
        revision: int,
        compact_revision: int,
        base: Iterable[bytes],
        log: list[bytes],
        *,
        max_txn_ops: int | None = DEFAULT_MAX_TXN_OPS,
    ) -> Store:
        """Rebuild a detached store from :meth:`snapshot_base_records` and friends.

        ``log`` (:meth:`snapshot_log_records`) becomes the store's change log, taken over.

        Raises:
            ValueError: the parts are inconsistent (revisions out of order or out of bounds,
                a key twice in ``base``, a tombstone in ``base``, an empty key).
        """
        if revision < 1 or not NEVER_COMPACTED <= compact_revision <= revision:
            raise ValueError(f"bad revisions: current {revision}, compacted {compact_revision}")
        # A key's one version stands for itself (most keys have one): no list per key.
        histories: dict[bytes, bytes | list[bytes]] = {}
        for rec in base:
            key, mod, version = identity(rec)
            if not key or version <= 0 or mod > compact_revision:
                raise ValueError(f"bad base entry {unpack(rec)!r}")
            if key in histories:
                raise ValueError(f"key {key!r} twice in the base")
            histories[key] = rec
        last = compact_revision
        for rec in log:
            key, mod, version = identity(rec)
            if not key or version < 0 or not last <= mod <= revision:
                raise ValueError(f"change log entry out of order or bounds: {unpack(rec)!r}")
            last = mod
            if mod > compact_revision:
                hist = histories.get(key)
                if hist is None:
                    histories[key] = rec
                elif isinstance(hist, list):
                    hist.append(rec)
                else:
                    histories[key] = [hist, rec]
        store = cls(max_txn_ops=max_txn_ops)
        store._index = KeyIndex.from_histories(histories)
        store._log = log
        store._rev = revision
        store._compact_rev = compact_revision
        for key, hist in histories.items():
            rec = hist[-1] if isinstance(hist, list) else hist
            lease = lease_of(rec)
            if lease and version_of(rec):
                store._lease_keys.setdefault(lease, set()).add(key)
        return store

    def replace_state(self, other: Store) -> None:
        """Take over ``other``'s whole state (a snapshot restore), then tell the listeners.

        Listeners, ``lease_exists`` and ``max_txn_ops`` of this store are kept; ``other`` must
        not be used afterwards.
        """
        self._index = other._index
        self._log = other._log
        self._rev = other._rev
        self._compact_rev = other._compact_rev
        self._lease_keys = other._lease_keys
        for listener in tuple(self._listeners):
            listener.on_restore()

    # -- internals --------------------------------------------------------------------------

    def _check_lease(self, lease: int) -> None:
        # ignore_lease with a lease was refused by check_put, so a lease here is the put's own.
        exists = self.lease_exists
        if lease and exists is not None and not exists(lease):
            raise LeaseNotFoundError

    def _check_key_kept(self, key: bytes, *, ignore_value: bool, ignore_lease: bool) -> None:
        if (ignore_value or ignore_lease) and not self._index.exists(key):
            raise KeyNotFoundError

    def _put(
        self,
        w: _Write,
        key: bytes,
        value: bytes,
        lease: int,
        *,
        ignore_value: bool,
        ignore_lease: bool,
    ) -> KeyValue | None:
        prev = self._index.latest(key)
        rev = w.rev
        if prev is None:
            kv = KeyValue(key, rev, rev, 1, value, lease)
        else:
            if ignore_value:
                value = prev.value
            if ignore_lease:
                lease = prev.lease
            kv = KeyValue(key, prev.create_revision, rev, prev.version + 1, value, lease)
            if prev.lease and prev.lease != lease:
                self._detach(prev.lease, key)
        if lease:
            self._lease_keys.setdefault(lease, set()).add(key)
        self._log.append(self._index.append(kv))
        w.kvs.append(kv)
        w.prevs.append(prev)
        return prev

    def _delete(self, w: _Write, key: bytes, range_end: bytes) -> list[KeyValue]:
        live = list(self._index.range(key, range_end, w.rev))
        rev = w.rev
        for prev in live:
            tomb = KeyValue(prev.key, 0, rev, 0)
            if prev.lease:
                self._detach(prev.lease, prev.key)
            self._log.append(self._index.append(tomb))
            w.kvs.append(tomb)
            w.prevs.append(prev)
        return live

    def _event_prevs(self, w: _Write) -> None:
        """Give a key's later changes in one txn etcd's ``prev_kv`` (see :meth:`prev_version`).

        Not the txn's own earlier change of the key, which is what the write recorded.
        """
        seen: set[bytes] = set()
        for i, kv in enumerate(w.kvs):
            if kv.key in seen:
                created = kv.version and kv.create_revision == kv.mod_revision
                w.prevs[i] = None if created else self._index.get(kv.key, w.rev - 1)
            else:
                seen.add(kv.key)

    def _detach(self, lease: int, key: bytes) -> None:
        keys = self._lease_keys.get(lease)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._lease_keys[lease]

    def _commit(self, w: _Write) -> None:
        if not w.kvs:
            return
        self._rev = w.rev
        if self._listeners:
            events = _Events(w)
            for listener in tuple(self._listeners):
                listener.on_commit(w.rev, events)

    def _range(self, read_rev: int, r: RangeRequest) -> RangeResponse:
        rev = r.revision if r.revision > 0 else read_rev
        kvs_iter = self._index.range(r.key, r.range_end, rev)
        if r.count_only:
            return RangeResponse(read_rev, (), False, sum(1 for _ in kvs_iter))
        filtered = bool(
            r.min_mod_revision
            or r.max_mod_revision
            or r.min_create_revision
            or r.max_create_revision
        )
        fetch = 0 if (r.sort_order is not SortOrder.NONE or filtered) else max(r.limit, 0)
        kvs: list[KeyValue] = []
        count = 0
        if fetch:
            fetch += 1
            for kv in kvs_iter:
                count += 1
                if count <= fetch:
                    kvs.append(kv)
        else:
            kvs = list(kvs_iter)
            count = len(kvs)
        if filtered:
            kvs = [kv for kv in kvs if _passes_filters(r, kv)]
        order = r.sort_order
        if r.sort_target is not SortTarget.KEY and order is SortOrder.NONE:
            order = SortOrder.ASCEND
        elif r.sort_target is SortTarget.KEY and order is SortOrder.ASCEND:
            order = SortOrder.NONE
        if order is not SortOrder.NONE:
            kvs.sort(key=_SORT_KEYS[r.sort_target], reverse=order is SortOrder.DESCEND)
        more = False
        if r.limit > 0 and len(kvs) > r.limit:
            del kvs[r.limit :]
            more = True
        if r.keys_only:
            kvs = [attrs.evolve(kv, value=b"") for kv in kvs]
        return RangeResponse(read_rev, tuple(kvs), more, count)

    def _compare(self, c: Compare) -> bool:
        kvs = list(self._index.range(c.key, c.range_end, self._rev))
        if not kvs:
            if c.target is CompareTarget.VALUE:
                return False
            return _compare_kv(c, None)
        return all(_compare_kv(c, kv) for kv in kvs)

    def _decide(
        self,
        compare: tuple[Compare, ...],
        success: tuple[RequestOp, ...],
        failure: tuple[RequestOp, ...],
    ) -> _Decision:
        ok = all(self._compare(c) for c in compare)
        ops = success if ok else failure
        nested = tuple(
            self._decide(op.compare, op.success, op.failure)
            for op in ops
            if isinstance(op, TxnRequest)
        )
        return _Decision(ok, ops, nested)

    def _check_puts(self, d: _Decision) -> None:
        """Check the path's puts as ``checkRequestPut`` does: the key to keep, then the lease."""
        nested = iter(d.nested)
        for op in d.ops:
            match op:
                case PutRequest():
                    self._check_key_kept(
                        op.key, ignore_value=op.ignore_value, ignore_lease=op.ignore_lease
                    )
                    self._check_lease(op.lease)
                case TxnRequest():
                    self._check_puts(next(nested))
                case RangeRequest() | DeleteRangeRequest():
                    pass

    def _check_ranges(self, d: _Decision) -> None:
        """Check the path's ranges as ``checkRequestRange`` does, negative revisions included."""
        nested = iter(d.nested)
        for op in d.ops:
            match op:
                case RangeRequest():
                    if op.revision == 0:
                        continue
                    if op.revision > self._rev:
                        raise FutureRevisionError
                    if op.revision < self._compact_rev:
                        raise CompactedError
                case TxnRequest():
                    self._check_ranges(next(nested))
                case PutRequest() | DeleteRangeRequest():
                    pass

    def _check_kept_keys_survive(self, d: _Decision, deleted_from: bytes | None) -> bytes | None:
        r"""Refuse an ``ignore_*`` put whose key an earlier delete in the txn removed.

        Walks the path in execution order; ``deleted_from`` is the lowest start of the
        ``b"\0"``-ended deletes run so far (None: none), which is returned updated. Only such
        deletes need tracking: check_txn refuses every other delete that runs before a put of a
        key it covers, and no key is put twice on a path, so a key kept by an ``ignore_*`` put
        existed before the txn (``_check_puts``) and exists when the put runs unless one of
        these deletes removed it.
        """
        nested = iter(d.nested)
        for op in d.ops:
            match op:
                case DeleteRangeRequest():
                    if op.range_end == ALL_KEYS_END and (
                        deleted_from is None or op.key < deleted_from
                    ):
                        deleted_from = op.key
                case PutRequest():
                    if (
                        (op.ignore_value or op.ignore_lease)
                        and deleted_from is not None
                        and op.key >= deleted_from
                    ):
                        raise KeyNotFoundError
                case TxnRequest():
                    deleted_from = self._check_kept_keys_survive(next(nested), deleted_from)
                case RangeRequest():
                    pass
        return deleted_from

    def _execute(self, w: _Write, d: _Decision, *, nested: bool = False) -> TxnResponse:
        responses: list[ResponseOp] = []
        inner = iter(d.nested)
        for op in d.ops:
            match op:
                case RangeRequest():
                    responses.append(self._range(w.rev if w.kvs else self._rev, op))
                case PutRequest():
                    prev = self._put(
                        w,
                        op.key,
                        op.value,
                        op.lease,
                        ignore_value=op.ignore_value,
                        ignore_lease=op.ignore_lease,
                    )
                    responses.append(PutResponse(w.rev, prev if op.prev_kv else None))
                case DeleteRangeRequest():
                    prevs = self._delete(w, op.key, op.range_end)
                    responses.append(
                        DeleteRangeResponse(
                            w.rev if w.kvs else self._rev,
                            len(prevs),
                            tuple(prevs) if op.prev_kv else (),
                        )
                    )
                case TxnRequest():
                    responses.append(self._execute(w, next(inner), nested=True))
        # etcd 3.4 never fills in a nested txn's header: its revision stays 0.
        revision = 0 if nested else (w.rev if w.kvs else self._rev)
        return TxnResponse(revision, d.succeeded, tuple(responses))


def _passes_filters(r: RangeRequest, kv: KeyValue) -> bool:
    return not (
        (r.max_mod_revision and kv.mod_revision > r.max_mod_revision)
        or (r.min_mod_revision and kv.mod_revision < r.min_mod_revision)
        or (r.max_create_revision and kv.create_revision > r.max_create_revision)
        or (r.min_create_revision and kv.create_revision < r.min_create_revision)
    )


def _compare_kv(c: Compare, kv: KeyValue | None) -> bool:
    # Compare's validator guarantees bytes for VALUE and an int otherwise.
    if c.target is CompareTarget.VALUE:
        have = kv.value if kv is not None else b""
        want = cast("bytes", c.operand)
        diff = (have > want) - (have < want)
    else:
        number = 0 if kv is None else _INT_FIELDS[c.target](kv)
        operand = cast("int", c.operand)
        diff = (number > operand) - (number < operand)
    match c.result:
        case CompareResult.EQUAL:
            return diff == 0
        case CompareResult.NOT_EQUAL:
            return diff != 0
        case CompareResult.GREATER:
            return diff > 0
        case CompareResult.LESS:
            return diff < 0


_INT_FIELDS: dict[CompareTarget, Callable[[KeyValue], int]] = {
    CompareTarget.VERSION: lambda kv: kv.version,
    CompareTarget.CREATE: lambda kv: kv.create_revision,
    CompareTarget.MOD: lambda kv: kv.mod_revision,
    CompareTarget.LEASE: lambda kv: kv.lease,
}


def history_hash(
    base: Iterable[bytes], log: Sequence[bytes], compact_revision: int, revision: int
) -> int:
    """:meth:`Store.hash_kv`'s CRC over records taken from a store (e.g. a snapshot's image).

    ``base`` is :meth:`Store.snapshot_base_records`, ``log`` the change log
    (:meth:`Store.snapshot_log_records`); only the log's changes from ``compact_revision`` up
    to ``revision`` count.
    """
    start = bisect_left(log, compact_revision, key=mod_of)
    end = bisect_right(log, revision, lo=start, key=mod_of)
    return extend_history_hash(extend_history_hash(0, base), itertools.islice(log, start, end))
