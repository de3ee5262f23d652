"""Child process for ``test_sigkill.py``: saves batches until killed, reporting each durable one.

Usage: ``python -m tests.kvapp.storage.sigkill_child DIR SEED``. Prints ``ready <last index>``
after recovery, then ``durable <last index>`` after every ``save`` returns (so only after its
fsync). Every so often it snapshots and compacts, so kills also land in segment cuts, snapshot
writes, pruning and WAL release. Entry payloads are a function of the index, so the parent can
check content, not just counts.
"""

from __future__ import annotations

import random
import sys

from kvapp.storage.raftstore import RaftStore
from raftlib.types import ConfState, Entry, HardState

CLUSTER = 0xC1
MEMBER = 0x2
SEGMENT_SIZE = 16 * 1024


def payload(index: int) -> bytes:
    return index.to_bytes(8, "big") * (index % 7 + 1)


def open_store(directory: str) -> RaftStore:
    return RaftStore.open(
        directory,
        cluster_id=CLUSTER,
        member_id=MEMBER,
        segment_size=SEGMENT_SIZE,
        keep_snapshots=2,
        preallocate=True,
        fsync=True,
    )


def main(argv: list[str]) -> int:
    directory, seed = argv[1], int(argv[2])
    rng = random.Random(seed)
    store = open_store(directory)
    print(f"ready {store.last_index()}", flush=True)
    while True:
        first = store.last_index() + 1
        n = rng.randrange(1, 9)
        entries = [Entry(term=1, index=i, data=payload(i)) for i in range(first, first + n)]
        store.save(HardState(term=1, vote=MEMBER, commit=first - 1), entries)
        print(f"durable {first + n - 1}", flush=True)
        if rng.random() < 0.04:
            last = store.last_index()
            store.create_snapshot(last, ConfState(voters=(1, 2, 3)), b"state at %d" % last)
            store.compact(max(store.first_index(), last - 20))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
