"""A fair distributed lock on lease + revision + prefix + watch, with a fencing token."""

from __future__ import annotations

from collections.abc import Iterable

from kvapp.client.aio import AsyncClient, Bytes
from kvapp.mvcc.types import Compare, PutRequest, PutResponse, RequestOp, TxnResponse
from kvapp.recipes._queue import Contender, Stage, as_bytes
from kvapp.recipes.errors import LockLost
from kvapp.recipes.session import AsyncSession

__all__ = ["AsyncLock"]


class AsyncLock:
    """A distributed lock named ``name``, held through ``session`` (asyncio flavour).

    The recipe (etcd's ``concurrency.Mutex``): the contender puts ``<name>/<lease id hex>``,
    attached to the session's lease, in a txn that never overwrites (``create_revision == 0``),
    and holds the lock once no key under ``<name>/`` has a smaller create revision. Until then
    it watches the deletion of the one key just before its own, then looks again. So the lock
    is fair (granted in create-revision order), a release wakes one waiter only, and a holder
    that dies releases it when its lease expires.

    Use ``async with lock:`` or :meth:`acquire` / :meth:`release`. A lock object is used by
    one task at a time and is not re-entrant: acquiring it again while holding or waiting
    raises :class:`~kvapp.recipes.errors.ReentrantUseError`, as does a second lock object of
    the same name on the same session (both would share one key).

    **What holding it means**: the cluster agreed, at some revision, that our key was first in
    line. It stays first until we release it or our session's lease ends; a holder paused
    past its TTL (or cut off from the cluster) may still believe it holds the lock while
    another does. Guard what the lock protects with the fencing token: :attr:`token`, and
    :meth:`fenced_txn` / :meth:`fenced_put` / :meth:`is_owner` for data in the same cluster.

    Args:
        client: the client (the same one as the session's, usually).
        name: the lock's name; keys go under ``<name>/``. Do not name one lock with another's
            name plus ``/`` as a prefix (their queues would mix), as with etcd.
        session: the session whose lease the lock's key is attached to.

    Attributes:
        name: the name, as bytes.
        session: the session.
        wakeups: deletion events received while waiting, over every acquisition: with no
            contender giving up or dying meanwhile, one per acquisition that had to wait.
        waited_for: the create revisions of the keys whose deletion the last :meth:`acquire`
            waited for, in order (empty if the lock was free).
    """

    def __init__(self, client: AsyncClient, name: Bytes, session: AsyncSession) -> None:
        self._q = Contender(client, name, session)
        self.name = self._q.name
        self.session = session

    @property
    def key(self) -> bytes | None:
        """Our key, ``<name>/<lease id hex>``, while waiting or holding; else None."""
        return self._q.key

    @property
    def held(self) -> bool:
        """Whether this object holds the lock, as far as this process knows.

        True from :meth:`acquire` until :meth:`release` while the session is active; a
        process paused past its TTL may still see True (see the class docstring).
        """
        return self._q._stage is Stage.HELD and self.session.alive

    @property
    def token(self) -> int:
        """The fencing token: our key's create revision, which increases with every holder.

        Valid from :meth:`acquire` until :meth:`release`, and kept if the lock is lost
        meanwhile, so that a resource fenced with it refuses the former holder.

        Raises:
            NotHeldError: the lock was not acquired (or was released) by this object.
        """
        return self._q._token()

    @property
    def acquired_revision(self) -> int:
        """The revision at which the last :meth:`acquire` found the lock ours (0 before one).

        It is the revision of etcd's Lock response header, which ``etcdctl lock`` passes to
        its command as ``ETCD_LOCK_REV``; at least :attr:`token`, and it too grows with every
        holder. The token is what a txn can compare with (the key's create revision).
        """
        return self._q.held_revision

    @property
    def wakeups(self) -> int:
        """Deletion events received while waiting, over every acquisition."""
        return self._q.wakeups

    @property
    def waited_for(self) -> list[int]:
        """Create revisions of the keys the last acquisition waited for, in order."""
        return list(self._q.waited_for)

    async def acquire(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - as Lock's
        """Wait until the lock is ours (at most ``timeout`` seconds).

        If it fails, is cancelled or times out, our key is removed from the queue before it
        returns (unless the cluster cannot be reached; then the key goes with the lease).

        Raises:
            ReentrantUseError: this object (or another lock of this name on the same
                session) already holds or waits for the lock.
            AcquireTimeout: the lock was not ours within ``timeout``.
            SessionLost: the session is not active, or lost its lease while we waited.
            LockLost: our key disappeared while we waited (deleted by someone else).
            EtcdError, ClientError, OutcomeUnknown: the cluster could not be reached.
        """
        await self._q._enter(b"", timeout)

    async def release(self) -> bool:
        """Release the lock (delete our key).

        Returns:
            True if our key was still there: we held the lock until now. False if it was
            already gone (the session's lease expired or was revoked): someone else may
            have held the lock meanwhile.

        Raises:
            NotHeldError: this object does not hold the lock.
            EtcdError, ClientError, OutcomeUnknown: the delete failed; the lock is still
                held by this object (release again, or let the session end).
        """
        return await self._q._release()

    def is_owner(self) -> Compare:
        """A txn compare that holds only while we hold the lock (our key, our revision).

        Add it to a txn's compares to make its success branch conditional on the lock, as
        etcd's ``Mutex.IsOwner``; :meth:`fenced_txn` does that for you.

        Raises:
            NotHeldError: the lock is not held by this object.
        """
        return self._q._guard()

    async def fenced_txn(
        self,
        success: Iterable[RequestOp] = (),
        *,
        compare: Iterable[Compare] = (),
        failure: Iterable[RequestOp] = (),
    ) -> TxnResponse:
        """Run a txn only if we still hold the lock, in the same revision as the check.

        The txn's ``compare``/``success``/``failure`` run as usual (as a nested txn when
        there are compares or a failure branch), guarded by :meth:`is_owner`.

        Returns:
            The txn's response (``succeeded`` tells which branch of *your* compares ran).

        Raises:
            LockLost: we no longer hold the lock: nothing was written.
            NotHeldError: the lock was not acquired by this object.
        """
        return await self._q._fenced(compare, success, failure)

    async def fenced_put(self, key: Bytes, value: Bytes, *, lease: int = 0) -> PutResponse:
        """Put ``key`` only if we still hold the lock.

        Raises:
            LockLost: we no longer hold the lock: nothing was written.
            NotHeldError: the lock was not acquired by this object.
        """
        resp = await self.fenced_txn([PutRequest(as_bytes(key), as_bytes(value), lease)])
        put = resp.responses[0]
        assert isinstance(put, PutResponse)
        return put

    async def __aenter__(self) -> AsyncLock:
        await self.acquire()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        still_held = await self.release()
        if not still_held and exc_type is None:
            raise LockLost(
                f"the lock {self.name!r} was lost before it was released (session "
                f"{self.session.lease_id:x} is {self.session.state.value}): work done under it "
                "may have overlapped another holder's, unless it was fenced"
            )

    def __repr__(self) -> str:
        stage = self._q._stage.value
        return f"<AsyncLock {self.name!r} {stage} session={self.session.lease_id:x}>"
