"""A whole kvapp cluster in one process, in virtual time, on simulated disks and network.

This is what the member's seams are for: each :class:`~kvapp.node.Member`
gets its clock (the loop's), its peer network (:class:`SimNet`: per-link FIFO delivery after a
seeded random delay, drops, partitions), its file layer (a
:class:`~kvapp.storage.simfs.SimFileSystem` under its Raft store, which can lose power) and its
executor (:class:`InlineExecutor`: blocking work runs at once on the loop's thread) injected.
:class:`SimLoop` is an asyncio loop whose clock is virtual: when nothing is ready it jumps to
the next timer instead of sleeping, so a minute of cluster life takes a second or two, and a
run depends only on its seed.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import functools
import random
import selectors
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from kvapp.client import AsyncClient
from kvapp.client.native import NativeConnector
from kvapp.node import Member, MemberConfig, cluster_id_for, member_id_for
from kvapp.server.native import NativeServer
from kvapp.service import MemberInfo
from kvapp.storage import RaftStore
from kvapp.storage.simfs import SimFileSystem
from kvapp.storage.snapdata import snapshot_bytes
from raftlib import Message, MessageType
from raftlib.codec import decode_messages, encode_messages

DATA = Path("/data")
"""Where each member's store lives on its simulated disk."""
CLUSTER = cluster_id_for("sim")
"""The simulated clusters' id."""
_T = TypeVar("_T")


class _InstantSelector(selectors.BaseSelector):
    """A selector with nothing to wait for: ``select(t)`` advances the virtual clock by ``t``."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("the simulation has nothing left to run and no timer set")
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class SimLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that jumps from one timer to the next."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(selector=_InstantSelector(self))

    def time(self) -> float:
        """The virtual clock, in seconds from 0."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (the selector does, when nothing is ready)."""
        self._now += max(0.0, seconds)


class InlineExecutor(concurrent.futures.Executor):
    """Runs each job at once on the calling thread: no threads, no scheduling nondeterminism."""

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Run ``fn`` now; a future already done with its result or exception."""
        f: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it
            f.set_exception(exc)
        return f


class SimNet:
    """The peer network: messages arrive after a random delay, in order on each link.

    ``isolated`` members neither send nor receive; ``drop`` is the chance a message is lost
    (a connection reset). Messages go to whatever member runs under the id when they arrive.
    """

    def __init__(self, rng: random.Random, loop: SimLoop) -> None:
        self.rng = rng
        self.loop = loop
        self.members: dict[int, Member] = {}
        self.isolated: set[int] = set()
        self.drop = 0.0
        self.delay = (0.0002, 0.003)
        self.removed: dict[tuple[int, int], int] = {}
        self._link_free: dict[tuple[int, int], float] = {}
        self.sent = 0

    def links(self, me: int) -> SimLinks:
        """Member ``me``'s peer links (what :class:`~kvapp.node.Member` sends through)."""
        return SimLinks(self, me)

    def deliver(self, frm: int, m: Message) -> None:
        """Send ``m`` from ``frm``: lost, refused as from a removed member, or delivered later."""
        if frm in self.isolated or m.to in self.isolated or self.rng.random() < self.drop:
            self._lost(frm, m)
            return
        removed_at = self.removed.get((m.to, frm))
        sender = self.members.get(frm)
        if removed_at and sender is not None:
            self.loop.call_soon(sender.report_removed, m.to, removed_at)
            return
        m = _over_the_wire(m)
        link = (frm, m.to)
        at = max(self.loop.time() + self.rng.uniform(*self.delay), self._link_free.get(link, 0.0))
        self._link_free[link] = at
        self.sent += 1
        self.loop.call_at(at, self._arrive, frm, m)

    def _arrive(self, frm: int, m: Message) -> None:
        dest = self.members.get(m.to)
        if frm in self.isolated or m.to in self.isolated or dest is None:
            self._lost(frm, m)
            return
        dest.receive(m)
        if m.type == MessageType.SNAP:
            self._tell(frm, "report_snapshot", m.to, success=True)

    def _lost(self, frm: int, m: Message) -> None:
        """Report a lost message as the real transport does.

        A snapshot that did not get through is reported failed (else the leader would wait
        for it for ever); a peer out of reach, unreachable.
        """
        if m.type == MessageType.SNAP:
            self._tell(frm, "report_snapshot", m.to, success=False)
        if frm in self.isolated or m.to in self.isolated or m.to not in self.members:
            self._tell(frm, "report_unreachable", m.to)

    def _tell(self, member_id: int, what: str, *args: object, **kwargs: object) -> None:
        member = self.members.get(member_id)
        if member is not None:
            self.loop.call_soon(functools.partial(getattr(member, what), *args, **kwargs))


def _over_the_wire(m: Message) -> Message:
    """``m`` as the receiver gets it from the real transport.

    Encoded and decoded, and a snapshot's data as bytes (the sender's may be a view of a file
    on its own disk).
    """
    raw: object = m.snapshot.data if m.snapshot is not None else b""
    if m.snapshot is not None and not isinstance(raw, bytes):  # typed bytes, may be a file's
        data = snapshot_bytes(raw)
        m = attrs.evolve(m, snapshot=attrs.evolve(m.snapshot, data=data))
    (out,) = decode_messages(encode_messages([m]))
    return out


class SimLinks:
    """One member's view of :class:`SimNet` (kvapp's ``PeerLinks``)."""

    def __init__(self, net: SimNet, me: int) -> None:
        self.net = net
        self.me = me

    def send(self, messages: Sequence[Message]) -> None:
        """Send each message through the network."""
        for m in messages:
            self.net.deliver(self.me, m)

    def add_peer(self, member_id: int, address: tuple[str, int]) -> None:
        """Link to a member (added again, it is no longer refused as removed)."""
        self.net.removed.pop((self.me, member_id), None)

    def remove_peer(self, member_id: int, *, removed_at: int = 0) -> None:
        """Refuse a removed member's messages from now on, telling it it was removed."""
        if removed_at:
            self.net.removed[(self.me, member_id)] = removed_at


class _Pipe(asyncio.WriteTransport):
    """One direction of an in-memory byte stream.

    What is written arrives at the other end's reader, in order, after the network's delay;
    held back (as TCP would) while either end is cut off. Closing or aborting ends the stream
    at both ends.
    """

    def __init__(self, net: SimNet, ends: tuple[int, int], peername: str) -> None:
        super().__init__()
        self.net = net
        self.ends = ends  # (this end's member id or 0 for a client, the other end's)
        self.peername = peername
        self.peer_protocol: asyncio.StreamReaderProtocol | None = None
        self.own_protocol: asyncio.StreamReaderProtocol | None = None
        self.other: _Pipe | None = None
        self._closing = False
        self._free = 0.0
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        loop = self.net.loop
        at = max(loop.time() + self.net.rng.uniform(*self.net.delay), self._free)
        self._free = at
        self._queue.append((at, bytes(data)))
        loop.call_at(at, self._pump)

    def _pump(self) -> None:
        """Hand over what is due, in order; all of it waits while an end is cut off."""
        if self._closing:  # aborted: what was still on the way is lost, as with a reset
            self._queue.clear()
            return
        if any(end in self.net.isolated for end in self.ends if end):
            self.net.loop.call_later(0.05, self._pump)
            return
        now = self.net.loop.time()
        while self._queue and self._queue[0][0] <= now:
            _, data = self._queue.popleft()
            if self.peer_protocol is not None:
                self.peer_protocol.data_received(data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        for pipe in (self, self.other):
            if pipe is not None and not pipe._closing:
                pipe._closing = True
                if pipe.own_protocol is not None:
                    self.net.loop.call_soon(pipe.own_protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.peername, 2379) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False


def stream_pair(
    net: SimNet, client_end: int, member_end: int
) -> tuple[
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
]:
    """A connected pair of in-memory streams: (the client's end, the member's end)."""
    loop = net.loop
    ends = []
    pipes = [
        _Pipe(net, (client_end, member_end), f"member-{member_end:x}"),
        _Pipe(net, (member_end, client_end), f"client-{client_end:x}"),
    ]
    pipes[0].other, pipes[1].other = pipes[1], pipes[0]
    for pipe in pipes:
        reader = asyncio.StreamReader(limit=1 << 24, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        protocol.connection_made(pipe)
        pipe.own_protocol = protocol
        ends.append((reader, asyncio.StreamWriter(pipe, protocol, reader, loop)))
    pipes[0].peer_protocol = pipes[1].own_protocol
    pipes[1].peer_protocol = pipes[0].own_protocol
    return ends[0], ends[1]


class SimConnector(NativeConnector):
    """kvapp's native protocol to the simulated members, over in-memory streams."""

    def __init__(self, cluster: SimCluster) -> None:
        super().__init__()
        self.cluster = cluster

    async def open_stream(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to the member serving ``host`` (``<name>.sim``), refused if it is down."""
        net = self.cluster.net
        await asyncio.sleep(net.rng.uniform(*net.delay))
        member_id = self.cluster.by_host.get(host)
        server = self.cluster.servers.get(member_id or 0)
        if member_id is None or server is None or member_id in net.isolated:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{host}:{port} refused")
        client_end, member_end = stream_pair(net, 0, member_id)
        task = asyncio.create_task(server._accept(*member_end))  # as its listener would
        self.cluster.connections.add(task)
        task.add_done_callback(self.cluster.connections.discard)
        return client_end


def infos(n: int) -> list[MemberInfo]:
    """The first ``n`` members: ``m1``... with peer URLs ``http://10.0.0.<i>:2380``."""
    out = []
    for i in range(1, n + 1):
        urls = (f"http://10.0.0.{i}:2380",)
        out.append(MemberInfo(member_id_for(urls, CLUSTER), f"m{i}", urls))
    return out


class SimCluster:
    """``n`` members on one :class:`SimLoop`, each with its own simulated disk.

    Faults are plain calls: :meth:`isolate` and :meth:`heal`, :meth:`lose_messages`,
    :meth:`power_loss` (the member stops; its disk keeps what a crash would leave) then
    :meth:`start` (it recovers from that disk), :meth:`fill_disk` and :meth:`free_disk`,
    ``disks[id].fault`` (failing calls; see :class:`~kvapp.storage.simfs.SimFileSystem`), and
    :meth:`replace` (a membership change). Everything is seeded by ``seed``.

    Args:
        loop: the running :class:`SimLoop`.
        seed: the seed of every random choice of the cluster and its network.
        n: how many members.
        **config: :class:`~kvapp.node.MemberConfig` fields for every member (by default
            10 ms ticks, 1 s request timeouts, a snapshot every 200 requests).
    """

    def __init__(self, loop: SimLoop, seed: int, n: int = 3, **config: Any) -> None:
        self.loop = loop
        self.rng = random.Random(seed)
        self.net = SimNet(random.Random(self.rng.random()), loop)
        self.infos = infos(n)
        self.disks = {i.id: SimFileSystem() for i in self.infos}
        self.members: dict[int, Member] = {}
        self.stores: dict[int, RaftStore] = {}
        self.config = {
            "tick_interval": 0.01,
            "lease_tick": 0.02,
            "request_timeout": 1.0,
            "snapshot_count": 200,
            "keep_entries": 50,
            **config,
        }
        self.crashes = 0
        self.replaced = 0
        self.configs = {
            i.id: MemberConfig(
                name=i.name,
                member_id=i.id,
                cluster_id=CLUSTER,
                initial_members=tuple(self.infos),
                client_urls=(f"http://{i.name}.sim:2379",),
                **self.config,
            )
            for i in self.infos
        }
        self.by_host = {f"{i.name}.sim": i.id for i in self.infos}
        self.servers: dict[int, NativeServer] = {}  # each member's native protocol, unlistened
        self.connections: set[asyncio.Task[None]] = set()
        self.endpoints = [f"{i.name}.sim:2379" for i in self.infos]
        self.gone: set[int] = set()  # removed from the cluster: never started again
        self._joins = 0

    async def start(self, member_id: int) -> Member:
        """Start (or restart, from its disk) one member, serving clients as ``<name>.sim``."""
        config = self.configs[member_id]
        info = next(i for i in config.initial_members if i.id == member_id)
        store = RaftStore.open(
            DATA, cluster_id=CLUSTER, member_id=info.id, segment_size=1 << 16,
            snapshot_in_file=True, fs=self.disks[member_id],
        )  # fmt: skip
        m = Member(
            config,
            store,
            self.net.links(info.id),
            clock=self.loop.time,
            rng=random.Random(self.rng.random()),
            executor=InlineExecutor(),
            run_id=self.rng.getrandbits(64),
            disk_free=lambda: self.disks[member_id].free_bytes(DATA),  # its disk of the moment
        )
        self.members[member_id] = m
        self.stores[member_id] = store
        self.net.members[member_id] = m
        await m.start()
        self.servers[member_id] = NativeServer(m)
        return m

    async def start_all(self) -> None:
        """Start the initial members."""
        for i in self.infos:
            await self.start(i.id)

    async def start_missing(self) -> None:
        """Start every member that is down but still in the cluster; stop the removed ones.

        A removal that timed out may still have happened: the leader's member list decides.
        """
        for member_id in sorted(self.configs):
            if member_id not in self.members and member_id not in self.gone:
                await self.start(member_id)
        for _ in range(1000):
            lead = self.leader()
            if lead is not None:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("no leader after every member was started")
        listed = {m.id for m in lead.member_list()}
        for member_id in sorted(set(self.members) - listed):
            self.gone.add(member_id)
            self._unserve(member_id)
            self.net.members.pop(member_id, None)
            await self._stop(self.members.pop(member_id), self.stores.pop(member_id))

    async def replace(self, victim: int) -> str:
        """Add a new member (as a learner, promoted once caught up), then remove ``victim``.

        Returns what happened, for the record. Any step may fail under faults; the cluster
        must stay correct whatever the outcome.
        """
        timeout = 3.0
        lead = self.leader()
        if lead is None:
            return "replace: no leader"
        self._joins += 1
        urls = (f"http://10.0.1.{self._joins}:2380",)
        try:
            added = await asyncio.wait_for(lead.member_add(urls, is_learner=True), timeout)
        except Exception as exc:  # noqa: BLE001 - recorded; the run goes on
            return f"replace: add failed ({type(exc).__name__})"
        info = MemberInfo(added.id, f"j{self._joins}", urls, is_learner=True)
        initial = [m for m in lead.member_list() if m.id != added.id] + [info]
        self.configs[added.id] = MemberConfig(
            name=info.name,
            member_id=info.id,
            cluster_id=CLUSTER,
            initial_members=tuple(initial),
            new_cluster=False,
            client_urls=(f"http://{info.name}.sim:2379",),
            **self.config,
        )
        self.by_host[f"{info.name}.sim"] = info.id
        self.disks[added.id] = SimFileSystem()
        await self.start(added.id)
        for _ in range(int(timeout / 0.01)):
            now = self.leader()
            if now is not None and any(
                m.id == added.id and not m.is_learner for m in now.member_list()
            ):
                break
            await asyncio.sleep(0.01)
        else:
            return f"replace: {added.id:x} added, not promoted in time"
        asker = self.members.get(victim) or self.leader()
        if asker is None:
            return f"replace: {added.id:x} promoted, no one to remove {victim:x}"
        try:
            await asyncio.wait_for(asker.member_remove(victim), timeout)
        except Exception as exc:  # noqa: BLE001 - recorded; the run goes on
            return (
                f"replace: {added.id:x} promoted, removing {victim:x} failed ({type(exc).__name__})"
            )
        self.gone.add(victim)
        self.replaced += 1
        self._unserve(victim)
        m = self.members.pop(victim, None)
        self.net.members.pop(victim, None)
        if m is not None:
            await self._stop(m, self.stores.pop(victim))
        return f"replace: {victim:x} by {added.id:x}"

    async def power_loss(self, member_id: int) -> None:
        """The member's machine loses power: its disk keeps what a crash would leave."""
        self.disks[member_id] = self.disks[member_id].crash(random.Random(self.rng.random()))
        self.crashes += 1
        self._unserve(member_id)
        m = self.members.pop(member_id)
        self.net.members.pop(member_id, None)
        await self._stop(m, self.stores.pop(member_id))

    async def stop_all(self) -> None:
        """Stop every running member (without handing leadership over)."""
        for member_id in list(self.members):
            self._unserve(member_id)
            m = self.members.pop(member_id)
            self.net.members.pop(member_id, None)
            await self._stop(m, self.stores.pop(member_id))

    def _unserve(self, member_id: int) -> None:
        server = self.servers.pop(member_id, None)
        if server is not None:
            server.drop_connections()

    @staticmethod
    async def _stop(m: Member, store: RaftStore) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(m.stop(transfer=False), 10)
        with contextlib.suppress(OSError):
            store.close()

    def isolate(self, member_id: int) -> None:
        """Cut a member off from everyone, peers and clients (its connections hang, as TCP's)."""
        self.net.isolated.add(member_id)

    def heal(self, member_id: int | None = None) -> None:
        """End one member's isolation, or (``None``) everyone's."""
        if member_id is None:
            self.net.isolated.clear()
        else:
            self.net.isolated.discard(member_id)

    def lose_messages(self, chance: float) -> None:
        """From now on lose each peer message with ``chance`` (0 to 1; 0: none)."""
        if not 0.0 <= chance <= 1.0:
            raise ValueError(f"a chance is between 0 and 1, not {chance}")
        self.net.drop = chance

    def fill_disk(self, member_id: int, room: int = 0) -> None:
        """Make a member's disk full but for ``room`` bytes (it raises NOSPACE)."""
        if room < 0:
            raise ValueError(f"room must not be negative, not {room}")
        disk = self.disks[member_id]
        disk.capacity = disk.used_bytes() + room

    def free_disk(self, member_id: int) -> None:
        """Give a member's disk room again (it clears its NOSPACE)."""
        self.disks[member_id].capacity = None

    def leader(self) -> Member | None:
        """A running member that believes it leads (at most one per term), or None."""
        for m in self.members.values():
            if m.node.is_leader:
                return m
        return None

    def client(self, n: int = 0, rng: random.Random | None = None) -> AsyncClient:
        """Kvapp's client over the simulated network, starting at the ``n``-th endpoint.

        Its client id and retry jitter come from ``rng`` (by default the cluster's seeded
        generator). It syncs its endpoint list four times a virtual second, or replaced
        members would take the cluster with them: replacements can follow each other within
        a second, and a list left that long can name only removed members.
        """
        rng = rng if rng is not None else self.rng
        k = n % len(self.endpoints)
        return AsyncClient(
            self.endpoints[k:] + self.endpoints[:k],
            connector=SimConnector(self),
            connect_timeout=0.5,
            request_timeout=1.0,
            max_attempts=4,
            client_id=rng.randrange(1, 2**63),
            rng=random.Random(rng.random()),
            auto_sync_interval=0.25,
        )


def run(
    scenario: Callable[[SimCluster], Awaitable[_T]], *, seed: int, members: int = 3, **config: Any
) -> _T:
    """Run ``scenario`` against a fresh simulated cluster; what it returns.

    Makes a :class:`SimLoop`, starts ``members`` members (``config`` as for
    :class:`SimCluster`), awaits ``scenario(cluster)``, then stops them. The same seed and the
    same scenario give the same run, event for event: a failure replays exactly. The scenario
    must keep to asyncio on the running loop (no threads, no real sockets, no ``time.sleep``),
    or the run is neither fast nor reproducible.
    """

    async def main() -> _T:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SimLoop)
        cluster = SimCluster(loop, seed, members, **config)
        await cluster.start_all()
        try:
            return await scenario(cluster)
        finally:
            await cluster.stop_all()

    with asyncio.Runner(loop_factory=SimLoop) as runner:
        return runner.run(main())
