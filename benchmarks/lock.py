"""Lock handoffs per second: kvapp.recipes' lock vs etcd 3.4's, 3 members each, fsync on.

N contenders, each with its own session (lease), take and release one lock in a loop; a
*handoff* is one acquisition (then its release). With one contender that is the uncontended
round trip (put + delete); with many, each release hands the lock to the next in line, who was
woken by its watch. Counted over ``--seconds`` after ``--warmup`` unmeasured seconds.

Systems (``--systems``):

``kvapp``
    kvapp.recipes.AsyncLock (this repository's recipe) on one AsyncClient over the native
    protocol, in this process, against a fresh 3-member ``kvapp serve`` cluster.
``kvapp-go``
    etcd's own Go client recipe (``clientv3/concurrency.Mutex``, 3.4) against the same kvapp
    cluster, through kvapp's etcd v3 gRPC API: the same client as etcd's line below.
``etcd``
    the same Go program against a fresh 3-member etcd 3.4 (``../shared/bench/etcd_cluster.sh``).

The Go program is written out and built in GOPATH mode against Debian's etcd sources into
``$BENCH_BUILD/bin/golock`` (as ``../shared/bench/setup.sh`` builds goload); if ``go``, the
sources, ``etcd`` or ``etcd_cluster.sh`` are missing, the Go lines are skipped with a message
and kvapp's figures are printed alone.

    python -m benchmarks.lock [--seconds 5] [--warmup 1] [--contenders 1,10,100]
                              [--systems kvapp,kvapp-go,etcd]

Prints one JSON line per point and a table; writes nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.kv import BENCH_DIR, BUILD, BenchError, EtcdCluster, KvappCluster, machine
from kvapp.client import AsyncClient
from kvapp.errors import KvappError
from kvapp.recipes import AcquireTimeout, AsyncLock, AsyncSession

ROOT = pathlib.Path(__file__).resolve().parent.parent
ETCD_SRC = pathlib.Path("/usr/share/gocode/src/go.etcd.io/etcd/clientv3/concurrency")
SESSION_TTL = 10

Rec = dict[str, Any]

GOLOCK = """\
// golock: N contenders, each with its own concurrency.Session, Lock/Unlock one
// concurrency.Mutex in a loop; prints {"contenders","handoffs","seconds","handoffs_per_s",
// "errors"} as one JSON line. Written and built by kvapp's benchmarks/lock.py.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated host:port list")
	contenders := flag.Int("contenders", 1, "contenders, each with its own session")
	dur := flag.Duration("duration", 5*time.Second, "measured time")
	warmup := flag.Duration("warmup", time.Second, "unmeasured time before -duration")
	name := flag.String("name", "/bench-lock", "the lock's prefix")
	ttl := flag.Int("ttl", 10, "session TTL in seconds")
	flag.Parse()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: strings.Split(*endpoints, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		fail(err)
	}
	defer cli.Close()
	sessions := make([]*concurrency.Session, *contenders)
	for i := range sessions {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(*ttl))
		if err != nil {
			fail(err)
		}
		defer s.Close()
		sessions[i] = s
	}
	var handoffs, errs int64
	mstart := time.Now().Add(*warmup)
	deadline := mstart.Add(*dur)
	var wg sync.WaitGroup
	for _, s := range sessions {
		wg.Add(1)
		go func(s *concurrency.Session) {
			defer wg.Done()
			m := concurrency.NewMutex(s, *name)
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithDeadline(context.Background(), deadline)
				err := m.Lock(ctx)
				cancel()
				if err != nil {
					if time.Now().Before(deadline) {
						atomic.AddInt64(&errs, 1)
					}
					continue
				}
				if now := time.Now(); !now.Before(mstart) && now.Before(deadline) {
					atomic.AddInt64(&handoffs, 1)
				}
				if err := m.Unlock(context.Background()); err != nil {
					atomic.AddInt64(&errs, 1)
				}
			}
		}(s)
	}
	wg.Wait()
	secs := dur.Seconds()
	json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"contenders": *contenders, "handoffs": handoffs, "seconds": secs,
		"handoffs_per_s": float64(handoffs) / secs, "errors": errs})
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "golock:", err)
	os.Exit(1)
}
"""


# -- the Go side -------------------------------------------------------------------------------


def build_golock() -> tuple[pathlib.Path | None, str]:
    """The built golock binary, or None and why it cannot be built here."""
    missing = [t for t in ("go", "etcd") if shutil.which(t) is None]
    if not ETCD_SRC.is_dir():
        missing.append(f"Debian's etcd sources ({ETCD_SRC})")
    if not (BENCH_DIR / "etcd_cluster.sh").exists():
        missing.append(str(BENCH_DIR / "etcd_cluster.sh"))
    if missing:
        return None, "missing " + ", ".join(missing) + f" (run {BENCH_DIR / 'setup.sh'})"
    src = BUILD / "src" / "golock"
    src.mkdir(parents=True, exist_ok=True)
    (src / "main.go").write_text(GOLOCK)
    binary = BUILD / "bin" / "golock"
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        GO111MODULE="off",
        GOPATH="/usr/share/gocode",
        GOCACHE=str(BUILD / "gocache"),
        GOFLAGS="",
    )
    r = subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if r.returncode != 0:
        return None, f"go build of golock failed: {r.stderr.strip()[-500:]}"
    return binary, ""


def run_golock(binary: pathlib.Path, endpoints: str, n: int, name: str, a: Any) -> Rec:
    r = subprocess.run(
        [
            str(binary),
            "-endpoints",
            endpoints,
            "-contenders",
            str(n),
            "-duration",
            f"{a.seconds}s",
            "-warmup",
            f"{a.warmup}s",
            "-name",
            name,
            "-ttl",
            str(SESSION_TTL),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=a.seconds + a.warmup + 120,
    )
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise BenchError(f"golock exited {r.returncode}: {r.stderr.strip()[-500:]}")
    rec: Rec = json.loads(lines[-1])
    return rec


# -- the kvapp side ----------------------------------------------------------------------------


async def kvapp_handoffs(endpoints: str, n: int, name: str, a: Any) -> Rec:
    """N AsyncLock contenders on one AsyncClient, counted like golock counts."""
    async with AsyncClient(endpoints, request_timeout=10.0) as client:
        sessions = [await AsyncSession(client, ttl=SESSION_TTL).open() for _ in range(n)]
        handoffs = errors = wakeups = 0
        mstart = time.monotonic() + a.warmup
        deadline = mstart + a.seconds

        async def contend(session: AsyncSession) -> None:
            nonlocal handoffs, errors, wakeups
            lock = AsyncLock(client, name, session)
            while time.monotonic() < deadline:
                try:
                    await lock.acquire(timeout=max(deadline - time.monotonic(), 0.001))
                except AcquireTimeout:
                    break
                except KvappError:
                    errors += 1
                    continue
                if mstart <= time.monotonic() < deadline:
                    handoffs += 1
                try:
                    await lock.release()
                except KvappError:
                    errors += 1
            wakeups += lock.wakeups

        await asyncio.gather(*(contend(s) for s in sessions))
        for s in sessions:
            await s.close()
    return {
        "contenders": n,
        "handoffs": handoffs,
        "seconds": a.seconds,
        "handoffs_per_s": handoffs / a.seconds,
        "errors": errors,
        "wakeups": wakeups,
    }


# -- the run -----------------------------------------------------------------------------------


def grpc_endpoints(kc: KvappCluster) -> str:
    return ",".join(f"127.0.0.1:{m.grpc_port}" for m in kc.members)


def run(a: argparse.Namespace) -> list[Rec]:
    systems = a.systems
    binary: pathlib.Path | None = None
    if {"kvapp-go", "etcd"} & set(systems):
        binary, why = build_golock()
        if binary is None:
            print(f"benchmarks/lock.py: etcd's side cannot be driven here: {why}", file=sys.stderr)
            print("benchmarks/lock.py: printing kvapp's figures alone", file=sys.stderr)
            systems = [s for s in systems if s == "kvapp"]
    results: list[Rec] = []

    def record(system: str, n: int, rec: Rec) -> None:
        rec = {"system": system, **rec, **machine()}
        results.append(rec)
        print(json.dumps(rec), flush=True)

    with tempfile.TemporaryDirectory(prefix="lockbench-") as tmp:
        parent = pathlib.Path(tmp)
        if {"kvapp", "kvapp-go"} & set(systems):
            kc = KvappCluster(parent, 3, fsync=True)
            kc.start()
            try:
                for n in a.contenders:
                    if "kvapp" in systems:
                        rec = asyncio.run(kvapp_handoffs(kc.endpoints, n, f"py-{n}", a))
                        record("kvapp", n, rec)
                    if "kvapp-go" in systems and binary is not None:
                        rec = run_golock(binary, grpc_endpoints(kc), n, f"/go-{n}", a)
                        record("kvapp-go", n, rec)
            finally:
                kc.stop()
        if "etcd" in systems and binary is not None:
            ec = EtcdCluster(parent, 3)
            ec.start()
            try:
                for n in a.contenders:
                    record("etcd", n, run_golock(binary, ec.endpoints, n, f"/go-{n}", a))
            finally:
                ec.stop()
    return results


def table(results: Sequence[Rec], contenders: Sequence[int]) -> str:
    rate = {(r["system"], r["contenders"]): r["handoffs_per_s"] for r in results}
    systems = [s for s in ("kvapp", "kvapp-go", "etcd") if any(k[0] == s for k in rate)]
    head = "| contenders | " + " | ".join(f"{s} handoffs/s" for s in systems)
    ratio = "kvapp" in systems and "etcd" in systems
    lines = [head + (" | kvapp/etcd |" if ratio else " |")]
    lines.append("|---" * (len(systems) + 1 + ratio) + "|")
    for n in contenders:
        cells = [f"{rate[(s, n)]:.0f}" if (s, n) in rate else "-" for s in systems]
        row = f"| {n} | " + " | ".join(cells)
        if ratio:
            etcd = rate.get(("etcd", n), 0.0)
            row += f" | {rate.get(('kvapp', n), 0.0) / etcd:.2f}" if etcd else " | -"
        lines.append(row + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.lock", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--contenders", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 100]
    )
    parser.add_argument(
        "--systems", type=lambda s: s.split(","), default=["kvapp", "kvapp-go", "etcd"]
    )
    a = parser.parse_args(argv)
    unknown = set(a.systems) - {"kvapp", "kvapp-go", "etcd"}
    if unknown:
        parser.error(f"unknown systems: {sorted(unknown)}")
    try:
        results = run(a)
    except BenchError as e:
        print(f"benchmarks/lock.py: {e}", file=sys.stderr)
        return 1
    print(table(results, a.contenders))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
