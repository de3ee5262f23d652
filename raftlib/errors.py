"""Exceptions raised by raftlib, all under :class:`RaftError`.

Two kinds: a caller's mistake or a condition the caller should handle (``ProposalDropped``,
``ConfigError``, storage lookups), and bad input from a peer (``DecodeError``, unknown senders).
``RaftInvariantError`` means raftlib itself is broken: where etcd's raft would panic.
"""

from __future__ import annotations

__all__ = [
    "CompactedError",
    "ConfigError",
    "DecodeError",
    "ProposalDropped",
    "RaftError",
    "RaftInvariantError",
    "SnapshotOutOfDateError",
    "SnapshotTemporarilyUnavailable",
    "StepLocalMessageError",
    "StepPeerNotFoundError",
    "StorageError",
    "UnavailableError",
]


class RaftError(Exception):
    """Root of every exception raftlib raises on purpose."""


class ProposalDropped(RaftError):
    """The proposal was not appended to the log.

    Causes: no leader known, a leadership transfer in progress, the uncommitted log over its size
    limit, forwarding disabled, or this node removed from the configuration. Nothing about the
    proposal reached the log; the caller may retry, typically once a leader is known again.
    """


class ConfigError(RaftError, ValueError):
    """A :class:`~raftlib.Config` value, or a configuration change, is invalid."""


class DecodeError(RaftError, ValueError):
    """Bytes from a peer or from disk could not be decoded into a raftlib value."""


class StepLocalMessageError(RaftError, ValueError):
    """A message type that only raftlib itself may create was passed to ``step()``."""


class StepPeerNotFoundError(RaftError):
    """A response arrived from a node that is not in the current configuration."""


class StorageError(RaftError):
    """Root of the conditions a :class:`~raftlib.Storage` reports."""


class CompactedError(StorageError):
    """The requested index is before the first available entry: it was compacted away."""


class UnavailableError(StorageError):
    """The requested index is beyond the last entry in storage."""


class SnapshotOutOfDateError(StorageError):
    """A snapshot older than the one storage already has was offered."""


class SnapshotTemporarilyUnavailable(StorageError):
    """Storage is preparing a snapshot; raftlib will ask again later."""


class RaftInvariantError(RaftError):
    """An internal invariant was violated: a bug in raftlib or storage that returned bad data."""
