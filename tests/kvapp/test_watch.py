"""Watch semantics (etcd's Watch service core) and exactly-once delivery."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from kvapp.errors import EtcdError
from kvapp.mvcc import (
    DeleteRangeRequest,
    Event,
    EventType,
    KeyValue,
    PutRequest,
    Store,
    prefix_range_end,
)
from kvapp.mvcc import store as store_module
from kvapp.watch import (
    DEFAULT_MAX_STREAM_BYTES,
    PROGRESS_WATCH_ID,
    SlowWatcherPolicy,
    WatchFilter,
    WatchHub,
    WatchResponse,
    WatchStream,
    response_cost,
)

PUT, DELETE = EventType.PUT, EventType.DELETE


def setup(**hub_kw: Any) -> tuple[Store, WatchHub, WatchStream]:
    store = Store()
    hub = WatchHub(store, **hub_kw)
    return store, hub, hub.open_stream()


def drain(stream: WatchStream) -> list[WatchResponse]:
    out: list[WatchResponse] = []
    for _ in range(10_000):
        if not stream.has_pending():
            return out
        out.extend(stream.take())
    raise AssertionError("stream never drained")


def summary(resps: list[WatchResponse]) -> list[tuple[Any, ...]]:
    """(watch_id, revision, [(type, key, value)]) per response, control flags spelled out."""
    out: list[tuple[Any, ...]] = []
    for r in resps:
        if r.created or r.canceled:
            flags = "created" if r.created else "canceled"
            out.append((r.watch_id, flags, r.compact_revision, r.cancel_reason))
        else:
            out.append((r.watch_id, r.revision, [(e.type, e.kv.key, e.kv.value) for e in r.events]))
    return out


def test_created_then_live_events_one_response_per_revision() -> None:
    store, _, s = setup()
    wid = s.watch(b"k")
    assert wid == 0
    store.put(b"k", b"1")
    store.put(b"other", b"x")
    store.txn([], [PutRequest(b"k", b"2"), PutRequest(b"k2", b"x")])
    store.delete_range(b"k")
    assert summary(drain(s)) == [
        (0, "created", 0, ""),
        (0, 2, [(PUT, b"k", b"1")]),
        (0, 4, [(PUT, b"k", b"2")]),
        (0, 5, [(DELETE, b"k", b"")]),
    ]


def test_events_are_built_only_for_revisions_a_watcher_looks_at(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[bytes] = []
    real = Event

    def counting(*args: Any) -> Any:
        built.append(args[1].key)
        return real(*args)

    monkeypatch.setattr(store_module, "Event", counting)
    store, _, s = setup()
    store.put(b"k", b"1")  # no watcher yet
    assert built == []
    s.watch(b"k")
    store.put(b"k", b"2")
    store.put(b"other", b"x")  # a revision the watcher looks at, though not its key
    assert built == [b"k", b"other"]
    assert summary(drain(s)) == [(0, "created", 0, ""), (0, 3, [(PUT, b"k", b"2")])]


def test_created_response_carries_the_current_revision() -> None:
    store, _, s = setup()
    store.put(b"a", b"1")
    s.watch(b"a")
    (created,) = s.take()
    assert created == WatchResponse(0, 2, created=True)


@pytest.mark.parametrize(
    ("key", "end", "want"),
    [
        (b"a/", prefix_range_end(b"a/"), [b"a/1", b"a/2"]),
        (b"a/2", b"\0", [b"a/2", b"b"]),
        (b"\0", b"\0", [b"a", b"a/1", b"a/2", b"b"]),
        (b"a", b"a/2", [b"a", b"a/1"]),
        (b"a", b"", [b"a"]),
    ],
)
def test_range_watchers(key: bytes, end: bytes, want: list[bytes]) -> None:
    store, _, s = setup()
    s.watch(key, end)
    store.txn([], [PutRequest(k, b"v") for k in (b"a", b"a/1", b"a/2", b"b")])
    (_, events) = drain(s)
    assert [e.kv.key for e in events.events] == want


@pytest.mark.parametrize(
    ("filters", "want"),
    [((), [PUT, DELETE]), ((WatchFilter.NOPUT,), [DELETE]), ((WatchFilter.NODELETE,), [PUT])],
)
def test_filters(filters: tuple[WatchFilter, ...], want: list[EventType]) -> None:
    store, _, s = setup()
    s.watch(b"k", filters=filters)
    store.put(b"k", b"1")
    store.delete_range(b"k")
    got = [e.type for r in drain(s) for e in r.events]
    assert got == want


def test_fully_filtered_revisions_send_nothing() -> None:
    store, _, s = setup()
    s.watch(b"k", filters=[WatchFilter.NOPUT, WatchFilter.NODELETE])
    store.put(b"k", b"1")
    assert [r.created for r in drain(s)] == [True]


@pytest.mark.parametrize("from_history", [False, True])
def test_prev_kv_live_and_from_history(from_history: bool) -> None:
    store, _, s = setup()
    if not from_history:
        s.watch(b"k", prev_kv=True)
    store.put(b"k", b"1")
    store.put(b"k", b"2")
    store.delete_range(b"k")
    if from_history:
        s.watch(b"k", prev_kv=True, start_revision=2)
    events = [e for r in drain(s) for e in r.events]
    assert events == [
        Event(PUT, KeyValue(b"k", 2, 2, 1, b"1"), None),
        Event(PUT, KeyValue(b"k", 2, 3, 2, b"2"), KeyValue(b"k", 2, 2, 1, b"1")),
        Event(DELETE, KeyValue(b"k", 0, 4, 0), KeyValue(b"k", 2, 3, 2, b"2")),
    ]


def test_without_prev_kv_events_carry_none() -> None:
    store, _, s = setup()
    s.watch(b"k")
    store.put(b"k", b"1")
    store.put(b"k", b"2")
    s.watch(b"k", start_revision=2)
    events = [e for r in drain(s) for e in r.events]
    assert len(events) == 4
    assert all(e.prev_kv is None for e in events)


def test_history_then_live_exactly_once_in_order() -> None:
    store, _, s = setup()
    for i in range(5):
        store.put(b"k", str(i).encode())
    s.watch(b"k", start_revision=3)
    store.put(b"k", b"live-before-take")
    got = drain(s)
    store.put(b"k", b"live-after")
    got += drain(s)
    revs = [r.revision if not r.created else None for r in got]
    values = [e.kv.value for r in got for e in r.events]
    assert values == [b"1", b"2", b"3", b"4", b"live-before-take", b"live-after"]
    assert revs[0] is None
    assert [e.kv.mod_revision for r in got for e in r.events] == [3, 4, 5, 6, 7, 8]


def test_future_start_revision_waits_for_it() -> None:
    store, _, s = setup()
    s.watch(b"k", start_revision=4)
    for i in range(4):
        store.put(b"k", str(i).encode())
    assert [e.kv.mod_revision for r in drain(s) for e in r.events] == [4, 5]


def test_watch_on_compacted_revision_is_cancelled_with_compact_revision() -> None:
    store, _, s = setup()
    for i in range(4):
        store.put(b"k", str(i).encode())  # revs 2..5
    store.compact(4)
    wid = s.watch(b"k", start_revision=3)
    assert summary(drain(s)) == [(wid, "created", 0, ""), (wid, "canceled", 4, "")]
    assert s.watch_ids == []
    # Watching from the compacted revision itself is allowed (etcd: minRev < compactRev fails).
    wid = s.watch(b"k", start_revision=4)
    assert [e.kv.mod_revision for r in drain(s) for e in r.events] == [4, 5]


@pytest.mark.parametrize("start", [-1, -5, -(2**63)])
def test_a_negative_start_revision_is_compacted_once_the_store_was(start: int) -> None:
    """etcd 3.4.23 (compacted at 4): created, then canceled with compact_revision 4."""
    store, _, s = setup()
    for i in range(4):
        store.put(b"k", str(i).encode())  # revs 2..5
    store.compact(4)
    wid = s.watch(b"k", start_revision=start)
    now = s.watch(b"k", start_revision=0)  # 0 still means "after the current revision"
    assert summary(drain(s)) == [
        (wid, "created", 0, ""),
        (now, "created", 0, ""),
        (wid, "canceled", 4, ""),
    ]
    store.put(b"k", b"after")
    assert summary(drain(s)) == [(now, 6, [(PUT, b"k", b"after")])]
    assert s.watch_ids == [now]


def test_a_negative_start_revision_after_compact_zero_is_cancelled() -> None:
    """etcd 3.4.23 sends a response with compact_revision 0 and no ``canceled`` flag, and its
    watcher never reports again; kvapp cancels it (see docs/etcd-api.md)."""
    store, _, s = setup()
    store.compact(0)
    wid = s.watch(b"k", start_revision=-1)
    assert summary(drain(s)) == [(wid, "created", 0, ""), (wid, "canceled", 0, "")]


def test_negative_start_revisions_on_a_never_compacted_store() -> None:
    """etcd 3.4.23, never compacted: -2 and below are compacted (compact_revision -1), -1 is
    not below the compacted revision and watches from now."""
    store, _, s = setup()
    store.put(b"k", b"before")
    below = s.watch(b"k", start_revision=-2)
    now = s.watch(b"k", start_revision=-1)
    assert summary(drain(s)) == [
        (below, "created", 0, ""),
        (now, "created", 0, ""),
        (below, "canceled", -1, ""),
    ]
    store.put(b"k", b"after")
    assert summary(drain(s)) == [(now, 3, [(PUT, b"k", b"after")])]


def test_compaction_overtaking_a_catching_up_watcher_cancels_it() -> None:
    store, _, s = setup(max_buffered_events=2)
    for i in range(6):
        store.put(b"k", str(i).encode())  # revs 2..7
    wid = s.watch(b"k", start_revision=2)
    first = s.take()
    assert [e.kv.mod_revision for r in first for e in r.events] == [2, 3]
    store.compact(6)
    assert summary(drain(s)) == [(wid, "canceled", 6, "")]


def test_cancel() -> None:
    store, _, s = setup()
    wid = s.watch(b"k")
    store.put(b"k", b"queued")
    assert s.cancel(wid)
    store.put(b"k", b"after")
    assert summary(drain(s)) == [(wid, "created", 0, ""), (wid, "canceled", 0, "")]
    assert not s.cancel(wid)
    assert not s.cancel(12345)


def test_client_chosen_ids_and_failures() -> None:
    _, _, s = setup()
    assert s.watch(b"a", watch_id=7) == 7
    assert s.watch(b"a", watch_id=7) == -1
    assert s.watch(b"b", b"a") == -1
    assert s.watch(b"b", b"b") == -1
    assert s.watch(b"c") == 0
    assert s.watch(b"c") == 1
    assert summary(drain(s)) == [
        (7, "created", 0, ""),
        (-1, "created", 0, "mvcc: duplicate watch ID provided on the WatchStream"),
        (-1, "created", 0, "mvcc: watcher range is empty"),
        (-1, "created", 0, "mvcc: watcher range is empty"),
        (0, "created", 0, ""),
        (1, "created", 0, ""),
    ]
    assert s.take() == []


def test_watch_ids_are_per_stream() -> None:
    _, hub, s = setup()
    other = hub.open_stream()
    assert s.watch(b"a") == other.watch(b"a") == 0
    assert hub.watcher_count == 2


def test_progress_tick_notifies_only_idle_synced_watchers_that_asked() -> None:
    store, hub, s = setup()
    idle = s.watch(b"idle", progress_notify=True)
    busy = s.watch(b"busy", progress_notify=True)
    s.watch(b"quiet")
    drain(s)
    store.put(b"busy", b"1")
    hub.progress_tick()
    got = drain(s)
    assert summary(got) == [(busy, 2, [(PUT, b"busy", b"1")]), (idle, 2, [])]
    assert got[1].is_progress_notify
    hub.progress_tick()
    assert summary(drain(s)) == [(idle, 2, []), (busy, 2, [])]


def test_request_progress_waits_until_every_watcher_is_synced() -> None:
    store, _, s = setup(max_buffered_events=1)
    for i in range(3):
        store.put(b"k", str(i).encode())  # revs 2..4
    s.watch(b"k", start_revision=2)
    s.request_progress()
    got = s.take()
    assert [r.watch_id for r in got] == [0, 0]  # created, rev 2; then the buffer bound stops it
    got = drain(s)
    assert summary(got)[-1] == (PROGRESS_WATCH_ID, 4, [])
    assert [e.kv.mod_revision for r in got for e in r.events] == [3, 4]


def test_request_progress_with_everything_synced_is_immediate() -> None:
    store, _, s = setup()
    store.put(b"x", b"1")
    s.request_progress()
    assert s.take() == [WatchResponse(PROGRESS_WATCH_ID, 2)]


def test_slow_watcher_is_cancelled_with_a_reason_and_the_store_never_waits() -> None:
    store, hub, s = setup(max_buffered_events=3)
    fast = hub.open_stream()
    slow_id = s.watch(b"k")
    fast.watch(b"k")
    for i in range(100):
        store.put(b"k", str(i).encode())
        fast.take()
    got = drain(s)
    # Its buffered events are dropped with it (that memory is the point); its client re-watches
    # from the last revision it saw + 1, which it never got past.
    assert summary(got) == [
        (slow_id, "created", 0, ""),
        (slow_id, "canceled", 0, "kvapp: watcher fell behind by more than 3 events"),
    ]
    assert len(fast.take()) == 0
    assert store.revision == 101


def test_slow_watcher_resyncs_from_history_without_losing_events() -> None:
    store, _, s = setup(max_buffered_events=3, slow_watcher=SlowWatcherPolicy.RESYNC)
    s.watch(b"k")
    s.take()
    for i in range(50):
        store.put(b"k", str(i).encode())
        assert len(s._queue) <= 3
    values = [e.kv.value for r in drain(s) for e in r.events]
    assert values == [str(i).encode() for i in range(50)]


def test_a_revision_larger_than_the_bound_is_delivered_whole() -> None:
    store, _, s = setup(max_buffered_events=2)
    s.watch(b"\0", b"\0")
    s.watch(b"\0", b"\0", start_revision=1)
    s.take()
    store.txn([], [PutRequest(bytes([c]), b"") for c in b"abcde"])
    got = drain(s)
    assert [len(r.events) for r in got] == [5, 5]
    assert not any(r.canceled for r in got)


def test_catch_up_work_per_take_is_bounded() -> None:
    store, _, s = setup(catch_up_revisions=10)
    for i in range(100):
        store.put(b"other", str(i).encode())
    store.put(b"k", b"x")
    s.watch(b"k", start_revision=1)
    rounds = 0
    events = []
    while s.has_pending():
        events += [e for r in s.take() for e in r.events]
        rounds += 1
    assert rounds == 11
    assert [e.kv.value for e in events] == [b"x"]


def test_on_pending_fires_once_until_taken() -> None:
    store = Store()
    hub = WatchHub(store)
    calls: list[int] = []
    s = hub.open_stream(lambda: calls.append(1))
    s.watch(b"k")
    store.put(b"k", b"1")
    store.put(b"k", b"2")
    assert calls == [1]
    s.take()
    store.put(b"k", b"3")
    assert calls == [1, 1]


def test_close_removes_watchers() -> None:
    store, hub, s = setup()
    s.watch(b"k")
    s.watch(b"a", b"z")
    s.close()
    store.put(b"k", b"1")
    assert hub.watcher_count == 0
    assert not s.has_pending()
    with pytest.raises(RuntimeError):
        s.watch(b"k")


def test_restore_replays_missed_revisions_exactly_once() -> None:
    follower, _, s = setup()
    leader = Store()
    for store in (leader, follower):
        store.put(b"k", b"1")  # rev 2
    s.watch(b"k", prev_kv=True)
    leader.put(b"k", b"2")  # 3: the follower misses these
    leader.put(b"x", b"-")  # 4
    leader.delete_range(b"k")  # 5
    leader.compact(3)
    follower.replace_state(
        Store.from_snapshot(
            leader.revision,
            leader.compact_revision,
            leader.snapshot_base(),
            leader.snapshot_log(),
        )
    )
    follower.put(b"k", b"3")  # 6, live after the restore
    events = [e for r in drain(s) for e in r.events]
    assert [(e.type, e.kv.mod_revision) for e in events] == [(PUT, 3), (DELETE, 5), (PUT, 6)]
    assert events[0].prev_kv is None  # its previous version (rev 2) is below the compaction
    assert events[1].prev_kv == KeyValue(b"k", 2, 3, 2, b"2")


def test_restore_past_the_watchers_position_after_compaction_cancels() -> None:
    follower, _, s = setup()
    leader = Store()
    s.watch(b"k")
    for i in range(4):
        leader.put(b"k", str(i).encode())
    leader.compact(4)
    follower.replace_state(
        Store.from_snapshot(leader.revision, 4, leader.snapshot_base(), leader.snapshot_log())
    )
    assert summary(drain(s)) == [(0, "created", 0, ""), (0, "canceled", 4, "")]


def test_hub_validates_bounds() -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        WatchHub(Store(), max_buffered_events=0)


# -- exactly once, randomised --------------------------------------------------------------------

KEYS = [b"a", b"a/1", b"a/2", b"b"]
RANGES = [(b"a", b""), (b"a/", prefix_range_end(b"a/")), (b"\0", b"\0"), (b"a/1", b"b")]


class Truth:
    """Every event the leader committed, as its store reported them."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_commit(self, revision: int, events: Any) -> None:
        self.events.extend(events)

    def on_restore(self) -> None:
        raise AssertionError("the leader never restores")


class Watcher:
    def __init__(
        self,
        stream: int,
        wid: int,
        key: bytes,
        end: bytes,
        start: int,
        prev_kv: bool,
        no_put: bool,
    ) -> None:
        self.stream = stream
        self.wid = wid
        self.key, self.end, self.start = key, end, start
        self.prev_kv = prev_kv
        self.no_put = no_put
        self.got: list[Event] = []
        self.revisions: list[int] = []
        self.canceled: WatchResponse | None = None


def check_stream_bound(s: WatchStream) -> None:
    """The stream's counters match its queue, and its events and periodic progress
    notifications stay within the hub's bound (or are one response queued alone)."""
    queue = list(s._queue)
    assert s.buffered_bytes == sum(response_cost(r) for _, r, _ in queue)
    assert s.buffered_events == sum(len(r.events) for _, r, _ in queue)
    aside = [w for w in s._watchers.values() if w.aside]
    assert s._aside == len(aside)
    assert not any(w.synced for w in aside)
    bounded = [r for w, r, _ in queue if w is not None and not r.created]
    held = sum(response_cost(r) for r in bounded)
    assert held <= s._hub.max_stream_bytes or len(bounded) == 1, (held, len(bounded))


def _in(key: bytes, end: bytes, k: bytes) -> bool:
    if not end:
        return k == key
    return k >= key and (end == b"\0" or k < end)


class WatchMachine(RuleBasedStateMachine):
    """A follower's watchers must see exactly the leader's events: through catch-up, live
    delivery, slow-watcher handling, compaction and snapshot restores."""

    watchers = Bundle("watchers")

    @initialize(
        policy=st.sampled_from(SlowWatcherPolicy),
        bound=st.one_of(st.integers(1, 4), st.just(1000)),
        batch=st.integers(1, 5),
        stream_bytes=st.sampled_from([1, 400, 700, 1500, DEFAULT_MAX_STREAM_BYTES]),
    )
    def init(self, policy: SlowWatcherPolicy, bound: int, batch: int, stream_bytes: int) -> None:
        self.leader = Store()
        self.truth = Truth()
        self.leader.add_listener(self.truth)
        self.follower = Store()
        self.hub = WatchHub(
            self.follower,
            max_buffered_events=bound,
            slow_watcher=policy,
            catch_up_revisions=batch,
            max_stream_bytes=stream_bytes,
        )
        self.streams = [self.hub.open_stream(), self.hub.open_stream()]
        self.all: dict[tuple[int, int], Watcher] = {}
        self.lagging = False
        self.policy = policy
        self.compacted: set[int] = set()

    def _both(self, fn: str, *args: Any) -> None:
        def run(store: Store) -> Any:
            try:
                return getattr(store, fn)(*args)
            except EtcdError as e:
                return type(e)

        got = run(self.leader)
        if not self.lagging:
            assert run(self.follower) == got

    @rule(key=st.sampled_from(KEYS), value=st.sampled_from([b"1", b"2"]))
    def put(self, key: bytes, value: bytes) -> None:
        self._both("put", key, value)

    @rule(rng=st.sampled_from(RANGES))
    def delete(self, rng: tuple[bytes, bytes]) -> None:
        self._both("delete_range", *rng)

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
    def txn(self, keys: list[bytes]) -> None:
        ops = [PutRequest(k, b"t") for k in keys[:-1]] + [DeleteRangeRequest(keys[-1])]
        self._both("txn", [], ops)

    @precondition(lambda self: not self.lagging)
    @rule(back=st.integers(0, 3))
    def compact(self, back: int) -> None:
        rev = max(self.leader.revision - back, 1)
        self._both("compact", rev)
        self.compacted.add(self.leader.compact_revision)

    @precondition(lambda self: not self.lagging)
    @rule()
    def lag(self) -> None:
        self.lagging = True

    @precondition(lambda self: self.lagging)
    @rule()
    def restore(self) -> None:
        snap = Store.from_snapshot(
            self.leader.revision,
            self.leader.compact_revision,
            self.leader.snapshot_base(),
            self.leader.snapshot_log(),
        )
        self.follower.replace_state(snap)
        self.lagging = False

    @rule(
        target=watchers,
        stream=st.integers(0, 1),
        rng=st.sampled_from(RANGES),
        back=st.integers(-1, 6),
        prev_kv=st.booleans(),
        no_put=st.integers(0, 4).map(lambda i: i == 0),
    )
    def watch(
        self, stream: int, rng: tuple[bytes, bytes], back: int, prev_kv: bool, no_put: bool
    ) -> tuple[int, int]:
        cur = self.follower.revision
        start = 0 if back < 0 else max(cur - back, 1)
        filters = [WatchFilter.NOPUT] if no_put else []
        wid = self.streams[stream].watch(
            rng[0], rng[1], start_revision=start, prev_kv=prev_kv, filters=filters
        )
        assert wid >= 0
        self.all[stream, wid] = Watcher(
            stream, wid, rng[0], rng[1], start or cur + 1, prev_kv, no_put
        )
        return (stream, wid)

    @rule(w=consumes(watchers))
    def cancel(self, w: tuple[int, int]) -> None:
        watcher = self.all[w]
        self.take(w[0], None)
        if watcher.canceled is None:
            assert self.streams[w[0]].cancel(w[1])
            self.all.pop(w)

    @rule(stream=st.integers(0, 1), most=st.one_of(st.none(), st.integers(1, 3)))
    def take(self, stream: int, most: int | None) -> None:
        for r in self.streams[stream].take(most):
            w = self.all.get((stream, r.watch_id))
            if w is None:
                assert r.canceled  # the cancel of a watcher the client dropped
                continue
            assert w.canceled is None, "nothing after a cancel"
            if r.canceled:
                w.canceled = r
            elif r.events:
                assert len({e.kv.mod_revision for e in r.events}) == 1, "one revision each"
                w.got.extend(r.events)

    @rule()
    def progress_tick(self) -> None:
        self.hub.progress_tick()

    @invariant()
    def streams_stay_within_their_bound(self) -> None:
        for s in self.streams:
            check_stream_bound(s)

    def _etcd_may_drop(self, events: list[Event]) -> list[Event]:
        """``events`` without those a replay from a compacted revision leaves out (etcd's
        compaction keeps only each key's last change at that revision, if a put): a watcher
        gets such a revision whole or reduced, depending on whether it was compacted first."""
        at: dict[int, dict[bytes, Event]] = {}
        for e in events:
            if e.kv.mod_revision in self.compacted:
                at.setdefault(e.kv.mod_revision, {})[e.kv.key] = e
        return [
            e
            for e in events
            if e.kv.mod_revision not in self.compacted
            or (e.type == PUT and at[e.kv.mod_revision][e.kv.key] is e)
        ]

    @invariant()
    def delivered_is_a_prefix_of_the_truth(self) -> None:
        for w in self.all.values():
            want = self._etcd_may_drop(self.expected(w))
            got_all = self._etcd_may_drop(w.got)
            assert [(e.type, e.kv) for e in got_all] == [
                (e.type, e.kv) for e in want[: len(got_all)]
            ]
            for got, truth in zip(got_all, want, strict=False):
                if not w.prev_kv:
                    assert got.prev_kv is None
                elif got.prev_kv != truth.prev_kv:
                    assert got.prev_kv is None
                    assert got.kv.mod_revision <= self.follower.compact_revision

    def expected(self, w: Watcher) -> list[Event]:
        return [
            e
            for e in self.truth.events
            if e.kv.mod_revision >= w.start
            and _in(w.key, w.end, e.kv.key)
            and not (w.no_put and e.type == PUT)
        ]

    def teardown(self) -> None:
        if not hasattr(self, "leader"):
            return
        if self.lagging:
            self.restore()
        for i in (0, 1):
            for _ in range(10_000):
                if not self.streams[i].has_pending():
                    break
                self.take(i, None)
        self.delivered_is_a_prefix_of_the_truth()
        for w in self.all.values():
            if w.canceled is None:
                got, want = self._etcd_may_drop(w.got), self._etcd_may_drop(self.expected(w))
                assert len(got) == len(want), "a live watcher got everything"
            elif w.canceled.compact_revision:
                assert not w.got or w.got[-1].kv.mod_revision < w.canceled.compact_revision
            else:
                assert self.policy is SlowWatcherPolicy.CANCEL
                assert w.canceled.cancel_reason


WatchMachine.TestCase.settings = settings(max_examples=250, stateful_step_count=50, deadline=None)
TestWatchMachine = WatchMachine.TestCase


def test_a_key_changed_twice_in_one_txn_gets_etcds_prev_kvs() -> None:
    """etcd reads an event's prev_kv at the revision before the event's, and skips it for a
    put that creates its key (found by the randomised differential test against etcd): live
    and replayed alike, put-then-delete gives the delete none, delete-then-put gives the delete
    the version from before the txn and the (creating) put none."""
    store, _, s = setup()
    store.put(b"a", b"0")
    live = s.watch(b"a", b"\0", prev_kv=True)
    store.txn([], [PutRequest(b"b", b"1"), DeleteRangeRequest(b"b", b"\0")])
    store.txn([], [DeleteRangeRequest(b"a", b"\0"), PutRequest(b"a", b"2")])
    replayed = s.watch(b"a", b"\0", start_revision=3, prev_kv=True)
    resps = drain(s)
    before = KeyValue(b"a", 2, 2, 1, b"0")
    for wid in (live, replayed):
        events = [
            (e.type, e.kv.key, e.prev_kv) for r in resps if r.watch_id == wid for e in r.events
        ]
        assert events == [
            (PUT, b"b", None),
            (DELETE, b"b", None),
            (DELETE, b"a", before),
            (PUT, b"a", None),
        ], wid


def test_a_watch_from_the_compacted_revision_sees_only_what_etcd_keeps_of_it() -> None:
    """etcd's compaction keeps, of the changes at the compacted revision, each key's last one
    if it is a put; its tombstones go. A watch starting there sees no delete at it (found by
    the randomised differential test against etcd)."""
    store, _, s = setup()
    store.put(b"a", b"0")  # 2
    store.put(b"b", b"0")  # 3
    store.txn([], [PutRequest(b"c", b"1"), DeleteRangeRequest(b"a", b"b")])  # 4: put c, del a
    store.txn([], [PutRequest(b"d", b"1"), DeleteRangeRequest(b"d", b"\0")])  # 5: put, del d
    store.compact(4)
    from_compacted = s.watch(b"a", b"\0", start_revision=4, prev_kv=True)
    later = s.watch(b"a", b"\0", start_revision=5)
    resps = drain(s)

    def seen(wid: int) -> list[tuple[Any, ...]]:
        return [(e.type, e.kv.key, e.kv.mod_revision, e.prev_kv) for r in resps
                if r.watch_id == wid for e in r.events]  # fmt: skip

    assert seen(from_compacted)[:1] == [(PUT, b"c", 4, None)]  # no delete of a at 4
    assert [e[:3] for e in seen(from_compacted)[1:]] == [(PUT, b"d", 5), (DELETE, b"d", 5)]
    assert [e[:3] for e in seen(later)] == [(PUT, b"d", 5), (DELETE, b"d", 5)]
    store.compact(5)  # the put and the delete of d at 5 both go: d ended deleted at 5
    again = s.watch(b"a", b"\0", start_revision=5)
    replayed = [e for r in drain(s) if r.watch_id == again for e in r.events]
    assert replayed == []
