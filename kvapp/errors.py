"""kvapp's exceptions, carrying etcd's exact error texts and gRPC status codes.

etcd clients match on the message text (``rpctypes.ErrorDesc``) and on the gRPC code, so every
error a client can see is an :class:`EtcdError` subclass whose ``str()`` is etcd's text, byte for
byte (``api/v3rpc/rpctypes/error.go``), and whose :attr:`EtcdError.code` names the gRPC status
code. The API layer turns one into a gRPC status with ``code`` and ``str(exc)``; nothing else is
needed. This module imports nothing from kvapp, so every layer may raise these.

Errors that never reach a client as such (a damaged state snapshot) derive from
:class:`KvappError` directly.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "ClusterIdMismatchError",
    "CompactedError",
    "CorruptClusterError",
    "DuplicateKeyError",
    "EmptyKeyError",
    "EtcdError",
    "FutureRevisionError",
    "GrpcCode",
    "KeyNotFoundError",
    "KvappError",
    "LeaderChangedError",
    "LearnerNotReadyError",
    "LeaseExistsError",
    "LeaseNotFoundError",
    "LeaseProvidedError",
    "LeaseTTLTooLargeError",
    "MemberBadUrlsError",
    "MemberNotFoundError",
    "MemberNotLearnerError",
    "NoLeaderError",
    "NoSpaceError",
    "NotLeaderError",
    "PeerUrlExistsError",
    "RequestDecodeError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "StateSnapshotError",
    "StoppedError",
    "TooManyLearnersError",
    "TooManyOpsError",
    "TooManyRequestsError",
    "ValueProvidedError",
]


class GrpcCode(enum.IntEnum):
    """gRPC status codes (the numbering of ``grpc.StatusCode`` / ``google.rpc.Code``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class KvappError(Exception):
    """Root of every exception kvapp raises on purpose."""


class EtcdError(KvappError):
    """An error a client sees, with etcd's text as ``str(exc)`` and its gRPC status code.

    Subclasses set the class attributes :attr:`message` and :attr:`code`. ``detail`` is for
    logs only: it is kept out of ``str(exc)`` so clients matching etcd's text keep working.
    """

    message: ClassVar[str] = "etcdserver: unknown error"
    code: ClassVar[GrpcCode] = GrpcCode.UNKNOWN

    def __init__(self, detail: str = "") -> None:
        super().__init__(self.message)
        self.detail = detail


class EmptyKeyError(EtcdError):
    """A request named no key (or a compare in a txn did)."""

    message = "etcdserver: key is not provided"
    code = GrpcCode.INVALID_ARGUMENT


class KeyNotFoundError(EtcdError):
    """A put with ``ignore_value`` or ``ignore_lease`` found no existing key to take them from."""

    message = "etcdserver: key not found"
    code = GrpcCode.INVALID_ARGUMENT


class ValueProvidedError(EtcdError):
    """A put set both ``ignore_value`` and a value."""

    message = "etcdserver: value is provided"
    code = GrpcCode.INVALID_ARGUMENT


class LeaseProvidedError(EtcdError):
    """A put set both ``ignore_lease`` and a lease."""

    message = "etcdserver: lease is provided"
    code = GrpcCode.INVALID_ARGUMENT


class TooManyOpsError(EtcdError):
    """A txn has more compares or operations in one list than the configured maximum."""

    message = "etcdserver: too many operations in txn request"
    code = GrpcCode.INVALID_ARGUMENT


class DuplicateKeyError(EtcdError):
    """A txn branch writes one key twice, or puts a key that it also deletes."""

    message = "etcdserver: duplicate key given in txn request"
    code = GrpcCode.INVALID_ARGUMENT


class CompactedError(EtcdError):
    """The requested revision is older than the compacted revision: that history is gone."""

    message = "etcdserver: mvcc: required revision has been compacted"
    code = GrpcCode.OUT_OF_RANGE


class FutureRevisionError(EtcdError):
    """The requested revision is newer than the store's current revision."""

    message = "etcdserver: mvcc: required revision is a future revision"
    code = GrpcCode.OUT_OF_RANGE


class NoSpaceError(EtcdError):
    """The backend quota is exhausted; only reads, deletes and compaction are accepted."""

    message = "etcdserver: mvcc: database space exceeded"
    code = GrpcCode.RESOURCE_EXHAUSTED


class LeaseNotFoundError(EtcdError):
    """The lease does not exist (never granted, revoked or expired)."""

    message = "etcdserver: requested lease not found"
    code = GrpcCode.NOT_FOUND


class LeaseExistsError(EtcdError):
    """A grant asked for a lease ID that is already in use."""

    message = "etcdserver: lease already exists"
    code = GrpcCode.FAILED_PRECONDITION


class LeaseTTLTooLargeError(EtcdError):
    """A grant asked for a TTL above the maximum (9,000,000,000 s)."""

    message = "etcdserver: too large lease TTL"
    code = GrpcCode.OUT_OF_RANGE


class RequestTooLargeError(EtcdError):
    """A request is larger than ``--max-request-bytes``."""

    message = "etcdserver: request is too large"
    code = GrpcCode.INVALID_ARGUMENT


class TooManyRequestsError(EtcdError):
    """The server is too far behind applying committed entries to take more."""

    message = "etcdserver: too many requests"
    code = GrpcCode.RESOURCE_EXHAUSTED


class NoLeaderError(EtcdError):
    """No leader is known, so the request cannot be served now."""

    message = "etcdserver: no leader"
    code = GrpcCode.UNAVAILABLE


class NotLeaderError(EtcdError):
    """The request must be served by the leader and this member is not it.

    The lessor raises it for keep-alive and time-to-live on a follower, whose lease clocks are
    not running; the API layer forwards such requests to the leader, as etcd does.
    """

    message = "etcdserver: not leader"
    code = GrpcCode.FAILED_PRECONDITION


class LeaderChangedError(EtcdError):
    """The leader changed while the request was in flight; its outcome is unknown."""

    message = "etcdserver: leader changed"
    code = GrpcCode.UNAVAILABLE


class RequestTimeoutError(EtcdError):
    """The request was not committed and applied in time; its outcome is unknown."""

    message = "etcdserver: request timed out"
    code = GrpcCode.UNAVAILABLE


class CorruptClusterError(EtcdError):
    """Replicas disagree on the state hash at the same revision."""

    message = "etcdserver: corrupt cluster"
    code = GrpcCode.DATA_LOSS


class LearnerNotReadyError(EtcdError):
    """A learner cannot be promoted before it has caught up with the leader."""

    message = "etcdserver: can only promote a learner member which is in sync with leader"
    code = GrpcCode.FAILED_PRECONDITION


class TooManyLearnersError(EtcdError):
    """Adding the learner would exceed the configured maximum number of learners."""

    message = "etcdserver: too many learner members in cluster"
    code = GrpcCode.FAILED_PRECONDITION


class ClusterIdMismatchError(EtcdError):
    """A peer or client belongs to another cluster."""

    message = "etcdserver: cluster ID mismatch"
    code = GrpcCode.FAILED_PRECONDITION


class MemberNotFoundError(EtcdError):
    """A membership request names a member the cluster does not have."""

    message = "etcdserver: member not found"
    code = GrpcCode.NOT_FOUND


class PeerUrlExistsError(EtcdError):
    """A member to add reuses the peer URLs of an existing member."""

    message = "etcdserver: Peer URLs already exists"
    code = GrpcCode.FAILED_PRECONDITION


class MemberBadUrlsError(EtcdError):
    """A member to add or update has peer URLs that are not ``scheme://host:port``."""

    message = "etcdserver: given member URLs are invalid"
    code = GrpcCode.INVALID_ARGUMENT


class MemberNotLearnerError(EtcdError):
    """Only a learner can be promoted."""

    message = "etcdserver: can only promote a learner member"
    code = GrpcCode.FAILED_PRECONDITION


class StoppedError(EtcdError):
    """The member is stopping (or was removed) and serves no more requests."""

    message = "etcdserver: server stopped"
    code = GrpcCode.UNAVAILABLE


class StateSnapshotError(KvappError, ValueError):
    """A state-machine snapshot stream is truncated, damaged or of an unknown format.

    Raised by :meth:`kvapp.kvstate.KvState.restore`; the state is left as it was before the call.
    """


class RequestDecodeError(KvappError, ValueError):
    """Bytes that should hold an encoded request or response are malformed.

    Raised by :func:`kvapp.requests.decode_request` and :func:`kvapp.requests.decode_response`
    for any bad input (truncated, damaged, wrongly shaped, of an unknown format version), and
    by nothing else there, so a member or client can reject a bad frame and carry on.
    """
