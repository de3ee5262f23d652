"""Member Raft snapshots of a growing store: CPU time of full and incremental encoding.

Two appliers apply the same puts (``--keys`` distinct keys, ``--value-size``-byte values, one
client session); after every ``--puts`` puts each takes a member snapshot the way
``Member._snapshot`` does (the image captured on the loop, then the version 2 data encoded):

- *full*: every snapshot encoded whole (what every snapshot cost before incremental encoding);
- *incremental*: the snapshot's bytes kept with ``KvState.keep_encoded``, so the next one copies
  the unchanged base and full log chunks and encodes only what came after.

The two must produce identical bytes (checked). Nothing is compacted, as in the kvload
benchmark, so the change log grows by ``--puts`` records a round. Also shown: the CPU time of
saving the snapshot file (``Snapshotter.save`` without fsync, into a temporary directory),
which is the same for both.
CPU times are this thread's (``time.thread_time``), in milliseconds. Prints only.

    python -m benchmarks.snapshot [--rounds 10] [--puts 10000] [--keys 10000] [--value-size 128]
"""

from __future__ import annotations

import argparse
import io
import random
import tempfile
import time
from pathlib import Path

import cbor2

from kvapp.dedup import Applier
from kvapp.kvstate import KvState
from kvapp.mvcc.types import PutRequest
from kvapp.requests import Request
from kvapp.storage.snap import Snapshotter
from raftlib.types import ConfState, Snapshot, SnapshotMetadata

MEMBERS = [[1, "m1", ["http://127.0.0.1:2380"], ["http://127.0.0.1:2379"], False]]


def member_snapshot(applier: Applier, *, keep: bool) -> tuple[bytes, float, float]:
    """A member snapshot's data (as ``Member._snapshot`` encodes it) and the CPU ms to take it.

    Returns:
        The data, the capture's CPU ms and the encoding's CPU ms.
    """
    t0 = time.thread_time()
    image = applier.snapshot_image()
    t1 = time.thread_time()
    head = cbor2.dumps(["kvapp.member", 2, MEMBERS])
    buf = io.BytesIO()
    buf.write(head)
    span = image.write(buf)
    data = buf.getvalue()
    if keep:
        applier.state.keep_encoded(image.state, data, span.shifted(len(head)))
    t2 = time.thread_time()
    return data, 1e3 * (t1 - t0), 1e3 * (t2 - t1)


def file_ms(snapshotter: Snapshotter, data: bytes, index: int) -> float:
    """CPU ms of saving ``data`` as a snapshot file (the previous one deleted)."""
    md = SnapshotMetadata(conf_state=ConfState(voters=(1,)), index=index, term=1)
    t0 = time.thread_time()
    path = snapshotter.save(Snapshot(data=data, metadata=md))
    elapsed = 1e3 * (time.thread_time() - t0)
    path.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--puts", type=int, default=10_000, help="puts between snapshots")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    snapshotter = Snapshotter(Path(tempfile.mkdtemp(prefix="kvapp-bench-snapshot-")), fsync=False)
    rng = random.Random(args.seed)
    full, incremental = (Applier(KvState(time.monotonic, grace=1.0)) for _ in range(2))
    index = 0
    totals = [0.0, 0.0, 0.0, 0.0]
    print(
        f"{'round':>5} {'log':>9} {'MB':>7} {'capture':>8} {'full':>8} "
        f"{'capture':>8} {'incr.':>8} {'file':>7}"
    )
    print(
        f"{'':>5} {'records':>9} {'':>7} {'(full)':>8} {'encode':>8} "
        f"{'(incr.)':>8} {'encode':>8} {'save':>7}"
    )
    for r in range(1, args.rounds + 1):
        for _ in range(args.puts):
            index += 1
            key = b"key/%08d" % rng.randrange(args.keys)
            request = Request(7, index, PutRequest(key, rng.randbytes(args.value_size)))
            for applier in (full, incremental):
                applier.apply(request, index)
        data_full, cap_full, enc_full = member_snapshot(full, keep=False)
        data_incr, cap_incr, enc_incr = member_snapshot(incremental, keep=True)
        if data_full != data_incr:
            raise SystemExit(f"round {r}: incremental snapshot differs from the full one")
        f_ms = file_ms(snapshotter, data_incr, index)
        for i, x in enumerate((cap_full, enc_full, cap_incr, enc_incr)):
            totals[i] += x
        print(
            f"{r:5d} {index:9d} {len(data_full) / 1e6:7.1f} {cap_full:8.1f} {enc_full:8.1f} "
            f"{cap_incr:8.1f} {enc_incr:8.1f} {f_ms:7.1f}"
        )
    snapshotter.directory.rmdir()
    whole_full, whole_incr = totals[0] + totals[1], totals[2] + totals[3]
    print(
        f"total CPU ms (capture + encode): full {whole_full:.0f}, incremental {whole_incr:.0f} "
        f"({whole_full / max(whole_incr, 1e-9):.1f}x less)"
    )


if __name__ == "__main__":
    main()
