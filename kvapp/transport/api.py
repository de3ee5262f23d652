"""What a member depends on: the :class:`PeerNetwork` protocol, its callbacks, config and counters.

A member (``kvapp.node``) talks to its peers only through :class:`PeerNetwork`, so the same member
code runs on real TCP links (:class:`~kvapp.transport.TcpTransport`) and on the in-process hub
(:class:`~kvapp.transport.LocalNetwork`) used by fast tests and simulations.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import attrs

from raftlib.types import Message

__all__ = [
    "MessageHandler",
    "PeerNetwork",
    "PeerStats",
    "RemovedHandler",
    "SnapshotReader",
    "SnapshotStatusHandler",
    "TransportConfig",
    "UnreachableHandler",
    "backoff_delay",
]

_MiB = 1024 * 1024

MessageHandler = Callable[[Message], object]
"""``on_message(msg)``: a message from a peer arrived (the member calls ``Node.receive``)."""

UnreachableHandler = Callable[[int], object]
"""``on_unreachable(peer_id)``: messages to ``peer_id`` were dropped (``report_unreachable``)."""

SnapshotStatusHandler = Callable[[int, bool], object]
"""``on_snapshot_status(peer_id, ok)``: a snapshot send finished or failed (``report_snapshot``)."""

RemovedHandler = Callable[[int, int], object]
"""``on_removed(peer_id, index)``: ``peer_id`` refused this member as removed from the cluster
by the entry at log ``index`` (``Member.report_removed``)."""


class PeerNetwork(Protocol):
    """The peer links of one member, as the member sees them.

    Messages go out with :meth:`send`; everything coming back (received messages, drops, snapshot
    outcomes) arrives through the three callbacks given to the implementation's constructor:
    ``on_message(msg)``, ``on_unreachable(peer_id)`` and ``on_snapshot_status(peer_id, ok)``.
    Delivery is best effort, as Raft expects: a message may be lost, never corrupted, and
    messages to one peer arrive in the order they were sent (a snapshot may overtake or trail
    them: it travels separately).
    """

    def send(self, messages: Sequence[Message]) -> None:
        """Queue ``messages`` (each to ``msg.to``) and return at once; never blocks or raises.

        A message that cannot be queued (peer unknown or not connected, queue full) is dropped
        and ``on_unreachable(peer_id)`` is called, as etcd does, so Raft backs off that peer.
        """

    def add_peer(self, member_id: int, address: tuple[str, int]) -> None:
        """Start linking to ``member_id`` at ``address`` (idempotent; a new address re-dials)."""

    def remove_peer(self, member_id: int, *, removed_at: int = 0) -> None:
        """Forget ``member_id``: close its links, drop its queue, refuse its connections.

        ``removed_at`` (non-zero) is the log index of the entry that removed ``member_id`` from
        the cluster: its connections are then refused as removed, so that a removed member that
        never received its own removal learns it (``on_removed``), as etcd's peers tell it.
        """

    async def start(self) -> None:
        """Start listening and dialing the known peers."""

    async def stop(self) -> None:
        """Close every link and task; afterwards no callback is called again."""


class SnapshotReader(Protocol):
    """A snapshot's data, read in pieces (a file opened ``"rb"`` is one).

    ``read`` is called on the event loop; it may return the bytes or an awaitable of them (to
    read off the loop). An empty result ends the data. ``close`` is called exactly once.
    """

    def read(self, size: int, /) -> bytes | Awaitable[bytes]:
        """Up to ``size`` bytes; ``b""`` at the end."""

    def close(self) -> None:
        """Release the source; called when the send finished, failed or was cancelled."""


@attrs.frozen(slots=True)
class TransportConfig:
    """Limits and timings of :class:`~kvapp.transport.TcpTransport`; all sizes in bytes.

    Attributes:
        max_frame_size: largest frame payload accepted or sent. A frame above it closes the
            link that sent it; a batch above it is split; a single message above it is dropped.
        max_queue_messages: messages queued per peer (between ``send`` and the flush at the
            end of the loop turn, or while the link's write buffer is above its high-water mark).
        max_queue_bytes: bytes (an upper bound of the encoded size) queued per peer.
        write_buffer_high: the stream links' write-buffer high-water mark: above it the link is
            paused and treated as full (new messages are dropped).
        write_buffer_low: the low-water mark at which a paused link resumes.
        connect_timeout: seconds for a TCP (and TLS) connect.
        handshake_timeout: seconds for the handshake, on either side.
        backoff_base: first reconnect delay ceiling, seconds.
        backoff_max: reconnect delay cap, seconds.
        snapshot_chunk_size: snapshot data per chunk frame (must fit every peer's frame limit).
        snapshot_timeout: seconds a snapshot transfer may stall (one chunk's drain, or the wait
            for the receiver's result) before it fails.
        max_snapshot_size: largest snapshot accepted from a peer; None for no limit.
    """

    max_frame_size: int = attrs.field(default=64 * _MiB, validator=attrs.validators.gt(0))
    max_queue_messages: int = attrs.field(default=4096, validator=attrs.validators.gt(0))
    max_queue_bytes: int = attrs.field(default=64 * _MiB, validator=attrs.validators.gt(0))
    write_buffer_high: int = attrs.field(default=16 * _MiB, validator=attrs.validators.gt(0))
    write_buffer_low: int = attrs.field(default=4 * _MiB, validator=attrs.validators.gt(0))
    connect_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    handshake_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    backoff_base: float = attrs.field(default=0.1, validator=attrs.validators.gt(0))
    backoff_max: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    snapshot_chunk_size: int = attrs.field(default=_MiB, validator=attrs.validators.gt(0))
    snapshot_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    max_snapshot_size: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.write_buffer_low > self.write_buffer_high:
            raise ValueError("write_buffer_low must not exceed write_buffer_high")
        if self.backoff_base > self.backoff_max:
            raise ValueError("backoff_base must not exceed backoff_max")
        if self.snapshot_chunk_size > self.max_frame_size:
            raise ValueError("snapshot_chunk_size must not exceed max_frame_size")


@attrs.define(slots=True)
class PeerStats:
    """Plain counters for one peer (a later issue exports them as metrics).

    ``frames``/``bytes`` count wire frames including their 5-byte header; ``messages_dropped``
    counts raft messages to the peer that were never written (not connected, queue full, paused,
    unencodable); ``dial_failures`` counts failed connects and refused handshakes.
    """

    frames_sent: int = 0
    bytes_sent: int = 0
    messages_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    messages_received: int = 0
    messages_dropped: int = 0
    snapshots_sent: int = 0
    snapshots_failed: int = 0
    snapshot_chunks_sent: int = 0
    snapshots_received: int = 0
    snapshot_chunks_received: int = 0
    dial_failures: int = 0
    connects: int = 0
    disconnects: int = 0


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """The delay before reconnect attempt ``attempt`` (0 for the first retry), in seconds.

    Exponential with "equal jitter": the ceiling ``min(cap, base * 2**attempt)`` halved, plus a
    uniform draw from ``rng`` over the other half. Peers that lost a link at the same moment then
    do not redial in lock step, and the delay never exceeds ``cap``.
    """
    ceiling = min(cap, base * 2.0 ** min(attempt, 64))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)
