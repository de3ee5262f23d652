"""The per-stream bound of :mod:`kvapp.watch`: a stream whose client stops taking holds a
bounded queue, its watchers are set aside and later catch up from the change log exactly once,
or get the compaction cancel when their history went meanwhile."""

from __future__ import annotations

import gc
import tracemalloc

import attrs

from kvapp.mvcc import Store
from kvapp.watch import WatchHub, WatchResponse, WatchStream, response_cost
from tests.kvapp.test_watch import check_stream_bound, drain

BOUND = 64 << 10


def stalled(watchers: int, puts: int, **hub_kw: object) -> tuple[Store, WatchHub, WatchStream]:
    """A stream with ``watchers`` watchers on ``k`` whose client took only the ``created``
    responses, then ``puts`` puts of ``k`` (revisions 2 to ``puts + 1``)."""
    store = Store()
    hub = WatchHub(store, max_stream_bytes=BOUND, **hub_kw)  # type: ignore[arg-type]
    s = hub.open_stream()
    for _ in range(watchers):
        s.watch(b"k")
    assert all(r.created for r in s.take())
    for i in range(puts):
        store.put(b"k", b"v%d" % i)
        check_stream_bound(s)
    return store, hub, s


def drain_in_steps(s: WatchStream) -> list[WatchResponse]:
    """Take 50 responses at a time, checking the bound while watchers catch up."""
    out: list[WatchResponse] = []
    for _ in range(100_000):
        if not s.has_pending():
            return out
        out += s.take(50)
        check_stream_bound(s)
    raise AssertionError("stream never drained")


def revisions_by_watcher(resps: list[WatchResponse]) -> dict[int, list[int]]:
    got: dict[int, list[int]] = {}
    for r in resps:
        assert not r.canceled, r
        got.setdefault(r.watch_id, []).extend(e.kv.mod_revision for e in r.events)
    return got


def test_a_stalled_stream_holds_a_bounded_queue_then_every_watcher_gets_every_event() -> None:
    store, hub, s = stalled(200, 500)
    assert s.buffered_bytes <= BOUND
    assert hub.set_aside >= 200  # every watcher was set aside at least once
    held = s.buffered_events
    for i in range(500):  # more puts change nothing: the set-aside watchers cost nothing
        store.put(b"k", b"w%d" % i)
    assert s.buffered_events == held
    got = revisions_by_watcher(drain_in_steps(s))
    assert got == {wid: list(range(2, 1002)) for wid in range(200)}


def test_a_fast_stream_beside_a_stalled_one_is_not_set_aside() -> None:
    store, hub, slow = stalled(50, 0)
    fast = hub.open_stream()
    fast.watch(b"k")
    fast.take()
    seen: list[int] = []
    for i in range(300):
        store.put(b"k", b"v%d" % i)
        seen += [e.kv.mod_revision for r in fast.take() for e in r.events]
    assert seen == list(range(2, 302))
    assert hub.set_aside >= 50
    assert fast.buffered_bytes == 0
    assert revisions_by_watcher(drain_in_steps(slow)) == {w: list(range(2, 302)) for w in range(50)}


def test_watchers_set_aside_get_the_compaction_cancel_if_their_history_went() -> None:
    store, _, s = stalled(100, 200)
    compacted = store.revision
    store.compact(compacted)
    store.put(b"k", b"after")
    late = s.watch(b"k", start_revision=2)  # what a watcher created at a compacted revision gets
    out = drain_in_steps(s)
    cancels = {r.watch_id: r for r in out if r.canceled}
    assert set(cancels) == {*range(100), late}
    want = cancels.pop(late)
    assert want == WatchResponse(late, store.revision, canceled=True, compact_revision=compacted)
    assert all(c == attrs.evolve(want, watch_id=w) for w, c in cancels.items())
    events: dict[int, list[int]] = {w: [] for w in range(100)}
    ended: set[int] = set()
    for r in out:
        assert r.watch_id not in ended, "nothing after a cancel"
        if r.canceled:
            ended.add(r.watch_id)
        elif r.events:
            events[r.watch_id].extend(e.kv.mod_revision for e in r.events)
    for revs in events.values():  # an in-order prefix of what it missed, nothing repeated
        assert revs == list(range(2, 2 + len(revs)))
        assert not revs or revs[-1] < compacted
    # What was queued before a watcher was set aside is still delivered, before its cancel.
    assert any(events.values())


def test_a_watcher_on_a_full_stream_is_set_aside_not_cancelled_by_the_per_watcher_bound() -> None:
    def run(filler: int) -> list[WatchResponse]:
        store = Store()
        hub = WatchHub(store, max_stream_bytes=BOUND, max_buffered_events=3)
        s = hub.open_stream()
        s.watch(b"filler")
        s.watch(b"k")
        s.take()
        if filler:
            store.put(b"filler", b"x" * filler)
        for i in range(10):
            store.put(b"k", b"v%d" % i)
        return [r for r in drain(s) if r.watch_id == 1]

    # With room in its stream, a watcher more than 3 events behind is cancelled, its queued
    # events dropped (the default policy, unchanged) ...
    alone = run(0)
    assert [r.cancel_reason for r in alone] == ["kvapp: watcher fell behind by more than 3 events"]
    # ... but one whose stream is full is set aside before reaching its own bound, and catches
    # up.
    crowded = run(BOUND - 1000)
    assert not any(r.canceled for r in crowded)
    assert [e.kv.value for r in crowded for e in r.events] == [b"v%d" % i for i in range(10)]


def test_progress_ticks_are_skipped_while_the_stream_is_full() -> None:
    store = Store()
    hub = WatchHub(store, max_stream_bytes=BOUND)
    s = hub.open_stream()
    for i in range(1000):
        s.watch(b"idle%d" % i, progress_notify=True)
    s.take()
    for _ in range(50):
        hub.progress_tick()
        check_stream_bound(s)
    fit = BOUND // response_cost(WatchResponse(0, 1))
    assert len(drain(s)) == fit < 1000


def test_held_memory_is_bounded_by_a_constant_not_by_the_puts() -> None:
    """tracemalloc: a stalled stream of 300 watchers adds about its bound to what the same puts
    cost a store with no watchers, whether there are 200 puts or 2,000."""

    def traced_growth(watchers: int, puts: int) -> int:
        store = Store()
        hub = WatchHub(store, max_stream_bytes=BOUND)
        s = hub.open_stream()
        for _ in range(watchers):
            s.watch(b"k")
        s.take()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(puts):
                store.put(b"k", b"v%d" % i)
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()

    for puts in (200, 2000):
        held = traced_growth(300, puts) - traced_growth(0, puts)
        # Unbounded, this was 300 * puts responses: about 17 MB at 200 puts, 170 MB at 2,000.
        assert held < 2 * BOUND, (puts, held)


def test_a_client_slower_than_the_writes_spreads_its_lag_over_all_its_watchers() -> None:
    store, _, s = stalled(100, 0)
    got = dict.fromkeys(range(100), 0)
    for i in range(300):  # each put has 100 events for this client, which takes 50 a round
        store.put(b"k", b"v%d" % i)
        for r in s.take(50):
            got[r.watch_id] += len(r.events)
        check_stream_bound(s)
    # Watchers take turns at catching up (round robin, each its whole backlog): none starves
    # while others keep up. Without turns, some got 3 events and others 297.
    assert sum(got.values()) == 300 * 50
    assert min(got.values()) >= 300 * 50 // 100 // 4, sorted(got.values())
