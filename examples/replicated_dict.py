"""A replicated dict on :class:`raftlib.Node`, with snapshots, compaction and a restart.

Every member holds a copy of the dict. Writes are proposed through Raft and applied by every
member in the same order; reads wait on a ReadIndex barrier, so they are linearizable on any
member. Every 50 applied entries a member snapshots its dict and compacts its log, keeping 10
entries, so a member that was down catches up from the leader's snapshot.

Run it with ``python examples/replicated_dict.py``.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Sequence

from raftlib import (
    Committed,
    ConfState,
    MemoryStorage,
    Message,
    MessageType,
    Node,
    NodeError,
    NodeStopped,
    ProposalDropped,
)


class ReplicatedDict:
    """A ``str -> str`` dict replicated by Raft; one instance per member."""

    def __init__(
        self, node_id: int, storage: MemoryStorage, send: Callable[[Sequence[Message]], None]
    ) -> None:
        """Create the member over ``storage`` (a restart if it holds a snapshot or entries)."""
        self.data: dict[str, str] = {}
        self.node = Node(
            node_id,
            storage,
            send=send,
            apply=self._apply,
            snapshot=self._snapshot,  # the dict as bytes, at the applied index
            restore=self._restore,  # at start, and when the leader sends a snapshot
            snapshot_every=50,
            keep_entries=10,
            tick_interval=0.01,
        )

    def _apply(self, entry: Committed) -> None:
        if entry.data:  # configuration changes and internal entries carry no command
            op, key, value = json.loads(entry.data)
            if op == "set":
                self.data[key] = value
            else:
                self.data.pop(key, None)

    def _snapshot(self) -> bytes:
        return json.dumps(self.data, sort_keys=True).encode()

    def _restore(self, state: bytes) -> None:
        self.data = json.loads(state)

    async def set(self, key: str, value: str) -> None:
        """Set ``key``; returns once the write is committed and applied on this member."""
        await self._write(["set", key, value])

    async def delete(self, key: str) -> None:
        """Delete ``key`` (no error if absent)."""
        await self._write(["del", key, None])

    async def _write(self, command: list[str | None]) -> None:
        # A proposal forwarded to a leader that just died is lost, and its proposer only learns
        # "outcome unknown" at its timeout. Retrying is safe here because set and delete are
        # idempotent (a late first attempt could still reorder with a later write of the same
        # key: give commands request ids if that matters to you).
        for attempt in range(1, 6):
            try:
                await self.node.propose(json.dumps(command).encode(), timeout=1)
                return
            except NodeStopped:
                raise
            except (ProposalDropped, NodeError):  # no leader, timed out, replaced by a new leader
                if attempt == 5:
                    raise

    async def get(self, key: str) -> str | None:
        """A linearizable read: sees every write acknowledged before the call, on any member."""
        await self.node.read_index(timeout=5)
        return self.data.get(key)


async def main() -> dict[int, dict[str, str]]:
    """Write, stop a member, write more, restart it from its storage; return every copy."""
    members: dict[int, ReplicatedDict] = {}
    storages = {i: MemoryStorage(ConfState(voters=(1, 2, 3))) for i in (1, 2, 3)}

    def send(messages: Sequence[Message]) -> None:
        for m in messages:
            member = members.get(m.to)
            delivered = False
            if member is not None and member.node.running:
                asyncio.get_running_loop().call_soon(member.node.receive, m)
                delivered = True
            if m.type == MessageType.SNAP:  # tell the leader every snapshot's fate, as etcd does
                members[m.from_].node.report_snapshot(m.to, success=delivered)

    for i in (1, 2, 3):
        members[i] = ReplicatedDict(i, storages[i], send)
        members[i].node.start()

    await members[1].node.wait_leader(timeout=5)
    await asyncio.gather(*(members[1 + k % 3].set(f"k{k}", f"v{k}") for k in range(100)))
    await members[2].delete("k0")
    print("member 3 reads k1 =", await members[3].get("k1"))

    await members[3].node.stop()  # member 3 goes down; the others carry on and compact
    await asyncio.gather(*(members[1].set(f"k{k}", f"w{k}") for k in range(100, 200)))

    disk = copy.deepcopy(storages[3])  # what member 3 had persisted when it stopped
    members[3] = ReplicatedDict(3, disk, send)  # restored from its own snapshot at start
    print("member 3 restarted with", len(members[3].data), "keys from its snapshot")
    members[3].node.start()
    print("member 3 reads k150 =", await members[3].get("k150"))  # after catching up
    print(
        "member 3 first index:", disk.first_index(), "snapshot at", disk.snapshot().metadata.index
    )

    for member in members.values():
        await member.get("k1")  # read barrier: every copy is up to date
    for member in members.values():
        await member.node.stop()
    return {i: m.data for i, m in members.items()}


if __name__ == "__main__":
    copies = asyncio.run(main())
    same = copies[1] == copies[2] == copies[3]
    print(f"{len(copies[1])} keys on every member; all copies equal: {same}")
