"""Peer links between kvapp members: the :class:`PeerNetwork` protocol and two implementations.

* :class:`TcpTransport` (:mod:`kvapp.transport.tcp`): asyncio TCP (optionally TLS) with a
  handshake, length-prefixed cbor2 batches, per-turn batching, bounded queues, reconnect with
  jittered back-off and chunked snapshots on their own connection.
* :class:`LocalNetwork` (:mod:`kvapp.transport.local`): an in-process hub with drop, delay and
  partition controls, for fast tests of members.

The wire format is documented in :mod:`kvapp.transport.wire`.
"""

from kvapp.transport.api import (
    MessageHandler,
    PeerNetwork,
    PeerStats,
    RemovedHandler,
    SnapshotReader,
    SnapshotStatusHandler,
    TransportConfig,
    UnreachableHandler,
    backoff_delay,
)
from kvapp.transport.local import LocalEndpoint, LocalNetwork
from kvapp.transport.tcp import PeerRefused, TcpTransport, message_size_bound
from kvapp.transport.wire import PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION",
    "LocalEndpoint",
    "LocalNetwork",
    "MessageHandler",
    "PeerNetwork",
    "PeerRefused",
    "PeerStats",
    "RemovedHandler",
    "SnapshotReader",
    "SnapshotStatusHandler",
    "TcpTransport",
    "TransportConfig",
    "UnreachableHandler",
    "backoff_delay",
    "message_size_bound",
]
