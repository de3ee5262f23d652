"""The peer wire format, and the frame reader both ends of a TCP link use.

A connection starts with the dialer's **handshake** (31 bytes, big-endian)::

    magic b"KVPT" | version u16 | kind u8 | cluster id u64 | sender member id u64 |
    receiver member id u64

The first six bytes (magic and version) are the same in every version, so a listener can refuse
a version it does not speak before parsing the rest. ``kind`` is :data:`KIND_STREAM` (the
dialer's raft messages to the listener; one such connection per direction per pair) or
:data:`KIND_SNAPSHOT` (one snapshot transfer, then the connection is closed).

Everything after the handshake, in both directions, is **frames**::

    length u32 (= 1 + len(payload)) | frame kind u8 | payload

========================  ==========  ======================================================
frame kind                direction   payload
========================  ==========  ======================================================
``ACCEPT``                listener    empty: the handshake was accepted
``REFUSE``                listener    UTF-8 reason; the listener then closes
``REMOVED``               listener    removal log index u64, UTF-8 reason: a refusal because
                                      the dialer was removed from the cluster at that index
``MESSAGES``              dialer      :func:`raftlib.codec.encode_messages` of a batch
``SNAP_HEADER``           dialer      :func:`raftlib.codec.encode_message` of the SNAP message
                                      with empty ``snapshot.data``
``SNAP_CHUNK``            dialer      raw snapshot data (``snapshot_chunk_size`` at most)
``SNAP_END``              dialer      total data bytes u64, chunk count u64
``SNAP_RESULT``           listener    ok u8 (1/0), UTF-8 reason
========================  ==========  ======================================================

A payload above the receiver's ``max_frame_size``, a zero length, an unknown or out-of-place
frame kind, or a payload that does not decode closes that one connection with a logged reason.
"""

from __future__ import annotations

import asyncio
import enum
import struct

from kvapp.tls import is_tls_record

__all__ = [
    "FRAME_HEADER",
    "HELLO",
    "HELLO_PREFIX",
    "HELLO_REST",
    "KIND_SNAPSHOT",
    "KIND_STREAM",
    "MAGIC",
    "PROTOCOL_VERSION",
    "SNAP_END",
    "FrameKind",
    "ProtocolViolation",
    "encode_frame_header",
    "encode_hello",
]

MAGIC = b"KVPT"
"""The first four bytes a dialer sends: a kvapp peer transport connection."""

PROTOCOL_VERSION = 1
"""The handshake and frame layout this module speaks; a listener refuses any other."""

KIND_STREAM = 1
"""Connection kind: a stream of raft message batches from the dialer to the listener."""

KIND_SNAPSHOT = 2
"""Connection kind: one chunked snapshot transfer."""

HELLO_PREFIX = struct.Struct(">4sH")
"""Magic and protocol version: fixed across versions."""

HELLO_REST = struct.Struct(">BQQQ")
"""Connection kind, cluster id, sender member id, receiver member id (version 1)."""

HELLO = struct.Struct(">4sHBQQQ")
"""The whole version-1 handshake."""

FRAME_HEADER = struct.Struct(">IB")
"""A frame's length (of kind byte plus payload) and kind."""

SNAP_END = struct.Struct(">QQ")
"""A ``SNAP_END`` payload: total data bytes, chunk count."""

REMOVED_AT = struct.Struct(">Q")
"""The head of a ``REMOVED`` payload: the log index of the removal (the reason text follows)."""


class FrameKind(enum.IntEnum):
    """The kind byte of a frame."""

    ACCEPT = 0x01
    REFUSE = 0x02
    REMOVED = 0x03  # a refusal: the dialer was removed from the cluster
    MESSAGES = 0x10
    SNAP_HEADER = 0x20
    SNAP_CHUNK = 0x21
    SNAP_END = 0x22
    SNAP_RESULT = 0x23


class ProtocolViolation(Exception):
    """The peer broke the wire protocol; the message is the reason logged when closing."""


def encode_hello(kind: int, cluster_id: int, sender: int, receiver: int) -> bytes:
    """The version-1 handshake a dialer sends first."""
    return HELLO.pack(MAGIC, PROTOCOL_VERSION, kind, cluster_id, sender, receiver)


def encode_frame_header(kind: FrameKind, payload_size: int) -> bytes:
    """The 5-byte header of a frame with a ``payload_size``-byte payload."""
    return FRAME_HEADER.pack(payload_size + 1, kind)


_MIN_READ = 64 * 1024


class FramedProtocol(asyncio.BufferedProtocol):
    """Reads raw prefix bytes and then frames into one reused buffer; subclasses handle them.

    The buffer grows only to hold a frame larger than itself (never above the frame limit) and
    shrinks back once drained, so a steady stream of ordinary frames reads with no allocation
    besides what decoding the payload creates. Payloads are passed as ``memoryview`` slices of
    the buffer, valid only during the handler call: a handler must copy what it keeps.

    Subclasses set :attr:`raw_need` to ask for that many raw bytes before the next frame (the
    handshake), and implement :meth:`on_raw`, :meth:`on_frame` and :meth:`fail`.
    """

    def __init__(self, max_frame_size: int, initial_buffer: int) -> None:
        self.max_frame_size = max_frame_size
        self._initial = initial_buffer
        self._buf = bytearray(initial_buffer)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._want = 0
        self.raw_need = 0
        self.closing = False
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def abort(self) -> None:
        """Close the connection now, discarding unsent data; ``closed`` resolves soon after."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def close(self, grace: float = 5.0) -> None:
        """Close the connection once the data already written is sent; abort after ``grace``."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()
            handle = asyncio.get_running_loop().call_later(grace, self.abort)
            self.closed.add_done_callback(lambda _: handle.cancel())

    def write_frame(self, kind: FrameKind, payload: bytes | memoryview) -> int:
        """Write one frame (header and payload in one ``writelines``); return its wire size."""
        if self.transport is None:
            raise RuntimeError("write_frame before connection_made")
        header = encode_frame_header(kind, len(payload))
        self.transport.writelines((header, payload))
        return len(header) + len(payload)

    # -- subclass hooks --

    def on_raw(self, data: bytes) -> None:
        """Handle ``raw_need`` raw bytes (``raw_need`` is reset to 0 first)."""
        raise NotImplementedError

    def on_frame(self, kind: int, payload: memoryview, size: int) -> None:
        """Handle one frame; ``size`` counts its header too. May raise ProtocolViolation."""
        raise NotImplementedError

    def fail(self, reason: str) -> None:
        """Log ``reason`` and close the connection."""
        raise NotImplementedError

    # -- asyncio.BufferedProtocol --

    def connection_lost(self, exc: Exception | None) -> None:
        """Mark the connection closed and resolve :attr:`closed` (subclasses extend this)."""
        self.closing = True
        if not self.closed.done():
            self.closed.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Room at the end of the reused buffer, made by compacting or (for a big frame) growing."""
        data = self._end - self._start
        need = max(self._want, data + _MIN_READ)
        size = len(self._buf)
        if size - self._start < need or size == self._end:
            if need > size:
                cap = self.max_frame_size + FRAME_HEADER.size + _MIN_READ
                new = bytearray(max(need, min(size * 2, cap)))
                new[:data] = self._view[self._start : self._end]
                self._buf = new
                self._view = memoryview(new)
            else:
                self._view[:data] = self._view[self._start : self._end]
            self._start = 0
            self._end = data
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Parse whatever complete units the new bytes finished."""
        self._end += nbytes
        try:
            self._parse()
        except ProtocolViolation as exc:
            self.fail(str(exc))

    def pending_bytes(self) -> int:
        """Bytes received but not yet forming a complete unit (for truncation reports)."""
        return self._end - self._start

    def _parse(self) -> None:
        while not self.closing:
            avail = self._end - self._start
            if self.raw_need:
                if avail < self.raw_need:
                    self._want = self.raw_need
                    break
                n, self.raw_need = self.raw_need, 0
                raw = bytes(self._view[self._start : self._start + n])
                self._start += n
                self.on_raw(raw)
                continue
            if avail < FRAME_HEADER.size:
                self._want = FRAME_HEADER.size
                break
            length, kind = FRAME_HEADER.unpack_from(self._buf, self._start)
            if length == 0:
                raise ProtocolViolation("bad frame length 0")
            if length - 1 > self.max_frame_size:
                if is_tls_record(self._view[self._start : self._start + 2]):
                    raise ProtocolViolation(
                        "the other side speaks TLS but this link is plaintext (TLS needs "
                        "https:// peer URLs and the --peer-* TLS flags on every member)"
                    )
                raise ProtocolViolation(
                    f"frame of {length - 1} bytes exceeds the limit of {self.max_frame_size}"
                )
            total = 4 + length
            if avail < total:
                self._want = total
                break
            payload = self._view[self._start + FRAME_HEADER.size : self._start + total]
            self._start += total
            self._want = 0
            self.on_frame(kind, payload, total)
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._buf) > 4 * self._initial:
                self._buf = bytearray(self._initial)
                self._view = memoryview(self._buf)
