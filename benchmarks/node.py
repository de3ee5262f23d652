"""raftlib.Node throughput and latency: 3 Nodes on one asyncio event loop, no I/O.

Each Node runs over MemoryStorage (its writes still go through the Node's worker thread, as a
durable storage's would) and the Nodes are joined by an in-memory transport that delivers every
message with ``loop.call_soon``. Measures:

* committed proposals/s with ``--inflight`` proposals (default 256) kept in flight on the leader:
  that many tasks, each awaiting ``Node.propose`` in a loop (a proposal counts once it is
  committed and applied on the leader, i.e. when ``propose`` returns);
* the latency of a lone proposal (one at a time, nothing else in flight): p50 and p99.

Each figure is the median of ``--runs`` runs, each on a fresh cluster. Prints the figures with
the load average and appends them to docs/benchmarks.md.

    python -m benchmarks.node [--runs 5] [--proposals 20000] [--inflight 256] [--lone 2000]
                              [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import pathlib
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence

from raftlib import ConfState, MemoryStorage, Message
from raftlib.node import Committed, Node

PAYLOAD = b"x" * 128
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


class _Cluster:
    def __init__(self, ids: Sequence[int] = (1, 2, 3)) -> None:
        self.ids = tuple(ids)
        self.nodes: dict[int, Node] = {}
        self.applied = dict.fromkeys(self.ids, 0)

    def _send(self, msgs: Sequence[Message]) -> None:
        call_soon = asyncio.get_running_loop().call_soon
        nodes = self.nodes
        for m in msgs:
            call_soon(nodes[m.to].receive, m)

    def _apply_for(self, i: int) -> Callable[[Committed], None]:
        applied = self.applied

        def apply(c: Committed) -> None:
            applied[i] += 1

        return apply

    async def start(self) -> Node:
        for i in self.ids:
            node = Node(
                i,
                MemoryStorage(ConfState(voters=self.ids)),
                send=self._send,
                apply=self._apply_for(i),
                rng=random.Random(i),
                tick_interval=0.05,
                request_timeout=60.0,
            )
            self.nodes[i] = node
            node.start()
        leader = await self.nodes[self.ids[0]].wait_leader(timeout=30)
        return self.nodes[leader]

    async def stop(self) -> None:
        for n in self.nodes.values():
            await n.stop()


async def _throughput(total: int, inflight: int) -> float:
    c = _Cluster()
    leader = await c.start()
    try:
        for _ in range(200):  # warm-up
            await leader.propose(PAYLOAD)
        per_task, extra = divmod(total, inflight)

        async def client(n: int) -> None:
            for _ in range(n):
                await leader.propose(PAYLOAD)

        start = time.perf_counter()
        await asyncio.gather(*(client(per_task + (k < extra)) for k in range(inflight)))
        elapsed = time.perf_counter() - start
    finally:
        await c.stop()
    return total / elapsed


async def _latency(samples: int) -> list[float]:
    c = _Cluster()
    leader = await c.start()
    out: list[float] = []
    try:
        for _ in range(100):  # warm-up
            await leader.propose(PAYLOAD)
        for _ in range(samples):
            t = time.perf_counter()
            await leader.propose(PAYLOAD)
            out.append(time.perf_counter() - t)
    finally:
        await c.stop()
    return out


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--proposals", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--lone", type=int, default=2_000, help="lone proposals timed per run")
    parser.add_argument("--no-write", action="store_true", help="do not append to the docs")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    rates: list[float] = []
    p50s: list[float] = []
    p99s: list[float] = []
    for _ in range(args.runs):
        # Interleaved, so both see the same machine load.
        rates.append(asyncio.run(_throughput(args.proposals, args.inflight)))
        lat = asyncio.run(_latency(args.lone))
        p50s.append(_pct(lat, 0.50))
        p99s.append(_pct(lat, 0.99))
    load_end = os.getloadavg()[0]
    rate = statistics.median(rates)
    p50 = statistics.median(p50s) * 1e3
    p99 = statistics.median(p99s) * 1e3
    rows = [
        (
            f"committed proposals/s, {args.inflight} in flight on the leader",
            f"{rate:,.0f}",
            f"{min(rates):,.0f}-{max(rates):,.0f}",
            ">= 50,000",
        ),
        (
            "lone proposal latency p50 (ms)",
            f"{p50:.3f}",
            f"{min(p50s) * 1e3:.3f}-{max(p50s) * 1e3:.3f}",
            "<= 1",
        ),
        (
            "lone proposal latency p99 (ms)",
            f"{p99:.3f}",
            f"{min(p99s) * 1e3:.3f}-{max(p99s) * 1e3:.3f}",
            "-",
        ),
    ]
    for name, value, spread, target in rows:
        print(f"{name}: {value} (runs: {spread}; target {target})")
    print(f"load average {load_start:.2f} at the start, {load_end:.2f} at the end")
    if args.no_write:
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## raftlib Node ({stamp})\n",
        f"\n`python -m benchmarks.node`: 3 `raftlib.Node`s on one asyncio event loop, "
        f"MemoryStorage (written through each Node's worker thread), an in-memory transport "
        f"delivering with `call_soon`; 128-byte proposals on the leader; median of {args.runs} "
        f"runs ({args.proposals:,} proposals per throughput run, {args.lone:,} lone proposals "
        f"per latency run). Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load_start:.2f} at the start and {load_end:.2f} "
        "at the end of the run.\n\n",
        "| measure | median | range over runs | target |\n|---|---:|---:|---:|\n",
    ]
    for name, value, spread, target in rows:
        lines.append(f"| {name} | {value} | {spread} | {target} |\n")
    with DOCS.open("a") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
