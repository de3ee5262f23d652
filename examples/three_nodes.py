"""Three Raft members in one process, joined by an in-memory "network".

The smallest complete use of :class:`raftlib.Node`: start three members, wait for a leader,
propose on each member (followers forward to the leader), then read back through a
linearizable read barrier. Run it with ``python examples/three_nodes.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from raftlib import Committed, ConfState, MemoryStorage, Message, Node


async def main() -> dict[int, list[bytes]]:
    """Run the cluster; return what each member applied."""
    nodes: dict[int, Node] = {}
    applied: dict[int, list[bytes]] = {1: [], 2: [], 3: []}

    def send(messages: Sequence[Message]) -> None:  # the transport: deliver on the next loop turn
        for m in messages:
            asyncio.get_running_loop().call_soon(nodes[m.to].receive, m)

    def applier(node_id: int) -> Callable[[Committed], None]:
        return lambda entry: applied[node_id].append(entry.data)

    for i in (1, 2, 3):
        storage = MemoryStorage(ConfState(voters=(1, 2, 3)))
        nodes[i] = Node(i, storage, send=send, apply=applier(i), tick_interval=0.01)
        nodes[i].start()

    print("leader:", await nodes[1].wait_leader(timeout=5))
    for i in (1, 2, 3):  # any member takes writes: a follower forwards to the leader
        index = await nodes[i].propose(f"hello from {i}".encode(), timeout=5)
        print(f"member {i}: committed and applied at index {index}")
    for node in nodes.values():
        await node.read_index(timeout=5)  # barrier: this member has applied every write above
    for node in nodes.values():
        await node.stop()
    return applied


if __name__ == "__main__":
    for member, entries in asyncio.run(main()).items():
        print(f"member {member} applied {entries}")
