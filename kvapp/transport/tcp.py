"""``TcpTransport``: a member's peer links over asyncio TCP (optionally TLS).

**Connections.** Each member dials each peer for its *outgoing* raft messages and only reads on
the connections peers dial to it ("one connection per direction", like etcd's stream
transport). A newer incoming stream from the same peer replaces the older one (the peer
restarted). A snapshot travels on a connection of its own, opened per transfer, like etcd's
separate snapshot stream: a multi-MiB transfer, with its flow control (await drain between
chunks), runs in its own task and never holds up the small, latency-critical messages
(heartbeats, votes, appends) on the stream. A consequence, as in etcd: a SNAP message is not
ordered with the stream's messages, which Raft tolerates. See :mod:`kvapp.transport.wire` for
the bytes.

**Sending.** :meth:`TcpTransport.send` never blocks: it appends to the peer's bounded queue and
schedules one flush (``loop.call_soon``) for the loop turn, so everything sent to a peer in one
turn goes out as one frame in one write. It drops (and calls ``on_unreachable``) rather than
wait: when the peer is not connected, its queue is full, or its link is paused above the write
buffer's high-water mark. Raft then backs off that peer, and its own retransmission recovers.

**Reconnecting.** A dialer task per peer connects, handshakes, and on failure sleeps a jittered
exponential back-off (:func:`~kvapp.transport.api.backoff_delay` with the injected ``rng``),
reset by a successful connect.

**Bad input.** A refused handshake, an oversized or malformed frame or a message that does not
decode closes that one connection with a log line naming the reason; the member and its other
links carry on. Nothing here uses wall-clock time: timers are the running loop's
(``call_later``, ``asyncio.timeout``), so a simulated loop can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import io
import logging
import random
import socket
import ssl
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import BinaryIO, cast

import attrs
import cbor2

from kvapp.storage.snapdata import FileSnapshotData
from kvapp.tls import TlsAcceptor, describe_tls_error
from kvapp.transport.api import (
    MessageHandler,
    PeerStats,
    RemovedHandler,
    SnapshotReader,
    SnapshotStatusHandler,
    TransportConfig,
    UnreachableHandler,
    backoff_delay,
)
from kvapp.transport.links import InboundLink, OutboundLink
from kvapp.transport.wire import (
    KIND_SNAPSHOT,
    KIND_STREAM,
    SNAP_END,
    FramedProtocol,
    FrameKind,
)
from raftlib.codec import encode_message, encode_messages
from raftlib.types import Message, MessageType

__all__ = ["PeerRefused", "TcpTransport", "message_size_bound"]

logger = logging.getLogger("kvapp.transport")

_U64 = 1 << 64
_INT = 9  # the largest CBOR encoding of an unsigned integer
_BATCH_OVERHEAD = 2 * _INT  # the batch's array header and format version
_ENCODE_ERRORS = (ValueError, TypeError, AttributeError, cbor2.CBOREncodeError)


class PeerRefused(ConnectionError):
    """The peer closed our connection during the handshake, giving ``reason``.

    ``removed_at`` is non-zero when the peer refused us as removed from the cluster by the
    entry at that log index.
    """

    def __init__(self, reason: str, removed_at: int = 0) -> None:
        super().__init__(reason)
        self.removed_at = removed_at


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def message_size_bound(m: Message) -> int:
    """An upper bound of ``m``'s CBOR encoding inside a batch, in bytes (no encoding done).

    Every integer is charged its largest encoding, so batches cut by this bound never exceed the
    frame limit, and queue limits in bytes cost no encoding at :meth:`TcpTransport.send` time.
    """
    n = 1 + 8 * _INT + 1 + _INT + _INT + len(m.context)
    for e in m.entries:
        n += 1 + 3 * _INT + _INT + len(e.data)
    snap = m.snapshot
    if snap is None:
        return n + 1
    cs = snap.metadata.conf_state
    ids = len(cs.voters) + len(cs.learners) + len(cs.voters_outgoing) + len(cs.learners_next)
    return n + 1 + _INT + len(snap.data) + 1 + 2 * _INT + 1 + 4 * _INT + ids * _INT + 1


def _data_reader(data: object) -> SnapshotReader:
    """A reader of a snapshot's data: in memory, or left in its file by the RaftStore."""
    if isinstance(data, FileSnapshotData):
        return data.reader()
    return _BytesReader(cast("bytes", data))


class _BytesReader:
    """A :class:`SnapshotReader` over in-memory snapshot data."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, size: int, /) -> bytes:
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def close(self) -> None:
        self._data = b""


class _Peer:
    """Everything the transport keeps for one peer."""

    def __init__(self, member_id: int, address: tuple[str, int]) -> None:
        self.id = member_id
        self.address = address
        self.stats = PeerStats()
        self.queue: deque[tuple[Message, int]] = deque()
        self.queued_bytes = 0
        self.link: OutboundLink | None = None
        self.inbound: InboundLink | None = None
        self.dialer: asyncio.Task[None] | None = None
        self.snapshot: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.redial = asyncio.Event()
        self.failures = 0
        self.last_error = ""


class TcpTransport:
    """The peer links of member ``member_id`` of cluster ``cluster_id``, over TCP.

    Implements :class:`~kvapp.transport.api.PeerNetwork`. Use it from one event loop: construct
    anywhere, then ``await start()`` on the loop, and ``await stop()`` when done (it cannot be
    restarted). All callbacks run on the loop and must not block; an exception from one is
    logged and otherwise ignored.

    Args:
        member_id: this member's id (non-zero, as in Raft).
        cluster_id: the cluster's id; peers from another cluster are refused.
        listen: ``(host, port)`` to listen on (port 0 picks one; see :attr:`address`), or an
            already bound socket (then ``start`` calls ``listen`` on it).
        on_message: called with each message received (``Node.receive``).
        on_unreachable: called with a peer id when messages to it were dropped
            (``Node.report_unreachable``).
        on_snapshot_status: called with ``(peer_id, ok)`` exactly once for every snapshot
            transfer started by :meth:`send`, when it finished or failed
            (``Node.report_snapshot``); not called for transfers cut short by :meth:`stop`.
        peers: initial peers, ``{member_id: (host, port)}``.
        config: limits and timings; defaults to :class:`TransportConfig()`.
        rng: source of reconnect jitter (seed it for reproducible tests).
        server_ssl: TLS context for the listening side (:meth:`kvapp.tls.TlsInfo.server_context`);
            a connection whose handshake fails is refused with a log line naming its address
            and the reason (:class:`kvapp.tls.TlsAcceptor`).
        client_ssl: TLS context for the dialing side (:meth:`kvapp.tls.TlsInfo.client_context`):
            it checks each peer's certificate against the host of its address.
        snapshot_source: given a SNAP message, a :class:`SnapshotReader` of its data (to stream
            a snapshot file), or None to send ``msg.snapshot.data``.
        snapshot_sink: given an incoming SNAP message (data empty), a writable, seekable binary
            stream to spool its chunks to; default ``io.BytesIO``. The transport reads it back
            once complete, delivers the message with the data, and closes the stream (also on
            failure; removing a spool file is the factory owner's job). A
            :class:`~kvapp.transport.spool.SnapshotSpool` instead spools to files it removes
            itself, and the message is delivered with the file as its data, unread (a
            :class:`~kvapp.storage.snapdata.FileSnapshotData`).
        on_removed: called with ``(peer_id, index)`` when ``peer_id`` refused our connection
            because this member was removed from the cluster by the entry at log ``index``
            (``Member.report_removed``); see :meth:`remove_peer`.
    """

    def __init__(
        self,
        member_id: int,
        cluster_id: int,
        *,
        listen: tuple[str, int] | socket.socket,
        on_message: MessageHandler,
        on_unreachable: UnreachableHandler,
        on_snapshot_status: SnapshotStatusHandler,
        peers: Mapping[int, tuple[str, int]] | None = None,
        config: TransportConfig | None = None,
        rng: random.Random | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        snapshot_source: Callable[[Message], SnapshotReader | None] | None = None,
        snapshot_sink: Callable[[Message], BinaryIO] | None = None,
        on_removed: RemovedHandler | None = None,
    ) -> None:
        if not 0 < member_id < _U64:
            raise ValueError(f"member_id must be in 1..2**64-1, got {member_id}")
        if not 0 <= cluster_id < _U64:
            raise ValueError(f"cluster_id must be in 0..2**64-1, got {cluster_id}")
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.config = config if config is not None else TransportConfig()
        self.dropped_unknown = 0  # messages addressed to no known peer
        self._listen = listen
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._on_snapshot_status = on_snapshot_status
        self._on_removed = on_removed
        self._rng = rng if rng is not None else random.Random()
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._snapshot_source = snapshot_source
        self._snapshot_sink: Callable[[Message], BinaryIO] = (
            snapshot_sink if snapshot_sink is not None else lambda _m: io.BytesIO()
        )
        self._state = _State.NEW
        self._server: asyncio.Server | None = None
        self._acceptor: TlsAcceptor | None = None
        self._address: tuple[str, int] | None = None
        self._peers: dict[int, _Peer] = {}
        self._removed: dict[int, int] = {}  # removed member id -> log index of its removal
        self._conns: set[FramedProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty: dict[int, _Peer] = {}
        self._flush_handle: asyncio.Handle | None = None
        for pid, addr in (peers or {}).items():
            self.add_peer(pid, addr)

    # -- observation --

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` this transport listens on.

        Raises:
            RuntimeError: before :meth:`start`.
        """
        if self._address is None:
            raise RuntimeError("not listening: call start() first")
        return self._address

    def stats(self, peer_id: int) -> PeerStats:
        """The counters of ``peer_id`` (live object). Raises KeyError for an unknown peer."""
        return self._peers[peer_id].stats

    def is_connected(self, peer_id: int) -> bool:
        """Whether the outgoing link to ``peer_id`` is up (handshake accepted)."""
        peer = self._peers.get(peer_id)
        return peer is not None and peer.link is not None

    async def wait_connected(self, peer_id: int) -> None:
        """Wait until the outgoing link to ``peer_id`` is up; wrap in a timeout.

        Raises:
            KeyError: ``peer_id`` is not a peer.
        """
        await self._peers[peer_id].connected.wait()

    # -- PeerNetwork --

    def add_peer(self, member_id: int, address: tuple[str, int]) -> None:
        """Link to ``member_id`` at ``address``; a changed address closes and re-dials the link.

        Raises:
            ValueError: ``member_id`` is this member's own id or not a valid id.
        """
        if member_id == self.member_id or not 0 < member_id < _U64:
            raise ValueError(f"member {self.member_id:x} cannot have {member_id:x} as a peer")
        address = (address[0], int(address[1]))
        peer = self._peers.get(member_id)
        if peer is not None:
            if peer.address != address:
                logger.info(
                    "member %x: peer %x moved to %s:%d", self.member_id, member_id, *address
                )
                peer.address = address
                if peer.link is not None:
                    peer.link.abort()
            return
        self._removed.pop(member_id, None)
        peer = _Peer(member_id, address)
        self._peers[member_id] = peer
        if self._state is _State.RUNNING:
            self._start_dialer(peer)

    def remove_peer(self, member_id: int, *, removed_at: int = 0) -> None:
        """Forget ``member_id``: send what is queued for it, then close its links.

        With ``removed_at`` (the log index of its removal), its later handshakes are refused as
        removed, telling it so: a member removed before the entry reached it would otherwise
        campaign forever.

        The queue is flushed and the links closed gracefully (their buffered frames still go
        out) because a member is removed when its removal is applied, and the messages sent in
        that same loop turn may carry the commit index that tells the removed member about its
        own removal: dropped, it might never learn it and never stop. A snapshot transfer in
        flight to it is cancelled and reported as failed.
        """
        if removed_at:
            self._removed[member_id] = removed_at
        peer = self._peers.get(member_id)
        if peer is None:
            return
        if self._dirty.pop(member_id, None) is not None:
            self._flush_peer(peer)
        del self._peers[member_id]
        peer.queue.clear()
        peer.queued_bytes = 0
        for task in (peer.dialer, peer.snapshot):
            if task is not None:
                task.cancel()
        for conn in (peer.link, peer.inbound):
            if conn is not None:
                conn.close()

    def send(self, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for their peers; flush once at the end of this loop turn.

        Never blocks and never raises. Drops (counting ``messages_dropped`` and calling
        ``on_unreachable`` once per peer per call) what cannot be queued: peer unknown, not
        connected, link paused, queue full. SNAP messages start a chunked transfer on their
        own connection instead (one at a time per peer; a second one while the first is in
        flight is dropped without a status, the first one's status answers for it).
        """
        unreachable: dict[int, None] = {}
        for m in messages:
            peer = self._peers.get(m.to)
            if peer is None:
                self.dropped_unknown += 1
                logger.debug("member %x: no peer %x; dropped %s", self.member_id, m.to, m.type)
                unreachable[m.to] = None
            elif m.type == MessageType.SNAP and m.snapshot is not None:
                self._start_snapshot(peer, m)
            elif not self._enqueue(peer, m):
                peer.stats.messages_dropped += 1
                unreachable[peer.id] = None
        for pid in unreachable:
            self._report_unreachable(pid)

    async def start(self) -> None:
        """Listen, and start dialing every known peer.

        Raises:
            RuntimeError: called twice.
            OSError: the listening address cannot be bound.
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"start() called on a {self._state.value} transport")
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.BaseProtocol] = lambda: InboundLink(self)  # noqa: E731
        if self._server_ssl is not None:
            # TLS through the acceptor, not create_server(ssl=...), which drops a failed
            # handshake silently: a peer without a valid certificate must be logged.
            self._acceptor = TlsAcceptor(
                self._server_ssl,
                factory,
                what=f"member {self.member_id:x}: peer links",
                handshake_timeout=self.config.handshake_timeout,
                log=logger,
            )
            factory = self._acceptor
        if isinstance(self._listen, socket.socket):
            server = await loop.create_server(factory, sock=self._listen)
        else:
            host, port = self._listen
            server = await loop.create_server(factory, host, port)
        self._server = server
        name = server.sockets[0].getsockname()
        self._address = (str(name[0]), int(name[1]))
        self._state = _State.RUNNING
        logger.info(
            "member %x: peer transport listening on %s:%d%s",
            self.member_id,
            *self._address,
            " (TLS)" if self._server_ssl is not None else "",
        )
        for peer in self._peers.values():
            self._start_dialer(peer)

    async def stop(self) -> None:
        """Stop listening, cancel dialers and snapshot transfers, close every connection.

        Messages still queued are dropped without callbacks; no callback runs after this
        returns. Idempotent.
        """
        if self._state in (_State.STOPPING, _State.STOPPED):
            return
        self._state = _State.STOPPING
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._server is not None:
            self._server.close()
        if self._acceptor is not None:
            await self._acceptor.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        if conns:
            await asyncio.wait([c.closed for c in conns], timeout=self.config.handshake_timeout)
        if self._server is not None:
            await self._server.wait_closed()
        for peer in self._peers.values():
            peer.queue.clear()
            peer.queued_bytes = 0
            peer.link = None
            peer.inbound = None
            peer.connected.clear()
        self._dirty.clear()
        self._state = _State.STOPPED
        logger.info("member %x: peer transport stopped", self.member_id)

    # -- sending --

    def _enqueue(self, peer: _Peer, m: Message) -> bool:
        link = peer.link
        if self._state is not _State.RUNNING or link is None or link.paused or link.closing:
            return False
        try:
            size = message_size_bound(m)
        except _ENCODE_ERRORS as exc:
            logger.error(
                "member %x: dropping a malformed %s to %x: %r",
                self.member_id,
                getattr(m, "type", "?"),
                peer.id,
                exc,
            )
            return False
        cfg = self.config
        if (
            len(peer.queue) >= cfg.max_queue_messages
            or peer.queued_bytes + size > cfg.max_queue_bytes
        ):
            return False
        peer.queue.append((m, size))
        peer.queued_bytes += size
        self._mark_dirty(peer)
        return True

    def _mark_dirty(self, peer: _Peer) -> None:
        self._dirty[peer.id] = peer
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, {}
        for peer in dirty.values():
            if self._peers.get(peer.id) is peer:
                self._flush_peer(peer)

    def _flush_peer(self, peer: _Peer) -> None:
        link = peer.link
        if link is None or link.closing:
            self._drop_queue(peer)
            return
        limit = self.config.max_frame_size
        queue = peer.queue
        while queue and not link.paused and not link.closing:
            batch: list[Message] = []
            bound = _BATCH_OVERHEAD
            while queue and (not batch or bound + queue[0][1] <= limit):
                m, size = queue.popleft()
                peer.queued_bytes -= size
                batch.append(m)
                bound += size
            payload = self._encode_batch(peer, batch)
            if payload is not None:
                peer.stats.bytes_sent += link.write_frame(FrameKind.MESSAGES, payload)
                peer.stats.frames_sent += 1
                peer.stats.messages_sent += len(batch)

    def _encode_batch(self, peer: _Peer, batch: list[Message]) -> bytes | None:
        try:
            payload = encode_messages(batch)
        except _ENCODE_ERRORS:
            good = []
            for m in batch:
                try:
                    encode_message(m)
                except _ENCODE_ERRORS as exc:
                    peer.stats.messages_dropped += 1
                    logger.error(
                        "member %x: dropping unencodable %s to %x: %s",
                        self.member_id,
                        getattr(m, "type", "?"),
                        peer.id,
                        exc,
                    )
                else:
                    good.append(m)
            if not good:
                return None
            batch[:] = good
            payload = encode_messages(good)
        if len(payload) > self.config.max_frame_size:  # one message alone above the limit
            peer.stats.messages_dropped += len(batch)
            logger.error(
                "member %x: dropping a %d-byte %s to %x: above the frame limit of %d",
                self.member_id,
                len(payload),
                batch[0].type.name,
                peer.id,
                self.config.max_frame_size,
            )
            self._report_unreachable(peer.id)
            return None
        return payload

    def _drop_queue(self, peer: _Peer) -> None:
        dropped = len(peer.queue)
        peer.queue.clear()
        peer.queued_bytes = 0
        if dropped:
            peer.stats.messages_dropped += dropped
            if self._peers.get(peer.id) is peer:
                self._report_unreachable(peer.id)

    def _on_resume(self, link: OutboundLink) -> None:
        peer = self._peers.get(link.peer_id)
        if peer is not None and peer.link is link and peer.queue:
            self._mark_dirty(peer)

    # -- dialing --

    def _start_dialer(self, peer: _Peer) -> None:
        peer.dialer = self._spawn(self._dial_loop(peer), f"dial peer {peer.id:x}")

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            coro, name=f"kvapp.transport member {self.member_id:x}: {name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connect(self, peer: _Peer, kind: int) -> OutboundLink:
        loop = asyncio.get_running_loop()
        host, port = peer.address
        async with asyncio.timeout(self.config.connect_timeout):
            if self._client_ssl is None:
                _, link = await loop.create_connection(
                    lambda: OutboundLink(self, peer.id, kind), host, port
                )
            else:  # the peer's certificate must name ``host`` (an IP address or a DNS name)
                _, link = await loop.create_connection(
                    lambda: OutboundLink(self, peer.id, kind, tls=True),
                    host,
                    port,
                    ssl=self._client_ssl,
                    ssl_handshake_timeout=self.config.handshake_timeout,
                )
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                ok, reason = await link.accepted
        except BaseException:
            link.abort()
            raise
        if not ok:
            link.abort()
            raise PeerRefused(reason, link.removed_at)
        return link

    async def _dial_loop(self, peer: _Peer) -> None:
        """Keep one outgoing stream to ``peer`` up, re-dialing with back-off."""
        first = True
        cfg = self.config
        while True:
            if not first:
                delay = backoff_delay(peer.failures, cfg.backoff_base, cfg.backoff_max, self._rng)
                # A peer that just connected to us is up again: dial it now, not after back-off.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await peer.redial.wait()
            peer.redial.clear()
            first = False
            try:
                link = await self._connect(peer, KIND_STREAM)
            except OSError as exc:  # refusals, timeouts and TLS errors are OSErrors too
                peer.failures += 1
                peer.stats.dial_failures += 1
                self._log_dial_failure(peer, exc)
                if isinstance(exc, PeerRefused) and exc.removed_at:
                    self._report_removed(peer.id, exc.removed_at)
                continue
            except Exception:
                peer.failures += 1
                peer.stats.dial_failures += 1
                logger.exception("member %x: dialing peer %x failed", self.member_id, peer.id)
                continue
            peer.failures = 0
            peer.last_error = ""
            peer.link = link
            peer.stats.connects += 1
            peer.connected.set()
            logger.info(
                "member %x: connected to peer %x at %s:%d", self.member_id, peer.id, *peer.address
            )
            try:
                await link.closed
            finally:
                if peer.link is link:
                    peer.link = None
                    peer.connected.clear()
                    peer.stats.disconnects += 1
                link.abort()
                if self._state is _State.RUNNING:
                    self._drop_queue(peer)
            logger.info("member %x: link to peer %x lost", self.member_id, peer.id)

    def _log_dial_failure(self, peer: _Peer, exc: BaseException) -> None:
        if isinstance(exc, PeerRefused):
            error = f"refused our connection: {exc}"
        elif isinstance(exc, ssl.SSLError):
            error = f"failed the TLS handshake: {describe_tls_error(exc)}"
        elif isinstance(exc, TimeoutError):
            error = "timed out"
        else:
            error = f"unreachable: {exc}"
        level = logging.WARNING if error != peer.last_error else logging.DEBUG
        peer.last_error = error
        logger.log(
            level,
            "member %x: peer %x at %s:%d %s; retrying with back-off",
            self.member_id,
            peer.id,
            *peer.address,
            error,
        )

    # -- snapshots --

    def _start_snapshot(self, peer: _Peer, m: Message) -> None:
        if self._state is not _State.RUNNING:
            peer.stats.messages_dropped += 1
            if self._state is _State.NEW:
                self._report_snapshot(peer.id, ok=False)
            return
        if peer.snapshot is not None and not peer.snapshot.done():
            peer.stats.messages_dropped += 1
            logger.warning(
                "member %x: a snapshot to peer %x is in flight; dropped another",
                self.member_id,
                peer.id,
            )
            return
        peer.snapshot = self._spawn(self._send_snapshot(peer, m), f"snapshot to {peer.id}")

    async def _send_snapshot(self, peer: _Peer, m: Message) -> None:
        """Send ``m``'s snapshot on its own connection in chunks, then report the outcome."""
        ok = False
        reader: SnapshotReader | None = None
        link: OutboundLink | None = None
        cfg = self.config
        total = chunks = 0
        try:
            assert m.snapshot is not None
            source = self._snapshot_source(m) if self._snapshot_source is not None else None
            reader = source if source is not None else _data_reader(m.snapshot.data)
            header = encode_message(attrs.evolve(m, snapshot=attrs.evolve(m.snapshot, data=b"")))
            link = await self._connect(peer, KIND_SNAPSHOT)
            peer.stats.bytes_sent += link.write_frame(FrameKind.SNAP_HEADER, header)
            peer.stats.frames_sent += 1
            while True:
                got = reader.read(cfg.snapshot_chunk_size)
                data = await got if inspect.isawaitable(got) else got
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    raise TypeError(f"snapshot reader returned {type(data).__name__}, not bytes")
                if not data:
                    break
                if len(data) > cfg.snapshot_chunk_size:
                    raise ValueError(f"snapshot reader returned {len(data)} bytes, over the chunk")
                peer.stats.bytes_sent += link.write_frame(FrameKind.SNAP_CHUNK, data)
                peer.stats.frames_sent += 1
                peer.stats.snapshot_chunks_sent += 1
                total += len(data)
                chunks += 1
                async with asyncio.timeout(cfg.snapshot_timeout):
                    await link.drain()
                await asyncio.sleep(0)  # let the loop serve other work between chunks
            peer.stats.bytes_sent += link.write_frame(
                FrameKind.SNAP_END, SNAP_END.pack(total, chunks)
            )
            peer.stats.frames_sent += 1
            async with asyncio.timeout(cfg.snapshot_timeout):
                ok, reason = await link.result
            if not ok:
                raise PeerRefused(f"the receiver failed it: {reason}")
            logger.info(
                "member %x: sent snapshot at index %d (%d bytes in %d chunks) to peer %x",
                self.member_id,
                m.snapshot.metadata.index,
                total,
                chunks,
                peer.id,
            )
        except OSError as exc:  # including timeouts, refusals and the receiver's failure
            why = f"stalled for {cfg.snapshot_timeout}s" if isinstance(exc, TimeoutError) else exc
            logger.warning(
                "member %x: snapshot to peer %x failed after %d bytes in %d chunks: %s",
                self.member_id,
                peer.id,
                total,
                chunks,
                why,
            )
        except Exception:
            logger.exception(
                "member %x: snapshot to peer %x failed after %d bytes in %d chunks",
                self.member_id,
                peer.id,
                total,
                chunks,
            )
        finally:
            if reader is not None:
                try:
                    reader.close()
                except Exception:
                    logger.exception("member %x: closing a snapshot reader failed", self.member_id)
            if link is not None:
                link.abort()
            if self._state is _State.RUNNING:
                if ok:
                    peer.stats.snapshots_sent += 1
                else:
                    peer.stats.snapshots_failed += 1
                self._report_snapshot(peer.id, ok=ok)

    # -- receiving --

    def _check_hello(
        self, kind: int, cluster: int, sender: int, receiver: int
    ) -> tuple[str, int] | None:
        """Why a handshake is refused and the sender's removal index (or 0); None to accept."""
        if cluster != self.cluster_id:
            why = f"peer {sender:x} belongs to cluster {cluster:#x} (we are {self.cluster_id:#x})"
            return why, 0
        if receiver != self.member_id:
            return f"addressed to member {receiver:x} but this is member {self.member_id:x}", 0
        if sender not in self._peers:
            removed_at = self._removed.get(sender, 0)
            if removed_at:
                why = f"member {sender:x} was removed from the cluster (index {removed_at})"
                return why, removed_at
            why = (
                f"unknown member id {sender:x} (not a peer of member {self.member_id:x}; "
                "a new member must be added with 'member add' before it starts)"
            )
            return why, 0
        if kind not in (KIND_STREAM, KIND_SNAPSHOT):
            return f"unknown connection kind {kind}", 0
        return None

    def _accepting(self) -> bool:
        return self._state is _State.RUNNING

    def _conn_opened(self, conn: FramedProtocol) -> None:
        self._conns.add(conn)

    def _conn_closed(self, conn: FramedProtocol) -> None:
        self._conns.discard(conn)

    def _open_sink(self, m: Message) -> BinaryIO:
        return self._snapshot_sink(m)

    def _register_inbound(self, conn: InboundLink) -> None:
        peer = self._peers.get(conn.peer_id)
        if peer is None or conn.kind != KIND_STREAM:
            return
        old, peer.inbound = peer.inbound, conn
        if peer.link is None:
            peer.failures = 0
            peer.redial.set()
        if old is not None and old is not conn:
            logger.info(
                "member %x: a new stream from peer %x replaces the old one", self.member_id, peer.id
            )
            old.abort()

    def _unregister_inbound(self, conn: InboundLink) -> None:
        peer = self._peers.get(conn.peer_id)
        if peer is not None and peer.inbound is conn:
            peer.inbound = None

    def _stats_of(self, peer_id: int) -> PeerStats | None:
        peer = self._peers.get(peer_id)
        return peer.stats if peer is not None else None

    # -- callbacks --

    def _deliver(self, m: Message) -> None:
        try:
            self._on_message(m)
        except Exception:
            logger.exception("member %x: on_message failed for %s", self.member_id, m.type.name)

    def _report_unreachable(self, peer_id: int) -> None:
        if self._state in (_State.STOPPING, _State.STOPPED):
            return
        try:
            self._on_unreachable(peer_id)
        except Exception:
            logger.exception("member %x: on_unreachable(%d) failed", self.member_id, peer_id)

    def _report_removed(self, peer_id: int, index: int) -> None:
        if self._on_removed is None or self._state is not _State.RUNNING:
            return
        try:
            self._on_removed(peer_id, index)
        except Exception:
            logger.exception("member %x: on_removed(%d) failed", self.member_id, peer_id)

    def _report_snapshot(self, peer_id: int, *, ok: bool) -> None:
        try:
            self._on_snapshot_status(peer_id, ok)
        except Exception:
            logger.exception("member %x: on_snapshot_status(%d) failed", self.member_id, peer_id)
