"""kvapp MVCC store: puts/s, txn/s, prefix-range latency and memory per key, at 10k-1M keys.

For each store size N (keys ``k/<group>/<item>``, 100 keys per group, 64-byte values):

- load: N puts of new keys, in random order (so the sorted index takes real inserts);
- updates: puts to random existing keys (each adds a version to the key's history);
- txn/s: compare-and-swap txns (``mod_revision == m`` then put), and etcd-lock txns
  (``create_revision == 0`` then put, else get) on new keys;
- range latency (median / p99): a 100-key prefix, the same prefix with ``limit=1``, a single
  key; and, to show what the sorted index buys, the same prefix found by scanning every key;
- compaction of the update history, and a whole-state snapshot and verified restore;
- memory per key: tracemalloc of a store holding N keys (one version each), in a separate build.

Prints the figures and appends a dated section to docs/benchmarks.md.

    python -m benchmarks.mvcc [--sizes 10000,100000,1000000] [--no-write]

The 1M-key size takes about a minute of the whole run (and ~0.5 GB); leave it out with
``--sizes 10000,100000`` for a quick look.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import pathlib
import platform
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable

from kvapp.kvstate import KvState
from kvapp.mvcc import (
    Compare,
    CompareResult,
    CompareTarget,
    PutRequest,
    RangeRequest,
    Store,
    prefix_range_end,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
GROUP = 100
VALUE_SIZE = 64


def key(group: int, item: int) -> bytes:
    return b"k/%07d/%03d" % (group, item)


def all_keys(n: int, rng: random.Random) -> list[bytes]:
    keys = [key(i // GROUP, i % GROUP) for i in range(n)]
    rng.shuffle(keys)
    return keys


def value(i: int) -> bytes:
    return (b"%08d" % i) * (VALUE_SIZE // 8)


def load(store: Store, keys: list[bytes]) -> float:
    t = time.perf_counter()
    for i, k in enumerate(keys):
        store.put(k, value(i))
    return time.perf_counter() - t


def latencies(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """Median and p99 in microseconds."""
    samples = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def measure(n: int, seed: int = 1) -> dict[str, float]:
    rng = random.Random(seed)
    keys = all_keys(n, rng)
    store = Store()
    r: dict[str, float] = {"n": n}
    r["load_s"] = load(store, keys)
    r["load_puts_s"] = n / r["load_s"]

    updates = 50_000
    picks = [rng.choice(keys) for _ in range(updates)]
    t = time.perf_counter()
    for i, k in enumerate(picks):
        store.put(k, value(i))
    r["update_puts_s"] = updates / (time.perf_counter() - t)

    txns = 20_000
    picks = [rng.choice(keys) for _ in range(txns)]
    t = time.perf_counter()
    for i, k in enumerate(picks):
        current = store.get(k)
        assert current is not None
        store.txn(
            [Compare(k, CompareTarget.MOD, CompareResult.EQUAL, current.mod_revision)],
            [PutRequest(k, value(i))],
        )
    r["cas_txn_s"] = txns / (time.perf_counter() - t)

    t = time.perf_counter()
    for i in range(txns):
        lock_key = b"lock/%07d" % i
        store.txn(
            [Compare(lock_key, CompareTarget.CREATE, CompareResult.EQUAL, 0)],
            [PutRequest(lock_key, b"")],
            [RangeRequest(lock_key)],
        )
    r["lock_txn_s"] = txns / (time.perf_counter() - t)

    groups = n // GROUP

    def prefix() -> tuple[bytes, bytes]:
        p = b"k/%07d/" % rng.randrange(groups)
        return p, prefix_range_end(p)

    def range_prefix() -> object:
        p, end = prefix()
        resp = store.range(p, end)
        assert resp.count == GROUP
        return resp

    def range_first() -> object:
        p, end = prefix()
        return store.range(p, end, limit=1)

    def get_one() -> object:
        return store.range(key(rng.randrange(groups), rng.randrange(GROUP)))

    r["range_med_us"], r["range_p99_us"] = latencies(range_prefix, 3000)
    r["first_med_us"], r["first_p99_us"] = latencies(range_first, 3000)
    r["get_med_us"], r["get_p99_us"] = latencies(get_one, 3000)

    plain = list(keys)

    def scan_prefix() -> object:
        p, _ = prefix()
        found = [k for k in plain if k.startswith(p)]
        assert len(found) == GROUP
        return found

    r["scan_med_us"], _ = latencies(scan_prefix, 20 if n <= 100_000 else 5)

    t = time.perf_counter()
    store.compact(store.revision)
    r["compact_s"] = time.perf_counter() - t

    state = KvState(time.monotonic, grace=1.0)
    state.store.replace_state(store)
    t = time.perf_counter()
    data = state.snapshot_bytes()
    r["snapshot_s"] = time.perf_counter() - t
    r["snapshot_mb"] = len(data) / 1e6
    restored = KvState(time.monotonic, grace=1.0)
    t = time.perf_counter()
    restored.restore_bytes(data)
    r["restore_s"] = time.perf_counter() - t
    return r


def memory_per_key(n: int, seed: int = 1) -> tuple[float, float]:
    """Traced bytes per key of a store with n keys, and the key+value payload per key."""
    keys = all_keys(n, random.Random(seed))
    gc.collect()
    tracemalloc.start()
    store = Store()
    for i, k in enumerate(keys):
        store.put(k, value(i))
    del k
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    payload = len(keys[0]) + VALUE_SIZE
    del store
    return traced / n, payload


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def report(rows: list[dict[str, float]], mem: dict[int, tuple[float, float]], secs: float) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        f"## kvapp MVCC store (benchmarks/mvcc.py), {today}",
        "",
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores "
        "shared with other work at the time: figures are indicative. In-process, no Raft, no "
        f"I/O; keys `k/<group>/<item>` ({len(key(0, 0))} bytes), 100 keys per group, "
        f"{VALUE_SIZE}-byte values, loaded in random order. Whole run {secs:.0f} s.",
        "",
        "The key index keeps keys and their versions in sorted sublists "
        "(`kvapp.mvcc.sortedmap`): a prefix range bisects to its first key and walks only the "
        "keys in it, "
        'so its cost grows with the log of the store size, not the size. The "scan" column '
        "is the same prefix found by testing every key, what an unsorted index would cost.",
        "",
        "| keys | load puts/s | update puts/s | CAS txn/s | lock txn/s "
        "| 100-key prefix µs (med / p99) | limit=1 µs | get µs | scan µs "
        "| bytes/key (payload) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = int(r["n"])
        per_key, payload = mem.get(n, (float("nan"), float("nan")))
        lines.append(
            f"| {n:,} | {fmt(r['load_puts_s'])} | {fmt(r['update_puts_s'])} "
            f"| {fmt(r['cas_txn_s'])} | {fmt(r['lock_txn_s'])} "
            f"| {fmt(r['range_med_us'])} / {fmt(r['range_p99_us'])} "
            f"| {fmt(r['first_med_us'])} | {fmt(r['get_med_us'])} | {fmt(r['scan_med_us'])} "
            f"| {fmt(per_key)} ({payload:.0f}) |"
        )
    lines += [
        "",
        "Compaction after the updates, whole-state snapshot (CBOR) and verified restore:",
        "",
        "| keys | compact s | snapshot s | snapshot MB | restore s |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {int(r['n']):,} | {r['compact_s']:.2f} | {r['snapshot_s']:.2f} "
        f"| {r['snapshot_mb']:.1f} | {r['restore_s']:.2f} |"
        for r in rows
    ]
    lines += [
        "",
        "bytes/key: tracemalloc of a store holding one version per key (index, history list, "
        "the version's record, change-log slot, key object); the payload in brackets is the "
        "key and value bytes alone. Puts and txns each include building the response. A "
        "limit=1 range still counts the whole range (etcd's `count`), so it costs about as "
        "much as the full 100-key range minus building the response.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="10000,100000,1000000",
        help="comma-separated store sizes (multiples of 100)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    start = time.perf_counter()
    rows = []
    mem = {}
    for n in sizes:
        rows.append(measure(n))
        print({k: round(v, 2) for k, v in rows[-1].items()}, flush=True)
        gc.collect()
        mem[n] = memory_per_key(n)
        print(f"{n:,} keys: {mem[n][0]:,.0f} bytes/key (payload {mem[n][1]:.0f})", flush=True)
        gc.collect()
    text = report(rows, mem, time.perf_counter() - start)
    print(text)
    if not args.no_write:
        with DOCS.open("a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
