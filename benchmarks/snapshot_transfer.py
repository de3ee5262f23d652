"""A follower that catches up by snapshot: its peak memory, its memory after, and the time taken.

Three ``kvapp serve`` members (fsync on, ``--snapshot-count`` small so that the log is compacted
often). One follower is stopped; ``--keys`` distinct keys with ``--value-size``-byte values are
written through the other two; the follower is started again, and since the leader's log no
longer reaches back to it, the leader sends it a snapshot of the whole state. Measured: the
follower's peak RSS (``VmHWM`` in ``/proc/<pid>/status``, over its new process's life) and RSS
once it holds every key, the time from its start until a serializable count on it sees every
key, and the snapshot's size (from its log). The leader's RSS is shown beside it for scale.

What it checks: that a snapshot transfer costs the follower little memory beyond the state
itself (issue 11: snapshots are never held whole in memory). ``--tree`` runs the members from
another checkout (say a ``git worktree`` of an older commit), to compare.

    python -m benchmarks.snapshot_transfer [--keys 300000] [--reps 2] [--tree PATH] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import pathlib
import re
import statistics
import time

from benchmarks.kv import ROOT, KvappCluster, source

DOCS = ROOT / "docs" / "benchmarks.md"
_RECEIVED = re.compile(r"received snapshot at index \d+ \((\d+) bytes")


def _mib(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024
    return out


async def _load(endpoints: list[str], keys: int, value_size: int) -> None:
    from kvapp.client import AsyncClient

    value = b"v" * value_size
    async with AsyncClient(endpoints, request_timeout=30.0) as c:
        window = asyncio.Semaphore(256)

        async def put(i: int) -> None:
            async with window:
                await c.put(b"key%08d" % i, value)

        await asyncio.gather(*(put(i) for i in range(keys)))


async def _count(endpoint: str) -> int:
    from kvapp.client import AsyncClient

    async with AsyncClient([endpoint], request_timeout=5.0, connect_timeout=1.0) as c:
        r = await c.get(b"key", b"kez", serializable=True, count_only=True)
        return r.count


def one_run(a: argparse.Namespace, parent: pathlib.Path) -> dict[str, float]:
    """One cluster: load with a follower down, restart it, measure its catch-up."""
    tree = pathlib.Path(a.tree).resolve() if a.tree else ROOT
    kc = KvappCluster(parent, extra_args=["--snapshot-count", str(a.snapshot_count)], tree=tree)
    kc.start()
    try:
        leader = kc.leader_name()
        behind = next(m.name for m in kc.members if m.name != leader)
        kc.stop_member(behind)
        others = [f"127.0.0.1:{m.client_port}" for m in kc.members if m.name != behind]
        t0 = time.monotonic()
        asyncio.run(_load(others, a.keys, a.value_size))
        load_s = time.monotonic() - t0
        me = next(m for m in kc.members if m.name == behind)
        t0 = time.monotonic()
        proc = kc.spawn(behind)
        deadline = t0 + a.timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{behind} exited: see {kc.dir / behind}.log")
            try:
                if asyncio.run(_count(f"127.0.0.1:{me.client_port}")) == a.keys:
                    break
            except Exception:  # noqa: BLE001 - not serving yet: poll again
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{behind} did not catch up within {a.timeout:.0f} s")
            time.sleep(0.1)
        catch_up_s = time.monotonic() - t0
        follower = _mib(proc.pid)
        lead = _mib(kc.pid_of(leader))
        found = _RECEIVED.findall((kc.dir / f"{behind}.log").read_text(errors="replace"))
        if not found:
            raise SystemExit(f"{behind} caught up without a snapshot: lower --snapshot-count")
        return {
            "load_s": load_s,
            "snapshot_mib": int(found[-1]) / 2**20,
            "peak_mib": follower["VmHWM"],
            "rss_mib": follower["VmRSS"],
            "leader_rss_mib": lead["VmRSS"],
            "catch_up_s": catch_up_s,
        }
    finally:
        kc.stop()
        kc.remove()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=300_000)
    p.add_argument("--value-size", type=int, default=256)
    p.add_argument("--snapshot-count", type=int, default=2000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--tree", help="run the members from this checkout (default: this one)")
    p.add_argument("--data", default="/tmp/kvbench/run", help="where the data directories go")
    p.add_argument("--no-write", action="store_true", help="do not append to docs/benchmarks.md")
    a = p.parse_args()
    parent = pathlib.Path(a.data)
    parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    loads = [os.getloadavg()[0]]
    runs = []
    for i in range(a.reps):
        r = one_run(a, parent)
        loads.append(os.getloadavg()[0])
        runs.append(r)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    tree = pathlib.Path(a.tree).resolve() if a.tree else ROOT
    rows = [
        ("snapshot sent", f"{med['snapshot_mib']:.1f} MiB"),
        ("follower's peak RSS while catching up", f"{med['peak_mib']:.0f} MiB"),
        ("follower's RSS once caught up", f"{med['rss_mib']:.0f} MiB"),
        ("peak beyond the RSS after", f"{med['peak_mib'] - med['rss_mib']:.0f} MiB"),
        ("leader's RSS", f"{med['leader_rss_mib']:.0f} MiB"),
        ("catch-up (start to every key served)", f"{med['catch_up_s']:.1f} s"),
    ]
    for name, value in rows:
        print(f"{name}: {value}")
    if a.no_write:
        return
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "",
        f"## A follower catching up by snapshot (benchmarks/snapshot_transfer.py), {now}",
        "",
        f"3 `kvapp serve` members, fsync on, `--snapshot-count {a.snapshot_count}`. A follower "
        f"stopped while {a.keys:,} keys with {a.value_size}-byte values were written, then "
        "started again; the leader's log no longer reaching back to it, it got a snapshot. "
        "Peak RSS is the follower process's `VmHWM`. Medians of "
        f"{a.reps} run(s); kvapp at {source(tree)}; whole run "
        f"{(time.monotonic() - started) / 60:.0f} min, 1-min load average "
        f"{min(loads):.2f}-{max(loads):.2f}.",
        "",
        "| measure | figure |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    with DOCS.open("a") as f:
        f.write("\n".join(lines))
    print(f"appended to {DOCS}")


if __name__ == "__main__":
    main()
