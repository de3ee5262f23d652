"""kvapp against etcd 3.4, both 3 members with fsync on, on one machine in one run.

Two paths (``--api``), both on bench's workload (``../shared/bench``): 256-byte values over 10k
random keys ``key%08d``, puts, linearizable gets and serializable gets (gets on preloaded keys),
1 s of unmeasured warm-up per point.

- ``native`` (the default): 1, 16, 64 and 256 requests in flight. etcd is driven by bench's
  ``goload`` (etcd's own Go client, 4 connections balanced over the members); kvapp by
  ``benchmarks/kvload.py``, a closed loop on kvapp's Python native client
  (:class:`kvapp.client.AsyncClient`: a few clients spread over the members, each pipelining its
  requests over one connection, and its writes over one more to the leader), run in its own
  process whose CPU it reports. Checks the
  targets of issue 11.
- ``etcd``: 1, 64 and 256 in flight, one client for everything: goload against kvapp's etcd
  gRPC API, against etcd, and against bench's Python gRPC ceiling server (a dict-only etcd KV
  server); prints ratios kvapp/ceiling and kvapp/etcd and checks the targets of issue 12
  (``benchmarks/kv_etcd.py``). ``both`` runs the two, native first.

Server CPU is the members' CPU time (``/proc/<pid>/stat``) over exactly the measured window.
Every point starts fresh clusters, the systems of a point alternate (which one goes first
alternates too), and the whole list is repeated ``--reps`` times, so drift on a shared machine
hits all alike: the figure to quote is the median of the per-pair ratios. Prints the tables,
checks the targets, and appends a dated section per path with a throughput-vs-in-flight plot
(``docs/benchmark-kv.png``, ``docs/benchmark-kv-etcd.png``, if matplotlib is installed) to
docs/benchmarks.md.

    python -m benchmarks.kv [--api native|etcd|both] [--seconds 10] [--reps 3]
                            [--inflight 1,16,64,256] [--ops put,get,getser] [--wait-load 1.0]
    python -m benchmarks.kv --quick          # a smoke run: 2 s per point, nothing written
    python -m benchmarks.kv --api etcd --quick --ops put
    python -m benchmarks.kv --scale          # kvapp alone: 1M keys vs 10k, restart, RSS per key

Needs the reference tools: run ``../shared/bench/setup.sh`` once (installs etcd 3.4, builds
goload, makes the ceiling's venv); without them the script exits with status 1 saying so. The
plots need matplotlib: ``pip install -e '.[kvapp,bench]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import pathlib
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "benchmark-kv.png"
BENCH_DIR = pathlib.Path(os.environ.get("KV_BENCH_DIR") or ROOT.parent / "shared" / "bench")
BUILD = pathlib.Path(
    os.environ.get("BENCH_BUILD") or pathlib.Path(os.environ.get("TMPDIR") or "/tmp") / "kvbench"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
BUSY_LOAD = 3.0
"""A 1-min load average above this during a run gets a warning in the docs (the run's own
members and load generator account for about 2 on the 2-core machine)."""
SCALE_TXN = 10
SCALE_SECONDS = 30.0
"""Puts per txn loading the --scale keys: few enough that the in-memory Raft log behind the
latest snapshot (up to 15,000 entries with kvapp's defaults) stays small next to the keys."""
OP_NAMES = {"put": "puts", "get": "linearizable gets", "getser": "serializable gets"}

Rec = dict[str, Any]


class BenchError(Exception):
    """A cluster or a load run failed; the message says which and where its log is."""


# -- the machine -------------------------------------------------------------------------------


def machine() -> Rec:
    """1-min load average and CPU pressure (some avg10) now, as bench records them."""
    rec: Rec = {"loadavg1": round(os.getloadavg()[0], 2)}
    try:
        with open("/proc/pressure/cpu") as f:
            rec["cpu_psi10"] = float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return rec


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids`` (bench's measure)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def source(tree: pathlib.Path = ROOT) -> str:
    """Which kvapp was measured: the commit of ``tree``, and whether raftlib/ or kvapp/ differ."""
    label = os.environ.get("KV_BENCH_SOURCE")
    if label:
        return label
    try:
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short=10", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--", "raftlib", "kvapp"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"the tree at {tree} (not a git checkout)"
    return f"commit {head}" + (" with uncommitted changes in raftlib/ or kvapp/" if dirty else "")


def check_tools(*, ceiling: bool = False) -> pathlib.Path:
    """bench's front script; exits with status 1 and a clear message when a tool is missing.

    ``ceiling``: the gRPC ceiling server's venv and stubs are needed too (``--api etcd``).
    """
    bench = BENCH_DIR / "bench"
    needed = [bench, BENCH_DIR / "etcd_cluster.sh", BUILD / "bin" / "goload"]
    if ceiling:
        needed += [BENCH_DIR / "ceiling_server.py", BUILD / "venv" / "bin" / "python"]
        needed.append(BUILD / "stubs")
    missing = [str(p) for p in needed if not p.exists()]
    missing += [t for t in ("etcd", "etcdctl") if shutil.which(t) is None]
    if missing:
        sys.exit(
            "benchmarks/kv.py: the etcd reference tools are missing: "
            + ", ".join(missing)
            + f"\nrun {BENCH_DIR / 'setup.sh'} first (installs etcd 3.4 and builds goload into "
            f"{BUILD}); set KV_BENCH_DIR if bench/ lives elsewhere"
        )
    return bench


def etcd_version() -> str:
    """The installed etcd's version (``3.4.23``), or ``?``."""
    out = subprocess.run(["etcd", "--version"], check=False, capture_output=True, text=True).stdout
    return out.split()[2] if out.startswith("etcd Version:") else "?"


def record_point(path: str | None, rec: Rec) -> None:
    """Append one point's JSON line to ``path`` (``--json``), if given."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def etcd_port_base(members: int) -> int:
    """A client port for etcd_cluster.sh such that every member's two ports are free."""
    for _ in range(200):
        base = random.randrange(24000, 30000 - 100 * members)
        if all(_port_free(base + 100 * i + j) for i in range(members) for j in (0, 1)):
            return base
    raise BenchError("no free ports for etcd")


# -- clusters ----------------------------------------------------------------------------------


class KvappCluster:
    """N ``kvapp serve`` processes (fsync on) on 127.0.0.1, data under ``parent``."""

    def __init__(
        self,
        parent: pathlib.Path,
        size: int = 3,
        *,
        fsync: bool = True,
        extra_args: Sequence[str] = (),
        tree: pathlib.Path = ROOT,
    ) -> None:
        """``extra_args`` go to every member; ``tree`` is the checkout whose kvapp they run."""
        from kvapp.launcher import plan_cluster

        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="kvapp-", dir=parent))
        self.fsync = fsync
        self.extra_args = tuple(extra_args)
        self.tree = tree
        self.token, self.members = plan_cluster(size, self.dir)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.endpoints = ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    def _args(self, name: str) -> list[str]:
        from kvapp.launcher import serve_args

        m = next(x for x in self.members if x.name == name)
        args = serve_args(m, self.members, self.dir, self.token)
        return args + ([] if self.fsync else ["--unsafe-no-fsync"]) + list(self.extra_args)

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        with (self.dir / f"{name}.log").open("ab") as log:
            p = subprocess.Popen(
                self._args(name), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.tree
            )
        self.procs[name] = p
        return p

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def pid_of(self, name: str) -> int:
        return self.procs[name].pid

    def start(self, timeout: float = 60.0) -> None:
        for m in self.members:
            self.spawn(m.name)
        try:
            asyncio.run(self.wait_ready(timeout))
        except BaseException:
            self.stop()
            raise

    async def statuses(self) -> dict[str, Any]:
        """Each reachable member's status, by name."""
        from kvapp.client import AsyncClient

        out = {}
        async with AsyncClient(self.endpoints, connect_timeout=0.5, request_timeout=1.0) as c:
            for m in self.members:
                if self.procs.get(m.name) is None or self.procs[m.name].poll() is not None:
                    continue
                with contextlib.suppress(Exception):
                    out[m.name] = await c.status(f"127.0.0.1:{m.client_port}")
        return out

    async def wait_ready(self, limit: float) -> None:
        """Until every member knows the same leader and a put goes through."""
        from kvapp.client import AsyncClient

        deadline = time.monotonic() + limit
        while True:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise BenchError(f"kvapp member {name} exited: see {self.dir / name}.log")
            st = await self.statuses()
            leaders = {s.leader for s in st.values()}
            if len(st) == len(self.procs) and len(leaders) == 1 and 0 not in leaders:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"kvapp cluster not ready after {limit:.0f} s: {self.dir}")
            await asyncio.sleep(0.2)
        async with AsyncClient(self.endpoints, request_timeout=5.0) as c:
            await c.put(b"kvbench-ready", b"1")

    def leader_name(self, limit: float = 60.0) -> str:
        """The leader's name, once every member agrees on one (waiting out an election)."""
        deadline = time.monotonic() + limit
        while True:
            st = asyncio.run(self.statuses())
            by_id = {s.header.member_id: name for name, s in st.items()}
            leaders = {s.leader for s in st.values()}
            if len(st) == len(self.procs) and len(leaders) == 1 and min(leaders) in by_id:
                return by_id[min(leaders)]
            if time.monotonic() > deadline:
                raise BenchError(f"no single leader among {sorted(st)} after {limit:.0f} s")
            time.sleep(0.2)

    def term(self) -> int:
        """The highest Raft term any member reports (elections since the start: term - 2)."""
        return max((s.raft_term for s in asyncio.run(self.statuses()).values()), default=0)

    def stop_member(self, name: str, grace: float = 15.0) -> None:
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            print(f"kvapp member {name} did not stop in {grace:.0f} s: SIGKILL", file=sys.stderr)
            p.kill()
            p.wait()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name in list(self.procs):
            self.stop_member(name)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class EtcdCluster:
    """A 3-member etcd (fsync on) through bench's etcd_cluster.sh, state under ``parent``."""

    def __init__(self, parent: pathlib.Path, size: int = 3) -> None:
        self.size = size
        self.env = dict(
            os.environ,
            BENCH_BUILD=str(BUILD),
            BENCH_ETCD_DIR=str(parent / f"etcd-{os.getpid()}"),
            BENCH_ETCD_PORT=str(etcd_port_base(size)),
        )
        self.endpoints = ""
        self.pids: list[int] = []

    def _sh(self, *args: str) -> str:
        r = subprocess.run(
            [str(BENCH_DIR / "etcd_cluster.sh"), *args],
            check=False,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise BenchError(f"etcd_cluster.sh {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout.strip()

    def start(self) -> None:
        self.endpoints = self._sh("start", str(self.size))
        self.pids = [int(p) for p in self._sh("pids").split()]

    def stop(self) -> None:
        with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
            self._sh("stop")


# -- one point ---------------------------------------------------------------------------------


def run_kvload(
    endpoints: str,
    server_pids: Sequence[int],
    op: str,
    inflight: int,
    args: argparse.Namespace,
    *,
    keys: int | None = None,
    preload: bool | None = None,
    extra: Sequence[str] = (),
) -> Rec:
    """One kvload run in its own process; server CPU over exactly its measured window."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.kvload",
        "--endpoints",
        endpoints,
        "--op",
        op,
        "--inflight",
        str(inflight),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--keys",
        str(keys or args.keys),
        "--value",
        str(args.value),
        *extra,
    ]
    if preload is None:
        preload = op != "put"  # gets read preloaded keys, as goload's do
    if preload:
        cmd.append("--preload")
    c0 = c1 = w0 = w1 = l0 = l1 = 0.0
    err_lines = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    ) as p:
        try:
            assert p.stderr is not None
            assert p.stdout is not None
            for line in p.stderr:
                if line.startswith("kvload: measuring"):
                    c0, w0 = cpu_seconds(server_pids), time.monotonic()
                    l0 = cpu_seconds([p.pid])
                elif line.startswith("kvload: done"):
                    c1, w1 = cpu_seconds(server_pids), time.monotonic()
                    l1 = cpu_seconds([p.pid])
                else:
                    err_lines.append(line)
            out = p.stdout.read()
        finally:
            if p.poll() is None:
                p.kill()
    lines = out.strip().splitlines()
    if not lines:
        raise BenchError(f"kvload exited {p.returncode}: {''.join(err_lines[-20:])}")
    rec: Rec = json.loads(lines[-1])
    if w1 > w0:
        rec["server_cpu_cores"] = round((c1 - c0) / (w1 - w0), 3)
        rec["kvload_proc_cpu_cores"] = round((l1 - l0) / (w1 - w0), 3)
    return rec


def load_args(inflight: int, a: Any) -> list[str]:
    """goload's workload flags for one point (``bench etcd-put``, ``bench load`` and the rest)."""
    return [
        "--inflight",
        str(inflight),
        "--seconds",
        str(a.seconds),
        "--warmup",
        str(a.warmup),
        "--keys",
        str(a.keys),
        "--value",
        str(a.value),
    ]


def run_bench(bench: pathlib.Path, *args: str) -> Rec:
    """Run ``bench ARGS``; its last JSON line (bench's own fields dropped)."""
    r = subprocess.run(
        [str(bench), *args],
        check=False,
        capture_output=True,
        text=True,
        env=dict(os.environ, BENCH_BUILD=str(BUILD)),
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError(f"bench {args[0]} exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    rec: Rec = json.loads(lines[-1])
    for k in ("t", "loadavg1", "cpu_psi10", "bench", "target", "label"):
        rec.pop(k, None)
    return rec


def run_etcd(bench: pathlib.Path, cluster: EtcdCluster, op: str, inflight: int, a: Any) -> Rec:
    """goload against ``cluster`` through ``bench etcd-put`` / ``etcd-get``."""
    return run_bench(
        bench,
        "etcd-put" if op == "put" else "etcd-get",
        "--endpoints",
        cluster.endpoints,
        "--server-pids",
        " ".join(map(str, cluster.pids)),
        *load_args(inflight, a),
        *(["--serializable"] if op == "getser" else []),
    )


def point(system: str, bench: pathlib.Path, op: str, inflight: int, a: argparse.Namespace) -> Rec:
    """A fresh cluster of ``system``, one measured run on it, the cluster stopped and removed."""
    m = machine()
    if system == "kvapp":
        kc = KvappCluster(a.run_dir)
        try:
            kc.start()
            rec = run_kvload(kc.endpoints, kc.pids, op, inflight, a)
        finally:
            kc.stop()
            kc.remove()
    else:
        ec = EtcdCluster(a.run_dir)
        try:
            ec.start()
            rec = run_etcd(bench, ec, op, inflight, a)
        finally:
            ec.stop()
    rec.update(m, system=system)
    return rec


def human(rec: Rec) -> str:
    s = (
        f"{rec['system']:5} {rec['op']:6} @{rec['inflight']:<3}: {rec['ops_per_s']:8,.0f} ops/s"
        f"  p50 {rec['p50_ms']:7.2f} ms  p99 {rec['p99_ms']:7.2f} ms  errors {rec['errors']}"
    )
    if "server_cpu_cores" in rec:
        s += f"  server CPU {rec['server_cpu_cores']:.2f}"
    if "client_cpu_cores" in rec:
        s += f"  kvload CPU {rec['client_cpu_cores']:.2f}"
    if rec.get("first_error"):
        s += f"  first error: {rec['first_error']}"
    return s + f"  (load {rec['loadavg1']:.2f})"


# -- summary -----------------------------------------------------------------------------------


def _med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(results: dict[tuple[str, int], dict[str, list[Rec]]]) -> dict[tuple[str, int], Rec]:
    out = {}
    for key, sides in results.items():
        kv, et = sides["kvapp"], sides["etcd"]
        ratios = [
            k["ops_per_s"] / e["ops_per_s"]
            for k, e in zip(kv, et, strict=True)
            if e["ops_per_s"] > 0
        ]

        def us_per_op(recs: list[Rec]) -> float:
            return _med(
                [
                    r["server_cpu_cores"] / r["ops_per_s"] * 1e6
                    for r in recs
                    if r.get("server_cpu_cores") and r["ops_per_s"] > 0
                ]
            )

        out[key] = {
            "kv_ops": _med([r["ops_per_s"] for r in kv]),
            "et_ops": _med([r["ops_per_s"] for r in et]),
            "ratio": _med(ratios),
            "ratio_min": min(ratios, default=float("nan")),
            "ratio_max": max(ratios, default=float("nan")),
            "kv_p50": _med([r["p50_ms"] for r in kv]),
            "kv_p99": _med([r["p99_ms"] for r in kv]),
            "et_p50": _med([r["p50_ms"] for r in et]),
            "et_p99": _med([r["p99_ms"] for r in et]),
            "kv_cpu": _med([r.get("server_cpu_cores", float("nan")) for r in kv]),
            "et_cpu": _med([r.get("server_cpu_cores", float("nan")) for r in et]),
            "kv_us": us_per_op(kv),
            "et_us": us_per_op(et),
            "client_cpu": _med([r.get("client_cpu_cores", float("nan")) for r in kv]),
            "errors": sum(r["errors"] for r in kv + et),
            "load": _med([r["loadavg1"] for r in kv + et]),
            "load_min": min(r["loadavg1"] for r in kv + et),
            "load_max": max(r["loadavg1"] for r in kv + et),
            "n": len(ratios),
        }
    return out


def targets(s: dict[tuple[str, int], Rec]) -> list[tuple[str, bool | None, str]]:
    """(target, met or None when not measured, the figures) for issue 11's targets."""
    rows: list[tuple[str, bool | None, str]] = []
    for n in (64, 256):
        p = s.get(("put", n))
        if p is None:
            rows.append((f"puts/s ≥ 2.0x etcd at {n} in flight, p99 ≤ etcd's", None, "not run"))
            continue
        met = p["ratio"] >= 2.0 and p["kv_p99"] <= p["et_p99"]
        rows.append(
            (
                f"puts/s ≥ 2.0x etcd at {n} in flight, p99 ≤ etcd's",
                met,
                f"{p['ratio']:.2f}x ({p['ratio_min']:.2f}-{p['ratio_max']:.2f}); p99 "
                f"{p['kv_p99']:.1f} vs {p['et_p99']:.1f} ms ({p['kv_p99'] / p['et_p99']:.2f}x)",
            )
        )
    p = s.get(("put", 1))
    rows.append(
        ("a lone put's p50 ≤ etcd's", None, "not run")
        if p is None
        else (
            "a lone put's p50 ≤ etcd's",
            p["kv_p50"] <= p["et_p50"],
            f"{p['kv_p50']:.2f} vs {p['et_p50']:.2f} ms ({p['kv_p50'] / p['et_p50']:.2f}x)",
        )
    )
    gets = [(n, s[("get", n)]) for n in (64, 256) if ("get", n) in s]
    if not gets:
        rows.append(("linearizable gets/s ≥ 2x etcd's (at 64 and 256)", None, "not run"))
    else:
        rows.append(
            (
                "linearizable gets/s ≥ 2x etcd's (at 64 and 256)",
                all(g["ratio"] >= 2.0 for _, g in gets),
                "; ".join(
                    f"@{n} {g['ratio']:.2f}x ({g['ratio_min']:.2f}-{g['ratio_max']:.2f})"
                    for n, g in gets
                ),
            )
        )
    return rows


def table(s: dict[tuple[str, int], Rec], op: str) -> str:
    lines = [
        "| in flight | kvapp ops/s | etcd ops/s | kvapp/etcd (range) | kvapp p50 / p99 ms "
        "| etcd p50 / p99 ms | server CPU cores kvapp / etcd | server CPU µs/op kvapp / etcd "
        "| kvload CPU cores | load avg |\n",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    ]
    for (o, n), r in sorted(s.items()):
        if o != op:
            continue
        lines.append(
            f"| {n} | {r['kv_ops']:,.0f} | {r['et_ops']:,.0f} | **{r['ratio']:.2f}** "
            f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['kv_p50']:.2f} / {r['kv_p99']:.1f} "
            f"| {r['et_p50']:.2f} / {r['et_p99']:.1f} | {r['kv_cpu']:.2f} / {r['et_cpu']:.2f} "
            f"| {r['kv_us']:,.0f} / {r['et_us']:,.0f} | {r['client_cpu']:.2f} "
            f"| {r['load']:.2f} ({r['load_min']:.2f}-{r['load_max']:.2f}) |\n"
        )
    return "".join(lines)


def plot(
    s: dict[tuple[str, int], Rec],
    results: Any,
    ops: Sequence[str],
    title: str,
    path: pathlib.Path,
) -> str:
    """Throughput vs in flight, one panel per op; returns a note for the docs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        msg = "matplotlib is not installed: no plot (pip install -e '.[bench]' to get one)"
        print(msg, file=sys.stderr)
        return msg
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 3.8), squeeze=False)
    for ax, op in zip(axes[0], ops, strict=True):
        ns = sorted(n for o, n in s if o == op)
        for system, key, style in (("kvapp", "kv_ops", "o-"), ("etcd", "et_ops", "s--")):
            med = [s[(op, n)][key] for n in ns]
            lo = [min(r["ops_per_s"] for r in results[(op, n)][system]) for n in ns]
            hi = [max(r["ops_per_s"] for r in results[(op, n)][system]) for n in ns]
            ax.errorbar(
                ns,
                med,
                yerr=[
                    [m - x for m, x in zip(med, lo, strict=True)],
                    [x - m for m, x in zip(med, hi, strict=True)],
                ],
                fmt=style,
                capsize=3,
                label=system if system == "etcd" else "kvapp (Python native client)",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_xlabel("requests in flight")
        ax.set_ylabel("ops/s (median, min-max)")
        ax.set_ylim(bottom=0)
        ax.set_title(OP_NAMES[op])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""


# -- the comparison ----------------------------------------------------------------------------


def compare(a: argparse.Namespace, bench: pathlib.Path) -> None:
    ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    inflights = [int(x) for x in a.inflight.split(",")]
    results: dict[tuple[str, int], dict[str, list[Rec]]] = {
        (o, n): {"kvapp": [], "etcd": []} for o in ops for n in inflights
    }
    t_start = time.time()
    for rep in range(a.reps):
        j = 0  # the point's place in the list
        for op in ops:
            for n in inflights:
                # alternate between neighbouring points, and for each point between reps
                order = ("kvapp", "etcd") if (j + rep) % 2 == 0 else ("etcd", "kvapp")
                j += 1
                for system in order:
                    rec = point(system, bench, op, n, a)
                    results[(op, n)][system].append(rec)
                    print(f"[rep {rep + 1}/{a.reps}] " + human(rec), file=sys.stderr, flush=True)
                    record_point(a.json, rec)
    elapsed = time.time() - t_start
    s = summarize(results)
    loads = [r["loadavg1"] for sides in results.values() for v in sides.values() for r in v]
    version = etcd_version()
    now = datetime.datetime.now(datetime.UTC)
    title = (
        f"kvapp vs etcd {version}, 3 members, fsync on, 256 B values, 10k keys; "
        f"{now:%Y-%m-%d}, load avg {min(loads):.1f}-{max(loads):.1f}"
    )
    plot_note = plot(s, results, ops, title, a.plot_file) if not a.no_write or a.plot else ""

    head = [
        f"\n## kvapp vs etcd, 3 members (benchmarks/kv.py), {now:%Y-%m-%d %H:%M} UTC\n\n",
    ]
    if a.quiet_wait is False:
        head.append(
            f"**Measured on a busy machine**: the 1-min load average did not fall below "
            f"{a.wait_load} within {a.wait_timeout:.0f} s, so the run went ahead under load "
            f"(load {min(loads):.2f}-{max(loads):.2f} during it, on 2 cores shared with other "
            "work). Absolute rates are depressed and noisy; the kvapp/etcd ratios are from "
            "interleaved pairs that ran under similar load, and are the figures to quote.\n\n"
        )
    elif max(loads) > BUSY_LOAD:
        start = (
            f"the machine was quiet when the run started (load below {a.wait_load}), but "
            if a.quiet_wait
            else ""
        )
        head.append(
            f"**Measured on a shared, partly busy machine**: {start}the 1-min load average "
            f"reached {max(loads):.2f} during the run (a run by itself adds about 2: three "
            "members and a load generator), on 2 cores shared with other work. Absolute rates "
            "are depressed and noisy; the kvapp/etcd ratios are from interleaved pairs that "
            "ran under similar load, and are the figures to quote.\n\n"
        )
    head.append(
        f"Both sides 3 members on 127.0.0.1 with fsync on, data in {a.run_dir} "
        f"({_filesystem(a.run_dir)}), fresh clusters for every point; etcd {version} (Debian) "
        f"with its defaults, driven by bench's goload (etcd's Go clientv3, 4 connections "
        f"balanced over the members); kvapp (`kvapp serve` defaults: snapshot every 100,000 "
        f"applied requests) driven by benchmarks/kvload.py in its own process (Python "
        f"AsyncClients on the native protocol, pipelining, reads spread over the members "
        f"and writes sent to the leader, the client's default; its own CPU is the "
        f"kvload column). Same workload: {a.value}-byte values over {a.keys:,} random keys, "
        f"{a.warmup:g} s warm-up, {a.seconds:g} s measured per point, gets on preloaded keys. "
        f"Points alternate kvapp/etcd (first side alternating) and the list ran {a.reps} "
        f"time(s): figures are medians over the {a.reps} runs, the ratio is the median of the "
        f"per-pair ratios (range in brackets). Server CPU: the members' CPU time over the "
        f"measured window. kvapp at {source()}; Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, "
        f"whole run {elapsed / 60:.0f} min, 1-min load average {min(loads):.2f}-"
        f"{max(loads):.2f} (per point in the last column).\n\n"
    )
    body = [f"**{OP_NAMES[op]}**\n\n" + table(s, op) + "\n" for op in ops]
    errors = sum(r["errors"] for r in s.values())
    if errors:
        body.append(f"Errors over the run: {errors} (see the JSON lines).\n\n")
    tg = targets(s)
    body.append("Targets (issue 11), as ratios from this run:\n\n")
    body.append("| target | met | figures |\n|---|---|---|\n")
    for name, met, figs in tg:
        mark = "n/a" if met is None else ("yes" if met else "**no**")
        body.append(f"| {name} | {mark} | {figs} |\n")
    body.append("\n")
    if plot_note:
        body.append(plot_note + "\n\n")
    else:
        body.append(f"![kvapp vs etcd: throughput vs requests in flight]({a.plot_file.name})\n\n")
    text = "".join(head + body)
    print(text)
    if a.no_write:
        return
    with a.docs_file.open("a") as f:
        f.write(text)


# -- scale -------------------------------------------------------------------------------------


def scale(a: argparse.Namespace) -> None:
    """kvapp alone: puts/s at 1M keys vs at 10k, a 1M-key member's restart time, RSS per key."""
    big = a.scale_keys
    n = 64
    if not a.quick:
        # Long enough that each put window holds a snapshot (every 100,000 requests, kvapp's
        # default) at either size: its cost, which grows with the state, is part of the rate.
        a.seconds = max(a.seconds, SCALE_SECONDS)
    out: Rec = {}
    t_start = time.time()
    loads = [machine()["loadavg1"]]

    def small_point(label: str) -> None:
        kc = KvappCluster(a.run_dir)
        try:
            kc.start()
            rec = run_kvload(kc.endpoints, kc.pids, "put", n, a, preload=True)
        finally:
            kc.stop()
            kc.remove()
        rec.update(machine())
        loads.append(rec["loadavg1"])
        out[label] = rec
        print(f"10k keys ({label}): {rec['ops_per_s']:,.0f} puts/s", file=sys.stderr, flush=True)

    small_point("small_before")
    kc = KvappCluster(a.run_dir)
    try:
        kc.start()
        empty = {name: rss_bytes(kc.pid_of(name)) for name in kc.procs}
        out["term_start"] = kc.term()
        t0 = time.monotonic()
        out["preload"] = run_kvload(
            kc.endpoints,
            kc.pids,
            "put",
            n,
            a,
            keys=big,
            preload=True,
            extra=["--preload-only", "--preload-txn", str(SCALE_TXN)],
        )
        out["load_s"] = time.monotonic() - t0
        time.sleep(2)  # let the members finish applying (and any snapshot) before measuring
        loaded = {name: rss_bytes(kc.pid_of(name)) for name in kc.procs}
        out["term_loaded"] = kc.term()
        out["rss_empty"], out["rss_loaded"] = empty, loaded
        print(
            f"loaded {big:,} keys in {out['load_s']:.0f} s; RSS per member "
            + ", ".join(f"{k} {loaded[k] / 2**20:,.0f} MiB" for k in loaded),
            file=sys.stderr,
            flush=True,
        )
        rec = run_kvload(kc.endpoints, kc.pids, "put", n, a, keys=big, preload=False)
        rec.update(machine())
        loads.append(rec["loadavg1"])
        out["big"] = rec
        out["term_puts"] = kc.term()
        print(f"{big:,} keys: {rec['ops_per_s']:,.0f} puts/s", file=sys.stderr, flush=True)
        # restart a follower holding the keys, timed from its new process's start to serving
        leader = kc.leader_name()
        follower = next(m.name for m in kc.members if m.name != leader)
        kc.stop_member(follower)
        t0 = time.monotonic()
        kc.spawn(follower)
        port = next(m.client_port for m in kc.members if m.name == follower)
        out["restart_s"] = asyncio.run(_until_serving(f"127.0.0.1:{port}", kc, follower, t0))
        out["rss_restarted"] = rss_bytes(kc.pid_of(follower))
        out["restarted"] = follower
        print(f"restart of {follower}: {out['restart_s']:.1f} s", file=sys.stderr, flush=True)
    finally:
        kc.stop()
        kc.remove()
    small_point("small_after")
    loads.append(machine()["loadavg1"])
    small = statistics.mean([out["small_before"]["ops_per_s"], out["small_after"]["ops_per_s"]])
    ratio = out["big"]["ops_per_s"] / small
    per_key = {k: (out["rss_loaded"][k] - out["rss_empty"][k]) / big for k in out["rss_loaded"]}
    worst = max(per_key.values())
    restarted_per_key = (out["rss_restarted"] - out["rss_empty"][out["restarted"]]) / big
    now = datetime.datetime.now(datetime.UTC)
    rows = [
        (
            f"puts/s at {big:,} keys vs at 10k keys (@{n})",
            ratio >= 0.8,
            f"{out['big']['ops_per_s']:,.0f} vs {small:,.0f} "
            f"({out['small_before']['ops_per_s']:,.0f} before, "
            f"{out['small_after']['ops_per_s']:,.0f} after): **{ratio:.2f}x** (target ≥ 0.8x); "
            f"p99 {out['big']['p99_ms']:.0f} vs {out['small_before']['p99_ms']:.0f} / "
            f"{out['small_after']['p99_ms']:.0f} ms",
        ),
        (
            f"restart of a member holding {big:,} keys",
            out["restart_s"] <= 10.0,
            f"**{out['restart_s']:.1f} s** from process start to a served serializable read "
            "(target ≤ 10 s)",
        ),
        (
            "RSS per key",
            worst <= 450,
            f"**{worst:,.0f} B/key** (worst member; "
            + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(per_key.items()))
            + f"; the restarted member {restarted_per_key:,.0f}) (target ≤ 450 B/key)",
        ),
    ]
    text = (
        f"\n## kvapp at scale (benchmarks/kv.py --scale), {now:%Y-%m-%d %H:%M} UTC\n\n"
        f"3 `kvapp serve` members, fsync on, {a.value}-byte values. Loaded {big:,} keys "
        f"(`key%08d`, each written once, in txns of {SCALE_TXN} puts, 64 in flight) in "
        f"{out['load_s']:.0f} s; then puts at {n} in flight over the {big:,} keys for "
        f"{a.seconds:g} s (long enough to hold a snapshot at either size), against fresh "
        f"10k-key clusters measured the same way just before "
        f"and after. RSS per key: (member RSS after the load - its RSS when started empty) / "
        f"keys, from /proc/<pid>/status. Restart: a follower stopped with SIGTERM after the "
        f"put phase, timed from its new process's start until a serializable read on it "
        f"answers (it then has applied its durable commit index). kvapp at {source()}; Python "
        f"{platform.python_version()}, whole run {(time.time() - t_start) / 60:.0f} min, "
        f"1-min load average {min(loads):.2f}-{max(loads):.2f}.\n\n"
        f"Leader elections (Raft term increases): {out['term_loaded'] - out['term_start']} "
        f"during the load ({out['load_s']:.0f} s), {out['term_puts'] - out['term_loaded']} "
        f"during the put phase; load requests that failed and were sent again: "
        f"{out['preload'].get('preload_failures', 0)}"
        + (
            " (" + "; ".join(out["preload"]["preload_failure_kinds"][:3]) + ")"
            if out["preload"].get("preload_failure_kinds")
            else ""
        )
        + f"; errors in the put phase at {big:,} keys: {out['big']['errors']}.\n\n"
        "| measure | met | figures |\n|---|---|---|\n"
        + "".join(f"| {name} | {'yes' if met else '**no**'} | {f} |\n" for name, met, f in rows)
        + "\n"
    )
    print(text)
    if not a.no_write:
        with a.docs_file.open("a") as f:
            f.write(text)


async def _until_serving(endpoint: str, kc: KvappCluster, name: str, t0: float) -> float:
    from kvapp.client import AsyncClient

    deadline = t0 + 600
    while time.monotonic() < deadline:
        if kc.procs[name].poll() is not None:
            raise BenchError(f"restarted member {name} exited: see {kc.dir / name}.log")
        try:
            async with AsyncClient(
                [endpoint], connect_timeout=0.5, request_timeout=2.0, max_attempts=1
            ) as c:
                await c.get(b"kvbench-ready", serializable=True)
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - not up yet, whatever the reason
            await asyncio.sleep(0.05)
    raise BenchError(f"restarted member {name} not serving after 600 s")


# -- main --------------------------------------------------------------------------------------


def _filesystem(path: pathlib.Path) -> str:
    try:
        mounts = pathlib.Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown file system"
    best = ("", "unknown", "")
    resolved = str(path.resolve())
    for line in mounts:
        dev, mnt, fstype = line.split()[:3]
        if resolved.startswith(mnt) and len(mnt) > len(best[0]):
            best = (mnt, fstype, dev)
    return f"{best[1]} on {best[2]}"


def wait_quiet(bench: pathlib.Path, a: argparse.Namespace) -> bool:
    print(f"waiting up to {a.wait_timeout:.0f} s for load < {a.wait_load}", file=sys.stderr)
    r = subprocess.run(
        [str(bench), "wait-load", "--max", str(a.wait_load), "--timeout", str(a.wait_timeout)],
        check=False,
    )
    return r.returncode == 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--api",
        choices=["native", "etcd", "both"],
        default="native",
        help="kvapp's native protocol (kvload) vs etcd, or goload on kvapp's etcd API vs etcd and "
        "the Python gRPC ceiling, or both in turn",
    )
    p.add_argument("--inflight", help="comma list (default: 1,16,64,256 native, 1,64,256 etcd API)")
    p.add_argument("--ops", default="put,get,getser", help="comma list of put,get,getser")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per point")
    p.add_argument("--reps", type=int, default=3, help="repetitions of the whole list")
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--value", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s per point, 1 rep, no docs")
    p.add_argument("--scale", action="store_true", help="kvapp at 1M keys instead (see docstring)")
    p.add_argument("--scale-keys", type=int, default=1_000_000)
    p.add_argument("--wait-load", type=float, default=0.0, help="first wait for load below this")
    p.add_argument("--wait-timeout", type=float, default=900.0)
    p.add_argument("--no-write", action="store_true", help="do not append to docs/benchmarks.md")
    p.add_argument("--plot", action="store_true", help="write the PNG even with --no-write")
    p.add_argument(
        "--ceiling-no-uvloop",
        action="store_true",
        help="run the gRPC ceiling on plain asyncio (kvapp's loop) instead of uvloop",
    )
    p.add_argument("--json", help="also append every point's JSON line to this file")
    p.add_argument("--run-dir", type=pathlib.Path, default=BUILD / "run", help="data dirs here")
    p.add_argument(
        "--docs",
        type=pathlib.Path,
        default=DOCS.parent,
        help="directory of benchmarks.md and the plot (default: this checkout's docs/)",
    )
    a = p.parse_args()
    a.docs_file, a.plot_file = a.docs / DOCS.name, a.docs / PLOT.name
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clusters' cleanups
    if a.quick:
        a.seconds, a.warmup, a.reps, a.no_write = 2.0, 0.5, 1, True
        a.scale_keys = min(a.scale_keys, 50_000)
    bench = check_tools(ceiling=a.api != "native" and not a.scale)
    a.run_dir.mkdir(parents=True, exist_ok=True)
    a.quiet_wait = None
    if a.wait_load > 0:
        a.quiet_wait = wait_quiet(bench, a)
    given = a.inflight
    try:
        if a.scale:
            scale(a)
            return
        if a.api in ("native", "both"):
            a.inflight = given or "1,16,64,256"
            compare(a, bench)
        if a.api in ("etcd", "both"):
            from benchmarks import kv_etcd

            text = kv_etcd.compare(a, bench, [int(x) for x in (given or "1,64,256").split(",")])
            print(text)
            if not a.no_write:
                with a.docs_file.open("a") as f:
                    f.write(text)
    except BenchError as e:
        sys.exit(f"benchmarks/kv.py: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
