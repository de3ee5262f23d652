"""raftlib core throughput: a 3-node cluster in one process, no I/O, driven via the public API.

Measures committed entries per second with one proposal per Ready cycle, with 64 proposals per
cycle made by 64 ``propose`` calls, and with 64 proposals per cycle made by one ``propose_many``
call (128-byte payloads), and the cbor2 codec's message encode+decode rate. Each figure is the
median of several runs. The configuration matches the reference Go harness (``bench gocore``):
CheckQuorum and PreVote on, 256 appends in flight at most, 1 MiB per message.

With ``--gocore`` each run is paired with etcd/raft's Go core driven the same way
(``../shared/bench/bench gocore``, same node count and batch), run right after it, and the
figures are quoted as ratios raftlib / Go: the median of the per-pair ratios and their range.
With ``--baseline REV`` the same loops also run, interleaved, each in its own process, against
the raftlib of git revision REV and against this tree's, and the figures are quoted as ratios
this tree / REV of CPU-time rates (CPU time is less disturbed than wall time by other work on a
shared machine). Every figure carries the 1-minute load average at the start and end of its
runs.

Prints the figures and appends them to docs/benchmarks.md.

    python -m benchmarks.raft_core [--runs 5] [--entries 20000] [--gocore] [--go-entries 200000]
                                   [--baseline REV] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import pathlib
import platform
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable

from raftlib import Config, ConfState, MemoryStorage, Message, RawNode
from raftlib.codec import decode_message, encode_message
from raftlib.types import Entry, MessageType

PAYLOAD = b"x" * 128
ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BENCH = ROOT.parent / "shared" / "bench" / "bench"
BENCH_BUILD = pathlib.Path(
    os.environ.get("BENCH_BUILD") or pathlib.Path(os.environ.get("TMPDIR") or "/tmp") / "kvbench"
)


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
                    check_quorum=True,
                    pre_vote=True,
                    max_inflight_msgs=256,
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


def _run(batch: int, total: int, *, many: bool = False) -> float:
    return _run_timed(batch, total, many=many)[0]


def _run_timed(batch: int, total: int, *, many: bool = False) -> tuple[float, float]:
    """Committed entries per second of wall time and of CPU time."""
    c = _Cluster()
    leader = c.nodes[1]
    payloads = [PAYLOAD] * batch
    start = time.perf_counter()
    cpu = time.process_time()
    proposed = 0
    while proposed < total:
        if many:
            leader.propose_many(payloads)
        else:
            for _ in range(batch):
                leader.propose(PAYLOAD)
        proposed += batch
        c.settle()
    cpu = time.process_time() - cpu
    elapsed = time.perf_counter() - start
    if c.applied < total:
        raise RuntimeError(f"only {c.applied} of {total} entries committed")
    return c.applied / elapsed, c.applied / cpu


def _in_process(tree: pathlib.Path, batch: int, total: int, *, many: bool) -> float | None:
    """CPU-time rate of :func:`_run_timed` in a fresh process importing ``tree``'s raftlib.

    None when that raftlib lacks what the measure needs (``propose_many``).
    """
    out = subprocess.run(
        [sys.executable, __file__, "--child", f"{batch},{total},{int(many)}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(tree)},
    ).stdout
    value = json.loads(out.strip().splitlines()[-1])
    return None if value is None else float(value)


def _checkout(rev: str, into: pathlib.Path) -> None:
    """Extract ``rev``'s raftlib package into ``into`` (git archive; the work tree is untouched)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "raftlib"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


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


def _gocore_missing() -> str:
    """Why ``bench gocore`` cannot run here ("" if it can)."""
    if not BENCH.exists():
        return f"{BENCH} not found"
    if not (BENCH_BUILD / "bin" / "gocore").exists():
        return f"{BENCH_BUILD / 'bin' / 'gocore'} not built (run {BENCH.parent / 'setup.sh'})"
    return ""


def _gocore(batch: int, entries: int) -> float:
    out = subprocess.run(
        [
            str(BENCH),
            "gocore",
            "--nodes",
            "3",
            "--batch",
            str(batch),
            "--entries",
            str(entries),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["entries_per_s"])


class _Row:
    """One measure: its runs, the paired Go runs (if any), and the load around them."""

    def __init__(self, name: str, target: str, fn: Callable[[], float]) -> None:
        self.name = name
        self.target = target
        self.fn = fn
        self.values: list[float] = []
        self.go: list[float] = []
        self.loads: list[float] = []

    def run(self, go: Callable[[], float] | None) -> None:
        self.loads.append(os.getloadavg()[0])
        self.values.append(self.fn())
        if go is not None:
            self.go.append(go())
        self.loads.append(os.getloadavg()[0])

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def ratio(self) -> tuple[float, float, float] | None:
        if not self.go:
            return None
        ratios = [v / g for v, g in zip(self.values, self.go, strict=True)]
        return statistics.median(ratios), min(ratios), max(ratios)

    def load(self) -> str:
        return f"{min(self.loads):.1f}-{max(self.loads):.1f}"


def _versus_baseline(
    rev: str, runs: int, entries: int
) -> list[tuple[str, float, float, list[float], list[float]]]:
    """(measure, this tree's median, the baseline's median, per-pair ratios, loads) per measure."""
    measures = [
        ("1 proposal per Ready cycle", 1, entries // 4, False),
        ("64 proposals per Ready cycle (64 propose calls)", 64, entries, False),
        ("64 proposals per Ready cycle (one propose_many call)", 64, entries, True),
    ]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        base = pathlib.Path(tmp)
        _checkout(rev, base)
        for name, batch, total, many in measures:
            mine: list[float] = []
            theirs: list[float] = []
            loads: list[float] = []
            for _ in range(runs):
                loads.append(os.getloadavg()[0])
                a = _in_process(ROOT, batch, total, many=many)
                b = _in_process(base, batch, total, many=many)
                loads.append(os.getloadavg()[0])
                if a is None or b is None:
                    break
                mine.append(a)
                theirs.append(b)
            if mine:
                ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
                out.append(
                    (name, statistics.median(mine), statistics.median(theirs), ratios, loads)
                )
            else:
                print(f"vs {rev}: {name} skipped (that raftlib has no propose_many)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--gocore", action="store_true", help="pair each run with bench gocore")
    parser.add_argument("--go-entries", type=int, default=200_000, help="entries per Go run")
    parser.add_argument(
        "--baseline", metavar="REV", help="also compare with the raftlib of git revision REV"
    )
    parser.add_argument("--no-write", action="store_true", help="do not append to the docs")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # batch,total,many: one CPU-time rate
    args = parser.parse_args()
    if args.child:
        batch, total, many = (int(x) for x in args.child.split(","))
        try:
            print(json.dumps(_run_timed(batch, total, many=bool(many))[1]))
        except AttributeError:  # an older raftlib without propose_many
            print(json.dumps(None))
        return

    go_skipped = ""
    if args.gocore:
        go_skipped = _gocore_missing()
        if go_skipped:
            print(f"--gocore skipped: {go_skipped}")

    def go(batch: int) -> Callable[[], float] | None:
        if not args.gocore or go_skipped:
            return None
        return lambda: _gocore(batch, args.go_entries)

    rows = [
        _Row(
            "committed entries/s, 1 proposal per Ready cycle",
            "0.15x Go" if args.gocore else "5,000",
            lambda: _run(1, args.entries // 4),
        ),
        _Row(
            "committed entries/s, 64 proposals per Ready cycle (64 propose calls)",
            "2.0x Go" if args.gocore else "50,000",
            lambda: _run(64, args.entries),
        ),
        _Row(
            "committed entries/s, 64 proposals per Ready cycle (one propose_many call)",
            "2.0x Go" if args.gocore else "50,000",
            lambda: _run(64, args.entries, many=True),
        ),
    ]
    codec = _Row(
        "APP messages (8 x 128 B entries) encoded+decoded/s", "-", lambda: _codec_rate(20_000)
    )
    for _ in range(args.runs):
        # Interleaved: every measure, and its Go pair, sees the same stretch of machine load.
        rows[0].run(go(1))
        rows[1].run(go(64))
        rows[2].run(go(64))  # a second Go run at 64/cycle, paired with this one
        codec.run(None)

    versus = _versus_baseline(args.baseline, args.runs, args.entries) if args.baseline else []

    lines_out: list[str] = []
    for row in [*rows, codec]:
        r = row.ratio()
        tail = ""
        if r is not None:
            tail = (
                f"; Go {statistics.median(row.go):,.0f}; raftlib/Go {r[0]:.2f} "
                f"({r[1]:.2f}-{r[2]:.2f})"
            )
        lines_out.append(
            f"{row.name}: {row.median:,.0f}{tail} (target {row.target}; load {row.load()})"
        )
    for name, mine, base, ratios, loads in versus:
        lines_out.append(
            f"vs {args.baseline}, {name}: {mine:,.0f} vs {base:,.0f} CPU-time entries/s, "
            f"ratio {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"(load {min(loads):.1f}-{max(loads):.1f})"
        )
    for line in lines_out:
        print(line)
    if args.no_write:
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## raftlib core ({stamp})\n",
        f"\n`python -m benchmarks.raft_core{' --gocore' if args.gocore else ''}"
        f"{f' --baseline {args.baseline}' if args.baseline else ''}`: 3 nodes in one "
        f"process, MemoryStorage, no I/O; median of {args.runs} runs; Python "
        f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores. "
        "The load column is the 1-minute load average over each measure's runs.\n",
    ]
    if args.gocore and not go_skipped:
        lines.append(
            "\nEach run was followed by `bench gocore` (etcd/raft v3.4, Go) at the same node count "
            f"and batch ({args.go_entries:,} entries per Go run); the ratio is the median of the "
            "per-pair ratios raftlib/Go, with their range.\n"
        )
        lines.append(
            "\n| measure | median | Go median | raftlib/Go (range) | target | load |\n"
            "|---|---:|---:|---:|---:|---:|\n"
        )
        for row in rows:
            r = row.ratio()
            assert r is not None
            lines.append(
                f"| {row.name} | {row.median:,.0f} | {statistics.median(row.go):,.0f} | "
                f"{r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f}) | {row.target} | {row.load()} |\n"
            )
        lines.append(f"| {codec.name} | {codec.median:,.0f} | - | - | - | {codec.load()} |\n")
    else:
        if go_skipped:
            lines.append(f"\n`--gocore` was skipped: {go_skipped}.\n")
        lines.append("\n| measure | median | target | load |\n|---|---:|---:|---:|\n")
        lines.extend(
            f"| {row.name} | {row.median:,.0f} | {row.target} | {row.load()} |\n"
            for row in [*rows, codec]
        )
    if versus:
        lines.append(
            f"\nThis tree against the raftlib of `{args.baseline}` (`--baseline`), the same loops, "
            "each run in its own process, alternating; CPU-time rates, median of the per-pair "
            "ratios:\n\n| measure | this tree | baseline | ratio (range) | load |\n"
            "|---|---:|---:|---:|---:|\n"
        )
        lines.extend(
            f"| {name} | {mine:,.0f} | {base:,.0f} | {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {min(loads):.1f}-{max(loads):.1f} |\n"
            for name, mine, base, ratios, loads in versus
        )
    if not DOCS.exists():
        DOCS.write_text("# Benchmarks\n\nFigures measured on this project's CI-class machine.\n")
    with DOCS.open("a") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
