"""Distributed locks and leader election on kvapp (or etcd): the lease + revision recipe.

Three building blocks, each in a blocking flavour (on :class:`kvapp.client.Client`) and an
asyncio flavour (on :class:`kvapp.client.AsyncClient`, named ``Async...``), sharing one
implementation:

- :class:`Session` / :class:`AsyncSession`: a lease kept alive in the background; its loss
  (expired, revoked, renewals failing for a whole TTL) is reported by its state, an event and
  callbacks, never silently;
- :class:`Lock` / :class:`AsyncLock`: a fair lock (granted in create-revision order, one waiter
  woken per release) whose holder's key goes with its session's lease, with a **fencing
  token** (:attr:`AsyncLock.token`) and fenced writes (:meth:`AsyncLock.fenced_txn`) that a
  former holder cannot get through;
- :class:`Election` / :class:`AsyncElection`: campaign on the same queue, proclaim a value,
  read or observe the leader, resign.

Example::

    from kvapp.client import Client
    from kvapp.recipes import Lock, Session

    with Client(["127.0.0.1:2379"]) as client, Session(client, ttl=10) as session:
        lock = Lock(client, "jobs/nightly", session)
        with lock:
            lock.fenced_put("jobs/nightly-state", f"run by token {lock.token}")

See docs/locks.md for what a lease-based lock can and cannot promise.
"""

from kvapp.recipes.election import AsyncElection, LeaderObserver
from kvapp.recipes.errors import (
    AcquireTimeout,
    LockLost,
    NotElectedError,
    NotHeldError,
    RecipeError,
    ReentrantUseError,
    SessionLost,
)
from kvapp.recipes.lock import AsyncLock
from kvapp.recipes.session import DEFAULT_TTL, AsyncSession, SessionState
from kvapp.recipes.sync import Election, Lock, Session, SyncLeaderObserver

__all__ = [
    "DEFAULT_TTL",
    "AcquireTimeout",
    "AsyncElection",
    "AsyncLock",
    "AsyncSession",
    "Election",
    "LeaderObserver",
    "Lock",
    "LockLost",
    "NotElectedError",
    "NotHeldError",
    "RecipeError",
    "ReentrantUseError",
    "Session",
    "SessionLost",
    "SessionState",
    "SyncLeaderObserver",
]
