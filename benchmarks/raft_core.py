"""raftlib core throughput: a 3-node cluster in one process, no I/O, driven via the public API.

Measures committed entries per second with one proposal per Ready cycle and with 64 proposals
per cycle (128-byte payloads), and the cbor2 codec's message encode+decode rate. Each figure is
the median of several runs. Prints the figures and appends them to docs/benchmarks.md.

    python -m benchmarks.raft_core [--runs 5] [--entries 20000] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import random
import statistics
import time

from raftlib import Config, ConfState, MemoryStorage, Message, RawNode
from raftlib.codec import decode_message, encode_message
from raftlib.types import Entry, MessageType

PAYLOAD = b"x" * 128
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


class _Cluster:
    def __init__(self) -> None:
        ids = (1, 2, 3)
        self.storages = {i: MemoryStorage(ConfState(voters=ids)) for i in ids}
        self.nodes = {
            i: RawNode(
                Config(
                    id=i,
                    storage=self.storages[i],
                    election_tick=10,
                    heartbeat_tick=1,
                    rng=random.Random(i),
                    max_inflight_msgs=4096,
                )
            )
            for i in ids
        }
        self.applied = 0
        self.nodes[1].campaign()
        self.settle()
        self.applied = 0

    def settle(self) -> None:
        nodes = self.nodes
        storages = self.storages
        pending: list[Message] = []
        while True:
            for i, node in nodes.items():
                while node.has_ready():
                    rd = node.ready()
                    pending.extend(rd.messages)
                    st = storages[i]
                    if rd.snapshot is not None:
                        st.apply_snapshot(rd.snapshot)
                    if rd.entries:
                        st.append(rd.entries)
                    if rd.hard_state is not None:
                        st.set_hard_state(rd.hard_state)
                    pending.extend(rd.persisted_messages)
                    if i == 1:
                        self.applied += len(rd.committed_entries)
                    node.advance(rd)
            if not pending:
                return
            msgs, pending = pending, []
            for m in msgs:
                nodes[m.to].step(m)


def _run(batch: int, total: int) -> float:
    c = _Cluster()
    leader = c.nodes[1]
    start = time.perf_counter()
    proposed = 0
    while proposed < total:
        for _ in range(batch):
            leader.propose(PAYLOAD)
        proposed += batch
        c.settle()
    elapsed = time.perf_counter() - start
    if c.applied < total:
        raise RuntimeError(f"only {c.applied} of {total} entries committed")
    return c.applied / elapsed


def _codec_rate(n: int) -> float:
    m = Message(
        MessageType.APP,
        to=2,
        from_=1,
        term=3,
        log_term=3,
        index=1000,
        entries=tuple(Entry(term=3, index=1001 + i, data=PAYLOAD) for i in range(8)),
        commit=999,
    )
    start = time.perf_counter()
    for _ in range(n):
        decode_message(encode_message(m))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--no-write", action="store_true", help="do not append to the docs")
    args = parser.parse_args()

    unbatched = [_run(1, args.entries // 4) for _ in range(args.runs)]
    batched = [_run(64, args.entries) for _ in range(args.runs)]
    codec = [_codec_rate(20_000) for _ in range(args.runs)]
    rows = [
        ("committed entries/s, 1 proposal per Ready cycle", statistics.median(unbatched), 5_000),
        ("committed entries/s, 64 proposals per Ready cycle", statistics.median(batched), 50_000),
        ("APP messages (8 x 128 B entries) encoded+decoded/s", statistics.median(codec), None),
    ]
    for name, value, target in rows:
        goal = f" (target >= {target:,})" if target else ""
        print(f"{name}: {value:,.0f}{goal}")
    if args.no_write:
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## raftlib core ({stamp})\n",
        f"\n`python -m benchmarks.raft_core`: 3 nodes in one process, MemoryStorage, no I/O; "
        f"median of {args.runs} runs; Python {platform.python_version()} on "
        f"{platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end of the run.\n\n",
        "| measure | median | target |\n|---|---:|---:|\n",
    ]
    for name, value, target in rows:
        lines.append(f"| {name} | {value:,.0f} | {f'{target:,}' if target else '-'} |\n")
    if not DOCS.exists():
        DOCS.write_text("# Benchmarks\n\nFigures measured on this project's CI-class machine.\n")
    with DOCS.open("a") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
