"""A disk-backed :class:`raftlib.Node` that survives restarts, on kvapp's ``RaftStore``.

``RaftStore`` keeps the Raft log in a write-ahead log and the state machine's snapshots in
files. ``Node`` writes every Ready with ``store.save_ready(rd)`` in its worker thread (one fsync
per batch of proposals: group commit) and snapshots and compacts every ``snapshot_every``
entries. On restart the state machine is rebuilt from the newest snapshot (``restore``) plus the
entries after it, which Raft hands out again.

Run it twice with the same directory; the second run continues where the first stopped::

    python examples/disk_node.py /tmp/raft-demo
    python examples/disk_node.py /tmp/raft-demo

This is a one-member cluster, so it needs no network; with more members the storage side is
exactly the same (see ``examples/tcp_cluster.py`` for a transport).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from kvapp.storage import RaftStore
from raftlib import Committed, ConfState, Node


class Counter:
    """The state machine: a list of every value written, in commit order."""

    def __init__(self) -> None:
        """Start empty; ``restore`` fills it from a snapshot."""
        self.values: list[str] = []

    def apply(self, entry: Committed) -> None:
        """Apply one committed write."""
        if entry.data:
            self.values.append(entry.data.decode())

    def snapshot(self) -> bytes:
        """The whole state, as bytes."""
        return "\n".join(self.values).encode()

    def restore(self, state: bytes) -> None:
        """Replace the state with a snapshot's."""
        self.values = state.decode().split("\n") if state else []


async def run(directory: str, writes: int = 25) -> list[str]:
    """Open the store in ``directory``, recover, write ``writes`` values, stop; return the state."""
    counter = Counter()
    with RaftStore.open(
        directory, cluster_id=1, member_id=1, conf_state=ConfState(voters=(1,))
    ) as store:
        node = Node(
            1,
            store,
            send=lambda messages: None,  # one member: nothing to send
            apply=counter.apply,
            snapshot=counter.snapshot,
            restore=counter.restore,  # called now if the store holds a snapshot
            snapshot_every=20,
            keep_entries=5,
            tick_interval=0.01,
        )
        async with node:  # start() ... stop()
            await node.wait_leader(timeout=5)
            await node.read_index(timeout=5)  # the entries after the snapshot are applied again
            snapshot_index = store.snapshot().metadata.index
            print(f"recovered {len(counter.values)} values (snapshot at {snapshot_index})")
            first = len(counter.values)
            # Proposed together: they share Readys, hence fsyncs (group commit).
            await asyncio.gather(
                *(node.propose(f"value {first + k}".encode(), timeout=10) for k in range(writes))
            )
            print(f"now {len(counter.values)} values; last: {counter.values[-1]!r}")
    return counter.values


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(run(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(tmp))
            asyncio.run(run(tmp))  # the restart
