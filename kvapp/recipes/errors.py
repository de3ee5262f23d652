"""The exceptions of :mod:`kvapp.recipes`.

The cluster's own errors (:class:`~kvapp.errors.EtcdError`) and the client's
(:class:`~kvapp.client.ClientError`, :class:`~kvapp.service.OutcomeUnknown`) pass through
unchanged; these say what happened to a session, a lock or an election.
"""

from __future__ import annotations

from kvapp.client.aio import LeaseLoss
from kvapp.errors import KvappError

__all__ = [
    "AcquireTimeout",
    "LockLost",
    "NotElectedError",
    "NotHeldError",
    "RecipeError",
    "ReentrantUseError",
    "SessionLost",
]


class RecipeError(KvappError):
    """Root of the errors of sessions, locks and elections."""


class SessionLost(RecipeError):
    """The session's lease is gone (expired, revoked, or renewals failed for a whole TTL).

    Every key attached to it is deleted (or will be, once the cluster expires the lease): a
    lock held or awaited through the session is no longer ours.

    Attributes:
        reason: why, when the session's keep-alive reported it (None if the session was
            closed, or the loss was found by a read).
    """

    def __init__(self, message: str, reason: LeaseLoss | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class LockLost(RecipeError):
    """The lock (or leadership) is no longer ours: our key is gone or was replaced.

    Raised by a fenced write whose guard failed, and by ``acquire``/``campaign`` when our key
    disappeared while we waited.
    """


class AcquireTimeout(RecipeError, TimeoutError):
    """``acquire`` or ``campaign`` did not succeed within its timeout (our key was removed)."""


class ReentrantUseError(RecipeError, RuntimeError):
    """A lock or election was acquired again by its holder (they are not re-entrant).

    Also raised for a second lock or election object of the same name on the same session:
    both would share one key.
    """


class NotHeldError(RecipeError, RuntimeError):
    """A lock was released, or its token used, while it was not held by this object."""


class NotElectedError(RecipeError):
    """``proclaim`` on an election this object is not the leader of (etcd's "not leader")."""
