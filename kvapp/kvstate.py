"""The whole replicated key-value state: MVCC store plus leases, with snapshots and a hash.

:class:`KvState` bundles what every member must hold identically (the
:class:`~kvapp.mvcc.store.Store` and the :class:`~kvapp.lease.Lessor`) with the member's local
:class:`~kvapp.watch.WatchHub`. The state machine applies each committed command with
:meth:`KvState.apply`; the Raft layer takes :meth:`KvState.snapshot` for log compaction and
installs one with :meth:`KvState.restore`; replicas compare :meth:`KvState.hash` at the same
applied index to detect divergence.

Snapshot format (version 2): a stream of CBOR data items, written and read one at a time so
neither side needs the whole snapshot in memory twice:

1. a header map: ``format`` (``"kvapp.kvstate"``), ``version`` (2), ``revision``,
   ``compact_revision`` (-1 if never compacted, as etcd counts), ``next_lease_id``;
2. ``["base", [record, ...]]`` chunks: the versions kept from at or below the compacted
   revision, in key order; a record is ``[key, create_revision, mod_revision, version, value,
   lease]``;
3. ``["log", [record, ...]]`` chunks: the change log from the compacted revision on, in
   revision order, tombstones included (``version`` 0);
4. ``["leases", [[id, ttl, remaining_ms], ...]]`` chunks, in ID order;
5. a trailer map: ``end`` (true), the record counts ``base``, ``log`` and ``leases``, and
   ``hash``, the :meth:`KvState.hash` of the state. :meth:`KvState.restore` rebuilds the state
   aside, checks counts and hash, and only then replaces the live state, so a truncated or
   damaged stream changes nothing.

Version 1 differed only in writing 0 for "never compacted" (the store then refused
``Compact(0)``, so 0 could mean nothing else); it is still read, as -1.

Keys and values are CBOR byte strings, so the format is independent of Python. Watch state is
local and not part of a snapshot; watchers survive a restore (see :mod:`kvapp.watch`).

Incremental encoding. Between compactions the change log only grows and its records never
change, so the bytes of the ``base`` chunks and of every *full* ``log`` chunk (:data:`_CHUNK`
records, the chunks starting at multiples of it) are the same in the next snapshot. A caller
that keeps a snapshot's bytes anyway (the member: Raft's storage holds them) hands them back
with :meth:`KvState.keep_encoded`; the next :meth:`KvState.snapshot_image` then captures only
the log records after that range, and :meth:`StateImage.write` copies the range and continues
the trailer's hash chain (:func:`~kvapp.mvcc.store.extend_history_hash`) from where it ended.
The stream is byte for byte what a full encoding writes. A compaction (another compacted
revision) or a restore makes the kept range useless; the next snapshot is encoded whole. Once
the caller has written the bytes to a file and let them go, :meth:`KvState.move_encoded` points
the kept range at the file (an :class:`EncodedSource`), so that the state is not held twice.
An output that takes ranges (:class:`~kvapp.storage.snapparts.SnapshotParts`) gets a reference
to the kept range and its CRC-32 instead of its bytes, so the file writer can copy it unread.
"""

from __future__ import annotations

import io
import itertools
import struct
import time
import weakref
import zlib
from collections.abc import Callable, Iterable
from typing import IO, Protocol, TypeAlias, cast

import attrs
import cbor2

from kvapp.errors import StateSnapshotError
from kvapp.lease import (
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRecord,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    LeaseSnapshot,
    Lessor,
)
from kvapp.mvcc import NEVER_COMPACTED
from kvapp.mvcc.record import fields_hashed, pack_fields
from kvapp.mvcc.store import Store, extend_history_hash
from kvapp.mvcc.types import (
    CompactRequest,
    CompactResponse,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    ResponseOp,
    TxnRequest,
)
from kvapp.storage.crc import crc32_combine, crc32_suffix
from kvapp.watch import DEFAULT_MAX_BUFFERED_EVENTS, SlowWatcherPolicy, WatchHub

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Command",
    "CommandResult",
    "EncodedPrefix",
    "EncodedSource",
    "KvState",
    "StateImage",
    "StreamSpan",
    "state_hash",
]

FORMAT = "kvapp.kvstate"
FORMAT_VERSION = 2
_CHUNK = 1024
_HEADER_KEYS = frozenset({"format", "version", "revision", "compact_revision", "next_lease_id"})
_TRAILER_KEYS = frozenset({"end", "base", "log", "leases", "hash"})
_STATE = struct.Struct(">IqqQ")
_LEASE = struct.Struct(">qqq")
_LINEAGES = itertools.count(1)

Command: TypeAlias = (
    RangeRequest
    | PutRequest
    | DeleteRangeRequest
    | TxnRequest
    | CompactRequest
    | LeaseGrantRequest
    | LeaseRevokeRequest
    | LeaseCheckpointRequest
)
"""A command the state machine applies (a range only when served through the log)."""

CommandResult: TypeAlias = (
    ResponseOp | CompactResponse | LeaseGrantResponse | LeaseRevokeResponse | None
)
"""What :meth:`KvState.apply` returns (None for a lease checkpoint)."""


def state_hash(store: Store, leases: LeaseSnapshot) -> int:
    """CRC-32 of a whole state: the store's HashKV, its revisions, and every lease.

    Equal on members that applied the same commands, whatever their snapshot and compaction
    history; what the lessor's local clocks say is deliberately left out.
    """
    return _state_crc(store.hash_kv().hash, store.revision, store.compact_revision, leases)


def _state_crc(kv_hash: int, revision: int, compact_revision: int, leases: LeaseSnapshot) -> int:
    crc = zlib.crc32(_STATE.pack(kv_hash, revision, compact_revision, leases.next_id))
    for lease in leases.leases:
        crc = zlib.crc32(_LEASE.pack(lease.id, lease.ttl, lease.remaining_ms), crc)
    return crc


class KvState:
    """Store + lessor + watch hub: everything the state machine applies commands to.

    Not thread-safe: use it from the apply loop.

    Args:
        clock: monotonic seconds, for the lessor.
        grace: the lessor's grace on promotion; one election timeout, in seconds.
        min_ttl: the smallest lease TTL; members must agree on it.
        checkpoint_interval: seconds between the leader's lease checkpoints.
        max_buffered_events: the watch hub's per-watcher bound.
        slow_watcher: the watch hub's policy for slow watchers.

    The store is built with ``max_txn_ops=None``: the txn size limit is the proposer's check
    (see :mod:`kvapp.mvcc.validate`), so members configured differently cannot diverge.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        grace: float,
        min_ttl: int = 2,
        checkpoint_interval: float = 5.0,
        max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS,
        slow_watcher: SlowWatcherPolicy = SlowWatcherPolicy.CANCEL,
    ) -> None:
        self.store = Store(max_txn_ops=None)
        self.lessor = Lessor(
            self.store,
            clock,
            grace=grace,
            min_ttl=min_ttl,
            checkpoint_interval=checkpoint_interval,
        )
        self.watches = WatchHub(
            self.store, max_buffered_events=max_buffered_events, slow_watcher=slow_watcher
        )
        # A new one after each restore: a kept prefix is reused only within its lineage.
        self._lineage = next(_LINEAGES)
        self._prefix: EncodedPrefix | None = None

    def apply(self, command: Command) -> CommandResult:
        """Apply one committed command and return its result.

        Raises:
            EtcdError: the command fails as etcd would fail it (identically on every member);
                the state is unchanged. The state machine reports it to the waiting client.
        """
        match command:
            case LeaseGrantRequest() | LeaseRevokeRequest() | LeaseCheckpointRequest():
                return self.lessor.apply(command)
            case RangeRequest() | PutRequest() | DeleteRangeRequest() | TxnRequest():
                return self.store.apply(command)
            case CompactRequest():
                return self.store.apply(command)

    def hash(self) -> int:
        """The :func:`state_hash` of the current state."""
        return state_hash(self.store, self.lessor.snapshot())

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot(self, out: IO[bytes]) -> None:
        """Write the whole replicated state to ``out`` as a CBOR stream (see the module doc)."""
        self.snapshot_image().write(out)

    def snapshot_image(self) -> StateImage:
        """A point-in-time image of the replicated state, to write out later in any thread.

        Cheap: it copies the change log's list of references (the key-values themselves are
        immutable) and, only if the store was compacted, the compaction base; the encoding and
        hashing, which cost time proportional to the whole state, happen in
        :meth:`StateImage.write`, which never reads the live state. If a snapshot's bytes were
        kept (:meth:`keep_encoded`) and still hold a prefix of this state, the image refers to
        them and captures only the log records after them.
        """
        store = self.store
        compact = store.compact_revision
        prefix = self._prefix
        tail = None
        if prefix is not None and _prefix_valid(prefix, self._lineage, store):
            tail = _log_after(prefix, store)
        if prefix is None or tail is None:
            return StateImage(
                revision=store.revision,
                compact_revision=compact,
                base=list(store.snapshot_base_records()) if compact > 0 else [],
                log=store.snapshot_log_records(),
                leases=self.lessor.snapshot(),
                lineage=self._lineage,
            )
        return StateImage(
            revision=store.revision,
            compact_revision=compact,
            base=[],
            log=tail,
            leases=self.lessor.snapshot(),
            lineage=self._lineage,
            prefix=prefix,
        )

    def keep_encoded(
        self, image: StateImage, data: bytes | EncodedSource, span: StreamSpan
    ) -> None:
        """Let later snapshots reuse the part of ``data`` that ``image``'s stream wrote.

        ``data`` holds the stream :meth:`StateImage.write` wrote for ``image`` (of this state),
        with ``span`` (what that call returned, shifted by where the stream starts in ``data``)
        locating its reusable range. The caller must keep ``data`` alive anyway: this keeps a
        reference to it, not a copy, until the next call or restore.

        Safe from any thread: an image taken before a restore is ignored, and
        :meth:`snapshot_image`, on the apply loop, checks again that the range still holds a
        prefix of the state before it uses it.
        """
        if image.lineage != self._lineage:
            return
        self._prefix = EncodedPrefix(
            data=data,
            span=span,
            compact_revision=image.compact_revision,
            lineage=image.lineage,
            store=weakref.ref(self.store),
        )

    def move_encoded(self, data: object, source: EncodedSource) -> None:
        """The bytes ``data`` given to :meth:`keep_encoded` are now also in ``source``: use it.

        ``source`` must hold exactly ``data`` (e.g. the file it was written to), so the kept
        range stays valid and ``data`` can be freed. Ignored unless ``data`` is (the same object
        as) what is kept. Safe from any thread, like :meth:`keep_encoded`.
        """
        prefix = self._prefix
        if prefix is not None and prefix.data is data:
            self._prefix = attrs.evolve(prefix, data=source)

    def snapshot_bytes(self) -> bytes:
        """The snapshot as one bytes object."""
        buf = io.BytesIO()
        self.snapshot(buf)
        return buf.getvalue()

    def restore(self, src: IO[bytes]) -> None:
        """Replace the whole replicated state with a snapshot read from ``src``.

        The new state is built aside and verified (record counts and hash) before it replaces
        the current one; watchers then catch up from the restored change log, and the lessor
        counts checkpointed TTLs from now.

        Raises:
            StateSnapshotError: the stream is truncated, damaged, or of another format or
                version; the state is unchanged.
        """
        try:
            fresh, leases = _read(cbor2.CBORDecoder(src), self.store.max_txn_ops)
        except (cbor2.CBORDecodeError, ValueError, TypeError) as e:
            if isinstance(e, StateSnapshotError):
                raise
            raise StateSnapshotError(f"bad state snapshot: {e}") from e
        if src.read(1):
            raise StateSnapshotError("bad state snapshot: data after the trailer")
        self._lineage = next(_LINEAGES)
        self._prefix = None
        self.store.replace_state(fresh)
        self.lessor.restore(leases)

    def restore_bytes(self, data: bytes) -> None:
        """Restore from a snapshot held in memory.

        Raises:
            StateSnapshotError: as :meth:`restore`.
        """
        self.restore(io.BytesIO(data))


class EncodedSource(Protocol):
    """Where kept snapshot bytes may live instead of memory (a snapshot file's data)."""

    def __len__(self) -> int:
        """The number of bytes."""
        ...

    def copy_range(self, start: int, end: int, write: Callable[[bytes], object]) -> None:
        """Pass bytes ``start`` to ``end`` to ``write``, in one or more pieces, in order."""
        ...


@attrs.frozen
class EncodedPrefix:
    """A range of a snapshot's bytes that later snapshots of the same state may copy.

    ``span`` locates in ``data`` the ``base`` chunks and the full change-log chunks, as
    :meth:`StateImage.write` encoded them (its last log record is checked by identity in
    :meth:`KvState.snapshot_image`). Valid while the store it came from (``store``,
    ``lineage``) keeps ``compact_revision``.
    """

    data: bytes | EncodedSource = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    span: StreamSpan
    compact_revision: int
    lineage: int
    store: weakref.ref[Store] = attrs.field(eq=False, repr=False)


def _prefix_valid(prefix: EncodedPrefix, lineage: int, store: Store) -> bool:
    """Whether ``prefix`` still holds a prefix of ``store``'s state (the log checked aside)."""
    return (
        prefix.lineage == lineage
        and prefix.compact_revision == store.compact_revision
        and prefix.store() is store
    )


def _log_after(prefix: EncodedPrefix, store: Store) -> list[bytes] | None:
    """The change log after ``prefix``'s records, or None if its last one is not where it was.

    A second line of defence: with the checks of :func:`_prefix_valid` passed, the log has only
    grown since the prefix was encoded.
    """
    span = prefix.span
    if span.last is None:
        return store.snapshot_log_records()
    tail = store.snapshot_log_records(span.log_count - 1)
    if not tail or tail[0] is not span.last:
        return None
    del tail[0]
    return tail


@attrs.frozen
class StreamSpan:
    """What :meth:`StateImage.write` wrote that a later snapshot may copy.

    Bytes ``start`` to ``end`` of the stream (counted from its first byte) hold the ``base``
    chunks and full ``log`` chunks: ``base_count`` and ``log_count`` records, the last log
    record being ``last``; ``crc`` is the history hash chain over them, and ``data_crc`` the
    zlib CRC-32 of those bytes (so a copy of them need not read them to checksum its file).
    """

    start: int
    end: int
    base_count: int
    log_count: int
    crc: int
    last: bytes | None
    data_crc: int = 0

    def shifted(self, offset: int) -> StreamSpan:
        """The same span, for a stream that starts ``offset`` bytes into a larger buffer."""
        return attrs.evolve(self, start=self.start + offset, end=self.end + offset)


@attrs.frozen
class StateImage:
    """What :meth:`KvState.snapshot_image` captured; :meth:`write` encodes it.

    With a ``prefix``, ``base`` is empty and ``log`` holds only the change-log records after
    the prefix's; the state is the prefix's records followed by ``log``.
    """

    revision: int
    compact_revision: int
    base: list[bytes]
    log: list[bytes]
    leases: LeaseSnapshot
    lineage: int = 0
    prefix: EncodedPrefix | None = None

    def hash(self) -> int:
        """:func:`state_hash` of the captured state."""
        prefix = self.prefix
        crc = extend_history_hash(0, self.base) if prefix is None else prefix.span.crc
        crc = extend_history_hash(crc, self.log)
        return _state_crc(crc, self.revision, self.compact_revision, self.leases)

    def write(self, out: IO[bytes]) -> StreamSpan:
        """Write the snapshot stream (see the module doc) of the captured state to ``out``.

        Returns:
            Where the stream's reusable range is (see :meth:`KvState.keep_encoded`).
        """
        leases = self.leases
        sink = _Sink(out)
        sink.put(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "revision": self.revision,
                "compact_revision": self.compact_revision,
                "next_lease_id": leases.next_id,
            }
        )
        start, crc_at_start = sink.size, sink.crc
        prefix = self.prefix
        if prefix is None:
            base = len(self.base)
            crc = 0
            for i in range(0, base, _CHUNK):
                crc = _put_records(sink, "base", self.base[i : i + _CHUNK], crc)
            logged, last = 0, None
        else:
            span = prefix.span
            base, crc, logged, last = span.base_count, span.crc, span.log_count, span.last
            sink.copy(prefix.data, span.start, span.end, span.data_crc)
        log = self.log
        full = len(log) - len(log) % _CHUNK
        for i in range(0, full, _CHUNK):
            crc = _put_records(sink, "log", log[i : i + _CHUNK], crc)
        span = StreamSpan(
            start,
            sink.size,
            base,
            logged + full,
            crc,
            log[full - 1] if full else last,
            crc32_suffix(sink.crc, crc_at_start, sink.size - start),
        )
        if full < len(log):
            crc = _put_records(sink, "log", log[full:], crc)
        counts = {
            "base": base,
            "log": logged + len(log),
            "leases": _write_chunks(
                sink, "leases", ([r.id, r.ttl, r.remaining_ms] for r in leases.leases)
            ),
        }
        state = _state_crc(crc, self.revision, self.compact_revision, leases)
        sink.put({"end": True, **counts, "hash": state})
        return span


class _Sink:
    """Writes CBOR items to a file-like object, counting the bytes and their running CRC-32.

    An output that keeps a running CRC-32 of what it was given (``crc``, as
    :class:`~kvapp.storage.snapparts.SnapshotParts` does) is not checksummed a second time.
    """

    __slots__ = ("_crc", "_out", "_outs_crc", "size")

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.size = 0
        self._crc = 0
        self._outs_crc = isinstance(getattr(out, "crc", None), int)

    @property
    def crc(self) -> int:
        """A running CRC-32 of the stream (of the output's own, if it keeps one)."""
        return cast("int", getattr(self._out, "crc")) if self._outs_crc else self._crc  # noqa: B009

    def put(self, item: object) -> None:
        self.write(cbor2.dumps(item))

    def write(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self.size += len(data)
        if not self._outs_crc:
            self._crc = zlib.crc32(data, self._crc)

    def copy(self, source: bytes | EncodedSource, start: int, end: int, crc: int) -> None:
        """Append bytes ``start`` to ``end`` of earlier snapshot bytes, whose CRC-32 is ``crc``.

        An output that takes ranges (a :class:`~kvapp.storage.snapparts.SnapshotParts`) gets a
        reference to them, read by nobody: the file writer has the kernel copy them.
        """
        add_range = getattr(self._out, "add_range", None)
        if add_range is not None:
            add_range(source, start, end, crc)
        elif isinstance(source, bytes):
            self._out.write(memoryview(source)[start:end])
        else:
            source.copy_range(start, end, self._out.write)
        self.size += end - start
        if not self._outs_crc:
            self._crc = crc32_combine(self._crc, crc, end - start)


def _offer_gil() -> None:
    """Let the event loop's thread have the GIL now if it is waiting for it.

    :meth:`StateImage.write` runs in a snapshot thread beside the member's loop, and encoding
    a large state takes seconds of GIL time. Left alone, a waiting thread gets the GIL only
    after the 5 ms switch interval, so the loop ran at about half speed while it lasted: at
    1M keys, puts through a 3-member cluster had a p99 of 120-129 ms during a snapshot, and
    67-72 ms with this after every chunk (three back-to-back pairs of benchmarks/kv.py
    --scale). ``sleep(0)`` releases the GIL and takes it back, costing the writer
    microseconds per chunk.
    """
    time.sleep(0)


def _put_records(sink: _Sink, tag: str, records: list[bytes], crc: int) -> int:
    """Write one chunk of ``records``; the history hash ``crc`` continued over them."""
    items, crc = fields_hashed(records, crc)
    sink.put([tag, items])
    if len(records) == _CHUNK:
        _offer_gil()
    return crc


def _write_chunks(sink: _Sink, tag: str, records: Iterable[list[object]]) -> int:
    count = 0
    chunk: list[list[object]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == _CHUNK:
            sink.put([tag, chunk])
            count += len(chunk)
            chunk = []
            _offer_gil()
    if chunk:
        sink.put([tag, chunk])
        count += len(chunk)
    return count


def _fail(why: str) -> StateSnapshotError:
    return StateSnapshotError(f"bad state snapshot: {why}")


def _int(value: object, what: str) -> int:
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise _fail(f"{what} is not a 64-bit integer")
    return value


def _bytes(value: object, what: str) -> bytes:
    if type(value) is not bytes:
        raise _fail(f"{what} is not a byte string")
    return value


def _records(items: list[object]) -> list[bytes]:
    """A chunk's key-value records as the store's packed records (:mod:`kvapp.mvcc.record`)."""
    out = []
    for item in items:
        if type(item) is not list or len(item) != 6:
            raise _fail("malformed key-value record")
        key, create, mod, version, value, lease = item
        try:
            out.append(
                pack_fields(
                    _bytes(key, "key"),
                    _bytes(value, "value"),
                    create_revision=_int(create, "create_revision"),
                    mod_revision=_int(mod, "mod_revision"),
                    version=_int(version, "version"),
                    lease=_int(lease, "lease"),
                )
            )
        except struct.error as e:  # a key of 4 GiB or more
            raise _fail(f"key-value record does not fit: {e}") from None
    return out


def _lease(record: object) -> LeaseRecord:
    if type(record) is not list or len(record) != 3:
        raise _fail("malformed lease record")
    lease_id, ttl, remaining = record
    return LeaseRecord(_int(lease_id, "lease id"), _int(ttl, "ttl"), _int(remaining, "remaining"))


def _read(dec: cbor2.CBORDecoder, max_txn_ops: int | None) -> tuple[Store, LeaseSnapshot]:
    header = dec.decode()
    if type(header) is not dict or set(header) != _HEADER_KEYS:
        raise _fail("missing or malformed header")
    if header["format"] != FORMAT:
        raise _fail(f"format {header['format']!r} is not {FORMAT!r}")
    if header["version"] not in (1, FORMAT_VERSION):
        raise _fail(f"unsupported version {header['version']!r}")
    revision = _int(header["revision"], "revision")
    written = _int(header["compact_revision"], "compact_revision")
    compact = NEVER_COMPACTED if header["version"] == 1 and written == 0 else written
    next_id = _int(header["next_lease_id"], "next_lease_id")

    sections: dict[str, list[object]] = {"base": [], "log": [], "leases": []}
    order = list(sections)
    at = 0
    item = dec.decode()
    while type(item) is list:
        if len(item) != 2 or item[0] not in sections or type(item[1]) is not list:
            raise _fail("malformed chunk")
        position = order.index(item[0])
        if position < at:
            raise _fail(f"{item[0]!r} chunk out of order")
        at = position
        if position < 2:
            # Records are packed chunk by chunk: the decoded lists go while the next
            # chunk's reuse their memory, instead of all of them being freed at the end amid
            # the state's own objects (which left a restarted member's heap mostly holes).
            sections[item[0]].extend(_records(item[1]))
        else:
            sections[item[0]].extend(item[1])
        item = dec.decode()
    trailer = item
    if type(trailer) is not dict or set(trailer) != _TRAILER_KEYS or trailer["end"] is not True:
        raise _fail("missing or malformed trailer")
    for name, records in sections.items():
        if trailer[name] != len(records):
            raise _fail(f"{name}: {len(records)} records, trailer says {trailer[name]!r}")

    store = Store.from_records(
        revision,
        compact,
        cast("list[bytes]", sections["base"]),
        cast("list[bytes]", sections["log"]),
        max_txn_ops=max_txn_ops,
    )
    leases = LeaseSnapshot(next_id, tuple(_lease(r) for r in sections["leases"]))
    if [r.id for r in leases.leases] != sorted({r.id for r in leases.leases}):
        raise _fail("lease records out of order or repeated")
    # The hash covers the compacted revision as written (a version 1 snapshot's 0).
    if _state_crc(store.hash_kv().hash, revision, written, leases) != trailer["hash"]:
        raise _fail("hash mismatch")
    return store, leases
