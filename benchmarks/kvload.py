"""Closed-loop load generator for kvapp's native protocol: the Python counterpart of bench's goload.

``--inflight`` workers each keep one request outstanding. The requests go through a few
:class:`kvapp.client.AsyncClient` instances, each connected to one member first (the clients are
spread evenly over the endpoints) and pipelining everything its workers send over that one
connection; with the client's defaults, writes go to the leader instead, over a second
connection (``writes_to_leader``; etcd's clientv3 sends them to any member, which forwards).
The workers form :data:`BALANCERS` groups, as goload's workers share its 4 clientv3
connections, and each group sends its successive requests to successive clients, as the
round-robin balancer of one clientv3 connection does: so a wave of answers from one member
spreads its workers' next reads over every member. (Each worker once kept a round-robin of
its own; workers answered together then moved to the next member together, until all of them
did, and the members took turns holding every request in flight: one entry of 64 writes at a
time at 64 in flight, a lockstep goload never produces.) Keys are
``key%08d`` drawn uniformly from ``--keys``, values are ``--value`` bytes, exactly goload's
workload. Requests started during ``--warmup`` are not counted; get runs first write every key
once (``--preload``, unmeasured).

Prints one JSON line on stdout: op, inflight, clients, ops, seconds, ops_per_s, p50_ms, p99_ms,
errors, client_cpu_cores (this process's CPU time over the measured window / its length). Writes
``kvload: measuring`` and ``kvload: done`` to stderr at the edges of the measured window, so the
caller can sample the servers' CPU over exactly that window (goload's protocol).

    python -m benchmarks.kvload --endpoints 127.0.0.1:2379,... --op put --inflight 64 --seconds 10

Run it in its own process (benchmarks/kv.py does): its CPU then is not counted as the servers'.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import sys
import time

from kvapp.client import AsyncClient, txn

WRITES_PER_CLIENT = 48
"""Workers per client, on average: an AsyncClient holds at most 64 writes in flight
(the members' deduplication window), so 256 puts in flight need several clients."""


BALANCERS = 4
"""Round-robin sequences shared by the workers: goload's default ``-conns``, each connection a
clientv3 balancer that spreads the requests of all its workers over the endpoints in turn."""


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _pct(lat: list[float], p: float) -> float:
    return lat[int(p * (len(lat) - 1))] if lat else 0.0


PRELOAD_ATTEMPTS = 5


async def _preload(
    clients: list[AsyncClient], keys: int, value: bytes, par: int, per_txn: int
) -> list[str]:
    """Write every key once with ``par`` requests in flight, ``per_txn`` puts per request.

    A request that fails (a leader change, an outcome-unknown write) is sent again, at most
    ``PRELOAD_ATTEMPTS`` times: writing the same value twice is harmless here. Returns the
    failures, so the caller can report them.
    """
    it = iter(range(0, keys, per_txn))
    failures: list[str] = []

    async def worker(w: int) -> None:
        c = clients[w % len(clients)]
        for first in it:
            last = min(first + per_txn, keys)
            for attempt in range(PRELOAD_ATTEMPTS):
                try:
                    if per_txn == 1:
                        await c.put(b"key%08d" % first, value)
                    else:
                        ops = [txn.put(b"key%08d" % k, value) for k in range(first, last)]
                        await c.txn((), ops)
                    break
                except Exception as e:  # reported, then retried or raised
                    failures.append(f"{type(e).__name__}: {e}")
                    print(f"kvload: preload: {failures[-1]}", file=sys.stderr, flush=True)
                    if attempt == PRELOAD_ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(0.1)

    await asyncio.gather(*(worker(w) for w in range(par)))
    return failures


async def run(args: argparse.Namespace) -> dict[str, object]:
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    n_clients = args.clients or len(endpoints) * max(
        1, math.ceil(args.inflight / (WRITES_PER_CLIENT * len(endpoints)))
    )
    clients = []
    for i in range(n_clients):
        j = i % len(endpoints)  # client i starts on endpoint j, fails over to the others
        clients.append(
            AsyncClient(endpoints[j:] + endpoints[:j], request_timeout=5.0, connect_timeout=5.0)
        )
    value = b"x" * args.value
    errors = 0
    first_error = ""
    try:
        for c in clients:
            await c.status(c.endpoints[0])  # connect now, not inside the measured window
        if args.preload:
            t0 = time.monotonic()
            failures = await _preload(
                clients, args.keys, value, max(args.inflight, 64), args.preload_txn
            )
            if args.preload_only:
                secs = time.monotonic() - t0
                return {
                    "op": "preload",
                    "keys": args.keys,
                    "seconds": round(secs, 3),
                    "keys_per_s": args.keys / secs,
                    "ops": args.keys,
                    "preload_failures": len(failures),
                    "preload_failure_kinds": sorted(set(failures))[:10],
                }

        loop = asyncio.get_running_loop()
        start = loop.time()
        mstart = start + args.warmup
        deadline = mstart + args.seconds
        lats: list[float] = []
        op = args.op
        keys = args.keys

        turns = [itertools.count(g) for g in range(BALANCERS)]

        async def worker(w: int) -> None:
            nonlocal errors, first_error
            rng = random.Random(w)
            turn = turns[w % len(turns)]
            local: list[float] = []
            now = loop.time
            perf = time.perf_counter
            while True:
                t0 = now()
                if t0 >= deadline:
                    break
                c = clients[next(turn) % n_clients]
                key = b"key%08d" % rng.randrange(keys)
                p0 = perf()
                try:
                    if op == "put":
                        await c.put(key, value)
                    elif op == "get":
                        await c.get(key)
                    else:
                        await c.get(key, serializable=True)
                except Exception as e:  # noqa: BLE001 - counted, like goload's errors
                    if t0 >= mstart:
                        errors += 1
                        first_error = first_error or f"{type(e).__name__}: {e}"
                    await asyncio.sleep(0.01)
                    continue
                if t0 >= mstart:
                    local.append((perf() - p0) * 1000.0)
            lats.extend(local)

        tasks = [asyncio.create_task(worker(w)) for w in range(args.inflight)]
        await asyncio.sleep(max(0.0, mstart - loop.time()))
        print("kvload: measuring", file=sys.stderr, flush=True)
        c0, w0 = _cpu(), time.monotonic()
        await asyncio.gather(*tasks)
        c1, w1 = _cpu(), time.monotonic()
        print("kvload: done", file=sys.stderr, flush=True)
    finally:
        for c in clients:
            await c.close()
    secs = w1 - w0
    lats.sort()
    rec: dict[str, object] = {
        "op": op,
        "inflight": args.inflight,
        "clients": n_clients,
        "ops": len(lats),
        "seconds": round(secs, 3),
        "ops_per_s": len(lats) / secs if secs > 0 else 0.0,
        "p50_ms": _pct(lats, 0.5),
        "p99_ms": _pct(lats, 0.99),
        "errors": errors,
        "client_cpu_cores": round((c1 - c0) / secs, 3) if secs > 0 else 0.0,
    }
    if first_error:
        rec["first_error"] = first_error[:200]
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--endpoints", required=True, help="comma list of host:port")
    p.add_argument("--op", choices=["put", "get", "getser"], default="put")
    p.add_argument("--inflight", type=int, default=64, help="requests in flight")
    p.add_argument("--clients", type=int, default=0, help="AsyncClients (default: by inflight)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    p.add_argument("--keys", type=int, default=10_000, help="key space")
    p.add_argument("--value", type=int, default=256, help="value bytes")
    p.add_argument("--preload", action="store_true", help="write every key once first")
    p.add_argument("--preload-txn", type=int, default=1, help="puts per preload request (txn)")
    p.add_argument("--preload-only", action="store_true", help="with --preload: only that")
    args = p.parse_args()
    if args.inflight < 1 or args.keys < 1 or args.seconds <= 0:
        p.error("--inflight, --keys and --seconds must be positive")
    rec = asyncio.run(run(args))
    print(json.dumps(rec), flush=True)
    if rec["ops"] == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
