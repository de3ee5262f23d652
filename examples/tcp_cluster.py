"""A three-process replicated dict over TCP on 127.0.0.1, on :class:`raftlib.Node`.

Run ``python examples/tcp_cluster.py``: the launcher binds three listening sockets on free
ports (port 0), starts three member processes of this same script that inherit them, and waits
(with timeouts) until each member reports the dict it ended with. Each member writes its own
keys, marks itself done, waits until every member is done, reads through a ReadIndex barrier and
prints a digest of its copy. The launcher then closes their stdin, which stops them, and checks
that the three digests agree.

The transport (:class:`TcpTransport`) is the part to reuse: one outgoing connection per peer,
each fed by a bounded queue and reconnecting with back-off; frames are a 4-byte big-endian
length followed by ``raftlib.codec.encode_messages`` of a batch. Raft tolerates lost messages,
so a full queue or a broken connection just drops messages (and tells Raft the peer is
unreachable, so its leader backs off).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import socket
import sys
from collections.abc import Sequence

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
from raftlib.codec import decode_messages, encode_messages
from raftlib.errors import DecodeError

MAX_FRAME = 64 * 1024 * 1024
QUEUE_LIMIT = 4096


class TcpTransport:
    """Raft messages over TCP: ``send`` for the Node, ``serve`` for incoming connections."""

    def __init__(self, peers: dict[int, tuple[str, int]]) -> None:
        """Connect lazily to ``peers`` (id -> host, port); call :meth:`attach` before use."""
        self.peers = peers
        self.node: Node | None = None
        self.queues: dict[int, asyncio.Queue[Message]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.incoming: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    def attach(self, node: Node) -> None:
        """Start one sender task per peer, delivering to ``node`` what arrives."""
        self.node = node
        for peer, address in self.peers.items():
            self.queues[peer] = asyncio.Queue(QUEUE_LIMIT)
            self.tasks.append(asyncio.create_task(self._sender(peer, address)))

    def send(self, messages: Sequence[Message]) -> None:
        """The Node's ``send``: queue each message for its peer; never blocks."""
        for m in messages:
            try:
                self.queues[m.to].put_nowait(m)
            except asyncio.QueueFull:  # the peer is slow or down: drop, Raft retransmits
                self._lost([m])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read frames from one peer connection and hand their messages to the Node."""
        task = asyncio.current_task()
        assert task is not None
        self.incoming[writer] = task
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(4), "big")
                if size > MAX_FRAME:
                    break
                for m in decode_messages(await reader.readexactly(size)):
                    if self.node is not None:
                        self.node.receive(m)
        except (asyncio.IncompleteReadError, ConnectionError, DecodeError):
            pass  # peer gone or garbage: drop the connection, the peer reconnects
        finally:
            writer.close()
            self.incoming.pop(writer, None)

    async def _sender(self, peer: int, address: tuple[str, int]) -> None:
        queue = self.queues[peer]
        backoff = 0.05
        while True:
            batch = [await queue.get()]
            try:
                _, writer = await asyncio.open_connection(*address)
            except OSError:
                self._lost(batch)
                await asyncio.sleep(backoff)  # reconnect back-off, not a wait for a condition
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            try:
                while True:
                    while not queue.empty() and len(batch) < 256:
                        batch.append(queue.get_nowait())
                    frame = encode_messages(batch)
                    writer.write(len(frame).to_bytes(4, "big") + frame)
                    await writer.drain()
                    for m in batch:
                        if m.type == MessageType.SNAP and self.node is not None:
                            self.node.report_snapshot(m.to, success=True)
                    batch = [await queue.get()]
            except OSError:
                self._lost(batch)
            finally:
                writer.close()

    def _lost(self, batch: Sequence[Message]) -> None:
        """Tell the Node these messages did not go out (every snapshot's fate must be told)."""
        if self.node is None or not self.node.running:
            return
        self.node.report_unreachable(batch[0].to)
        for m in batch:
            if m.type == MessageType.SNAP:
                self.node.report_snapshot(m.to, success=False)

    async def close(self) -> None:
        """Stop the sender tasks and close incoming connections (their readers see EOF)."""
        for t in self.tasks:
            t.cancel()
        readers = list(self.incoming.values())
        for writer in list(self.incoming):
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self.tasks, *readers, return_exceptions=True), 5)


async def write(node: Node, command: bytes) -> int:
    """Propose an *idempotent* command, retrying when the outcome is unknown or it was dropped.

    Only safe because applying these commands twice changes nothing (``set`` to the same value,
    ``done`` of the same member): after a ``ProposalTimeout`` the first attempt may still apply.
    """
    for attempt in range(5):
        try:
            return await node.propose(command, timeout=5)
        except NodeStopped:
            raise
        except (ProposalDropped, NodeError) as exc:  # no leader, timeout, replaced by a new leader
            print(f"member {node.id}: attempt {attempt + 1} failed: {exc}", file=sys.stderr)
    raise RuntimeError(f"member {node.id}: giving up on {command!r}")


async def member(node_id: int, fd: int, addresses: dict[int, tuple[str, int]], keys: int) -> None:
    """One member process: serve, write ``keys`` keys, wait for everyone, print a digest."""
    data: dict[str, str] = {}
    done: set[int] = set()
    everyone_done = asyncio.Event()

    def apply(entry: Committed) -> None:
        if entry.data:
            op, key, value = json.loads(entry.data)
            if op == "set":
                data[key] = value
            elif op == "done":
                done.add(int(value))
                if len(done) == len(addresses):
                    everyone_done.set()

    transport = TcpTransport({i: a for i, a in addresses.items() if i != node_id})
    storage = MemoryStorage(ConfState(voters=tuple(addresses)))
    # 20 ms ticks: heartbeats every 20 ms, elections after 200-400 ms of silence.
    node = Node(node_id, storage, send=transport.send, apply=apply, tick_interval=0.02)
    server = await asyncio.start_server(transport.serve, sock=socket.socket(fileno=fd))
    transport.attach(node)  # before the node starts sending
    try:
        node.start()
        await node.wait_leader(timeout=30)
        for k in range(keys):
            await write(node, json.dumps(["set", f"m{node_id}-{k}", str(k)]).encode())
        await write(node, json.dumps(["done", "", str(node_id)]).encode())
        await asyncio.wait_for(everyone_done.wait(), 60)
        await node.read_index(timeout=10)
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
        print(f"RESULT {node_id} {len(data)} {digest}", flush=True)
        # Stay up (others may still need this member for a quorum) until the launcher says stop.
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await asyncio.wait_for(reader.read(), 120)  # EOF: the launcher closed our stdin
    finally:
        await node.stop()
        await transport.close()
        server.close()


async def launch(keys: int, limit: float) -> int:
    """Start three members on free ports; return 0 if their final dicts agree."""
    socks = []
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))  # port 0: the kernel picks a free port
        s.listen()
        socks.append(s)
    spec = ",".join(f"{i + 1}=127.0.0.1:{s.getsockname()[1]}" for i, s in enumerate(socks))
    procs = []
    try:
        for i, s in enumerate(socks):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--member",
                    str(i + 1),
                    "--fd",
                    str(s.fileno()),
                    "--peers",
                    spec,
                    "--keys",
                    str(keys),
                    pass_fds=(s.fileno(),),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        for s in socks:
            s.close()  # the members own the listening sockets now
        results = []
        async with asyncio.timeout(limit):
            for p in procs:
                assert p.stdout is not None
                while not (line := (await p.stdout.readline()).decode()).startswith("RESULT"):
                    if not line:
                        print("a member exited before reporting", file=sys.stderr)
                        return 1
                print(line.strip())
                results.append(line.split()[2:])
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()  # tell the member to stop
        async with asyncio.timeout(30):
            codes = [await p.wait() for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        for s in socks:
            s.close()
    agree = all(r == results[0] for r in results) and codes == [0, 0, 0]
    print(f"{'all 3 members agree' if agree else 'MEMBERS DISAGREE'}: {results[0]}")
    return 0 if agree else 1


def main() -> int:
    """Launcher by default; ``--member`` runs one member (used by the launcher)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--member", type=int)
    parser.add_argument("--fd", type=int)
    parser.add_argument("--peers", default="")
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args()
    if args.member is None:
        return asyncio.run(launch(args.keys, args.timeout))
    addresses = {}
    for item in args.peers.split(","):
        ident, _, hostport = item.partition("=")
        host, _, port = hostport.rpartition(":")
        addresses[int(ident)] = (host, int(port))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(member(args.member, args.fd, addresses, args.keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
