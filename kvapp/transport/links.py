"""The two ends of a peer connection, as asyncio protocols (internal to the transport).

:class:`OutboundLink` is the dialer's end: it sends the handshake and then frames, and reads only
the listener's handshake reply (and, on a snapshot connection, its result). :class:`InboundLink`
is the listener's end: it checks the handshake and then reads message batches, or one chunked
snapshot which it spools to a sink. Both read through :class:`~kvapp.transport.wire.FramedProtocol`
and reach their transport only through the narrow :class:`LinkOwner` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import BinaryIO, Protocol, cast

import attrs

from kvapp.storage.snapdata import FileSnapshotData
from kvapp.tls import describe_tls_error, is_tls_record
from kvapp.transport.api import PeerStats, TransportConfig
from kvapp.transport.spool import SpoolFile
from kvapp.transport.wire import (
    HELLO_PREFIX,
    HELLO_REST,
    KIND_SNAPSHOT,
    KIND_STREAM,
    MAGIC,
    PROTOCOL_VERSION,
    REMOVED_AT,
    SNAP_END,
    FramedProtocol,
    FrameKind,
    ProtocolViolation,
    encode_hello,
)
from raftlib.codec import decode_message, decode_messages
from raftlib.errors import DecodeError
from raftlib.types import Message, MessageType

__all__ = ["InboundLink", "LinkOwner", "OutboundLink"]

logger = logging.getLogger("kvapp.transport")


class LinkOwner(Protocol):
    """What a link needs from the transport that owns it (``TcpTransport``)."""

    member_id: int
    cluster_id: int
    config: TransportConfig

    def _accepting(self) -> bool:
        """Whether new incoming connections are welcome (the transport is running)."""

    def _conn_opened(self, conn: FramedProtocol) -> None:
        """Track ``conn`` so ``stop`` can close it."""

    def _conn_closed(self, conn: FramedProtocol) -> None:
        """Forget ``conn``."""

    def _check_hello(
        self, kind: int, cluster: int, sender: int, receiver: int
    ) -> tuple[str, int] | None:
        """Why a handshake is refused, and the sender's removal index (or 0); None to accept.

        The index is non-zero when the sender was removed from the cluster by that log entry.
        """

    def _register_inbound(self, conn: InboundLink) -> None:
        """An incoming connection was accepted."""

    def _unregister_inbound(self, conn: InboundLink) -> None:
        """An accepted incoming connection closed."""

    def _stats_of(self, peer_id: int) -> PeerStats | None:
        """The counters of ``peer_id``, or None if it is no longer a peer."""

    def _deliver(self, m: Message) -> None:
        """Hand a received message to the member."""

    def _open_sink(self, m: Message) -> BinaryIO:
        """A stream to spool the data of the incoming snapshot ``m`` to."""

    def _on_resume(self, link: OutboundLink) -> None:
        """``link``'s write buffer fell below its low-water mark."""


def _as_bytes(view: memoryview) -> bytes:
    """``view`` for the codec, uncopied.

    The codec's decoders accept any bytes-like object (they read through ``io.BytesIO``) though
    annotated ``bytes``.
    """
    return cast("bytes", view)


class OutboundLink(FramedProtocol):
    """The dialer's end: sends the handshake and frames; reads only handshake/snapshot replies."""

    def __init__(self, owner: LinkOwner, peer_id: int, kind: int, *, tls: bool = False) -> None:
        super().__init__(owner.config.max_frame_size, 4096)
        loop = asyncio.get_running_loop()
        self._owner = owner
        self.peer_id = peer_id
        self.kind = kind
        self.tls = tls
        self.accepted: asyncio.Future[tuple[bool, str]] = loop.create_future()
        self.result: asyncio.Future[tuple[bool, str]] = loop.create_future()
        self.paused = False
        self.removed_at = 0
        """Non-zero: the listener refused us as removed from the cluster at this log index."""
        self._drain: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Set the write-buffer marks (flow control) and send the handshake."""
        transport = cast("asyncio.Transport", transport)  # uvloop's do not subclass it
        self.transport = transport
        self._owner._conn_opened(self)
        cfg = self._owner.config
        if self.kind == KIND_STREAM:
            transport.set_write_buffer_limits(cfg.write_buffer_high, cfg.write_buffer_low)
        else:
            chunk = cfg.snapshot_chunk_size
            transport.set_write_buffer_limits(2 * chunk, chunk)
        transport.write(
            encode_hello(self.kind, self._owner.cluster_id, self._owner.member_id, self.peer_id)
        )

    def on_raw(self, data: bytes) -> None:
        """Never called: the dialer's end reads only frames."""
        raise ProtocolViolation("unexpected raw bytes")  # raw_need is never set on this side

    def on_frame(self, kind: int, payload: memoryview, size: int) -> None:
        """Take the handshake reply, then (snapshot connections only) the receiver's result."""
        if not self.accepted.done():
            if kind == FrameKind.ACCEPT:
                self.accepted.set_result((True, ""))
            elif kind == FrameKind.REFUSE:
                self.accepted.set_result((False, bytes(payload).decode("utf-8", "replace")))
            elif kind == FrameKind.REMOVED and len(payload) >= REMOVED_AT.size:
                (self.removed_at,) = REMOVED_AT.unpack_from(payload)
                reason = bytes(payload[REMOVED_AT.size :]).decode("utf-8", "replace")
                self.accepted.set_result((False, reason))
            else:
                raise ProtocolViolation(f"expected a handshake reply, got frame kind {kind:#x}")
        elif self.kind == KIND_SNAPSHOT and kind == FrameKind.SNAP_RESULT and payload:
            if not self.result.done():
                reason = bytes(payload[1:]).decode("utf-8", "replace")
                self.result.set_result((payload[0] == 1, reason))
        else:
            raise ProtocolViolation(f"unexpected frame kind {kind:#x} from the listener")

    def fail(self, reason: str) -> None:
        """The listener broke the protocol: log (or fail the handshake with it) and close."""
        if not self.accepted.done():
            self.accepted.set_result((False, reason))  # the dialer logs it
        else:
            logger.warning(
                "member %x: closing link to peer %x: %s",
                self._owner.member_id,
                self.peer_id,
                reason,
            )
        self.abort()

    def pause_writing(self) -> None:
        """Above the high-water mark: the transport treats this peer as full."""
        self.paused = True

    def resume_writing(self) -> None:
        """Below the low-water mark: wake a snapshot waiting in :meth:`drain`, flush the queue."""
        self.paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._owner._on_resume(self)

    def eof_received(self) -> bool | None:
        """The listener closed its side: close ours too."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Resolve every waiter: the handshake and result as failed, a drain as closed."""
        super().connection_lost(exc)
        self._owner._conn_closed(self)
        why = f": {exc}" if exc else ""
        if not self.accepted.done():
            if isinstance(exc, OSError) and self.tls:
                why = f": {describe_tls_error(exc)}"
            elif self.tls:
                # TLS 1.3: a listener that refuses our certificate does so after our side of
                # the TLS handshake is done, by closing the connection.
                why = " (over TLS: does the peer accept this member's certificate? see its log)"
            elif exc is None:
                why = " (does the peer serve TLS? see its log)"
            self.accepted.set_result((False, f"connection closed during the handshake{why}"))
        if not self.result.done():
            self.result.set_result((False, f"connection closed before the receiver's result{why}"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        """Wait until the write buffer is below its low-water mark.

        Raises:
            ConnectionResetError: the connection closed.
        """
        if not self.closing and self.paused:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain
        if self.closing:
            raise ConnectionResetError("connection closed")


class _Spool:
    """An incoming snapshot: its SNAP message (without data) and the sink its chunks go to."""

    def __init__(self, msg: Message, sink: BinaryIO) -> None:
        self.msg = msg
        self.sink = sink
        self.bytes = 0
        self.chunks = 0

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.sink.close()


def _materialize(sink: BinaryIO) -> bytes | FileSnapshotData:
    """The spooled data, read back once as bytes, or left in its file if it is a spool file.

    A spool file (:mod:`kvapp.transport.spool`) is handed over unread; a BytesIO hands over its
    buffer without a copy.
    """
    if isinstance(sink, SpoolFile):
        return sink.hand_over()
    try:
        if isinstance(sink, io.BytesIO):
            return sink.getvalue()
        sink.seek(0)
        return sink.read()
    finally:
        sink.close()


class InboundLink(FramedProtocol):
    """The listener's end: checks the handshake, then reads message batches or one snapshot."""

    def __init__(self, owner: LinkOwner) -> None:
        super().__init__(owner.config.max_frame_size, 256 * 1024)
        self._owner = owner
        self.raw_need = HELLO_PREFIX.size
        self._prefix_seen = False
        self.accepted = False
        self.peer_id = 0
        self.kind = 0
        self.remote = "?"
        self._timer: asyncio.TimerHandle | None = None
        self._spool: _Spool | None = None
        self._snap_done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the handshake timer (or close at once if the transport is not running)."""
        transport = cast("asyncio.Transport", transport)  # uvloop's do not subclass it
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._owner._conn_opened(self)
        if not self._owner._accepting():
            self.abort()
            return
        t = self._owner.config.handshake_timeout
        self._timer = asyncio.get_running_loop().call_later(t, self._handshake_timed_out, t)

    def _handshake_timed_out(self, t: float) -> None:
        self._timer = None
        if not self.accepted and not self.closing:
            self.fail(f"handshake not completed within {t}s")

    def _who(self) -> str:
        return f"peer {self.peer_id:x} at {self.remote}" if self.accepted else self.remote

    def on_raw(self, data: bytes) -> None:
        """Check the handshake: magic and version first, then cluster, sender and receiver."""
        me = self._owner.member_id
        if not self._prefix_seen:
            magic, version = HELLO_PREFIX.unpack(data)
            if is_tls_record(data):
                self._refuse(
                    "a TLS handshake, but this member's peer links are plaintext (a TLS peer "
                    "needs --peer-cert-file, --peer-key-file and https:// peer URLs here too)"
                )
            elif magic != MAGIC:
                self._refuse(f"bad magic {magic!r}: not a kvapp peer")
            elif version != PROTOCOL_VERSION:
                self._refuse(
                    f"protocol version {version} is not supported "
                    f"(member {me:x} speaks version {PROTOCOL_VERSION})"
                )
            else:
                self._prefix_seen = True
                self.raw_need = HELLO_REST.size
            return
        kind, cluster, sender, receiver = HELLO_REST.unpack(data)
        refusal = self._owner._check_hello(kind, cluster, sender, receiver)
        if refusal is not None:
            self._refuse(*refusal)
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.accepted = True
        self.peer_id = sender
        self.kind = kind
        self.write_frame(FrameKind.ACCEPT, b"")
        self._owner._register_inbound(self)

    def _refuse(self, reason: str, removed_at: int = 0) -> None:
        logger.warning(
            "member %x: refused connection from %s: %s", self._owner.member_id, self.remote, reason
        )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if removed_at:
            self.write_frame(FrameKind.REMOVED, REMOVED_AT.pack(removed_at) + reason.encode())
        else:
            self.write_frame(FrameKind.REFUSE, reason.encode())
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def fail(self, reason: str) -> None:
        """The dialer broke the protocol: log, discard a partial snapshot, close."""
        logger.warning(
            "member %x: closing connection from %s: %s", self._owner.member_id, self._who(), reason
        )
        self._discard_spool()
        self.abort()

    def on_frame(self, kind: int, payload: memoryview, size: int) -> None:
        """A message batch on a stream connection, or the next part of a snapshot."""
        if self.kind == KIND_STREAM:
            self._messages(kind, payload, size)
        else:
            self._snapshot_frame(kind, payload, size)

    def _messages(self, kind: int, payload: memoryview, size: int) -> None:
        if kind != FrameKind.MESSAGES:
            raise ProtocolViolation(f"unexpected frame kind {kind:#x} on a message stream")
        try:
            msgs = decode_messages(_as_bytes(payload))
        except DecodeError as exc:
            raise ProtocolViolation(f"undecodable message batch: {exc}") from None
        me = self._owner.member_id
        for m in msgs:
            if m.to != me or m.from_ != self.peer_id:
                raise ProtocolViolation(
                    f"{m.type.name} message from {m.from_} to {m.to} on the link from "
                    f"peer {self.peer_id:x} to member {me:x}"
                )
        stats = self._owner._stats_of(self.peer_id)
        if stats is not None:
            stats.frames_received += 1
            stats.bytes_received += size
            stats.messages_received += len(msgs)
        for m in msgs:
            self._owner._deliver(m)

    def _snapshot_frame(self, kind: int, payload: memoryview, size: int) -> None:
        if self._snap_done:
            raise ProtocolViolation(f"frame kind {kind:#x} after the snapshot's end")
        stats = self._owner._stats_of(self.peer_id)
        if stats is not None:
            stats.frames_received += 1
            stats.bytes_received += size
        spool = self._spool
        if kind == FrameKind.SNAP_HEADER:
            if spool is not None:
                raise ProtocolViolation("a second snapshot header")
            self._snapshot_header(payload)
        elif spool is None:
            raise ProtocolViolation(f"frame kind {kind:#x} before the snapshot header")
        elif kind == FrameKind.SNAP_CHUNK:
            spool.bytes += len(payload)
            spool.chunks += 1
            if stats is not None:
                stats.snapshot_chunks_received += 1
            limit = self._owner.config.max_snapshot_size
            if limit is not None and spool.bytes > limit:
                self._snapshot_result(False, f"snapshot exceeds the limit of {limit} bytes")
                return
            try:
                spool.sink.write(payload)
            except Exception as exc:  # noqa: BLE001 - any sink failure fails this transfer only
                self._snapshot_result(False, f"snapshot sink write failed: {exc!r}")
        elif kind == FrameKind.SNAP_END:
            self._snapshot_end(spool, payload, stats)
        else:
            raise ProtocolViolation(f"unexpected frame kind {kind:#x} on a snapshot connection")

    def _snapshot_header(self, payload: memoryview) -> None:
        try:
            msg = decode_message(_as_bytes(payload))
        except DecodeError as exc:
            raise ProtocolViolation(f"undecodable snapshot header: {exc}") from None
        me = self._owner.member_id
        if msg.type != MessageType.SNAP or msg.snapshot is None:
            raise ProtocolViolation(f"snapshot header is a {msg.type.name} message, not a SNAP")
        if msg.to != me or msg.from_ != self.peer_id:
            raise ProtocolViolation(
                f"snapshot from {msg.from_:x} to {msg.to:x} on the link from peer {self.peer_id:x} "
                f"to member {me:x}"
            )
        try:
            sink = self._owner._open_sink(msg)
        except Exception as exc:  # noqa: BLE001 - the member's factory failed: refuse this one
            self._snapshot_result(False, f"cannot open a snapshot sink: {exc!r}")
            return
        self._spool = _Spool(msg, sink)

    def _snapshot_end(self, spool: _Spool, payload: memoryview, stats: PeerStats | None) -> None:
        if len(payload) != SNAP_END.size:
            raise ProtocolViolation(f"snapshot end of {len(payload)} bytes")
        total, chunks = SNAP_END.unpack(payload)
        if (total, chunks) != (spool.bytes, spool.chunks):
            self._snapshot_result(
                False,
                f"snapshot incomplete: received {spool.bytes} bytes in {spool.chunks} chunks, "
                f"the sender sent {total} in {chunks}",
            )
            return
        self._spool = None
        try:
            data = _materialize(spool.sink)
        except Exception as exc:  # noqa: BLE001 - a sink that cannot be read back
            self._snapshot_result(False, f"cannot read the spooled snapshot back: {exc!r}")
            return
        assert spool.msg.snapshot is not None
        snap = attrs.evolve(spool.msg.snapshot, data=cast("bytes", data))  # or a FileSnapshotData
        msg = attrs.evolve(spool.msg, snapshot=snap)
        if stats is not None:
            stats.snapshots_received += 1
            stats.messages_received += 1
        logger.info(
            "member %x: received snapshot at index %d (%d bytes in %d chunks%s) from peer %x",
            self._owner.member_id,
            msg.snapshot.metadata.index if msg.snapshot else 0,
            total,
            chunks,
            ", kept in its spool file" if isinstance(data, FileSnapshotData) else "",
            self.peer_id,
        )
        self._owner._deliver(msg)
        self._snapshot_result(True, "")

    def _snapshot_result(self, ok: bool, reason: str) -> None:
        if not ok:
            logger.warning(
                "member %x: snapshot from %s failed: %s", self._owner.member_id, self._who(), reason
            )
        self._discard_spool()
        self._snap_done = True
        self.write_frame(FrameKind.SNAP_RESULT, (b"\x01" if ok else b"\x00") + reason.encode())
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _discard_spool(self) -> None:
        if self._spool is not None:
            self._spool.discard()
            self._spool = None

    def eof_received(self) -> bool | None:
        """Log what the close cut short (a handshake, a frame, a snapshot), then close."""
        if self.closing:
            return None
        me = self._owner.member_id
        pending = self.pending_bytes()
        if not self.accepted:
            logger.info("member %x: %s closed during the handshake", me, self.remote)
        elif pending:
            logger.warning(
                "member %x: truncated frame from %s: connection closed inside a frame "
                "(%d bytes of it received)",
                me,
                self._who(),
                pending,
            )
        elif self._spool is not None:
            logger.warning(
                "member %x: snapshot from %s ended early: connection closed after %d bytes "
                "in %d chunks",
                me,
                self._who(),
                self._spool.bytes,
                self._spool.chunks,
            )
        self._discard_spool()
        self.closing = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Discard a partial snapshot and unregister."""
        if self._spool is not None:
            logger.warning(
                "member %x: snapshot from %s aborted: %s",
                self._owner.member_id,
                self._who(),
                exc or "connection closed",
            )
            self._discard_spool()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)
        self._owner._conn_closed(self)
        self._owner._unregister_inbound(self)
