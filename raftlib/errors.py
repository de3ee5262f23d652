"""Exceptions raised by raftlib, all under :class:`RaftError`.

Two kinds: a caller's mistake or a condition the caller should handle (``ProposalDropped``,
``ConfigError``, storage lookups), and bad input from a peer: ``DecodeError`` for bytes that do not
decode, ``InvalidMessageError`` for a :class:`~raftlib.Message` object that is malformed,
``MisroutedMessageError`` for a well-formed message that is not for this node, and the two
``Step*`` errors. All of these leave the node unchanged, so a transport can drop the input and
carry on. ``RaftInvariantError`` means raftlib itself, or its storage, is broken: where etcd's raft
would panic.

``DecodeError`` and ``InvalidMessageError`` are siblings, not parent and child: one is about bytes
(a frame, a file), the other about objects that already exist in the process. A transport that
decodes and then steps catches both; code that builds messages itself only ever sees the second.
Both are ``ValueError`` s, as ``DecodeError`` always was, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "CompactedError",
    "ConfigError",
    "DecodeError",
    "InvalidMessageError",
    "MisroutedMessageError",
    "ProposalDropped",
    "RaftError",
    "RaftInvariantError",
    "SnapshotOutOfDateError",
    "SnapshotTemporarilyUnavailable",
    "StepLocalMessageError",
    "StepPeerNotFoundError",
    "StorageError",
    "StorageFullError",
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


class InvalidMessageError(RaftError, ValueError):
    """A :class:`~raftlib.Message` object is malformed; nothing was changed.

    Raised by :meth:`~raftlib.RawNode.step` and by :func:`~raftlib.codec.encode_message` for what
    :func:`~raftlib.codec.decode_message` could never have produced (not a ``Message``, a field of
    the wrong type, an integer outside 0..2**64-1), and by ``step`` also for a message whose shape
    is wrong for its type (an append whose entries do not follow on, a snapshot message without a
    usable snapshot, a proposal without entries, ...). The message names the first bad field.
    """


class MisroutedMessageError(RaftError, ValueError):
    """A well-formed message was stepped into the wrong node; nothing was changed.

    It is addressed to another node, or claims to come from this node itself. Usually a
    transport's routing bug, or a peer configured with the wrong member id.
    """


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


class StorageFullError(StorageError):
    """A storage write failed for lack of space, and the storage is still usable.

    Raised by a storage's *writes* (``save_ready``, ``create_snapshot``, ``compact``, ...) when
    the disk (or a quota) is full. The storage promises that the failed call changed nothing a
    later call could trip over (a partial record was removed, a half-written file deleted), so
    the same call may simply be made again once space is freed: :class:`~raftlib.Node` retries
    a ``save_ready`` that raises it, with a back-off, and skips a snapshot that raises it until
    later. Any other exception from a write still stops the node; in particular a failed
    ``fsync`` must never be reported as this (see ``docs/storage.md``).
    """


class RaftInvariantError(RaftError):
    """An internal invariant was violated: a bug in raftlib or storage that returned bad data."""
