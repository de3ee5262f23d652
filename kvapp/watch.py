"""Watchers over the MVCC store: history catch-up, live events, progress and cancellation.

This is the synchronous core of etcd's Watch service; streaming responses to clients is the
API layer's job. A :class:`WatchHub` follows a :class:`~kvapp.mvcc.store.Store` as a listener.
Each client watch stream gets a :class:`WatchStream`, which holds that client's watchers and a
queue of :class:`WatchResponse` values for the API layer to take and send.

How events reach a watcher exactly once and in revision order:

- a watcher is *unsynced* while it still has history to read (it was created with a start
  revision at or below the current one, or it was demoted): it reads the store's change log from
  its next revision on, lazily, when its stream is drained with :meth:`WatchStream.take`, and
  never more than its buffer bound at a time. Live commits skip it; the log has them;
- once it has read up to the current revision it becomes *synced* and gets each new revision's
  events as the store commits them;
- each response holds the events of exactly one revision, never a fragment of one: a revision is
  delivered whole even when it alone exceeds the buffer bound.

Memory is bounded and applying never waits for a client, at two levels:

- per stream (so per client connection, whatever the number of its watchers): a stream's queue
  holds at most ``max_stream_bytes`` of responses, counted by :func:`response_cost`. A synced
  watcher whose next response does not fit is set aside, as etcd's "victim" watchers are: it
  keeps what is queued for it, gets no more live events, and later catches up from the change
  log at the client's pace, so it still sees every event once, in order; if the history it
  needs was compacted meanwhile, it gets the cancel with ``compact_revision`` that a watcher
  created at a compacted revision gets. Until the watchers set aside have caught up, the
  stream's other watchers are set aside too as their next events come, and all of them take
  turns at catching up, so a client slower than the writes spreads its lag over its watchers
  instead of starving some. A watcher set aside this way is never cancelled for being slow.
  The events themselves stay in the store's change log, which holds them anyway;
- per watcher: a synced watcher whose undelivered events would exceed ``max_buffered_events``
  is either cancelled with a reason (:attr:`SlowWatcherPolicy.CANCEL`, the default) or, with
  :attr:`SlowWatcherPolicy.RESYNC`, drops its buffered events and catches up from the change
  log like a watcher set aside.

Either way the apply loop only appends to a bounded queue. Control responses (``created``,
``canceled``, a requested progress notification) are always queued, at most one of each per
watcher or client request; live events, history and periodic progress notifications wait for
room. One revision is queued whole even when it alone exceeds the bound, once the queue is
empty.

A watch from a revision below the compacted revision gets its ``created`` response, then a
cancel carrying ``compact_revision``, as in etcd (the client then sees ``ErrCompacted``). After
a snapshot restore, synced watchers are demoted and catch up from the restored change log, so
their clients see every revision exactly once across the restore.
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import attrs

from kvapp.mvcc.keyrange import ALL_KEYS_END, contains
from kvapp.mvcc.store import Store
from kvapp.mvcc.types import Event, EventType, KeyValue

__all__ = [
    "DEFAULT_MAX_BUFFERED_EVENTS",
    "DEFAULT_MAX_STREAM_BYTES",
    "PROGRESS_WATCH_ID",
    "SlowWatcherPolicy",
    "WatchFilter",
    "WatchHub",
    "WatchResponse",
    "WatchStream",
    "response_cost",
]

DEFAULT_MAX_BUFFERED_EVENTS = 1024
"""Default bound on one watcher's undelivered events (etcd buffers 128 responses per watcher)."""

DEFAULT_MAX_STREAM_BYTES = 8 << 20
"""Default bound on one stream's queued responses, in :func:`response_cost` bytes.

etcd bounds a stream at 128 responses (``chanBufLen``); kvapp sends one revision per response,
so it bounds the bytes instead: about 30,000 small events, or 5 of the largest values.
"""

RESPONSE_COST = 160
"""Bytes counted per queued response: the response, its queue entry, its events tuple."""

EVENT_COST = 120
"""Bytes counted per queued event on top of its keys and values."""

PROGRESS_WATCH_ID = -1
"""The ``watch_id`` of a stream-wide progress notification (etcd's ``InvalidWatchID``)."""

ERR_DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"
ERR_EMPTY_WATCHER_RANGE = "mvcc: watcher range is empty"


class WatchFilter(enum.IntEnum):
    """Event types a watcher does not want (``WatchCreateRequest.FilterType``)."""

    NOPUT = 0
    NODELETE = 1


class SlowWatcherPolicy(enum.Enum):
    """What happens to a synced watcher whose client does not keep up."""

    CANCEL = "cancel"
    """Cancel it with a ``cancel_reason``; the client may re-watch from its last revision + 1."""
    RESYNC = "resync"
    """Drop its buffered events and let it catch up from the change log at the client's pace."""


@attrs.frozen
class WatchResponse:
    """One message on a watch stream (etcd's ``WatchResponse`` minus fragmenting).

    Attributes:
        watch_id: the watcher it concerns; :data:`PROGRESS_WATCH_ID` for a stream-wide progress
            notification; -1 with ``canceled`` when a create request failed.
        revision: header revision: the store's revision when the response was made. For a
            progress notification it promises that every event up to it was sent.
        events: the events of one revision, in order; empty for control responses.
        created: answers a create request.
        canceled: the watcher is gone; no more responses for ``watch_id`` follow.
        compact_revision: set with ``canceled`` when the watcher's start revision (or the point
            it had caught up to) was compacted away.
        cancel_reason: why the watcher was cancelled, if not by the client or compaction.
    """

    watch_id: int
    revision: int
    events: tuple[Event, ...] = ()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""

    @property
    def is_progress_notify(self) -> bool:
        """Whether this is a progress notification (no events, not a control response)."""
        return not (self.events or self.created or self.canceled)


def response_cost(resp: WatchResponse) -> int:
    """The bytes a queued response is counted as: an estimate of the memory it holds.

    Keys and values are counted in full even though the store shares them, because each
    response is encoded into its own copy on the way to the client.
    """
    cost = RESPONSE_COST
    for e in resp.events:
        cost += EVENT_COST + len(e.kv.key) + len(e.kv.value)
        if e.prev_kv is not None:
            cost += len(e.prev_kv.key) + len(e.prev_kv.value)
    return cost


class _Watcher:
    """One watcher's registration and delivery state."""

    __slots__ = (
        "aside",
        "buffered",
        "id",
        "key",
        "next_rev",
        "no_delete",
        "no_put",
        "notified",
        "prev_kv",
        "progress_notify",
        "range_end",
        "seq",
        "stream",
        "synced",
    )

    def __init__(
        self,
        stream: WatchStream,
        watch_id: int,
        key: bytes,
        range_end: bytes,
        filters: Iterable[WatchFilter],
        *,
        prev_kv: bool,
        progress_notify: bool,
        next_rev: int,
        seq: int,
    ) -> None:
        wanted = set(filters)
        self.stream = stream
        self.seq = seq
        self.id = watch_id
        self.key = key
        self.range_end = range_end
        self.no_put = WatchFilter.NOPUT in wanted
        self.no_delete = WatchFilter.NODELETE in wanted
        self.prev_kv = prev_kv
        self.progress_notify = progress_notify
        self.next_rev = next_rev
        self.synced = False
        self.buffered = 0
        self.notified = False
        self.aside = False

    def wants(self, kv: KeyValue) -> bool:
        if kv.version:
            return not self.no_put
        return not self.no_delete


class WatchHub:
    """All watch streams over one store; follows the store's commits and restores.

    Not thread-safe: call it from the loop that applies to the store.

    Args:
        store: the store to watch; the hub registers itself as a listener.
        max_buffered_events: bound on one watcher's undelivered events.
        slow_watcher: what to do with a synced watcher that would exceed the bound.
        max_stream_bytes: bound on one stream's queued responses, in :func:`response_cost`
            bytes; a watcher that would exceed it is set aside to catch up later.
        catch_up_revisions: the most revisions one watcher scans in the change log per
            :meth:`WatchStream.take`, so a take never stalls the loop for long.

    Attributes:
        set_aside: how many times a synced watcher was set aside because its stream was full
            (or its stream's watchers were catching up after that).
    """

    def __init__(
        self,
        store: Store,
        *,
        max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS,
        slow_watcher: SlowWatcherPolicy = SlowWatcherPolicy.CANCEL,
        catch_up_revisions: int = 1000,
        max_stream_bytes: int = DEFAULT_MAX_STREAM_BYTES,
    ) -> None:
        if max_buffered_events < 1 or catch_up_revisions < 1 or max_stream_bytes < 1:
            raise ValueError(
                "max_buffered_events, catch_up_revisions and max_stream_bytes must be positive"
            )
        self.store = store
        self.max_buffered_events = max_buffered_events
        self.max_stream_bytes = max_stream_bytes
        self.set_aside = 0
        self.slow_watcher = slow_watcher
        self.catch_up_revisions = catch_up_revisions
        self._streams: dict[WatchStream, None] = {}
        self._key_watchers: dict[bytes, dict[_Watcher, None]] = {}
        self._range_watchers: dict[_Watcher, None] = {}
        self._seen_rev = store.revision
        store.add_listener(self)

    def open_stream(self, on_pending: Callable[[], None] | None = None) -> WatchStream:
        """A new stream for one client.

        Args:
            on_pending: called (at most once until the next :meth:`WatchStream.take`) when the
                stream gets something to take; the API layer uses it to wake its sender. It
                runs inside store commits, so it must only schedule work.
        """
        stream = WatchStream(self, on_pending)
        self._streams[stream] = None
        return stream

    def progress_tick(self) -> None:
        """Send progress notifications to idle synced watchers that asked for them.

        Call it every progress interval (etcd: 10 minutes). A watcher with ``progress_notify``
        gets an empty response at the current revision unless it got events since the last tick,
        or its stream is full (etcd likewise skips a watcher whose channel is full).
        """
        rev = self.store.revision
        for stream in self._streams:
            for w in stream._watchers.values():
                if w.progress_notify and w.synced and not w.notified:
                    resp = WatchResponse(w.id, rev)
                    cost = response_cost(resp)
                    if stream._fits(cost):
                        stream._enqueue(w, resp, cost)
                w.notified = False

    @property
    def watcher_count(self) -> int:
        """Number of watchers on all streams."""
        return sum(len(s._watchers) for s in self._streams)

    # -- StoreListener ------------------------------------------------------------------------

    def on_commit(self, revision: int, events: Sequence[Event]) -> None:
        """Deliver one committed revision to the synced watchers it concerns."""
        self._seen_rev = revision
        ranges = self._range_watchers
        if not ranges and not self._key_watchers:
            return  # (the store builds the events only if they are looked at)
        matched: dict[_Watcher, list[int]] = {}
        for i, ev in enumerate(events):
            key = ev.kv.key
            for w in self._key_watchers.get(key, ()):
                matched.setdefault(w, []).append(i)
            for w in ranges:
                if contains(w.key, w.range_end, key):
                    matched.setdefault(w, []).append(i)
        if not matched:
            return
        # Each event's response_cost share, without and with its prev_kv, once per revision.
        bare = [EVENT_COST + len(e.kv.key) + len(e.kv.value) for e in events]
        full = [
            c if e.prev_kv is None else c + len(e.prev_kv.key) + len(e.prev_kv.value)
            for c, e in zip(bare, events, strict=True)
        ]
        for w, indexes in matched.items():
            if w.next_rev > revision:
                continue
            wanted: list[Event] = []
            cost = RESPONSE_COST
            for i in indexes:
                e = events[i]
                if not w.wants(e.kv):
                    continue
                if w.prev_kv or e.prev_kv is None:
                    wanted.append(e)
                    cost += full[i]
                else:
                    wanted.append(Event(e.type, e.kv))
                    cost += bare[i]
            if wanted:
                w.stream._deliver(w, WatchResponse(w.id, revision, tuple(wanted)), cost)

    def on_restore(self) -> None:
        """Demote every synced watcher: it re-reads from the restored change log."""
        resume = self._seen_rev + 1
        for stream in self._streams:
            for w in stream._watchers.values():
                if w.synced:
                    self._unregister(w)
                    w.next_rev = max(w.next_rev, resume)
                    stream._signal()
        self._seen_rev = self.store.revision

    # -- registry -----------------------------------------------------------------------------

    def _register(self, w: _Watcher) -> None:
        w.synced = True
        if w.range_end:
            self._range_watchers[w] = None
        else:
            self._key_watchers.setdefault(w.key, {})[w] = None

    def _unregister(self, w: _Watcher) -> None:
        if not w.synced:
            return
        w.synced = False
        if w.range_end:
            del self._range_watchers[w]
        else:
            watchers = self._key_watchers[w.key]
            del watchers[w]
            if not watchers:
                del self._key_watchers[w.key]

    def _close(self, stream: WatchStream) -> None:
        self._streams.pop(stream, None)


class WatchStream:
    """One client's watchers and its queue of responses. Made by :meth:`WatchHub.open_stream`.

    The API layer calls :meth:`watch`, :meth:`cancel` and :meth:`request_progress` for the
    client's requests, and drains responses with :meth:`take` whenever ``on_pending`` fired or
    :meth:`has_pending` is true.
    """

    def __init__(self, hub: WatchHub, on_pending: Callable[[], None] | None) -> None:
        self._hub = hub
        self._on_pending = on_pending
        self._signaled = False
        self._queue: deque[tuple[_Watcher | None, WatchResponse, int]] = deque()
        self._bytes = 0
        self._events = 0
        self._watchers: dict[int, _Watcher] = {}
        self._next_id = 0
        self._seq = 0  # creation order of watchers, for taking turns at catching up
        self._aside = 0  # watchers set aside for a full queue, not caught up yet
        self._turn = 0  # the seq of the first watcher that gets to catch up next time
        self._progress_wanted = False
        self._closed = False

    @property
    def buffered_bytes(self) -> int:
        """The :func:`response_cost` of the queued responses (bounded by the hub's bound)."""
        return self._bytes

    @property
    def buffered_events(self) -> int:
        """The events in the queued responses."""
        return self._events

    @property
    def watch_ids(self) -> list[int]:
        """IDs of this stream's live watchers, in creation order."""
        return list(self._watchers)

    def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        start_revision: int = 0,
        filters: Iterable[WatchFilter] = (),
        prev_kv: bool = False,
        progress_notify: bool = False,
        watch_id: int = 0,
    ) -> int:
        r"""Create a watcher; its ``created`` response is queued first.

        Args:
            key: the key, or the start of the range.
            range_end: as in a range request: empty for ``key`` alone, ``b"\0"`` for every key
                from ``key`` on, else the exclusive end.
            start_revision: the first revision to report; 0 for "after the current one". A
                revision at or below the current one replays history from there; one below the
                compacted revision ends in a cancel with ``compact_revision``. So does a
                negative one, as in etcd 3.4 (its ``minRev < compactRev`` check takes it as
                given), except -1 on a never-compacted store, which etcd, like kvapp, treats
                as "after the current one".
            filters: event types to leave out.
            prev_kv: include each event's previous version.
            progress_notify: receive progress notifications from :meth:`WatchHub.progress_tick`.
            watch_id: the ID to use (etcd 3.4+); 0 lets the stream pick the next free one.

        Returns:
            The watcher's ID, or -1 when the request failed; the failure is also queued as a
            ``created`` and ``canceled`` response with etcd's reason, as etcd sends it.
        """
        if self._closed:
            raise RuntimeError("watch stream is closed")
        rev = self._hub.store.revision
        reason = ""
        if watch_id and watch_id in self._watchers:
            reason = ERR_DUPLICATE_WATCH_ID
        elif range_end and range_end != ALL_KEYS_END and key >= range_end:
            reason = ERR_EMPTY_WATCHER_RANGE
        if reason:
            failed = WatchResponse(-1, rev, created=True, canceled=True, cancel_reason=reason)
            self._enqueue(None, failed)
            return -1
        if not watch_id:
            while self._next_id in self._watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        compacted = start_revision < min(0, self._hub.store.compact_revision)
        start = start_revision if start_revision > 0 or compacted else rev + 1
        w = _Watcher(
            self,
            watch_id,
            key,
            range_end,
            filters,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
            next_rev=start,
            seq=self._seq,
        )
        self._seq += 1
        self._watchers[watch_id] = w
        self._enqueue(w, WatchResponse(watch_id, rev, created=True))
        if start > rev:
            self._hub._register(w)
        return watch_id

    def cancel(self, watch_id: int) -> bool:
        """Cancel a watcher: its queued events are dropped and a ``canceled`` response queued.

        Returns:
            False if no such watcher exists (etcd then sends nothing).
        """
        w = self._watchers.get(watch_id)
        if w is None:
            return False
        self._remove(w)
        self._enqueue(None, WatchResponse(watch_id, self._hub.store.revision, canceled=True))
        return True

    def request_progress(self) -> None:
        """Queue a stream-wide progress notification (watch ID -1) at the current revision.

        As in etcd 3.5+, it is sent once every watcher of the stream is synced, so its revision
        promises that all events up to it were sent to every watcher.
        """
        self._progress_wanted = True
        self._maybe_send_progress()

    def has_pending(self) -> bool:
        """Whether :meth:`take` would return something now or after more catch-up."""
        if self._queue or self._progress_wanted:
            return True
        return any(not w.synced for w in self._watchers.values())

    def take(self, max_responses: int | None = None) -> list[WatchResponse]:
        """Catch up unsynced watchers (within their bounds), then pop queued responses.

        Call it again while :meth:`has_pending` is true; each call does bounded work. Catching
        up waits until the queue is at most half full, so that each pass over the watchers
        behind queues many responses, not the few just taken.
        """
        self._signaled = False
        if self._bytes <= self._hub.max_stream_bytes // 2:
            self._sync()
        out: list[WatchResponse] = []
        queue = self._queue
        while queue and (max_responses is None or len(out) < max_responses):
            w, resp, cost = queue.popleft()
            n = len(resp.events)
            if w is not None:
                w.buffered -= n
            self._bytes -= cost
            self._events -= n
            out.append(resp)
        return out

    def close(self) -> None:
        """Remove every watcher and drop the queue (the client went away)."""
        for w in list(self._watchers.values()):
            self._remove(w)
        self._queue.clear()
        self._bytes = self._events = self._aside = 0
        self._progress_wanted = False
        self._closed = True
        self._hub._close(self)

    # -- internals ----------------------------------------------------------------------------

    def _signal(self) -> None:
        if not self._signaled and self._on_pending is not None:
            self._signaled = True
            self._on_pending()

    def _fits(self, cost: int) -> bool:
        """Whether a response of ``cost`` may be queued (always, into an empty queue)."""
        return not self._bytes or self._bytes + cost <= self._hub.max_stream_bytes

    def _enqueue(self, w: _Watcher | None, resp: WatchResponse, cost: int = 0) -> None:
        cost = cost or response_cost(resp)
        n = len(resp.events)
        self._queue.append((w, resp, cost))
        self._bytes += cost
        self._events += n
        if w is not None:
            w.buffered += n
            if n:
                w.notified = True
        self._signal()

    def _drop_queued(self, w: _Watcher) -> int:
        """Drop ``w``'s queued events (not its control responses); return the first's revision."""
        first = 0
        kept: deque[tuple[_Watcher | None, WatchResponse, int]] = deque()
        for item in self._queue:
            if item[0] is w and item[1].events:
                first = first or item[1].events[0].kv.mod_revision
                self._bytes -= item[2]
                self._events -= len(item[1].events)
            else:
                kept.append(item)
        self._queue = kept
        w.buffered = 0
        return first

    def _remove(self, w: _Watcher, *, keep_queued: bool = False) -> None:
        self._hub._unregister(w)
        if w.aside:
            w.aside = False
            self._aside -= 1
        if not keep_queued:
            self._drop_queued(w)
        del self._watchers[w.id]

    def _deliver(self, w: _Watcher, resp: WatchResponse, cost: int) -> None:
        """Queue a live response of :func:`response_cost` ``cost`` for ``w``, within bounds."""
        hub = self._hub
        if self._aside or (self._bytes and self._bytes + cost > hub.max_stream_bytes):
            # The stream is full, or was and its watchers are catching up: set this one aside
            # too (so that they all take turns); it re-reads this revision on from the change
            # log once the client has taken some of the queue.
            hub._unregister(w)
            w.next_rev = resp.revision
            w.aside = True
            self._aside += 1
            hub.set_aside += 1
            self._signal()
            return
        if w.buffered and w.buffered + len(resp.events) > hub.max_buffered_events:
            if hub.slow_watcher is SlowWatcherPolicy.RESYNC:
                first = self._drop_queued(w) or resp.revision
                hub._unregister(w)
                w.next_rev = first
                self._signal()
                return
            self._remove(w)
            reason = f"kvapp: watcher fell behind by more than {hub.max_buffered_events} events"
            self._enqueue(
                None,
                WatchResponse(w.id, hub.store.revision, canceled=True, cancel_reason=reason),
            )
            return
        self._enqueue(w, resp, cost)

    def _sync(self) -> None:
        hub = self._hub
        store = hub.store
        behind = [w for w in self._watchers.values() if not w.synced]  # in creation order
        # Watchers take turns: a pass the stream's bound cut short goes on where it stopped,
        # so that a client slower than the writes spreads its lag over all of its watchers.
        first = bisect_left(behind, self._turn, key=lambda w: w.seq)
        turn: int | None = None  # where the next pass starts once this one found no room
        for w in behind[first:] + behind[:first]:
            if w.next_rev < store.compact_revision:
                # What is already queued for it goes first, as in etcd.
                self._remove(w, keep_queued=True)
                self._enqueue(
                    None,
                    WatchResponse(
                        w.id,
                        store.revision,
                        canceled=True,
                        compact_revision=store.compact_revision,
                    ),
                )
                continue
            if turn is not None:
                continue
            if self._bytes >= hub.max_stream_bytes:
                turn = w.seq
                continue
            if not self._catch_up(w):
                turn = w.seq  # cut short by the bound: it goes on first next time
        self._turn = turn or 0
        self._maybe_send_progress()

    def _catch_up(self, w: _Watcher) -> bool:
        """Queue ``w``'s history within the bounds; False if the stream's bound cut it short."""
        hub = self._hub
        store = hub.store
        cur = store.revision
        stop = min(cur, w.next_rev + hub.catch_up_revisions - 1)
        changes = store.changes(w.next_rev, stop)
        if w.next_rev == store.compact_revision:
            changes = _as_compacted(changes, w.next_rev)
        i, n = 0, len(changes)
        while i < n:
            if w.buffered >= hub.max_buffered_events:
                break
            rev = changes[i].mod_revision
            events: list[Event] = []
            j = i
            while j < n and changes[j].mod_revision == rev:
                kv = changes[j]
                j += 1
                if contains(w.key, w.range_end, kv.key) and w.wants(kv):
                    prev = store.prev_version(kv) if w.prev_kv else None
                    events.append(
                        Event(EventType.PUT if kv.version else EventType.DELETE, kv, prev)
                    )
            if events:
                resp = WatchResponse(w.id, cur, tuple(events))
                cost = response_cost(resp)
                if not self._fits(cost):
                    return False  # this revision is read again next time
                self._enqueue(w, resp, cost)
            i = j
            w.next_rev = rev + 1
        else:
            w.next_rev = max(w.next_rev, stop + 1)
        if w.next_rev > cur:
            hub._register(w)
            if w.aside:
                w.aside = False
                self._aside -= 1
        return True

    def _maybe_send_progress(self) -> None:
        if self._progress_wanted and all(w.synced for w in self._watchers.values()):
            self._progress_wanted = False
            self._enqueue(None, WatchResponse(PROGRESS_WATCH_ID, self._hub.store.revision))


def _as_compacted(changes: Sequence[KeyValue], revision: int) -> Sequence[KeyValue]:
    """``changes`` (from the compacted ``revision`` on) as a watcher replaying etcd's sees them.

    etcd's compaction at ``revision`` keeps, of the changes at that revision, only each key's
    last one and only if it is a put: a tombstone at or below the compacted revision goes with
    what it deleted. So a watch starting at the compacted revision gets no delete event at it
    (nor the put a same-txn delete undid), and kvapp, which keeps the whole revision in its
    change log, leaves them out here.
    """
    at = [i for i, kv in enumerate(changes) if kv.mod_revision == revision]
    last = {changes[i].key: i for i in at}
    drop = {i for i in at if last[changes[i].key] != i or not changes[i].version}
    return [kv for i, kv in enumerate(changes) if i not in drop] if drop else changes
